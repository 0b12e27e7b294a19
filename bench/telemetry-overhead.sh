#!/usr/bin/env bash
# Telemetry overhead: a 100-step no-op plan run with telemetry off, with
# metrics (endpoint + textfile), and with metrics + OTLP traces to a loopback
# receiver. Needs hyperfine (scripts/deps/prometheus.sh) and python3.
# Usage: bench/telemetry-overhead.sh [path/to/bootplan]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/bootplan}"
[ -x "$BIN" ] || cargo build --release
BIN="$(realpath "$BIN")"
WORK="$(mktemp -d)"
RECEIVER_PID=""
cleanup() { [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# A loopback OTLP/HTTP sink: answers 200 to every POST.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
python3 - "$PORT" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
RECEIVER_PID=$!
for _ in $(seq 50); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && break
  sleep 0.1
done

steps() {
  for i in $(seq 0 99); do
    printf '  s%02d:\n    run: ["true"]\n    frequency: always\n' "$i"
  done
}
{ printf 'version: 1\nname: bench\nsteps:\n'; steps; } > "$WORK/off.yaml"
{ printf 'version: 1\nname: bench\ntelemetry:\n  metrics: { listen: "127.0.0.1:0", textfile: m.prom }\nsteps:\n'; steps; } > "$WORK/metrics.yaml"
{ printf 'version: 1\nname: bench\ntelemetry:\n  metrics: { listen: "127.0.0.1:0", textfile: m.prom }\n  traces: { otlp: "http://127.0.0.1:%s" }\nsteps:\n' "$PORT"; steps; } > "$WORK/all.yaml"

export BOOTPLAN_STATE_DIR="$WORK/state" BOOTPLAN_RUN_DIR="$WORK/run" BOOTPLAN_LOG_FORMAT=json
cd "$WORK"
hyperfine --warmup 3 --runs "${RUNS:-30}" --export-markdown "$WORK/result.md" \
  -n "telemetry off" "$BIN run off.yaml > /dev/null" \
  -n "metrics (endpoint + textfile)" "$BIN run metrics.yaml > /dev/null" \
  -n "metrics + traces (OTLP/HTTP)" "$BIN run all.yaml > /dev/null"
cat "$WORK/result.md"
