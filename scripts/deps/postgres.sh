#!/usr/bin/env bash
# Installs PostgreSQL (the database behind OpenBao's `database` secrets
# engine in the lease tests: real dynamic secrets with renewable leases)
# from Debian and links `initdb`, `postgres` and `psql` into .tools/bin.
# The tests start their own server on a free loopback port in a temp
# directory; a cluster the package may create and start is stopped. Idempotent.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
bin=$(find_bin)
if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
  apt_install postgresql
  bin=$(find_bin)
  # Without an init system the package's postinst may have started its cluster.
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    for cluster in $(pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1 "/" $2}'); do
      pg_ctlcluster "${cluster%/*}" "${cluster#*/}" stop || true
    done
  fi
fi
tools="$(dirname "$0")/../../.tools/bin"
mkdir -p "$tools"
for b in initdb postgres psql; do ln -sf "$bin/$b" "$tools/pg-$b"; done
echo "postgresql: $("$bin/postgres" --version) ($bin)"
