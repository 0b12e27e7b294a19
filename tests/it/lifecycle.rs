//! Lifecycle: services, supervision (signals, reaping, exit codes, shutdown
//! order), PID 1 in a fresh PID namespace, sd_notify, etcd registration and
//! the report webhook. Real processes and a real etcd on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Bootplan, Sandbox, code, dump, free_port, log_lines, pid_alive, start_run, under_ci, wait_until,
};

const LONG: Duration = Duration::from_secs(20);

/// An app (sh) that records each forwarded signal in `signals.log`, exits 0
/// on SIGTERM, and says it started by creating `app.up`.
const SIGNAL_APP: &str = r#"
for s in HUP QUIT USR1 USR2 WINCH INT; do trap "echo $s >> signals.log" $s; done
trap 'echo TERM >> signals.log; exit 0' TERM
echo "$$ $PPID" > app.up
while :; do sleep 0.05; done
"#;

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with plain integers.
    unsafe { libc::kill(pid as i32, sig) };
}

fn wait_output(bootplan: Bootplan) -> std::process::Output {
    bootplan.wait_output(LONG)
}

fn status_outcome(sb: &Sandbox) -> Option<String> {
    let text = std::fs::read_to_string(sb.run_dir().join("status.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["outcome"].as_str().map(str::to_string)
}

fn wait_ready(sb: &Sandbox, child: &mut Child) {
    let start = std::time::Instant::now();
    loop {
        if status_outcome(sb).as_deref() == Some("ready") {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "bootplan exited ({status}) before ready; status: {:?}",
                status_outcome(sb)
            );
        }
        assert!(
            start.elapsed() < LONG,
            "not ready after {LONG:?}: {:?}",
            status_outcome(sb)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (state, ppid) of a process, from /proc.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    Some((f.next()?.chars().next()?, f.next()?.parse().ok()?))
}

fn zombie_children(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_state(pid) == Some(('Z', parent)))
        .collect()
}

#[test]
fn supervised_app_gets_every_forwarded_signal_and_its_exit_code_is_passed_on() {
    let sb = Sandbox::new();
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(
        r#"
version: 1
name: signals
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: { file: app.up, interval: 20ms }
"#,
    );
    let mut child = start_run(&sb, &["--supervise"]);
    wait_ready(&sb, &mut child);
    let up = sb.read("app.up");
    let ppid: u32 = up.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(
        ppid,
        child.id(),
        "bootplan is the app's parent (not exec'd)"
    );
    for (sig, name) in [
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
        (libc::SIGWINCH, "WINCH"),
        (libc::SIGINT, "INT"),
    ] {
        signal(child.id(), sig);
        wait_until(&format!("app to record {name}"), LONG, || {
            sb.read("signals.log").lines().any(|l| l == name)
        });
        assert!(
            child.try_wait().unwrap().is_none(),
            "bootplan exited after {name}"
        );
    }
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(
        code(&out),
        0,
        "the app's exit code (0 from its TERM trap)\n{}",
        dump(&out)
    );
    assert!(
        sb.read("signals.log").lines().any(|l| l == "TERM"),
        "{}",
        sb.read("signals.log")
    );
    assert!(
        !sb.run_dir().join("ready").exists(),
        "the readiness file is removed at shutdown"
    );
}

#[test]
fn the_supervised_app_is_asked_to_stop_with_its_stop_signal() {
    let sb = Sandbox::new();
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(
        r#"
version: 1
name: stop-signal
kill_grace: 300ms
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: { file: app.up, interval: 20ms }
    stop_signal: SIGQUIT
"#,
    );
    let mut child = start_run(&sb, &["--supervise"]);
    wait_ready(&sb, &mut child);
    // SIGTERM to bootplan reaches the app as its stop signal.
    signal(child.id(), libc::SIGTERM);
    wait_until("app to record QUIT", LONG, || {
        sb.read("signals.log").lines().any(|l| l == "QUIT")
    });
    assert!(
        !sb.read("signals.log").lines().any(|l| l == "TERM"),
        "{}",
        sb.read("signals.log")
    );
    // The app traps QUIT and keeps running: after the grace it is killed.
    let out = wait_output(child);
    assert_ne!(code(&out), 0, "{}", dump(&out));
}

#[test]
fn exit_codes_and_signals_of_the_app_are_passed_on() {
    for (script, want) in [
        ("exit 7", 7),
        ("kill -USR1 $$; sleep 5", 128 + libc::SIGUSR1),
    ] {
        let sb = Sandbox::new();
        sb.plan(&format!(
            "version: 1\nname: codes\nsteps:\n  app:\n    exec: [\"sh\", \"-c\", \"{script}\"]\n"
        ));
        let out = wait_output(start_run(&sb, &["--supervise"]));
        assert_eq!(code(&out), want, "`{script}`\n{}", dump(&out));
    }
}

#[test]
fn orphans_of_the_app_are_reaped_and_no_zombie_is_left() {
    let sb = Sandbox::new();
    // The subshell starts a short sleep and exits at once: the sleep is
    // orphaned, re-parented to bootplan (a subreaper), and exits while the app runs.
    sb.write(
        "app.sh",
        "trap 'exit 0' TERM\n(sleep 0.3 & echo $! > orphan.pid)\ntouch app.up\nwhile :; do sleep 0.05; done\n",
    );
    sb.plan(
        r#"
version: 1
name: reap
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: { file: orphan.pid, interval: 20ms }
"#,
    );
    let mut child = start_run(&sb, &["--supervise"]);
    wait_ready(&sb, &mut child);
    let orphan: i32 = sb.read("orphan.pid").trim().parse().unwrap();
    let bootplan = child.id() as i32;
    if let Some((_, ppid)) = proc_state(orphan) {
        assert_eq!(ppid, bootplan, "the orphan was re-parented to bootplan");
    }
    wait_until("the orphan to be reaped", LONG, || {
        proc_state(orphan).is_none()
    });
    assert!(
        zombie_children(bootplan).is_empty(),
        "zombies: {:?}",
        zombie_children(bootplan)
    );
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
}

#[test]
fn app_starts_after_its_services_are_ready_and_stops_before_them() {
    let sb = Sandbox::new();
    // Each service records its stop; `b` needs `a`, so they stop b, then a.
    // `a` becomes ready only after 300ms; the app checks both are ready at start.
    let service = |name: &str, delay: &str| {
        format!(
            "trap 'echo {name} >> order.log; exit 0' TERM\nsleep {delay}\ntouch {name}.ready\nwhile :; do sleep 0.05; done\n"
        )
    };
    sb.write("a.sh", &service("a", "0.3"));
    sb.write("b.sh", &service("b", "0"));
    sb.write(
        "app.sh",
        "trap 'echo app >> order.log; exit 0' TERM\nif [ -f a.ready ] && [ -f b.ready ]; then echo after > app.start; else echo early > app.start; fi\nwhile :; do sleep 0.05; done\n",
    );
    sb.plan(
        r#"
version: 1
name: order
steps:
  a:
    service: ["sh", "a.sh"]
    ready: { file: a.ready, interval: 20ms }
  b:
    service: ["sh", "b.sh"]
    ready: { file: b.ready, interval: 20ms }
    needs: [a]
  app:
    exec: ["sh", "app.sh"]
    needs: [b]
    ready: { file: app.start, interval: 20ms }
"#,
    );
    let mut child = start_run(&sb, &[]);
    wait_ready(&sb, &mut child);
    assert_eq!(
        sb.read("app.start").trim(),
        "after",
        "the app started before its services were ready"
    );
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let order: Vec<String> = sb.read("order.log").lines().map(str::to_string).collect();
    assert_eq!(
        order,
        ["app", "b", "a"],
        "stop order: the app, then services newest first"
    );
}

#[test]
fn crashing_service_is_restarted_within_its_limit_then_fatal_beyond_it() {
    // Crashes once, then stays up: the app keeps running.
    let sb = Sandbox::new();
    sb.write(
        "svc.sh",
        "echo start >> starts.log\nif [ ! -f crashed ]; then touch crashed; sleep 0.2; exit 3; fi\ntrap 'exit 0' TERM\nwhile :; do sleep 0.05; done\n",
    );
    sb.write("app.sh", SIGNAL_APP);
    let plan = |limit: u32| {
        format!(
            r#"
version: 1
name: restarts
telemetry: {{ metrics: {{ textfile: m.prom }} }}
steps:
  svc:
    service: ["sh", "svc.sh"]
    ready: {{ file: starts.log, interval: 20ms }}
    restart: {{ on: failure, limit: {limit}, backoff: 50ms..100ms }}
  app:
    exec: ["sh", "app.sh"]
    needs: [svc]
    ready: {{ file: app.up, interval: 20ms }}
"#
        )
    };
    sb.plan(&plan(2));
    let mut child = start_run(&sb, &[]);
    wait_ready(&sb, &mut child);
    wait_until("the service to be restarted", LONG, || {
        sb.read("starts.log").lines().count() == 2
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "a restart within the limit is not fatal"
    );
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));

    // Always crashes: 1 start + 2 restarts, then the app is stopped and bootplan exits 69.
    let sb = Sandbox::new();
    sb.write("svc.sh", "echo start >> starts.log\nsleep 0.3\nexit 3\n");
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(&plan(2));
    let out = wait_output(start_run(&sb, &[]));
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(
        sb.read("starts.log").lines().count(),
        3,
        "one start and two restarts"
    );
    let metrics = sb.read("m.prom");
    assert!(
        metrics.contains("bootplan_service_restarts_total{plan=\"restarts\",step=\"svc\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bootplan_service_ready_seconds_count{plan=\"restarts\",step=\"svc\"} 3"),
        "first start and both restarts were ready once each: {metrics}"
    );
    assert!(
        sb.read("signals.log").contains("TERM"),
        "the app was stopped with SIGTERM"
    );
    let logs = log_lines(&out);
    assert!(
        logs.iter()
            .any(|l| l.to_string().contains("service.failed")),
        "the logs name service.failed\n{}",
        dump(&out)
    );
}

#[test]
fn pid_1_in_a_fresh_pid_namespace_supervises_forwards_and_reaps() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(
            !under_ci(),
            "unshare --pid --fork --mount-proc is unavailable under CI (needs root)"
        );
        eprintln!("skipped: unshare --pid --fork --mount-proc is unavailable (not root?)");
        return;
    }
    let sb = Sandbox::new();
    sb.write(
        "app.sh",
        // Inside the namespace the app sees whether its orphan (re-parented
        // to PID 1, i.e. bootplan) was reaped: a zombie keeps its /proc entry.
        "trap 'echo TERM >> signals.log; exit 0' TERM\n(sleep 0.2 & echo $! > orphan.pid)\necho \"$$ $PPID\" > app.up\nsleep 3\nif [ -e /proc/$(cat orphan.pid) ]; then echo left > reap.txt; else echo reaped > reap.txt; fi\nwhile :; do sleep 0.05; done\n",
    );
    // No services, no --supervise: being PID 1 alone makes bootplan supervise.
    sb.plan(
        r#"
version: 1
name: pid1
steps:
  app:
    exec: ["sh", "app.sh"]
"#,
    );
    // --kill-child: if the test kills unshare, bootplan (the namespace's init) dies too.
    let child = Bootplan::new(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(crate::harness::bin())
            .args(["run", "plan.yaml"])
            .env("BOOTPLAN_STATE_DIR", sb.state_dir())
            .env("BOOTPLAN_RUN_DIR", sb.run_dir())
            .env("BOOTPLAN_LOG_FORMAT", "json")
            .current_dir(sb.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare"),
    );
    wait_until("the app to start", LONG, || sb.read("app.up").contains(' '));
    let up = sb.read("app.up");
    let ids: Vec<i32> = up.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_ne!(ids[0], 1, "the app is not PID 1: bootplan did not exec");
    assert_eq!(
        ids[1], 1,
        "the app's parent is bootplan, PID 1 of the namespace"
    );
    // bootplan's pid as the host sees it: the child of unshare.
    let unshare = child.id() as i32;
    let bootplan = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| proc_state(pid).is_some_and(|(_, ppid)| ppid == unshare))
        .expect("bootplan under unshare");
    wait_until("the app's reaping check", LONG, || {
        sb.read("reap.txt").ends_with('\n')
    });
    assert_eq!(
        sb.read("reap.txt").trim(),
        "reaped",
        "the orphan was left as a zombie of PID 1"
    );
    assert!(
        zombie_children(bootplan).is_empty(),
        "zombies under bootplan"
    );
    signal(bootplan as u32, libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        sb.read("signals.log").contains("TERM"),
        "SIGTERM reached the app"
    );
}

