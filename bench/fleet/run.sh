#!/usr/bin/env bash
# Boot-storm simulation (not a test): N bootplan agents on this machine,
# started within one second, against OpenBao with a rate-limit quota, etcd
# with a `migrate` semaphore and Prometheus evaluating the rules in
# deploy/prometheus. See bench/fleet/storm.py for the phases and figures.
#
# Usage: bench/fleet/run.sh [-n AGENTS] [-r RATE] [-s SPLAY_S] [--no-baseline]
#   -n  agents per storm (default 500)
#   -r  the store's quota, requests per second (default 50)
#   -s  start splay upper bound in seconds (default 1.1x the ideal time,
#       3 requests x N / RATE)
# Needs: bao (scripts/deps/openbao.sh), etcd (etcd.sh), prometheus
# (prometheus.sh), python3. Takes about 4 minutes at N = 500 on 2 cores
# (most of it waiting for the alert's `for: 2m`).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/deps/openbao.sh >/dev/null
bash scripts/deps/etcd.sh >/dev/null
bash scripts/deps/prometheus.sh >/dev/null
cargo build --release --quiet --bin bootplan
PATH=$PWD/.tools/bin:$PATH exec python3 bench/fleet/storm.py --bin "$PWD/target/release/bootplan" "$@"
