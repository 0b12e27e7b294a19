//! The OS kinds (`user`, `group`, `packages`, `hostname`, `sysctl`, `unit`,
//! `ssh_host_keys`) and the privilege fields of `run`, `shell`, `service`
//! and `exec` (`user`, `group`, `groups`, `umask`, `no_new_privs`,
//! `limits`, `stop_signal`): their raw types (mirrors of the file, no I/O
//! beyond reading a unit's template source), their resolved forms, and
//! their checks.
//!
//! `validate.rs` calls in through [`resolve_kind`], [`resolve_privileges`],
//! [`implicit_needs`] and [`may_read_secrets`]; each returns its problems as
//! [`Problem`]s rather than reporting them itself. Names and values that a
//! template produces are checked again after rendering, by the same
//! functions in [`syntax`], so a fact or variable can never smuggle a
//! newline into `/etc/sudoers.d` or an option into a command line.

use std::collections::HashMap;
use std::path::Path;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::refs::is_template;

/// One problem: the dotted field, the message and a hint. The position is
/// found from the field path by the validator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
    /// A warning: reported, and the plan still runs.
    pub warning: bool,
}

/// Collected problems.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, (field, message, hint): (String, String, Option<String>)) {
        self.0.push(Problem {
            field,
            message,
            hint,
            warning: false,
        });
    }

    pub(super) fn warn(&mut self, field: String, message: String, hint: Option<String>) {
        self.0.push(Problem {
            field,
            message,
            hint,
            warning: true,
        });
    }
}

/// Retries a `packages` step gets when the plan gives it none: transient
/// failures (a mirror that is down, a hash sum mismatch while it syncs)
/// usually pass within seconds; a package that does not exist is never
/// retried.
pub const PACKAGES_RETRY: super::RetryPolicy = super::RetryPolicy {
    attempts: 4,
    min_backoff: std::time::Duration::from_secs(1),
    max_backoff: std::time::Duration::from_secs(30),
};

// ---------------------------------------------------------------------
// Raw types
// ---------------------------------------------------------------------

/// The step's `user` key: a mapping is the `user` kind; a name is the
/// account a `run`, `shell`, `service` or `exec` command runs as.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum UserField {
    /// The user kind: create or update an account.
    Kind(Box<RawUser>),
    /// The account the step's command runs as (a name, or a numeric uid).
    Name(String),
}

/// The step's `group` key: a mapping is the `group` kind; a name is the
/// primary group a command runs with.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum GroupField {
    /// The group kind: create or update a group.
    Kind(RawGroup),
    /// The primary group the step's command runs with (a name or a gid).
    Name(String),
}

macro_rules! name_or_mapping {
    ($field:ident, $kind:ident, $raw:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $field {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = $field;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str(concat!(
                            "a ",
                            $what,
                            " name (for a command) or a mapping (the ",
                            $what,
                            " kind)"
                        ))
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$field, E> {
                        Ok($field::Name(text.to_string()))
                    }
                    fn visit_u64<E: serde::de::Error>(self, id: u64) -> Result<$field, E> {
                        Ok($field::Name(id.to_string()))
                    }
                    fn visit_i64<E: serde::de::Error>(self, id: i64) -> Result<$field, E> {
                        Ok($field::Name(id.to_string()))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$field, A::Error> {
                        <$raw>::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                            .map(|raw| $field::$kind(raw.into()))
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }
    };
}

name_or_mapping!(UserField, Kind, RawUser, "user");
name_or_mapping!(GroupField, Kind, RawGroup, "group");

/// A scalar written as a string or a number (`4096`, `"4096 87380"`,
/// `unlimited`); kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Scalar(#[schemars(with = "ScalarSchema")] pub String);

/// The schema of [`Scalar`]: a string or an integer.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ScalarSchema {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Scalar, E> {
                Ok(Scalar(text.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar(n.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar(if b { "1" } else { "0" }.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Whether something should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Presence {
    /// Create it, or update it to match the plan (the default).
    #[default]
    Present,
    /// Remove it when it exists.
    Absent,
}

/// `user:` step body: a local account, made and changed with `useradd`,
/// `usermod`, `userdel` and `chpasswd -e`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// The login name (may use templates).
    pub name: String,
    /// `present` (default) or `absent` (the account and its sudo rules are
    /// removed; its home directory is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Presence>,
    /// Numeric user id. Default: the next free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Primary group (a name). Default: a group named after the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Supplementary groups: exactly these (`[]` for none). Default: left as
    /// they are (a new account gets none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Login shell, e.g. `/bin/bash`. Default: the system's (`useradd`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Home directory. Default: `/home/NAME` (none for system accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// The GECOS comment (full name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// A system account (a uid from the system range, no home by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<bool>,
    /// Create the home directory. Default: yes, except for system accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_home: Option<bool>,
    /// A crypt(3) hash (`$y$…`, `$6$…`), usually `{{ secrets.NAME }}`; set
    /// with `chpasswd -e`. Without it the password of a new account stays locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// sudo rules without the user name, e.g. `ALL=(ALL) NOPASSWD: ALL`,
    /// written to `/etc/sudoers.d/bootplan-NAME` after `visudo -c` accepted them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sudo: Vec<String>,
    /// SSH public keys, one per entry (an entry that renders to several
    /// lines gives several keys), kept in a block of their own in
    /// `~/.ssh/authorized_keys`; lines outside the block are never touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// `group:` step body, made and changed with `groupadd`, `groupmod` and `groupdel`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// The group name (may use templates).
    pub name: String,
    /// `present` (default) or `absent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Presence>,
    /// Numeric group id. Default: the next free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// A system group (a gid from the system range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<bool>,
}

/// `packages:` step body: one transaction of the system's package manager.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPackages {
    /// Packages to install: `name`, or `name=VERSION` (a `*` matches any
    /// rest of the version, as in `jq=1.6*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install: Vec<String>,
    /// Packages to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Refresh the package indexes before installing, only when something
    /// must be installed. Default false (indexes are refreshed anyway when
    /// a repository changed or there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<bool>,
    /// Repositories to add first, each with its signing key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<RawRepo>,
    /// `auto` (default: the one installed: apt, dnf, zypper or apk), or one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// A package repository.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRepo {
    /// A short name: the file names the repository and its key get.
    pub name: String,
    /// Base URL (`https://…`, `http://…` or `file:/…`).
    pub uri: String,
    /// apt: the suite (`bookworm`), or a path ending in `/` for a flat repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// apt: components. Default `[main]` (none for a flat repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
    /// The ASCII-armored public key that signs the repository (apt
    /// `Signed-By`, dnf/zypper `gpgkey`; apk: a PEM public key). May use templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `hostname:` step body.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHostname {
    /// The host name (one DNS label, may use templates): the kernel's and `/etc/hostname`.
    pub name: String,
    /// The fully qualified name, for `/etc/hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// Keep an `/etc/hosts` entry `127.0.1.1 FQDN NAME`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<bool>,
}

/// `unit:` step body: a systemd unit or drop-in, and its state.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUnit {
    /// The unit's name, e.g. `app.service`.
    pub name: String,
    /// Literal unit file content, written as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A MiniJinja template file (relative to the plan) rendered to the unit file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// A MiniJinja template given inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Write a drop-in `/etc/systemd/system/NAME.d/DROPIN` instead of the unit file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropin: Option<String>,
    /// `true`: enable the unit; `false`: disable it. Default: left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
    /// `true`: mask the unit; `false`: unmask it. Default: left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<bool>,
    /// Start the unit (restart it when its file changed). Needs a running systemd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
}

/// `ssh_host_keys:` step body.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSshHostKeys {
    /// `per-instance` (default): make new keys when the disk was made for
    /// another instance or machine (a clone), never on a reboot;
    /// `missing`: only make the key types that are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regenerate: Option<Regenerate>,
    /// Key types. Default `[ed25519, ecdsa, rsa]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<HostKeyType>>,
}

/// When host keys are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Regenerate {
    /// When the instance or the machine id changed since the keys were made.
    #[default]
    PerInstance,
    /// Only the types that have no key yet.
    Missing,
}

/// An SSH host key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostKeyType {
    Ed25519,
    Ecdsa,
    Rsa,
}

