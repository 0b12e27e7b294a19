#!/usr/bin/env bash
# Installs Debian's cloud-init (22.4) for the NoCloud seed examples and the
# datasource-search comparison in bench/facts.sh. It is disabled BEFORE it is
# installed (/etc/cloud/cloud-init.disabled), so it never runs on this machine;
# bootplan's tests only read its shipped example files.
# Idempotent: a quick no-op when the examples directory is already there.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"

examples=/usr/share/doc/cloud-init/examples
if dpkg-query -W -f='${Status}' cloud-init 2>/dev/null | grep -q "install ok installed" \
  && [ -d "$examples" ]; then
  echo "cloud-init: already installed ($examples)"
  exit 0
fi

mkdir -p /etc/cloud
touch /etc/cloud/cloud-init.disabled

export DEBIAN_FRONTEND=noninteractive
apt_install cloud-init
echo "cloud-init: installed, disabled by /etc/cloud/cloud-init.disabled; examples in $examples"
