//! cloud-init compatibility, against cloud-init 22.4 itself (Debian's,
//! installed disabled by scripts/deps/cloud-init.sh) in throwaway roots:
//! - the status files a `compat: cloud-init` run writes are read by the
//!   real `cloud-init status` and by bootplan's own entry point (also
//!   through a `cloud-init` symlink) with the same verdict and exit code;
//! - callers that wait (`status --wait`, a Packer-style loop polling
//!   `boot-finished`) return when the run ends, and a `--wait` with a
//!   timeout returns while it still runs.
//! - the same user data, run by cloud-init's stages against a NoCloud seed
//!   in one root and by `bootplan run --user-data` in a twin, leaves the
//!   same tree (files with contents, modes and owners; users; groups;
//!   host name), or a difference the migration report names.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{code, dump, wait_until};
use crate::os::Root;

const BIN: &str = env!("CARGO_BIN_EXE_bootplan");

/// A root where cloud-init would run (its "disabled" marker is the test
/// host's, not the root's) and where `/opt/shim/cloud-init` is bootplan.
fn root() -> Option<Root> {
    let root = Root::new()?;
    root.sh(&format!(
        "rm -f /etc/cloud/cloud-init.disabled\nmkdir -p /opt/shim\nln -s {BIN} /opt/shim/cloud-init\ntest -x /usr/bin/cloud-init"
    ));
    Some(root)
}

