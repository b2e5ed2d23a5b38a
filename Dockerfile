# One image for every hedwig tier; the command picks the tier:
#   node dist/postoffice/main.js | node dist/worker/main.js | node dist/mailman/main.js
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json key-generator.ts ./
COPY shared ./shared
COPY mailman ./mailman
COPY postoffice ./postoffice
COPY worker ./worker
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json ./
RUN mkdir -p /var/spool/hedwig && chown node:node /var/spool/hedwig
USER node
# Health checks use node itself so the image needs no curl.
HEALTHCHECK --interval=15s --timeout=3s CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.HEALTH_PORT||9100)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "dist/postoffice/main.js"]

# beanstalkd from Debian, for deployments that have no beanstalkd of their own.
FROM debian:bookworm-slim AS beanstalkd
RUN apt-get update && apt-get install -y --no-install-recommends beanstalkd && rm -rf /var/lib/apt/lists/* \
  && mkdir -p /var/lib/beanstalkd && chown nobody:nogroup /var/lib/beanstalkd
USER nobody
EXPOSE 11300
ENTRYPOINT ["beanstalkd"]
