/**
 * `npx tsx scripts/mailman-measure.ts latency|drain [--flags]`: measurements of mailman alone,
 * with a real post office and beanstalkd on loopback (no worker: a message counts as done once
 * the post office queued it). Not a test: it asserts nothing and prints JSON figures.
 *
 *   latency  one-message sessions, one after another: connect->220 and the whole session
 *            (connect, EHLO, MAIL, RCPT, DATA, QUIT) with a small Node client, and the wall
 *            time of one `msmtp` process per message (what cron and PHP mail() do).
 *            --sessions N (1000), --msmtp N (300)
 *   drain    a backlog of --backlog N (100000) messages sent to mailman over SMTP while the
 *            post office is down (all spooled), then the post office started: how fast the
 *            forwarder empties the spool from the moment the post office is ready, against
 *            the inline rate of --inline N (5000) messages sent over --clients C (16) kept
 *            SMTP connections. With --flap-seconds S the test first
 *            kills beanstalkd every S seconds for --flap-for T seconds under load (--rate R
 *            messages/s in all, 0 for as fast as mailman answers) and reports the spool depth
 *            after each kill; --backlog 0 skips the backlog part. --forwarder-concurrency N
 *            sets mailman's forwarder.concurrency (else its default).
 * The README section "mailman alone: greeting, session, drain" quotes the figures this prints. The stack and the
 * clients it measures with: scripts/mailman-measure-stack.ts.
 */
import { parseArgs } from 'node:util';
import { readProcessFigures } from '../bench/proc.ts';
import { Spool } from '../mailman/spool.ts';
import { waitFor } from '../test/helpers/ports.ts';
import { BODY, kept, msmtpOnce, now, oneSession, spoolDepth, startPostoffice, startStack, summary } from './mailman-measure-stack.ts';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    sessions: { type: 'string', default: '1000' },
    msmtp: { type: 'string', default: '300' },
    backlog: { type: 'string', default: '100000' },
    inline: { type: 'string', default: '5000' },
    clients: { type: 'string', default: '16' },
    'flap-seconds': { type: 'string', default: '0' },
    'flap-for': { type: 'string', default: '60' },
    rate: { type: 'string', default: '0' },
    'forwarder-concurrency': { type: 'string' },
  },
});

async function latency(): Promise<void> {
  const stack = await startStack({ postofficeUp: true });
  try {
    // Warm-up: JIT, the post office's kept-alive connection.
    for (let i = 0; i < 50; i++) await oneSession(stack.mailmanPort);
    const greetings: number[] = [];
    const sessions: number[] = [];
    for (let i = 0; i < Number(values.sessions); i++) {
      const r = await oneSession(stack.mailmanPort);
      greetings.push(r.greeting);
      sessions.push(r.session);
    }
    const msmtp: number[] = [];
    for (let i = 0; i < Number(values.msmtp); i++) msmtp.push(await msmtpOnce(stack.mailmanPort));
    const spooled = (await new Spool(stack.spoolDir).list()).length;
    console.log(JSON.stringify({ mode: 'latency', unit: 'ms', client: { connectTo220: summary(greetings), session: summary(sessions) }, msmtp: { process: summary(msmtp) }, spooledAtEnd: spooled }, null, 2));
  } finally {
    await stack.stop();
  }
}

/** `count` messages over `clients` kept sessions; with `perSecond`, no faster than that in all. Returns messages/s. */

