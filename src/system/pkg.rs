//! Package managers: which one the machine has (apt, dnf, zypper, apk),
//! what is installed (one query of the package database, no index
//! refresh), the one transaction that installs and removes, index
//! refreshes, repository files with their signing keys, waiting for the
//! manager's lock, and telling a transient failure (a mirror) from a
//! permanent one (no such package).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::OsError;
use super::tool::{self, Ran, Tool};
use crate::plan::os::{ManagerChoice, RepoSpec};

/// A package manager bootplan drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Apt,
    Dnf,
    Zypper,
    Apk,
}

impl Manager {
    pub fn name(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Zypper => "zypper",
            Manager::Apk => "apk",
        }
    }

    /// The program that runs transactions.
    fn program(self) -> &'static str {
        match self {
            Manager::Apt => "apt-get",
            Manager::Dnf => "dnf",
            Manager::Zypper => "zypper",
            Manager::Apk => "apk",
        }
    }
}

/// The manager `choice` names, or the one installed (apt, dnf, zypper,
/// apk, in that order).
pub fn detect(choice: ManagerChoice) -> Result<Manager, OsError> {
    let wanted = match choice {
        ManagerChoice::Apt => Some(Manager::Apt),
        ManagerChoice::Dnf => Some(Manager::Dnf),
        ManagerChoice::Zypper => Some(Manager::Zypper),
        ManagerChoice::Apk => Some(Manager::Apk),
        ManagerChoice::Auto => None,
    };
    let installed = |m: Manager| {
        tool::find(m.program()).is_some()
            && (m != Manager::Apt || tool::find("dpkg-query").is_some())
    };
    match wanted {
        Some(m) if installed(m) => Ok(m),
        Some(m) => Err(OsError::ToolMissing {
            tool: m.program().into(),
            purpose: format!("the step asks for {}", m.name()),
        }),
        None => [Manager::Apt, Manager::Dnf, Manager::Zypper, Manager::Apk]
            .into_iter()
            .find(|m| installed(*m))
            .ok_or_else(|| OsError::ToolMissing {
                tool: "a package manager".into(),
                purpose: "no apt-get, dnf, zypper or apk in /usr/sbin, /usr/bin, /sbin or /bin"
                    .into(),
            }),
    }
}

/// A requested package: a name and an optional version pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// As written (`jq=1.6*`), for messages.
    pub spec: String,
    /// The name the database knows (`jq`, `libc6:amd64`).
    pub name: String,
    /// The version pattern (`1.6*`), if any.
    pub version: Option<String>,
}

impl Request {
    pub fn parse(spec: &str) -> Request {
        let (name, version) = match spec.split_once('=') {
            Some((name, version)) => (name, Some(version.to_string())),
            None => (spec, None),
        };
        Request {
            spec: spec.to_string(),
            name: name.to_string(),
            version,
        }
    }

    /// Whether `installed` (a version, when installed) satisfies this.
    pub fn satisfied_by(&self, installed: Option<&str>) -> bool {
        match (installed, &self.version) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(have), Some(pattern)) => glob(pattern, have),
        }
    }

    /// The argument the manager is given to install it.
    fn install_arg(&self, manager: Manager) -> String {
        match (&self.version, manager) {
            (None, _) => self.name.clone(),
            // dnf takes NAME-VERSION (with its own globs).
            (Some(v), Manager::Dnf) => format!("{}-{v}", self.name),
            (Some(v), _) => format!("{}={v}", self.name),
        }
    }
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Installed versions of the packages asked about: name → version.
pub type Installed = BTreeMap<String, String>;

