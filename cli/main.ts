import { CliError, EXIT, type CliIo, type Command } from './args.ts';
import { dnsCheck } from './commands/dns.ts';
import { failedList, failedReport, failedRetry, failedShow } from './commands/failed.ts';
import { grep } from './commands/grep.ts';
import { queueStats } from './commands/queue.ts';
import { queueDelete, queueFlush, queueHold, queueRelease } from './commands/queue-control.ts';
import { queueList } from './commands/queue-list.ts';
import { suppressionAdd, suppressionCheck, suppressionList, suppressionRemove } from './commands/suppression.ts';
import { send } from './commands/send.ts';
import { status } from './commands/status.ts';

/** `hedwig <group> <command>` or `hedwig <command>`: dispatch, help and exit codes. */

const COMMANDS: Command[] = [queueStats, queueList, queueFlush, queueHold, queueRelease, queueDelete, suppressionList, suppressionAdd, suppressionRemove, suppressionCheck, failedList, failedShow, failedRetry, failedReport, grep, send, status, dnsCheck];

const USAGE = `Usage: hedwig <command> [options]     (hedwig <command> --help for details)

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(16)} ${c.summary}`).join('\n')}

Environment: HEDWIG_BEANSTALK_SERVERS (host:port,...), HEDWIG_MAILMAN (host:port),
HEDWIG_POSTOFFICE_URL, HEDWIG_FQDN, HEDWIG_KEY / HEDWIG_KEY_FILE, HEDWIG_STORE_URL,
HEDWIG_STORE_PASSWORD_FILE.

Exit codes: 0 ok, 1 failure (e.g. beanstalkd unreachable), 2 usage error, 3 not found.`;

function findCommand(argv: string[]): { command: Command; rest: string[] } | undefined {
  for (const command of COMMANDS) {
    const words = command.name.split(' ');
    if (words.every((word, i) => argv[i] === word)) return { command, rest: argv.slice(words.length) };
  }
  return undefined;
}

export async function runCli(argv: string[], io: CliIo): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    io.stdout.write(`${USAGE}\n`);
    return argv.length === 0 ? EXIT.usage : EXIT.ok;
  }
  const found = findCommand(argv);
  if (!found) {
    const group = COMMANDS.filter((c) => c.name.startsWith(`${argv[0]} `));
    if (group.length > 0) {
      const wantsHelp = argv[1] === undefined || argv[1] === '--help' || argv[1] === '-h';
      (wantsHelp ? io.stdout : io.stderr).write(`Usage: hedwig ${argv[0]} <command>\n\n${group.map((c) => `  ${c.name.padEnd(16)} ${c.summary}`).join('\n')}\n`);
      return argv[1] === '--help' || argv[1] === '-h' ? EXIT.ok : EXIT.usage;
    }
    io.stderr.write(`hedwig: unknown command ${JSON.stringify(argv[0])}\n\n${USAGE}\n`);
    return EXIT.usage;
  }
  const { command, rest } = found;
  if (rest.includes('--help') || rest.includes('-h')) {
    io.stdout.write(`${command.help}\n`);
    return EXIT.ok;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    if (err instanceof CliError) {
      io.stderr.write(`hedwig: ${err.message}\n`);
      if (err.exitCode === EXIT.usage) io.stderr.write(`(see hedwig ${command.name} --help)\n`);
      return err.exitCode;
    }
    io.stderr.write(`hedwig: ${command.name} failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT.failure;
  }
}
