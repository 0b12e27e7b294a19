//! Attacks at the edges, each written as the attack: values others control
//! (env, vars, facts, user data) trying to run commands or redirect writes,
//! symlinks planted by an unprivileged user, state directories anyone can
//! write, secrets leaking through files and output. Each test asserts that
//! the attack failed and that the error names the cause.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::Value;

use crate::harness::{Sandbox, code, dump, log_lines};

/// An unprivileged uid that owns the "user's" directories in these tests.
const USER_UID: u32 = 4242;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory owned by the unprivileged user, as a home directory is.
fn user_dir(sb: &Sandbox, name: &str) -> std::path::PathBuf {
    let dir = sb.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(USER_UID), Some(USER_UID)).unwrap();
    chmod(&dir, 0o755);
    dir
}

fn output_lines(out: &std::process::Output) -> Vec<String> {
    log_lines(out)
        .into_iter()
        .filter(|l| l["event"] == "output")
        .filter_map(|l| l["msg"].as_str().map(str::to_string))
        .collect()
}

fn error_of(sb: &Sandbox, step: &str) -> Value {
    sb.step(step)["error"].clone()
}

#[test]
fn an_environment_variable_cannot_inject_a_command_into_a_shell_step() {
    let sb = Sandbox::new();
    sb.plan(
        "version: 1\nname: inject\nsteps:\n  greet: { shell: \"echo hello {{ env.APPNAME }}\" }\n",
    );
    let out = sb
        .cmd()
        .env("APPNAME", "x; touch INJECTED #")
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        !sb.path().join("INJECTED").exists(),
        "the value ran as a command"
    );
    assert_eq!(output_lines(&out), ["hello x; touch INJECTED #"]);
}

#[test]
fn a_plan_variable_cannot_inject_a_command_either_and_shquote_quotes_argv() {
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: inject\n",
        "vars: { name: \"$(touch INJECTED1)`touch INJECTED2`'; touch INJECTED3; '\" }\n",
        "steps:\n",
        "  script: { shell: \"printf '%s\\\\n' {{ vars.name }}\" }\n",
        "  argv: { run: [\"/bin/sh\", \"-c\", \"printf '%s\\\\n' {{ vars.name | shquote }}\"], needs: [script] }\n",
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    for n in 1..=3 {
        assert!(
            !sb.path().join(format!("INJECTED{n}")).exists(),
            "INJECTED{n}: {}",
            dump(&out)
        );
    }
    let value = "$(touch INJECTED1)`touch INJECTED2`'; touch INJECTED3; '";
    assert_eq!(output_lines(&out), [value, value]);
}

#[test]
fn check_refuses_a_value_inside_quotes_and_warns_on_shell_unsafe() {
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: quoted\nsteps:\n",
        "  a: { shell: \"echo \\\"hello {{ env.APPNAME }}\\\"\" }\n",
        "  b: { shell: \"cat <<EOF\\n{{ vars.x }}\\nEOF\" }\n",
        "vars: { x: 1 }\n",
    ));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("steps.a.shell: a value is interpolated inside double quotes on line 1"),
        "{err}"
    );
    assert!(
        err.contains("steps.b.shell: a value is interpolated inside a here-document on line 2"),
        "{err}"
    );
    assert!(
        err.contains("plan.yaml:4:6: steps.a.shell"),
        "no position: {err}"
    );

    sb.plan("version: 1\nname: unsafe\nsteps:\n  a: { shell: \"echo {{ env.HOME | shell_unsafe }}\" }\n");
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(
        code(&out),
        0,
        "a warning must not fail check: {}",
        dump(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:")
            && err.contains("`shell_unsafe` pastes a value that others control"),
        "{err}"
    );
}

#[test]
fn a_dot_dot_from_a_value_cannot_climb_out_of_the_target_directory() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path().join("srv")).unwrap();
    sb.plan(concat!(
        "version: 1\nname: climb\nsteps:\n",
        "  conf: { file: { path: \"srv/{{ env.SITE }}/site.conf\", content: \"owned\\n\" } }\n",
    ));
    let out = sb
        .cmd()
        .env("SITE", "../../escaped")
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    assert!(!sb.path().parent().unwrap().join("escaped").exists());
    let error = error_of(&sb, "conf");
    assert_eq!(error["code"], "path.unsafe", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("file.path")
            && message.contains("`..` that came from an interpolated value"),
        "{message}"
    );
}