/// The one database query: which of `names` are installed, at what version.
pub async fn installed(
    sys: &super::Sys<'_>,
    manager: Manager,
    names: &[&str],
) -> Result<Installed, OsError> {
    if names.is_empty() {
        return Ok(Installed::new());
    }
    match manager {
        Manager::Apt => {
            let tool = Tool::new(tool::require(
                "dpkg-query",
                "it reads the package database",
            )?)
            .args([
                "--show",
                "--showformat=${binary:Package}\\t${Package}\\t${db:Status-Abbrev}\\t${Version}\\n",
                "--",
            ])
            .args(names.iter().copied());
            // Exit status 1 only says some names are unknown to dpkg.
            let ran = sys.query(&tool).await?;
            if !matches!(ran.status.code(), Some(0 | 1)) {
                return Err(ran.failure(crate::error::ErrorCode::PackagesFailed));
            }
            Ok(parse_dpkg_query(&ran.stdout))
        }
        Manager::Dnf | Manager::Zypper => {
            let tool = Tool::new(tool::require("rpm", "it reads the package database")?)
                .args([
                    "--query",
                    "--queryformat",
                    "%{NAME}\\t%{VERSION}-%{RELEASE}\\n",
                    "--",
                ])
                .args(names.iter().copied());
            let ran = sys.query(&tool).await?;
            Ok(parse_rpm_query(&ran.stdout))
        }
        Manager::Apk => {
            let path = Path::new("/lib/apk/db/installed");
            let text = std::fs::read_to_string(path).map_err(|source| OsError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let mut found = parse_apk_installed(&text);
            found.retain(|name, _| names.contains(&name.as_str()));
            Ok(found)
        }
    }
}

/// `dpkg-query` lines `BINARY\tNAME\tSTATUS\tVERSION`: packages whose
/// status is installed (`ii`, `hi`, or triggers pending), under both names.
fn parse_dpkg_query(text: &str) -> Installed {
    let mut found = Installed::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [binary, name, status, version] = fields[..] else {
            continue;
        };
        let installed = status
            .chars()
            .nth(1)
            .is_some_and(|c| matches!(c, 'i' | 'W' | 't'));
        if installed && !version.is_empty() {
            found.insert(binary.to_string(), version.to_string());
            found.insert(name.to_string(), version.to_string());
        }
    }
    found
}

/// `rpm -q` lines `NAME\tVERSION-RELEASE` (other lines say "not installed").
fn parse_rpm_query(text: &str) -> Installed {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// apk's database: `P:name` and `V:version` lines per package.
fn parse_apk_installed(text: &str) -> Installed {
    let mut found = Installed::new();
    let mut name: Option<&str> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("P:") {
            name = Some(n);
        } else if let (Some(v), Some(n)) = (line.strip_prefix("V:"), name) {
            found.insert(n.to_string(), v.to_string());
        } else if line.is_empty() {
            name = None;
        }
    }
    found
}

/// Environment every transaction runs with: nothing asks a question.
fn quiet_env(tool: Tool) -> Tool {
    tool.env("DEBIAN_FRONTEND", "noninteractive")
        .env("APT_LISTCHANGES_FRONTEND", "none")
        .env("NEEDRESTART_MODE", "a")
        .env("UCF_FORCE_CONFFOLD", "1")
}

/// The options that make apt-get wait up to `lock_wait` seconds for the
/// dpkg lock, keep old config files, never use a pty, and leave retries to
/// bootplan (so each is visible, with backoff).
fn apt_options(lock_wait: u64) -> Vec<String> {
    [
        "-q".to_string(),
        "-y".to_string(),
        "-o".to_string(),
        format!("DPkg::Lock::Timeout={lock_wait}"),
        "-o".to_string(),
        "Dpkg::Use-Pty=0".to_string(),
        "-o".to_string(),
        "Acquire::Retries=0".to_string(),
        "-o".to_string(),
        "Dpkg::Options::=--force-confdef".to_string(),
        "-o".to_string(),
        "Dpkg::Options::=--force-confold".to_string(),
    ]
    .into()
}

