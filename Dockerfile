# One image for every hedwig tier; the command picks the tier:
#   node dist/postoffice/main.js --config /etc/hedwig/postoffice.yaml
#   node dist/worker/main.js     --config /etc/hedwig/worker.yaml
#   node dist/mailman/main.js    --config /etc/hedwig/mailman.yaml
#   node dist/key-generator.js   --fqdn app1.example.com ...
#   node dist/cli/run.js         queue stats | failed list | ...   (the hedwig CLI)
# Targets `beanstalkd` and `postgres` are separate small images with Debian's beanstalkd and
# PostgreSQL 15 (the shared store).
# docker-compose.yml builds both; README "Deployment" explains the setup.

# Compiles the TypeScript sources to plain ESM JavaScript in dist/ (relative imports
# rewritten from .ts to .js), so the runtime needs neither tsx nor typescript.
# Every dependency, with patches/ applied by patch-package (the postinstall script).
FROM node:24-bookworm-slim AS install
WORKDIR /src
COPY package.json package-lock.json ./
COPY patches ./patches
RUN npm ci --no-audit --no-fund

FROM install AS build
COPY tsconfig.json tsconfig.build.json key-generator.ts ./
COPY shared ./shared
COPY mailman ./mailman
COPY postoffice ./postoffice
COPY worker ./worker
COPY cli ./cli
COPY deploy/healthcheck.ts ./deploy/healthcheck.ts
RUN npx tsc -p tsconfig.build.json

# Production dependencies only, so no dev tool reaches the runtime: the patched tree pruned
# (a fresh `npm ci --omit=dev` would need patch-package, a dev tool, to patch it again).
FROM install AS deps
RUN npm prune --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:24-bookworm-slim AS runtime
# --max-semi-space-size=16: Node 24 sizes V8's young generation from the machine's memory
# (128 MB on a 24 GiB host, 32 MB in Node 20); with 16 (Node 20's size) a busy worker peaked
# at 183-185 MB RSS instead of 243-254 MB, the post office at 151-164 instead of 175-181, for
# the same CPU per message (bench --mode matrix, source-kept-10/50). See README "Memory".
ENV NODE_ENV=production \
    NODE_OPTIONS="--enable-source-maps --max-semi-space-size=16"
WORKDIR /app
COPY --from=deps /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json ./
# The directories the tiers write (mailman's spool, the worker's stateDir) exist owned by the
# runtime user, so a fresh named volume mounted there inherits that ownership.
RUN mkdir -p /var/spool/hedwig /var/lib/hedwig-worker && chown node:node /var/spool/hedwig /var/lib/hedwig-worker
# The `node` user (uid 1000) of the base image: no tier needs root. Secrets mounted
# into /run/secrets/hedwig must be readable by uid 1000.
USER node
EXPOSE 8025 2525 9102 9103
# Works for every tier: it reads the tier and its config from PID 1 and asks its /readyz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["node", "dist/deploy/healthcheck.js"]
CMD ["node", "dist/postoffice/main.js", "--config", "/etc/hedwig/postoffice.yaml"]

# beanstalkd from Debian, for deployments that have no beanstalkd of their own.
FROM debian:bookworm-slim AS beanstalkd
RUN apt-get update && apt-get install -y --no-install-recommends beanstalkd && rm -rf /var/lib/apt/lists/* \
  && mkdir -p /var/lib/beanstalkd && chown nobody:nogroup /var/lib/beanstalkd
USER nobody
EXPOSE 11300
# bash's /dev/tcp is the client: the image has no nc or curl.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/11300 && printf 'stats\\r\\n' >&3 && read -r -t 2 reply <&3 && [[ $reply == OK* ]]"]
ENTRYPOINT ["beanstalkd"]
CMD ["-l", "0.0.0.0", "-p", "11300", "-b", "/var/lib/beanstalkd"]

# PostgreSQL 15 from Debian for the shared store (store.url), for deployments that have no
# database of their own. deploy/postgres-entrypoint.sh creates the cluster, the role and the
# database `hedwig` on the first start, with the password in $POSTGRES_PASSWORD_FILE.
FROM debian:bookworm-slim AS postgres
# No default cluster from the package: the entry point makes one in the volume.
RUN mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
  && apt-get update && apt-get install -y --no-install-recommends postgresql-15 && rm -rf /var/lib/apt/lists/* \
  && groupmod --gid 1000 postgres && usermod --uid 1000 --gid 1000 postgres \
  && mkdir -p /var/lib/postgresql/data && chown -R postgres:postgres /var/lib/postgresql \
  && chmod 0700 /var/lib/postgresql/data
COPY deploy/postgres-entrypoint.sh /usr/local/bin/hedwig-postgres
# uid 1000 like the hedwig image, so the secrets directory (readable by uid 1000) serves both.
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["pg_isready", "--quiet", "--host=127.0.0.1", "--port=5432"]
ENTRYPOINT ["hedwig-postgres"]