#[test]
fn a_symlink_planted_in_a_users_directory_does_not_redirect_root() {
    let sb = Sandbox::new();
    let outside = sb.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let home = user_dir(&sb, "home");
    // The user points `.ssh` at a directory they could never write.
    std::os::unix::fs::symlink(&outside, home.join(".ssh")).unwrap();
    // And the target of a template at a file of root's.
    std::fs::write(outside.join("shadow"), "root's\n").unwrap();
    std::os::unix::fs::symlink(outside.join("shadow"), home.join("motd")).unwrap();
    sb.write("motd.j2", "welcome\n");
    sb.write("keys", "s3cret-key-material\n");
    sb.plan(&format!(
        concat!(
            "version: 1\nname: links\nmax_parallel: 1\n",
            "secrets:\n  key: {{ file: {{ path: keys }}, to_file: {{ path: \"{home}/.ssh/id\" }} }}\n",
            "steps:\n",
            "  keys: {{ file: {{ path: \"{home}/.ssh/authorized_keys\", content: \"ssh-ed25519 AAAA\\n\" }}, on_failure: continue }}\n",
            "  motd: {{ template: {{ src: motd.j2, dest: \"{home}/motd\" }}, needs: [keys] }}\n",
            "  secret: {{ run: [\"true\"], secrets: [key], needs: [motd] }}\n",
        ),
        home = home.display()
    ));
    let out = sb.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    // Nothing was written through either link.
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "{}",
        dump(&out)
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("shadow")).unwrap(),
        "root's\n"
    );
    let keys = error_of(&sb, "keys");
    assert_eq!(keys["code"], "path.unsafe", "{keys}");
    let message = keys["message"].as_str().unwrap();
    assert!(
        message.contains("home/.ssh")
            && message.contains("can be written by users other than root"),
        "{message}"
    );
    // The link at the template's target was replaced, not followed.
    assert_eq!(sb.step("motd")["state"], "done", "{}", dump(&out));
    assert!(
        !std::fs::symlink_metadata(home.join("motd"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(home.join("motd")).unwrap(),
        "welcome\n"
    );
    // The secret file's directory is the link: refused, named.
    let secret = error_of(&sb, "secret");
    assert!(
        secret["message"].as_str().unwrap().contains("home/.ssh"),
        "{secret}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret-key-material"));
}

#[test]
fn a_world_writable_state_directory_is_refused_and_nothing_runs() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.state_dir()).unwrap();
    chmod(&sb.state_dir(), 0o777);
    sb.plan("version: 1\nname: untrusted\nsteps:\n  a: { shell: \"touch RAN\" }\n");
    let out = sb.run();
    assert_eq!(code(&out), 73, "{}", dump(&out));
    assert!(!sb.path().join("RAN").exists());
    assert!(
        !sb.run_dir().join("status.json").exists(),
        "wrote a status before refusing"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[state.untrusted]"), "{err}");
    assert!(err.contains(&sb.state_dir().display().to_string()), "{err}");
    assert!(err.contains("mode 0777") && err.contains("chmod"), "{err}");

    // A run directory owned by another user is refused the same way.
    let sb = Sandbox::new();
    user_dir(&sb, "run");
    sb.plan("version: 1\nname: untrusted\nsteps:\n  a: { shell: \"touch RAN\" }\n");
    let out = sb.run();
    assert_eq!(code(&out), 73, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("owner uid {USER_UID}")),
        "{}",
        dump(&out)
    );
    assert!(!sb.path().join("RAN").exists());
}