impl HostKeyType {
    pub const ALL: [HostKeyType; 3] = [HostKeyType::Ed25519, HostKeyType::Ecdsa, HostKeyType::Rsa];

    pub fn as_str(self) -> &'static str {
        match self {
            HostKeyType::Ed25519 => "ed25519",
            HostKeyType::Ecdsa => "ecdsa",
            HostKeyType::Rsa => "rsa",
        }
    }
}

/// Resource limits of a command: a number (soft and hard), `SOFT:HARD`, or `unlimited`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Open files (`RLIMIT_NOFILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<Scalar>,
    /// Processes of the user (`RLIMIT_NPROC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<Scalar>,
    /// Core dump size in bytes (`RLIMIT_CORE`); `0` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<Scalar>,
}

// ---------------------------------------------------------------------
// Resolved types
// ---------------------------------------------------------------------

/// An OS kind, checked. Template strings stay templates: they are
/// rendered (and their results checked again) when the step runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OsKind {
    User(UserSpec),
    Group(GroupSpec),
    Packages(PackagesSpec),
    Hostname(HostnameSpec),
    Sysctl(SysctlSpec),
    Unit(UnitSpec),
    SshHostKeys(SshHostKeysSpec),
}

impl OsKind {
    pub fn name(&self) -> &'static str {
        match self {
            OsKind::User(_) => "user",
            OsKind::Group(_) => "group",
            OsKind::Packages(_) => "packages",
            OsKind::Hostname(_) => "hostname",
            OsKind::Sysctl(_) => "sysctl",
            OsKind::Unit(_) => "unit",
            OsKind::SshHostKeys(_) => "ssh_host_keys",
        }
    }

    /// Every template string of the kind, with the field it is in, for the
    /// reference checks.
    pub fn template_texts<'a>(&'a self, field: &str) -> Vec<(String, &'a str)> {
        let mut texts: Vec<(String, &'a str)> = Vec::new();
        let mut push = |key: &str, text: &'a str| texts.push((format!("{field}.{key}"), text));
        match self {
            OsKind::User(u) => {
                push("user.name", &u.name);
                for (key, value) in [
                    ("user.group", &u.group),
                    ("user.shell", &u.shell),
                    ("user.home", &u.home),
                    ("user.comment", &u.comment),
                    ("user.password_hash", &u.password_hash),
                ] {
                    if let Some(value) = value {
                        push(key, value);
                    }
                }
                for (i, g) in u.groups.iter().flatten().enumerate() {
                    push(&format!("user.groups[{i}]"), g);
                }
                for (i, rule) in u.sudo.iter().enumerate() {
                    push(&format!("user.sudo[{i}]"), rule);
                }
                for (i, key) in u.ssh_authorized_keys.iter().enumerate() {
                    push(&format!("user.ssh_authorized_keys[{i}]"), key);
                }
            }
            OsKind::Group(g) => push("group.name", &g.name),
            OsKind::Packages(p) => {
                for (i, name) in p.install.iter().enumerate() {
                    push(&format!("packages.install[{i}]"), name);
                }
                for (i, name) in p.remove.iter().enumerate() {
                    push(&format!("packages.remove[{i}]"), name);
                }
                for (i, repo) in p.repos.iter().enumerate() {
                    push(&format!("packages.repos[{i}].uri"), &repo.uri);
                    if let Some(key) = &repo.key {
                        push(&format!("packages.repos[{i}].key"), key);
                    }
                }
            }
            OsKind::Hostname(h) => {
                push("hostname.name", &h.name);
                if let Some(fqdn) = &h.fqdn {
                    push("hostname.fqdn", fqdn);
                }
            }
            OsKind::Sysctl(s) => {
                for (key, value) in &s.values {
                    push(&format!("sysctl.{key}"), value);
                }
            }
            OsKind::Unit(u) => {
                if let Some(source) = &u.source
                    && source.template
                {
                    texts.push((source.origin.clone(), &source.text));
                }
            }
            OsKind::SshHostKeys(_) => {}
        }
        texts
    }

    /// Text outside the plan file that the step's result depends on (a
    /// unit's template source), for its fingerprint.
    pub fn fingerprint_text(&self) -> Option<&str> {
        match self {
            OsKind::Unit(UnitSpec {
                source: Some(source),
                ..
            }) => Some(&source.text),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UserSpec {
    pub name: String,
    pub state: Presence,
    pub uid: Option<u32>,
    pub group: Option<String>,
    pub groups: Option<Vec<String>>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub comment: Option<String>,
    pub system: bool,
    pub create_home: bool,
    pub password_hash: Option<String>,
    pub sudo: Vec<String>,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupSpec {
    pub name: String,
    pub state: Presence,
    pub gid: Option<u32>,
    pub system: bool,
}

/// Which package manager a `packages` step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerChoice {
    Auto,
    Apt,
    Dnf,
    Zypper,
    Apk,
}

impl ManagerChoice {
    const NAMES: [&'static str; 5] = ["auto", "apt", "dnf", "zypper", "apk"];

    fn from_name(name: &str) -> Option<ManagerChoice> {
        Some(match name {
            "auto" => ManagerChoice::Auto,
            "apt" => ManagerChoice::Apt,
            "dnf" => ManagerChoice::Dnf,
            "zypper" => ManagerChoice::Zypper,
            "apk" => ManagerChoice::Apk,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PackagesSpec {
    pub install: Vec<String>,
    pub remove: Vec<String>,
    pub update: bool,
    pub repos: Vec<RepoSpec>,
    pub manager: ManagerChoice,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepoSpec {
    pub name: String,
    pub uri: String,
    pub suite: Option<String>,
    pub components: Vec<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostnameSpec {
    pub name: String,
    pub fqdn: Option<String>,
    pub hosts: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SysctlSpec {
    /// Key (as written) → value (may use templates), in plan order.
    pub values: IndexMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitSpec {
    pub name: String,
    pub dropin: Option<String>,
    pub source: Option<UnitSource>,
    pub enable: Option<bool>,
    pub mask: Option<bool>,
    pub start: bool,
}

/// A unit's content: literal, or a template (read from `src` at load time, or inline).
#[derive(Debug, Clone, Serialize)]
pub struct UnitSource {
    pub text: String,
    pub template: bool,
    /// Where the text came from, for messages.
    pub origin: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SshHostKeysSpec {
    pub regenerate: Regenerate,
    pub types: Vec<HostKeyType>,
}

/// What a `run`, `shell`, `service` or `exec` command runs as and with.
/// Names are resolved (and templated ones checked) when the step starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Privileges {
    pub user: Option<String>,
    pub group: Option<String>,
    pub groups: Option<Vec<String>>,
    pub umask: Option<u32>,
    pub no_new_privs: bool,
    pub limits: Limits,
    /// The signal that asks a service or the supervised app to stop.
    pub stop_signal: Option<i32>,
}

impl Privileges {
    /// Whether the command runs exactly as bootplan's own processes do.
    pub fn is_empty(&self) -> bool {
        *self == Privileges::default()
    }
}

/// Resource limits, as (soft, hard); `None` in either is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub nofile: Option<Limit>,
    pub nproc: Option<Limit>,
    pub core: Option<Limit>,
}

/// One resource limit: soft and hard, `None` meaning unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

// ---------------------------------------------------------------------
// Syntax of names and values, shared by load time and run time
// ---------------------------------------------------------------------

/// Syntax checks for the values OS kinds pass to system tools. Each returns
/// why a value is refused; none echoes a secret (only `password_hash` may
/// hold one, and its message never quotes it).
pub mod syntax {
    /// A user or group name as `useradd`/`groupadd` accept it by default,
    /// portable across distributions: lowercase letters, digits, `_` and
    /// `-`, not starting with a digit or `-`, at most 32 characters, an
    /// optional trailing `$` (machine accounts).
    pub fn account_name(name: &str) -> Result<(), String> {
        let body = name.strip_suffix('$').unwrap_or(name);
        let first_ok = body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if name.len() > 32
            || !first_ok
            || !body
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(format!(
                "`{}` is not a valid account name: use lowercase letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters",
                name.escape_debug()
            ));
        }
        Ok(())
    }

    /// An absolute path for the passwd database (home, shell): no `:`
    /// (the field separator), no control characters, no `..`.
    pub fn passwd_path(path: &str) -> Result<(), String> {
        if !path.starts_with('/')
            || path.chars().any(|c| c == ':' || c.is_control())
            || path.split('/').any(|part| part == "..")
            || path.len() > 4096
        {
            return Err(format!(
                "`{}` is not an absolute path usable in /etc/passwd (no `:`, control characters or `..`)",
                path.escape_debug()
            ));
        }
        Ok(())
    }

    /// A GECOS comment: no `:`, no control characters.
    pub fn comment(text: &str) -> Result<(), String> {
        if text.len() > 255 || text.chars().any(|c| c == ':' || c.is_control()) {
            return Err(
                "the comment may not hold `:` or control characters (at most 255 bytes)".into(),
            );
        }
        Ok(())
    }

    /// A crypt(3) hash such as `$y$j9T$…` or `$6$…`. The message never
    /// shows the value: it is usually a secret.
    pub fn password_hash(hash: &str) -> Result<(), String> {
        let mut parts = hash.split('$');
        let well_formed = parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
            && hash.len() < 1024
            && hash
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "./$=,+-".contains(c))
            && hash.matches('$').count() >= 2;
        if !well_formed {
            return Err("the password hash is not a crypt(3) hash such as `$y$…` or `$6$…` (make one with `mkpasswd -m yescrypt`; the value is not shown)".into());
        }
        Ok(())
    }

    /// One sudo rule without the user name, e.g. `ALL=(ALL) NOPASSWD: ALL`.
    /// Only the shape is checked here (one line, not a directive);
    /// `visudo -c` decides the rest before the rule is written.
    pub fn sudo_rule(rule: &str) -> Result<(), String> {
        let trimmed = rule.trim();
        if trimmed.is_empty() {
            return Err("the sudo rule is empty".into());
        }
        if rule.chars().any(|c| c.is_control()) {
            return Err("a sudo rule is one line: no newlines or control characters".into());
        }
        if trimmed.ends_with('\\') {
            return Err(
                "a sudo rule may not end with `\\` (it would continue onto the next line)".into(),
            );
        }
        if trimmed.starts_with('#') || trimmed.starts_with('@') || trimmed.starts_with("Defaults") {
            return Err(
                "a sudo rule is `HOSTS=(RUNAS) COMMANDS`, not a comment, include or Defaults line"
                    .into(),
            );
        }
        Ok(())
    }

    /// A package name with an optional `:ARCH` and `=VERSION`, never
    /// starting with `-` (it would be an option).
    pub fn package(spec: &str) -> Result<(), String> {
        let (name, version) = match spec.split_once('=') {
            Some((name, version)) => (name, Some(version)),
            None => (spec, None),
        };
        let (base, arch) = match name.split_once(':') {
            Some((base, arch)) => (base, Some(arch)),
            None => (name, None),
        };
        let base_ok = base.len() <= 128
            && base
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && base
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c));
        let arch_ok = arch.is_none_or(|a| {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        let version_ok = version.is_none_or(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+~:*?_-".contains(c))
        });
        if !(base_ok && arch_ok && version_ok) {
            return Err(format!(
                "`{}` is not a package name (letters, digits, `+._-`, optionally `:ARCH` and `=VERSION`)",
                spec.escape_debug()
            ));
        }
        Ok(())
    }

    /// A repository's short name: it names files under /etc.
    pub fn repo_name(name: &str) -> Result<(), String> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        {
            return Err(format!(
                "`{}` is not a repository name (lowercase letters, digits, `_.-`, at most 64)",
                name.escape_debug()
            ));
        }
        Ok(())
    }

    /// A repository URL: http(s) or file, nothing that would break the
    /// one-line fields it is written into.
    pub fn repo_uri(uri: &str) -> Result<(), String> {
        let scheme_ok = ["http://", "https://", "file:/"]
            .iter()
            .any(|s| uri.starts_with(s));
        if !scheme_ok || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "`{}` is not an http(s) or file: URL",
                uri.escape_debug()
            ));
        }
        Ok(())
    }

    /// An apt suite or component: one word.
    pub fn repo_word(word: &str) -> Result<(), String> {
        if word.is_empty()
            || !word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./+-".contains(c))
        {
            return Err(format!(
                "`{}` is not a suite or component name",
                word.escape_debug()
            ));
        }
        Ok(())
    }

    /// A public signing key in armored (PGP) or PEM form.
    pub fn repo_key(key: &str) -> Result<(), String> {
        let armored = key.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----")
            && key.contains("-----END PGP PUBLIC KEY BLOCK-----");
        let pem =
            key.contains("-----BEGIN PUBLIC KEY-----") && key.contains("-----END PUBLIC KEY-----");
        if !(armored || pem) || key.len() > 1024 * 1024 || key.contains('\0') {
            return Err("the key is not an ASCII-armored public key (`-----BEGIN PGP PUBLIC KEY BLOCK-----`; `gpg --armor --export`) or a PEM public key".into());
        }
        Ok(())
    }

    /// One DNS label: letters, digits and `-`, 1 to 63 characters, not
    /// starting or ending with `-`.
    pub fn host_label(label: &str) -> Result<(), String> {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "`{}` is not a host name (letters, digits and `-`, 1 to 63 characters, no `-` at either end)",
                label.escape_debug()
            ));
        }
        Ok(())
    }

    /// A fully qualified name: labels joined by `.`, at most 253 characters.
    pub fn fqdn(name: &str) -> Result<(), String> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() > 253 || !name.contains('.') {
            return Err(format!(
                "`{}` is not a fully qualified name (labels joined by `.`, at most 253 characters)",
                name.escape_debug()
            ));
        }
        name.split('.').try_for_each(host_label)
    }

    /// A sysctl key (`net.core.somaxconn`; `/` stands for a `.` inside one
    /// component, as in `net.ipv4.conf.eth0/100.forwarding`), returned as
    /// its path under /proc/sys.
    pub fn sysctl_path(key: &str) -> Result<String, String> {
        let bad = || {
            format!(
                "`{}` is not a sysctl key such as `net.core.somaxconn`",
                key.escape_debug()
            )
        };
        if key.is_empty()
            || key.len() > 255
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-/:@".contains(c))
        {
            return Err(bad());
        }
        let components: Vec<String> = key.split('.').map(|c| c.replace('/', ".")).collect();
        if components.len() < 2
            || components
                .iter()
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad());
        }
        Ok(components.join("/"))
    }

    /// A sysctl value: one line.
    pub fn sysctl_value(value: &str) -> Result<(), String> {
        if value.trim().is_empty()
            || value.len() > 4096
            || value.chars().any(|c| c.is_control() && c != '\t')
        {
            return Err(format!(
                "`{}` is not a sysctl value (one non-empty line)",
                value.escape_debug()
            ));
        }
        Ok(())
    }

    /// Unit types systemd knows.
    const UNIT_TYPES: [&str; 11] = [
        "service",
        "socket",
        "device",
        "mount",
        "automount",
        "swap",
        "target",
        "path",
        "timer",
        "slice",
        "scope",
    ];

    /// A systemd unit name such as `app.service` or `getty@tty1.service`.
    pub fn unit_name(name: &str) -> Result<(), String> {
        let typed = name
            .rsplit_once('.')
            .is_some_and(|(stem, ty)| !stem.is_empty() && UNIT_TYPES.contains(&ty));
        if !typed
            || name.len() > 255
            || name.starts_with('-')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_.\\@-".contains(c))
        {
            return Err(format!(
                "`{}` is not a unit name such as `app.service` (types: {})",
                name.escape_debug(),
                UNIT_TYPES.join(", ")
            ));
        }
        Ok(())
    }

    /// A drop-in file name such as `override.conf`.
    pub fn dropin_name(name: &str) -> Result<(), String> {
        let stem_ok = name
            .strip_suffix(".conf")
            .is_some_and(|stem| !stem.is_empty() && !stem.starts_with('.'));
        if !stem_ok
            || name.len() > 255
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c))
        {
            return Err(format!(
                "`{}` is not a drop-in name such as `override.conf`",
                name.escape_debug()
            ));
        }
        Ok(())
    }

    /// Key types `authorized_keys` may hold.
    const KEY_TYPES: [&str; 8] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];

    fn is_key_type(word: &str) -> bool {
        KEY_TYPES.contains(&word)
            || word
                .strip_suffix("-cert-v01@openssh.com")
                .is_some_and(|base| {
                    KEY_TYPES
                        .iter()
                        .any(|t| t.trim_end_matches("@openssh.com") == base)
                })
    }

    /// The options field of an authorized_keys line: up to the first
    /// whitespace outside double quotes. `None` when a quote is not closed.
    fn split_options(line: &str) -> Option<(&str, &str)> {
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in line.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    return Some((&line[..i], line[i..].trim_start()));
                }
                _ => {}
            }
        }
        (!quoted).then_some((line, ""))
    }

    /// One `authorized_keys` line: `[OPTIONS] TYPE BASE64 [COMMENT]`, the
    /// blob decoding to a key of that type. Returns the line's key type
    /// and blob (for fingerprints and duplicates).
    pub fn authorized_key(line: &str) -> Result<(String, Vec<u8>), String> {
        use base64::Engine;
        let shown = || {
            let short: String = line.chars().take(40).collect();
            format!("`{}…`", short.escape_debug())
        };
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("the key {} holds a control character", shown()));
        }
        let line = line.trim();
        let first = line.split_whitespace().next().unwrap_or("");
        let rest = if is_key_type(first) {
            line
        } else {
            match split_options(line) {
                Some((_, rest)) if !rest.is_empty() => rest,
                _ => {
                    return Err(format!(
                        "{} is not an SSH public key (`TYPE BASE64 [COMMENT]`, e.g. `ssh-ed25519 AAAA… ops@example`)",
                        shown()
                    ));
                }
            }
        };
        let mut words = rest.split_whitespace();
        let key_type = words.next().unwrap_or("");
        if !is_key_type(key_type) {
            return Err(format!(
                "{} is not an SSH public key: `{}` is not a key type ({})",
                shown(),
                key_type.escape_debug(),
                KEY_TYPES.join(", ")
            ));
        }
        let blob = words
            .next()
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .ok_or_else(|| format!("{}: the key data is not base64", shown()))?;
        let inner = blob
            .get(..4)
            .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
            .and_then(|len| blob.get(4..4 + len));
        if inner != Some(key_type.as_bytes()) {
            return Err(format!(
                "{}: the key data is not a `{key_type}` key",
                shown()
            ));
        }
        Ok((key_type.to_string(), blob))
    }
}