async function drain(): Promise<void> {
  const backlog = Number(values.backlog);
  const flapSeconds = Number(values['flap-seconds']);
  const result: Record<string, unknown> = { mode: 'drain', backlog };
  const mailman = values['forwarder-concurrency'] ? { forwarder: { concurrency: Number(values['forwarder-concurrency']) } } : {};
  // The inline rate: what the post office takes from live SMTP sessions.
  {
    const stack = await startStack({ postofficeUp: true, mailman });
    try {
      await kept(stack.mailmanPort, 500, Number(values.clients));
      result.inlinePerSecond = Math.round(await kept(stack.mailmanPort, Number(values.inline), Number(values.clients)));
      result.inlinePeakRssMB = { mailman: readProcessFigures(stack.mailman.child.pid!)?.peakRssMB, postoffice: stack.postoffice ? readProcessFigures(stack.postoffice.child.pid!)?.peakRssMB : undefined };
    } finally {
      await stack.stop();
    }
  }
  if (flapSeconds > 0) {
    // beanstalkd killed every few seconds under load: the spool depth must stay bounded.
    const stack = await startStack({ postofficeUp: true, mailman });
    try {
      const depths: Array<[number, number]> = [];
      const started = now();
      let flapping = true;
      const load = (async () => {
        while (flapping) await kept(stack.mailmanPort, 200, Number(values.clients), Number(values.rate)).catch(() => undefined);
      })();
      const flapper = (async () => {
        while (now() - started < Number(values['flap-for']) * 1000) {
          await new Promise((r) => setTimeout(r, flapSeconds * 1000));
          await stack.beanstalkd.kill();
          await new Promise((r) => setTimeout(r, 1000));
          await stack.beanstalkd.restart();
          depths.push([Math.round((now() - started) / 1000), await spoolDepth(stack.spoolDir)]);
        }
      })();
      await flapper;
      flapping = false;
      await load;
      const stopped = now();
      await waitFor(async () => (await spoolDepth(stack.spoolDir)) === 0, { timeoutMs: 600_000, intervalMs: 200, what: 'the spool to empty' });
      result.flap = { offeredPerSecond: Number(values.rate) || 'as fast as mailman answers', everySeconds: flapSeconds, forSeconds: Number(values['flap-for']), spoolDepthAfterEachKill: depths, secondsToEmptyAfterLoad: Math.round((now() - stopped) / 100) / 10 };
    } finally {
      await stack.stop();
    }
  }
  if (backlog > 0) {
    const stack = await startStack({ postofficeUp: false, mailman });
    try {
      // Spooled through SMTP while the post office is down, as an outage fills it: mailman learns
      // of each entry as it is written. (Files written behind its back wait for its next rescan,
      // up to forwarder.maxBackoffMs: that measured the rescan, not the drain.)
      const written = now();
      result.backlogSpooledPerSecond = Math.round(await kept(stack.mailmanPort, backlog, Number(values.clients)));
      result.backlogWrittenSeconds = Math.round((now() - written) / 100) / 10;
      stack.postoffice = await startPostoffice(stack.beanstalkd, stack.postofficePort);
      // From the post office's readiness: what is measured is how soon and how fast mailman uses it.
      const start = now();
      const samples: Array<[number, number]> = [];
      await waitFor(
        async () => {
          const depth = await spoolDepth(stack.spoolDir);
          samples.push([Math.round((now() - start) / 100) / 10, depth]);
          return depth === 0;
        },
        { timeoutMs: 1_800_000, intervalMs: 2000, what: 'the backlog to drain' },
      );
      const seconds = (now() - start) / 1000;
      result.drainSeconds = Math.round(seconds * 10) / 10;
      result.drainPerSecond = Math.round(backlog / seconds);
      result.drainToInline = Math.round((backlog / seconds / (result.inlinePerSecond as number)) * 100) / 100;
      // VmHWM over each process's life (tsx runtime, as npm run <tier>): mailman held the backlog in its spool, the post office took all of it.
      result.drainPeakRssMB = { mailman: readProcessFigures(stack.mailman.child.pid!)?.peakRssMB, postoffice: stack.postoffice ? readProcessFigures(stack.postoffice.child.pid!)?.peakRssMB : undefined };
      result.depthOverTime = samples.filter((_, i) => i % 5 === 0);
    } finally {
      await stack.stop();
    }
  }
  console.log(JSON.stringify(result, null, 2));
}

const mode = positionals[0];
if (mode === 'latency') await latency();
else if (mode === 'drain') await drain();
else {
  console.error('usage: tsx scripts/mailman-measure.ts latency|drain [--sessions N] [--msmtp N] [--backlog N] [--inline N] [--clients C] [--flap-seconds S --flap-for T]');
  process.exit(2);
}
