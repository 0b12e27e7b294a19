//! `user`: the account (`useradd`/`usermod`/`userdel`), its password hash
//! (`chpasswd -e`), its sudo rules (one fragment in `/etc/sudoers.d`,
//! checked by `visudo -c` before it is moved into place) and its SSH keys
//! (a block of their own in `~/.ssh/authorized_keys`, written as the user
//! and never through a link).

use std::path::{Path, PathBuf};

use super::{Env, Report};
use crate::error::ErrorCode;
use crate::fsutil;
use crate::plan::os::{Presence, UserSpec, syntax};
use crate::steps::StepError;
use crate::system::{OsError, accounts, ssh};

/// Where a user's sudo rules live. sudo reads every file in the directory
/// whose name has no `.` and does not end in `~`.
fn sudoers_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/sudoers.d/bootplan-{name}"))
}

/// The rendered, checked fields.
struct Wanted {
    name: String,
    group: Option<String>,
    groups: Option<Vec<String>>,
    shell: Option<String>,
    home: Option<String>,
    comment: Option<String>,
    /// `None` in a dry run when it needs a secret.
    password_hash: Option<Option<zeroize::Zeroizing<String>>>,
    sudo: Vec<String>,
    keys: Vec<String>,
}

fn wanted(spec: &UserSpec, env: &Env<'_>) -> Result<Wanted, StepError> {
    let r = env.render;
    let name = r.checked(&spec.name, "user.name", syntax::account_name)?;
    let opt = |value: &Option<String>, what: &str, check: fn(&str) -> Result<(), String>| {
        value
            .as_deref()
            .map(|v| r.checked(v, what, check))
            .transpose()
    };
    let group = opt(&spec.group, "user.group", syntax::account_name)?;
    let shell = opt(&spec.shell, "user.shell", syntax::passwd_path)?;
    let home = opt(&spec.home, "user.home", syntax::passwd_path)?;
    let comment = opt(&spec.comment, "user.comment", syntax::comment)?;
    let groups = spec
        .groups
        .as_ref()
        .map(|groups| {
            let mut names = groups
                .iter()
                .enumerate()
                .map(|(i, g)| r.checked(g, &format!("user.groups[{i}]"), syntax::account_name))
                .collect::<Result<Vec<_>, _>>()?;
            names.sort();
            names.dedup();
            Ok::<_, StepError>(names)
        })
        .transpose()?;
    let password_hash = match &spec.password_hash {
        None => Some(None),
        Some(text) => match r.secret_text(text, "user.password_hash")? {
            None => None,
            Some(hash) => {
                let hash = zeroize::Zeroizing::new(hash);
                crate::system::checked("user.password_hash", &hash, syntax::password_hash)?;
                Some(Some(hash))
            }
        },
    };
    let sudo = spec
        .sudo
        .iter()
        .enumerate()
        .map(|(i, rule)| r.checked(rule, &format!("user.sudo[{i}]"), syntax::sudo_rule))
        .collect::<Result<Vec<_>, _>>()?;
    let mut keys: Vec<String> = Vec::new();
    for (i, entry) in spec.ssh_authorized_keys.iter().enumerate() {
        let what = format!("user.ssh_authorized_keys[{i}]");
        let text = r.text(entry, &what)?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            crate::system::checked(&what, line, |l| syntax::authorized_key(l).map(drop))?;
            if !keys.iter().any(|k| k == line) {
                keys.push(line.to_string());
            }
        }
    }
    Ok(Wanted {
        name,
        group,
        groups,
        shell,
        home,
        comment,
        password_hash,
        sudo,
        keys,
    })
}

