#!/usr/bin/env python3
"""Boot storm: N bootplan agents against real OpenBao, etcd and Prometheus.

Run through bench/fleet/run.sh (it installs the peers and builds bootplan).

Peers, all on 127.0.0.1:
- OpenBao dev server: AppRole, two KV v2 secrets, a global rate-limit quota
  (`sys/quotas/rate-limit`, RATE requests per 1s window, `Retry-After`
  headers on), a file audit device (accepted requests) and its own
  telemetry (`quota.rate_limit.violation`: the requests it rejected).
- etcd (one node, data in /dev/shm): the `migrate` semaphore, 5 slots.
- Prometheus loading deploy/prometheus/{recording,alerting}_rules.yml
  unchanged, scraping bench/fleet/exporter.py every second: the agents'
  metrics textfiles (written at start and at the end of each run, as a
  node_exporter textfile collector would serve them), one `agent` label each.

Each agent has its own state and run dirs and its own NoCloud seed (its own
instance id); its plan logs in with AppRole, renders two secrets (one login
+ two reads = 3 requests), then runs a `throttle: migrate` step that appends
start/end times to a shared file.

Phases:
1. rollout: N/5 agents (at least 20) of plan `rollout`, one 5s step, 10% of
   them failing: the burn-rate alert must fire for `rollout`.
2. storm: N agents, `start_splay: 0s..SPLAY` (default 1.1x the ideal
   time 3N/RATE: an offered load of 0.9 of the quota), default retries.
3. naive: the same N agents with no splay and BOOTPLAN_RETRY_JITTER=off.
4. slot recovery: 5 agents hold `migrate`, a 6th queues, one holder is
   SIGKILLed: the time until the 6th starts (lease TTL 5s).
5. alerts: wait (at most 4 min after the rollout) for the fast-burn alert
   on `rollout`, then list every alert; `storm` (100% ready) must have none.
"""

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TTL = 5
SLOTS = 5


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(url, data=None, headers=None, method=None, timeout=5):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def wait_for(what, check, limit=30):
    end = time.time() + limit
    while time.time() < end:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not come up within {limit}s")


class Peers:
    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_bao(peers, work, rate):
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    hcl = os.path.join(work, "bao.hcl")
    with open(hcl, "w") as f:
        f.write(
            f'audit "file" "file" {{\n  options = {{ file_path = "{work}/audit.log" }}\n}}\n'
            'telemetry {\n  prometheus_retention_time = "30m"\n  disable_hostname = true\n}\n'
        )
    env = dict(os.environ, HOME=work)
    peers.start(
        "bao",
        ["bao", "server", "-dev", "-dev-no-store-token", "-dev-root-token-id=root",
         f"-dev-listen-address=127.0.0.1:{port}", f"-config={hcl}"],
        env,
    )
    cli_env = dict(env, BAO_ADDR=addr, BAO_TOKEN="root")

    def bao(*args, **kw):
        return subprocess.run(["bao", *args], env=cli_env, check=True,
                              capture_output=True, text=True, **kw).stdout.strip()

    wait_for("OpenBao", lambda: subprocess.run(["bao", "status"], env=cli_env,
                                               capture_output=True).returncode == 0)
    bao("auth", "enable", "approle")
    policy = os.path.join(work, "policy.hcl")
    with open(policy, "w") as f:
        f.write('path "secret/data/fleet/*" { capabilities = ["read"] }\n')
    bao("policy", "write", "fleet", policy)
    bao("write", "auth/approle/role/fleet", "token_policies=fleet", "token_ttl=1h",
        "secret_id_num_uses=0")
    with open(os.path.join(work, "role-id"), "w") as f:
        f.write(bao("read", "-field=role_id", "auth/approle/role/fleet/role-id"))
    with open(os.path.join(work, "secret-id"), "w") as f:
        f.write(bao("write", "-f", "-field=secret_id", "auth/approle/role/fleet/secret-id"))
    bao("kv", "put", "secret/fleet/db", "v=db-password-0123456789")
    bao("kv", "put", "secret/fleet/api", "v=api-key-abcdefghij")
    bao("write", "sys/quotas/config", "enable_rate_limit_response_headers=true")
    bao("write", "sys/quotas/rate-limit/storm", f"rate={rate}", "interval=1s")
    return addr


