import type { BeanstalkClient } from './beanstalk.ts';
import { errorCode } from './errors.ts';

/** Jobs in one tube by state, as `stats-tube` reports them (used by the CLI and the worker's queue-depth metric). */
export interface TubeCounts {
  ready: number;
  delayed: number;
  reserved: number;
  buried: number;
}

export const TUBE_STATES = ['ready', 'delayed', 'reserved', 'buried'] as const;

/** A tube that does not exist (never used, or emptied and forgotten by beanstalkd) counts as empty. */
export async function tubeCounts(client: Pick<BeanstalkClient, 'statsTube'>, tube: string): Promise<TubeCounts> {
  try {
    const stats = await client.statsTube(tube);
    const n = (key: string) => Number(stats[key] ?? 0) || 0;
    return { ready: n('current-jobs-ready'), delayed: n('current-jobs-delayed'), reserved: n('current-jobs-reserved'), buried: n('current-jobs-buried') };
  } catch (err) {
    if (errorCode(err) === 'NOT_FOUND') return { ready: 0, delayed: 0, reserved: 0, buried: 0 };
    throw err;
  }
}
