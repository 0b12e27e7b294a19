#!/usr/bin/env bash
# Test peers for observability: Prometheus + promtool, the
# Pushgateway, headless Chromium (HTML report screenshot) and hyperfine
# (telemetry overhead benchmark). All from Debian's archive. Idempotent.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need+=(prometheus-pushgateway)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v hyperfine >/dev/null 2>&1 || need+=(hyperfine)

if [ ${#need[@]} -eq 0 ]; then
  echo "prometheus, promtool, pushgateway, chromium, hyperfine: already installed"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Packaged services must not start on install (no init system in CI containers).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt_install "${need[@]}"
for bin in prometheus promtool prometheus-pushgateway chromium hyperfine; do
  command -v "$bin" >/dev/null 2>&1 || { echo "missing after install: $bin" >&2; exit 1; }
done
echo "installed: ${need[*]}"
