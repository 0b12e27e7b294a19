//! Test harness: a temp dir per test with a plan in it, helpers to run the
//! built binary and read what it wrote. Peers (servers) are started by their
//! own modules with `harness::free_port()` and a readiness check.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the `bootplan` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bootplan"))
}

/// Whether a missing peer (or host feature) must fail the test instead of
/// skipping it: under `scripts/test` (`BOOTPLAN_TEST_REQUIRE_PEERS=1`, which
/// installs every peer first) and under CI.
pub fn under_ci() -> bool {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| v == "true" || v == "1");
    set("BOOTPLAN_TEST_REQUIRE_PEERS") || set("CI")
}

/// A scratch directory holding a plan, its state dir and its run dir.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// Writes `text` to `name` inside the sandbox and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Writes a plan as `plan.yaml`.
    pub fn plan(&self, yaml: &str) -> PathBuf {
        self.write("plan.yaml", yaml)
    }

    /// A `bootplan` command with this sandbox's state and run dirs and JSON logs.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.env("BOOTPLAN_STATE_DIR", self.state_dir())
            .env("BOOTPLAN_RUN_DIR", self.run_dir())
            .env("BOOTPLAN_LOG_FORMAT", "json")
            .env_remove("BOOTPLAN_LOG_LEVEL")
            // Facts detection sees no cloud unless a test says otherwise, so
            // no test reaches a real (link-local) metadata service.
            .env("BOOTPLAN_DMI_ROOT", self.path().join("no-dmi"))
            .env("BOOTPLAN_CMDLINE", self.path().join("no-cmdline"))
            .env("BOOTPLAN_DISK_LABELS_DIR", self.path().join("no-labels"))
            .env("BOOTPLAN_SEED_DIRS", self.path().join("no-seed"))
            .current_dir(self.path());
        cmd
    }

    /// Runs `bootplan run plan.yaml` to completion.
    pub fn run(&self) -> Output {
        self.cmd()
            .args(["run", "plan.yaml"])
            .output()
            .expect("run bootplan")
    }

    /// The status file as JSON.
    pub fn status(&self) -> Value {
        let text = std::fs::read_to_string(self.run_dir().join("status.json"))
            .expect("status.json exists");
        serde_json::from_str(&text).expect("status.json is JSON")
    }

    /// One step's status entry.
    pub fn step(&self, name: &str) -> Value {
        self.status()["steps"][name].clone()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A bootplan that a test killed leaves its run's cgroup behind (for
        // the next run to reclaim); the test host keeps none of them.
        let _ = bootplan::test_support::reclaim_leftovers(&self.run_dir());
    }
}

/// The JSON log lines of a run's stdout.
pub fn log_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Exit code, or 128+signal.
pub fn code(output: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    output
        .status
        .code()
        .unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0))
}

/// Everything the run printed, for failure messages.
pub fn dump(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The path of a test peer's binary (a server or tool the tests run): PATH
/// first, then the repo's `.tools/bin`. Missing under CI is a failure;
/// elsewhere the caller skips, and this says why.
pub fn peer(name: &str) -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([local])
        .find(|p| p.is_file());
    if found.is_none() {
        let msg =
            format!("`{name}` is not installed: run scripts/test (it runs scripts/deps/*.sh)");
        assert!(!under_ci(), "{msg}");
        eprintln!("skipping: {msg}");
    }
    found
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `ready` until it returns true or `limit` passes (then panics with `what`).
/// This is a readiness check, not a sleep: it returns as soon as the condition holds.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Starts `bootplan run plan.yaml` in the background with extra args, its
/// stdout and stderr piped.
pub fn start_run(sb: &Sandbox, extra: &[&str]) -> Bootplan {
    Bootplan::new(
        sb.cmd()
            .args(["run", "plan.yaml"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bootplan"),
    )
}

/// [`start_run`] with extra environment variables.
pub fn start_run_with_env(sb: &Sandbox, extra: &[&str], env: &[(&str, &str)]) -> Bootplan {
    let mut cmd = sb.cmd();
    cmd.args(["run", "plan.yaml"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        cmd.env(key, value);
    }
    Bootplan::new(cmd.spawn().expect("spawn bootplan"))
}

/// A bootplan started by a test. If the test ends before waiting for it (a
/// failed assertion), it is killed: it would otherwise run on, with its
/// steps or its app, after the test.
pub struct Bootplan(Option<Child>);

impl Bootplan {
    /// Takes charge of a bootplan started some other way.
    pub fn new(child: Child) -> Bootplan {
        Bootplan(Some(child))
    }

    /// The child, no longer killed when this is dropped.
    pub fn into_child(mut self) -> Child {
        self.0.take().expect("bootplan child")
    }

    /// Waits for bootplan to exit and collects its output; killed (and the
    /// test failed) when it does not exit within `limit`.
    pub fn wait_output(self, limit: Duration) -> Output {
        let child = self.into_child();
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output().expect("wait"));
        });
        match rx.recv_timeout(limit) {
            Ok(out) => {
                let _ = handle.join();
                out
            }
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!("bootplan did not exit within {limit:?}");
            }
        }
    }
}

impl std::ops::Deref for Bootplan {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("bootplan child")
    }
}

impl std::ops::DerefMut for Bootplan {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("bootplan child")
    }
}

impl Drop for Bootplan {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
