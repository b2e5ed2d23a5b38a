import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { SinkRecords, SinkReply, SinkRequest, SinkStats } from './sink.ts';

export interface SinkProcess {
  pid: number;
  port: number;
  stats(): Promise<SinkStats>;
  /** Arrival time (ms since the epoch) of every message, by bench id, in arrival order. */
  records(): Promise<SinkRecords>;
  /** Forget every arrival (between benchmark cells). */
  reset(): Promise<void>;
  stop(): Promise<void>;
}

/** Forks bench/sink.ts and talks to it over IPC, one request at a time. */
export async function startSinkProcess(port: number): Promise<SinkProcess> {
  const child: ChildProcess = fork(join(import.meta.dirname, 'sink.ts'), [String(port)], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('sink did not start within 20 s')), 20_000);
    child.once('exit', (code) => reject(new Error(`sink exited with ${code}`)));
    child.once('message', () => {
      clearTimeout(timer);
      resolve();
    });
  });

  let queue = Promise.resolve<unknown>(undefined);
  function ask<T extends SinkReply['type']>(type: T): Promise<Extract<SinkReply, { type: T }>> {
    const next = queue.then(
      () =>
        new Promise<Extract<SinkReply, { type: T }>>((resolve) => {
          child.once('message', (reply: SinkReply) => resolve(reply as Extract<SinkReply, { type: T }>));
          child.send({ type } as SinkRequest);
        }),
    );
    queue = next.catch(() => undefined);
    return next;
  }

  return {
    pid: child.pid!,
    port,
    async stats() {
      const { type: _type, ...stats } = await ask('stats');
      return stats;
    },
    async records() {
      const { type: _type, ...records } = await ask('records');
      return records;
    },
    async reset() {
      await ask('reset');
    },
    async stop() {
      child.disconnect();
      await exited;
    },
  };
}