// ---------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------

/// Checks `value` with `check` unless it is a template (checked after rendering).
pub(super) fn literal(
    problems: &mut Problems,
    field: String,
    value: &str,
    check: impl FnOnce(&str) -> Result<(), String>,
) {
    if !is_template(value)
        && let Err(message) = check(value)
    {
        problems.push((field, message, None));
    }
}

pub(super) fn resolve_user(field: &str, raw: &RawUser, problems: &mut Problems) -> UserSpec {
    let f = |key: &str| format!("{field}.user.{key}");
    literal(problems, f("name"), &raw.name, syntax::account_name);
    if let Some(group) = &raw.group {
        literal(problems, f("group"), group, syntax::account_name);
    }
    for (i, group) in raw.groups.iter().flatten().enumerate() {
        literal(
            problems,
            f(&format!("groups[{i}]")),
            group,
            syntax::account_name,
        );
    }
    for (key, value) in [("shell", &raw.shell), ("home", &raw.home)] {
        if let Some(value) = value {
            literal(problems, f(key), value, syntax::passwd_path);
        }
    }
    if let Some(comment) = &raw.comment {
        literal(problems, f("comment"), comment, syntax::comment);
    }
    if let Some(hash) = &raw.password_hash {
        if is_template(hash) {
            // Checked after rendering.
        } else {
            if let Err(message) = syntax::password_hash(hash) {
                problems.push((f("password_hash"), message, None));
            }
            problems.warn(
                f("password_hash"),
                "a password hash written in the plan is readable by everyone who can read the plan"
                    .into(),
                Some("keep it in a secret: `password_hash: \"{{ secrets.NAME }}\"`".into()),
            );
        }
    }
    for (i, rule) in raw.sudo.iter().enumerate() {
        literal(problems, f(&format!("sudo[{i}]")), rule, syntax::sudo_rule);
    }
    for (i, key) in raw.ssh_authorized_keys.iter().enumerate() {
        literal(
            problems,
            f(&format!("ssh_authorized_keys[{i}]")),
            key,
            |text| {
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .try_for_each(|l| syntax::authorized_key(l).map(drop))
            },
        );
    }
    let state = raw.state.unwrap_or_default();
    let system = raw.system.unwrap_or(false);
    if state == Presence::Absent {
        let managed: Vec<&str> = [
            ("uid", raw.uid.is_some()),
            ("group", raw.group.is_some()),
            ("groups", raw.groups.is_some()),
            ("shell", raw.shell.is_some()),
            ("home", raw.home.is_some()),
            ("password_hash", raw.password_hash.is_some()),
            ("sudo", !raw.sudo.is_empty()),
            ("ssh_authorized_keys", !raw.ssh_authorized_keys.is_empty()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if !managed.is_empty() {
            problems.push((
                f("state"),
                format!(
                    "an absent user has no {}: the account is removed",
                    managed.join(", ")
                ),
                Some("remove those fields, or `state: absent`".into()),
            ));
        }
    }
    UserSpec {
        name: raw.name.clone(),
        state,
        uid: raw.uid,
        group: raw.group.clone(),
        groups: raw.groups.clone(),
        shell: raw.shell.clone(),
        home: raw.home.clone(),
        comment: raw.comment.clone(),
        system,
        create_home: raw.create_home.unwrap_or(!system),
        password_hash: raw.password_hash.clone(),
        sudo: raw.sudo.clone(),
        ssh_authorized_keys: raw.ssh_authorized_keys.clone(),
    }
}

pub(super) fn resolve_group(field: &str, raw: &RawGroup, problems: &mut Problems) -> GroupSpec {
    literal(
        problems,
        format!("{field}.group.name"),
        &raw.name,
        syntax::account_name,
    );
    GroupSpec {
        name: raw.name.clone(),
        state: raw.state.unwrap_or_default(),
        gid: raw.gid,
        system: raw.system.unwrap_or(false),
    }
}

pub(super) fn resolve_packages(
    field: &str,
    raw: &RawPackages,
    problems: &mut Problems,
) -> Option<PackagesSpec> {
    let f = |key: &str| format!("{field}.packages.{key}");
    if raw.install.is_empty() && raw.remove.is_empty() {
        problems.push((
            f("install"),
            "the step installs and removes nothing".into(),
            Some("list packages under `install:` or `remove:`".into()),
        ));
    }
    for (list, names) in [("install", &raw.install), ("remove", &raw.remove)] {
        for (i, name) in names.iter().enumerate() {
            literal(problems, f(&format!("{list}[{i}]")), name, syntax::package);
        }
    }
    for name in &raw.remove {
        if !is_template(name) && name.contains('=') {
            problems.push((
                f("remove"),
                format!("`{name}`: a package is removed whatever its version"),
                Some("write the name alone".into()),
            ));
        }
    }
    let bare = |n: &str| n.split(['=', ':']).next().unwrap_or(n).to_string();
    for name in raw.install.iter().filter(|n| !is_template(n)) {
        if raw.remove.iter().any(|r| bare(r) == bare(name)) {
            problems.push((
                f("remove"),
                format!("`{}` is both installed and removed", bare(name)),
                None,
            ));
        }
    }
    let manager = match raw.manager.as_deref() {
        None => ManagerChoice::Auto,
        Some(name) => match ManagerChoice::from_name(name) {
            Some(choice) => choice,
            None => {
                let hint = super::diagnostic::did_you_mean(name, ManagerChoice::NAMES)
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("one of: {}", ManagerChoice::NAMES.join(", ")));
                problems.push((
                    f("manager"),
                    format!("unknown package manager `{name}`"),
                    Some(hint),
                ));
                return None;
            }
        },
    };
    let mut repos = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, repo) in raw.repos.iter().enumerate() {
        let rf = |key: &str| format!("{field}.packages.repos[{i}].{key}");
        if let Err(message) = syntax::repo_name(&repo.name) {
            problems.push((rf("name"), message, None));
        }
        if !names.insert(repo.name.clone()) {
            problems.push((
                rf("name"),
                format!("repository `{}` is listed twice", repo.name),
                None,
            ));
        }
        literal(problems, rf("uri"), &repo.uri, syntax::repo_uri);
        if let Some(key) = &repo.key {
            literal(problems, rf("key"), key, syntax::repo_key);
        }
        let flat = repo.suite.as_deref().is_some_and(|s| s.ends_with('/'));
        if let Some(suite) = &repo.suite
            && let Err(message) = syntax::repo_word(suite)
        {
            problems.push((rf("suite"), message, None));
        }
        let components = match (&repo.components, flat) {
            (Some(c), true) if !c.is_empty() => {
                problems.push((
                    rf("components"),
                    "a flat repository (a suite ending in `/`) has no components".into(),
                    None,
                ));
                Vec::new()
            }
            (Some(c), _) => c.clone(),
            (None, true) => Vec::new(),
            (None, false) => vec!["main".to_string()],
        };
        for component in &components {
            if let Err(message) = syntax::repo_word(component) {
                problems.push((rf("components"), message, None));
            }
        }
        if repo.suite.is_none() && matches!(manager, ManagerChoice::Apt) {
            problems.push((
                rf("suite"),
                "an apt repository needs a `suite` (e.g. `bookworm`, or `./` for a flat one)"
                    .into(),
                None,
            ));
        }
        repos.push(RepoSpec {
            name: repo.name.clone(),
            uri: repo.uri.clone(),
            suite: repo.suite.clone(),
            components,
            key: repo.key.clone(),
        });
    }
    Some(PackagesSpec {
        install: raw.install.clone(),
        remove: raw.remove.clone(),
        update: raw.update.unwrap_or(false),
        repos,
        manager,
    })
}

