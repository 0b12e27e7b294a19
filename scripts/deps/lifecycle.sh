#!/usr/bin/env bash
# Tools the lifecycle tests drive: python3 (sd_notify senders), openssl (a
# throw-away CA for etcd over TLS) and unshare (PID 1 in a PID namespace).
# Idempotent: does nothing when all are present.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
missing=()
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -eq 0 ]; then
  echo "lifecycle tools: python3, openssl, unshare present"
  exit 0
fi
apt_install "${missing[@]}"
