//! The OS kinds, run for real inside a throwaway root: an overlayfs over
//! `/` in private mount, UTS, IPC and network namespaces, entered with
//! nsenter and chroot. Users, packages, the host name, sysctls (the
//! network ones, which belong to the namespace), units and host keys all
//! change in the overlay's upper layer, a tmpfs that goes away with the
//! namespace: the test host never changes. Packages come from a local apt
//! repository of tiny `.deb`s built with dpkg-deb, indexed with
//! apt-ftparchive, signed with a throwaway gpg key and served on the
//! namespace's own loopback: real apt and dpkg, no outside network.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{dump, under_ci};

const BIN: &str = env!("CARGO_BIN_EXE_bootplan");

/// Sets up the root inside the new namespaces, says `ready`, and holds the
/// namespaces until its stdin closes.
const SETUP: &str = r#"set -e
T=$1
mount -t tmpfs -o mode=0755 tmpfs "$T"
mkdir "$T/upper" "$T/work" "$T/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/root"
mount -t proc proc "$T/root/proc"
mount -t tmpfs -o mode=0755 tmpfs "$T/root/run"
mount -t tmpfs -o mode=1777 tmpfs "$T/root/tmp"
mount --rbind /dev "$T/root/dev"
ip link set lo up
echo ready
exec cat
"#;

/// The repository's HTTP server on 127.0.0.1:8080: answers the first N
/// (its argument) requests for index files with 503, as a mirror in the
/// middle of a sync does, and serves everything else from /srv/repo.
const SERVE_PY: &str = r#"import functools, http.server, sys
left = [int(sys.argv[1])]
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if not self.path.endswith('.deb') and left[0] > 0:
            left[0] -= 1
            self.send_error(503, 'mirror sync in progress')
            return
        super().do_GET()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(('127.0.0.1', 8080), functools.partial(Handler, directory='/srv/repo'))
print('Serving HTTP', flush=True)
server.serve_forever()
"#;

/// A throwaway root. Dropping it ends every process in it and with them
/// the namespaces and the overlay.
pub(crate) struct Root {
    holder: Child,
    dir: tempfile::TempDir,
    pid: u32,
    nsenter: PathBuf,
    /// Servers started inside (the apt repository's).
    servers: Vec<Child>,
}

impl Root {
    /// A new root, or `None` (the test skips) where the host cannot make
    /// one; under CI or `BOOTPLAN_TEST_REQUIRE_PEERS=1` that is a failure.
    pub(crate) fn new() -> Option<Root> {
        let missing = |why: String| {
            assert!(
                !under_ci(),
                "cannot make a throwaway root: {why} (run scripts/deps/os.sh, as root)"
            );
            eprintln!("skipping: cannot make a throwaway root: {why}");
            None
        };
        if !nix::unistd::Uid::effective().is_root() {
            return missing("the namespaces and mounts need root".into());
        }
        // Looked up where root's tools are, whatever the test's PATH says
        // (the root's own commands run with a standard PATH too).
        let find = |tool: &str| {
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|p| p.is_file())
        };
        for tool in [
            "unshare",
            "nsenter",
            "chroot",
            "ip",
            "python3",
            "apt-ftparchive",
            "dpkg-deb",
            "gpg",
            "visudo",
            "ssh-keygen",
            "systemctl",
            "useradd",
            "chpasswd",
            "su",
        ] {
            if find(tool).is_none() {
                return missing(format!("`{tool}` is not installed"));
            }
        }
        if !std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay")) {
            return missing("the kernel has no overlayfs".into());
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("..").join(format!(
            "bootplan-root-setup-{}.sh",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&script, SETUP).unwrap();
        let mut holder = Command::new(find("unshare").unwrap())
            .args([
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--propagation",
                "private",
                "sh",
            ])
            .arg(&script)
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _ = std::fs::remove_file(&script);
        if line.trim() != "ready" {
            let _ = holder.wait();
            return missing("the namespace set-up failed (see stderr)".into());
        }
        let pid = holder.id();
        Some(Root {
            holder,
            dir,
            pid,
            nsenter: find("nsenter").unwrap(),
            servers: Vec::new(),
        })
    }

    /// The root's directory as the namespace sees it.
    fn inner(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A path inside the root, reachable from the host through the
    /// holder's view of its mount namespace.
    pub(crate) fn path(&self, inside: &str) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/{}/root", self.pid));
        p.push(self.inner().strip_prefix("/").unwrap());
        p.push(inside.trim_start_matches('/'));
        p
    }

    pub(crate) fn write(&self, inside: &str, text: &str) {
        let path = self.path(inside);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {inside}: {e}"));
    }

