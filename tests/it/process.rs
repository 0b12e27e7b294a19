//! Process trees end with their step, at the deadline, on SIGTERM, and —
//! with cgroup v2 — after a SIGKILL of bootplan, at the next start. Each
//! step starts two grandchildren: one in its process group (`sleep NEAR &`)
//! and one that leaves it (`setsid sleep AWAY &`), found by their unique
//! arguments in /proc. Only a cgroup catches the second one.
//!
//! The cgroup tests need cgroup v2 with a writable hierarchy (root): with
//! `BOOTPLAN_TEST_REQUIRE_PEERS=1` (scripts/test) a host without it fails
//! them; elsewhere they say they skipped. Test cgroups are made under the
//! test's own cgroup and removed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::harness::{
    Bootplan, Sandbox, bin, code, dump, log_lines, pid_alive, start_run, under_ci, wait_until,
};

/// The two grandchildren's sleep arguments, unique to one test.
struct Markers {
    near: String,
    away: String,
}

impl Markers {
    fn new() -> Markers {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n:03}", std::process::id());
        Markers {
            near: format!("31.{tag}1"),
            away: format!("31.{tag}2"),
        }
    }

    /// Shell that starts both, in the background.
    fn start(&self) -> String {
        // The step goes on only once the escapee is in its own session
        // (field 6 of /proc/PID/stat), so it never dies as a group member
        // merely because the step ended before setsid() ran.
        format!(
            "sleep {} & setsid sleep {} & away=$!; while [ $(cut -d' ' -f6 /proc/$away/stat) = $(cut -d' ' -f6 /proc/$$/stat) ]; do sleep 0.01; done; ",
            self.near, self.away
        )
    }
}

/// Live processes (not zombies) with `arg` among their arguments.
fn running_with(arg: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

fn kill_all_with(arg: &str) {
    for pid in running_with(arg) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn assert_gone(arg: &str, when: &str) {
    wait_until(
        &format!("`sleep {arg}` to be gone {when}"),
        Duration::from_secs(5),
        || running_with(arg).is_empty(),
    );
}

/// The cgroup v2 path (as in /proc/PID/cgroup) of a process.
fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// This test process's cgroup directory, when it can make cgroups below
/// it. Without: a failure when peers are required, else a skip (said).
fn cgroups_here(test: &str) -> Option<PathBuf> {
    let why = match bootplan::test_support::own_cgroup() {
        Ok(own) => {
            // One probe per test: tests run in parallel in one process.
            let probe = own.join(format!("bootplan-test-probe-{}-{test}", std::process::id()));
            match std::fs::create_dir(&probe) {
                Ok(()) => {
                    let killable = probe.join("cgroup.kill").exists();
                    let _ = std::fs::remove_dir(&probe);
                    if killable {
                        return Some(own);
                    }
                    "this kernel has no cgroup.kill".to_string()
                }
                Err(err) => format!("cannot create a cgroup under {}: {err}", own.display()),
            }
        }
        Err(why) => why,
    };
    let required = under_ci();
    assert!(
        !required,
        "{test} needs cgroup v2 with a writable hierarchy: {why}"
    );
    eprintln!("skipping {test}: no usable cgroup v2 here ({why})");
    None
}

/// A cgroup made by a test, `PARENT/bootplan-test-PID-N/own`, to start
/// bootplan in; removed with everything in it when dropped.
struct TestCgroup {
    top: PathBuf,
    own: PathBuf,
}

impl TestCgroup {
    fn new(parent: &Path) -> TestCgroup {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let top = parent.join(format!("bootplan-test-{}-{n}", std::process::id()));
        let own = top.join("own");
        std::fs::create_dir(&top).expect("test cgroup");
        let group = TestCgroup { top, own };
        std::fs::create_dir(&group.own).expect("test cgroup");
        group
    }

    /// bootplan cannot make any cgroup below `own`.
    fn without_room(self) -> TestCgroup {
        std::fs::write(self.own.join("cgroup.max.descendants"), "0").expect("limit");
        self
    }

    /// `bootplan run plan.yaml` started inside `own` (a shell moves itself
    /// in, then execs bootplan), stdout and stderr piped.
    fn start(&self, sb: &Sandbox) -> Bootplan {
        let template = sb.cmd();
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && exec \"$2\" run plan.yaml",
            "sh",
        ])
        .arg(&self.own)
        .arg(bin());
        for (key, value) in template.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.current_dir(sb.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Bootplan::new(cmd.spawn().expect("start bootplan in a cgroup"))
    }

    /// The cgroups below `own`.
    fn children(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.own)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&entry.path());
                    }
                }
            }
            wait_until("a test cgroup to empty", Duration::from_secs(5), || {
                std::fs::read_to_string(dir.join("cgroup.events"))
                    .map_or(true, |e| e.contains("populated 0"))
            });
            let _ = std::fs::remove_dir(dir);
        }
        remove(&self.top);
    }
}

