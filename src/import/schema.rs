//! Checks of cloud-config values against the shapes cloud-init's schema
//! gives the modules bootplan maps (written here from cloud-init's
//! published schema, not vendored): the entries of `write_files`, `users`,
//! `groups`, `runcmd`, `bootcmd` and `packages`, and the scalar keys.
//! Each module is checked on its own, so one bad module does not hide the
//! problems of another, and a problem is reported at the line and column
//! of the value it is in.

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// A value cloud-init's schema refuses, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// A string, or a list of strings (a command as argv).
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Command {
    Line(String),
    Argv(Vec<String>),
}

/// A mode as cloud-init takes it: an octal string, or a number.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Mode {
    Text(String),
    Number(u32),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum Encoding {
    Gz,
    Gzip,
    #[serde(rename = "gz+base64")]
    GzBase64,
    #[serde(rename = "gzip+base64")]
    GzipBase64,
    #[serde(rename = "gz+b64")]
    GzB64,
    #[serde(rename = "gzip+b64")]
    GzipB64,
    B64,
    Base64,
    Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct WriteFile {
    path: String,
    content: Option<IgnoredAny>,
    source: Option<IgnoredAny>,
    owner: Option<String>,
    permissions: Option<Mode>,
    encoding: Option<Encoding>,
    append: Option<bool>,
    defer: Option<bool>,
}

/// An account: its name alone, or its settings.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum UserEntry {
    Name(String),
    Settings(Box<User>),
    Names(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct User {
    name: String,
    gecos: Option<String>,
    homedir: Option<String>,
    primary_group: Option<String>,
    groups: Option<IgnoredAny>,
    selinux_user: Option<String>,
    lock_passwd: Option<bool>,
    #[serde(rename = "lock-passwd")]
    lock_passwd_dashed: Option<bool>,
    inactive: Option<IgnoredAny>,
    passwd: Option<String>,
    hashed_passwd: Option<String>,
    plain_text_passwd: Option<String>,
    no_create_home: Option<bool>,
    no_user_group: Option<bool>,
    no_log_init: Option<bool>,
    create_groups: Option<bool>,
    ssh_import_id: Option<IgnoredAny>,
    ssh_authorized_keys: Option<IgnoredAny>,
    ssh_redirect_user: Option<bool>,
    system: Option<bool>,
    snapuser: Option<String>,
    sudo: Option<IgnoredAny>,
    doas: Option<IgnoredAny>,
    uid: Option<IgnoredAny>,
    shell: Option<String>,
    expiredate: Option<String>,
}

/// `groups`: names, `name: [members]` mappings, or a comma list.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Groups {
    Line(String),
    List(Vec<GroupEntry>),
    Map(IndexMap<String, IgnoredAny>),
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum GroupEntry {
    Name(String),
    Members(IndexMap<String, IgnoredAny>),
}

/// A package: a name, or `[name, version]`.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Package {
    Name(String),
    Pinned(Vec<String>),
    Manager(IndexMap<String, IgnoredAny>),
}

macro_rules! module_check {
    ($name:ident, $key:literal, $ty:ty) => {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct $name {
            #[serde(rename = $key)]
            value: Option<$ty>,
            #[serde(flatten)]
            rest: IndexMap<String, IgnoredAny>,
        }
    };
}

module_check!(WriteFilesDoc, "write_files", Vec<WriteFile>);
module_check!(UsersDoc, "users", UsersValue);
module_check!(GroupsDoc, "groups", Groups);
module_check!(RuncmdDoc, "runcmd", Vec<Command>);
module_check!(BootcmdDoc, "bootcmd", Vec<Command>);
module_check!(PackagesDoc, "packages", Vec<Package>);
module_check!(HostnameDoc, "hostname", String);
module_check!(FqdnDoc, "fqdn", String);
module_check!(PackageUpdateDoc, "package_update", bool);
module_check!(PackageUpgradeDoc, "package_upgrade", bool);
module_check!(SshPwauthDoc, "ssh_pwauth", BoolOrText);
module_check!(DisableRootDoc, "disable_root", bool);

/// `users`: a list of entries, one entry, or a comma list of names.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum UsersValue {
    List(Vec<UserEntry>),
    Line(String),
    One(Box<User>),
}

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum BoolOrText {
    Bool(bool),
    Text(String),
}

