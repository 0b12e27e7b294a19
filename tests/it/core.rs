//! Core engine behaviour, driven through the built binary.

use std::time::Duration;

use crate::harness::{Sandbox, code, dump, log_lines, pid_alive, wait_until};

fn ms(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {v}"))
}

#[test]
fn independent_steps_overlap_in_time() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: parallel
steps:
  a: { run: ["sleep", "0.4"] }
  b: { run: ["sleep", "0.4"] }
  c: { run: ["sleep", "0.4"] }
  after: { run: ["true"], needs: [a, b, c] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let steps: Vec<_> = ["a", "b", "c"].iter().map(|s| sb.step(s)).collect();
    let latest_start = steps
        .iter()
        .map(|s| ms(s, "started_unix_ms"))
        .max()
        .unwrap();
    let earliest_end = steps
        .iter()
        .map(|s| ms(s, "finished_unix_ms"))
        .min()
        .unwrap();
    assert!(
        latest_start < earliest_end,
        "a, b and c did not overlap: {steps:?}"
    );
    let after = sb.step("after");
    assert!(
        ms(&after, "started_unix_ms")
            >= steps
                .iter()
                .map(|s| ms(s, "finished_unix_ms"))
                .max()
                .unwrap(),
        "`after` started before its needs finished"
    );
}

#[test]
fn max_parallel_bounds_concurrency() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: serial
max_parallel: 1
steps:
  a: { run: ["sleep", "0.2"] }
  b: { run: ["sleep", "0.2"] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let (a, b) = (sb.step("a"), sb.step("b"));
    let (first, second) = if ms(&a, "started_unix_ms") <= ms(&b, "started_unix_ms") {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        ms(&second, "started_unix_ms") >= ms(&first, "finished_unix_ms"),
        "steps overlapped with max_parallel 1"
    );
}

#[test]
fn deadline_stops_sleeping_step_with_exit_75_and_no_survivor() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: slow
deadline: 1s
kill_grace: 500ms
steps:
  sleeper:
    shell: "echo $$ > sleeper.pid; sleep 30 & echo $! > child.pid; wait"
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 75, "{}", dump(&out));
    let status = sb.status();
    assert_eq!(status["outcome"], "deadline_exceeded");
    assert_eq!(status["error"]["code"], "deadline.exceeded");
    assert_eq!(status["steps"]["sleeper"]["state"], "cancelled");
    assert_eq!(
        status["steps"]["sleeper"]["error"]["code"],
        "deadline.exceeded"
    );
    for file in ["sleeper.pid", "child.pid"] {
        let pid: i32 = sb
            .read(file)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{file} not written"));
        assert!(
            !pid_alive(pid),
            "process {pid} from {file} survived the deadline"
        );
    }
}

/// A step's process goes when bootplan is SIGKILLed mid-step: its
/// parent-death signal is SIGKILL.
#[test]
fn a_step_process_dies_with_a_killed_bootplan() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: orphan
steps:
  sleeper:
    run: ["sh", "-c", "trap '' TERM; echo $$ > sleeper.pid.tmp; mv sleeper.pid.tmp sleeper.pid; while :; do sleep 1; done"]
"#,
    );
    let mut bootplan = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = sb.path().join("sleeper.pid");
    wait_until("the step to start", Duration::from_secs(10), || {
        pid_file.exists()
    });
    let pid: i32 = sb.read("sleeper.pid").trim().parse().unwrap();
    assert!(pid_alive(pid), "the step is running");
    bootplan.kill().unwrap();
    bootplan.wait().unwrap();
    wait_until(
        &format!("step process {pid}, which ignores SIGTERM, to die with bootplan"),
        Duration::from_secs(5),
        || !pid_alive(pid),
    );
}

