#!/usr/bin/env bash
# Installs the Debian packages hedwig's local mode and tests use, skipping those present.
# Run as root (or with sudo). Idempotent. Also makes `node` Node.js 24 when it is older.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  # The README runs this as written for root and for a normal user alike.
  command -v sudo >/dev/null 2>&1 || { echo "install-debian-deps: run as root (no sudo here)" >&2; exit 1; }
  exec sudo "$0" "$@"
fi
bash "$(dirname "$0")/install-node.sh"
missing=()
# command:package (python3: its smtplib is one of the SMTP AUTH clients in test/integration/mailman-auth.test.ts)
for pair in beanstalkd:beanstalkd msmtp:msmtp swaks:swaks dnsmasq:dnsmasq-base dkimverify:python3-dkim openssl:openssl curl:curl nsd:nsd unbound:unbound ldns-signzone:ldnsutils iptables:iptables ip:iproute2 python3:python3; do
  cmd=${pair%%:*}
  pkg=${pair##*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/usr/bin/$cmd" ]; then
    missing+=("$pkg")
  fi
done
# PostgreSQL's server is not on PATH (/usr/lib/postgresql/<version>/bin); the store tests start
# their own instance there, so the package's default cluster is not needed.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  missing+=(postgresql)
  mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf || echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
fi
# Postfix: smtp-source and a private relay instance for the benchmark's real-client matrix
# (its smoke test is in the suite). Preseeded so apt does not ask; no system configuration.
if [ ! -x /usr/sbin/smtp-source ]; then
  missing+=(postfix)
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-debian-deps: all present"
  exit 0
fi
echo "install-debian-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The DANE tests start their own nsd and unbound on loopback ports: keep the packages'
# system services (both on port 53) from starting at install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
