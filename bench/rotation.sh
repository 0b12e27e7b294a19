#!/usr/bin/env bash
# Rotation benchmark (not a test): bootplan supervising an app against the
# OpenBao agent doing the same job. Both log in with AppRole, render 10 KV
# secrets into one file, read them again every INTERVAL, and send SIGHUP to
# the app when the file changed. Measured:
#   - propagation: from `bao kv put` of a new value to the app receiving
#     SIGHUP (the app timestamps each signal), over ROTATIONS rotations;
#   - requests to the server, counted in OpenBao's audit log over WINDOW
#     seconds with no rotation, per refresh cycle, and scaled to one hour at
#     a 1-minute refresh; KV data reads (which carry the values) apart from
#     metadata reads (bootplan asks a secret's version before its data; the
#     policy allows both to both sides).
# The two run one after the other against the same dev server.
#
# Usage: bench/rotation.sh [rotations] [interval_s] [window_s]   (default 10 2 20)
# Needs: the OpenBao binary (scripts/deps/openbao.sh), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rotations=${1:-10}
interval=${2:-2}
window=${3:-20}

bash scripts/deps/openbao.sh >/dev/null
bao=$(PATH=$PWD/.tools/bin:$PATH command -v bao)
cargo build --release --quiet --bin bootplan
bin=$PWD/target/release/bootplan

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export BAO_ADDR=http://127.0.0.1:$port BAO_TOKEN=root
cat >"$work/server.hcl" <<EOF
audit "file" "file" {
  options = { file_path = "$work/audit.log" }
}
EOF
HOME=$work "$bao" server -dev -dev-no-store-token -dev-root-token-id=root \
  -dev-listen-address=127.0.0.1:$port -config="$work/server.hcl" >"$work/server.log" 2>&1 &
pids+=($!)
until "$bao" status >/dev/null 2>&1; do sleep 0.1; done

"$bao" auth enable approle >/dev/null
printf 'path "secret/data/bench/*" { capabilities = ["read"] }\npath "secret/metadata/bench/*" { capabilities = ["read"] }\n' >"$work/policy.hcl"
"$bao" policy write bench "$work/policy.hcl" >/dev/null
"$bao" write auth/approle/role/bench token_policies=bench token_ttl=1h token_max_ttl=24h >/dev/null
"$bao" read -field=role_id auth/approle/role/bench/role-id >"$work/role-id"
"$bao" write -f -field=secret_id auth/approle/role/bench/secret-id >"$work/secret-id"
for i in $(seq 1 10); do "$bao" kv put "secret/bench/k$i" v="value-$i-0000000000" >/dev/null; done

# The app: writes the time of every SIGHUP, in nanoseconds.
cat >"$work/app.sh" <<'EOF'
#!/bin/sh
: >> "$1/hups"
echo $$ > "$1/app.pid"
trap 'date +%s%N >> "$1/hups"' HUP
while :; do sleep 0.02; done
EOF
chmod +x "$work/app.sh"

# Writes a new value of k1, waits for the next SIGHUP and prints the delay in ms.
rotate_once() { # dir n
  local dir=$1 n=$2 before t0 t1
  before=$(wc -l <"$dir/hups" 2>/dev/null || echo 0)
  t0=$(date +%s%N)
  "$bao" kv put secret/bench/k1 v="value-1-rotated-$n-$RANDOM" >/dev/null
  until [ "$(wc -l <"$dir/hups" 2>/dev/null || echo 0)" -gt "$before" ]; do sleep 0.005; done
  t1=$(tail -1 "$dir/hups")
  echo $(((t1 - t0) / 1000000))
}

