#!/usr/bin/env bash
# Core benchmark (not a test): 100-step plans of no-op commands, wide and
# chained, run by bootplan vs the same commands spawned directly by a shell;
# peak RSS; and a rerun where every step is skipped.
#
# Usage: bench/core.sh [runs]   (default 20 timed runs per command)
# Needs: hyperfine, GNU time, taskset (installed with apt when missing), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}

need() { command -v "$1" >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y "$2" >/dev/null; }
need hyperfine hyperfine
need taskset util-linux
[ -x /usr/bin/time ] || apt-get -o DPkg::Lock::Timeout=600 install -y time >/dev/null

cargo build --release --quiet --bin bootplan --example std-spawn
bin=$PWD/target/release/bootplan
# The same commands started by a program with Rust's std::process::Command,
# a second view of "spawning directly" beside the shell loop.
stdspawn=$PWD/target/release/examples/std-spawn
work=$(mktemp -d)
# The run dir is a tmpfs, as /run is on a real machine; the state dir is on disk.
rundir=$(mktemp -d -p /dev/shm)
trap 'rm -rf "$work" "$rundir"' EXIT
export BOOTPLAN_STATE_DIR=$work/state BOOTPLAN_RUN_DIR=$rundir BOOTPLAN_LOG_FORMAT=json

gen() { # name shape frequency
  local name=$1 shape=$2 freq=$3
  {
    echo "version: 1"
    echo "name: bench-$name"
    echo "max_parallel: 100"
    echo "steps:"
    for i in $(seq 1 100); do
      if [ "$shape" = chain ] && [ "$i" -gt 1 ]; then
        echo "  s$i: { run: [\"/bin/true\"], frequency: $freq, needs: [s$((i - 1))] }"
      else
        echo "  s$i: { run: [\"/bin/true\"], frequency: $freq }"
      fi
    done
  } > "$work/$name.yaml"
}
gen wide wide always
gen chain chain always
gen skip chain per-instance

direct_chain='for i in $(seq 1 100); do /bin/true; done'
direct_wide='for i in $(seq 1 100); do /bin/true & done; wait'

# -N: no intermediate shell; output goes to /dev/null.
hyperfine -N --style basic --warmup 3 --runs "$runs" --export-json "$work/chain.json" \
  -n "bootplan chain" "$bin run $work/chain.yaml" \
  -n "direct chain" "sh -c '$direct_chain'"
hyperfine -N --style basic --warmup 3 --runs "$runs" --export-json "$work/wide.json" \
  -n "bootplan wide" "$bin run $work/wide.yaml" \
  -n "direct wide" "sh -c '$direct_wide'"

"$bin" run "$work/skip.yaml" >/dev/null
hyperfine -N --style basic --warmup 3 --runs "$runs" --export-json "$work/skip.json" \
  -n "bootplan rerun, all skipped" "$bin run $work/skip.yaml"

# hyperfine measures one command's batch, then the other's: on a shared VM
# a noisy patch lands on one side. The interleaved rounds below are the
# ratio to read (medians, same moments for both sides).
echo
echo "Interleaved, $runs rounds (bench/interleave.py):"
python3 bench/interleave.py --ratio 1/2 --ratio 1/5 --ratio 5/2 --ratio 3/4 \
  --json "$work/interleaved.json" "$runs" \
  "$bin run $work/chain.yaml" "sh -c '$direct_chain'" \
  "$bin run $work/wide.yaml" "sh -c '$direct_wide'" "$stdspawn 100"

# The chain is serial, so one CPU is enough for it; with every command
# pinned to the same CPU the host cannot place a child on the other one
# (100-400 µs per wake-up across CPUs here), and the spread between rounds
# shrinks. A lower-variance view of the chain, not the headline figure.
echo
echo "Interleaved, $runs rounds, chain only, every command on CPU 1 (taskset):"
python3 bench/interleave.py --ratio 1/2 --ratio 1/3 --ratio 3/2 \
  --json "$work/pinned.json" "$runs" \
  "taskset -c 1 $bin run $work/chain.yaml" "taskset -c 1 sh -c '$direct_chain'" \
  "taskset -c 1 $stdspawn 100"

rss() { /usr/bin/time -f %M "$bin" run "$1" 2>&1 >/dev/null | tail -1; }
rss_chain=$(rss "$work/chain.yaml")
rss_wide=$(rss "$work/wide.yaml")
rss_skip=$(rss "$work/skip.yaml")

python3 - "$work" "$rss_chain" "$rss_wide" "$rss_skip" <<'PY'
import json, sys
work, rss_chain, rss_wide, rss_skip = sys.argv[1:]
def means(name):
    return {r["command"]: r for r in json.load(open(f"{work}/{name}.json"))["results"]}
chain, wide, skip = means("chain"), means("wide"), means("skip")
def ms(r): return f'{r["mean"]*1000:.1f} ± {r["stddev"]*1000:.1f} (median {r["median"]*1000:.1f}) ms'
print()
# The machine this was written on is a shared VM: means carry its outliers,
# so the ratio of medians is printed beside the ratio of means.
print("| measurement | bootplan | direct spawn | hyperfine ratio (means / medians) |")
print("|---|---|---|---|")
for label, table, b, d in [("100 chained no-op steps", chain, "bootplan chain", "direct chain"),
                           ("100 parallel no-op steps", wide, "bootplan wide", "direct wide")]:
    print(f"| {label} | {ms(table[b])} | {ms(table[d])} | "
          f"{table[b]['mean']/table[d]['mean']:.2f}x / {table[b]['median']/table[d]['median']:.2f}x |")
print(f'| rerun, all 100 steps skipped | {ms(skip["bootplan rerun, all skipped"])} | | |')
print(f"| peak RSS (chain / wide / skipped rerun) | {int(rss_chain)/1024:.1f} / {int(rss_wide)/1024:.1f} / {int(rss_skip)/1024:.1f} MiB | | |")

# The interleaved rounds are the ratios to read against the 1.5x target
# (hyperfine's batches above are not). "met" needs the upper quartile
# under the target, "edge" only the median.
reports = {name: json.load(open(f"{work}/{name}.json")) for name in ("interleaved", "pinned")}
def ratio(name, a, b):
    return next(r for r in reports[name]["ratios"] if (r["a"], r["b"]) == (a, b))
def verdict(r, target=1.5):
    return "met" if r["q3"] < target else "edge" if r["median"] < target else "missed"
print()
print("| per-round ratio (bench/interleave.py) | median | quartiles | under 1.5x |")
print("|---|---|---|---|")
for label, name, a, b in [("chain / shell loop, unpinned", "interleaved", 1, 2),
                          ("chain / shell loop, pinned to CPU 1", "pinned", 1, 2),
                          ("wide / shell loop, unpinned", "interleaved", 3, 4),
                          ("chain / std spawner, unpinned", "interleaved", 1, 5),
                          ("chain / std spawner, pinned", "pinned", 1, 3),
                          ("std spawner / shell loop, unpinned", "interleaved", 5, 2)]:
    r = ratio(name, a, b)
    print(f"| {label} | {r['median']:.3f}x | {r['q1']:.3f}x–{r['q3']:.3f}x | {verdict(r)} |")
PY
