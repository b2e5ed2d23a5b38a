#!/usr/bin/env bash
# Gives the Docker engine at $DOCKER_HOST the two base images the Dockerfile starts from,
# debian:bookworm-slim and node:24-bookworm-slim: pulled when a registry answers, otherwise
# stand-ins built from Debian packages, tagged with the same names:
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, trimmed like the slim image
#                          (no apt lists, docs, man pages, locales), imported with docker import
#   node:24-bookworm-slim  that, plus the Node.js 24 binary this machine runs (node on PATH),
#                          npm 11 from the npm registry, and the user `node` (uid/gid 1000), laid
#                          out like the official image (/usr/local/bin/node, npm, npx)
# The stand-ins also carry this machine's CA bundle (NODE_EXTRA_CA_CERTS): where the egress is
# a TLS-inspecting proxy, `npm ci` inside the build needs the CA this machine trusts.
#
# The debootstrap tree and the npm package are cached in $HEDWIG_IMAGE_CACHE
# (default /var/cache/hedwig-images) for 7 days: debootstrap takes minutes, an import seconds.
# Prints one line per image: `<name> pulled` or `<name> stand-in`. Run as root.
#
#   docker-base-images.sh            give the engine at $DOCKER_HOST both images
#   docker-base-images.sh --prepare  only fill the cache (no engine needed): .ci/run starts it
#                                    in the background so the download overlaps the tests
# A lock on the cache makes a second run wait for the first instead of downloading again.
set -euo pipefail
docker=${DOCKER:-/usr/bin/docker}
cache=${HEDWIG_IMAGE_CACHE:-/var/cache/hedwig-images}
mirror=${HEDWIG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
pull_timeout=${HEDWIG_PULL_TIMEOUT:-60}

have() { "$docker" image inspect "$1" >/dev/null 2>&1; }
pull() { timeout "$pull_timeout" "$docker" pull -q "$1" >/dev/null 2>&1; }
fresh() { [ -n "$(find "$1" -maxdepth 0 -mtime -7 2>/dev/null)" ]; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

debian_rootfs() {
  local tarball=$cache/debian-bookworm-minbase.tar
  if ! fresh "$tarball"; then
    local root=$work/rootfs
    echo "docker-base-images: debootstrap --variant=minbase bookworm from $mirror (a few minutes)" >&2
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # What the official slim image leaves out or adds.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
    rm -f "$root"/etc/apt/sources.list
    cat > "$root"/etc/apt/sources.list.d/debian.sources <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    : > "$root"/etc/hostname
    tar -C "$root" --numeric-owner -cf "$tarball.new" .
    mv "$tarball.new" "$tarball"
  fi
  echo "$tarball"
}

npm_package() {
  local tgz=$cache/npm-11.tgz
  if ! fresh "$tgz"; then
    (cd "$work" && npm pack --silent npm@11 >/dev/null && mv npm-*.tgz "$tgz.new" && mv "$tgz.new" "$tgz")
  fi
  echo "$tgz"
}

if [ "${1:-}" = --prepare ]; then
  echo "docker-base-images: cache ready: $(debian_rootfs) $(npm_package)"
  exit 0
fi

if have debian:bookworm-slim || pull debian:bookworm-slim; then
  echo "debian:bookworm-slim pulled"
else
  "$docker" import -c 'CMD ["bash"]' "$(debian_rootfs)" debian:bookworm-slim >/dev/null
  echo "debian:bookworm-slim stand-in"
fi

if have node:24-bookworm-slim || pull node:24-bookworm-slim; then
  echo "node:24-bookworm-slim pulled"
  exit 0
fi
node_bin=$(readlink -f "$(command -v node)")
major=$("$node_bin" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 24 ] || { echo "docker-base-images: node on PATH is $("$node_bin" --version); Node.js 24 is needed (scripts/install-node.sh)" >&2; exit 1; }
npm_tgz=$(npm_package)
ctx=$work/node
mkdir -p "$ctx"
cp "$node_bin" "$ctx/node"
tar -xzf "$npm_tgz" -C "$ctx" && mv "$ctx/package" "$ctx/npm"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
cat > "$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY ca-certificates.crt /usr/local/share/hedwig-ca-certificates.crt
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
  && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
  && groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/bash --create-home node \
  && node --version && npm --version
ENV NODE_EXTRA_CA_CERTS=/usr/local/share/hedwig-ca-certificates.crt
CMD ["node"]
EOF
"$docker" build -q --network host -t node:24-bookworm-slim "$ctx" >/dev/null
echo "node:24-bookworm-slim stand-in"