pub(super) fn resolve_hostname(
    field: &str,
    raw: &RawHostname,
    problems: &mut Problems,
) -> HostnameSpec {
    literal(
        problems,
        format!("{field}.hostname.name"),
        &raw.name,
        syntax::host_label,
    );
    if let Some(fqdn) = &raw.fqdn {
        literal(
            problems,
            format!("{field}.hostname.fqdn"),
            fqdn,
            syntax::fqdn,
        );
    }
    HostnameSpec {
        name: raw.name.clone(),
        fqdn: raw.fqdn.clone(),
        hosts: raw.hosts.unwrap_or(false),
    }
}

pub(super) fn resolve_sysctl(
    field: &str,
    raw: &IndexMap<String, Scalar>,
    problems: &mut Problems,
) -> SysctlSpec {
    if raw.is_empty() {
        problems.push((
            format!("{field}.sysctl"),
            "the step sets no sysctl".into(),
            Some("e.g. `sysctl: { net.core.somaxconn: 4096 }`".into()),
        ));
    }
    let mut paths: HashMap<String, &str> = HashMap::new();
    for (key, value) in raw {
        match syntax::sysctl_path(key) {
            Ok(path) => {
                if let Some(other) = paths.insert(path, key) {
                    problems.push((
                        format!("{field}.sysctl.{key}"),
                        format!("`{key}` and `{other}` are the same setting"),
                        None,
                    ));
                }
            }
            Err(message) => problems.push((format!("{field}.sysctl.{key}"), message, None)),
        }
        literal(
            problems,
            format!("{field}.sysctl.{key}"),
            &value.0,
            syntax::sysctl_value,
        );
    }
    SysctlSpec {
        values: raw.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
    }
}