/// Every problem of a cloud-config document `text`, at most one per module.
pub fn check(text: &str) -> Vec<Problem> {
    let mut found = Vec::new();
    one::<WriteFilesDoc>(text, "write_files", &mut found);
    one::<UsersDoc>(text, "users", &mut found);
    one::<GroupsDoc>(text, "groups", &mut found);
    one::<RuncmdDoc>(text, "runcmd", &mut found);
    one::<BootcmdDoc>(text, "bootcmd", &mut found);
    one::<PackagesDoc>(text, "packages", &mut found);
    one::<HostnameDoc>(text, "hostname", &mut found);
    one::<FqdnDoc>(text, "fqdn", &mut found);
    one::<PackageUpdateDoc>(text, "package_update", &mut found);
    one::<PackageUpgradeDoc>(text, "package_upgrade", &mut found);
    one::<SshPwauthDoc>(text, "ssh_pwauth", &mut found);
    one::<DisableRootDoc>(text, "disable_root", &mut found);
    found
}

fn one<T: serde::de::DeserializeOwned>(text: &str, key: &'static str, found: &mut Vec<Problem>) {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
        with_snippet: false,
    };
    let Err(err) = serde_saphyr::from_str_with_options::<Option<T>>(text, options) else {
        return;
    };
    let location = err.location();
    let message = err.to_string();
    let message = message.lines().next().unwrap_or_default();
    // serde's message for an untagged enum says only that nothing matched.
    let message = match message {
        m if m.contains("did not match any variant") => format!(
            "`{key}` has a value cloud-init's schema does not allow here ({})",
            expected(key)
        ),
        m => format!("`{key}`: {}", strip_location(m)),
    };
    found.push(Problem {
        key,
        line: location.map(|l| l.line() as usize).filter(|&l| l > 0),
        column: location.map(|l| l.column() as usize).filter(|&c| c > 0),
        message,
    });
}

/// What the schema wants, for the messages serde cannot make.
fn expected(key: &str) -> &'static str {
    match key {
        "users" => "a list of names or of mappings with `name`",
        "groups" => "names, or `name: [members]`",
        "runcmd" | "bootcmd" => "each command a string or a list of strings",
        "packages" => "each package a name or `[name, version]`",
        "ssh_pwauth" => "true, false or `unchanged`",
        _ => "see cloud-init's module reference",
    }
}

/// A message without the position serde_saphyr appends (it is reported
/// apart).
fn strip_location(message: &str) -> &str {
    message
        .rsplit_once(" at line ")
        .map_or(message, |(head, _)| head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_values_pass_and_each_bad_module_is_reported_where_the_value_is() {
        let good = "#cloud-config\nhostname: h\nwrite_files:\n  - path: /a\n    content: x\n    permissions: '0644'\n    encoding: b64\nusers:\n  - default\n  - name: u\n    groups: [a, b]\nruncmd:\n  - echo hi\n  - [ls, -l]\npackages: [nginx, [curl, '7.0']]\nssh_pwauth: false\n";
        assert_eq!(check(good), Vec::new());

        let bad = "#cloud-config\nwrite_files:\n  - path: /a\n    permisions: '0644'\nruncmd:\n  - echo ok\n  - {not: a command}\npackage_update: yes-please\n";
        let found = check(bad);
        let keys: Vec<_> = found.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            ["write_files", "runcmd", "package_update"],
            "{found:?}"
        );
        let typo = &found[0];
        assert_eq!(typo.line, Some(4), "{typo:?}");
        assert!(typo.message.contains("permisions"), "{typo:?}");
        assert_eq!(found[1].line, Some(7), "{:?}", found[1]);
        assert_eq!(found[2].line, Some(8), "{:?}", found[2]);
    }

    #[test]
    fn a_write_files_entry_without_path_or_with_an_unknown_encoding_is_refused() {
        let found = check("write_files:\n  - content: x\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("path"), "{found:?}");
        let found = check("write_files:\n  - path: /a\n    encoding: rot13\n");
        assert_eq!(found[0].line, Some(3), "{found:?}");
    }
}