def bao_violations(addr):
    """The requests the store rejected so far (its own counter)."""
    text = http(f"{addr}/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": "root"})
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vault_quota_rate_limit_violation") or line.startswith(
            "openbao_quota_rate_limit_violation"
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def audit_requests(work):
    """Accepted requests in the audit log so far (responses), by kind."""
    kinds = {}
    path = os.path.join(work, "audit.log")
    if not os.path.exists(path):
        return kinds
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            if entry.get("type") != "response":
                continue
            p = entry["request"]["path"]
            kind = "read" if p.startswith("secret/") else "login" if "login" in p else "other"
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def start_etcd(peers, work):
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    data = tempfile.mkdtemp(prefix="fleet-etcd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    peers.start("etcd", [
        "etcd", "--name", "fleet", "--data-dir", data,
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"fleet=http://127.0.0.1:{peer}",
    ])
    wait_for("etcd", lambda: subprocess.run(
        ["etcdctl", "--endpoints", url, "endpoint", "health"],
        capture_output=True, env=dict(os.environ, ETCDCTL_API="3")).returncode == 0)
    return url, data


def start_prometheus(peers, work, exporter_port):
    port = free_port()
    config = os.path.join(work, "prometheus.yml")
    rules = [os.path.join(REPO, "deploy/prometheus", f) for f in
             ("recording_rules.yml", "alerting_rules.yml")]
    with open(config, "w") as f:
        f.write(
            "global: { scrape_interval: 1s, evaluation_interval: 5s }\n"
            f"rule_files: {json.dumps(rules)}\n"
            "scrape_configs:\n"
            "  - job_name: bootplan-fleet\n"
            "    honor_labels: true\n"
            f"    static_configs: [ {{ targets: [\"127.0.0.1:{exporter_port}\"] }} ]\n"
        )
    peers.start("prometheus", [
        "prometheus", f"--config.file={config}", f"--storage.tsdb.path={work}/prom",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ])
    url = f"http://127.0.0.1:{port}"
    wait_for("Prometheus", lambda: "Ready" in http(f"{url}/-/ready"))
    return url


def plan_text(name, agent, args, phase):
    """The plan of one agent of `phase`."""
    lines = [
        "version: 1",
        f"name: {name}",
        "deadline: 5m",
        "facts: { provider: nocloud }",
    ]
    if phase["splay"]:
        lines.append(f"start_splay: 0s..{phase['splay']:.1f}s")
    if phase.get("rollout"):
        fail = 1 if phase["fail"] else 0
        lines += ["steps:", f"  deploy: {{ run: [\"/bin/sh\", \"-c\", \"sleep 5; exit {fail}\"] }}"]
        return "\n".join(lines) + "\n"
    hold = phase.get("hold", "0.1")
    marks = phase["marks"]
    lines += [
        "backends:",
        "  vault:",
        f"    address: {args.bao}",
        f"    auth: {{ approle: {{ role_id: {{ file: {args.work}/role-id }}, secret_id: {{ file: {args.work}/secret-id }} }} }}",
        # A retry inside the same exhausted 1s window of the quota is a
        # wasted request: the first backoff cap is the window.
        "    retry: { attempts: 8, backoff: 1s..8s }",
        "limits:",
        f"  etcd: {{ endpoints: [\"{args.etcd}\"], ttl: {TTL}s }}",
        f"  semaphores: {{ migrate: {{ slots: {SLOTS} }} }}",
        "secrets:",
        "  db: { vault: { path: secret/fleet/db, key: v } }",
        "  api: { vault: { path: secret/fleet/api, key: v } }",
        "steps:",
        f"  conf: {{ template: {{ dest: {agent}/conf.txt, inline: \"db={{{{ secrets.db }}}}\\napi={{{{ secrets.api }}}}\\n\" }} }}",
        "  migrate:",
        "    needs: [conf]",
        "    throttle: migrate",
        f"    run: [\"/bin/sh\", \"-c\", \"echo start $BOOTPLAN_BOOTSTRAP_ID $$ $(date +%s%N) >> {marks}; "
        f"sleep {hold}; echo end $BOOTPLAN_BOOTSTRAP_ID $$ $(date +%s%N) >> {marks}\"]",
    ]
    return "\n".join(lines) + "\n"


