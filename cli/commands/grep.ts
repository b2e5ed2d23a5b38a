import { createReadStream } from 'node:fs';
import { access } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { createGunzip } from 'node:zlib';
import { isValidMailbox } from '../../shared/address.ts';
import { CliError, EXIT, JSON_OPTION, parseCommandArgs, parseDuration, usageError, type CliIo, type Command } from '../args.ts';
import { formatLine, IdGraph, lineMatches, lineTime, parseLogLine, sortLines, type LogLine } from '../log-search.ts';

type Source = { name: string; open: () => NodeJS.ReadableStream };

async function* readLines(stream: NodeJS.ReadableStream): AsyncGenerator<string> {
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  for await (const line of lines) yield line;
}

function fileSource(path: string): Source {
  return {
    name: path,
    open: () => {
      const file = createReadStream(path);
      return path.endsWith('.gz') ? file.pipe(createGunzip()) : file;
    },
  };
}

/** Every parsed line of a source, with its time (a line without one inherits the previous line's). */
async function* parsedLines(source: Source, index: number, sinceMs: number | undefined): AsyncGenerator<LogLine> {
  let lastTime = -Infinity;
  let lineNumber = 0;
  for await (const text of readLines(source.open())) {
    lineNumber++;
    const fields = parseLogLine(text);
    if (!fields) continue;
    const time = lineTime(fields) ?? lastTime;
    lastTime = time;
    if (sinceMs !== undefined && time < sinceMs) continue;
    yield { text, fields, time, source: index, lineNumber };
  }
}

export const grep: Command = {
  name: 'grep',
  summary: 'every log line about a recipient or sender, across tiers, in time order',
  help: `Usage: hedwig grep ADDRESS [--since 1d] [--json] [LOGFILE ... | -]

Reads the JSON logs of any tiers (mailman, postoffice, worker; plain or .gz files, or
standard input with -) and prints every line about ADDRESS as recipient or sender, and
every line of the messages those lines belong to, followed through their ids (mailman's
id and the post office's, which mailman logs as postofficeId), merged in time order.

  --since DURATION     only lines of the last 30m, 2h, 1d, ...
  --json               print the matching lines as they are (JSON lines)

Without LOGFILE, standard input is read (when it is not a terminal). For example:
  journalctl -o cat -u 'hedwig-*' --since today | hedwig grep user@example.com
  hedwig grep user@example.com mailman.log postoffice.log worker.log.1.gz

Exit codes: 0 lines found, 1 a file cannot be read, 2 usage, 3 no line matched.`,
  async run(argv: string[], io: CliIo) {
    const { values, positionals } = parseCommandArgs(this.name, argv, { ...JSON_OPTION, since: { type: 'string' } });
    const [address, ...files] = positionals;
    if (address === undefined) throw usageError('grep: expected an ADDRESS');
    if (!isValidMailbox(address)) throw usageError(`grep: not an address: ${JSON.stringify(address)}`);
    const sinceMs = values.since !== undefined ? io.now() - parseDuration(values.since, '--since') : undefined;

    if (files.length === 0 && io.stdin.isTTY) throw usageError('grep: give LOGFILE(s), or pipe logs into standard input (-)');
    if (files.filter((f) => f === '-').length > 1) throw usageError('grep: standard input (-) can be read only once');
    const paths = files.length === 0 ? ['-'] : files;
    for (const path of paths) {
      if (path === '-') continue;
      await access(path).catch((err: NodeJS.ErrnoException) => {
        throw new CliError('UNREADABLE', `cannot read ${path}: ${err.code ?? err.message}`, EXIT.failure);
      });
    }

    // Standard input can be read only once: keep its lines for the second pass. Files are
    // read twice instead, so memory holds only the ids and the matching lines.
    const stdinLines: LogLine[] = [];
    const graph = new IdGraph(address);
    const sources: Source[] = paths.map((path) => (path === '-' ? { name: '-', open: () => io.stdin } : fileSource(path)));
    for (const [index, source] of sources.entries()) {
      for await (const line of parsedLines(source, index, sinceMs)) {
        graph.add(line.fields);
        if (source.name === '-') stdinLines.push(line);
      }
    }
    const ids = graph.matchingIds();

    const matched: LogLine[] = [];
    for (const [index, source] of sources.entries()) {
      const lines = source.name === '-' ? stdinLines : parsedLines(source, index, sinceMs);
      for await (const line of lines) if (lineMatches(line.fields, address, ids)) matched.push(line);
    }
    for (const line of sortLines(matched)) io.stdout.write(`${values.json ? line.text : formatLine(line)}\n`);
    return matched.length > 0 ? EXIT.ok : EXIT.notFound;
  },
};