#[test]
fn retries_are_counted_and_logged() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: flaky
steps:
  flaky:
    shell: "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; [ $n -ge 3 ]"
    retry: { attempts: 5, backoff: 10ms..50ms }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let step = sb.step("flaky");
    assert_eq!(step["attempts"], 3);
    assert_eq!(step["attempt_log"].as_array().unwrap().len(), 3);
    assert_eq!(step["attempt_log"][0]["error"]["code"], "step.exit_nonzero");
    let failures = log_lines(&out)
        .into_iter()
        .filter(|l| l["event"] == "attempt_failed")
        .count();
    assert_eq!(failures, 2);
}

#[test]
fn exhausted_retries_fail_the_run_with_exit_1() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: failing
steps:
  bad: { run: ["false"], retry: { attempts: 2, backoff: 1ms..2ms } }
  later: { run: ["true"], needs: [bad] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let status = sb.status();
    assert_eq!(status["outcome"], "failed");
    assert_eq!(status["failed_step"], "bad");
    assert_eq!(status["error"]["code"], "step.exit_nonzero");
    assert_eq!(status["steps"]["bad"]["attempts"], 2);
    assert_eq!(status["steps"]["later"]["state"], "not_run");
}

#[test]
fn rerun_skips_done_steps_with_reason_and_changed_step_reruns() {
    let sb = Sandbox::new();
    let plan = |msg: &str| {
        format!(
            r#"
version: 1
name: rerun
steps:
  one: {{ shell: "echo one >> ran.log" }}
  two: {{ shell: "echo {msg} >> ran.log", needs: [one] }}
"#
        )
    };
    sb.plan(&plan("two"));
    assert_eq!(code(&sb.run()), 0);
    assert_eq!(sb.read("ran.log"), "one\ntwo\n");

    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("ran.log"), "one\ntwo\n", "a done step ran again");
    for step in ["one", "two"] {
        let s = sb.step(step);
        assert_eq!(s["state"], "skipped");
        assert!(
            s["skip_reason"].as_str().unwrap().contains("unchanged"),
            "{s}"
        );
    }

    sb.plan(&plan("two-changed"));
    assert_eq!(code(&sb.run()), 0);
    assert_eq!(
        sb.read("ran.log"),
        "one\ntwo\ntwo-changed\n",
        "only the changed step reruns"
    );
    assert_eq!(sb.step("one")["state"], "skipped");
    assert_eq!(sb.step("two")["state"], "done");
}