def prepare(args, phase, name, count, **extra):
    """Agent dirs with their plans and seeds; returns (dir, env) per agent."""
    agents = []
    for i in range(count):
        agent = os.path.join(args.work, "agents", phase["id"], f"a{i:04d}")
        os.makedirs(os.path.join(agent, "seed"), exist_ok=True)
        with open(os.path.join(agent, "seed", "meta-data"), "w") as f:
            f.write(f"instance-id: {phase['id']}-{i:04d}\nlocal-hostname: {phase['id']}-{i:04d}\n")
        with open(os.path.join(agent, "seed", "user-data"), "w") as f:
            f.write("")
        this = dict(phase, **{k: v(i) if callable(v) else v for k, v in extra.items()})
        with open(os.path.join(agent, "plan.yaml"), "w") as f:
            f.write(plan_text(name, agent, args, this))
        env = dict(
            os.environ,
            BOOTPLAN_STATE_DIR=f"{agent}/state",
            BOOTPLAN_RUN_DIR=f"{agent}/run",
            BOOTPLAN_LOG_FORMAT="json",
            BOOTPLAN_SEED_DIRS=f"{agent}/seed",
            BOOTPLAN_DMI_ROOT=f"{agent}/no-dmi",
            BOOTPLAN_CMDLINE=f"{agent}/no-cmdline",
            BOOTPLAN_DISK_LABELS_DIR=f"{agent}/no-labels",
            BOOTPLAN_METRICS_TEXTFILE=f"{agent}/metrics.prom",
        )
        env.update(phase.get("env", {}))
        agents.append((agent, env))
    return agents


class Agent:
    """A started agent: posix_spawn, so 500 start within a second."""

    def __init__(self, pid):
        self.pid = pid
        self.code = None

    def wait(self):
        if self.code is None:
            _, st = os.waitpid(self.pid, 0)
            self.code = os.waitstatus_to_exitcode(st)
        return self.code

    def send_signal(self, sig):
        os.kill(self.pid, sig)


