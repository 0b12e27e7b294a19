#!/usr/bin/env bash
# Entrypoint benchmark (not a test): bootplan as a container's PID 1
# stand-in, against tini and dumb-init from Debian.
#   - the exec path: `bootplan run` of a plan whose only step is
#     `exec: ["/bin/true"]` against `tini -s -- /bin/true` and
#     `dumb-init /bin/true` (interleaved rounds, per-round ratios);
#   - `bootplan run --supervise` of the same plan, RUNS runs: the slowest;
#   - `bootplan --version` beside them: the floor of any bootplan command
#     (loading the binary), for reading the exec-path ratio;
#   - RSS of each supervisor while it supervises `sleep 30` (bootplan once
#     its lean supervisor has taken over), with its anonymous and
#     file-backed parts.
#
# Usage: bench/entrypoint.sh [rounds] [runs]   (default 40 200)
# Needs: tini and dumb-init (installed with apt when missing), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-40}
runs=${2:-200}

need() { command -v "$1" >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y "$2" >/dev/null; }
need tini tini
need dumb-init dumb-init
cargo build --release --quiet --bin bootplan
bin=$PWD/target/release/bootplan
work=$(mktemp -d)
rundir=$(mktemp -d -p /dev/shm)
trap 'rm -rf "$work" "$rundir"' EXIT
export BOOTPLAN_STATE_DIR=$work/state BOOTPLAN_RUN_DIR=$rundir BOOTPLAN_LOG_FORMAT=json

printf 'version: 1\nname: entry\nsteps:\n  app: { exec: ["/bin/true"] }\n' >"$work/true.yaml"
printf 'version: 1\nname: entry\nsteps:\n  app: { exec: ["/bin/sleep", "30"] }\n' >"$work/sleep.yaml"

echo "== exec path"
python3 bench/interleave.py --ratio 1/2 --ratio 1/3 --ratio 4/2 "$rounds" \
  "$bin run $work/true.yaml" "$(command -v tini) -s -- /bin/true" "$(command -v dumb-init) /bin/true" \
  "$bin --version"

echo "== run --supervise of /bin/true, $runs runs"
python3 - "$bin" "$work/true.yaml" "$runs" <<'EOF'
import statistics, subprocess, sys, time
bin, plan, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(runs):
    start = time.perf_counter()
    subprocess.run([bin, "run", "--supervise", plan], stdout=subprocess.DEVNULL, check=True)
    times.append((time.perf_counter() - start) * 1000)
times.sort()
over = sum(t > 20 for t in times)
print(f"median {statistics.median(times):.1f} ms, p99 {times[int(len(times) * 0.99) - 1]:.1f} ms, "
      f"max {times[-1]:.1f} ms, runs over 20 ms: {over} of {runs}")
EOF

echo "== RSS while supervising sleep 30"
rss() { awk '/^(VmRSS|RssAnon|RssFile)/ {printf "%s %s KiB  ", $1, $2} END {print ""}' "/proc/$1/status"; }
"$bin" run --supervise "$work/sleep.yaml" >/dev/null &
bp=$!
until tr '\0' ' ' <"/proc/$bp/cmdline" | grep -q __supervise; do sleep 0.05; done
sleep 0.5
echo "bootplan run --supervise: $(rss $bp)"
kill $bp; wait $bp 2>/dev/null || true
tini -s -- /bin/sleep 30 &
pid=$!
sleep 0.5
echo "tini -s: $(rss $pid)"
kill $pid; wait $pid 2>/dev/null || true
dumb-init /bin/sleep 30 &
pid=$!
sleep 0.5
echo "dumb-init: $(rss $pid)"
kill $pid; wait $pid 2>/dev/null || true
