//! The verdict is true and every wait is bounded, on a bad day: a reader
//! that closes the pipe or never reads, a duration too large to add to a
//! clock, a bootplan killed mid-run, a second run while one is ready.

use std::io::{BufRead, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{Sandbox, code, dump, start_run, wait_until};

#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    // The schema is larger than a pipe holds: bootplan is still writing
    // when the reader goes away, as with `bootplan schema | head -1`.
    let sb = Sandbox::new();
    let mut child = sb
        .cmd()
        .arg("schema")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "{");
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(out.stderr.is_empty(), "{}", dump(&out));

    // `bootplan status | head -1` on a run with many steps.
    let mut steps = String::new();
    for i in 0..3000 {
        steps.push_str(&format!("  s{i}: {{ run: [\"true\"] }}\n"));
    }
    sb.plan(&format!(
        "version: 1\nname: many\nmax_parallel: 64\nsteps:\n{steps}"
    ));
    assert_eq!(code(&sb.run()), 0);
    let mut child = sb
        .cmd()
        .arg("status")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 16];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        dump(&out)
    );
}

#[test]
fn a_duration_too_large_for_the_clock_is_an_invalid_plan() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: huge\ndeadline: 9223372036854775807s\nsteps:\n  a: { run: [\"true\"] }\n");
    let out = sb.run();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert_eq!(sb.status()["outcome"], "invalid");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plan.yaml:3:11"), "no position: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_stalled_log_reader_does_not_hold_up_the_deadline() {
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: stalled\ndeadline: 2s\nkill_grace: 500ms\n",
        "steps:\n  chatty: { shell: \"while :; do echo 'a line of output that nobody reads'; done\" }\n",
    ));
    // stdout is a pipe nobody reads: it fills after 64 KiB.
    let started = Instant::now();
    let mut child = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The deadline, the kill grace, the pipe drain and the last flush, with room to spare.
    let limit = Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(75), "the deadline is the verdict");
    assert_eq!(sb.status()["outcome"], "deadline_exceeded");
}

#[test]
fn status_of_a_killed_run_says_it_is_gone() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: killed\nsteps:\n  hold: { shell: \"touch started; sleep 30\" }\n");
    let mut child = start_run(&sb, &[]);
    wait_until("the step to start", Duration::from_secs(10), || {
        sb.path().join("started").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        sb.status()["outcome"],
        "running",
        "the killed run left its last state"
    );

    let out = sb.cmd().arg("status").output().unwrap();
    assert_eq!(code(&out), 69, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is gone") && err.contains("[run.gone]"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hold"),
        "{}",
        dump(&out)
    );

    // --wait does not wait for a run that cannot finish.
    let started = Instant::now();
    let out = sb
        .cmd()
        .args(["status", "--wait", "--timeout", "60s"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for a dead run"
    );
}

#[test]
fn a_refused_second_run_leaves_the_first_runs_readiness_alone() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: ready\nsteps:\n  app: { exec: [\"sleep\", \"30\"] }\n");
    let _first = start_run(&sb, &["--supervise"]);
    let ready = sb.run_dir().join("ready");
    wait_until("the first run to be ready", Duration::from_secs(10), || {
        ready.exists()
    });
    let status_before = std::fs::read(sb.run_dir().join("status.json")).unwrap();

    let second = sb.run();
    assert_eq!(code(&second), 73, "{}", dump(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another bootplan is running"));
    assert!(
        ready.exists(),
        "the refused run removed the running instance's ready file"
    );
    assert_eq!(
        std::fs::read(sb.run_dir().join("status.json")).unwrap(),
        status_before,
        "the refused run rewrote the status file"
    );
}

/// Runs `bootplan run plan.yaml` in a private mount namespace after
/// `prepare` (shell) has mounted what the test needs there: the mounts
/// never touch the host's.
fn run_in_mount_namespace(sb: &Sandbox, prepare: &str) -> std::process::Output {
    let template = sb.cmd();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!("{prepare}\nexec \"$0\" run plan.yaml"))
        .arg(crate::harness::bin())
        .current_dir(sb.path());
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let out = cmd.output().expect("unshare");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("unshare failed"),
        "private mount namespaces are needed (root): {}",
        dump(&out)
    );
    out
}

/// A tmpfs of `size` bytes at `dir`, then filled until it is full.
fn full_tmpfs(dir: &std::path::Path, size: &str) -> String {
    format!(
        "mkdir -p {d}\nmount -t tmpfs -o size={size},mode=0700 tmpfs {d}\ndd if=/dev/zero of={d}/.filler bs=4k 2>/dev/null || true",
        d = dir.display()
    )
}

const MARKER_PLAN: &str = "version: 1\nname: disk\nsteps:\n  a: { shell: \"touch ran\" }\n";

#[test]
fn a_read_only_or_full_run_directory_is_state_unwritable_before_any_step() {
    for read_only in [true, false] {
        let sb = Sandbox::new();
        sb.plan(MARKER_PLAN);
        let prepare = if read_only {
            format!(
                "mkdir -p {d}\nmount -t tmpfs -o ro,mode=0755 tmpfs {d}",
                d = sb.run_dir().display()
            )
        } else {
            full_tmpfs(&sb.run_dir(), "16k")
        };
        let out = run_in_mount_namespace(&sb, &prepare);
        assert_eq!(code(&out), 73, "{prepare}: {}", dump(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[state.unwritable]"), "{err}");
        assert!(
            !sb.path().join("ran").exists(),
            "a step ran without a status file"
        );
    }
}

#[test]
fn a_full_state_directory_fails_the_run_instead_of_losing_the_journal() {
    let sb = Sandbox::new();
    sb.plan(MARKER_PLAN);
    let out = run_in_mount_namespace(&sb, &full_tmpfs(&sb.state_dir(), "16k"));
    assert_eq!(code(&out), 73, "{}", dump(&out));
    assert!(sb.path().join("ran").exists(), "the step should have run");
    let status = sb.status();
    assert_eq!(status["outcome"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "state.unwritable", "{status}");
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the journal could not be saved"),
        "{status}"
    );
    assert!(
        !sb.run_dir().join("ready").exists(),
        "ready without a journal"
    );

    // A read-only state directory refuses the run before anything.
    let sb = Sandbox::new();
    sb.plan(MARKER_PLAN);
    let prepare = format!(
        "mkdir -p {d}\nmount -t tmpfs -o ro,mode=0700 tmpfs {d}",
        d = sb.state_dir().display()
    );
    let out = run_in_mount_namespace(&sb, &prepare);
    assert_eq!(code(&out), 73, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[state.unwritable]"),
        "{}",
        dump(&out)
    );
    assert!(!sb.path().join("ran").exists());
}
