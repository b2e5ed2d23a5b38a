#!/bin/bash
# Entry point of the image's `postgres` target: Debian's PostgreSQL 15 for the shared store
# (store.url in config/postoffice.yaml and config/worker.yaml). On the first start (an empty
# data directory, the named volume) it creates the cluster, the role `hedwig` with the password
# in $POSTGRES_PASSWORD_FILE (the same secret the tiers' store.passwordFile names) and the
# database `hedwig` owned by it; every start then runs the server in the foreground as PID 1's
# child (compose: init: true), so SIGTERM is a fast shutdown. Extra arguments go to postgres
# (`-p PORT`, `-c listen_addresses=127.0.0.1`, ...).
set -euo pipefail
: "${PGDATA:?}" "${POSTGRES_PASSWORD_FILE:?set POSTGRES_PASSWORD_FILE to the password file}"
[ -r "$POSTGRES_PASSWORD_FILE" ] || { echo "hedwig-postgres: cannot read $POSTGRES_PASSWORD_FILE" >&2; exit 2; }
password=$(<"$POSTGRES_PASSWORD_FILE")
password=${password%$'\n'}
# The socket lives on the container's /tmp (a tmpfs writable by every user): the image runs
# read-only, and a tmpfs mounted at /run/postgresql would belong to root.
sockets=${PGSOCKETDIR:-/tmp}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "hedwig-postgres: creating the cluster in $PGDATA" >&2
  # Local (socket) connections by the server's own user only; over TCP a password, always.
  initdb --pgdata="$PGDATA" --username=postgres --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses='' -c unix_socket_directories=$sockets" --wait --silent start
  psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host="$sockets" --username=postgres --dbname=postgres --set=password="$password" <<'SQL'
CREATE ROLE hedwig LOGIN PASSWORD :'password';
CREATE DATABASE hedwig OWNER hedwig;
SQL
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories="$sockets" "$@"
