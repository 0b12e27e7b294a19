#!/usr/bin/env bash
# Download benchmark (not a test), on loopback against nginx from Debian:
#   1. a 1 GiB file with sha256 verification: bootplan vs `curl -o` then
#      `sha256sum` (bootplan hashes while streaming, then places the file
#      atomically and durably);
#   2. a 200 MB .tar.zst downloaded and extracted: bootplan vs
#      `curl | zstd -d | tar x`;
#   3. a cache hit: the step's time when its content is already cached.
# Both sides of each pair write to the same disk; bootplan's cache is off
# in 1 and 2 (`cache: false`), so every round downloads.
#
# Usage: bench/download.sh [rounds]   (default 5 interleaved rounds per pair)
# Needs: nginx (scripts/deps/nginx.sh), curl, zstd, GNU time, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
bash scripts/deps/nginx.sh >/dev/null
[ -x /usr/bin/time ] || apt-get -o DPkg::Lock::Timeout=600 install -y time >/dev/null
command -v zstd >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y zstd >/dev/null

cargo build --release --quiet --bin bootplan
bin=$PWD/target/release/bootplan
# On disk (not a tmpfs): downloads land where real ones do.
work=$(mktemp -d -p /var/tmp bootplan-bench.XXXXXX)
rundir=$(mktemp -d -p /dev/shm)
nginx_pid=
cleanup() {
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$work" "$rundir"
}
trap cleanup EXIT
export BOOTPLAN_STATE_DIR=$work/state BOOTPLAN_RUN_DIR=$rundir BOOTPLAN_LOG_FORMAT=json

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/www" "$work/nginx/tmp" "$work/out"
cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
error_log $work/nginx/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp;
  proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp;
  scgi_temp_path $work/nginx/tmp;
  default_type application/octet-stream;
  sendfile on;
  server { listen 127.0.0.1:$port; root $work/www; }
}
CONF
/usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.05
done

echo "making the content..." >&2
head -c 1073741824 /dev/urandom > "$work/www/big.bin"
mkdir -p "$work/tree/agent"
for i in $(seq 1 100); do head -c 2000000 /dev/urandom > "$work/tree/agent/f$i"; done
tar -C "$work/tree" -cf - agent | zstd -q -1 -o "$work/www/agent.tar.zst"
head -c 10000000 /dev/urandom > "$work/www/small.bin"
sha() { sha256sum "$1" | cut -d' ' -f1; }
url=http://127.0.0.1:$port

cat > "$work/big.yaml" <<PLAN
version: 1
name: bench-big
steps:
  big:
    download: { url: "$url/big.bin", sha256: "$(sha "$work/www/big.bin")", dest: "$work/out/big.bin", cache: false }
    frequency: always
PLAN
cat > "$work/tree.yaml" <<PLAN
version: 1
name: bench-tree
steps:
  agent:
    download: { url: "$url/agent.tar.zst", sha256: "$(sha "$work/www/agent.tar.zst")", dest: "$work/out/tree-bp/", extract: { format: tar.zst }, cache: false }
    frequency: always
PLAN
cat > "$work/hit.yaml" <<PLAN
version: 1
name: bench-hit
steps:
  small:
    download: { url: "$url/small.bin", sha256: "$(sha "$work/www/small.bin")", dest: "$work/out/small.bin" }
    frequency: always
PLAN

curl_sha="sh -c 'curl -s -o $work/out/curl.bin $url/big.bin && sha256sum $work/out/curl.bin'"
# The same, with the file made durable as bootplan makes it (fsync).
curl_sha_sync="sh -c 'curl -s -o $work/out/curl.bin $url/big.bin && sha256sum $work/out/curl.bin && sync $work/out/curl.bin'"
curl_tar="sh -c 'rm -rf $work/out/tree-curl && mkdir -p $work/out/tree-curl && curl -s $url/agent.tar.zst | zstd -q -d | tar -x -C $work/out/tree-curl'"
# The same, with the tree made durable as bootplan makes it (syncfs).
curl_tar_sync="sh -c 'rm -rf $work/out/tree-curl && mkdir -p $work/out/tree-curl && curl -s $url/agent.tar.zst | zstd -q -d | tar -x -C $work/out/tree-curl && sync -f $work/out/tree-curl'"

echo "1 GiB with sha256, $rounds interleaved rounds:"
python3 bench/interleave.py --ratio 1/2 --ratio 1/3 "$rounds" "$bin run $work/big.yaml" "$curl_sha" "$curl_sha_sync"
echo
echo "$(du -m "$work/www/agent.tar.zst" | cut -f1) MB .tar.zst, download and extract, $rounds interleaved rounds:"
python3 bench/interleave.py --ratio 1/2 --ratio 1/3 "$rounds" "$bin run $work/tree.yaml" "$curl_tar" "$curl_tar_sync"

rss=$(/usr/bin/time -f %M "$bin" run "$work/big.yaml" 2>&1 >/dev/null | tail -1)
rss_tree=$(/usr/bin/time -f %M "$bin" run "$work/tree.yaml" 2>&1 >/dev/null | tail -1)
echo
echo "peak RSS: 1 GiB download $((rss / 1024)) MiB; tar.zst extract $((rss_tree / 1024)) MiB"

# Cache hit: the first run fills the cache; the next ones find the 10 MB
# file there and make no request. With the file still in place (same
# content, mode and owner) it is compared and left alone; removed first, it
# is copied into place and made durable.
"$bin" run "$work/hit.yaml" >/dev/null
step_ms() { # runs: prints the step's duration_ms of each
  for _ in $(seq 20); do
    $1
    "$bin" run "$work/hit.yaml" | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("event") == "step_finished":
        print(e["duration_ms"])'
  done | python3 -c '
import sys, statistics
v = [float(x) for x in sys.stdin]
print(f"median {statistics.median(v):.0f} ms, min {min(v):.0f} ms, max {max(v):.0f} ms (20 runs)")'
}
echo
echo "cache hit of a 10 MB file, the step's duration_ms:"
echo "  destination unchanged: $(step_ms true)"
echo "  destination removed:   $(step_ms "rm -f $work/out/small.bin")"