/// The transaction(s) for `install` and `remove`: one for apt and zypper
/// (removals as `NAME-` / `-NAME` in the same command); dnf and apk get a
/// second command for the removals.
pub fn transaction(
    manager: Manager,
    install: &[&Request],
    remove: &[&Request],
    lock_wait: u64,
) -> Result<Vec<Tool>, OsError> {
    let program = tool::require(manager.program(), "it installs packages")?;
    let base = quiet_env(Tool::new(program));
    let installs: Vec<String> = install.iter().map(|r| r.install_arg(manager)).collect();
    let removes: Vec<&str> = remove.iter().map(|r| r.name.as_str()).collect();
    let versioned = install.iter().any(|r| r.version.is_some());
    let tools = match manager {
        Manager::Apt => {
            let mut tool = base.args(apt_options(lock_wait));
            if versioned {
                // A pinned version may be older than the installed one.
                tool = tool.arg("--allow-downgrades");
            }
            let tool = if installs.is_empty() {
                tool.arg("remove").args(removes.iter().copied())
            } else {
                tool.arg("install")
                    .args(installs)
                    .args(removes.iter().map(|r| format!("{r}-")))
            };
            vec![tool]
        }
        Manager::Zypper => {
            let tool = base
                .env("ZYPP_LOCK_TIMEOUT", lock_wait.to_string())
                .args(["--non-interactive", "install", "--auto-agree-with-licenses"])
                .args(installs)
                .args(removes.iter().map(|r| format!("-{r}")));
            vec![tool]
        }
        Manager::Dnf => {
            let mut tools = Vec::new();
            if !installs.is_empty() {
                tools.push(base.clone().args(["-y", "install"]).args(installs));
            }
            if !removes.is_empty() {
                tools.push(base.args(["-y", "remove"]).args(removes.iter().copied()));
            }
            tools
        }
        Manager::Apk => {
            let wait = lock_wait.to_string();
            let mut tools = Vec::new();
            if !installs.is_empty() {
                tools.push(
                    base.clone()
                        .args(["add", "--wait", wait.as_str()])
                        .args(installs),
                );
            }
            if !removes.is_empty() {
                tools.push(
                    base.args(["del", "--wait", wait.as_str()])
                        .args(removes.iter().copied()),
                );
            }
            tools
        }
    };
    Ok(tools)
}

/// The index refresh (`apt-get update`, …).
pub fn refresh(manager: Manager, lock_wait: u64) -> Result<Tool, OsError> {
    let program = tool::require(manager.program(), "it refreshes package indexes")?;
    let base = quiet_env(Tool::new(program));
    Ok(match manager {
        Manager::Apt => base.args(apt_options(lock_wait)).arg("update"),
        Manager::Dnf => base.args(["-y", "makecache"]),
        Manager::Zypper => base
            .env("ZYPP_LOCK_TIMEOUT", lock_wait.to_string())
            .args(["--non-interactive", "refresh"]),
        Manager::Apk => base.args(["update", "--wait", &lock_wait.to_string()]),
    })
}

/// Whether an index refresh left indexes out: apt-get update ends with
/// status 0 after "W: Failed to fetch …" (a mirror that answered 503 or
/// was out of sync), and a package of that repository would then look
/// missing. Such a refresh is a transient failure, retried.
pub fn refresh_failure(manager: Manager, ran: &Ran) -> Option<OsError> {
    if !ran.success() {
        return Some(classify(manager, ran, &[]));
    }
    let text = format!("{}\n{}", ran.stderr, ran.stdout);
    let partial = text.lines().map(str::trim).find(|l| {
        l.starts_with("W: Failed to fetch")
            || l.starts_with("W: Some index files failed to download")
    })?;
    Some(OsError::PackagesFailed {
        manager: manager.name(),
        transient: true,
        reason: format!("the index refresh was incomplete: {partial}"),
    })
}