pub async fn converge(
    spec: &UserSpec,
    env: &Env<'_>,
    report: &mut Report,
) -> Result<(), StepError> {
    let want = wanted(spec, env)?;
    let name = want.name.as_str();
    let found = accounts::user(name)?;
    if spec.state == Presence::Absent {
        if found.is_some() {
            if env.mode.changes() {
                let tool = accounts::userdel(name)?;
                {
                    let _turn = accounts::changing().await;
                    env.sys.run(&tool).await?.ok_or(ErrorCode::UserFailed)?;
                }
            }
            report.change(format!("remove user {name} (the home directory is kept)"));
        }
        let sudo = sudo_plan(env, name, &[]).await?;
        if sudo_apply(env, name, &sudo)? {
            report.change(format!("remove {}", sudoers_path(name).display()));
        }
        if report.changes.is_empty() {
            report.satisfied = format!("user {name} does not exist");
        }
        return Ok(());
    }
    // Checked before anything changes: refused sudo rules leave the
    // account as it was.
    let sudo = sudo_plan(env, name, &want.sudo).await?;
    for group in want.group.iter().chain(want.groups.iter().flatten()) {
        // In a dry run a group a step before this one creates is not
        // there yet; the run creates it first.
        if accounts::group(group)?.is_none() && env.mode.changes() {
            return Err(OsError::Missing {
                code: ErrorCode::UserFailed,
                message: format!("user {name} needs group {group}, which does not exist (add a `group` step and `needs:` it)"),
            }
            .into());
        }
    }
    let account = match found {
        None => {
            if env.mode.changes() {
                let no_groups = Vec::new();
                let tool = accounts::useradd(&accounts::NewUser {
                    name,
                    uid: spec.uid,
                    group: want.group.as_deref(),
                    groups: want.groups.as_ref().unwrap_or(&no_groups),
                    shell: want.shell.as_deref(),
                    home: want.home.as_deref(),
                    comment: want.comment.as_deref(),
                    system: spec.system,
                    create_home: spec.create_home,
                })?;
                {
                    let _turn = accounts::changing().await;
                    env.sys.run(&tool).await?.ok_or(ErrorCode::UserFailed)?;
                }
            }
            report.change(format!(
                "create user {name}{}",
                spec.uid.map_or_else(String::new, |u| format!(" (uid {u})"))
            ));
            accounts::user(name)?
        }
        Some(account) => {
            let mut said = Report::default();
            let changes = differences(&want, spec, &account, &mut said);
            if !changes.is_empty() && env.mode.changes() {
                let tool = accounts::usermod(name, &changes)?;
                {
                    let _turn = accounts::changing().await;
                    env.sys.run(&tool).await?.ok_or(ErrorCode::UserFailed)?;
                }
            }
            report.changes.extend(said.changes);
            accounts::user(name)?.or(Some(account))
        }
    };
    match &want.password_hash {
        // A dry run without the secret: a new account gets the hash.
        None if report.changes.iter().any(|c| c.starts_with("create user")) => {
            report.change(format!("set the password hash of {name}"));
        }
        None | Some(None) => {}
        Some(Some(hash)) => {
            let current = accounts::shadow_hash(name)?;
            if current.as_deref().map(String::as_str) != Some(hash.as_str()) {
                if env.mode.changes() {
                    let tool = accounts::chpasswd(name, hash)?;
                    {
                        let _turn = accounts::changing().await;
                        env.sys.run(&tool).await?.ok_or(ErrorCode::UserFailed)?;
                    }
                }
                report.change(format!("set the password hash of {name}"));
            }
        }
    }
    if sudo_apply(env, name, &sudo)? {
        report.change(if want.sudo.is_empty() {
            format!("remove {}", sudoers_path(name).display())
        } else {
            let rules = want.sudo.len();
            format!(
                "write {} ({rules} rule{})",
                sudoers_path(name).display(),
                if rules == 1 { "" } else { "s" }
            )
        });
    }
    if let Some(account) = &account
        && let Some(change) = keys_sync(env, account, &want.keys)?
    {
        report.change(change);
    }
    if report.changes.is_empty() {
        let account = account.as_ref();
        report.satisfied = format!(
            "user {name} exists as planned (uid {}, shell {}{}{})",
            account.map_or(0, |a| a.uid),
            account.map_or("", |a| a.shell.as_str()),
            if want.keys.is_empty() {
                String::new()
            } else {
                format!(", {} managed keys", want.keys.len())
            },
            if want.password_hash.is_none() {
                ", password not compared without its secret"
            } else {
                ""
            },
        );
    }
    Ok(())
}

/// What `usermod` must change, each also said in the report.
fn differences(
    want: &Wanted,
    spec: &UserSpec,
    have: &accounts::Account,
    report: &mut Report,
) -> accounts::UserChanges {
    let name = &want.name;
    let mut changes = accounts::UserChanges::default();
    let mut differs = |what: &str, from: &str, to: &str| {
        report.change(format!(
            "user {name} exists, {what} differs ({from} → {to})"
        ));
    };
    if let Some(uid) = spec.uid
        && uid != have.uid
    {
        differs("uid", &have.uid.to_string(), &uid.to_string());
        changes.uid = Some(uid);
    }
    if let Some(group) = &want.group
        && have.group.as_deref() != Some(group.as_str())
    {
        differs("primary group", have.group.as_deref().unwrap_or("?"), group);
        changes.group = Some(group.clone());
    }
    if let Some(groups) = &want.groups
        && *groups != have.groups
    {
        let show = |g: &[String]| {
            if g.is_empty() {
                "none".to_string()
            } else {
                g.join(",")
            }
        };
        differs("groups", &show(&have.groups), &show(groups));
        changes.groups = Some(groups.clone());
    }
    if let Some(shell) = &want.shell
        && *shell != have.shell
    {
        differs("shell", &have.shell, shell);
        changes.shell = Some(shell.clone());
    }
    if let Some(home) = &want.home
        && Path::new(home) != have.home
    {
        differs("home", &have.home.display().to_string(), home);
        changes.home = Some(home.clone());
    }
    if let Some(comment) = &want.comment
        && *comment != have.comment
    {
        differs("comment", &have.comment, comment);
        changes.comment = Some(comment.clone());
    }
    changes
}

