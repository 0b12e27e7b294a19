#!/usr/bin/env bash
# Benchmark (not a test): how long `bootplan facts --provider auto` takes on a
# machine with no cloud, i.e. the time until it settles on local facts, next
# to cloud-init's own datasource identification where that can run safely.
#
# Usage: bench/facts.sh            (uses target/release/bootplan, else target/debug/bootplan)
#        BOOTPLAN_BIN=path bench/facts.sh
# ds-identify exits 1 when it finds no datasource ("disabled"), hence `-i`.
# Needs: hyperfine; cloud-init (scripts/deps/cloud-init.sh) for the comparison.
#
# Nothing here touches the network or the host's cloud-init state:
# - bootplan reads DMI/cmdline/labels/seed dirs only; on "no evidence" it
#   never opens a socket.
# - ds-identify runs with PATH_ROOT pointed at a temp tree (the way its own
#   tests run it), so it reads the fixture DMI and writes only under the temp dir.
# - cloud-init's Python datasource search (`cloud-init init --local`) is NOT
#   run: it writes /var/lib/cloud and /run/cloud-init, may configure the
#   network and probes metadata addresses. Its interpreter-plus-import cost is
#   measured instead, as a floor for any cloud-init Python stage.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BOOTPLAN_BIN:-}
if [ -z "$bin" ]; then
  if [ -x target/release/bootplan ]; then bin=target/release/bootplan; else bin=target/debug/bootplan; fi
fi
[ -x "$bin" ] || { echo "build bootplan first (cargo build [--release])" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt-get install hyperfine)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
qemu_dmi="$PWD/tests/fixtures/facts/dmi/qemu"
echo "root=/dev/vda1 ro quiet" > "$tmp/cmdline"
mkdir -p "$tmp/labels"

# A temp root for ds-identify: plain QEMU DMI, plain cmdline, no disks.
root="$tmp/root"
mkdir -p "$root/sys/class/dmi/id" "$root/proc" "$root/etc/cloud" "$root/dev/disk/by-label" "$root/sys/class/block" "$root/run"
cp "$qemu_dmi"/* "$root/sys/class/dmi/id/"
cp "$tmp/cmdline" "$root/proc/cmdline"
echo "1.00 1.00" > "$root/proc/uptime"

echo "== bootplan: $bin ($(file -b "$bin" | cut -d, -f1-2))"
cmds=(
  -n "bootplan facts --provider auto (this machine)"
  "$bin facts --provider auto --json"
  -n "bootplan facts --provider auto (QEMU DMI fixture, no evidence)"
  "env BOOTPLAN_DMI_ROOT=$qemu_dmi BOOTPLAN_CMDLINE=$tmp/cmdline BOOTPLAN_DISK_LABELS_DIR=$tmp/labels BOOTPLAN_SEED_DIRS=$tmp/none $bin facts --provider auto --json"
)
if [ -x /usr/lib/cloud-init/ds-identify ]; then
  cmds+=(
    -n "cloud-init ds-identify --force (same QEMU DMI, temp root)"
    "env PATH_ROOT=$root DI_LOG=stderr /usr/lib/cloud-init/ds-identify --force"
  )
fi
if /usr/bin/python3 -c 'import cloudinit' 2>/dev/null; then
  cmds+=(
    -n "python3 import cloudinit.sources + stages (floor of cloud-init's Python search)"
    "/usr/bin/python3 -c 'import cloudinit.sources, cloudinit.stages'"
  )
fi
hyperfine -N -i --warmup 5 --runs "${RUNS:-100}" --export-markdown "$tmp/facts.md" "${cmds[@]}" >&2
cat "$tmp/facts.md"
echo
echo "bootplan's own measure of detection (stderr summary), 5 runs on the QEMU fixture:"
for _ in 1 2 3 4 5; do
  BOOTPLAN_DMI_ROOT=$qemu_dmi BOOTPLAN_CMDLINE=$tmp/cmdline BOOTPLAN_DISK_LABELS_DIR=$tmp/labels \
    BOOTPLAN_SEED_DIRS=$tmp/none "$bin" facts --provider auto --json 2>&1 >/dev/null | sed 's/; instance.*//'
done
echo "ds-identify verdict on the temp root: $(cat "$root/run/cloud-init/cloud.cfg" 2>/dev/null | tr '\n' ' ' || echo '?')"