/// Largest unit template source accepted.
const MAX_UNIT_BYTES: u64 = 1024 * 1024;

pub(super) fn resolve_unit(
    plan_dir: &Path,
    field: &str,
    raw: &RawUnit,
    problems: &mut Problems,
) -> Option<UnitSpec> {
    let f = |key: &str| format!("{field}.unit.{key}");
    if let Err(message) = syntax::unit_name(&raw.name) {
        problems.push((f("name"), message, None));
    }
    if let Some(dropin) = &raw.dropin
        && let Err(message) = syntax::dropin_name(dropin)
    {
        problems.push((f("dropin"), message, None));
    }
    let source = match (&raw.content, &raw.src, &raw.inline) {
        (None, None, None) => None,
        (Some(content), None, None) => Some(UnitSource {
            text: content.clone(),
            template: false,
            origin: f("content"),
        }),
        (None, Some(src), None) => {
            let path = plan_dir.join(src);
            match super::bounded::read_bounded(&path, MAX_UNIT_BYTES) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => Some(UnitSource {
                        text,
                        template: true,
                        origin: path.display().to_string(),
                    }),
                    Err(_) => {
                        problems.push((
                            f("src"),
                            format!("{} is not UTF-8 text", path.display()),
                            None,
                        ));
                        return None;
                    }
                },
                Err(err) => {
                    let message = match err {
                        super::bounded::Bounded::Io(e) => e.to_string(),
                        super::bounded::Bounded::Problem(message, _) => message,
                    };
                    problems.push((
                        f("src"),
                        format!("cannot read unit template {}: {message}", path.display()),
                        Some("`src` is relative to the plan file's directory".into()),
                    ));
                    return None;
                }
            }
        }
        (None, None, Some(inline)) => Some(UnitSource {
            text: inline.clone(),
            template: true,
            origin: f("inline"),
        }),
        _ => {
            problems.push((
                f("content"),
                "a unit has at most one of `content`, `src` and `inline`".into(),
                None,
            ));
            return None;
        }
    };
    if raw.dropin.is_some() && source.is_none() {
        problems.push((
            f("dropin"),
            "a drop-in needs its text: `content`, `src` or `inline`".into(),
            None,
        ));
    }
    if raw.mask == Some(true) {
        let conflicting: Vec<&str> = [
            (
                "content/src/inline",
                source.is_some() && raw.dropin.is_none(),
            ),
            ("enable: true", raw.enable == Some(true)),
            ("start: true", raw.start == Some(true)),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if !conflicting.is_empty() {
            problems.push((
                f("mask"),
                format!(
                    "a masked unit cannot also have {}",
                    conflicting.join(" or ")
                ),
                Some("masking links the unit to /dev/null: it neither runs nor has a file of its own".into()),
            ));
        }
    }
    Some(UnitSpec {
        name: raw.name.clone(),
        dropin: raw.dropin.clone(),
        source,
        enable: raw.enable,
        mask: raw.mask,
        start: raw.start.unwrap_or(false),
    })
}