/// Whether apt has an index of the repository at `uri` (a file in
/// `/var/lib/apt/lists` named after it): a refresh that failed, or a run
/// killed between writing the repository and refreshing, leaves none, and
/// the next attempt refreshes. Other managers refresh by themselves.
pub fn repo_indexed(manager: Manager, uri: &str) -> bool {
    if manager != Manager::Apt {
        return true;
    }
    let prefix = list_prefix(uri);
    std::fs::read_dir("/var/lib/apt/lists").is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // A `file:` repository's lists start with `_`.
            name.trim_start_matches('_').starts_with(&prefix)
                && (name.ends_with("Release") || name.ends_with("Packages"))
        })
    })
}

/// How apt names the index files of a repository: its URI without the
/// scheme, `/` as `_` (`http://127.0.0.1:8080/` → `127.0.0.1:8080`).
fn list_prefix(uri: &str) -> String {
    let bare = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let bare = bare.strip_prefix("file:").unwrap_or(bare);
    bare.trim_matches('/').replace('/', "_")
}

/// Whether the manager has no package indexes at all (a fresh image):
/// then they are refreshed before an install, whatever `update` says.
pub fn has_no_indexes(manager: Manager) -> bool {
    let dir = match manager {
        Manager::Apt => Path::new("/var/lib/apt/lists"),
        Manager::Dnf | Manager::Zypper | Manager::Apk => return false,
    };
    match std::fs::read_dir(dir) {
        Ok(entries) => !entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with("Packages") || name.contains("_Packages")
        }),
        Err(_) => true,
    }
}

/// A file a repository needs: path, content, mode.
pub type RepoFile = (PathBuf, Vec<u8>, u32);

/// The files that describe `repo` (already rendered and checked) to
/// `manager`: its source entry and its key.
pub fn repo_files(manager: Manager, repo: &RepoSpec) -> Vec<RepoFile> {
    let name = &repo.name;
    let mut files = Vec::new();
    match manager {
        Manager::Apt => {
            let key_path = PathBuf::from(format!("/etc/apt/keyrings/{name}.asc"));
            let mut entry = format!(
                "# Written by bootplan: repository `{name}`.\nTypes: deb\nURIs: {}\nSuites: {}\n",
                repo.uri,
                repo.suite.as_deref().unwrap_or("./")
            );
            if !repo.components.is_empty() {
                entry.push_str(&format!("Components: {}\n", repo.components.join(" ")));
            }
            if let Some(key) = &repo.key {
                entry.push_str(&format!("Signed-By: {}\n", key_path.display()));
                files.push((key_path, ensure_newline(key), 0o644));
            }
            files.push((
                PathBuf::from(format!("/etc/apt/sources.list.d/{name}.sources")),
                entry.into_bytes(),
                0o644,
            ));
        }
        Manager::Dnf | Manager::Zypper => {
            let key_path = PathBuf::from(format!("/etc/pki/rpm-gpg/RPM-GPG-KEY-{name}"));
            let dir = match manager {
                Manager::Zypper => "/etc/zypp/repos.d",
                _ => "/etc/yum.repos.d",
            };
            let mut entry = format!(
                "# Written by bootplan: repository `{name}`.\n[{name}]\nname={name}\nbaseurl={}\nenabled=1\ngpgcheck=1\n",
                repo.uri
            );
            if manager == Manager::Zypper {
                entry.push_str("type=rpm-md\nautorefresh=1\n");
            }
            if let Some(key) = &repo.key {
                entry.push_str(&format!("gpgkey=file://{}\n", key_path.display()));
                files.push((key_path, ensure_newline(key), 0o644));
            }
            files.push((
                PathBuf::from(format!("{dir}/{name}.repo")),
                entry.into_bytes(),
                0o644,
            ));
        }
        Manager::Apk => {
            if let Some(key) = &repo.key {
                files.push((
                    PathBuf::from(format!("/etc/apk/keys/{name}.rsa.pub")),
                    ensure_newline(key),
                    0o644,
                ));
            }
        }
    }
    files
}

fn ensure_newline(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes
}

