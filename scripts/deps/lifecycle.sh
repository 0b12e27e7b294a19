#!/usr/bin/env bash
# Tools the lifecycle tests drive: python3 (sd_notify senders), openssl (a
# throw-away CA for etcd over TLS) and unshare (PID 1 in a PID namespace).
# Idempotent: does nothing when all are present.
set -euo pipefail
missing=()
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -eq 0 ]; then
  echo "lifecycle tools: python3, openssl, unshare present"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
  apt-get -o DPkg::Lock::Timeout=600 update -q
fi
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
