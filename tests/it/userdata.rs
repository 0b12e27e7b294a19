//! `bootplan run --user-data`: plans straight from the user data of a
//! NoCloud seed directory (the layout Debian's cloud-init reads): a
//! `#bootplan` plan, a `text/x-bootplan` MIME part, a stub that includes
//! a pinned plan, cloud-config imported on the fly with its migration
//! report in the log, and user data that is none of these, refused before
//! anything runs.

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use crate::harness::{Sandbox, code, dump, log_lines};

/// A NoCloud seed directory in the sandbox with `user_data`.
fn seed(sb: &Sandbox, user_data: &str) -> PathBuf {
    sb.write(
        "seed/meta-data",
        "instance-id: iid-userdata-1\nlocal-hostname: seeded\n",
    );
    sb.write("seed/user-data", user_data);
    sb.path().join("seed")
}

fn run_user_data(sb: &Sandbox, user_data: &str) -> Output {
    let seed = seed(sb, user_data);
    sb.cmd()
        .args(["run", "--user-data", "--provider", "nocloud"])
        .env("BOOTPLAN_SEED_DIRS", &seed)
        .output()
        .expect("run bootplan")
}

fn messages(out: &Output) -> Vec<(String, String)> {
    log_lines(out)
        .iter()
        .filter_map(|l| {
            Some((
                l["level"].as_str()?.to_string(),
                l["msg"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn a_bootplan_plan_in_user_data_runs_as_it_is() {
    let sb = Sandbox::new();
    let target = sb.path().join("made-by-plan");
    let out = run_user_data(
        &sb,
        &format!(
            "#bootplan\nversion: 1\nname: from-user-data\nsteps:\n  mark:\n    run: [\"sh\", \"-c\", \"echo {{{{ facts.instance_id }}}} > {}\"]\n",
            target.display()
        ),
    );
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("made-by-plan").trim(), "iid-userdata-1");
    let status = sb.status();
    assert_eq!(status["plan"]["name"], "from-user-data");
    assert_eq!(status["plan"]["path"], "user-data:nocloud");
    assert_eq!(status["outcome"], "ready");
}

#[test]
fn a_text_x_bootplan_mime_part_is_the_plan() {
    let sb = Sandbox::new();
    let target = sb.path().join("from-part");
    let user_data = format!(
        "Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\nMIME-Version: 1.0\n\n--==BOUNDARY==\nContent-Type: text/x-bootplan; charset=\"us-ascii\"\n\nversion: 1\nname: mime-plan\nsteps:\n  touch:\n    file: {{ path: {}, content: \"from a part\\n\" }}\n--==BOUNDARY==--\n",
        target.display()
    );
    let out = run_user_data(&sb, &user_data);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("from-part"), "from a part\n");
}

#[test]
fn a_user_data_stub_names_a_larger_plan_by_a_pinned_url() {
    let sb = Sandbox::new();
    let target = sb.path().join("from-include");
    let big = sb.write(
        "big.yaml",
        &format!(
            "version: 1\nsteps:\n  touch:\n    file: {{ path: {}, content: \"included\\n\" }}\n",
            target.display()
        ),
    );
    let digest = sha256_hex(&std::fs::read(&big).unwrap());
    let stub = format!(
        "#bootplan\nversion: 1\nname: stub\ninclude:\n  - file://{}#sha256={digest}\nsteps: {{}}\n",
        big.display()
    );
    let out = run_user_data(&sb, &stub);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("from-include"), "included\n");

    // The same stub with a pin that does not match is refused before any step.
    std::fs::remove_file(&target).unwrap();
    let tampered = stub.replace(&digest, &"0".repeat(64));
    let out = run_user_data(&sb, &tampered);
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(!target.exists(), "a step ran from a plan whose pin failed");
    // A local path in user data is not the operator's file: refused too.
    let local = format!(
        "#bootplan\nversion: 1\nname: stub\ninclude:\n  - {}\nsteps: {{}}\n",
        big.display()
    );
    let out = run_user_data(&sb, &local);
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("include pinned URLs"),
        "{}",
        dump(&out)
    );
}

#[test]
fn cloud_config_is_imported_on_the_fly_with_the_report_in_the_log() {
    let sb = Sandbox::new();
    let dir = sb.path().join("etc-demo");
    let user_data = format!(
        "#cloud-config\nwrite_files:\n  - path: {dir}/app.conf\n    content: |\n      port=8080\n    permissions: '0640'\nruncmd:\n  - [sh, -c, \"echo ran > {dir}/ran\"]\nfoo_unknown_module: 1\n",
        dir = dir.display()
    );
    let out = run_user_data(&sb, &user_data);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("etc-demo/app.conf"), "port=8080\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("app.conf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
    assert_eq!(sb.read("etc-demo/ran"), "ran\n");

    let said = messages(&out);
    let report: Vec<_> = said
        .iter()
        .filter(|(_, m)| m.starts_with("import: "))
        .collect();
    let line = |key: &str| {
        report
            .iter()
            .find(|(_, m)| m.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("no report line for {key}: {report:?}"))
    };
    assert_eq!(line("write_files").0, "info");
    // runcmd changes meaning (every command fails the run), so it is a warning.
    assert_eq!(line("runcmd").0, "warn");
    assert!(
        line("runcmd").1.contains("user-data:nocloud:"),
        "{report:?}"
    );
    assert_eq!(line("foo_unknown_module").0, "warn");
    assert!(line("foo_unknown_module").1.contains("not supported"));
    let status = sb.status();
    assert_eq!(status["plan"]["path"], "user-data:nocloud");
    assert_eq!(status["outcome"], "ready");
}

#[test]
fn user_data_that_is_no_plan_is_refused_before_anything_runs() {
    let sb = Sandbox::new();
    // YAML without a header: cloud-init ignores it, bootplan does not guess.
    let out = run_user_data(&sb, "runcmd:\n  - [touch, /tmp/should-not-exist]\n");
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("#cloud-config"), "{stderr}");
    let status: Value = sb.status();
    assert_eq!(status["outcome"], "invalid");
    assert_eq!(status["error"]["code"], "plan.invalid");
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user-data:nocloud"),
        "{status}"
    );

    // No user data at all: said, with what to do.
    let empty = Sandbox::new();
    empty.write("seed/meta-data", "instance-id: iid-2\n");
    let out = empty
        .cmd()
        .args(["run", "--user-data", "--provider", "nocloud"])
        .env("BOOTPLAN_SEED_DIRS", empty.path().join("seed"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no user data"),
        "{}",
        dump(&out)
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
