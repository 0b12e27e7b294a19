//! The users and groups database: lookups through NSS (what `id` and
//! `getent` see), changes through the system's own tools (`useradd`,
//! `usermod`, `userdel`, `groupadd`, `groupmod`, `groupdel`, `chpasswd -e`),
//! never by editing `/etc/passwd`, and files in a user's home written *as
//! that user* ([`as_user`]).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

use super::OsError;
use super::tool::{self, Tool};

/// Held while a tool changes the users and groups database: `useradd`
/// and its kin lock `/etc/passwd` without waiting long, so bootplan's own
/// account steps (which may run in parallel) take turns instead.
static CHANGING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this process's turn to change the users and groups database.
pub async fn changing() -> tokio::sync::MutexGuard<'static, ()> {
    CHANGING.lock().await
}

/// A user account as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The primary group's name (`None` when the gid has no group entry).
    pub group: Option<String>,
    /// Supplementary groups, sorted by name.
    pub groups: Vec<String>,
    pub home: PathBuf,
    pub shell: String,
    pub comment: String,
}

/// A group as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
}

fn lookup_error(what: &str, err: nix::Error) -> OsError {
    OsError::Read {
        path: PathBuf::from(format!("the {what} database")),
        source: err.into(),
    }
}

/// The account named `name`, if there is one.
pub fn user(name: &str) -> Result<Option<Account>, OsError> {
    let Some(user) = User::from_name(name).map_err(|e| lookup_error("user", e))? else {
        return Ok(None);
    };
    let group = Group::from_gid(user.gid)
        .map_err(|e| lookup_error("group", e))?
        .map(|g| g.name);
    let groups = supplementary(&user.name, user.gid)?;
    Ok(Some(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        group,
        groups,
        home: user.dir,
        shell: user.shell.to_string_lossy().into_owned(),
        comment: user.gecos.to_string_lossy().into_owned(),
    }))
}

/// The account with uid `uid`, if there is one.
pub fn user_by_uid(uid: u32) -> Result<Option<Account>, OsError> {
    match User::from_uid(Uid::from_raw(uid)).map_err(|e| lookup_error("user", e))? {
        Some(found) => user(&found.name),
        None => Ok(None),
    }
}

/// The group named `name`, if there is one.
pub fn group(name: &str) -> Result<Option<GroupEntry>, OsError> {
    Ok(Group::from_name(name)
        .map_err(|e| lookup_error("group", e))?
        .map(|g| GroupEntry {
            name: g.name,
            gid: g.gid.as_raw(),
        }))
}

/// The names of the groups `user` is a member of besides `primary`, sorted.
fn supplementary(user: &str, primary: Gid) -> Result<Vec<String>, OsError> {
    let ids = supplementary_gids(user, primary.as_raw())?;
    let mut names = Vec::new();
    for gid in ids {
        let name = Group::from_gid(Gid::from_raw(gid))
            .map_err(|e| lookup_error("group", e))?
            .map_or_else(|| gid.to_string(), |g| g.name);
        names.push(name);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The gids of the groups `user` is a member of besides `primary`
/// (`initgroups` semantics).
pub fn supplementary_gids(user: &str, primary: u32) -> Result<Vec<u32>, OsError> {
    let name = CString::new(user).map_err(|_| OsError::InvalidValue {
        what: "user".into(),
        message: "holds a NUL byte".into(),
    })?;
    let mut ids: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(primary))
        .map_err(|e| lookup_error("group", e))?
        .into_iter()
        .map(|g| g.as_raw())
        .filter(|g| *g != primary)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The password field of `name` in `/etc/shadow` (`!…` or `*` when locked),
/// or `None` when the file has no entry. Never logged.
pub fn shadow_hash(name: &str) -> Result<Option<zeroize::Zeroizing<String>>, OsError> {
    shadow_hash_in(Path::new("/etc/shadow"), name)
}

fn shadow_hash_in(path: &Path, name: &str) -> Result<Option<zeroize::Zeroizing<String>>, OsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => zeroize::Zeroizing::new(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    Ok(text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        (fields.next() == Some(name))
            .then(|| zeroize::Zeroizing::new(fields.next().unwrap_or("").to_string()))
    }))
}

