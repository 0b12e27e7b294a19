//! The OS fields of a step as written (`RawStep`), resolved with the OS
//! kinds of `os.rs`: the kind, the privilege fields, and the steps an
//! owner or user implicitly needs. Apart from `os.rs` so that the raw
//! step may hold the OS types without `os.rs` knowing the raw step.

use std::collections::HashMap;
use std::path::Path;

use indexmap::IndexMap;
use serde_saphyr::Spanned;

use super::os::*;
use super::raw::RawStep;
use super::refs::is_template;

/// The OS kind of `raw`, if it has one, with its problems. `None` when the
/// step carries no OS kind key; `Some((None, problems))` when it does but
/// the kind could not be built.
pub fn resolve_kind(
    plan_dir: &Path,
    field: &str,
    raw: &RawStep,
) -> Option<(Option<OsKind>, Vec<Problem>)> {
    let mut problems = Problems::default();
    let kind = if let Some(UserField::Kind(user)) = &raw.user {
        Some(OsKind::User(resolve_user(field, user, &mut problems)))
    } else if let Some(GroupField::Kind(group)) = &raw.group {
        Some(OsKind::Group(resolve_group(field, group, &mut problems)))
    } else if let Some(packages) = &raw.packages {
        resolve_packages(field, packages, &mut problems).map(OsKind::Packages)
    } else if let Some(hostname) = &raw.hostname {
        Some(OsKind::Hostname(resolve_hostname(
            field,
            hostname,
            &mut problems,
        )))
    } else if let Some(values) = &raw.sysctl {
        Some(OsKind::Sysctl(resolve_sysctl(field, values, &mut problems)))
    } else if let Some(unit) = &raw.unit {
        resolve_unit(plan_dir, field, unit, &mut problems).map(OsKind::Unit)
    } else if let Some(keys) = &raw.ssh_host_keys {
        Some(OsKind::SshHostKeys(resolve_host_keys(
            field,
            keys,
            &mut problems,
        )))
    } else {
        return None;
    };
    Some((kind, problems.0))
}