/// Waits for bootplan to exit, reading its output.
fn finish(bootplan: Bootplan) -> std::process::Output {
    bootplan
        .into_child()
        .wait_with_output()
        .expect("bootplan output")
}

fn messages(out: &std::process::Output) -> Vec<String> {
    log_lines(out)
        .iter()
        .filter_map(|l| l["msg"].as_str().map(str::to_string))
        .collect()
}

/// A plan whose first step starts both grandchildren and records where the
/// near one runs, then ends; the second step waits for `go`, so the test
/// can look while bootplan still runs.
fn step_end_plan(sb: &Sandbox, m: &Markers) {
    sb.plan(&format!(
        r#"
version: 1
name: step-end
steps:
  leaves:
    shell: "{start}near=$!; cat /proc/$near/cgroup > near.cgroup; ls -l /proc/$$/fd > fds.txt"
  after:
    shell: "touch after-started; while [ ! -e go ]; do sleep 0.02; done"
    needs: [leaves]
"#,
        start = m.start()
    ));
}

#[test]
fn grandchildren_die_when_their_step_ends_even_outside_its_process_group() {
    let Some(_) = cgroups_here("grandchildren_die_when_their_step_ends") else {
        return;
    };
    let sb = Sandbox::new();
    let m = Markers::new();
    step_end_plan(&sb, &m);
    let bootplan = start_run(&sb, &[]);
    let pid = bootplan.id();
    wait_until("the second step", Duration::from_secs(10), || {
        sb.path().join("after-started").exists()
    });
    // The first step is over and bootplan still runs: both are gone.
    assert_gone(&m.near, "after their step ended");
    assert_gone(&m.away, "after their step ended (it left the group)");
    let near = sb.read("near.cgroup");
    let leaf = near
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("");
    let run_group = format!("/bootplan-{pid}/");
    assert!(
        leaf.contains(&run_group),
        "the step's child ran in {leaf:?}, not in a leaf of {run_group}"
    );
    assert!(
        !sb.read("fds.txt").contains("cgroup.procs"),
        "a cgroup descriptor reached the step: {}",
        sb.read("fds.txt")
    );
    sb.write("go", "");
    let out = finish(bootplan);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    // The run's group and its record are gone with the run.
    let group = bootplan::test_support::own_cgroup()
        .unwrap()
        .join(format!("bootplan-{pid}"));
    assert!(!group.exists(), "{} is left", group.display());
    assert!(!sb.run_dir().join("cgroup.json").exists());
}

/// The same layout as under a delegating systemd unit: bootplan's own
/// cgroup is not the root, holds bootplan, and gets the run group below it
/// (bootplan enables no controller, so the no-internal-processes rule
/// never applies to it).
#[test]
fn a_run_in_a_non_root_cgroup_puts_its_group_below_it_and_removes_it() {
    let Some(parent) = cgroups_here("a_run_in_a_non_root_cgroup") else {
        return;
    };
    let cgroup = TestCgroup::new(&parent);
    let sb = Sandbox::new();
    let m = Markers::new();
    step_end_plan(&sb, &m);
    let bootplan = cgroup.start(&sb);
    let pid = bootplan.id();
    wait_until("the second step", Duration::from_secs(10), || {
        sb.path().join("after-started").exists()
    });
    assert_gone(&m.near, "after their step ended");
    assert_gone(&m.away, "after their step ended (it left the group)");
    let own = cgroup_of(pid as i32).expect("bootplan's cgroup");
    assert!(own.ends_with("/own"), "bootplan stays in its cgroup: {own}");
    let near = sb.read("near.cgroup");
    assert!(
        near.contains(&format!("{own}/bootplan-{pid}/")),
        "the step's child ran in {near:?}"
    );
    sb.write("go", "");
    let out = finish(bootplan);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(cgroup.children(), Vec::<PathBuf>::new(), "cgroups left");
}