/// What `useradd` is given for a new account.
#[derive(Debug, Clone, Default)]
pub struct NewUser<'a> {
    pub name: &'a str,
    pub uid: Option<u32>,
    pub group: Option<&'a str>,
    pub groups: &'a [String],
    pub shell: Option<&'a str>,
    pub home: Option<&'a str>,
    pub comment: Option<&'a str>,
    pub system: bool,
    pub create_home: bool,
}

/// `useradd` for `new`. The password stays locked (useradd's default).
pub fn useradd(new: &NewUser) -> Result<Tool, OsError> {
    let mut tool = Tool::new(tool::require(
        "useradd",
        "it creates user accounts (package passwd or shadow-utils)",
    )?);
    if let Some(uid) = new.uid {
        tool = tool.args(["--uid".to_string(), uid.to_string()]);
    }
    if let Some(group) = new.group {
        tool = tool.args(["--gid", group]);
    } else {
        tool = tool.arg("--user-group");
    }
    if !new.groups.is_empty() {
        tool = tool.args(["--groups".to_string(), new.groups.join(",")]);
    }
    if let Some(shell) = new.shell {
        tool = tool.args(["--shell", shell]);
    }
    if let Some(home) = new.home {
        tool = tool.args(["--home-dir", home]);
    }
    if let Some(comment) = new.comment {
        tool = tool.args(["--comment", comment]);
    }
    if new.system {
        tool = tool.arg("--system");
    }
    tool = tool.arg(if new.create_home {
        "--create-home"
    } else {
        "--no-create-home"
    });
    Ok(tool.arg("--").arg(new.name))
}

/// What `usermod` changes on an existing account (only the set fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub uid: Option<u32>,
    pub group: Option<String>,
    pub groups: Option<Vec<String>>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub comment: Option<String>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        *self == UserChanges::default()
    }
}

/// `usermod` for `changes` on `name`. A new home has the old one's
/// contents moved into it.
pub fn usermod(name: &str, changes: &UserChanges) -> Result<Tool, OsError> {
    let mut tool = Tool::new(tool::require(
        "usermod",
        "it changes user accounts (package passwd or shadow-utils)",
    )?);
    if let Some(uid) = changes.uid {
        tool = tool.args(["--uid".to_string(), uid.to_string()]);
    }
    if let Some(group) = &changes.group {
        tool = tool.args(["--gid", group.as_str()]);
    }
    if let Some(groups) = &changes.groups {
        // Exactly these (an empty list leaves none).
        tool = tool.args(["--groups".to_string(), groups.join(",")]);
    }
    if let Some(shell) = &changes.shell {
        tool = tool.args(["--shell", shell.as_str()]);
    }
    if let Some(home) = &changes.home {
        tool = tool.args(["--home", home.as_str(), "--move-home"]);
    }
    if let Some(comment) = &changes.comment {
        tool = tool.args(["--comment", comment.as_str()]);
    }
    Ok(tool.arg("--").arg(name))
}

/// `userdel NAME` (the home directory is kept).
pub fn userdel(name: &str) -> Result<Tool, OsError> {
    Ok(
        Tool::new(tool::require("userdel", "it removes user accounts")?)
            .arg("--")
            .arg(name),
    )
}

/// `chpasswd -e`, with `NAME:HASH` on its stdin (never on a command line).
pub fn chpasswd(name: &str, hash: &str) -> Result<Tool, OsError> {
    let line = format!("{name}:{hash}\n").into_bytes();
    Ok(
        Tool::new(tool::require("chpasswd", "it sets password hashes")?)
            .arg("--encrypted")
            .stdin(line),
    )
}

/// `groupadd` for a new group.
pub fn groupadd(name: &str, gid: Option<u32>, system: bool) -> Result<Tool, OsError> {
    let mut tool = Tool::new(tool::require("groupadd", "it creates groups")?);
    if let Some(gid) = gid {
        tool = tool.args(["--gid".to_string(), gid.to_string()]);
    }
    if system {
        tool = tool.arg("--system");
    }
    Ok(tool.arg("--").arg(name))
}

/// `groupmod --gid GID NAME`.
pub fn groupmod_gid(name: &str, gid: u32) -> Result<Tool, OsError> {
    Ok(
        Tool::new(tool::require("groupmod", "it changes groups")?).args([
            "--gid".to_string(),
            gid.to_string(),
            "--".into(),
            name.to_string(),
        ]),
    )
}

/// `groupdel NAME`.
pub fn groupdel(name: &str) -> Result<Tool, OsError> {
    Ok(Tool::new(tool::require("groupdel", "it removes groups")?)
        .arg("--")
        .arg(name))
}

