/**
 * The store with a password, as the compose deployment runs it (store.passwordFile, a
 * PostgreSQL that asks for scram-sha-256): a real PostgreSQL with password authentication,
 * the store opened with the right password, and refused with a wrong one.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { openStore } from '../../shared/store/open.ts';
import { postgresAvailable, startPostgres, type PostgresProcess } from '../helpers/postgres.ts';

const PASSWORD = 'p@ss:w/rd%with#odd?chars';

describe('the PostgreSQL store with password authentication', { skip: postgresAvailable() ? false : 'PostgreSQL is not installed (scripts/install-debian-deps.sh)', timeout: 60_000 }, () => {
  let postgres: PostgresProcess;

  before(async () => {
    postgres = await startPostgres();
    // The helper's server trusts every local login; make TCP logins need the password.
    const admin = new pg.Client({ connectionString: postgres.url });
    await admin.connect();
    try {
      await admin.query(`ALTER ROLE hedwig PASSWORD '${PASSWORD.replaceAll("'", "''")}'`);
      const hba = (await admin.query<{ hba_file: string }>('SHOW hba_file')).rows[0]!.hba_file;
      writeFileSync(hba, 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n');
      await admin.query('SELECT pg_reload_conf()');
    } finally {
      await admin.end();
    }
  });

  after(() => postgres?.stop());

  it('opens with the password from store.passwordFile (not in the URL)', async () => {
    const store = await openStore({ url: postgres.url, password: PASSWORD, timeoutMs: 5_000, historySeconds: 60 });
    await store.close();
  });

  it('is refused with a wrong password, and the error names the setting without the password', async () => {
    await assert.rejects(openStore({ url: postgres.url, password: 'wrong', timeoutMs: 5_000, historySeconds: 60 }), (err: Error) => {
      assert.match(err.message, /^store\.url: cannot open postgres:\/\/hedwig@127\.0\.0\.1:\d+\/hedwig: .*password authentication failed/);
      assert.doesNotMatch(err.message, /wrong/);
      return true;
    });
  });
});