# Counts the audit log's responses since line $2 by kind.
count_requests() { # since_line
  python3 - "$work/audit.log" "$1" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()[int(sys.argv[2]):]
kinds = {}
for line in lines:
    entry = json.loads(line)
    if entry.get("type") != "response":
        continue
    path = entry["request"]["path"]
    kind = ("kv metadata" if "/metadata/" in path else "kv data") if path.startswith("secret/") else path
    kinds[kind] = kinds.get(kind, 0) + 1
print(" ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
print(sum(kinds.values()))
EOF
}

measure() { # name dir
  local name=$1 dir=$2 delays=() start_line
  until [ -s "$dir/out.txt" ] && [ -s "$dir/app.pid" ]; do sleep 0.05; done
  sleep 1
  for n in $(seq 1 "$rotations"); do
    delays+=("$(rotate_once "$dir" "$n")")
    # A pause of up to one interval (the last rotation ended just after a
    # refresh), so rotations fall anywhere in the refresh cycle.
    local ms=$((RANDOM % (interval * 1000)))
    sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  done
  start_line=$(wc -l <"$work/audit.log")
  sleep "$window"
  local counts
  counts=$(count_requests "$start_line")
  python3 - "$name" "$interval" "$window" "$counts" "${delays[@]}" <<'EOF'
import statistics, sys
name, interval, window, counts = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
delays = sorted(int(d) for d in sys.argv[5:])
detail, total = counts.split("\n")
cycles = window / interval
per_cycle = int(total) / cycles
print(f"{name}: propagation ms median {statistics.median(delays):.0f}, min {delays[0]}, max {delays[-1]} "
      f"(refresh every {interval:g}s, {len(delays)} rotations)")
print(f"{name}: requests in {window:g}s idle: {detail} -> {per_cycle:.1f} per refresh cycle, "
      f"{per_cycle * 60:.0f} per hour at a 1-minute refresh")
EOF
}

# --- bootplan
mkdir -p "$work/bp"
{
  echo "version: 1"
  echo "name: bench-rotation"
  echo "backends:"
  echo "  vault:"
  echo "    address: $BAO_ADDR"
  echo "    insecure_http: true"
  echo "    auth: { approle: { role_id: { file: $work/role-id }, secret_id: { file: $work/secret-id } } }"
  echo "secrets:"
  for i in $(seq 1 10); do
    echo "  k$i: { vault: { path: secret/bench/k$i, key: v }, refresh: ${interval}s }"
  done
  echo "steps:"
  echo "  conf:"
  printf '    template: { inline: "'
  for i in $(seq 1 10); do printf 'k%s={{ secrets.k%s }}\\n' "$i" "$i"; done
  echo "\", dest: $work/bp/out.txt }"
  echo "    on_change: { reload: { signal: HUP, target: app } }"
  echo "  app: { exec: [\"$work/app.sh\", \"$work/bp\"], needs: [conf] }"
} >"$work/bp/plan.yaml"
BOOTPLAN_STATE_DIR=$work/bp/state BOOTPLAN_RUN_DIR=$work/bp/run \
  "$bin" run --supervise "$work/bp/plan.yaml" >"$work/bp/log" 2>&1 &
bp_pid=$!
pids+=($bp_pid)
measure bootplan "$work/bp"
kill "$bp_pid"

# --- OpenBao agent
mkdir -p "$work/agent"
{
  cat <<EOF
vault { address = "$BAO_ADDR" }
auto_auth {
  method "approle" {
    config = {
      role_id_file_path = "$work/role-id"
      secret_id_file_path = "$work/secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}
template_config { static_secret_render_interval = "${interval}s" }
template {
  destination = "$work/agent/out.txt"
  command = "sh -c 'kill -HUP \$(cat $work/agent/app.pid)'"
  contents = <<EOT
EOF
  for i in $(seq 1 10); do
    echo "k$i={{ with secret \"secret/data/bench/k$i\" }}{{ .Data.data.v }}{{ end }}"
  done
  echo "EOT"
  echo "}"
} >"$work/agent/agent.hcl"
"$work/app.sh" "$work/agent" &
pids+=($!)
HOME=$work "$bao" agent -config="$work/agent/agent.hcl" >"$work/agent/log" 2>&1 &
pids+=($!)
measure "bao agent" "$work/agent"