#[test]
fn a_symlinked_lock_or_ready_file_does_not_redirect_bootplan() {
    let sb = Sandbox::new();
    let victim = sb.path().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    std::fs::create_dir(sb.state_dir()).unwrap();
    chmod(&sb.state_dir(), 0o700);
    std::os::unix::fs::symlink(&victim, sb.state_dir().join("lock")).unwrap();
    sb.plan("version: 1\nname: links\nsteps:\n  a: { shell: \"touch RAN\" }\n");
    let out = sb.run();
    assert_eq!(code(&out), 73, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[state.untrusted]") && err.contains("lock"),
        "{err}"
    );
    assert!(!sb.path().join("RAN").exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");

    std::fs::remove_file(sb.state_dir().join("lock")).unwrap();
    std::fs::create_dir_all(sb.run_dir()).unwrap();
    std::os::unix::fs::symlink(&victim, sb.run_dir().join("ready")).unwrap();
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert!(
        !std::fs::symlink_metadata(sb.run_dir().join("ready"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn a_template_that_renders_a_secret_is_private_unless_the_plan_says_otherwise() {
    let sb = Sandbox::new();
    sb.write("db", "hunter2-password\n");
    sb.write("app.conf.j2", "password = {{ secrets.db }}\n");
    sb.plan(concat!(
        "version: 1\nname: modes\n",
        "secrets:\n  db: { file: { path: db } }\n",
        "steps:\n  conf: { template: { src: app.conf.j2, dest: out/app.conf } }\n",
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let meta = std::fs::metadata(sb.path().join("out/app.conf")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);

    sb.plan(concat!(
        "version: 1\nname: modes\n",
        "secrets:\n  db: { file: { path: db } }\n",
        "steps:\n  conf: { template: { src: app.conf.j2, dest: out/app.conf, mode: \"0644\" } }\n",
    ));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("steps.conf.template.mode: mode 0644 makes a file that holds a secret readable by every user"), "{err}");
}

#[test]
fn user_data_is_masked_as_a_whole_not_line_by_line() {
    let sb = Sandbox::new();
    let seed = sb.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(
        seed.join("meta-data"),
        "instance-id: i-seed\nlocal-hostname: node\n",
    )
    .unwrap();
    std::fs::write(
        seed.join("user-data"),
        "#cloud-config\npackages:\n  - nginx\nchpasswd:\n  password: wh0le-user-data-pw\n",
    )
    .unwrap();
    sb.plan(concat!(
        "version: 1\nname: ud\nfacts: { provider: nocloud }\n",
        "steps:\n  a: { shell: \"echo '#cloud-config'; echo 'packages:'; echo wh0le-user-data-pw\" }\n",
    ));
    let out = sb
        .cmd()
        .env("BOOTPLAN_SEED_DIRS", &seed)
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        output_lines(&out),
        ["#cloud-config", "packages:", "[REDACTED]"]
    );
}

#[test]
fn a_credential_written_as_a_list_is_refused_without_echoing_it() {
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: creds\n",
        "secrets:\n  s: { vault: { path: secret/x } }\n",
        "backends:\n  vault:\n    address: http://127.0.0.1:1\n    auth: { token: [null, \"hvs.LITERAL-TOKEN\"] }\n",
        "steps:\n  a: { run: [\"true\"], secrets: [s] }\n",
    ));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("LITERAL-TOKEN"), "{all}");
    assert!(all.contains("a credential is a reference"), "{all}");
}

#[test]
fn secrets_in_a_command_line_are_warned_about() {
    let sb = Sandbox::new();
    sb.write("tok", "t0ken-value\n");
    sb.plan(concat!(
        "version: 1\nname: argv\nsecrets:\n  tok: { file: { path: tok } }\n",
        "steps:\n  a: { run: [\"echo\", \"{{ secrets.tok }}\"] }\n",
    ));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("/proc/PID/cmdline"),
        "{err}"
    );
}

#[test]
fn an_env_secret_cannot_reach_a_shell_script_through_env() {
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: envsecret\nsecrets:\n  tok: { env: { name: API_TOKEN } }\n",
        "steps:\n  a: { shell: \"curl -H {{ env.API_TOKEN }} http://127.0.0.1:1/\" }\n",
    ));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("secrets may not be interpolated into a shell string"),
        "{}",
        dump(&out)
    );
}

#[test]
fn credentials_over_plain_http_to_another_host_are_refused_unless_the_plan_accepts_it() {
    let sb = Sandbox::new();
    let plan = |extra: &str| {
        format!(
            concat!(
                "version: 1\nname: http\nsecrets:\n  s: {{ vault: {{ path: secret/x }} }}\n",
                "backends:\n  vault: {{ address: \"http://10.20.30.40:8200\", auth: {{ token: {{ env: VAULT_TOKEN }} }}{} }}\n",
                "steps:\n  a: {{ run: [\"true\"], secrets: [s] }}\n",
            ),
            extra
        )
    };
    sb.plan(&plan(""));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backends.vault.address: refusing to send the Vault token and login credentials over plain http to 10.20.30.40"), "{err}");
    sb.plan(&plan(", insecure_http: true"));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
}