/// Receives sd_notify datagrams on a test socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
        }
    }

    fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

#[test]
fn sd_notify_says_status_per_step_extends_the_timeout_then_ready() {
    let sb = Sandbox::new();
    let socket = NotifySocket::new();
    // The service is ready only when it says so itself, on its own NOTIFY_SOCKET.
    sb.write(
        "svc.py",
        "import os, socket, time\ntime.sleep(0.2)\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\nopen('svc.said-ready', 'w').close()\ns.sendto(b'STATUS=warming\\nREADY=1', os.environ['NOTIFY_SOCKET'])\ntime.sleep(30)\n",
    );
    sb.plan(
        r#"
version: 1
name: notify
deadline: 60s
steps:
  svc:
    service: ["/usr/bin/python3", "svc.py"]
    ready: { notify: true }
  first:
    run: ["sh", "-c", "test -f svc.said-ready"]
    needs: [svc]
  second:
    run: ["true"]
    needs: [first]
"#,
    );
    let out = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .env("NOTIFY_SOCKET", &socket.path)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let messages = socket.messages();
    let find = |what: &str| messages.iter().position(|m| m.contains(what));
    let ready = find("READY=1").unwrap_or_else(|| panic!("no READY=1 in {messages:?}"));
    let first = find("STATUS=running first").expect("a STATUS for step first");
    let second = find("STATUS=running second").expect("a STATUS for step second");
    assert!(first < second && second < ready, "order: {messages:?}");
    assert!(
        messages[..ready].iter().all(|m| !m.contains("READY=1")),
        "{messages:?}"
    );
    let extend: Vec<u64> = messages
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        })
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        !extend.is_empty() && extend.iter().all(|&us| us > 0 && us <= 60_000_000),
        "{extend:?}"
    );
    assert_eq!(
        messages.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "the service's own READY=1 did not leak to systemd"
    );
}