fn output(root: &Root, argv: &[&str]) -> Output {
    root.cmd(argv).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cloud-init status --long`, by cloud-init and by bootplan's symlink:
/// (exit code, first line) of each.
fn both_statuses(root: &Root) -> [(i32, String); 2] {
    ["/usr/bin/cloud-init", "/opt/shim/cloud-init"].map(|prog| {
        let out = output(root, &[prog, "status", "--long"]);
        let first = stdout(&out).lines().next().unwrap_or("").to_string();
        (code(&out), first)
    })
}

fn plan(root: &Root, steps: &str) {
    root.write(
        "/etc/bootplan/plan.yaml",
        &format!("version: 1\nname: compat\ncompat: cloud-init\nsteps:\n{steps}"),
    );
}

#[test]
fn cloud_init_status_reads_bootplans_verdict_as_its_own() {
    let Some(root) = root() else { return };
    let before = both_statuses(&root);
    assert_eq!(
        before[0],
        (0, "status: not run".into()),
        "cloud-init before any run"
    );
    assert_eq!(before[1], before[0], "the shim before any run");

    plan(&root, "  ok: { run: [\"true\"] }\n");
    let out = root.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        both_statuses(&root),
        [(0, "status: done".into()), (0, "status: done".into())]
    );
    assert!(
        root.read("/var/lib/cloud/instance/boot-finished")
            .contains("v. bootplan")
    );
    let long = stdout(&output(&root, &["/usr/bin/cloud-init", "status", "--long"]));
    assert!(
        long.contains("DataSourceBootplan [plan=/etc/bootplan/plan.yaml]"),
        "{long}"
    );

    plan(&root, "  broken: { run: [\"sh\", \"-c\", \"exit 3\"] }\n");
    let out = root.run();
    assert_eq!(code(&out), 1, "{}", dump(&out));
    let [theirs, ours] = both_statuses(&root);
    assert_eq!(theirs, (1, "status: error".into()));
    assert_eq!(ours, theirs);
    // The detail names the failure by its code, for both readers.
    for prog in ["/usr/bin/cloud-init", "/opt/shim/cloud-init"] {
        let json: Value = serde_json::from_str(&stdout(&output(
            &root,
            &[prog, "status", "--format", "json"],
        )))
        .unwrap();
        assert_eq!(json["status"], "error", "{prog}: {json}");
        assert!(
            json["errors"][0]
                .as_str()
                .unwrap()
                .contains("step.exit_nonzero"),
            "{prog}: {json}"
        );
    }
    // bootplan's own spelling of the command says the same.
    let out = output(&root, &[BIN, "compat", "cloud-init", "status"]);
    assert_eq!((code(&out), stdout(&out)), (1, "status: error\n".into()));

    // An invalid plan under `--compat cloud-init` is an error too, not "running".
    root.write(
        "/etc/bootplan/plan.yaml",
        "version: 1\nname: bad\nsteps:\n  x: { nope: 1 }\n",
    );
    let out = root
        .bootplan(&["run", "--compat", "cloud-init", "/etc/bootplan/plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert_eq!(both_statuses(&root)[0], (1, "status: error".into()));
}

#[test]
fn waiting_callers_return_when_the_run_ends_and_a_timeout_returns_before() {
    let Some(root) = root() else { return };
    plan(
        &root,
        "  gate: { wait: { file: /tmp/go, interval: 50ms }, timeout: 60s }\n  after: { run: [\"true\"], needs: [gate] }\n",
    );
    let mut run = root
        .bootplan(&["run", "/etc/bootplan/plan.yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_file = root.path("/run/cloud-init/status.json");
    wait_until("status.json is written", Duration::from_secs(20), || {
        status_file.exists()
    });
    assert_eq!(both_statuses(&root)[0], (0, "status: running".into()));

    // Unlike cloud-init's, the shim's --wait gives up after its timeout.
    let out = output(
        &root,
        &[
            "/opt/shim/cloud-init",
            "status",
            "--wait",
            "--timeout",
            "500ms",
        ],
    );
    assert_eq!(code(&out), 1, "{}", dump(&out));
    assert!(
        stdout(&out).ends_with("status: running\n"),
        "{}",
        dump(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("gave up waiting"));

    // Callers that wait for the end: the real cloud-init, the shim, and the
    // loop Packer templates use (poll boot-finished, then read the result).
    let waiters: Vec<_> = [
        vec!["/usr/bin/cloud-init", "status", "--wait"],
        vec!["/opt/shim/cloud-init", "status", "--wait"],
        vec![
            "/bin/sh",
            "-c",
            "while [ ! -f /var/lib/cloud/instance/boot-finished ]; do sleep 0.1; done; python3 -c 'import json,sys; sys.exit(1 if json.load(open(\"/run/cloud-init/result.json\"))[\"v1\"][\"errors\"] else 0)'",
        ],
    ]
    .into_iter()
    .map(|argv| {
        root.cmd(&argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    })
    .collect::<Vec<_>>();
    let mut waiters = waiters;
    for waiter in &mut waiters {
        assert!(
            waiter.try_wait().unwrap().is_none(),
            "a caller returned while the run still waits"
        );
    }
    root.write("/tmp/go", "");
    assert!(run.wait().unwrap().success());
    for waiter in waiters {
        let out = waiter.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", dump(&out));
        let text = stdout(&out);
        assert!(
            text.is_empty() || text.trim_end().ends_with("status: done"),
            "{text}"
        );
    }
}

/// User data that touches only what both tools do the same way: files
/// (plain, base64, appended, deferred and owned by a created user),
/// commands, a group, a user with sudo rules and a key, the host name.
const TWIN_USER_DATA: &str = r#"#cloud-config
hostname: twin-host
groups:
  - admins
users:
  - name: deploy
    gecos: Deploy User
    groups: [admins]
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl deploy@twin
write_files:
  - path: /etc/twin/app.conf
    content: |
      port=8080
    permissions: '0640'
  - path: /etc/twin/blob.bin
    encoding: b64
    content: aGVsbG8gYmFzZTY0Cg==
  - path: /etc/twin/log.txt
    content: "first\n"
  - path: /etc/twin/log.txt
    content: "second\n"
    append: true
  - path: /home/deploy/.app.env
    content: "MODE=prod\n"
    owner: deploy:deploy
    permissions: '0600'
    defer: true
runcmd:
  - echo one > /var/tmp/twin-one
  - [sh, -c, "id -nG deploy > /var/tmp/twin-groups"]
"#;

/// Only the modules the user data uses, so the comparison is of what the
/// user data asks for: cloud-init's default module list also makes host
/// keys, sets the locale and more, which the user data did not ask for.
const TWIN_CLOUD_CFG: &str = "datasource_list: [ NoCloud, None ]\n\
cloud_init_modules: [write-files, set_hostname, update_hostname, users-groups]\n\
cloud_config_modules: [runcmd]\n\
cloud_final_modules: [scripts-user, write-files-deferred]\n";

/// The seed both tools read.
fn seed_twin(root: &Root) {
    root.sh("rm -rf /var/lib/cloud\nmkdir -p /var/lib/cloud/seed/nocloud");
    root.write(
        "/var/lib/cloud/seed/nocloud/meta-data",
        "instance-id: iid-twin-1\nlocal-hostname: seeded\n",
    );
    root.write("/var/lib/cloud/seed/nocloud/user-data", TWIN_USER_DATA);
}

/// What a tree holds under the compared directories: path, type, mode,
/// owner and a digest of the content, one line each; then the accounts.
const SNAPSHOT: &str = r#"set -e
python3 - <<'PY'
import hashlib, os, pwd, grp, stat
skip = ('/etc/cloud', '/etc/bootplan', '/etc/ssh/ssh_host_', '/etc/ld.so.cache')
def owner(st):
    try: u = pwd.getpwuid(st.st_uid).pw_name
    except KeyError: u = str(st.st_uid)
    try: g = grp.getgrgid(st.st_gid).gr_name
    except KeyError: g = str(st.st_gid)
    return u + ':' + g
for top in ('/etc', '/home', '/var/tmp'):
    for d, dirs, files in os.walk(top):
        for name in sorted(dirs + files):
            p = os.path.join(d, name)
            if p.startswith(skip):
                continue
            st = os.lstat(p)
            kind = 'd' if stat.S_ISDIR(st.st_mode) else 'l' if stat.S_ISLNK(st.st_mode) else 'f'
            extra = hashlib.sha256(open(p, 'rb').read()).hexdigest()[:16] if kind == 'f' else (os.readlink(p) if kind == 'l' else '')
            print(p, kind, oct(st.st_mode & 0o7777), owner(st), extra)
PY
echo "user $(getent passwd deploy | cut -d: -f1,3-7)"
echo "groups $(id -nG deploy)"
echo "group $(getent group admins | cut -d: -f1,4)"
echo "hostname $(hostname) $(cat /etc/hostname)"
"#;

fn snapshot(root: &Root) -> std::collections::BTreeMap<String, String> {
    root.sh(SNAPSHOT)
        .lines()
        .map(|line| {
            let (key, rest) = match line.split_once(' ') {
                Some((k, r)) if ["user", "groups", "group", "hostname"].contains(&k) => (k, r),
                _ => line.split_once(' ').unwrap_or((line, "")),
            };
            (key.to_string(), rest.to_string())
        })
        .collect()
}

#[test]
fn cloud_init_and_the_imported_plan_leave_the_same_tree() {
    let Some(theirs) = root() else { return };
    let Some(ours) = root() else { return };
    for root in [&theirs, &ours] {
        seed_twin(root);
    }
    theirs.write("/etc/cloud/cloud.cfg.d/99-twin.cfg", TWIN_CLOUD_CFG);
    theirs.sh(
        "cloud-init init --local >/tmp/ci.log 2>&1\n\
         cloud-init init >>/tmp/ci.log 2>&1\n\
         cloud-init modules --mode=config >>/tmp/ci.log 2>&1\n\
         cloud-init modules --mode=final >>/tmp/ci.log 2>&1\n\
         cloud-init status | grep -q 'status: done' || { cat /tmp/ci.log; cloud-init status --long; exit 1; }",
    );
    let out = ours
        .bootplan(&["run", "--user-data", "--provider", "nocloud"])
        .env("BOOTPLAN_SEED_DIRS", "/var/lib/cloud/seed/nocloud")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let report: String = crate::harness::log_lines(&out)
        .iter()
        .filter_map(|l| {
            l["msg"]
                .as_str()
                .filter(|m| m.starts_with("import: "))
                .map(|m| format!("{m}\n"))
        })
        .collect();

    let (a, b) = (snapshot(&theirs), snapshot(&ours));
    let mut differences = Vec::new();
    for key in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if a.get(key) != b.get(key) {
            differences.push(format!(
                "{key}: cloud-init {:?}, bootplan {:?}",
                a.get(key),
                b.get(key)
            ));
        }
    }
    // What both must have done, checked on cloud-init's side so the
    // comparison cannot pass on two empty trees.
    for (key, expected) in [
        ("hostname", "twin-host twin-host"),
        ("groups", "deploy admins"),
    ] {
        assert_eq!(
            a.get(key).map(String::as_str),
            Some(expected),
            "cloud-init: {a:?}"
        );
    }
    assert!(a.contains_key("/etc/twin/log.txt") && a.contains_key("/home/deploy/.app.env"));
    eprintln!(
        "differences:\n{}\nreport:\n{report}",
        differences.join("\n")
    );
    let unexplained: Vec<_> = differences
        .iter()
        .filter(|d| !predicted(d, &report))
        .collect();
    assert!(
        unexplained.is_empty(),
        "differences the migration report does not predict:\n{unexplained:#?}\nreport:\n{report}"
    );
}

/// Whether the migration report names the difference `d`.
fn predicted(d: &str, report: &str) -> bool {
    let path = d.split(':').next().unwrap_or("");
    // Files the tools keep for themselves, and the shadow tools' backups.
    let own = [
        "/etc/passwd-",
        "/etc/group-",
        "/etc/shadow-",
        "/etc/gshadow-",
        "/etc/.pwd.lock",
    ];
    if own.contains(&path) {
        return true;
    }
    report
        .lines()
        .any(|line| line.contains(path) && !path.is_empty())
}
