#!/usr/bin/env python3
"""Interleaved timing: runs each command once per round, round after round,
so slow drift on a shared machine hits every command alike (hyperfine runs
one command's batch after another's). The order rotates from round to
round, so no command always runs first. Reports the median wall time, the
minimum, and the median CPU time (user + system of the command and every
descendant it waited for) with the CPU utilisation it implies.

With `--ratio A/B` (1-based command numbers, repeatable) it also reports,
for that pair, the median and quartiles of the per-round ratio A's wall time
/ B's: both ran within the same round, so a slow patch of the host that
lasts a round or more cancels out of each ratio.

With `--json FILE` it also writes the medians and the ratios to FILE, for a
script that reports them (`bench/core.sh` does).

Usage: bench/interleave.py [--ratio A/B ...] [--json FILE] ROUNDS 'command one' ...
Each command runs through `sh -c 'exec ...'` with stdout on /dev/null.
"""
import json
import os
import statistics
import sys
import time


def once(command, devnull):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(devnull, 1)
        os.execvp("sh", ["sh", "-c", "exec " + command])
    _, _, usage = os.wait4(pid, 0)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def parse_args(args):
    ratios, json_path = [], None
    while args and args[0] in ("--ratio", "--json"):
        if args[0] == "--ratio":
            a, b = args[1].split("/")
            ratios.append((int(a) - 1, int(b) - 1))
        else:
            json_path = args[1]
        args = args[2:]
    return ratios, json_path, int(args[0]), args[1:]


def main():
    ratios, json_path, rounds, commands = parse_args(sys.argv[1:])
    devnull = os.open(os.devnull, os.O_WRONLY)
    results = [[] for _ in commands]
    for i, command in enumerate(commands):  # warm-up
        for _ in range(3):
            once(command, devnull)
    for r in range(rounds):
        # Each round starts one command further along, so no command is
        # always the one that runs first (or right after a given other).
        for k in range(len(commands)):
            i = (r + k) % len(commands)
            results[i].append(once(commands[i], devnull))
    report = {"rounds": rounds, "commands": [], "ratios": []}
    print("| command | wall median | wall min | CPU median | CPUs used |")
    print("|---|---|---|---|---|")
    for command, samples in zip(commands, results):
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        fastest = min(s[0] for s in samples)
        print(f"| `{command}` | {wall * 1000:.1f} ms | {fastest * 1000:.1f} ms "
              f"| {cpu * 1000:.1f} ms | {cpu / wall:.2f} |")
        report["commands"].append({"command": command, "wall_median": wall})
    for a, b in ratios:
        per_round = [x[0] / y[0] for x, y in zip(results[a], results[b])]
        q1, median, q3 = statistics.quantiles(per_round, n=4)
        print(f"\nPer-round ratio of command {a + 1} to command {b + 1}: "
              f"median {median:.3f}x (quartiles {q1:.3f}x–{q3:.3f}x, {rounds} rounds)")
        report["ratios"].append({"a": a + 1, "b": b + 1, "q1": q1, "median": median, "q3": q3})
    if json_path:
        with open(json_path, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
