//! `packages`: repositories with their signing keys, then one transaction
//! of the system's package manager. What is installed is read with one
//! query of the package database; when every request is satisfied the
//! step ends there, with no index refresh.

use super::{Env, Report};
use crate::plan::os::{PackagesSpec, RepoSpec, syntax};
use crate::steps::StepError;
use crate::system::pkg::{self, Manager, Request};

pub async fn converge(
    spec: &PackagesSpec,
    env: &Env<'_>,
    report: &mut Report,
) -> Result<(), StepError> {
    let r = env.render;
    let render_list = |list: &[String], key: &str| {
        list.iter()
            .enumerate()
            .map(|(i, text)| {
                r.checked(text, &format!("packages.{key}[{i}]"), syntax::package)
                    .map(|s| Request::parse(&s))
            })
            .collect::<Result<Vec<_>, StepError>>()
    };
    let install = render_list(&spec.install, "install")?;
    let remove = render_list(&spec.remove, "remove")?;
    let manager = pkg::detect(spec.manager)?;

    // Repositories first: a changed one means the indexes must be refreshed.
    let mut repos_changed = false;
    let mut unindexed = false;
    // Every repository rendered and checked before any file is written.
    let rendered: Vec<RepoSpec> = spec
        .repos
        .iter()
        .enumerate()
        .map(|(i, repo)| {
            Ok::<_, StepError>(RepoSpec {
                uri: r.checked(
                    &repo.uri,
                    &format!("packages.repos[{i}].uri"),
                    syntax::repo_uri,
                )?,
                key: repo
                    .key
                    .as_deref()
                    .map(|k| r.checked(k, &format!("packages.repos[{i}].key"), syntax::repo_key))
                    .transpose()?,
                ..repo.clone()
            })
        })
        .collect::<Result<_, _>>()?;
    for rendered in &rendered {
        let mut changed = false;
        for (path, content, mode) in pkg::repo_files(manager, rendered) {
            changed |= super::sync_file(env, &path, &content, mode)?;
        }
        if manager == Manager::Apk {
            let path = std::path::Path::new("/etc/apk/repositories");
            let text = super::read_existing(path)?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if let Some(new) = pkg::apk_repositories(&text, &rendered.uri) {
                changed |= super::sync_file(env, path, new.as_bytes(), 0o644)?;
            }
        }
        unindexed |= !pkg::repo_indexed(manager, &rendered.uri);
        if changed {
            report.change(format!(
                "write repository {} ({})",
                rendered.name, rendered.uri
            ));
            repos_changed = true;
        }
    }

    let mut names: Vec<&str> = install.iter().map(|q| q.name.as_str()).collect();
    names.extend(remove.iter().map(|q| q.name.as_str()));
    let installed = pkg::installed(env.sys, manager, &names).await?;
    let to_install: Vec<&Request> = install
        .iter()
        .filter(|q| !q.satisfied_by(installed.get(&q.name).map(String::as_str)))
        .collect();
    let to_remove: Vec<&Request> = remove
        .iter()
        .filter(|q| installed.contains_key(&q.name))
        .collect();
    if to_install.is_empty() && to_remove.is_empty() {
        if report.changes.is_empty() {
            report.satisfied = format!(
                "{} of {} packages installed{}",
                install.len(),
                install.len(),
                if remove.is_empty() {
                    String::new()
                } else {
                    format!(", none of {} to remove present", remove.len())
                }
            );
        }
        return Ok(());
    }
    let show = |list: &[&Request]| {
        list.iter()
            .map(|q| q.spec.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut planned = Vec::new();
    if !to_install.is_empty() {
        planned.push(format!(
            "install {} ({} of {} packages installed)",
            show(&to_install),
            install.len() - to_install.len(),
            install.len()
        ));
    }
    if !to_remove.is_empty() {
        planned.push(format!("remove {}", show(&to_remove)));
    }
    if !env.mode.changes() {
        report.changes.extend(planned);
        return Ok(());
    }
    let lock_wait = env.lock_wait();
    if !to_install.is_empty()
        && (spec.update || repos_changed || unindexed || pkg::has_no_indexes(manager))
    {
        say_lock(env, manager, lock_wait);
        let ran = env.sys.run(&pkg::refresh(manager, lock_wait)?).await?;
        if let Some(failure) = pkg::refresh_failure(manager, &ran) {
            return Err(failure.into());
        }
    }
    let requested: Vec<&Request> = to_install.iter().chain(&to_remove).copied().collect();
    for tool in pkg::transaction(manager, &to_install, &to_remove, lock_wait)? {
        say_lock(env, manager, lock_wait);
        let ran = env.sys.run(&tool).await?;
        if !ran.success() {
            return Err(pkg::classify(manager, &ran, &requested).into());
        }
    }
    report.changes.extend(planned);
    Ok(())
}

/// Says so when another process holds the package manager's lock: the
/// tool waits for it, up to the step's timeout.
fn say_lock(env: &Env<'_>, manager: Manager, lock_wait: u64) {
    if let Some((pid, path)) = pkg::lock_holder(manager) {
        let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        env.sys.say(format!(
            "waiting for the lock {path} held by process {pid} ({}), up to {lock_wait}s",
            program.trim()
        ));
    }
}