    pub(crate) fn read(&self, inside: &str) -> String {
        std::fs::read_to_string(self.path(inside)).unwrap_or_default()
    }

    /// A command run inside the root (its namespaces, chrooted), with a
    /// clean environment.
    pub(crate) fn cmd<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new(&self.nsenter);
        cmd.args([
            "-t",
            &self.pid.to_string(),
            "-m",
            "-u",
            "-i",
            "-n",
            "--",
            "chroot",
        ])
        .arg(self.inner())
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LC_ALL", "C")
        .current_dir("/");
        cmd
    }

    /// Runs a shell script inside the root; panics when it fails.
    pub(crate) fn sh(&self, script: &str) -> String {
        let out = self.cmd(&["/bin/sh", "-ec", script]).output().unwrap();
        assert!(out.status.success(), "`{script}` failed: {}", dump(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `bootplan ARGS` inside the root, JSON logs on stdout.
    pub(crate) fn bootplan(&self, args: &[&str]) -> Command {
        let mut cmd = self.cmd(&[BIN]);
        cmd.args(args)
            .env("BOOTPLAN_LOG_FORMAT", "json")
            .env("BOOTPLAN_DMI_ROOT", "/nonexistent/dmi")
            .env("BOOTPLAN_CMDLINE", "/nonexistent/cmdline")
            .env("BOOTPLAN_DISK_LABELS_DIR", "/nonexistent/labels")
            .env("BOOTPLAN_SEED_DIRS", "/nonexistent/seed")
            .current_dir("/");
        cmd
    }

    pub(crate) fn run(&self) -> Output {
        self.bootplan(&["run", "/etc/bootplan/plan.yaml"])
            .output()
            .unwrap()
    }

    pub(crate) fn status(&self) -> Value {
        serde_json::from_str(&self.read("/run/bootplan/status.json")).unwrap_or(Value::Null)
    }

    /// Builds the local apt repository (packages `names`, version 1.0,
    /// nothing in them but a file), signs it with a new key, serves it on
    /// 127.0.0.1:8080 inside the root and removes the host's own sources
    /// (unreachable here). Returns the armored public key.
    pub(crate) fn apt_repo(&mut self, names: &[&str]) -> String {
        self.apt_repo_failing(names, 0)
    }

    /// [`Root::apt_repo`] whose server answers the first `failures`
    /// requests for index files with 503, as a mirror in the middle of a
    /// sync does.
    fn apt_repo_failing(&mut self, names: &[&str], failures: u32) -> String {
        let mut script = String::from(
            "mkdir -p /srv/repo /srv/build\nrm -f /etc/apt/sources.list\nrm -rf /etc/apt/sources.list.d/*\n",
        );
        for name in names {
            script.push_str(&format!(
                "d=/srv/build/{name}; mkdir -p $d/DEBIAN $d/usr/share/{name}\n\
                 printf 'Package: {name}\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: test <test@example>\\nDescription: a test package\\n' > $d/DEBIAN/control\n\
                 echo {name} > $d/usr/share/{name}/hello\n\
                 dpkg-deb --root-owner-group --build $d /srv/repo/{name}_1.0_all.deb >/dev/null\n"
            ));
        }
        script.push_str(
            "cd /srv/repo\n\
             apt-ftparchive packages . > Packages\n\
             apt-ftparchive release . > Release\n\
             export GNUPGHOME=/srv/gnupg; mkdir -m 700 -p $GNUPGHOME\n\
             gpg -q --batch --passphrase '' --quick-gen-key 'bootplan test <test@example>' ed25519 sign never 2>/dev/null\n\
             gpg -q --batch --yes --clearsign -o InRelease Release\n\
             gpg -q --batch --yes -abs -o Release.gpg Release\n\
             gpg -q --armor --export > /srv/key.asc\n\
             gpgconf --kill gpg-agent\n",
        );
        self.sh(&script);
        self.write("/srv/serve.py", SERVE_PY);
        let mut server = self
            .cmd(&["python3", "-u", "/srv/serve.py", &failures.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("Serving HTTP"), "repository server: {line}");
        self.servers.push(server);
        self.read("/srv/key.asc")
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        drop(self.holder.stdin.take());
        let _ = self.holder.wait();
    }
}

/// The `msg` of every output line a step printed.
fn said(output: &Output, step: &str) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["step"] == step && v["stream"].is_string())
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect()
}

fn ok(output: &Output) {
    assert!(output.status.success(), "{}", dump(output));
}

/// A YAML block scalar of `text`, indented by `indent` spaces.
fn block(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::from("|\n");
    for line in text.lines() {
        out.push_str(&pad);
        out.push_str(line);
        out.push('\n');
    }
    out
}

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2hIK1UdQ5ufYQSpO9URbTuIQZFwdMq0RRhc+FJ9f5 ops@example";
const KEY_HAND: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl added-by-hand";
const HASH: &str = "$6$bootplan$c29tZS1oYXNo";

fn first_boot_plan(key: &str) -> String {
    format!(
        r#"version: 1
name: first-boot
facts: {{ provider: local }}
secrets:
  deploy_hash: {{ file: {{ path: /etc/bootplan/deploy.hash }} }}
steps:
  admins:
    group: {{ name: admins, gid: 1600 }}
  deploy-user:
    user:
      name: deploy
      uid: 1500
      groups: [admins]
      shell: /bin/bash
      sudo: ["ALL=(ALL) NOPASSWD: /usr/bin/systemctl restart app"]
      ssh_authorized_keys: ["{KEY_A}"]
      password_hash: "{{{{ secrets.deploy_hash }}}}"
  base:
    packages:
      install: [bp-hello, bp-tool]
      repos:
        - name: local
          uri: "http://127.0.0.1:8080/"
          suite: "./"
          key: {key}
  name:
    hostname: {{ name: web-1, fqdn: web-1.example.internal, hosts: true }}
  tuning:
    sysctl: {{ net.core.somaxconn: 1024, net.ipv4.ip_forward: 1 }}
  app-unit:
    unit:
      name: app.service
      content: "[Unit]\nDescription=app\n[Service]\nExecStart=/bin/true\nUser=deploy\n[Install]\nWantedBy=multi-user.target\n"
      enable: true
    needs: [deploy-user]
  host-keys:
    ssh_host_keys: {{ types: [ed25519, ecdsa] }}
"#,
        key = block(key, 12)
    )
}

const OS_STEPS: [&str; 7] = [
    "admins",
    "deploy-user",
    "base",
    "name",
    "tuning",
    "app-unit",
    "host-keys",
];

#[test]
fn first_boot_converges_then_changes_nothing_and_drift_is_shown_and_repaired() {
    let Some(mut root) = Root::new() else { return };
    let key = root.apt_repo(&["bp-hello", "bp-tool"]);
    root.write("/etc/bootplan/deploy.hash", HASH);
    root.write("/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    root.write("/etc/bootplan/plan.yaml", &first_boot_plan(&key));

    // First boot: everything is made.
    let first = root.run();
    ok(&first);
    let passwd = root.sh("getent passwd deploy");
    assert_eq!(passwd.trim(), "deploy:x:1500:1500::/home/deploy:/bin/bash");
    assert_eq!(root.sh("id -nG deploy").trim(), "deploy admins");
    assert_eq!(
        root.sh("getent group admins").trim(),
        "admins:x:1600:deploy"
    );
    assert!(
        root.read("/etc/shadow")
            .contains(&format!("deploy:{HASH}:"))
    );
    assert_eq!(
        root.read("/etc/sudoers.d/bootplan-deploy").lines().last(),
        Some("deploy ALL=(ALL) NOPASSWD: /usr/bin/systemctl restart app")
    );
    let keys = root.read("/home/deploy/.ssh/authorized_keys");
    assert!(keys.contains(KEY_A), "{keys}");
    let meta = root.sh("stat -c '%U:%G %a' /home/deploy/.ssh /home/deploy/.ssh/authorized_keys");
    assert_eq!(meta, "deploy:deploy 700\ndeploy:deploy 600\n");
    assert!(
        root.sh("dpkg-query -W -f '${Status}\\n' bp-hello bp-tool")
            .matches("install ok installed")
            .count()
            == 2
    );
    assert!(
        root.read("/etc/apt/sources.list.d/local.sources")
            .contains("Signed-By: /etc/apt/keyrings/local.asc")
    );
    assert_eq!(root.sh("hostname").trim(), "web-1");
    assert_eq!(root.read("/etc/hostname"), "web-1\n");
    assert!(
        root.read("/etc/hosts")
            .contains("127.0.1.1\tweb-1.example.internal web-1")
    );
    assert_eq!(root.sh("cat /proc/sys/net/core/somaxconn").trim(), "1024");
    assert!(
        root.read("/etc/sysctl.d/90-bootplan-tuning.conf")
            .contains("net.core.somaxconn = 1024")
    );
    assert!(
        root.path("/etc/systemd/system/multi-user.target.wants/app.service")
            .symlink_metadata()
            .is_ok()
    );
    let fingerprint = root.sh("ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub");
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        said(&first, "host-keys")
            .iter()
            .any(|l| l.contains(&fingerprint)),
        "the fingerprint is in the log: {:?}",
        said(&first, "host-keys")
    );
    for step in OS_STEPS {
        assert!(
            said(&first, step)
                .iter()
                .any(|l| l.starts_with("changed: ")),
            "{step} changed something: {:?}",
            said(&first, step)
        );
    }

    // Second run (a reboot): nothing changes, and each step says why.
    let second = root.run();
    ok(&second);
    for step in OS_STEPS {
        let lines = said(&second, step);
        assert!(
            lines.iter().any(|l| l.starts_with("up to date: "))
                && !lines.iter().any(|l| l.starts_with("changed: ")),
            "{step} changed nothing the second time: {lines:?}"
        );
    }
    assert!(
        said(&second, "host-keys")
            .iter()
            .any(|l| l.contains(&fingerprint)),
        "same host key after a reboot"
    );

    // A hand change: the shell edited, a package removed, a key added.
    root.sh("usermod -s /bin/sh deploy; dpkg -r bp-tool >/dev/null");
    std::fs::OpenOptions::new()
        .append(true)
        .open(root.path("/home/deploy/.ssh/authorized_keys"))
        .unwrap()
        .write_all(format!("{KEY_HAND}\n").as_bytes())
        .unwrap();
    let plan = root
        .bootplan(&["plan", "/etc/bootplan/plan.yaml"])
        .output()
        .unwrap();
    ok(&plan);
    let table = String::from_utf8_lossy(&plan.stdout);
    let row = |step: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{step} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("deploy-user").contains("change")
            && row("deploy-user").contains("shell differs (/bin/sh → /bin/bash)"),
        "{table}"
    );
    assert!(
        row("base").contains("would install bp-tool (1 of 2 packages installed)"),
        "{table}"
    );
    for step in ["admins", "name", "tuning", "app-unit", "host-keys"] {
        assert!(row(step).contains(" ok "), "{step} has no drift: {table}");
    }
    // The dry run changed nothing.
    assert!(root.sh("getent passwd deploy").trim().ends_with(":/bin/sh"));

    let third = root.run();
    ok(&third);
    assert!(
        said(&third, "deploy-user")
            .iter()
            .any(|l| l.contains("shell differs (/bin/sh → /bin/bash)"))
    );
    assert!(
        said(&third, "base")
            .iter()
            .any(|l| l.starts_with("changed: install bp-tool"))
    );
    for step in ["admins", "name", "tuning", "app-unit", "host-keys"] {
        assert!(
            said(&third, step)
                .iter()
                .any(|l| l.starts_with("up to date: ")),
            "{step}: {:?}",
            said(&third, step)
        );
    }
    assert!(
        root.sh("getent passwd deploy")
            .trim()
            .ends_with(":/bin/bash")
    );
    let keys = root.read("/home/deploy/.ssh/authorized_keys");
    assert!(
        keys.contains(KEY_HAND) && keys.contains(KEY_A),
        "the hand-added key survives: {keys}"
    );

    // A cloned disk (another machine id): new host keys.
    root.write("/etc/machine-id", "fedcba9876543210fedcba9876543210\n");
    let clone = root.run();
    ok(&clone);
    let new_fingerprint = root.sh("ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub");
    assert!(
        !new_fingerprint.contains(&fingerprint),
        "new keys on a clone"
    );
    assert!(
        said(&clone, "host-keys")
            .iter()
            .any(|l| l.contains("a cloned disk")),
        "{:?}",
        said(&clone, "host-keys")
    );
}

