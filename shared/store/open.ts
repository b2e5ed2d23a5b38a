import { HedwigError, errorCode, errorMessage } from '../errors.ts';
import { redactedUrl, type StoreConfig } from './config.ts';
import type { SqlEngine } from './engine.ts';
import { migrate } from './migrations.ts';
import { PostgresEngine } from './postgres.ts';
import { SqliteEngine } from './sqlite.ts';
import { Store } from './store.ts';

export { Store } from './store.ts';

export interface OpenOptions {
  /** The config key the URL came from, for error messages (`store.url`, `--store`). */
  setting?: string;
  /** Told about errors of idle PostgreSQL connections (a server restart). */
  onError?: (err: Error) => void;
  maxConnections?: number;
}

export function createEngine(config: Pick<StoreConfig, 'url' | 'timeoutMs' | 'password'>, options: OpenOptions = {}): SqlEngine {
  if (config.url.startsWith('sqlite:')) return new SqliteEngine(config.url.slice('sqlite:'.length), { timeoutMs: config.timeoutMs });
  return new PostgresEngine(config.url, {
    timeoutMs: config.timeoutMs,
    password: config.password,
    ...(options.maxConnections ? { maxConnections: options.maxConnections } : {}),
    ...(options.onError ? { onError: options.onError } : {}),
  });
}

/**
 * Opens the store and brings its schema up to date. An unreachable database is an error
 * that names the setting and the (password-free) URL, e.g.
 * `store.url: cannot open postgres://hedwig@db:5432/hedwig: ECONNREFUSED`.
 */
export async function openStore(config: Pick<StoreConfig, 'url' | 'timeoutMs' | 'password' | 'historySeconds'>, options: OpenOptions = {}): Promise<Store> {
  const setting = options.setting ?? 'store.url';
  let engine: SqlEngine | undefined;
  try {
    engine = createEngine(config, options);
    await migrate(engine);
  } catch (err) {
    await engine?.close().catch(() => undefined);
    const cause = errorCode(err) && !/^ERR_/.test(errorCode(err)!) ? `${errorCode(err)} ${errorMessage(err)}` : errorMessage(err);
    throw new HedwigError('STORE_UNAVAILABLE', `${setting}: cannot open ${redactedUrl(config.url)}: ${cause}`, { cause: err });
  }
  return new Store(engine, { historySeconds: config.historySeconds });
}