/// apk keeps repositories as lines of one file: `text` with `uri` in it.
pub fn apk_repositories(text: &str, uri: &str) -> Option<String> {
    if text.lines().any(|l| l.trim() == uri) {
        return None;
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(uri);
    out.push('\n');
    Some(out)
}

/// The dpkg lock files a frontend takes, in order.
const DPKG_LOCKS: [&str; 2] = ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"];

/// The pid holding the package manager's lock right now, if any (a
/// read-only `F_GETLK`; nothing is locked). Only apt's is known.
pub fn lock_holder(manager: Manager) -> Option<(u32, &'static str)> {
    if manager != Manager::Apt {
        return None;
    }
    DPKG_LOCKS
        .iter()
        .find_map(|path| fcntl_holder(Path::new(path)).map(|pid| (pid, *path)))
}

fn fcntl_holder(path: &Path) -> Option<u32> {
    let file = std::fs::File::open(path).ok()?;
    let mut lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let asked = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETLK(&mut lock));
    (asked.is_ok() && lock.l_type != libc::F_UNLCK as libc::c_short && lock.l_pid > 0)
        .then_some(lock.l_pid as u32)
}

/// What a failed transaction means: a package the manager does not know
/// (never retried), a mirror problem (retried), or another failure.
pub fn classify(manager: Manager, ran: &Ran, requested: &[&Request]) -> OsError {
    let text = format!("{}\n{}", ran.stderr, ran.stdout);
    if let Some((package, reason)) = not_found(manager, &text, requested) {
        return OsError::PackageNotFound {
            manager: manager.name(),
            package,
            reason,
        };
    }
    let transient_marks = [
        "Hash Sum mismatch",
        "Hashes do not match",
        "Failed to fetch",
        "Temporary failure resolving",
        "Could not resolve",
        "Could not connect",
        "Connection failed",
        "Connection timed out",
        "Unable to connect",
        "Some index files failed to download",
        "Unable to fetch some archives",
        "Curl error",
        "Cannot download",
        "Failed to download",
        "Download (curl) error",
        "Timeout was reached",
        "network error",
        "temporary error",
        "File has unexpected size",
        "Clearsigned file isn't valid",
        "Mirror sync in progress",
    ];
    let transient = transient_marks.iter().any(|m| text.contains(m));
    let mut reason = error_lines(&text);
    if reason.is_empty() {
        reason = format!("{}{}", ran.status_text(), ran.detail());
    }
    OsError::PackagesFailed {
        manager: manager.name(),
        transient,
        reason,
    }
}

/// The manager's error lines (`E: …`, `Error: …`), joined.
fn error_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("E: ")
                || l.starts_with("Error: ")
                || l.starts_with("ERROR: ")
                || l.starts_with("error: ")
        })
        .collect();
    let mut seen = Vec::new();
    for line in lines {
        if !seen.contains(&line) {
            seen.push(line);
        }
    }
    seen.join("; ")
}

