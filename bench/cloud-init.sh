#!/usr/bin/env bash
# The same small first boot — 10 write_files, 10 runcmd, a user, a host
# name — from the same NoCloud user data, by cloud-init 22.4's stages
# (`init --local`, `init`, `modules --mode=config`, `modules --mode=final`)
# and by `bootplan run --user-data` (which imports the cloud-config on the
# fly). Every run is a fresh throwaway root (overlayfs over /, private
# mount/UTS/IPC/network namespaces, chroot, as tests/it/os.rs makes them),
# so the host never changes; the three kinds of run alternate per round.
# cloud-init is measured twice: with Debian's default module list, and
# with only the modules this user data needs (a floor for cloud-init).
# Wall time and CPU (user + system of the tool and its children) per run;
# the medians and their ratios at the end.
#
# Usage: bench/cloud-init.sh [rounds]   (default 10)
# Needs: root, scripts/deps/cloud-init.sh and scripts/deps/os.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
bash scripts/deps/cloud-init.sh >/dev/null
bash scripts/deps/os.sh >/dev/null
cargo build --release --quiet --bin bootplan
bin=$PWD/target/release/bootplan
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

{
  echo "#cloud-config"
  echo "hostname: bench-host"
  echo "users:"
  echo "  - name: bench"
  echo "    shell: /bin/bash"
  echo "    groups: [users]"
  echo "    ssh_authorized_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2hIK1UdQ5ufYQSpO9URbTuIQZFwdMq0RRhc+FJ9f5 ops@example\"]"
  echo "write_files:"
  for i in $(seq -w 1 10); do
    echo "  - path: /etc/bench/file$i.conf"
    echo "    content: \"setting$i = value$i\\n\""
    echo "    permissions: '0644'"
  done
  echo "runcmd:"
  for i in $(seq -w 1 10); do
    echo "  - echo $i >> /var/tmp/bench-runcmd"
  done
} > "$t/user-data"
printf 'instance-id: iid-bench-1\nlocal-hostname: seeded\n' > "$t/meta-data"

cat > "$t/inner.sh" <<'INNER'
set -euo pipefail
kind=$1 bin=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
rm -f /etc/cloud/cloud-init.disabled
rm -rf /var/lib/cloud
mkdir -p /var/lib/cloud/seed/nocloud
cp /tmp/user-data /tmp/meta-data /var/lib/cloud/seed/nocloud/
echo 'datasource_list: [ NoCloud, None ]' > /etc/cloud/cloud.cfg.d/99-bench.cfg
if [ "$kind" = cloud-init-used ]; then
  cat >> /etc/cloud/cloud.cfg.d/99-bench.cfg <<'CFG'
cloud_init_modules: [write-files, set_hostname, update_hostname, users-groups]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts-user]
CFG
fi
case $kind in
  cloud-init-*)
    set -- "cloud-init init --local" "cloud-init init" "cloud-init modules --mode=config" "cloud-init modules --mode=final" ;;
  bootplan)
    export BOOTPLAN_LOG_FORMAT=json BOOTPLAN_DMI_ROOT=/nonexistent BOOTPLAN_CMDLINE=/nonexistent
    export BOOTPLAN_DISK_LABELS_DIR=/nonexistent BOOTPLAN_SEED_DIRS=/var/lib/cloud/seed/nocloud
    set -- "$bin run --user-data --provider nocloud" ;;
esac
python3 - "$@" <<'PY'
import resource, subprocess, sys, time
start = time.perf_counter()
for command in sys.argv[1:]:
    # cloud-init exits 1 when any module failed (the default list sets a locale
    # this root lacks); the checks after it say whether the boot happened.
    subprocess.run(command.split(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall * 1000:.1f} {(usage.ru_utime + usage.ru_stime) * 1000:.1f}")
PY
# The boot really happened.
test "$(wc -l < /var/tmp/bench-runcmd)" -eq 10
test -f /etc/bench/file10.conf
getent passwd bench >/dev/null
test "$(hostname)" = bench-host
INNER


echo "bootplan $($bin --version 2>/dev/null | awk '{print $2}'), cloud-init $(cloud-init --version 2>&1 | awk '{print $2}'); $(nproc) cores; $(uname -r)"
kinds=(bootplan cloud-init-used cloud-init-default)
for round in $(seq "$rounds"); do
  # Rotate the order so no kind always runs first.
  for i in 0 1 2; do
    kind=${kinds[$(( (i + round) % 3 ))]}
    result=$(unshare --mount --uts --ipc --net --propagation private bash bench/throwaway-root.sh "$t" "$t/inner.sh" "$t/user-data" "$t/meta-data" -- "$kind" "$bin")
    echo "$kind $result" >> "$t/results"
  done
done
python3 - "$t/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    kind, wall, cpu = line.split()
    runs.setdefault(kind, []).append((float(wall), float(cpu)))
med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
for kind in ("bootplan", "cloud-init-used", "cloud-init-default"):
    wall, cpu = med[kind]
    walls = sorted(w for w, _ in runs[kind])
    print(f"{kind:20} wall median {wall:8.1f} ms (min {walls[0]:.1f}, max {walls[-1]:.1f}), CPU median {cpu:8.1f} ms, n={len(walls)}")
b = med["bootplan"]
for kind in ("cloud-init-used", "cloud-init-default"):
    c = med[kind]
    print(f"{kind} / bootplan: wall {c[0] / b[0]:.1f}x, CPU {c[1] / b[1]:.1f}x")
PY