/// `visudo -c -f -`, checking `text` given on its stdin.
pub fn visudo_check(text: &str) -> Result<Tool, OsError> {
    let visudo = tool::find("visudo").ok_or_else(|| OsError::ToolMissing {
        tool: "visudo".into(),
        purpose: "sudo rules are checked with `visudo -c` before they are written (install sudo)"
            .into(),
    })?;
    Ok(Tool::new(visudo)
        .args(["-c", "-f", "-"])
        .stdin(text.as_bytes().to_vec()))
}

/// Runs `work` with this thread's file-system identity set to `uid`/`gid`,
/// so every file it opens or creates is checked by the kernel as that
/// user's, and is owned by them: a link planted in the user's home leads
/// nowhere the user could not write anyway. Synchronous on purpose: the
/// identity belongs to the thread, and nothing else may run on it meanwhile.
pub fn as_user<T>(uid: u32, gid: u32, work: impl FnOnce() -> T) -> Result<T, OsError> {
    struct Restore {
        uid: Uid,
        gid: Gid,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            nix::unistd::setfsuid(self.uid);
            nix::unistd::setfsgid(self.gid);
        }
    }
    let unchanged = |what: &str| OsError::NotRoot {
        user: format!("{what} {uid}:{gid}"),
        euid: nix::unistd::geteuid().as_raw(),
    };
    // The gid first: once the uid is the user's, changing it is not allowed.
    let old_gid = nix::unistd::setfsgid(Gid::from_raw(gid));
    let old_uid = nix::unistd::setfsuid(Uid::from_raw(uid));
    let restore = Restore {
        uid: old_uid,
        gid: old_gid,
    };
    // setfsuid reports no error; asking again (with an invalid id, which
    // changes nothing) tells what it is now.
    if nix::unistd::setfsuid(Uid::from_raw(u32::MAX)).as_raw() != uid
        || nix::unistd::setfsgid(Gid::from_raw(u32::MAX)).as_raw() != gid
    {
        drop(restore);
        return Err(unchanged("the file-system identity"));
    }
    let result = work();
    drop(restore);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_fields_are_read_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shadow");
        std::fs::write(
            &path,
            "root:*:19000:0:99999:7:::\ndeploy:$y$j9T$abc$def:19000::::::\nlocked:!:1::::::\n",
        )
        .unwrap();
        assert_eq!(
            shadow_hash_in(&path, "deploy")
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("$y$j9T$abc$def")
        );
        assert!(
            shadow_hash_in(&path, "locked")
                .unwrap()
                .unwrap()
                .starts_with('!')
        );
        assert!(shadow_hash_in(&path, "nobody").unwrap().is_none());
        assert!(
            shadow_hash_in(&dir.path().join("none"), "x")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn tools_get_argv_not_a_shell_line() {
        if tool::find("useradd").is_none() {
            return;
        }
        let groups = vec!["admins".to_string(), "web".to_string()];
        let tool = useradd(&NewUser {
            name: "deploy",
            uid: Some(1500),
            groups: &groups,
            shell: Some("/bin/bash"),
            create_home: true,
            ..NewUser::default()
        })
        .unwrap();
        assert_eq!(
            tool.display(),
            "useradd --uid 1500 --user-group --groups admins,web --shell /bin/bash --create-home -- deploy"
        );
        let tool = usermod(
            "deploy",
            &UserChanges {
                groups: Some(Vec::new()),
                shell: Some("/bin/sh".into()),
                ..UserChanges::default()
            },
        )
        .unwrap();
        assert_eq!(
            tool.display(),
            "usermod --groups  --shell /bin/sh -- deploy"
        );
        let tool = chpasswd("deploy", "$y$secret").unwrap();
        assert!(!tool.display().contains("secret"), "{}", tool.display());
    }

    #[test]
    fn as_user_changes_the_identity_files_are_made_with_and_restores_it() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // A directory only root may enter: as nobody, nothing is written there.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let refused = as_user(65534, 65534, || std::fs::write(dir.path().join("x"), b"x")).unwrap();
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied
        );
        // Back to root: it can.
        std::fs::write(dir.path().join("x"), b"x").unwrap();
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            open.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        as_user(65534, 65534, || std::fs::write(open.path().join("y"), b"y"))
            .unwrap()
            .unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(open.path().join("y")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
}
