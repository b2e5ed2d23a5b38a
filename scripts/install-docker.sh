#!/usr/bin/env bash
# Installs what the Docker deployment test (test/integration/deploy-docker.test.ts) needs:
# Debian's docker.io (dockerd, containerd, runc, docker-init), docker-compose (1.29, the one
# Debian 12 packages) and debootstrap (stand-in base images when Docker Hub cannot be
# reached). Run as root. .ci/run
# calls it; the README's two-command set-up does not, because docker.io conflicts with
# docker-ce on a developer's machine. No daemon is started or enabled here: the test starts
# its own dockerd and stops it again.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-docker: run as root (no sudo here)" >&2; exit 1; }
  exec sudo "$0" "$@"
fi
missing=()
# file:package
for pair in /usr/sbin/dockerd:docker.io /usr/bin/docker-compose:docker-compose /usr/sbin/debootstrap:debootstrap; do
  [ -x "${pair%%:*}" ] || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-docker: all present"
  exit 0
fi
echo "install-docker: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# docker.io's maintainer scripts would start the daemon where an init system runs; the test
# starts its own, so keep them from doing so (policy-rc.d exit 101: "action forbidden").
policy=/usr/sbin/policy-rc.d
created_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && created_policy=1
fi
trap '[ -n "$created_policy" ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
