#!/usr/bin/env bash
# OS-layer benchmark (not a test), run inside a throwaway root exactly like
# tests/it/os.rs (overlayfs over /, private mount/UTS/IPC/network
# namespaces, chroot), so the host never changes:
#   1. a `packages` step whose 50 packages are all installed, re-checked;
#   2. a plan of 20 `user` steps (groups, shell, sudo rules, SSH keys)
#      already in place, re-checked;
#   3. installing 10 packages from a local signed repository: bootplan's
#      `packages` step against the same `apt-get install` run directly.
# Each figure is the median of RUNS timed runs (default 20; 7 for installs).
#
# Usage: bench/os.sh [runs]    Needs: scripts/deps/os.sh, root.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
bash scripts/deps/os.sh >/dev/null
cargo build --release --quiet --bin bootplan
bin=$PWD/target/release/bootplan
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

cat > "$t/inner.sh" <<'INNER'
set -euo pipefail
bin=$1 runs=$2
export BOOTPLAN_LOG_FORMAT=json PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
export BOOTPLAN_DMI_ROOT=/nonexistent BOOTPLAN_CMDLINE=/nonexistent BOOTPLAN_DISK_LABELS_DIR=/nonexistent BOOTPLAN_SEED_DIRS=/nonexistent
rm -f /etc/apt/sources.list; rm -rf /etc/apt/sources.list.d/*
mkdir -p /srv/repo /srv/build /etc/bootplan
for i in $(seq -w 1 60); do
  d=/srv/build/bp-bench$i; mkdir -p $d/DEBIAN $d/usr/share/bp-bench$i
  printf 'Package: bp-bench%s\nVersion: 1.0\nArchitecture: all\nMaintainer: bench <bench@example>\nDescription: a bench package\n' $i > $d/DEBIAN/control
  echo $i > $d/usr/share/bp-bench$i/x
  dpkg-deb --root-owner-group --build $d /srv/repo/bp-bench${i}_1.0_all.deb >/dev/null
done
cd /srv/repo
apt-ftparchive packages . > Packages; apt-ftparchive release . > Release
export GNUPGHOME=/srv/gnupg; mkdir -m 700 -p $GNUPGHOME
gpg -q --batch --passphrase '' --quick-gen-key 'bench <bench@example>' ed25519 sign never 2>/dev/null
gpg -q --batch --yes --clearsign -o InRelease Release
gpg -q --armor --export > /srv/key.asc; gpgconf --kill gpg-agent
cd /
key=$(sed 's/^/            /' /srv/key.asc)

ms() { python3 -c 'import sys,statistics; v=sorted(float(x) for x in sys.stdin.read().split()); print(f"median {statistics.median(v):.1f} ms, min {v[0]:.1f}, max {v[-1]:.1f} (n={len(v)})")'; }
now() { date +%s%N; }
step_ms() { python3 -c 'import json,sys; print(json.load(open("/run/bootplan/status.json"))["steps"][sys.argv[1]]["duration_ms"])' "$1"; }

# 1. 50 satisfied packages.
{
  echo "version: 1"; echo "name: bench-pkgs"; echo "facts: { provider: local }"; echo "steps:"
  echo "  base:"; echo "    packages:"
  echo "      install: [$(seq -w 1 50 | sed 's/^/bp-bench/' | paste -sd, -)]"
  echo "      repos:"; echo "        - name: local"; echo "          uri: \"file:/srv/repo\""; echo "          suite: \"./\""
  echo "          key: |"; echo "$key"
} > /etc/bootplan/pkgs.yaml
"$bin" run /etc/bootplan/pkgs.yaml > /tmp/first.log || { cat /tmp/first.log; exit 1; }
for _ in $(seq "$runs"); do "$bin" run /etc/bootplan/pkgs.yaml >/dev/null; step_ms base; done > /tmp/step
for _ in $(seq "$runs"); do a=$(now); "$bin" run /etc/bootplan/pkgs.yaml >/dev/null; b=$(now); echo "$(( (b - a) / 1000 ))e-3"; done > /tmp/wall
echo "50 satisfied packages, the step: $(ms < /tmp/step)"
echo "50 satisfied packages, the whole run: $(ms < /tmp/wall)"

# 2. 20 users in place.
getent group bench-admins >/dev/null || groupadd bench-admins
{
  echo "version: 1"; echo "name: bench-users"; echo "facts: { provider: local }"; echo "steps:"
  echo "  admins: { group: { name: bench-ops, gid: 2600 } }"
  for i in $(seq -w 1 20); do
    echo "  u$i:"
    echo "    user: { name: bench$i, uid: 25$i, groups: [bench-ops], shell: /bin/bash, sudo: [\"ALL=(ALL) NOPASSWD: /usr/bin/true\"], ssh_authorized_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2hIK1UdQ5ufYQSpO9URbTuIQZFwdMq0RRhc+FJ9f5 ops@example\"] }"
  done
} > /etc/bootplan/users.yaml
"$bin" run /etc/bootplan/users.yaml > /tmp/first.log || { cat /tmp/first.log; exit 1; }
for _ in $(seq "$runs"); do a=$(now); "$bin" run /etc/bootplan/users.yaml >/dev/null; b=$(now); echo "$(( (b - a) / 1000 ))e-3"; done > /tmp/wall
echo "20 users in place, the whole run: $(ms < /tmp/wall)"

# 3. Installing 10 packages: bootplan against apt-get directly.
ten=$(seq 51 60 | sed 's/^/bp-bench/' | paste -sd' ' -)
{
  echo "version: 1"; echo "name: bench-install"; echo "facts: { provider: local }"; echo "steps:"
  echo "  base:"; echo "    packages:"
  echo "      install: [$(echo $ten | tr ' ' ,)]"
  echo "      repos:"; echo "        - name: local"; echo "          uri: \"file:/srv/repo\""; echo "          suite: \"./\""
  echo "          key: |"; echo "$key"
} > /etc/bootplan/install.yaml
installs=$(( runs < 7 ? runs : 7 ))
: > /tmp/bp; : > /tmp/apt
for _ in $(seq "$installs"); do
  dpkg -P $ten >/dev/null 2>&1 || true
  a=$(now); "$bin" run /etc/bootplan/install.yaml >/dev/null; b=$(now); echo "$(( (b - a) / 1000 ))e-3" >> /tmp/bp
  dpkg -P $ten >/dev/null 2>&1
  a=$(now)
  DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install $ten >/dev/null
  b=$(now); echo "$(( (b - a) / 1000 ))e-3" >> /tmp/apt
done
echo "install 10 packages, bootplan run: $(ms < /tmp/bp)"
echo "install 10 packages, apt-get install: $(ms < /tmp/apt)"
python3 - <<'PY'
import statistics
b = statistics.median(float(x) for x in open('/tmp/bp').read().split())
a = statistics.median(float(x) for x in open('/tmp/apt').read().split())
print(f"install ratio bootplan / apt-get: {b / a:.3f}x")
PY
INNER

echo "bootplan $($bin --version 2>/dev/null || true); $(nproc) cores; $(uname -r)"
unshare --mount --uts --ipc --net --propagation private bash bench/throwaway-root.sh "$t" "$t/inner.sh" -- "$bin" "$runs"