/// A single-node etcd on loopback with its data dir on /dev/shm.
pub(crate) struct Etcd {
    child: Child,
    pub(crate) url: String,
    /// Auth is on: etcdctl runs as root.
    auth: bool,
    _data: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(!under_ci(), "etcd is not installed (scripts/deps/etcd.sh)");
        eprintln!("skipped: etcd is not installed (scripts/deps/etcd.sh)");
        return None;
    }
    let etcd = launch_etcd("http", &[]);
    wait_until("etcd to answer", LONG, || {
        etcd_get(&etcd, "/health-probe").is_some()
    });
    Some(etcd)
}

/// Starts a single-node etcd on free loopback ports with its data dir on
/// /dev/shm, its client side on `scheme` (`http` or `https`), with `extra`
/// arguments (certificates).
pub(crate) fn launch_etcd(scheme: &str, extra: &[std::ffi::OsString]) -> Etcd {
    let shm = Path::new("/dev/shm");
    let data = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("{scheme}://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(data.path())
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd");
    Etcd {
        child,
        url,
        auth: false,
        _data: data,
    }
}

/// The key's lease id as etcdctl sees it: `Some(None)` when absent.
fn etcd_get(etcd: &Etcd, key: &str) -> Option<Option<(i64, Value)>> {
    let stdout = etcdctl(etcd, &["get", key, "-w", "json"])?;
    let v: Value = serde_json::from_slice(&stdout).ok()?;
    let Some(kv) = v["kvs"].get(0) else {
        return Some(None);
    };
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD
        .decode(kv["value"].as_str()?)
        .ok()?;
    Some(Some((
        kv["lease"].as_i64().unwrap_or(0),
        serde_json::from_slice(&value).ok()?,
    )))
}

#[test]
fn registration_in_etcd_follows_the_app_and_expires_when_bootplan_dies() {
    let Some(etcd) = start_etcd() else { return };
    let sb = Sandbox::new();
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(&format!(
        r#"
version: 1
name: web
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: {{ file: go, interval: 20ms }}
register:
  etcd:
    endpoints: ["{}"]
    key: "/services/web/{{{{ facts.machine_id }}}}"
    address: 127.0.0.1
    port: 8080
    ttl: 3s
"#,
        etcd.url
    ));
    let machine_id = {
        let out = Command::new(crate::harness::bin())
            .args(["facts", "--json"])
            .output()
            .unwrap();
        let facts: Value = serde_json::from_slice(&out.stdout).unwrap();
        facts["machine_id"].as_str().unwrap().to_string()
    };
    let key = format!("/services/web/{machine_id}");
    // On SIGTERM the app records whether the key was still there: it must
    // already be gone (deregistered before the app is stopped).
    sb.write(
        "app.sh",
        &format!(
            "trap 'ETCDCTL_API=3 etcdctl --endpoints {} get {key} -w fields > at-term.txt; exit 0' TERM\necho \"$$ $PPID\" > app.up\nwhile :; do sleep 0.05; done\n",
            etcd.url
        ),
    );

    // Not registered while the app runs but is not ready yet.
    let mut child = start_run(&sb, &[]);
    wait_until("the app to start", LONG, || sb.read("app.up").contains(' '));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        etcd_get(&etcd, &key),
        Some(None),
        "registered before the app was ready"
    );
    assert_eq!(
        status_outcome(&sb).as_deref(),
        Some("running"),
        "no verdict before the app is ready"
    );
    assert_eq!(sb.step("app")["state"], "running");
    assert!(
        !sb.run_dir().join("ready").exists(),
        "readiness file before the app was ready"
    );
    // Ready: registered with a lease, and the verdict is given.
    sb.write("go", "");
    wait_ready(&sb, &mut child);
    assert_eq!(sb.step("app")["state"], "done");
    // The status file is written first, then the readiness file (same event).
    wait_until("the readiness file", LONG, || {
        sb.run_dir().join("ready").exists()
    });
    let (lease, value) = etcd_get(&etcd, &key)
        .flatten()
        .expect("key present after ready");
    assert_ne!(lease, 0, "the key is attached to a lease");
    assert_eq!(value["port"], 8080);
    assert_eq!(value["address"], "127.0.0.1");
    assert_eq!(value["bootstrap_id"], sb.status()["bootstrap_id"]);
    assert_eq!(value["facts"]["machine_id"], machine_id.as_str());
    // The lease is kept alive past its TTL while bootplan supervises.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        etcd_get(&etcd, &key).flatten().is_some(),
        "the keep-alive held the key past its TTL"
    );

    // SIGTERM: deregistered before bootplan exits.
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        etcd_get(&etcd, &key),
        Some(None),
        "the key is removed on SIGTERM"
    );
    let at_term = sb.read("at-term.txt");
    assert!(
        at_term.contains("\"Count\" : 0"),
        "the key was still registered when the app got SIGTERM: {at_term}"
    );

    // SIGKILL: nothing deregisters, the lease expires within its TTL.
    let _ = std::fs::remove_file(sb.path().join("app.up"));
    let _ = std::fs::remove_file(sb.run_dir().join("status.json"));
    let mut child = start_run(&sb, &[]);
    wait_ready(&sb, &mut child);
    assert!(etcd_get(&etcd, &key).flatten().is_some());
    let app_pid: i32 = sb
        .read("app.up")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    child.kill().unwrap();
    let killed_at = std::time::Instant::now();
    let _ = child.wait();
    wait_until("the lease to expire", Duration::from_secs(10), || {
        etcd_get(&etcd, &key) == Some(None)
    });
    eprintln!(
        "lease expired {:?} after SIGKILL (TTL 3s)",
        killed_at.elapsed()
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(3 + 2),
        "expired after {:?}",
        killed_at.elapsed()
    );
    wait_until("the app to die with bootplan", LONG, || !pid_alive(app_pid));
}