#[test]
fn a_symlink_planted_in_the_home_is_not_followed() {
    let Some(root) = Root::new() else { return };
    root.sh("useradd --create-home victim-target 2>/dev/null || true; mkdir -p -m 700 /root/.ssh; : > /root/.ssh/authorized_keys");
    let plan = |keys: &str| {
        format!(
            "version: 1\nname: links\nfacts: {{ provider: local }}\nsteps:\n  u:\n    user: {{ name: deploy, ssh_authorized_keys: [\"{keys}\"] }}\n"
        )
    };
    root.write("/etc/bootplan/plan.yaml", &plan(KEY_A));
    ok(&root.run());
    // The user replaces ~/.ssh with a link to root's.
    root.sh(
        "rm -rf /home/deploy/.ssh; su -s /bin/sh deploy -c 'ln -s /root/.ssh /home/deploy/.ssh'",
    );
    root.write(
        "/etc/bootplan/plan.yaml",
        &plan(KEY_HAND).replace("{ name: deploy,", "{ name: deploy, shell: /bin/bash,"),
    );
    let out = root.run();
    assert!(!out.status.success(), "{}", dump(&out));
    // What the failed attempt did before it failed is said.
    assert!(
        said(&out, "u")
            .iter()
            .any(|l| l.starts_with("changed: user deploy exists, shell differs")),
        "{:?}",
        said(&out, "u")
    );
    let step = &root.status()["steps"]["u"];
    assert_eq!(step["error"]["code"], "path.unsafe", "{step}");
    assert!(
        step["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("/home/deploy/.ssh"),
        "{step}"
    );
    assert_eq!(
        root.read("/root/.ssh/authorized_keys"),
        "",
        "root's keys were not touched"
    );
    // A link at authorized_keys itself is refused too.
    root.sh("rm /home/deploy/.ssh; su -s /bin/sh deploy -c 'mkdir /home/deploy/.ssh; ln -s /root/.ssh/authorized_keys /home/deploy/.ssh/authorized_keys'");
    let out = root.run();
    assert!(!out.status.success(), "{}", dump(&out));
    assert_eq!(root.status()["steps"]["u"]["error"]["code"], "path.unsafe");
    assert_eq!(root.read("/root/.ssh/authorized_keys"), "");
}

#[test]
fn a_bad_sudo_rule_never_reaches_sudoers_d() {
    let Some(root) = Root::new() else { return };
    root.write(
        "/etc/bootplan/plan.yaml",
        "version: 1\nname: sudo\nfacts: { provider: local }\nsteps:\n  u:\n    user: { name: deploy, sudo: [\"ALL=(ALL NOPASSWD: ALL\"] }\n",
    );
    let out = root.run();
    assert!(!out.status.success(), "{}", dump(&out));
    let step = &root.status()["steps"]["u"];
    assert_eq!(step["error"]["code"], "user.sudo_invalid", "{step}");
    assert!(
        step["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("visudo"),
        "{step}"
    );
    assert!(!root.path("/etc/sudoers.d/bootplan-deploy").exists());
    // Checked before anything changed: not even the account was made.
    assert_eq!(
        root.cmd(&["getent", "passwd", "deploy"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    let listing = root.sh("ls -A /etc/sudoers.d");
    assert!(!listing.contains("bootplan"), "{listing}");
}

#[test]
fn a_missing_package_fails_at_once_with_its_name() {
    let Some(mut root) = Root::new() else { return };
    let key = root.apt_repo(&["bp-hello"]);
    root.write(
        "/etc/bootplan/plan.yaml",
        &format!(
            "version: 1\nname: pkgs\nfacts: {{ provider: local }}\nsteps:\n  base:\n    packages:\n      install: [bp-hello, bp-nosuch]\n      repos:\n        - name: local\n          uri: \"http://127.0.0.1:8080/\"\n          suite: \"./\"\n          key: {}",
            block(&key, 12)
        ),
    );
    let out = root.run();
    assert!(!out.status.success(), "{}", dump(&out));
    let step = &root.status()["steps"]["base"];
    assert_eq!(step["error"]["code"], "packages.not_found", "{step}");
    assert!(
        step["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("bp-nosuch"),
        "{step}"
    );
    assert_eq!(step["attempts"], 1, "never retried: {step}");
}

#[test]
fn a_mirror_that_fails_once_is_retried() {
    let Some(mut root) = Root::new() else { return };
    let key = root.apt_repo_failing(&["bp-hello"], 1);
    root.write(
        "/etc/bootplan/plan.yaml",
        &format!(
            "version: 1\nname: mirror\nfacts: {{ provider: local }}\nsteps:\n  base:\n    packages:\n      install: [bp-hello]\n      repos:\n        - name: local\n          uri: \"http://127.0.0.1:8080/\"\n          suite: \"./\"\n          key: {}",
            block(&key, 12)
        ),
    );
    let out = root.run();
    ok(&out);
    let step = &root.status()["steps"]["base"];
    assert_eq!(step["attempts"], 2, "one failure, one retry: {step}");
    assert!(
        root.sh("dpkg-query -W -f '${Status}' bp-hello")
            .contains("install ok installed")
    );
}

#[test]
fn the_dpkg_lock_held_by_another_process_is_waited_for() {
    let Some(mut root) = Root::new() else { return };
    let key = root.apt_repo(&["bp-hello"]);
    root.write(
        "/etc/bootplan/plan.yaml",
        &format!(
            "version: 1\nname: lock\nfacts: {{ provider: local }}\nsteps:\n  base:\n    packages:\n      install: [bp-hello]\n      repos:\n        - name: local\n          uri: \"http://127.0.0.1:8080/\"\n          suite: \"./\"\n          key: {}    timeout: 120s\n",
            block(&key, 12)
        ),
    );
    // Another package manager holds dpkg's frontend lock (fcntl, as dpkg does).
    let mut holder = root
        .cmd(&[
            "python3",
            "-u",
            "-c",
            "import fcntl, sys\nf = open('/var/lib/dpkg/lock-frontend', 'w')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('locked')\nsys.stdin.read()\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");

    let mut run = root
        .bootplan(&["run", "/etc/bootplan/plan.yaml"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Until bootplan says it waits for the lock (or ends without saying so).
    for line in lines.by_ref() {
        let line = line.unwrap();
        let waiting =
            line.contains("waiting for the lock /var/lib/dpkg/lock-frontend held by process");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("waiting for the lock")),
        "bootplan said it waits: {seen:#?}"
    );
    assert_eq!(
        run.try_wait().unwrap(),
        None,
        "still waiting while the lock is held"
    );
    // The other process finishes.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    seen.extend(lines.map(|l| l.unwrap()));
    let status = run.wait().unwrap();
    assert!(status.success(), "{seen:#?}");
    assert!(
        root.sh("dpkg-query -W -f '${Status}' bp-hello")
            .contains("install ok installed")
    );
}

#[test]
fn a_command_run_as_a_user_has_its_ids_groups_umask_and_limits() {
    let Some(root) = Root::new() else { return };
    root.write(
        "/etc/bootplan/plan.yaml",
        r#"version: 1
name: drop
facts: { provider: local }
steps:
  admins:
    group: { name: admins, gid: 1600 }
  web:
    group: { name: web, gid: 1601 }
  deploy-user:
    user: { name: deploy, uid: 1500, groups: [admins, web] }
  probe:
    run: ["/bin/sh", "-c", "cat /proc/self/status /proc/self/limits > /tmp/probe; echo HOME=$HOME >> /tmp/probe"]
    user: deploy
    groups: [admins]
    umask: "0027"
    no_new_privs: true
    limits: { nofile: 1234, core: 0, nproc: "100:200" }
  app:
    exec: ["/bin/sh", "-c", "cat /proc/self/status /proc/self/limits"]
    user: deploy
    needs: [probe]
"#,
    );
    let out = root.run();
    ok(&out);
    let probe = root.read("/tmp/probe");
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert_eq!(field(&probe, "Uid:"), "1500 1500 1500 1500", "{probe}");
    assert_eq!(field(&probe, "Gid:"), "1500 1500 1500 1500", "{probe}");
    assert_eq!(
        field(&probe, "Groups:"),
        "1600",
        "exactly the groups asked for: {probe}"
    );
    assert_eq!(field(&probe, "Umask:"), "0027", "{probe}");
    assert_eq!(field(&probe, "NoNewPrivs:"), "1", "{probe}");
    assert_eq!(
        field(&probe, "Max open files"),
        "1234 1234 files",
        "{probe}"
    );
    assert_eq!(field(&probe, "Max core file size"), "0 0 bytes", "{probe}");
    assert_eq!(
        field(&probe, "Max processes"),
        "100 200 processes",
        "{probe}"
    );
    assert!(probe.contains("HOME=/home/deploy"), "{probe}");
    // The app (exec) with the user's own groups from the database.
    let app = String::from_utf8_lossy(&out.stdout);
    assert_eq!(field(&app, "Uid:"), "1500 1500 1500 1500", "{app}");
    assert_eq!(field(&app, "Groups:"), "1600 1601", "{app}");
    assert_eq!(field(&app, "NoNewPrivs:"), "0", "{app}");
}

#[test]
fn a_file_owned_by_a_user_waits_for_the_step_that_creates_the_user() {
    let Some(root) = Root::new() else { return };
    // The file step comes first in the plan and names no `needs`.
    root.write(
        "/etc/bootplan/plan.yaml",
        "version: 1\nname: order\nfacts: { provider: local }\nsteps:\n  config:\n    file: { path: /etc/app.conf, content: \"x\\n\", owner: deploy, mode: \"0600\" }\n  deploy-user:\n    user: { name: deploy }\n",
    );
    ok(&root.run());
    assert_eq!(root.sh("stat -c %U /etc/app.conf").trim(), "deploy");
}

#[test]
fn an_absent_user_is_removed_with_its_sudo_rules_and_its_home_kept() {
    let Some(root) = Root::new() else { return };
    let plan = |body: &str| {
        format!(
            "version: 1\nname: gone\nfacts: {{ provider: local }}\nsteps:\n  u:\n    user: {body}\n"
        )
    };
    root.write(
        "/etc/bootplan/plan.yaml",
        &plan("{ name: leaver, sudo: [\"ALL=(ALL) ALL\"] }"),
    );
    ok(&root.run());
    assert!(root.path("/etc/sudoers.d/bootplan-leaver").exists());
    root.write(
        "/etc/bootplan/plan.yaml",
        &plan("{ name: leaver, state: absent }"),
    );
    let out = root.run();
    ok(&out);
    assert!(
        said(&out, "u")
            .iter()
            .any(|l| l == "changed: remove user leaver (the home directory is kept)"),
        "{:?}",
        said(&out, "u")
    );
    assert!(
        root.cmd(&["getent", "passwd", "leaver"])
            .output()
            .unwrap()
            .status
            .code()
            == Some(2)
    );
    assert!(!root.path("/etc/sudoers.d/bootplan-leaver").exists());
    assert!(root.path("/home/leaver").is_dir());
    let again = root.run();
    ok(&again);
    assert_eq!(
        said(&again, "u"),
        ["up to date: user leaver does not exist"]
    );
}

#[test]
fn an_unknown_sysctl_key_applies_nothing() {
    let Some(root) = Root::new() else { return };
    let before = root.sh("cat /proc/sys/net/core/somaxconn");
    root.write(
        "/etc/bootplan/plan.yaml",
        "version: 1\nname: keys\nfacts: { provider: local }\nsteps:\n  tuning:\n    sysctl: { net.core.somaxconn: 777, net.core.no_such_key: 1 }\n",
    );
    let out = root.run();
    assert!(!out.status.success(), "{}", dump(&out));
    let step = &root.status()["steps"]["tuning"];
    assert_eq!(step["error"]["code"], "sysctl.unknown_key", "{step}");
    assert!(
        step["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("net.core.no_such_key"),
        "{step}"
    );
    assert_eq!(
        root.sh("cat /proc/sys/net/core/somaxconn"),
        before,
        "the valid key was not applied either"
    );
    assert!(!root.path("/etc/sysctl.d/90-bootplan-tuning.conf").exists());
}

#[test]
fn starting_a_unit_without_systemd_is_a_clear_error_after_the_offline_work() {
    let Some(root) = Root::new() else { return };
    root.write(
        "/etc/bootplan/plan.yaml",
        "version: 1\nname: unit\nfacts: { provider: local }\nsteps:\n  app:\n    unit:\n      name: bp-app.service\n      content: \"[Service]\\nExecStart=/bin/true\\n[Install]\\nWantedBy=multi-user.target\\n\"\n      enable: true\n      start: true\n",
    );
    let out = root.run();
    assert!(!out.status.success(), "{}", dump(&out));
    let step = &root.status()["steps"]["app"];
    assert_eq!(step["error"]["code"], "unit.no_systemd", "{step}");
    assert!(
        step["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("systemd is not running"),
        "{step}"
    );
    // What works offline was done.
    assert!(root.path("/etc/systemd/system/bp-app.service").exists());
    assert!(
        root.path("/etc/systemd/system/multi-user.target.wants/bp-app.service")
            .symlink_metadata()
            .is_ok()
    );
}

#[test]
fn a_service_is_stopped_with_its_stop_signal_as_its_user() {
    let Some(root) = Root::new() else { return };
    root.write(
        "/etc/bootplan/plan.yaml",
        r#"version: 1
name: stop
facts: { provider: local }
steps:
  svc-user:
    user: { name: svc, uid: 1700 }
  svc:
    service: ["/bin/sh", "-c", "trap 'echo \"INT $(id -u)\" > /tmp/stopped; exit 0' INT; trap 'echo TERM > /tmp/stopped; exit 0' TERM; touch /tmp/up; while :; do sleep 1 & wait; done"]
    user: svc
    stop_signal: SIGINT
    ready: { file: /tmp/up }
  fail:
    run: ["/bin/false"]
    needs: [svc]
"#,
    );
    let out = root.run();
    assert!(!out.status.success(), "{}", dump(&out));
    assert_eq!(root.read("/tmp/stopped"), "INT 1700\n", "{}", dump(&out));
}

#[test]
fn the_dry_run_of_a_fresh_machine_says_what_would_be_made_and_makes_nothing() {
    let Some(root) = Root::new() else { return };
    root.write(
        "/etc/bootplan/plan.yaml",
        "version: 1\nname: fresh\nfacts: { provider: local }\nsteps:\n  admins:\n    group: { name: admins, gid: 1600 }\n  u:\n    user: { name: deploy, groups: [admins], shell: /bin/bash }\n  name:\n    hostname: { name: web-9 }\n  tuning:\n    sysctl: { net.core.somaxconn: 999 }\n",
    );
    let plan = root
        .bootplan(&["plan", "/etc/bootplan/plan.yaml"])
        .output()
        .unwrap();
    ok(&plan);
    let table = String::from_utf8_lossy(&plan.stdout);
    for (step, text) in [
        ("admins", "would create group admins (gid 1600)"),
        ("u", "would create user deploy"),
        ("name", "would set the kernel host name"),
        ("tuning", "would set net.core.somaxconn"),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{step} ")))
            .unwrap_or_default();
        assert!(
            row.contains("change") && row.contains(text),
            "{step}: {table}"
        );
    }
    assert_eq!(
        root.cmd(&["getent", "group", "admins"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    assert_ne!(root.sh("hostname").trim(), "web-9");
    assert_ne!(root.sh("cat /proc/sys/net/core/somaxconn").trim(), "999");
}

#[test]
fn a_unit_from_a_template_and_a_drop_in_are_rewritten_only_when_they_differ() {
    let Some(root) = Root::new() else { return };
    root.write(
        "/etc/bootplan/app.service.j2",
        "[Service]\nExecStart=/usr/bin/app --port {{ vars.port }}\n[Install]\nWantedBy=multi-user.target\n",
    );
    let plan = |port: u32| {
        format!(
            "version: 1\nname: units\nfacts: {{ provider: local }}\nvars: {{ port: {port} }}\nsteps:\n  app:\n    unit: {{ name: app.service, src: app.service.j2, enable: true }}\n  limits:\n    unit: {{ name: app.service, dropin: limits.conf, content: \"[Service]\\nLimitNOFILE=65536\\n\" }}\n    needs: [app]\n"
        )
    };
    root.write("/etc/bootplan/plan.yaml", &plan(8080));
    ok(&root.run());
    assert!(
        root.read("/etc/systemd/system/app.service")
            .contains("--port 8080")
    );
    assert_eq!(
        root.read("/etc/systemd/system/app.service.d/limits.conf"),
        "[Service]\nLimitNOFILE=65536\n"
    );
    let again = root.run();
    ok(&again);
    assert!(
        said(&again, "app")
            .iter()
            .all(|l| l.starts_with("up to date: ")),
        "{:?}",
        said(&again, "app")
    );
    assert!(
        said(&again, "limits")
            .iter()
            .all(|l| l.starts_with("up to date: "))
    );
    root.write("/etc/bootplan/plan.yaml", &plan(9090));
    let changed = root.run();
    ok(&changed);
    assert_eq!(
        said(&changed, "app"),
        ["changed: write /etc/systemd/system/app.service"]
    );
    assert!(
        root.read("/etc/systemd/system/app.service")
            .contains("--port 9090")
    );
}

#[test]
fn every_invalid_os_field_is_reported_with_its_position_before_anything_runs() {
    // `bootplan check` only reads: this one runs on the test host itself.
    let sb = crate::harness::Sandbox::new();
    sb.plan(
        r#"version: 1
name: bad-os
secrets:
  x: { env: { name: X } }
steps:
  u:
    user: { name: "Bad Name", sudo: ["ALL=(ALL) ALL\nroot ALL=(ALL) ALL"], ssh_authorized_keys: ["not a key"] }
  p:
    packages: { install: ["-o=evil"], manager: yum }
  h:
    hostname: { name: "a.b" }
  s:
    sysctl: { "../../etc/x": 1 }
  r:
    run: ["true"]
    user: deploy
    umask: "0999"
  leak:
    hostname: { name: "{{ secrets.x }}" }
"#,
    );
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(crate::harness::code(&out), 65, "{}", dump(&out));
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "plan.yaml:7:13: steps.u.user.name: `Bad Name` is not a valid account name",
        "steps.u.user.sudo[0]: a sudo rule is one line",
        "steps.u.user.ssh_authorized_keys[0]: `not a key…` is not an SSH public key",
        "plan.yaml:9:17: steps.p.packages.install[0]: `-o=evil` is not a package name",
        "steps.p.packages.manager: unknown package manager `yum`",
        "steps.h.hostname.name: `a.b` is not a host name",
        "`../../etc/x` is not a sysctl key",
        "steps.r.umask: invalid umask `0999`",
        "steps.leak.hostname.name: this value ends up where every user can read it",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