/// The privilege fields of a step, checked. `kind` is the step's kind name,
/// when it has one.
pub fn resolve_privileges(
    field: &str,
    raw: &RawStep,
    kind: Option<&str>,
) -> (Privileges, Vec<Problem>) {
    let mut problems = Problems::default();
    let mut privileges = Privileges::default();
    let user = match &raw.user {
        Some(UserField::Name(name)) => Some(name.clone()),
        _ => None,
    };
    let group = match &raw.group {
        Some(GroupField::Name(name)) => Some(name.clone()),
        _ => None,
    };
    let command_kind = matches!(kind, Some("run" | "shell" | "service" | "exec"));
    let given: Vec<&str> = [
        ("user", user.is_some()),
        ("group", group.is_some()),
        ("groups", raw.groups.is_some()),
        ("umask", raw.umask.is_some()),
        ("no_new_privs", raw.no_new_privs.is_some()),
        ("limits", raw.limits.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if kind.is_some() && !command_kind && !given.is_empty() {
        problems.push((
            format!("{field}.{}", given[0]),
            format!(
                "`{}` applies to the command of a run, shell, service or exec step, not to a `{}` step",
                given.join("`, `"),
                kind.unwrap_or("")
            ),
            None,
        ));
    }
    if raw.stop_signal.is_some() && kind.is_some() && !matches!(kind, Some("service" | "exec")) {
        problems.push((
            format!("{field}.stop_signal"),
            "`stop_signal` applies to service and exec steps (how bootplan asks them to stop)"
                .into(),
            None,
        ));
    }
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if let Some(user) = &user
        && !numeric(user)
    {
        literal(
            &mut problems,
            format!("{field}.user"),
            user,
            syntax::account_name,
        );
    }
    if let Some(group) = &group
        && !numeric(group)
    {
        literal(
            &mut problems,
            format!("{field}.group"),
            group,
            syntax::account_name,
        );
    }
    for (i, group) in raw.groups.iter().flatten().enumerate() {
        if !numeric(group) {
            literal(
                &mut problems,
                format!("{field}.groups[{i}]"),
                group,
                syntax::account_name,
            );
        }
    }
    if user.is_none() && (group.is_some() || raw.groups.is_some()) {
        problems.push((
            format!("{field}.group"),
            "`group` and `groups` go with `user`: the command keeps root's identity otherwise"
                .into(),
            Some("add `user: NAME`".into()),
        ));
    }
    if let Some(text) = &raw.umask {
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(mask) if mask <= 0o777 => privileges.umask = Some(mask),
            _ => problems.push((
                format!("{field}.umask"),
                format!("invalid umask `{text}`"),
                Some("octal digits in a string, e.g. \"0027\"".into()),
            )),
        }
    }
    if let Some(limits) = &raw.limits {
        for (key, value, slot) in [
            ("nofile", &limits.nofile, &mut privileges.limits.nofile),
            ("nproc", &limits.nproc, &mut privileges.limits.nproc),
            ("core", &limits.core, &mut privileges.limits.core),
        ] {
            if let Some(value) = value {
                match parse_limit(&value.0) {
                    Ok(limit) => *slot = Some(limit),
                    Err(message) => problems.push((
                        format!("{field}.limits.{key}"),
                        message,
                        Some("a number (soft and hard), `SOFT:HARD`, or `unlimited`".into()),
                    )),
                }
            }
        }
    }
    if let Some(name) = &raw.stop_signal {
        match parse_signal(name) {
            Some(signal) => privileges.stop_signal = Some(signal),
            None => problems.push((
                format!("{field}.stop_signal"),
                format!("unknown signal `{name}`"),
                Some("e.g. `SIGTERM`, `SIGQUIT`, `SIGINT`, `SIGUSR1`".into()),
            )),
        }
    }
    privileges.user = user;
    privileges.group = group;
    privileges.groups = raw.groups.clone();
    privileges.no_new_privs = raw.no_new_privs.unwrap_or(false);
    (privileges, problems.0)
}

/// Steps that other steps need without saying so: a `file`/`template`
/// with `owner: deploy[:grp]` or a command with `user: deploy` needs the
/// step that creates `deploy` (and the group's); a user needs the steps
/// that create its groups. Returns (dependent, dependency) pairs of step
/// indexes, in plan order. Only literal names are known at load time.
pub fn implicit_needs(steps: &IndexMap<String, Spanned<RawStep>>) -> Vec<(usize, usize)> {
    let mut user_steps: HashMap<&str, usize> = HashMap::new();
    let mut group_steps: HashMap<&str, usize> = HashMap::new();
    for (i, step) in steps.values().enumerate() {
        match (&step.value.user, &step.value.group) {
            (Some(UserField::Kind(user)), _)
                if user.state.unwrap_or_default() == Presence::Present
                    && !is_template(&user.name) =>
            {
                user_steps.entry(user.name.as_str()).or_insert(i);
                // useradd makes a group named after the user when none is given.
                if user.group.is_none() {
                    group_steps.entry(user.name.as_str()).or_insert(i);
                }
            }
            (_, Some(GroupField::Kind(group)))
                if group.state.unwrap_or_default() == Presence::Present
                    && !is_template(&group.name) =>
            {
                group_steps.insert(group.name.as_str(), i);
            }
            _ => {}
        }
    }
    let mut edges = Vec::new();
    for (i, step) in steps.values().enumerate() {
        let raw = &step.value;
        let mut users: Vec<&str> = Vec::new();
        let mut groups: Vec<&str> = Vec::new();
        let owner = raw
            .file
            .as_ref()
            .and_then(|f| f.owner.as_deref())
            .or(raw.template.as_ref().and_then(|t| t.owner.as_deref()));
        if let Some(owner) = owner {
            match owner.split_once(':') {
                Some((u, g)) => {
                    users.push(u);
                    groups.push(g);
                }
                None => users.push(owner),
            }
        }
        match &raw.user {
            Some(UserField::Name(name)) => users.push(name),
            Some(UserField::Kind(user)) => {
                groups.extend(user.group.as_deref());
                groups.extend(user.groups.iter().flatten().map(String::as_str));
            }
            None => {}
        }
        if let Some(GroupField::Name(name)) = &raw.group {
            groups.push(name);
        }
        groups.extend(
            raw.groups
                .iter()
                .flatten()
                .map(String::as_str)
                .filter(|_| matches!(raw.user, Some(UserField::Name(_)))),
        );
        let deps = users
            .iter()
            .filter_map(|u| user_steps.get(u))
            .chain(groups.iter().filter_map(|g| group_steps.get(g)));
        for &dep in deps {
            if dep != i && !edges.contains(&(i, dep)) {
                edges.push((i, dep));
            }
        }
    }
    edges
}