/// Runs etcdctl against `etcd` (as root once auth is on); stdout on success.
fn etcdctl(etcd: &Etcd, args: &[&str]) -> Option<Vec<u8>> {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url, "--command-timeout=2s"]);
    if etcd.auth {
        cmd.args(["--user", "root:rootpw"]);
    }
    let out = cmd.args(args).output().ok()?;
    out.status.success().then_some(out.stdout)
}

#[test]
fn registration_authenticates_with_a_password_from_a_secret_and_never_leaks_it() {
    let Some(etcd) = start_etcd_with_auth("s3cr3t-pw") else {
        return;
    };
    let sb = Sandbox::new();
    sb.write("pw.txt", "s3cr3t-pw\n");
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(&format!(
        r#"
version: 1
name: auth
secrets:
  etcd_pw: {{ file: {{ path: pw.txt }} }}
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: {{ file: app.up, interval: 20ms }}
register:
  etcd:
    endpoints: ["{}"]
    key: /services/auth/one
    ttl: 5s
    username: web
    password: "{{{{ secrets.etcd_pw }}}}"
"#,
        etcd.url
    ));
    let mut child = start_run(&sb, &[]);
    wait_ready(&sb, &mut child);
    let (lease, _) = etcd_get(&etcd, "/services/auth/one")
        .flatten()
        .expect("registered with auth");
    assert_ne!(lease, 0);
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        etcd_get(&etcd, "/services/auth/one"),
        Some(None),
        "deregistered with auth"
    );
    let everything = format!("{}{}", dump(&out), sb.read("run/status.json"));
    assert!(
        !everything.contains("s3cr3t-pw"),
        "the etcd password leaked"
    );

    // A wrong password: register.failed, exit 69, and the app is stopped.
    sb.write("pw.txt", "wrong\n");
    let _ = std::fs::remove_file(sb.path().join("app.up"));
    let out = wait_output(start_run(&sb, &[]));
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(sb.status()["error"]["code"], "register.failed");
    assert!(
        sb.read("signals.log").contains("TERM"),
        "the app was stopped"
    );
}