/// What `/etc/sudoers.d/bootplan-NAME` needs to hold exactly a user's
/// rules (removed when there are none).
enum Sudo {
    Same,
    Remove,
    /// New content, already accepted by `visudo -c`.
    Write(String),
}

/// Decides [`Sudo`] for `rules`. New content is checked with `visudo -c`
/// here, before the step changes anything: refused rules fail the step
/// with nothing done.
async fn sudo_plan(env: &Env<'_>, name: &str, rules: &[String]) -> Result<Sudo, StepError> {
    let current = super::read_existing(&sudoers_path(name))?;
    if rules.is_empty() {
        return Ok(if current.is_none() {
            Sudo::Same
        } else {
            Sudo::Remove
        });
    }
    let mut text =
        format!("# Written by bootplan for user {name}; changes here are overwritten.\n");
    for rule in rules {
        text.push_str(&format!("{name} {rule}\n"));
    }
    if current.as_deref() == Some(text.as_bytes()) {
        return Ok(Sudo::Same);
    }
    let check = accounts::visudo_check(&text)?;
    let ran = env.sys.query(&check).await?;
    if !ran.success() {
        return Err(OsError::SudoInvalid {
            user: name.to_string(),
            detail: format!("visudo -c: {}", ran.detail().trim_start_matches(": ")),
        }
        .into());
    }
    Ok(Sudo::Write(text))
}

/// Carries out `plan`; says whether anything differed.
fn sudo_apply(env: &Env<'_>, name: &str, plan: &Sudo) -> Result<bool, StepError> {
    let path = sudoers_path(name);
    match plan {
        Sudo::Same => Ok(false),
        Sudo::Remove => {
            if env.mode.changes() {
                fsutil::remove_file(&path)?;
            }
            Ok(true)
        }
        Sudo::Write(text) => {
            if env.mode.changes() {
                // A missing /etc/sudoers.d is made as sudo's package makes it.
                let options = fsutil::WriteOptions {
                    dir_mode: 0o750,
                    ..fsutil::WriteOptions::new(0o440)
                };
                fsutil::write_file(&path, text.as_bytes(), options)?;
            }
            Ok(true)
        }
    }
}

/// Keeps bootplan's block of `~/.ssh/authorized_keys` holding exactly
/// `keys`; every other line stays. Read and written with the file-system
/// identity of the user: a link planted in the home is refused, and
/// nothing could be reached through one that the user could not write.
fn keys_sync(
    env: &Env<'_>,
    account: &accounts::Account,
    keys: &[String],
) -> Result<Option<String>, StepError> {
    let dir = account.home.join(".ssh");
    let path = dir.join("authorized_keys");
    let io = || -> Result<Option<String>, StepError> {
        let current = match fsutil::read_nofollow(&path) {
            Ok(bytes) => bytes,
            // No .ssh yet: made when there are keys to write.
            Err(err) if err.kind() == Some(std::io::ErrorKind::NotFound) => None,
            Err(err) => return Err(err.into()),
        };
        let text = current
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if current.is_none() && keys.is_empty() {
            return Ok(None);
        }
        let new = ssh::with_managed_keys(&text, keys);
        if new == text {
            return Ok(None);
        }
        let before = ssh::managed_keys(&text).len();
        if env.mode.changes() {
            let options = fsutil::WriteOptions {
                dir_mode: 0o700,
                ..fsutil::WriteOptions::new(0o600)
            };
            fsutil::write_file(&path, new.as_bytes(), options)?;
        }
        Ok(Some(format!(
            "write {} managed keys in {} (was {before}; other lines kept)",
            keys.len(),
            path.display()
        )))
    };
    if env.mode.changes() || nix::unistd::geteuid().is_root() {
        accounts::as_user(account.uid, account.gid, io)?
    } else {
        io()
    }
}
