import { runCli } from './main.ts';

/** Process entry of the `hedwig` command (see hedwig.mjs). */
process.exitCode = await runCli(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env, now: Date.now });