#[test]
fn reset_forgets_records() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: r\nsteps:\n  one: { shell: \"echo x >> ran.log\" }\n");
    assert_eq!(code(&sb.run()), 0);
    let out = sb.cmd().args(["reset", "one"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(code(&sb.run()), 0);
    assert_eq!(sb.read("ran.log"), "x\nx\n");
}

#[test]
fn creates_and_unless_skip_steps() {
    let sb = Sandbox::new();
    sb.write("exists.txt", "");
    sb.plan(
        r#"
version: 1
name: conditions
steps:
  has-file: { shell: "echo ran > a.out", creates: exists.txt }
  no-file: { shell: "echo ran > b.out", creates: missing.txt }
  unless-true: { shell: "echo ran > c.out", unless: ["true"] }
  unless-false: { shell: "echo ran > d.out", unless: ["false"] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.step("has-file")["state"], "skipped");
    assert!(
        sb.step("has-file")["skip_reason"]
            .as_str()
            .unwrap()
            .starts_with("creates:")
    );
    assert_eq!(sb.step("unless-true")["state"], "skipped");
    assert!(
        sb.step("unless-true")["skip_reason"]
            .as_str()
            .unwrap()
            .starts_with("unless:")
    );
    assert_eq!(sb.read("a.out"), "");
    assert_eq!(sb.read("b.out"), "ran\n");
    assert_eq!(sb.read("c.out"), "");
    assert_eq!(sb.read("d.out"), "ran\n");
}

#[test]
fn undo_runs_in_reverse_order_on_failure() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: rollback
rollback: true
steps:
  first: { run: ["true"], undo: ["sh", "-c", "echo first >> undo.log"] }
  second: { run: ["true"], undo: ["sh", "-c", "echo second >> undo.log"], needs: [first] }
  third: { run: ["true"], undo: ["sh", "-c", "echo third >> undo.log"], needs: [second] }
  boom: { run: ["false"], needs: [third] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    assert_eq!(sb.read("undo.log"), "third\nsecond\nfirst\n");
    assert_eq!(sb.step("first")["undo"]["ok"], true);
}

#[test]
fn on_failure_continue_degrades_but_reaches_ready() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: degraded
steps:
  optional: { run: ["false"], on_failure: continue }
  main: { shell: "echo ok > main.out", needs: [optional] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.status()["outcome"], "degraded");
    assert_eq!(sb.step("optional")["state"], "failed");
    assert_eq!(sb.read("main.out"), "ok\n");
}

#[test]
fn step_timeout_kills_the_attempt() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: timeout
kill_grace: 200ms
steps:
  slow: { run: ["sleep", "30"], timeout: 300ms }
"#,
    );
    let started = std::time::Instant::now();
    let out = sb.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    assert_eq!(sb.step("slow")["error"]["code"], "step.timeout");
    // Bounded: far below the 30 s the command wanted (a bound, not a speed target).
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn file_and_template_steps_write_with_mode() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.write("t.j2", "name={{ vars.name }} host={{ facts.hostname }}\n");
    sb.plan(
        r#"
version: 1
name: files
vars: { name: demo }
steps:
  f: { file: { path: out/f.txt, content: "hello\n", mode: "0600" } }
  t: { template: { src: t.j2, dest: out/t.conf, mode: "0640" } }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out/f.txt"), "hello\n");
    assert!(sb.read("out/t.conf").starts_with("name=demo host="));
    let mode = |p: &str| {
        std::fs::metadata(sb.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("out/f.txt"), 0o600);
    assert_eq!(mode("out/t.conf"), 0o640);
}

#[test]
fn wait_step_reports_still_waiting_and_times_out() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: waits
steps:
  never: { wait: { file: never-there, interval: 200ms }, timeout: 6s }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    assert_eq!(sb.step("never")["error"]["code"], "step.wait_timeout");
    let waiting: Vec<_> = log_lines(&out)
        .into_iter()
        .filter(|l| l["event"] == "waiting")
        .collect();
    assert!(
        !waiting.is_empty(),
        "no 'still waiting' line: {}",
        dump(&out)
    );
    assert!(
        waiting[0]["msg"]
            .as_str()
            .unwrap()
            .contains("still waiting for file"),
        "{:?}",
        waiting[0]
    );
}

#[test]
fn wait_step_succeeds_when_condition_appears() {
    let sb = Sandbox::new();
    let port = crate::harness::free_port();
    sb.plan(&format!(
        r#"
version: 1
name: waits
steps:
  server:
    service: ["python3", "-c", "import socket,time; time.sleep(0.3); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"]
    ready: {{ tcp: "127.0.0.1:{port}", interval: 50ms }}
    timeout: 10s
  port-open: {{ wait: {{ tcp: "127.0.0.1:{port}", interval: 50ms }}, timeout: 10s }}
"#
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.step("port-open")["state"], "done");
}

#[test]
fn exec_replaces_bootplan_after_final_status() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: exec
steps:
  prep: { shell: "echo prepared > prep.out" }
  app: { exec: ["sh", "-c", "echo exec-pid=$$; cat run/status.json > seen-status.json; exit 7"], needs: [prep] }
"#,
    );
    let child = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bootplan_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        code(&out),
        7,
        "the app's exit code is passed on: {}",
        dump(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("exec-pid={bootplan_pid}")),
        "the app did not replace bootplan: {stdout}"
    );
    let seen: serde_json::Value = serde_json::from_str(&sb.read("seen-status.json")).unwrap();
    assert_eq!(seen["outcome"], "ready", "status was not final before exec");
}

#[test]
fn invalid_plan_exits_65_and_runs_nothing() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: invalid
steps:
  ok: { shell: "echo ran > ran.out" }
  bad: { run: ["true"], needs: [missing] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(
        !sb.path().join("ran.out").exists(),
        "a step ran before validation finished"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plan.yaml:6:") && stderr.contains("unknown step `missing`"),
        "{stderr}"
    );
    assert_eq!(sb.status()["outcome"], "invalid");
}

