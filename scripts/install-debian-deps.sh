#!/usr/bin/env bash
# Installs the Debian packages hedwig's local mode and tests use, skipping those present.
# Root (or sudo) only when something is missing. Idempotent. Also makes `node` Node.js 24 when it is older.
set -euo pipefail
missing=()
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
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
fi
# Postfix: smtp-source and a private relay instance for the benchmark's real-client matrix
# (its smoke test is in the suite). Preseeded so apt does not ask; no system configuration.
if [ ! -x /usr/sbin/smtp-source ]; then
  missing+=(postfix)
fi
if [ ${#missing[@]} -eq 0 ] && [ "$node_major" -ge 24 ]; then
  echo "install-debian-deps: all present (node $(node --version))"
  exit 0
fi
# Root only for what is missing: a normal user on a prepared machine needs neither root nor sudo.
if [ "$(id -u)" -ne 0 ]; then
  # The README runs this as written for root and for a normal user alike.
  need="${missing[*]}"; [ "$node_major" -ge 24 ] || need="node 24 ${need}"
  command -v sudo >/dev/null 2>&1 || { echo "install-debian-deps: missing: ${need}; run this as root (no sudo here)" >&2; exit 1; }
  exec sudo "$0" "$@"
fi
bash "$(dirname "$0")/install-node.sh"
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-debian-deps: all packages present"
  exit 0
fi
echo "install-debian-deps: installing ${missing[*]}"
if [[ " ${missing[*]} " == *" postgresql "* ]]; then
  mkdir -p /etc/postgresql-common
  grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf || echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
fi
if [[ " ${missing[*]} " == *" postfix "* ]]; then
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
fi
export DEBIAN_FRONTEND=noninteractive
# The DANE tests start their own nsd and unbound on loopback ports: keep the packages'
# system services (both on port 53) from starting at install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