pub(super) fn resolve_host_keys(
    field: &str,
    raw: &RawSshHostKeys,
    problems: &mut Problems,
) -> SshHostKeysSpec {
    let mut types = raw
        .types
        .clone()
        .unwrap_or_else(|| HostKeyType::ALL.to_vec());
    if types.is_empty() {
        problems.push((
            format!("{field}.ssh_host_keys.types"),
            "no key types: sshd would have no host key".into(),
            Some("e.g. `types: [ed25519]`".into()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    types.retain(|t| seen.insert(*t));
    SshHostKeysSpec {
        regenerate: raw.regenerate.unwrap_or_default(),
        types,
    }
}

/// `65536`, `1024:4096`, `unlimited`, `0:unlimited`.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    let one = |part: &str| -> Result<Option<u64>, String> {
        match part.trim() {
            "unlimited" | "infinity" => Ok(None),
            n => n
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("invalid limit `{text}`")),
        }
    };
    let (soft, hard) = match text.split_once(':') {
        Some((soft, hard)) => (one(soft)?, one(hard)?),
        None => {
            let both = one(text)?;
            (both, both)
        }
    };
    let ordered = match (soft, hard) {
        (Some(s), Some(h)) => s <= h,
        // An unlimited soft limit is above any finite hard one.
        (None, Some(_)) => false,
        (_, None) => true,
    };
    if !ordered {
        return Err(format!(
            "invalid limit `{text}`: the soft limit is above the hard limit"
        ));
    }
    Ok(Limit { soft, hard })
}

/// A signal by name (`SIGTERM`, `term`) or number.
pub fn parse_signal(name: &str) -> Option<i32> {
    use std::str::FromStr;
    if let Ok(n) = name.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&full)
        .ok()
        .filter(|s| {
            !matches!(
                s,
                nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
            )
        })
        .map(|s| s as i32)
}

