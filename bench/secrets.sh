#!/usr/bin/env bash
# Secrets benchmark (not a test): a one-shot boot job, bootplan against the
# OpenBao agent. Both log in with AppRole, read N KV v2 secrets (N paths),
# render them into one file and exit (the agent with `exit_after_auth`).
# For N = 1, 10, 50: interleaved rounds (bench/interleave.py), the median
# wall time of each and the median per-round ratio; then the requests each
# made to the server in one run, from OpenBao's audit log.
#
# Usage: bench/secrets.sh [rounds]   (default 20)
# Needs: the OpenBao binary (scripts/deps/openbao.sh), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}

bash scripts/deps/openbao.sh >/dev/null
bao=$(PATH=$PWD/.tools/bin:$PATH command -v bao)
cargo build --release --quiet --bin bootplan
bin=$PWD/target/release/bootplan

work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export BAO_ADDR=http://127.0.0.1:$port BAO_TOKEN=root
cat >"$work/server.hcl" <<EOF
audit "file" "file" {
  options = { file_path = "$work/audit.log" }
}
EOF
HOME=$work "$bao" server -dev -dev-no-store-token -dev-root-token-id=root \
  -dev-listen-address=127.0.0.1:$port -config="$work/server.hcl" >"$work/server.log" 2>&1 &
server=$!
until "$bao" status >/dev/null 2>&1; do sleep 0.1; done
"$bao" auth enable approle >/dev/null
printf 'path "secret/data/bench/*" { capabilities = ["read"] }\n' >"$work/policy.hcl"
"$bao" policy write bench "$work/policy.hcl" >/dev/null
"$bao" write auth/approle/role/bench token_policies=bench token_ttl=1h >/dev/null
"$bao" read -field=role_id auth/approle/role/bench/role-id >"$work/role-id"
"$bao" write -f -field=secret_id auth/approle/role/bench/secret-id >"$work/secret-id"
for i in $(seq 1 50); do "$bao" kv put "secret/bench/k$i" v="value-$i-0123456789" >/dev/null; done

setup() { # n: writes $work/n$n/{plan.yaml,agent.hcl,bootplan.sh}
  local n=$1 dir=$work/n$1
  mkdir -p "$dir"
  {
    echo "version: 1"
    echo "name: bench-secrets-$n"
    echo "backends:"
    echo "  vault:"
    echo "    address: $BAO_ADDR"
    echo "    auth: { approle: { role_id: { file: $work/role-id }, secret_id: { file: $work/secret-id } } }"
    echo "secrets:"
    for i in $(seq 1 "$n"); do echo "  k$i: { vault: { path: secret/bench/k$i, key: v } }"; done
    echo "steps:"
    printf '  conf: { frequency: always, template: { dest: %s/bp.txt, inline: "' "$dir"
    for i in $(seq 1 "$n"); do printf 'k%s={{ secrets.k%s }}\\n' "$i" "$i"; done
    echo '" } }'
  } >"$dir/plan.yaml"
  {
    cat <<EOF
vault { address = "$BAO_ADDR" }
exit_after_auth = true
auto_auth {
  method "approle" {
    config = {
      role_id_file_path = "$work/role-id"
      secret_id_file_path = "$work/secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}
template {
  destination = "$dir/agent.txt"
  contents = <<EOT
EOF
    for i in $(seq 1 "$n"); do
      echo "k$i={{ with secret \"secret/data/bench/k$i\" }}{{ .Data.data.v }}{{ end }}"
    done
    echo "EOT"
    echo "}"
  } >"$dir/agent.hcl"
  # Each bootplan run starts from empty state and run dirs, as a boot does.
  cat >"$dir/bootplan.sh" <<EOF
#!/bin/sh
rm -rf $dir/state $dir/run
BOOTPLAN_STATE_DIR=$dir/state BOOTPLAN_RUN_DIR=$dir/run BOOTPLAN_LOG_FORMAT=json exec $bin run $dir/plan.yaml
EOF
  cat >"$dir/agent.sh" <<EOF
#!/bin/sh
HOME=$work exec $bao agent -log-level=error -config=$dir/agent.hcl
EOF
  chmod +x "$dir/bootplan.sh" "$dir/agent.sh"
}

requests() { # command: the audit log's responses during one run, by kind
  local before
  before=$(wc -l <"$work/audit.log")
  "$@" >/dev/null 2>&1
  python3 - "$work/audit.log" "$before" <<'EOF'
import json, sys
kinds = {}
for line in open(sys.argv[1]).read().splitlines()[int(sys.argv[2]):]:
    entry = json.loads(line)
    if entry.get("type") == "response":
        path = entry["request"]["path"]
        if path.startswith("secret/"):
            kind = "kv read"
        elif path.startswith("sys/internal/ui/mounts/"):
            kind = "mount lookup"
        else:
            kind = path
        kinds[kind] = kinds.get(kind, 0) + 1
print(f"{sum(kinds.values())} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
EOF
}

for n in 1 10 50; do
  setup "$n"
  dir=$work/n$n
  "$dir/bootplan.sh" >/dev/null 2>&1 && "$dir/agent.sh" >/dev/null 2>&1
  cmp -s <(sort "$dir/bp.txt") <(sort "$dir/agent.txt") || { echo "N=$n: the two files differ" >&2; exit 1; }
  echo "== N=$n"
  python3 bench/interleave.py --ratio 1/2 "$rounds" "$dir/bootplan.sh" "$dir/agent.sh"
  echo "requests per run: bootplan $(requests "$dir/bootplan.sh"); agent $(requests "$dir/agent.sh")"
done