/// Where no cgroup can be made, a step's process group still goes with it;
/// a process that left the group is beyond reach (the documented limit).
#[test]
fn without_a_cgroup_the_steps_process_group_dies_with_it() {
    let Some(parent) = cgroups_here("without_a_cgroup_the_process_group_dies") else {
        return;
    };
    let cgroup = TestCgroup::new(&parent).without_room();
    let sb = Sandbox::new();
    let m = Markers::new();
    step_end_plan(&sb, &m);
    let bootplan = cgroup.start(&sb);
    wait_until("the second step", Duration::from_secs(10), || {
        sb.path().join("after-started").exists()
    });
    assert_gone(&m.near, "after their step ended");
    let escaped = running_with(&m.away);
    kill_all_with(&m.away);
    sb.write("go", "");
    let out = finish(bootplan);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        messages(&out)
            .iter()
            .any(|m| m.contains("not contained in a cgroup")),
        "the fallback is not said: {}",
        dump(&out)
    );
    assert!(
        !escaped.is_empty(),
        "the setsid grandchild was caught without a cgroup: is this run contained after all?"
    );
}

/// Both kinds of containment, for the exit paths they share.
enum Containment {
    Cgroup,
    ProcessGroups(TestCgroup),
}

fn containments(test: &str) -> Vec<Containment> {
    match cgroups_here(test) {
        Some(parent) => vec![
            Containment::Cgroup,
            Containment::ProcessGroups(TestCgroup::new(&parent).without_room()),
        ],
        None => Vec::new(),
    }
}

fn start_with(containment: &Containment, sb: &Sandbox) -> Bootplan {
    match containment {
        Containment::Cgroup => start_run(sb, &[]),
        Containment::ProcessGroups(cgroup) => cgroup.start(sb),
    }
}

/// Checks the grandchildren after the run ended: with a cgroup both are
/// gone; without, the near one is (and the escaped one is cleaned up).
fn assert_tree_gone(containment: &Containment, m: &Markers, when: &str) {
    assert_gone(&m.near, when);
    match containment {
        Containment::Cgroup => assert_gone(&m.away, when),
        Containment::ProcessGroups(_) => kill_all_with(&m.away),
    }
}

#[test]
fn grandchildren_die_at_the_deadline() {
    for containment in containments("grandchildren_die_at_the_deadline") {
        let sb = Sandbox::new();
        let m = Markers::new();
        sb.plan(&format!(
            r#"
version: 1
name: deadline
deadline: 2s
kill_grace: 300ms
steps:
  long:
    shell: "{start}touch started; sleep 32"
"#,
            start = m.start()
        ));
        let bootplan = start_with(&containment, &sb);
        wait_until("the step to start", Duration::from_secs(10), || {
            sb.path().join("started").exists()
        });
        assert!(!running_with(&m.near).is_empty(), "the step runs");
        let out = finish(bootplan);
        assert_eq!(code(&out), 75, "{}", dump(&out));
        assert_tree_gone(&containment, &m, "after the deadline");
    }
}

