#!/usr/bin/env bash
# Installs nginx (the HTTP peer of the download tests and benchmarks) and
# minisign (signs the remote plans those tests serve) from Debian. The tests
# start their own nginx on a free loopback port with a temp config; a system
# nginx the package may start is stopped. Idempotent.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v minisign >/dev/null 2>&1 || need+=(minisign)
if [ ${#need[@]} -gt 0 ]; then
  apt_install "${need[@]}"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
    systemctl disable nginx || true
  fi
  # Without an init system the package's postinst may still have started one.
  if [ -f /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    /usr/sbin/nginx -s quit || true
  fi
fi
# The tests look in PATH and .tools/bin; /usr/sbin is not always in PATH.
mkdir -p "$(dirname "$0")/../../.tools/bin"
ln -sf /usr/sbin/nginx "$(dirname "$0")/../../.tools/bin/nginx"
echo "nginx: $(/usr/sbin/nginx -v 2>&1); minisign: $(command -v minisign)"
