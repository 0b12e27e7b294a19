#!/usr/bin/env python3
"""Interleaved timing: runs each command once per round, round after round,
so slow drift on a shared machine hits every command alike (hyperfine runs
one command's batch after another's). Reports the median wall time, the
minimum, and the median CPU time (user + system of the command and every
descendant it waited for) with the CPU utilisation it implies.

Usage: bench/interleave.py ROUNDS 'command one' 'command two' ...
Each command runs through `sh -c 'exec ...'` with stdout on /dev/null.
"""
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


def main():
    rounds, commands = int(sys.argv[1]), sys.argv[2:]
    devnull = os.open(os.devnull, os.O_WRONLY)
    results = {c: [] for c in commands}
    for command in commands:  # warm-up
        for _ in range(3):
            once(command, devnull)
    for _ in range(rounds):
        for command in commands:
            results[command].append(once(command, devnull))
    print("| command | wall median | wall min | CPU median | CPUs used |")
    print("|---|---|---|---|---|")
    for command, samples in results.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        fastest = min(s[0] for s in samples)
        print(f"| `{command}` | {wall * 1000:.1f} ms | {fastest * 1000:.1f} ms "
              f"| {cpu * 1000:.1f} ms | {cpu / wall:.2f} |")


if __name__ == "__main__":
    main()