#[test]
fn grandchildren_die_when_bootplan_gets_sigterm() {
    for containment in containments("grandchildren_die_when_bootplan_gets_sigterm") {
        let sb = Sandbox::new();
        let m = Markers::new();
        sb.plan(&format!(
            r#"
version: 1
name: term
kill_grace: 300ms
steps:
  long:
    shell: "{start}touch started; sleep 32"
"#,
            start = m.start()
        ));
        let bootplan = start_with(&containment, &sb);
        wait_until("the step to start", Duration::from_secs(10), || {
            sb.path().join("started").exists()
        });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(bootplan.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = finish(bootplan);
        assert_eq!(code(&out), 143, "{}", dump(&out));
        assert_tree_gone(&containment, &m, "after SIGTERM to bootplan");
    }
}

#[test]
fn grandchildren_die_when_their_step_fails_and_the_run_stops() {
    for containment in containments("grandchildren_die_when_their_step_fails") {
        let sb = Sandbox::new();
        let m = Markers::new();
        // `slow` is cancelled when `fails` fails; both leave grandchildren.
        sb.plan(&format!(
            r#"
version: 1
name: failing
kill_grace: 300ms
steps:
  slow:
    shell: "{start}touch started; sleep 32"
  fails:
    shell: "while [ ! -e started ]; do sleep 0.02; done; exit 3"
"#,
            start = m.start()
        ));
        let bootplan = start_with(&containment, &sb);
        let out = finish(bootplan);
        assert_eq!(code(&out), 1, "{}", dump(&out));
        assert_tree_gone(&containment, &m, "after the run failed");
    }
}

#[test]
fn after_a_sigkill_the_next_start_kills_what_was_left_and_says_so() {
    let Some(_) = cgroups_here("after_a_sigkill_the_next_start_kills") else {
        return;
    };
    let sb = Sandbox::new();
    let m = Markers::new();
    sb.plan(&format!(
        r#"
version: 1
name: killed
steps:
  long:
    shell: "{start}touch started; wait"
"#,
        start = m.start()
    ));
    let mut bootplan = start_run(&sb, &[]);
    let pid = bootplan.id();
    wait_until("the step to start", Duration::from_secs(10), || {
        sb.path().join("started").exists()
    });
    bootplan.kill().unwrap();
    bootplan.wait().unwrap();
    // The step's shell died with bootplan (its death signal); what it
    // started lives on in the run's cgroup, which the run dir names.
    let record: serde_json::Value =
        serde_json::from_str(&sb.read("run/cgroup.json")).expect("the run's cgroup is recorded");
    assert_eq!(record["pid"], pid);
    let group = PathBuf::from(record["cgroup"].as_str().unwrap());
    for arg in [&m.near, &m.away] {
        let left = running_with(arg);
        assert_eq!(left.len(), 1, "`sleep {arg}` outlives a killed bootplan");
        let cgroup = cgroup_of(left[0]).unwrap_or_default();
        assert!(cgroup.contains(&format!("/bootplan-{pid}/")), "{cgroup}");
    }

    sb.plan("version: 1\nname: killed\nsteps:\n  quick: { run: [\"true\"] }\n");
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let said = format!("killed 2 processes left by a previous bootplan run (pid {pid})");
    let notice = log_lines(&out)
        .into_iter()
        .find(|l| l["msg"].as_str().is_some_and(|m| m.contains(&said)));
    let notice = notice.unwrap_or_else(|| panic!("no notice {said:?}: {}", dump(&out)));
    assert_eq!(notice["level"], "warn", "{notice}");
    assert!(running_with(&m.near).is_empty() && running_with(&m.away).is_empty());
    assert!(!group.exists(), "{} is left", group.display());
    assert!(!sb.run_dir().join("cgroup.json").exists());
}

/// The supervised app's death signal is SIGKILL: an app that ignores
/// SIGTERM still goes when the supervisor is killed.
#[test]
fn a_supervised_app_that_ignores_sigterm_dies_with_a_killed_bootplan() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: stubborn
supervise: { enabled: true }
steps:
  app:
    exec: ["sh", "-c", "trap '' TERM; echo $$ > app.pid.tmp; mv app.pid.tmp app.pid; while :; do sleep 0.1; done"]
"#,
    );
    let mut bootplan = start_run(&sb, &[]);
    wait_until("the app to start", Duration::from_secs(10), || {
        sb.path().join("app.pid").exists()
    });
    let app: i32 = sb.read("app.pid").trim().parse().unwrap();
    assert!(pid_alive(app));
    bootplan.kill().unwrap();
    bootplan.wait().unwrap();
    wait_until(
        "the app to die with its supervisor",
        Duration::from_secs(5),
        || !pid_alive(app),
    );
}

/// A cancelled step's processes get SIGTERM first (their trap runs, once),
/// then SIGKILL after the grace.
#[test]
fn a_cancelled_step_gets_sigterm_once_then_sigkill() {
    for containment in containments("a_cancelled_step_gets_sigterm_once") {
        let sb = Sandbox::new();
        sb.plan(
            r#"
version: 1
name: term-once
kill_grace: 500ms
steps:
  trapping:
    shell: "trap 'echo term >> terms' TERM; touch started; while :; do sleep 0.02; done"
"#,
        );
        let bootplan = start_with(&containment, &sb);
        wait_until("the step to start", Duration::from_secs(10), || {
            sb.path().join("started").exists()
        });
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(bootplan.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = finish(bootplan);
        assert_eq!(code(&out), 143, "{}", dump(&out));
        assert_eq!(sb.read("terms"), "term\n", "the trap ran once");
    }
}
