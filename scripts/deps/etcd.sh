#!/usr/bin/env bash
# Installs etcd 3.x (server and etcdctl) from Debian for the registration tests.
# Idempotent: does nothing when both binaries are already present.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
  echo "etcd: $(command -v etcd) ($(etcd --version 2>/dev/null | head -1))"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_install etcd-server etcd-client
# The Debian package may start a system etcd on the default ports; the tests
# start their own on free loopback ports, so stop it when there is an init.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
  systemctl disable etcd || true
fi
echo "etcd: $(command -v etcd)"
