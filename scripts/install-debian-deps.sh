#!/usr/bin/env bash
# Installs the Debian packages hedwig's local mode and tests use, skipping those present.
# Run as root (or with sudo). Idempotent.
set -euo pipefail
missing=()
# command:package
for pair in beanstalkd:beanstalkd msmtp:msmtp swaks:swaks dnsmasq:dnsmasq-base dkimverify:python3-dkim openssl:openssl curl:curl; do
  cmd=${pair%%:*}
  pkg=${pair##*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/bin/$cmd" ]; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-debian-deps: all present"
  exit 0
fi
echo "install-debian-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
