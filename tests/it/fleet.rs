//! Fleet safety: fleet-wide semaphores (`limits:` and `throttle:`) against
//! a real single-node etcd on loopback, several bootplan runs at once (each
//! with its own state and run dirs, like machines of a fleet), and the
//! start splay.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Bootplan, Sandbox, code, dump, free_port, log_lines, pid_alive, start_run, under_ci, wait_until,
};
use crate::lifecycle::{Etcd, launch_etcd};

const LONG: Duration = Duration::from_secs(30);

/// Starts etcd and waits until it answers; `None` (a skip) only outside CI
/// and `BOOTPLAN_TEST_REQUIRE_PEERS=1`.
fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err()
        || Command::new("etcdctl").arg("version").output().is_err()
    {
        assert!(
            !under_ci(),
            "etcd/etcdctl is not installed (scripts/deps/etcd.sh)"
        );
        eprintln!("skipped: etcd is not installed (scripts/deps/etcd.sh)");
        return None;
    }
    let etcd = launch_etcd("http", &[]);
    wait_until("etcd to answer", LONG, || keys(&etcd, "/probe").is_some());
    Some(etcd)
}

/// The keys under `prefix`, oldest first; `None` when etcdctl fails.
fn keys(etcd: &Etcd, prefix: &str) -> Option<Vec<String>> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url, "--command-timeout=2s"])
        .args(["get", prefix, "--prefix", "--keys-only", "-w", "json"])
        .args(["--order", "ASCEND", "--sort-by", "CREATE"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    Some(
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| b64.decode(kv["key"].as_str()?).ok())
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// A plan whose `limits` point at `endpoint` with semaphore `migrate` of
/// `slots`, extra `limits.etcd` settings and `steps`.
fn plan(
    endpoint: &str,
    slots: u32,
    etcd_extra: &str,
    semaphore_extra: &str,
    steps: &str,
) -> String {
    format!(
        "version: 1\nname: fleet\nlimits:\n  etcd: {{ endpoints: [\"{endpoint}\"], poll_interval: 100ms{etcd_extra} }}\n  semaphores:\n    migrate: {{ slots: {slots}{semaphore_extra} }}\nsteps:\n{steps}"
    )
}

/// A step that records `start ID` and `end ID` (with nanosecond times)
/// in `marks` around `hold` seconds of work.
fn marked_step(name: &str, marks: &Path, hold: &str) -> String {
    let m = marks.display();
    format!(
        "  {name}:\n    throttle: migrate\n    run: [\"/bin/sh\", \"-c\", \"echo start $BOOTPLAN_BOOTSTRAP_ID.$BOOTPLAN_STEP $(date +%s%N) >> {m}; sleep {hold}; echo end $BOOTPLAN_BOOTSTRAP_ID.$BOOTPLAN_STEP $(date +%s%N) >> {m}\"]\n"
    )
}

/// (kind, holder, time ns) of each line of a marks file.
fn marks(path: &Path) -> Vec<(String, String, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next().unwrap_or_default().to_string();
            let who = it.next().unwrap_or_default().to_string();
            let at = it.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            (kind, who, at)
        })
        .collect()
}