/// The first requested package the output says does not exist, and why.
fn not_found(manager: Manager, text: &str, requested: &[&Request]) -> Option<(String, String)> {
    for line in text.lines().map(str::trim) {
        let named = match manager {
            Manager::Apt => line
                .strip_prefix("E: Unable to locate package ")
                .map(str::to_string)
                .or_else(|| {
                    line.strip_prefix("E: Package '")
                        .filter(|rest| rest.contains("has no installation candidate"))
                        .and_then(|rest| rest.split('\'').next())
                        .map(str::to_string)
                })
                .or_else(|| {
                    // E: Version '9.9' for 'jq' was not found
                    line.strip_prefix("E: Version '")
                        .filter(|rest| rest.contains("was not found"))
                        .and_then(|rest| rest.split('\'').nth(2))
                        .map(str::to_string)
                }),
            Manager::Dnf => line
                .strip_prefix("No match for argument: ")
                .or_else(|| line.strip_prefix("Error: Unable to find a match: "))
                .map(str::to_string),
            Manager::Zypper => line
                .strip_prefix("No provider of '")
                .and_then(|rest| rest.split('\'').next())
                .or_else(|| {
                    line.strip_prefix("Package '")
                        .filter(|rest| rest.contains("not found"))
                        .and_then(|rest| rest.split('\'').next())
                })
                .map(str::to_string),
            Manager::Apk => line
                .strip_prefix("ERROR: unable to select packages:")
                .map(|_| String::new())
                .or_else(|| {
                    line.split_once(" (no such package)")
                        .map(|(name, _)| name.trim().to_string())
                }),
        };
        let Some(named) = named else { continue };
        let named = named.trim().to_string();
        let package = requested
            .iter()
            .find(|r| {
                r.name == named || r.spec == named || named.starts_with(&format!("{}=", r.name))
            })
            .map_or(named, |r| r.spec.clone());
        if package.is_empty() {
            continue;
        }
        return Some((package, line.to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_versions() {
        assert!(glob("1.6*", "1.6-2"));
        assert!(glob("1.6*", "1.6"));
        assert!(!glob("1.6*", "1.7-1"));
        assert!(glob("1.?-*", "1.6-2+deb12u1"));
        assert!(glob("*", ""));
        assert!(!glob("1.6", "1.6-2"));
        assert!(glob("*deb12*", "1.6-2+deb12u1"));
    }

    #[test]
    fn dpkg_status_decides_installed() {
        let text = "jq\tjq\tii \t1.6-2.1\nnginx\tnginx\trc \t1.22\nlibc6:amd64\tlibc6\tii \t2.36\nx\tx\tiU \t1\n";
        let found = parse_dpkg_query(text);
        assert_eq!(found.get("jq").map(String::as_str), Some("1.6-2.1"));
        assert!(!found.contains_key("nginx"), "config files only");
        assert!(!found.contains_key("x"), "unpacked, not configured");
        assert!(found.contains_key("libc6") && found.contains_key("libc6:amd64"));
        let wanted = Request::parse("jq=1.6*");
        assert!(wanted.satisfied_by(found.get("jq").map(String::as_str)));
        assert!(!Request::parse("jq=1.7*").satisfied_by(Some("1.6-2.1")));
    }

    #[test]
    fn apk_and_rpm_databases() {
        let apk = "C:x\nP:jq\nV:1.6-r1\nA:x86_64\n\nP:curl\nV:8.0-r0\n";
        let found = parse_apk_installed(apk);
        assert_eq!(found.get("jq").map(String::as_str), Some("1.6-r1"));
        assert_eq!(found.get("curl").map(String::as_str), Some("8.0-r0"));
        let rpm = "jq\t1.6-9.el9\npackage nosuch is not installed\n";
        let found = parse_rpm_query(rpm);
        assert_eq!(found.len(), 1);
    }

    fn ran(stderr: &str, code: i32) -> Ran {
        use std::os::unix::process::ExitStatusExt;
        Ran {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: String::new(),
            stderr: stderr.to_string(),
            command: "apt-get install".into(),
        }
    }

    #[test]
    fn partial_refreshes_are_transient_and_lists_are_found_by_uri() {
        let partial = ran(
            "W: Failed to fetch http://127.0.0.1:8080/./InRelease  503  mirror sync in progress\nW: Some index files failed to download.",
            0,
        );
        let err = refresh_failure(Manager::Apt, &partial).expect("a failure");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("503"), "{err}");
        assert!(
            refresh_failure(
                Manager::Apt,
                &ran("Hit:1 http://deb.debian.org bookworm InRelease", 0)
            )
            .is_none()
        );
        assert_eq!(list_prefix("http://127.0.0.1:8080/"), "127.0.0.1:8080");
        assert_eq!(
            list_prefix("https://apt.example.com/debian"),
            "apt.example.com_debian"
        );
        assert_eq!(list_prefix("file:/srv/repo"), "srv_repo");
    }

    #[test]
    fn failures_are_told_apart() {
        let jq = Request::parse("jq=9.9");
        let nope = Request::parse("nosuch");
        let requested = [&jq, &nope];
        let err = classify(
            Manager::Apt,
            &ran("E: Unable to locate package nosuch\n", 100),
            &requested,
        );
        assert!(
            matches!(&err, OsError::PackageNotFound { package, .. } if package == "nosuch"),
            "{err}"
        );
        assert!(!err.is_retryable());
        let err = classify(
            Manager::Apt,
            &ran("E: Version '9.9' for 'jq' was not found\n", 100),
            &requested,
        );
        assert!(
            matches!(&err, OsError::PackageNotFound { package, .. } if package == "jq=9.9"),
            "{err}"
        );
        let err = classify(
            Manager::Apt,
            &ran(
                "E: Failed to fetch http://127.0.0.1/pool/a.deb  Hash Sum mismatch\n",
                100,
            ),
            &requested,
        );
        assert!(
            matches!(
                err,
                OsError::PackagesFailed {
                    transient: true,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_retryable());
        assert_eq!(err.code(), crate::error::ErrorCode::PackagesUnavailable);
        let err = classify(
            Manager::Apt,
            &ran(
                "E: Sub-process /usr/bin/dpkg returned an error code (1)\n",
                100,
            ),
            &requested,
        );
        assert!(
            matches!(
                err,
                OsError::PackagesFailed {
                    transient: false,
                    ..
                }
            ),
            "{err}"
        );
        let err = classify(
            Manager::Dnf,
            &ran(
                "No match for argument: nosuch\nError: Unable to find a match: nosuch\n",
                1,
            ),
            &requested,
        );
        assert!(
            matches!(&err, OsError::PackageNotFound { package, .. } if package == "nosuch"),
            "{err}"
        );
    }

    #[test]
    fn repository_files_use_the_modern_forms() {
        let repo = RepoSpec {
            name: "vendor".into(),
            uri: "https://apt.example.com/debian".into(),
            suite: Some("bookworm".into()),
            components: vec!["main".into(), "extra".into()],
            key: Some(
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\n-----END PGP PUBLIC KEY BLOCK-----"
                    .into(),
            ),
        };
        let files = repo_files(Manager::Apt, &repo);
        let sources = String::from_utf8(files[1].1.clone()).unwrap();
        assert_eq!(
            files[1].0,
            PathBuf::from("/etc/apt/sources.list.d/vendor.sources")
        );
        assert!(sources.contains("URIs: https://apt.example.com/debian\nSuites: bookworm\nComponents: main extra\nSigned-By: /etc/apt/keyrings/vendor.asc\n"), "{sources}");
        let files = repo_files(Manager::Dnf, &repo);
        let entry = String::from_utf8(files[1].1.clone()).unwrap();
        assert!(
            entry.contains("[vendor]\n")
                && entry
                    .contains("gpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-vendor\n"),
            "{entry}"
        );
        assert_eq!(apk_repositories("a\n", "b").as_deref(), Some("a\nb\n"));
        assert_eq!(apk_repositories("a\nb\n", "b"), None);
    }

    #[test]
    fn one_transaction_installs_and_removes() {
        if tool::find("apt-get").is_none() {
            return;
        }
        let (a, b, c) = (
            Request::parse("nginx"),
            Request::parse("jq=1.6*"),
            Request::parse("telnet"),
        );
        let tools = transaction(Manager::Apt, &[&a, &b], &[&c], 30).unwrap();
        assert_eq!(tools.len(), 1);
        let line = tools[0].display();
        assert!(line.contains("DPkg::Lock::Timeout=30"), "{line}");
        assert!(
            line.ends_with("--allow-downgrades install nginx jq=1.6* telnet-"),
            "{line}"
        );
    }
}
