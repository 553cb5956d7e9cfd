#!/usr/bin/env bash
# Debian packages the tests need: Chromium for the browser tests (Playwright drives
# /usr/bin/chromium; it never downloads a browser of its own), PgBouncer for the
# connection-pooling test (tests/genonaut/test_pooling.py) and Prometheus (with promtool) for the
# monitoring test (tests/genonaut/test_monitoring.py: the alert rules, /metrics, the dashboard).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v promtool >/dev/null || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "Missing Debian packages: run 'sudo apt-get install ${missing[*]}' (the tests need them)" >&2
    exit 1
  fi
  echo "Installing ${missing[*]} from Debian …"
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
fi