#[test]
fn a_secret_printed_in_pieces_or_across_the_line_cut_is_still_masked() {
    let sb = Sandbox::new();
    sb.write("secret", "canary-0123456789abcdef\n");
    sb.write("lines", "ab12\ncd34\nef56\n");
    sb.plan(concat!(
        "version: 1\nname: pieces\nmax_parallel: 1\n",
        "secrets:\n  s: { file: { path: secret } }\n  m: { file: { path: lines } }\n",
        "steps:\n",
        // Two writes, with the reader woken between them.
        "  split: { shell: \"printf canary-0123; sleep 0.3; printf '456789abcdef\\\\n'\", secrets: [s] }\n",
        // The secret straddles the 16 KiB line cut.
        "  long: { shell: \"head -c 16380 /dev/zero | tr '\\\\0' x; echo canary-0123456789abcdef\", secrets: [s], needs: [split] }\n",
        // A multi-line secret with short lines, printed line by line.
        "  multi: { shell: \"echo ab12; echo cd34; echo ef56\", secrets: [m], needs: [long] }\n",
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let all = String::from_utf8_lossy(&out.stdout);
    for fragment in ["canary", "0123", "abcdef", "ab12", "cd34", "ef56"] {
        assert!(!all.contains(fragment), "`{fragment}` leaked:\n{all}");
    }
    let lines = output_lines(&out);
    assert_eq!(lines[0], "[REDACTED]", "{lines:?}");
    assert_eq!(
        lines[1..3].concat(),
        format!("{}[REDACTED]", "x".repeat(16380))
    );
    // Masked as a whole or line by line, depending on how the reads fall.
    assert!(
        !lines[3..].is_empty() && lines[3..].iter().all(|l| l == "[REDACTED]"),
        "{lines:?}"
    );
}

#[test]
fn bootplans_credentials_are_not_inherited_by_children_unless_a_step_asks() {
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: inherit\nmax_parallel: 1\n",
        "secrets:\n  tok: { env: { name: API_TOKEN } }\n",
        "steps:\n",
        "  plain: { shell: \"echo token=${API_TOKEN:-unset} other=$OTHER\" }\n",
        "  asks: { run: [\"sh\", \"-c\", \"test \\\"$API_TOKEN\\\" = env-s3cret-token && echo passed on\"], env: { API_TOKEN: \"{{ secrets.tok }}\" }, needs: [plain] }\n",
    ));
    let out = sb
        .cmd()
        .env("API_TOKEN", "env-s3cret-token")
        .env("OTHER", "kept")
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(output_lines(&out), ["token=unset other=kept", "passed on"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("env-s3cret-token"));
}

#[test]
fn a_notification_from_a_foreign_process_does_not_make_a_service_ready() {
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: notify\n",
        "steps:\n  svc: { service: [\"sh\", \"-c\", \"touch up; exec sleep 30\"], ready: { notify: true }, timeout: 3s }\n",
    ));
    let child = crate::harness::start_run(&sb, &[]);
    let socket = sb.run_dir().join("notify/svc.sock");
    crate::harness::wait_until(
        "the service to start",
        std::time::Duration::from_secs(10),
        || sb.path().join("up").exists() && socket.exists(),
    );
    // The test is not the service: its READY=1 must be ignored.
    let foreign = std::os::unix::net::UnixDatagram::unbound().unwrap();
    foreign.send_to(b"READY=1", &socket).unwrap();
    let out = child.wait_output(std::time::Duration::from_secs(30));
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let svc = sb.step("svc");
    assert_eq!(svc["state"], "failed", "{svc}");
    assert_eq!(svc["error"]["code"], "step.wait_timeout", "{svc}");
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        logs.contains("ignored a notification") && logs.contains("not the service's process"),
        "{logs}"
    );
}

#[test]
fn a_secret_too_short_to_mask_is_warned_about_before_and_during_the_run() {
    let sb = Sandbox::new();
    sb.write("pin", "123\n");
    sb.plan(concat!(
        "version: 1\nname: short\nsecrets:\n  pin: { file: { path: pin } }\n",
        "steps:\n  a: { run: [\"true\"], secrets: [pin] }\n",
    ));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("secrets.pin") && err.contains("cannot be masked"),
        "{err}"
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let warned = log_lines(&out).into_iter().any(|l| {
        l["level"] == "warn"
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.contains("secret `pin` is shorter than 4"))
    });
    assert!(warned, "{}", dump(&out));
}

#[test]
fn secret_files_go_when_the_supervised_app_stops_and_on_reset() {
    let sb = Sandbox::new();
    sb.write("db", "a-database-password\n");
    sb.plan(concat!(
        "version: 1\nname: files\n",
        "secrets:\n  db: { file: { path: db }, to_file: { path: db.pass } }\n",
        "steps:\n  app: { exec: [\"sh\", \"-c\", \"touch up; exec sleep 30\"], secrets: [db] }\n",
    ));
    let secret_file = sb.run_dir().join("secrets/db.pass");
    let mut child = crate::harness::start_run(&sb, &["--supervise"]);
    crate::harness::wait_until(
        "the app to start",
        std::time::Duration::from_secs(10),
        || sb.path().join("up").exists(),
    );
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        "a-database-password"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(!secret_file.exists(), "the secret file outlived the app");

    // A one-shot run leaves the file for whatever runs next; reset removes it.
    sb.plan(concat!(
        "version: 1\nname: files\n",
        "secrets:\n  db: { file: { path: db }, to_file: { path: db.pass } }\n",
        "steps:\n  use: { run: [\"true\"], secrets: [db] }\n",
    ));
    assert_eq!(code(&sb.run()), 0);
    assert!(secret_file.exists());
    let out = sb
        .cmd()
        .args(["reset", "--plan", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 1 secret file(s)"),
        "{}",
        dump(&out)
    );
    assert!(!secret_file.exists());
}
