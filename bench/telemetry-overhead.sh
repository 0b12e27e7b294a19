#!/usr/bin/env bash
# Telemetry overhead: a 100-step no-op plan run with telemetry off, with
# metrics (endpoint + textfile), and with metrics + OTLP traces to a loopback
# receiver; then the trace pipeline's throughput: a STEPS-step plan (default
# 2000) of `wait: { file }` steps (no child process, so the CPU is
# bootplan's), with metrics and with metrics + traces, alternated SPAN_RUNS
# times (default 7): spans the receiver counted per CPU second traces add.
# Needs hyperfine (scripts/deps/prometheus.sh) and python3.
# Usage: [RUNS=30] [STEPS=2000] [SPAN_RUNS=7] bench/telemetry-overhead.sh [path/to/bootplan]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/bootplan}"
[ -x "$BIN" ] || cargo build --release
BIN="$(realpath "$BIN")"
WORK="$(mktemp -d)"
RECEIVER_PID=""
cleanup() { [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# A loopback OTLP/HTTP sink: answers 200 to every POST and keeps the
# running count of spans received in $WORK/spans.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
python3 - "$PORT" "$WORK/spans" <<'PY' &
import http.server, sys, threading
def fields(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        if key & 7 == 2:
            n, i = varint(buf, i); yield key >> 3, buf[i:i + n]; i += n
        elif key & 7 == 0: _, i = varint(buf, i)
        elif key & 7 == 1: i += 8
        elif key & 7 == 5: i += 4
        else: raise ValueError("wire type")
def varint(buf, i):
    v = s = 0
    while True:
        b = buf[i]; i += 1; v |= (b & 0x7f) << s; s += 7
        if b < 0x80: return v, i
def spans(body):  # ExportTraceServiceRequest.resource_spans.scope_spans.spans
    return sum(1 for f, rs in fields(body) if f == 1 for g, ss in fields(rs) if g == 2
               for h, _ in fields(ss) if h == 2)
total, lock = 0, threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global total
        n = spans(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with lock:
            total += n
            open(sys.argv[2], "w").write(str(total))
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

# Throughput: spans delivered per CPU second that traces add (bootplan's
# CPU, from wait4).
waits() {
  for i in $(seq 0 $((${STEPS:-2000} - 1))); do
    printf '  w%d:\n    wait: { file: off.yaml }\n' "$i"
  done
}
{ printf 'version: 1\nname: bench\ntelemetry:\n  metrics: { listen: "127.0.0.1:0", textfile: m.prom }\nsteps:\n'; waits; } > many-metrics.yaml
{ printf 'version: 1\nname: bench\ntelemetry:\n  metrics: { listen: "127.0.0.1:0", textfile: m.prom }\n  traces: { otlp: "http://127.0.0.1:%s" }\nsteps:\n' "$PORT"; waits; } > many-all.yaml
python3 - "$BIN" "${SPAN_RUNS:-7}" "$WORK/spans" <<'PY'
import os, statistics, subprocess, sys
binp, runs, counter = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def received():
    try: return int(open(counter).read())
    except (OSError, ValueError): return 0
def run(plan):
    before = received()
    p = subprocess.Popen([binp, "run", plan], stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, plan
    return ru.ru_utime + ru.ru_stime, received() - before
cpu = {"many-metrics.yaml": [], "many-all.yaml": []}
spans = []
for _ in range(runs):
    for plan in cpu:
        t, n = run(plan)
        cpu[plan].append(t)
        if plan == "many-all.yaml": spans.append(n)
base, traced = statistics.median(cpu["many-metrics.yaml"]), statistics.median(cpu["many-all.yaml"])
n, extra = statistics.median(spans), traced - base
print(f"\n{n:.0f} spans per run received; CPU per run {base*1000:.0f} ms (metrics) vs {traced*1000:.0f} ms (+ traces)")
if extra > 0:
    print(f"traces add {extra*1000:.1f} ms CPU: {extra/n*1e6:.1f} µs per span, {n/extra:,.0f} spans per CPU second")
else:
    print("traces add no measurable CPU")
PY
