import { readFileSync } from 'node:fs';
import { errorMessage } from '../shared/errors.ts';
import { DEFAULT_STORE_URL } from '../shared/store/config.ts';
import { openStore, type Store } from '../shared/store/open.ts';
import { CliError, EXIT } from './args.ts';

/** `--store URL` / `--store-password-file FILE`, shared by the queue and suppression commands. */
export const STORE_OPTIONS = {
  store: { type: 'string' },
  'store-password-file': { type: 'string' },
} as const;

export const STORE_HELP = `  --store URL          the store the post offices and workers use (their store.url):
                       sqlite:PATH or postgres://user@host:5432/db; default $HEDWIG_STORE_URL
                       or ${DEFAULT_STORE_URL}
  --store-password-file FILE   PostgreSQL password; default $HEDWIG_STORE_PASSWORD_FILE`;

const CLI_TIMEOUT_MS = 10_000;

/** Opens the store for one command and closes it afterwards; unreachable is exit 1, naming the flag. */
export async function withStore<T>(values: { store?: string | undefined; 'store-password-file'?: string | undefined }, env: NodeJS.ProcessEnv, use: (store: Store) => Promise<T>): Promise<T> {
  const url = values.store ?? env.HEDWIG_STORE_URL ?? DEFAULT_STORE_URL;
  const passwordFile = values['store-password-file'] ?? env.HEDWIG_STORE_PASSWORD_FILE;
  let password: string | undefined;
  if (passwordFile) {
    try {
      password = readFileSync(passwordFile, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new CliError('UNREADABLE', `--store-password-file: cannot read ${passwordFile}: ${errorMessage(err)}`, EXIT.failure);
    }
  }
  let store: Store;
  try {
    store = await openStore({ url, timeoutMs: CLI_TIMEOUT_MS, password, historySeconds: 604_800 }, { setting: '--store', maxConnections: 4 });
  } catch (err) {
    throw new CliError('STORE_UNAVAILABLE', errorMessage(err), EXIT.failure, { cause: err });
  }
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}
