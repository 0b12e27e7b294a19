//! `bootplan import cloud-config` on real user data: cloud-init's own
//! examples (Debian's cloud-init package, installed by
//! scripts/deps/cloud-init.sh) and public files written by people
//! (`../shared/cloud-configs/`, read in place). Every file imports into a
//! plan that `bootplan check` accepts, or is refused with a report; no
//! input panics; no top-level key is dropped without a report line.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{Sandbox, bin, code, dump, under_ci};

fn corpus() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/cloud-configs");
    let examples = Path::new("/usr/share/doc/cloud-init/examples");
    for (dir, required) in [(shared.as_path(), true), (examples, under_ci())] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            assert!(!required, "{} is missing", dir.display());
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_file() && !name.ends_with(".md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level keys of a cloud-config file, as cloud-init's own YAML
/// reader (PyYAML, a dependency of cloud-init) sees them; `None` when it
/// is not a plain cloud-config document.
fn top_level_keys(path: &Path) -> Option<Vec<String>> {
    let script = "import sys, yaml, json\ntext = open(sys.argv[1], encoding='utf-8', errors='replace').read()\nif not text.startswith('#cloud-config\\n'):\n    sys.exit(3)\ndoc = yaml.safe_load(text)\nprint(json.dumps(sorted(doc) if isinstance(doc, dict) else []))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn every_user_data_file_imports_into_a_valid_plan_or_is_refused_with_a_report() {
    let files = corpus();
    assert!(files.len() >= 20, "only {} files", files.len());
    let mut failures = Vec::new();
    let mut imported = 0;
    for file in &files {
        let out = Command::new(bin())
            .args(["import", "cloud-config", "--json"])
            .arg(file)
            .output()
            .unwrap();
        let name = file.display();
        if !matches!(code(&out), 0 | 65) {
            failures.push(format!("{name}: exit {}\n{}", code(&out), dump(&out)));
            continue;
        }
        let report: Value = match serde_json::from_slice(&out.stdout) {
            Ok(report) => report,
            Err(err) => {
                failures.push(format!("{name}: the report is not JSON: {err}"));
                continue;
            }
        };
        let entries = report["entries"].as_array().cloned().unwrap_or_default();
        if code(&out) == 0 {
            imported += 1;
            // The plan passes `bootplan check` on its own, too.
            let sb = Sandbox::new();
            sb.plan(report["plan"].as_str().unwrap_or_default());
            let check = Command::new(bin())
                .arg("check")
                .arg(sb.path().join("plan.yaml"))
                .output()
                .unwrap();
            if code(&check) != 0 {
                failures.push(format!(
                    "{name}: the imported plan fails check:\n{}",
                    dump(&check)
                ));
            }
        } else if entries.is_empty() {
            failures.push(format!(
                "{name}: refused without a report line\n{}",
                dump(&out)
            ));
        }
        // Every top-level key of a parseable cloud-config has its line.
        for key in top_level_keys(file).unwrap_or_default() {
            let reported = entries.iter().any(|e| {
                e["key"] == key.as_str()
                    || e["key"]
                        .as_str()
                        .is_some_and(|k| k.starts_with(&format!("{key} ")))
            });
            let whole_part = entries
                .iter()
                .any(|e| e["key"] == "cloud-config" && e["outcome"] == "unsupported");
            if !reported && !whole_part {
                failures.push(format!("{name}: `{key}` is not in the report"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(imported >= 10, "only {imported} files imported");
}

/// The mappings that change meaning say so, with the key's position.
#[test]
fn the_report_names_each_key_its_position_and_what_changed() {
    let sb = Sandbox::new();
    sb.write(
        "user-data",
        "#cloud-config\nhostname: web-1\nruncmd:\n  - echo one\n  - [touch, /tmp/two]\nmounts:\n  - [/dev/sdb, /data]\nusers:\n  - default\n  - name: deploy\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    plain_text_passwd: hunter2\npackages: [\"${pkg}\"]\n",
    );
    let out = Command::new(bin())
        .args(["import", "cloud-config", "--json"])
        .arg(sb.path().join("user-data"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = |key: &str| {
        report["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no entry for {key}: {report}"))
    };
    assert_eq!(entry("hostname")["outcome"], "mapped");
    assert_eq!(entry("hostname")["line"], 2);
    let runcmd = entry("runcmd");
    assert_eq!(runcmd["outcome"], "changed");
    assert!(
        runcmd["note"]
            .as_str()
            .unwrap()
            .contains("only the last command's exit status"),
        "{runcmd}"
    );
    assert_eq!(runcmd["steps"].as_array().unwrap().len(), 2);
    assert_eq!(entry("mounts")["outcome"], "unsupported");
    let users = entry("users")["note"].as_str().unwrap().to_string();
    assert!(
        users.contains("`default`") && users.contains("plain_text_passwd"),
        "{users}"
    );
    let packages = entry("packages");
    assert_eq!(packages["outcome"], "unsupported");
    assert!(
        packages["note"].as_str().unwrap().contains("${pkg}"),
        "{packages}"
    );
    let plan = report["plan"].as_str().unwrap();
    assert!(
        !plan.contains("hunter2"),
        "a plain-text password reached the plan"
    );
    assert!(
        plan.contains("shell: echo one") && plan.contains("/tmp/two"),
        "{plan}"
    );
}

/// An imported first boot runs for real in a throwaway root: files (plain,
/// base64, gzip+base64, appended, with owner and mode), a group, a user
/// with sudo and a key, the host name and commands in order.
#[test]
fn values_cloud_init_schema_refuses_are_reported_where_they_are() {
    let sb = Sandbox::new();
    sb.write(
        "user-data",
        "#cloud-config
write_files:
  - path: /etc/a.conf
    content: x
  - path: /etc/b.conf
    permisions: '0644'
runcmd:
  - echo fine
  - {echo: not a command}
",
    );
    let out = Command::new(bin())
        .args(["import", "cloud-config"])
        .arg(sb.path().join("user-data"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    let invalid: Vec<_> = report
        .lines()
        .filter(|l| l.contains(": invalid: "))
        .collect();
    assert_eq!(invalid.len(), 2, "{report}");
    assert!(
        invalid[0].contains("user-data:6:") && invalid[0].contains("permisions"),
        "{report}"
    );
    assert!(
        invalid[1].contains("user-data:9:") && invalid[1].contains("runcmd"),
        "{report}"
    );
    assert!(report.contains("2 invalid"), "{report}");
}

#[test]
fn an_imported_first_boot_runs_in_a_throwaway_root() {
    let Some(root) = crate::os::Root::new() else {
        return;
    };
    let user_data = r#"#cloud-config
hostname: imported-1
groups: [ops]
users:
  - name: deploy
    groups: ops
    shell: /bin/sh
    sudo: "ALL=(ALL) NOPASSWD: /usr/bin/true"
    ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example"]
write_files:
  - path: /etc/app/plain.conf
    content: "plain {{ not a template }}\n"
  - path: /etc/app/b64.conf
    encoding: b64
    content: aGVsbG8gYmFzZTY0Cg==
    permissions: '0600'
    owner: deploy:ops
  - path: /etc/app/gz.conf
    encoding: gz+b64
    content: H4sIAAAAAAAAA8tIzcnJ5wIAIDA6NgYAAAA=
  - path: /etc/app/plain.conf
    content: "appended\n"
    append: true
runcmd:
  - echo first >> /var/log/order
  - [sh, -c, "echo second >> /var/log/order"]
"#;
    root.write("/etc/bootplan/user-data", user_data);
    std::fs::write(root.path("/tmp/user-data"), user_data).unwrap();
    let out = Command::new(bin())
        .args(["import", "cloud-config"])
        .arg(root.path("/tmp/user-data"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    root.write(
        "/etc/bootplan/plan.yaml",
        &String::from_utf8_lossy(&out.stdout),
    );
    let run = root.run();
    assert_eq!(code(&run), 0, "{}", dump(&run));
    assert_eq!(
        root.read("/etc/app/plain.conf"),
        "plain {{ not a template }}\nappended\n"
    );
    assert_eq!(root.read("/etc/app/b64.conf"), "hello base64\n");
    assert_eq!(root.read("/etc/app/gz.conf"), "hello\n");
    assert_eq!(
        root.sh("stat -c '%a %U %G' /etc/app/b64.conf").trim(),
        "600 deploy ops"
    );
    assert_eq!(root.read("/var/log/order"), "first\nsecond\n");
    assert!(
        root.sh("id -nG deploy")
            .split_whitespace()
            .any(|g| g == "ops")
    );
    assert!(
        root.read("/home/deploy/.ssh/authorized_keys")
            .contains("ops@example")
    );
    assert_eq!(root.read("/etc/hostname").trim(), "imported-1");
    assert!(root.sh("ls /etc/sudoers.d").contains("deploy"));
    // The second run changes nothing: the commands and the append ran once.
    let again = root.run();
    assert_eq!(code(&again), 0, "{}", dump(&again));
    assert_eq!(root.read("/var/log/order"), "first\nsecond\n");
    assert_eq!(
        root.read("/etc/app/plain.conf"),
        "plain {{ not a template }}\nappended\n"
    );
}