/// The most holders inside the throttled steps at any instant.
fn most_at_once(marks: &[(String, String, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = marks
        .iter()
        .map(|(kind, _, at)| (*at, if kind == "start" { 1 } else { -1 }))
        .collect();
    // At the same nanosecond, an end goes before a start.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

fn status_of(sb: &Sandbox) -> Option<Value> {
    let text = std::fs::read_to_string(sb.run_dir().join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[test]
fn with_one_slot_concurrent_runs_never_overlap_and_all_finish() {
    let Some(etcd) = start_etcd() else { return };
    let shared = tempfile::tempdir().unwrap();
    let marks_file = shared.path().join("marks");
    let text = plan(
        &etcd.url,
        1,
        "",
        "",
        &marked_step("migrate-db", &marks_file, "0.3"),
    );
    let runs: Vec<Sandbox> = (0..4).map(|_| Sandbox::new()).collect();
    let children: Vec<Bootplan> = runs
        .iter()
        .map(|sb| {
            sb.plan(&text);
            let textfile = sb.path().join("metrics.prom");
            start_run(sb, &["--metrics-textfile", textfile.to_str().unwrap()])
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_output(LONG)).collect();
    for out in &outputs {
        assert_eq!(code(out), 0, "{}", dump(out));
    }
    let marks = marks(&marks_file);
    assert_eq!(marks.len(), 8, "every run's step ran once: {marks:?}");
    // Strictly start, end, start, end, … of the same holder: no interleaving.
    for pair in marks.chunks(2) {
        assert_eq!(
            (pair[0].0.as_str(), pair[1].0.as_str()),
            ("start", "end"),
            "{marks:?}"
        );
        assert_eq!(pair[0].1, pair[1].1, "two holders overlapped: {marks:?}");
    }
    assert_eq!(most_at_once(&marks), 1);
    // Somebody queued, and said so: the status keeps the queue time apart,
    // the metric has it, analyze shows it apart from run time.
    let queued: Vec<(u64, &Sandbox)> = runs
        .iter()
        .map(|sb| {
            let step = sb.step("migrate-db");
            assert_eq!(step["throttle"]["semaphore"], "migrate", "{step}");
            assert_eq!(step["throttle"]["held"], true, "{step}");
            (step["throttle"]["queue_ms"].as_u64().unwrap(), sb)
        })
        .collect();
    let (longest, waited_most) = queued.iter().max_by_key(|(ms, _)| *ms).unwrap();
    // Three others ran 0.3s each inside the slot before the last one.
    assert!(*longest >= 600, "the last holder queued only {longest}ms");
    let prom = std::fs::read_to_string(waited_most.path().join("metrics.prom")).unwrap();
    assert!(
        prom.contains(
            "bootplan_throttle_wait_seconds_count{plan=\"fleet\",semaphore=\"migrate\"} 1"
        ),
        "{prom}"
    );
    let analyze = waited_most
        .cmd()
        .args(["analyze", "blame"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&analyze.stdout);
    assert!(
        text.contains("queued ") && text.contains("for semaphore migrate"),
        "{text}"
    );
    // And every slot was given back.
    assert_eq!(
        keys(&etcd, "/bootplan/limits/").unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn two_slots_six_steps_on_three_runs_never_have_more_than_two_holders() {
    let Some(etcd) = start_etcd() else { return };
    let shared = tempfile::tempdir().unwrap();
    let marks_file = shared.path().join("marks");
    let steps = marked_step("one", &marks_file, "0.5") + &marked_step("two", &marks_file, "0.5");
    let text = plan(&etcd.url, 2, "", "", &steps);
    let runs: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let children: Vec<Bootplan> = runs
        .iter()
        .map(|sb| {
            sb.plan(&text);
            start_run(sb, &[])
        })
        .collect();
    for child in children {
        let out = child.wait_output(LONG);
        assert_eq!(code(&out), 0, "{}", dump(&out));
    }
    let marks = marks(&marks_file);
    assert_eq!(marks.len(), 12, "{marks:?}");
    let most = most_at_once(&marks);
    assert!(most <= 2, "{most} holders at once: {marks:?}");
    // Both slots were used: the semaphore limits, it does not serialise.
    assert_eq!(most, 2, "{marks:?}");
    assert_eq!(
        keys(&etcd, "/bootplan/limits/").unwrap(),
        Vec::<String>::new()
    );
}

/// A holder that keeps its slot until `release` exists (or it is killed).
fn holding_step(release: &Path, holding: &Path) -> String {
    format!(
        "  hold:\n    throttle: migrate\n    run: [\"/bin/sh\", \"-c\", \"touch {}; while [ ! -e {} ]; do sleep 0.05; done\"]\n",
        holding.display(),
        release.display()
    )
}

#[test]
fn a_sigkilled_holder_frees_its_slot_within_the_lease_ttl() {
    let Some(etcd) = start_etcd() else { return };
    let shared = tempfile::tempdir().unwrap();
    let (release, holding) = (shared.path().join("release"), shared.path().join("holding"));
    let holder = Sandbox::new();
    holder.plan(&plan(
        &etcd.url,
        1,
        ", ttl: 2s",
        "",
        &holding_step(&release, &holding),
    ));
    let mut a = start_run(&holder, &[]);
    wait_until("the holder to take the slot", LONG, || holding.exists());
    assert_eq!(keys(&etcd, "/bootplan/limits/migrate/").unwrap().len(), 1);

    let next = Sandbox::new();
    let started = shared.path().join("b-started");
    next.plan(&plan(
        &etcd.url,
        1,
        ", ttl: 2s",
        "",
        &format!(
            "  after:\n    throttle: migrate\n    run: [\"/bin/sh\", \"-c\", \"touch {}\"]\n",
            started.display()
        ),
    ));
    let b = start_run(&next, &[]);
    // The second run waits, and its status says for what and where.
    wait_until("the second run to queue", LONG, || {
        status_of(&next).is_some_and(|s| s["steps"]["after"]["state"] == "waiting")
    });
    let step = status_of(&next).unwrap()["steps"]["after"].clone();
    let waiting = step["waiting_for"].as_str().unwrap_or_default();
    assert!(
        waiting.starts_with("semaphore migrate (position 1, 1 slot)"),
        "{step}"
    );
    assert!(!started.exists());

    let killed = Instant::now();
    let pid = a.id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = a.wait();
    assert!(!pid_alive(pid));
    wait_until("the second run to get the slot", LONG, || started.exists());
    let freed_after = killed.elapsed();
    eprintln!("slot free {freed_after:?} after the holder was SIGKILLed (ttl 2s)");
    // Within the TTL (the last keep-alive was at most TTL/3 before the kill),
    // plus etcd's expiry sweep (500ms), one poll and a loaded machine.
    assert!(
        freed_after < Duration::from_millis(3500),
        "the slot came back only after {freed_after:?}"
    );
    let out = b.wait_output(LONG);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(next.step("after")["throttle"]["queue_ms"].as_u64().unwrap() >= 500);
    assert_eq!(
        keys(&etcd, "/bootplan/limits/").unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn a_step_queued_past_its_timeout_or_the_deadline_gives_back_only_its_place() {
    let Some(etcd) = start_etcd() else { return };
    let shared = tempfile::tempdir().unwrap();
    let (release, holding) = (shared.path().join("release"), shared.path().join("holding"));
    let holder = Sandbox::new();
    // Default TTL (10s): a key gone within a second was revoked, not expired.
    holder.plan(&plan(
        &etcd.url,
        1,
        "",
        "",
        &holding_step(&release, &holding),
    ));
    let a = start_run(&holder, &[]);
    wait_until("the holder to take the slot", LONG, || holding.exists());
    let held = keys(&etcd, "/bootplan/limits/migrate/").unwrap();
    assert_eq!(held.len(), 1);

    let ran = shared.path().join("ran");
    let late_step = format!(
        "  late:\n    throttle: migrate\n    run: [\"/bin/sh\", \"-c\", \"touch {}\"]\n",
        ran.display()
    );
    let timed = Sandbox::new();
    timed.plan(&plan(
        &etcd.url,
        1,
        "",
        "",
        &late_step.replace("    throttle:", "    timeout: 1s\n    throttle:"),
    ));
    let out = timed.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let step = timed.step("late");
    assert_eq!(step["state"], "failed", "{step}");
    assert_eq!(step["error"]["code"], "step.timeout", "{step}");
    let message = step["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("waiting for a slot of semaphore `migrate` (position 1)"),
        "{message}"
    );
    // The holder keeps its slot; the queued step's place is gone.
    assert_eq!(keys(&etcd, "/bootplan/limits/migrate/").unwrap(), held);

    let deadline = Sandbox::new();
    deadline.plan(&format!(
        "deadline: 1s\n{}",
        plan(&etcd.url, 1, "", "", &late_step)
    ));
    let out = deadline.run();
    assert_eq!(code(&out), 75, "{}", dump(&out));
    assert_eq!(deadline.status()["error"]["code"], "deadline.exceeded");
    assert_eq!(keys(&etcd, "/bootplan/limits/migrate/").unwrap(), held);
    assert!(!ran.exists(), "a step ran without its slot");

    // A signal to the holder: it gives the slot back before it exits.
    let pid = nix::unistd::Pid::from_raw(a.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = a.wait_output(LONG);
    assert_eq!(code(&out), 143, "{}", dump(&out));
    assert_eq!(
        keys(&etcd, "/bootplan/limits/").unwrap(),
        Vec::<String>::new(),
        "the slot was not revoked at SIGTERM"
    );
}

#[test]
fn failing_and_timed_out_steps_give_their_slot_back_at_once() {
    let Some(etcd) = start_etcd() else { return };
    let sb = Sandbox::new();
    // With one slot and a 10s lease, `last` would wait for an expiry if
    // either earlier step had kept its slot.
    sb.plan(&plan(
        &etcd.url,
        1,
        "",
        "",
        "  fails:\n    throttle: migrate\n    on_failure: continue\n    run: [\"/bin/sh\", \"-c\", \"exit 3\"]\n  hangs:\n    throttle: migrate\n    on_failure: continue\n    timeout: 500ms\n    run: [\"/bin/sleep\", \"30\"]\n  last:\n    throttle: migrate\n    needs: [fails, hangs]\n    run: [\"/bin/true\"]\n",
    ));
    let started = Instant::now();
    let out = start_run(&sb, &[]).wait_output(LONG);
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.status()["outcome"], "degraded");
    assert_eq!(sb.step("fails")["error"]["code"], "step.exit_nonzero");
    assert_eq!(sb.step("hangs")["error"]["code"], "step.timeout");
    assert_eq!(sb.step("last")["state"], "done");
    assert!(
        took < Duration::from_secs(8),
        "the run took {took:?}: a slot was left to expire"
    );
    assert_eq!(
        keys(&etcd, "/bootplan/limits/").unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn etcd_down_fails_with_throttle_unavailable_or_proceeds_when_written_so() {
    // Nothing listens there: connection refused on every try.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let sb = Sandbox::new();
    let ran = sb.path().join("ran");
    let step = format!(
        "  migrate-db:\n    throttle: migrate\n    run: [\"/bin/sh\", \"-c\", \"touch {}\"]\n",
        ran.display()
    );
    sb.plan(&plan(&endpoint, 1, ", attempts: 3", "", &step));
    let out = sb.run();
    assert_eq!(code(&out), 69, "{}", dump(&out));
    let status = sb.status();
    assert_eq!(status["error"]["code"], "throttle.unavailable", "{status}");
    let message = status["steps"]["migrate-db"]["error"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains(&endpoint), "no URL in: {message}");
    assert!(!ran.exists(), "the step ran without its slot");
    // Retried before giving up.
    let retries = log_lines(&out)
        .iter()
        .filter(|l| {
            l["level"] == "warn"
                && l["msg"]
                    .as_str()
                    .is_some_and(|m| m.contains("attempt") && m.contains("retrying"))
        })
        .count();
    assert_eq!(retries, 2, "{}", dump(&out));

    sb.plan(&plan(
        &endpoint,
        1,
        ", attempts: 2",
        ", on_unavailable: proceed",
        &step,
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(ran.exists());
    let throttle = &sb.step("migrate-db")["throttle"];
    assert_eq!(throttle["held"], false, "{throttle}");
    let warned = log_lines(&out).iter().any(|l| {
        l["level"] == "warn"
            && l["msg"].as_str().is_some_and(|m| {
                m.contains("without a slot of semaphore `migrate`") && m.contains("proceed")
            })
    });
    assert!(warned, "{}", dump(&out));
}

#[test]
fn the_start_splay_is_waited_once_and_never_when_everything_is_skipped() {
    let sb = Sandbox::new();
    sb.plan(
        "version: 1\nname: splay\nstart_splay: 400ms..700ms\nsteps:\n  a:\n    run: [\"/bin/touch\", \"made\"]\n  b:\n    run: [\"/bin/true\"]\n  c:\n    needs: [a]\n    frequency: always\n    creates: made\n    run: [\"/bin/true\"]\n",
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let status = sb.status();
    let splay = status["start_splay_ms"].as_u64().expect("start_splay_ms");
    assert!((400..=700).contains(&splay), "{splay}");
    let t0 = status["started_unix_ms"].as_u64().unwrap();
    for step in ["a", "b"] {
        let started = status["steps"][step]["started_unix_ms"].as_u64().unwrap();
        assert!(
            started >= t0 + splay,
            "{step} started before the splay ended"
        );
    }
    let said: Vec<Value> = log_lines(&out)
        .into_iter()
        .filter(|l| l["event"] == "start_splay")
        .collect();
    assert_eq!(said.len(), 1, "one splay for the two steps: {said:?}");
    assert_eq!(said[0]["duration_ms"].as_u64(), Some(splay));

    // A rerun with nothing to do: no splay.
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let status = sb.status();
    assert_eq!(status["steps"]["a"]["state"], "skipped");
    assert_eq!(status["steps"]["b"]["state"], "skipped");
    // `c` runs its checks on every run, and is skipped by them: no splay either.
    assert_eq!(
        status["steps"]["c"]["skip_reason"]
            .as_str()
            .map(|r| r.starts_with("creates:")),
        Some(true),
        "{status}"
    );
    assert!(status.get("start_splay_ms").is_none(), "{status}");
    assert!(!log_lines(&out).iter().any(|l| l["event"] == "start_splay"));
    let took = status["duration_ms"].as_u64().unwrap();
    assert!(took < 400, "the rerun took {took}ms");
}

#[test]
fn a_queued_step_moves_up_as_soon_as_a_slot_is_given_back() {
    let Some(etcd) = start_etcd() else { return };
    let shared = tempfile::tempdir().unwrap();
    let (release, holding) = (shared.path().join("release"), shared.path().join("holding"));
    // A poll every 30s (±50%): only the watch can move the queue sooner.
    let slow = ", poll_interval: 30s";
    let holder = Sandbox::new();
    holder.plan(
        &plan(&etcd.url, 1, slow, "", &holding_step(&release, &holding))
            .replace(", poll_interval: 100ms", ""),
    );
    let a = start_run(&holder, &[]);
    wait_until("the holder to take the slot", LONG, || holding.exists());
    let next = Sandbox::new();
    let started = shared.path().join("b-started");
    next.plan(
        &plan(
            &etcd.url,
            1,
            slow,
            "",
            &format!(
                "  after:\n    throttle: migrate\n    run: [\"/bin/sh\", \"-c\", \"touch {}\"]\n",
                started.display()
            ),
        )
        .replace(", poll_interval: 100ms", ""),
    );
    let b = start_run(&next, &[]);
    wait_until("the second run to queue", LONG, || {
        status_of(&next).is_some_and(|s| s["steps"]["after"]["state"] == "waiting")
    });
    let released = Instant::now();
    std::fs::write(&release, "").unwrap();
    wait_until("the second run to get the slot", LONG, || started.exists());
    let moved_after = released.elapsed();
    eprintln!("the queued step started {moved_after:?} after the holder's step ended");
    assert!(
        moved_after < Duration::from_secs(3),
        "the queue moved only after {moved_after:?}"
    );
    for run in [a, b] {
        let out = run.wait_output(LONG);
        assert_eq!(code(&out), 0, "{}", dump(&out));
    }
}