#[test]
fn dry_run_has_no_side_effects() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: dry\nsteps:\n  one: { shell: \"echo x > ran.out\" }\n");
    let out = sb
        .cmd()
        .args(["plan", "plan.yaml", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let decisions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decisions[0]["action"], "run");
    assert!(!sb.path().join("ran.out").exists());
    assert!(!sb.run_dir().join("status.json").exists());
    assert_eq!(code(&sb.run()), 0);
    let out = sb
        .cmd()
        .args(["plan", "plan.yaml", "--json"])
        .output()
        .unwrap();
    let decisions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(decisions[0]["action"], "skip");
}

#[test]
fn status_command_reports_the_last_run() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: st\nsteps:\n  one: { run: [\"false\"] }\n");
    assert_eq!(code(&sb.run()), 1);
    let out = sb.cmd().args(["status", "--json"]).output().unwrap();
    assert_eq!(
        code(&out),
        1,
        "status exits with the run's code: {}",
        dump(&out)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["steps"]["one"]["error"]["code"], "step.exit_nonzero");
}

#[test]
fn status_wait_gives_up_at_its_timeout() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.run_dir()).unwrap();
    std::fs::write(sb.run_dir().join("status.json"), r#"{"schema_version":1,"bootstrap_id":"x","plan":{"name":"p","path":"p","digest":""},"pid":1,"started_at":"","started_unix_ms":0,"outcome":"running","steps":{}}"#).unwrap();
    let out = sb
        .cmd()
        .args(["status", "--wait", "--timeout", "300ms"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 75, "{}", dump(&out));
}

#[test]
fn json_logs_carry_the_contract_fields() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: logs\nsteps:\n  one: { run: [\"echo\", \"hi\"] }\n");
    let out = sb.run();
    let lines = log_lines(&out);
    assert!(!lines.is_empty());
    let bootstrap = sb.status()["bootstrap_id"].clone();
    for line in &lines {
        assert!(
            line["ts"].is_string() && line["level"].is_string() && line["event"].is_string(),
            "{line}"
        );
        assert_eq!(line["bootstrap_id"], bootstrap, "{line}");
    }
    let output = lines
        .iter()
        .find(|l| l["event"] == "output")
        .expect("child output logged");
    assert_eq!(output["step"], "one");
    assert_eq!(output["msg"], "hi");
    let finished = lines
        .iter()
        .find(|l| l["event"] == "step_finished")
        .unwrap();
    assert!(finished["duration_ms"].is_u64());
}

#[test]
fn sigterm_stops_the_run_with_143_and_kills_children() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: term
kill_grace: 300ms
steps:
  long: { shell: "echo $$ > long.pid; sleep 30" }
  after: { run: ["true"], needs: [long] }
"#,
    );
    let mut child = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::harness::wait_until("the step to start", Duration::from_secs(10), || {
        !sb.read("long.pid").trim().is_empty()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let doc = sb.status();
    assert_eq!(doc["outcome"], "interrupted");
    assert_eq!(doc["error"]["code"], "run.interrupted");
    assert_eq!(doc["steps"]["after"]["state"], "not_run");
    let pid: i32 = sb.read("long.pid").trim().parse().unwrap();
    crate::harness::wait_until("the step's process to die", Duration::from_secs(5), || {
        !pid_alive(pid)
    });
}

#[test]
fn a_second_concurrent_run_is_refused_with_73() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: lock\nsteps:\n  hold: { shell: \"touch started; sleep 30\" }\n");
    let mut first = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::harness::wait_until("the first run to start", Duration::from_secs(10), || {
        sb.path().join("started").exists()
    });
    let second = sb.run();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(code(&second), 73, "{}", dump(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another bootplan is running"));
}

#[test]
fn quickstart_runs_then_skips_on_rerun() {
    let sb = Sandbox::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::fs::copy(
        examples.join("quickstart.yaml"),
        sb.path().join("plan.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(sb.path().join("quickstart")).unwrap();
    for f in ["page.html.j2", "api-token.txt"] {
        std::fs::copy(
            examples.join("quickstart").join(f),
            sb.path().join("quickstart").join(f),
        )
        .unwrap();
    }
    // The plan names its own state and run dirs; let it use them.
    let run = || {
        sb.cmd()
            .env_remove("BOOTPLAN_STATE_DIR")
            .env_remove("BOOTPLAN_RUN_DIR")
            .args(["run", "plan.yaml"])
            .output()
            .unwrap()
    };
    let first = run();
    assert_eq!(code(&first), 0, "{}", dump(&first));
    let status = |sb: &Sandbox| -> serde_json::Value {
        serde_json::from_str(&sb.read(".bootplan/run/status.json")).unwrap()
    };
    let doc = status(&sb);
    assert_eq!(doc["outcome"], "ready");
    assert_eq!(
        doc["steps"]["flaky-register"]["attempts"], 2,
        "the flaky step should succeed on its retry"
    );
    let token = sb.read("quickstart/api-token.txt").trim().to_string();
    assert!(
        !String::from_utf8_lossy(&first.stdout).contains(&token),
        "the secret leaked into the logs"
    );
    assert_eq!(
        sb.read(".bootplan/secrets/app.env"),
        format!("token={token}\n")
    );

    let second = run();
    assert_eq!(code(&second), 0, "{}", dump(&second));
    let doc = status(&sb);
    for step in ["settings", "page", "credentials", "flaky-register"] {
        assert_eq!(
            doc["steps"][step]["state"], "skipped",
            "{step} should be skipped on rerun"
        );
    }
}

#[test]
fn frequencies_key_on_boot_id_and_instance() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: freq
steps:
  boot: { shell: "echo boot >> ran.log", frequency: per-boot }
  instance: { shell: "echo instance >> ran.log", frequency: per-instance }
  once: { shell: "echo once >> ran.log", frequency: once }
  always: { shell: "echo always >> ran.log", frequency: always }
"#,
    );
    let run = |boot: &str, machine: &str| {
        sb.write("boot_id", boot);
        sb.write("machine_id", machine);
        let out = sb
            .cmd()
            .env("BOOTPLAN_BOOT_ID_FILE", sb.path().join("boot_id"))
            .env("BOOTPLAN_MACHINE_ID_FILE", sb.path().join("machine_id"))
            .args(["run", "plan.yaml"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", dump(&out));
        let ran: Vec<String> = ["boot", "instance", "once", "always"]
            .iter()
            .filter(|s| sb.step(s)["state"] == "done")
            .map(|s| s.to_string())
            .collect();
        ran
    };
    assert_eq!(
        run("boot-1", "machine-1"),
        ["boot", "instance", "once", "always"]
    );
    assert_eq!(run("boot-1", "machine-1"), ["always"], "nothing changed");
    assert_eq!(
        run("boot-2", "machine-1"),
        ["boot", "always"],
        "a reboot reruns per-boot only"
    );
    assert_eq!(
        run("boot-2", "machine-2"),
        ["instance", "always"],
        "a new machine id (a clone) reruns per-instance"
    );
}

#[test]
fn file_owner_is_set_when_root() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            !crate::harness::under_ci(),
            "CI runs as root; this test must not skip there"
        );
        eprintln!("skipping: setting an owner needs root");
        return;
    }
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: owner
steps:
  owned: { file: { path: owned.txt, content: "x", mode: "0640", owner: "nobody" } }
  bad-user: { file: { path: bad.txt, content: "x", owner: "no-such-user-here" }, needs: [owned] }
"#,
    );
    let out = sb.run();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        std::fs::metadata(sb.path().join("owned.txt"))
            .unwrap()
            .uid(),
        nobody.uid.as_raw()
    );
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let err = &sb.step("bad-user")["error"];
    assert_eq!(err["code"], "file.write_failed");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("no user named `no-such-user-here`"),
        "{err}"
    );
    assert!(
        !sb.path().join("bad.txt").exists(),
        "a file with a bad owner was written anyway"
    );
}