/// etcd with auth on: `root:rootpw`, and `web:PASSWORD` allowed under /services/.
fn start_etcd_with_auth(password: &str) -> Option<Etcd> {
    let mut etcd = start_etcd()?;
    let web = format!("web:{password}");
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", &web],
        &["role", "add", "svc"],
        &[
            "role",
            "grant-permission",
            "svc",
            "readwrite",
            "/services/",
            "--prefix=true",
        ],
        &["user", "grant-role", "web", "svc"],
        &["auth", "enable"],
    ] {
        assert!(etcdctl(&etcd, args).is_some(), "etcdctl {args:?}");
    }
    etcd.auth = true;
    Some(etcd)
}

/// A loopback HTTP server that records POST bodies; answers `fail_first`
/// requests with 503, then 200.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    hits: Arc<Mutex<u32>>,
}

fn receiver(fail_first: u32) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/report", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(Mutex::new(0));
    let (b, h) = (bodies.clone(), hits.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let n = {
                let mut hits = h.lock().unwrap();
                *hits += 1;
                *hits
            };
            let mut stream = stream;
            if n <= fail_first {
                let _ = stream.write_all(
                    b"HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            }
            if let Ok(v) = serde_json::from_slice(&body) {
                b.lock().unwrap().push(v);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    Receiver { url, bodies, hits }
}

impl Receiver {
    fn last(&self) -> Value {
        self.bodies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }
}

#[test]
fn webhook_receives_the_status_on_success_failure_invalid_plan_and_deadline() {
    let plan = |url: &str, extra: &str, steps: &str| {
        format!(
            "version: 1\nname: report\n{extra}report: {{ webhook: \"{url}\", timeout: 2s, attempts: 3 }}\nsteps:\n{steps}"
        )
    };

    // Success, after one 503 (retried).
    let rx = receiver(1);
    let sb = Sandbox::new();
    sb.plan(&plan(&rx.url, "", "  ok: { run: [\"true\"] }\n"));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(rx.last()["outcome"], "ready", "{}", dump(&out));
    assert_eq!(rx.last()["steps"]["ok"]["state"], "done");
    assert_eq!(
        *rx.hits.lock().unwrap(),
        2,
        "one 503, then a retry that succeeded"
    );

    // A failed step.
    let rx = receiver(0);
    let sb = Sandbox::new();
    sb.plan(&plan(&rx.url, "", "  bad: { run: [\"false\"] }\n"));
    let out = sb.run();
    assert_eq!(code(&out), 1);
    assert_eq!(rx.last()["outcome"], "failed");
    assert_eq!(rx.last()["failed_step"], "bad");
    assert_eq!(rx.last()["error"]["code"], "step.exit_nonzero");

    // A plan that parses but is invalid: the URL comes from the plan itself.
    let rx = receiver(0);
    let sb = Sandbox::new();
    sb.plan(&plan(
        &rx.url,
        "",
        "  a: { run: [\"true\"], needs: [nope] }\n",
    ));
    let out = sb.run();
    assert_eq!(code(&out), 65);
    assert_eq!(rx.last()["outcome"], "invalid", "{}", dump(&out));
    assert_eq!(rx.last()["error"]["code"], "plan.invalid");

    // A plan that does not even parse: only --report-url can name the webhook.
    let rx = receiver(0);
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: [unclosed\n");
    let out = sb
        .cmd()
        .args(["run", "plan.yaml", "--report-url", &rx.url])
        .output()
        .unwrap();
    assert_eq!(code(&out), 65);
    assert_eq!(rx.last()["outcome"], "invalid", "{}", dump(&out));

    // The state directory is not writable (a file stands in its way).
    let rx = receiver(0);
    let sb = Sandbox::new();
    sb.write("state", "not a directory");
    sb.plan(&plan(&rx.url, "", "  ok: { run: [\"true\"] }\n"));
    let out = sb
        .cmd()
        .env("BOOTPLAN_STATE_DIR", sb.path().join("state/sub"))
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 73, "{}", dump(&out));
    assert_eq!(rx.last()["outcome"], "failed", "{}", dump(&out));
    assert_eq!(rx.last()["error"]["code"], "state.unwritable");

    // The deadline.
    let rx = receiver(0);
    let sb = Sandbox::new();
    sb.plan(&plan(
        &rx.url,
        "deadline: 500ms\nkill_grace: 200ms\n",
        "  slow: { run: [\"sleep\", \"10\"] }\n",
    ));
    let out = sb.run();
    assert_eq!(code(&out), 75);
    assert_eq!(rx.last()["outcome"], "deadline_exceeded");
    assert_eq!(rx.last()["error"]["code"], "deadline.exceeded");
}

#[test]
fn rollback_stops_services_before_running_undos_in_reverse() {
    let sb = Sandbox::new();
    sb.write("svc.sh", "trap 'echo service-stopped >> order.log; exit 0' TERM\ntouch svc.ready\nwhile :; do sleep 0.05; done\n");
    sb.plan(
        r#"
version: 1
name: rollback
rollback: true
steps:
  svc:
    service: ["sh", "svc.sh"]
    ready: { file: svc.ready, interval: 20ms }
  first:
    run: ["true"]
    undo: ["sh", "-c", "echo undo-first >> order.log"]
    needs: [svc]
  second:
    run: ["true"]
    undo: ["sh", "-c", "echo undo-second >> order.log"]
    needs: [first]
  broken:
    run: ["false"]
    needs: [second]
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let order: Vec<String> = sb.read("order.log").lines().map(str::to_string).collect();
    assert_eq!(order, ["service-stopped", "undo-second", "undo-first"]);
}

#[test]
fn app_that_dies_or_misses_the_deadline_before_ready_fails_the_run() {
    // Dies before its ready check passes: its code is passed on, the run failed.
    let sb = Sandbox::new();
    sb.write("svc.sh", "trap 'echo svc-stopped >> order.log; exit 0' TERM\ntouch svc.ready\nwhile :; do sleep 0.05; done\n");
    sb.plan(
        r#"
version: 1
name: early-exit
steps:
  svc:
    service: ["sh", "svc.sh"]
    ready: { file: svc.ready, interval: 20ms }
  app:
    exec: ["sh", "-c", "sleep 0.2; exit 4"]
    needs: [svc]
    ready: { file: never, interval: 20ms }
"#,
    );
    let out = wait_output(start_run(&sb, &[]));
    assert_eq!(code(&out), 4, "{}", dump(&out));
    let status = sb.status();
    assert_eq!(status["outcome"], "failed");
    assert_eq!(status["failed_step"], "app");
    assert_eq!(status["steps"]["app"]["state"], "failed");
    assert_eq!(
        sb.read("order.log").trim(),
        "svc-stopped",
        "the service was stopped"
    );

    // Never ready within the plan's deadline: stopped, exit 75.
    let sb = Sandbox::new();
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(
        r#"
version: 1
name: slow-app
deadline: 1s
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: { file: never, interval: 20ms }
"#,
    );
    let out = wait_output(start_run(&sb, &["--supervise"]));
    assert_eq!(code(&out), 75, "{}", dump(&out));
    assert_eq!(sb.status()["outcome"], "deadline_exceeded");
    assert!(
        sb.read("signals.log").contains("TERM"),
        "the app was stopped with SIGTERM"
    );
    assert!(!sb.run_dir().join("ready").exists());
}

#[test]
fn supervised_app_says_ready_over_sd_notify_and_systemd_hears_ready_after_it() {
    let sb = Sandbox::new();
    let socket = NotifySocket::new();
    sb.write(
        "app.py",
        "import os, signal, socket, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(0.3)\nopen('app.said-ready', 'w').close()\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\nwhile True: time.sleep(0.05)\n",
    );
    sb.plan(
        r#"
version: 1
name: notify-app
steps:
  app:
    exec: ["/usr/bin/python3", "app.py"]
    ready: { notify: true }
"#,
    );
    let mut child = Bootplan::new(
        sb.cmd()
            .args(["run", "plan.yaml"])
            .env("NOTIFY_SOCKET", &socket.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_ready(&sb, &mut child);
    assert!(
        sb.path().join("app.said-ready").exists(),
        "ready before the app said so"
    );
    // The status file is written just before READY=1 is sent (same event).
    let mut before_stop = Vec::new();
    wait_until("READY=1 on the test socket", LONG, || {
        before_stop.extend(socket.messages());
        before_stop.iter().any(|m| m.contains("READY=1"))
    });
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let after = socket.messages();
    assert!(
        after.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 at shutdown: {after:?}"
    );
}

#[test]
fn registration_over_tls_trusts_the_plans_ca_file() {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(!under_ci(), "etcd is not installed (scripts/deps/etcd.sh)");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);

    let etcd = launch_etcd(
        "https",
        &[
            "--cert-file".into(),
            dir.join("server.pem").into(),
            "--key-file".into(),
            dir.join("server.key").into(),
        ],
    );
    let ca = dir.join("ca.pem");
    let get = |key: &str| {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.url, "--command-timeout=2s", "--cacert"])
            .arg(&ca)
            .args(["get", key, "--print-value-only"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_until("etcd over TLS", LONG, || get("/probe").is_some());

    let sb = Sandbox::new();
    sb.write("app.sh", SIGNAL_APP);
    std::fs::copy(&ca, sb.path().join("etcd-ca.pem")).unwrap();
    let plan = |ca_line: &str| {
        format!(
            "version: 1\nname: tls\nsteps:\n  app:\n    exec: [\"sh\", \"app.sh\"]\n    ready: {{ file: app.up, interval: 20ms }}\nregister:\n  etcd:\n    endpoints: [\"{}\"]\n    key: /services/tls/one\n    ttl: 5s\n{ca_line}",
            etcd.url
        )
    };
    sb.plan(&plan("    ca_file: etcd-ca.pem\n"));
    let mut child = start_run(&sb, &[]);
    wait_ready(&sb, &mut child);
    assert!(
        get("/services/tls/one").is_some_and(|v| v.contains("bootstrap_id")),
        "registered over TLS"
    );
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        get("/services/tls/one").as_deref(),
        Some(""),
        "deregistered over TLS"
    );

    // Without the CA the server is not trusted: register.failed.
    sb.plan(&plan(""));
    let _ = std::fs::remove_file(sb.path().join("app.up"));
    let out = wait_output(start_run(&sb, &[]));
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(sb.status()["error"]["code"], "register.failed");
}

#[test]
fn supervise_keeps_the_services_of_an_app_less_plan_until_sigterm() {
    let sb = Sandbox::new();
    sb.write(
        "svc.sh",
        "trap 'echo svc-stopped >> order.log; exit 0' TERM\necho $$ > svc.pid\nwhile :; do sleep 0.05; done\n",
    );
    sb.plan(
        r#"
version: 1
name: agents
steps:
  svc:
    service: ["sh", "svc.sh"]
    ready: { file: svc.pid, interval: 20ms }
  after:
    run: ["true"]
    needs: [svc]
"#,
    );
    // Without --supervise the run ends and stops its services.
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("order.log").trim(), "svc-stopped");
    let _ = std::fs::remove_file(sb.path().join("order.log"));
    let _ = std::fs::remove_file(sb.run_dir().join("status.json"));
    // The ready check watches svc.pid: a stale one from the first run would
    // pass it at once and name the first (stopped) service.
    let _ = std::fs::remove_file(sb.path().join("svc.pid"));

    // With --supervise the services stay up after ready, until SIGTERM.
    let mut child = start_run(&sb, &["--supervise"]);
    wait_ready(&sb, &mut child);
    wait_until("the readiness file", LONG, || {
        sb.run_dir().join("ready").exists()
    });
    let svc: i32 = sb.read("svc.pid").trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pid_alive(svc),
        "the service was stopped although bootplan supervises"
    );
    assert!(child.try_wait().unwrap().is_none(), "bootplan exited");
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("order.log").trim(), "svc-stopped");
    assert!(!pid_alive(svc));
}

#[test]
fn the_reaper_never_steals_the_exit_status_of_a_step() {
    // Under supervision the reaper runs during the whole plan. Many short
    // steps exit 3 at the same time; each must be reported with its own
    // status (a stolen status would surface as step.spawn_failed).
    let sb = Sandbox::new();
    let mut plan = String::from("version: 1\nname: statuses\nsteps:\n");
    for i in 0..24 {
        plan.push_str(&format!(
            "  s{i}: {{ run: [\"sh\", \"-c\", \"(sleep 0.05 &) ; exit 3\"], on_failure: continue }}\n"
        ));
    }
    plan.push_str("  app:\n    exec: [\"true\"]\n    needs: [");
    plan.push_str(
        &(0..24)
            .map(|i| format!("s{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    plan.push_str("]\n");
    sb.plan(&plan);
    let out = wait_output(start_run(&sb, &["--supervise"]));
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let status = sb.status();
    for i in 0..24 {
        let step = &status["steps"][format!("s{i}")];
        assert_eq!(step["error"]["code"], "step.exit_nonzero", "s{i}: {step}");
        assert!(
            step["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("status 3"),
            "s{i}: {step}"
        );
    }
}

#[test]
fn a_service_lost_during_the_run_fails_it_with_service_failed() {
    let sb = Sandbox::new();
    sb.write("svc.sh", "touch svc.ready\nsleep 0.3\nexit 2\n");
    sb.plan(
        r#"
version: 1
name: lost
kill_grace: 500ms
steps:
  svc:
    service: ["sh", "svc.sh"]
    ready: { file: svc.ready, interval: 20ms }
    restart: { on: never }
  slow:
    run: ["sleep", "10"]
    needs: [svc]
"#,
    );
    let started = std::time::Instant::now();
    let out = wait_output(start_run(&sb, &[]));
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the run waited for `slow`"
    );
    let status = sb.status();
    assert_eq!(status["error"]["code"], "service.failed");
    assert_eq!(status["failed_step"], "svc");
    assert_eq!(status["steps"]["slow"]["state"], "cancelled");
}

#[test]
fn registration_password_from_vault_then_the_token_is_revoked_once_registered() {
    // Under supervision the secret store stays open after the steps, until
    // the app is ready and registered (the password is fetched then); then
    // the Vault token is revoked (`revoke_on_exit`).
    let Some(bao) = crate::secrets::Bao::start(false) else {
        return;
    };
    let Some(etcd) = start_etcd_with_auth("from-vault-pw") else {
        return;
    };
    assert!(
        bao.cli(&["kv", "put", "secret/etcd", "pw=from-vault-pw"])
            .status
            .success()
    );
    let token_out = bao.cli(&["token", "create", "-ttl=1h", "-field=token"]);
    let token = String::from_utf8_lossy(&token_out.stdout)
        .trim()
        .to_string();
    let sb = Sandbox::new();
    sb.write("token", &token);
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(&format!(
        r#"
version: 1
name: vault-etcd
backends:
  vault: {{ address: "{}", auth: {{ token: {{ file: token }} }}, revoke_on_exit: true }}
secrets:
  etcd_pw: {{ vault: {{ path: secret/etcd, key: pw }} }}
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: {{ file: app.up, interval: 20ms }}
register:
  etcd:
    endpoints: ["{}"]
    key: /services/vault/one
    ttl: 5s
    username: web
    password: "{{{{ secrets.etcd_pw }}}}"
"#,
        bao.addr(),
        etcd.url
    ));
    let mut child = start_run(&sb, &[]);
    wait_ready(&sb, &mut child);
    assert!(
        etcd_get(&etcd, "/services/vault/one").flatten().is_some(),
        "registered"
    );
    assert!(
        !bao.cli(&["token", "lookup", &token]).status.success(),
        "the token was revoked once the app was registered"
    );
    signal(child.id(), libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        etcd_get(&etcd, "/services/vault/one"),
        Some(None),
        "deregistered"
    );
    assert!(!dump(&out).contains("from-vault-pw"), "the password leaked");
}

/// The supervised app's exit is noticed from the exit itself, not from a
/// periodic look: between "supervising" and "the app exited" of an app
/// that exits at once, bootplan's own timestamps show no wait.
#[test]
fn the_exit_of_a_supervised_app_is_noticed_at_once() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: quick\nsteps:\n  app: { exec: [\"/bin/true\"] }\n");
    for _ in 0..10 {
        let out = sb
            .cmd()
            .args(["run", "--supervise", "plan.yaml"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", dump(&out));
        let lines = log_lines(&out);
        let at = |prefix: &str| {
            let line = lines
                .iter()
                .find(|l| l["msg"].as_str().is_some_and(|m| m.starts_with(prefix)))
                .unwrap_or_else(|| panic!("no `{prefix}` line: {}", dump(&out)));
            humantime::parse_rfc3339(line["ts"].as_str().unwrap()).unwrap()
        };
        let noticed = at("the app exited")
            .duration_since(at("supervising"))
            .unwrap_or_default();
        assert!(
            noticed < Duration::from_millis(250),
            "the exit was noticed {noticed:?} after the start"
        );
    }
}

/// The command line of process `pid`, its arguments joined by spaces.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Once the app is ready and nothing else needs bootplan, the lean
/// supervisor takes over in the same process: the state directory stays
/// locked, signals still reach the app, and its exit ends the run as
/// before (readiness file and secret file gone, the app's code).
#[test]
fn a_ready_app_alone_is_kept_by_the_lean_supervisor_in_the_same_process() {
    let sb = Sandbox::new();
    sb.write("app.sh", SIGNAL_APP);
    sb.write("token.txt", "lean-secret-value\n");
    sb.plan(
        r#"
version: 1
name: lean
secrets:
  token: { file: { path: token.txt }, to_file: { path: token } }
steps:
  app:
    exec: ["sh", "app.sh"]
    ready: { file: app.up, interval: 20ms }
    secrets: [token]
"#,
    );
    let secret_file = sb.run_dir().join("secrets/token");
    let mut child = start_run(&sb, &["--supervise"]);
    wait_ready(&sb, &mut child);
    let pid = child.id();
    wait_until("the lean supervisor", LONG, || {
        cmdline(pid).contains("__supervise sh")
    });
    let app_parent = sb.read("app.up");
    assert!(
        app_parent.trim().ends_with(&format!(" {pid}")),
        "the app is still bootplan's child: {app_parent}"
    );
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        "lean-secret-value"
    );
    // The state directory is still taken.
    let second = sb.cmd().args(["run", "plan.yaml"]).output().unwrap();
    assert_ne!(code(&second), 0, "{}", dump(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another bootplan is running"),
        "{}",
        dump(&second)
    );
    signal(pid, libc::SIGUSR1);
    wait_until("app to record USR1", LONG, || {
        sb.read("signals.log").lines().any(|l| l == "USR1")
    });
    signal(pid, libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "the app's own code: {}", dump(&out));
    assert!(sb.read("signals.log").lines().any(|l| l == "TERM"));
    assert!(
        !sb.run_dir().join("ready").exists(),
        "the readiness file is gone"
    );
    assert!(!secret_file.exists(), "the secret file outlived the app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("the app exited with code 0"), "{stdout}");
    assert!(!stdout.contains("lean-secret-value"), "{stdout}");
}

/// A SIGTERM sent while bootplan hands the app over (the moment the new
/// image starts, before it reads its signals) is held for the lean
/// supervisor, never lost: the app is asked to stop each time.
#[test]
fn a_stop_signal_sent_during_the_hand_over_still_stops_the_app() {
    for round in 0..5 {
        let sb = Sandbox::new();
        sb.write("app.sh", SIGNAL_APP);
        sb.plan(
            "version: 1\nname: lean-race\nsteps:\n  app: { exec: [\"sh\", \"app.sh\"], ready: { file: app.up, interval: 10ms } }\n",
        );
        let mut child = start_run(&sb, &["--supervise"]);
        wait_ready(&sb, &mut child);
        let pid = child.id();
        // Polled without a pause: the signal must land as the new image starts.
        let started = std::time::Instant::now();
        while !cmdline(pid).contains("__supervise") {
            assert!(pid_alive(pid as i32), "round {round}: bootplan is gone");
            assert!(started.elapsed() < LONG, "round {round}: no hand-over");
            std::thread::yield_now();
        }
        signal(pid, libc::SIGTERM);
        let out = wait_output(child);
        assert_eq!(code(&out), 0, "round {round}: {}", dump(&out));
        assert!(
            sb.read("signals.log").lines().any(|l| l == "TERM"),
            "round {round}: the app never got the stop signal"
        );
    }
}

/// With telemetry to export, the full supervisor stays (its endpoint keeps
/// answering while the app runs).
#[test]
fn a_run_that_exports_metrics_keeps_the_full_supervisor() {
    let sb = Sandbox::new();
    sb.write("app.sh", SIGNAL_APP);
    sb.plan(
        "version: 1\nname: full\ntelemetry:\n  metrics: { textfile: m.prom }\nsteps:\n  app: { exec: [\"sh\", \"app.sh\"], ready: { file: app.up, interval: 20ms } }\n",
    );
    let mut child = start_run(&sb, &["--supervise"]);
    wait_ready(&sb, &mut child);
    let pid = child.id();
    assert!(cmdline(pid).contains("run plan.yaml"), "{}", cmdline(pid));
    signal(pid, libc::SIGTERM);
    let out = wait_output(child);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(cmdline(pid).is_empty() || !cmdline(pid).contains("__supervise"));
}

/// The lean supervisor's entry is bootplan's own: run by hand, without a
/// hand-over or naming a process that is not its child, it refuses (64)
/// and touches nothing.
#[test]
fn the_lean_supervisor_entry_refuses_what_bootplan_did_not_hand_over() {
    let sb = Sandbox::new();
    let out = sb.cmd().args(["__supervise", "app"]).output().unwrap();
    assert_eq!(code(&out), 64, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("started by bootplan itself"),
        "{}",
        dump(&out)
    );
    let ready = sb.path().join("ready");
    std::fs::write(&ready, "{}").unwrap();
    let handoff = serde_json::json!({
        "app": { "pid": 1, "stop_signal": 15, "leaf": null },
        "program": "init", "grace_ms": 10, "pending": [15],
        "ready_file": ready, "secret_files": [], "run_group": null,
        "log": { "json": true, "level": "info", "bootstrap_id": "x" },
    });
    let out = sb
        .cmd()
        .args(["__supervise", "init"])
        .env("BOOTPLAN_HANDOFF", handoff.to_string())
        .output()
        .unwrap();
    assert_eq!(code(&out), 64, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a child of this process"),
        "{}",
        dump(&out)
    );
    assert!(ready.exists(), "nothing was touched");
}