/// Whether a secret may be read in `field` of an OS kind: only the password
/// hash. Everything else an OS kind writes is readable by every user
/// (passwd, unit files, repository files, sysctl.d) or shown in logs.
pub fn may_read_secrets(field: &str) -> bool {
    field.ends_with(".user.password_hash")
}

#[cfg(test)]
mod tests {
    use super::syntax::*;
    use super::*;

    #[test]
    fn account_names() {
        for ok in ["deploy", "_svc", "web-1", "a_b", "host$"] {
            assert!(account_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Deploy",
            "1abc",
            "-x",
            "a:b",
            "a b",
            "a\nb",
            "a.b",
            &"x".repeat(33),
        ] {
            assert!(account_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn package_specs() {
        for ok in [
            "nginx",
            "jq=1.6*",
            "libc6:amd64",
            "g++",
            "python3.11",
            "pkg=1:2.3-4~deb12u1",
        ] {
            assert!(package(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-o", "--force", "a b", "a;b", "x=", "x=$(id)", "a/b"] {
            assert!(package(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sysctl_keys_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.core.somaxconn").unwrap(),
            "net/core/somaxconn"
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/100.forwarding").unwrap(),
            "net/ipv4/conf/eth0.100/forwarding"
        );
        for bad in [
            "",
            "vm",
            "net..core",
            "../../etc/passwd",
            "net.core.*",
            "a./..b",
            "/net/core",
        ] {
            assert!(sysctl_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unit_and_host_names() {
        for ok in [
            "app.service",
            "getty@tty1.service",
            "foo@.service",
            "x.timer",
        ] {
            assert!(unit_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "app",
            ".service",
            "a b.service",
            "../x.service",
            "a/b.service",
            "x.conf",
        ] {
            assert!(unit_name(bad).is_err(), "{bad:?}");
        }
        assert!(host_label("web-1").is_ok());
        for bad in ["", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(host_label(bad).is_err(), "{bad:?}");
        }
        assert!(fqdn("web-1.example.internal").is_ok());
        assert!(fqdn("web").is_err());
        assert!(fqdn("web..x").is_err());
    }

    #[test]
    fn authorized_key_lines() {
        // A real ed25519 public key.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2hIK1UdQ5ufYQSpO9URbTuIQZFwdMq0RRhc+FJ9f5 ops@example";
        assert_eq!(authorized_key(key).unwrap().0, "ssh-ed25519");
        let with_options = format!("from=\"10.0.0.0/8\",command=\"echo a b\" {key}");
        assert!(authorized_key(&with_options).is_ok());
        for bad in [
            "hello",
            "ssh-ed25519 not-base64!",
            // Valid base64, but the blob names another type.
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGJ2hIK1UdQ5ufYQSpO9URbTuIQZFwdMq0RRhc+FJ9f5",
            "from=\"unclosed ssh-ed25519 AAAA",
        ] {
            assert!(authorized_key(bad).is_err(), "{bad:?}");
        }
        assert!(authorized_key(&format!("{key}\rx")).is_err());
    }

    #[test]
    fn sudo_rules_and_hashes() {
        assert!(sudo_rule("ALL=(ALL) NOPASSWD: /usr/bin/systemctl restart app").is_ok());
        for bad in [
            "",
            "ALL=(ALL) ALL\nroot ALL=(ALL) ALL",
            "#include /tmp/x",
            "Defaults !env_reset",
            "ALL=(ALL) ALL \\",
        ] {
            assert!(sudo_rule(bad).is_err(), "{bad:?}");
        }
        assert!(password_hash("$y$j9T$abc$def").is_ok());
        assert!(password_hash("$6$rounds=5000$salt$hash").is_ok());
        for bad in ["hunter2", "$", "$y", "$y$a:b", "$y$a\nb"] {
            let err = password_hash(bad).unwrap_err();
            assert!(
                !err.contains(bad) || bad.len() <= 2,
                "the value is not shown: {err}"
            );
        }
    }

    #[test]
    fn limits_and_signals() {
        assert_eq!(
            parse_limit("1024").unwrap(),
            Limit {
                soft: Some(1024),
                hard: Some(1024)
            }
        );
        assert_eq!(
            parse_limit("1024:4096").unwrap(),
            Limit {
                soft: Some(1024),
                hard: Some(4096)
            }
        );
        assert_eq!(
            parse_limit("unlimited").unwrap(),
            Limit {
                soft: None,
                hard: None
            }
        );
        assert_eq!(
            parse_limit("0:unlimited").unwrap(),
            Limit {
                soft: Some(0),
                hard: None
            }
        );
        for bad in ["x", "10:5", "unlimited:10", "-1"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(
            parse_signal("SIGKILL"),
            None,
            "a stop signal must be catchable"
        );
        assert_eq!(parse_signal("NOPE"), None);
    }
}
