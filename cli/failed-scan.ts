import { DEFAULT_PRIORITY, type BeanstalkClient, type ReservedJob } from '../shared/beanstalk.ts';
import { errorCode } from '../shared/errors.ts';
import { decodeFailedJob, type FailedJob } from '../shared/job.ts';

/**
 * Reading every record of the failed tube. beanstalkd cannot list a tube, and peek only
 * shows the head, so the scan reserves the records one by one and HOLDS each reserved
 * job (so the next reserve returns the next one) until the end, then releases them all
 * with their own priority. beanstalkd orders ready jobs by (priority, id), and release
 * keeps both, so the tube ends up in the order it started in. Nothing is buried or
 * kicked: if the CLI dies half-way, its connection closes and beanstalkd puts every held
 * job straight back into ready.
 *
 * Limits: only ready records are seen (a delayed or buried record in the failed tube is
 * counted by `queue stats` but not listed); while a scan holds records, another scan (or
 * any other reader of the failed tube) does not see them; held jobs are touched so that
 * their time-to-run never runs out during a long scan.
 */

export interface ScannedRecord {
  server: string;
  jobId: string;
  priority: number;
  record: FailedJob;
  /** The reserved job, for a visitor that acts on it (delete after moving it). */
  reserved: ReservedJob;
}

/** `removed`: the visitor deleted the job (else it stays in the tube); `stop`: end the scan after this one. */
export interface VisitResult {
  removed?: boolean;
  stop?: boolean;
}

export interface ScanOptions {
  tube: string;
  visit(entry: ScannedRecord): Promise<VisitResult>;
  /** Called for every job reserved (progress). */
  onReserved?(): void;
}

export interface ScanResult {
  /** Records handed to the visitor. */
  visited: number;
  /** Payloads that are not failed-job records; left in place. */
  undecodable: string[];
  /** False when the scan ended early because beanstalkd said a held job's TTR was about to run out. */
  complete: boolean;
}


interface Held {
  job: ReservedJob;
  priority: number;
}

export class FailedScan {
  /** Jobs the visitor put into the scanned tube itself (what is left of a partly retried record): never visited again. */
  readonly ownPuts = new Set<string>();
  private readonly held: Held[] = [];
  private lastTouch = Date.now();
  private touchEveryMs = 60_000;

  constructor(private readonly client: BeanstalkClient) {}

  async run(options: ScanOptions): Promise<ScanResult> {
    const { client } = this;
    await client.watchOnly(options.tube);
    const undecodable: string[] = [];
    let visited = 0;
    let complete = true;
    try {
      for (;;) {
        let job: ReservedJob | null;
        try {
          job = await client.reserve(0);
        } catch (err) {
          if (errorCode(err) === 'DEADLINE_SOON') {
            complete = false;
            break;
          }
          throw err;
        }
        if (!job) break;
        const stats = await client.statsJob(job.id).catch(() => undefined);
        const priority = Number(stats?.pri ?? DEFAULT_PRIORITY);
        const ttrSeconds = Number(stats?.ttr ?? 0);
        if (ttrSeconds > 0) this.touchEveryMs = Math.min(this.touchEveryMs, (ttrSeconds * 1000) / 3);
        options.onReserved?.();

        if (this.ownPuts.has(job.id)) {
          this.held.push({ job, priority });
          continue;
        }
        let record: FailedJob;
        try {
          record = decodeFailedJob(job.payload);
        } catch {
          undecodable.push(job.id);
          this.held.push({ job, priority });
          continue;
        }
        visited++;
        const result = await options.visit({ server: job.server, jobId: job.id, priority, record, reserved: job });
        if (!result.removed) this.held.push({ job, priority });
        if (result.stop) break;
        await this.touchIfDue();
      }
    } finally {
      await this.releaseAll();
    }
    return { visited, undecodable, complete };
  }

  private async touchIfDue(): Promise<void> {
    if (Date.now() - this.lastTouch < this.touchEveryMs) return;
    this.lastTouch = Date.now();
    await Promise.all(this.held.map((h) => h.job.touch().catch(() => undefined)));
  }

  /** Failures are harmless: a job this connection cannot release goes back to ready when it closes. */
  private async releaseAll(): Promise<void> {
    const held = this.held.splice(0);
    await Promise.all(held.map((h) => h.job.release({ priority: h.priority }).catch(() => undefined)));
  }
}