def launch(args, agents):
    """Starts every agent at once: each waits in a shell on a FIFO, all are
    released together by closing its writer, then exec bootplan. Returns
    (t0, how long the release took, agents)."""
    fifo = os.path.join(args.work, f"go-{time.monotonic_ns()}")
    os.mkfifo(fifo)
    procs = []
    for agent, env in agents:
        actions = [
            (os.POSIX_SPAWN_OPEN, 1, os.path.join(agent, "log"),
             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        argv = ["/bin/sh", "-c", 'read _ < "$0"; exec "$@"', fifo,
                args.bin, "run", f"{agent}/plan.yaml"]
        procs.append(Agent(os.posix_spawn("/bin/sh", argv, env, file_actions=actions)))

    def waiting():
        # Every shell blocked opening the FIFO (or already past it).
        return sum(1 for p in procs if os.path.exists(f"/proc/{p.pid}")
                   and open(f"/proc/{p.pid}/wchan").read() in ("wait_for_partner", "fifo_open", "pipe_read", "pipe_wait"))

    try:
        wait_for("the agents to wait for the start", lambda: waiting() == len(procs), 60)
    except SystemExit:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        raise
    t0 = time.time()
    os.close(os.open(fifo, os.O_WRONLY))  # EOF for every reader: all go
    released = time.time() - t0
    time.sleep(0.2)
    while waiting():  # none, as every shell was blocked in open; to be sure
        os.close(os.open(fifo, os.O_WRONLY))
        time.sleep(0.2)
    return t0, released, procs


def status(agent):
    try:
        with open(os.path.join(agent, "run", "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def marks_of(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                out.append((parts[0], parts[1], int(parts[2]), int(parts[3])))
    return out


def most_at_once(marks):
    events = sorted((at, 1 if kind == "start" else -1) for kind, _, _, at in marks)
    now = most = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


def textfile_sum(agents, metric, match):
    total = 0.0
    for agent, _ in agents:
        try:
            with open(os.path.join(agent, "metrics.prom")) as f:
                for line in f:
                    if line.startswith(metric) and match in line:
                        total += float(line.rsplit(" ", 1)[1])
        except OSError:
            pass
    return int(total)


def storm(args, phase, name):
    agents = prepare(args, phase, name, args.n)
    before_violations = bao_violations(args.bao)
    before = audit_requests(args.work)
    t0, spread, procs = launch(args, agents)
    codes = [p.wait() for p in procs]
    wall = time.time() - t0
    after = audit_requests(args.work)
    rejected = bao_violations(args.bao) - before_violations
    accepted = sum(after.values()) - sum(before.values())
    ends, starts = [], []
    for agent, _ in agents:
        st = status(agent)
        if st.get("started_unix_ms"):
            starts.append(st["started_unix_ms"] / 1000 - t0)
        if st.get("outcome") == "ready":
            ends.append((st["started_unix_ms"] + st["duration_ms"]) / 1000 - t0)
    ideal = 3 * args.n / args.rate
    ready = sum(1 for c in codes if c == 0)
    retries = textfile_sum(agents, "bootplan_dependency_retries_total", 'dependency="vault"')
    marks = marks_of(phase["marks"])
    failures = {}
    for agent, _ in agents:
        st = status(agent)
        if st.get("outcome") != "ready":
            code = (st.get("error") or {}).get("code", "no status")
            failures[code] = failures.get(code, 0) + 1
    return {
        "phase": phase["id"],
        "agents": args.n,
        "release_s": round(spread, 3),
        # Process release to each run's first event: 2 cores starting N
        # bootplans (plan load, directories) before any splay.
        "run_started_within_s": round(max(starts), 2) if starts else None,
        "ready": ready,
        "ready_pct": round(100 * ready / args.n, 1),
        "failures": failures,
        "last_ready_s": round(max(ends), 1) if ends else None,
        "wall_s": round(wall, 1),
        "ideal_s": round(ideal, 1),
        "last_ready_vs_ideal": round(max(ends) / ideal, 2) if ends else None,
        "accepted_requests": accepted,
        "rejected_429": rejected,
        "rejected_pct_of_requests": round(100 * rejected / max(1, accepted + rejected), 1),
        "bootplan_vault_retries": retries,
        "migrate_runs": sum(1 for m in marks if m[0] == "start"),
        "migrate_most_at_once": most_at_once(marks),
    }


def rollout(args):
    count = max(20, args.n // 5)
    failing = max(1, count // 10)
    phase = {"id": "rollout", "splay": 0, "rollout": True, "fail": False}
    agents = prepare(args, phase, "rollout", count, fail=lambda i: i < failing)
    t0, spread, procs = launch(args, agents)
    return {"procs": procs, "t0": t0, "count": count, "failing": failing}


def slot_recovery(args):
    marks = os.path.join(args.work, "kill-marks")
    holders = prepare(args, {"id": "holders", "splay": 0, "marks": marks, "hold": "30"},
                      "slot-recovery", SLOTS)
    _, _, held = launch(args, holders)
    wait_for("5 holders", lambda: sum(1 for m in marks_of(marks) if m[0] == "start") == SLOTS, 60)
    holder_ids = {m[1] for m in marks_of(marks)}
    waiter = prepare(args, {"id": "waiter", "splay": 0, "marks": marks, "hold": "0.1"},
                     "slot-recovery", 1)
    _, _, waiting = launch(args, waiter)
    wait_for("the 6th agent to queue", lambda: any(
        s.get("state") == "waiting" for s in status(waiter[0][0]).get("steps", {}).values()), 60)
    time.sleep(0.5)
    killed_at = time.time()
    held[0].send_signal(signal.SIGKILL)
    wait_for("the 6th agent to get the slot", lambda: any(
        m[0] == "start" and m[1] not in holder_ids for m in marks_of(marks)), 60)
    start = next(m[3] for m in marks_of(marks) if m[0] == "start" and m[1] not in holder_ids)
    back = start / 1e9 - killed_at
    # The killed holder's command died with it (parent-death signal): its
    # interval ends at the kill, though it wrote no end mark.
    killed_id = status(holders[0][0]).get("bootstrap_id")
    recovery = marks_of(marks) + [("end", killed_id, 0, int(killed_at * 1e9))]
    held[0].wait()
    for p in held[1:]:
        p.send_signal(signal.SIGTERM)
    for p in held[1:] + waiting:
        p.wait()
    # The killed holder's command outlived it (its shell's process group).
    for kind, _, pgid, _ in marks_of(marks):
        if kind == "start":
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return {"slot_back_after_sigkill_s": round(back, 2), "lease_ttl_s": TTL,
            "most_at_once": most_at_once(recovery)}


def alerts(prom, deadline):
    """Waits for the fast-burn alert on `rollout`, then returns every alert."""
    found = []
    while time.time() < deadline:
        found = json.loads(http(f"{prom}/api/v1/alerts"))["data"]["alerts"]
        if any(a["labels"].get("alertname") == "BootplanErrorBudgetFastBurn"
               and a["labels"].get("plan") == "rollout" and a["state"] == "firing" for a in found):
            break
        time.sleep(5)
    return [{"alert": a["labels"].get("alertname"), "plan": a["labels"].get("plan"),
             "state": a["state"]} for a in found]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("-r", "--rate", type=int, default=50)
    ap.add_argument("-s", "--splay", type=float)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--alert-wait", type=float, default=240,
                    help="how long after the rollout to wait for the alert (s)")
    args = ap.parse_args()
    # Offered load 0.9 of the quota: the splay is 1.1x the ideal time.
    args.splay = args.splay if args.splay is not None else 1.1 * 3 * args.n / args.rate
    args.work = tempfile.mkdtemp(prefix="bootplan-fleet-")
    peers = Peers(args.work)
    etcd_data = None
    results = {"agents": args.n, "quota_per_s": args.rate, "splay_s": args.splay}
    try:
        args.bao = start_bao(peers, args.work, args.rate)
        args.etcd, etcd_data = start_etcd(peers, args.work)
        exporter_port = free_port()
        peers.start("exporter", [sys.executable, os.path.join(HERE, "exporter.py"),
                                 str(exporter_port), os.path.join(args.work, "agents")])
        prom = start_prometheus(peers, args.work, exporter_port)
        wait_for("the exporter", lambda: http(f"http://127.0.0.1:{exporter_port}/metrics") is not None)
        # Every agent's series must be scraped at their starting values
        # (runs_total 0) for rate() to see the verdicts: scraping first.
        wait_for("Prometheus to scrape the exporter", lambda: json.loads(http(
            f"{prom}/api/v1/query?query=up%7Bjob%3D%22bootplan-fleet%22%7D"))["data"]["result"][0]["value"][1] == "1", 60)

        print(f"work dir {args.work}; {args.n} agents, quota {args.rate}/s, splay 0s..{args.splay:.1f}s",
              file=sys.stderr)
        ro = rollout(args)
        codes = [p.wait() for p in ro["procs"]]
        results["rollout"] = {"agents": ro["count"], "failed": sum(1 for c in codes if c != 0)}
        rollout_done = time.time()
        print(f"rollout: {results['rollout']}", file=sys.stderr)

        phase = {"id": "storm", "splay": args.splay, "marks": os.path.join(args.work, "marks-storm")}
        results["storm"] = storm(args, phase, "storm")
        print(f"storm: {results['storm']}", file=sys.stderr)
        if not args.no_baseline:
            time.sleep(2)  # a fresh quota window
            phase = {"id": "naive", "splay": 0, "marks": os.path.join(args.work, "marks-naive"),
                     "env": {"BOOTPLAN_RETRY_JITTER": "off"}}
            results["naive"] = storm(args, phase, "storm-naive")
            print(f"naive: {results['naive']}", file=sys.stderr)
        results["slot_recovery"] = slot_recovery(args)
        print(f"slot recovery: {results['slot_recovery']}", file=sys.stderr)
        results["alerts"] = alerts(prom, rollout_done + args.alert_wait)
        results["alerts_wait_s"] = round(time.time() - rollout_done, 1)
    finally:
        peers.stop()
        if etcd_data:
            shutil.rmtree(etcd_data, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