#[test]
fn a_command_that_cannot_start_fails_its_step_with_the_reason() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: cannot-start
steps:
  missing: { run: ["bootplan-no-such-program"], on_failure: continue }
  bad-dir: { run: ["true"], cwd: no-such-dir, on_failure: continue }
  fine: { run: ["true"], needs: [missing, bad-dir] }
"#,
    );
    let out = sb.run();
    // Both failures are `continue`: the run is degraded, and `fine` still ran.
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.status()["outcome"], "degraded", "{}", dump(&out));
    assert_eq!(sb.step("fine")["state"], "done");
    let missing = sb.step("missing");
    assert_eq!(missing["state"], "failed");
    assert_eq!(missing["error"]["code"], "step.spawn_failed", "{missing}");
    let message = missing["error"]["message"].as_str().unwrap();
    assert!(message.contains("bootplan-no-such-program"), "{message}");
    let bad_dir = sb.step("bad-dir");
    assert_eq!(bad_dir["error"]["code"], "step.spawn_failed", "{bad_dir}");
    let message = bad_dir["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no-such-dir"),
        "names the directory: {message}"
    );
}

/// A step's output is read lazily (not before the command has run a
/// moment), so show that this loses nothing: a running command's first line
/// is logged while it still runs, and a command that fills its pipe before
/// any read still finishes with every line logged.
#[test]
fn output_is_streamed_while_the_command_runs_and_a_full_pipe_does_not_block() {
    use std::io::BufRead;
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: output
steps:
  chatty: { shell: "seq 1 30000; echo last" }
  live: { shell: "echo ready; while [ ! -e go ]; do sleep 0.01; done; echo done", needs: [chatty] }
"#,
    );
    // Killed if an assertion below fails first.
    let mut child = crate::harness::start_run(&sb, &[]);
    let (lines, seen) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = lines.send(value);
            }
        }
    });
    // `live` waits for `go`, which is only written once its first line is
    // logged: a run that logged output only after the command exited would
    // never get here.
    let mut chatty_lines = 0;
    let ready = loop {
        let Ok(line) = seen.recv_timeout(Duration::from_secs(20)) else {
            break false;
        };
        if line["event"] != "output" {
            continue;
        }
        match line["step"].as_str() {
            Some("chatty") => chatty_lines += 1,
            Some("live") if line["msg"] == "ready" => break true,
            _ => {}
        }
    };
    assert!(
        ready,
        "`live` printed `ready` but it was not logged while it ran"
    );
    // 30000 numbers (more than a pipe holds) and `last`.
    assert_eq!(chatty_lines, 30001);
    sb.write("go", "");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(status.code(), Some(0));
    let rest: Vec<_> = seen.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l["event"] == "output" && l["step"] == "live" && l["msg"] == "done"),
        "the last line of `live` is missing: {rest:?}"
    );
}

#[test]
fn the_history_keeps_the_last_runs_and_compares_the_newest() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: hist\nhistory: 3\nsteps:\n  a: { run: [\"true\"] }\n");
    for _ in 0..5 {
        assert_eq!(code(&sb.run()), 0);
    }
    let kept = std::fs::read_dir(sb.state_dir().join("history"))
        .unwrap()
        .count();
    assert_eq!(kept, 3, "the history is not bounded");
    let out = sb
        .cmd()
        .args(["status", "--history", "--plan", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains(" ready ")).count(),
        3,
        "{text}"
    );
    assert!(text.contains("median of the 2 before"), "{text}");
    // An older run is analyzed like the current one.
    let out = sb
        .cmd()
        .args(["analyze", "--run", "3", "--plan", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('a'),
        "{}",
        dump(&out)
    );
    let out = sb
        .cmd()
        .args(["analyze", "--run", "4", "--plan", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", dump(&out));
}
