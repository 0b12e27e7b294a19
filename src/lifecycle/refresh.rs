//! Secrets kept fresh while bootplan supervises: each secret with
//! `refresh:` is fetched again every interval (a tenth of it at random
//! either way, so a fleet does not poll in step). A changed value is
//! registered with the redactor (the old one stays masked), written to its
//! file, and every template step that renders it is rendered again; its
//! `on_change.check` runs against the new file, which is put back to the
//! old content when the check fails; then the `reload`s run, each target
//! once however many files changed. A store that does not answer leaves
//! the current values in place: a warning, a count, another try next time.
//! While a secret cannot be refreshed, or a step's new file was refused by
//! its check, the status says `degraded` with the reasons; it says `ready`
//! again once they are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::plan::{Plan, Reload, ReloadTarget, Step, StepKind};
use crate::steps::process::{Cmd, Output};
use crate::steps::{self, StepContext, StepInputs};
use crate::telemetry::metrics::SECRET_ROTATIONS;
use crate::telemetry::{EventKind, Level};

/// Longest an `on_change.check` or reload command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Keeps the plan's refreshed secrets current until `stop` fires. `app`
/// is the supervised app's process group, for `reload` signals to `app`.
pub async fn keep_fresh(
    plan: &Plan,
    ctx: &StepContext,
    app: Option<u32>,
    stop: &CancellationToken,
) {
    let mut due: Vec<(String, Duration, Instant)> = ctx
        .secrets
        .refresh_intervals()
        .into_iter()
        .map(|(name, every)| {
            let at = next_time(ctx, &name, every, Instant::now());
            (name, every, at)
        })
        .collect();
    let Some(first) = due.iter().map(|d| d.2).min() else {
        return stop.cancelled().await;
    };
    let mut next = first;
    let mut health = Health::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let now = Instant::now();
        ctx.secrets.forget_shared_reads();
        let mut changed = BTreeSet::new();
        for (name, every, at) in due.iter_mut().filter(|d| d.2 <= now) {
            let outcome = match ctx.secrets.refresh(name).await {
                Ok(true) => {
                    health.clear(&format!("secret {name}"));
                    ctx.reporter
                        .notice(Level::Info, format!("secret `{name}` has a new value"));
                    changed.insert(name.clone());
                    "changed"
                }
                Ok(false) => {
                    health.clear(&format!("secret {name}"));
                    "unchanged"
                }
                Err(err) => {
                    ctx.reporter.notice(
                        Level::Warn,
                        format!(
                            "secret `{name}` could not be refreshed; its current value stays: {err}"
                        ),
                    );
                    health.set(
                        format!("secret {name}"),
                        format!("secret `{name}` cannot be refreshed: {err}"),
                    );
                    "failed"
                }
            };
            metrics::counter!(SECRET_ROTATIONS, "secret" => name.clone(), "outcome" => outcome)
                .increment(1);
            // A certificate's next renewal follows from the one just issued.
            *every = ctx.secrets.refresh_interval(name).unwrap_or(*every);
            *at = next_time(ctx, name, *every, now);
        }
        if !changed.is_empty() {
            rerender(plan, ctx, &changed, app, stop, &mut health).await;
        }
        health.report(ctx);
        next = due.iter().map(|d| d.2).min().unwrap_or(next);
    }
}

/// When `name` is next refreshed: when its lease is due (`refresh:
/// lease`), else `every` from `now`, splayed.
fn next_time(ctx: &StepContext, name: &str, every: Duration, now: Instant) -> Instant {
    ctx.secrets
        .refresh_at(name)
        .unwrap_or_else(|| now + splayed(every))
}

/// `every`, a tenth of it at random either way.
fn splayed(every: Duration) -> Duration {
    let tenth = every / 10;
    every - tenth + crate::retry::full_jitter(tenth * 2)
}

/// Renders again the template steps that use a changed secret, checks each
/// new file, and runs the reloads.
async fn rerender(
    plan: &Plan,
    ctx: &StepContext,
    changed: &BTreeSet<String>,
    app: Option<u32>,
    stop: &CancellationToken,
    health: &mut Health,
) {
    // Secrets whose own files changed tell their targets too.
    let mut reloads = Reloads::default();
    for change in changed.iter().filter_map(|n| plan.secret_reloads.get(n)) {
        reloads.add(change);
    }
    for step in plan.steps.iter().filter(|s| uses_any(s, changed)) {
        let key = format!("step {}", step.name);
        match rerender_step(step, ctx, stop).await {
            Ok(()) => {
                health.clear(&key);
                if let Some(change) = &step.on_change {
                    reloads.add(change);
                }
            }
            Err(message) => {
                let message = format!("step `{}`: {message}", step.name);
                ctx.reporter.notice(Level::Error, message.clone());
                health.set(key, message);
                for name in step.secret_refs.iter().filter(|n| changed.contains(*n)) {
                    metrics::counter!(SECRET_ROTATIONS, "secret" => name.clone(), "outcome" => "check_failed")
                        .increment(1);
                }
            }
        }
    }
    // Each after its own random wait (at most its splay), all at once.
    let runs = reloads.0.into_iter().map(|(reload, splay)| async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(crate::retry::full_jitter(splay)) => {
                run_reload(reload, ctx, app, stop).await;
            }
        }
    });
    futures_util::future::join_all(runs).await;
}

/// The problems found since ready, keyed by what they are about, and
/// whether the status has heard of the latest set.
#[derive(Default)]
struct Health {
    problems: BTreeMap<String, String>,
    unreported: bool,
}

impl Health {
    fn set(&mut self, key: String, problem: String) {
        if self.problems.get(&key) != Some(&problem) {
            self.problems.insert(key, problem);
            self.unreported = true;
        }
    }

    fn clear(&mut self, key: &str) {
        self.unreported |= self.problems.remove(key).is_some();
    }

    /// Tells the status (and logs) when the set of problems changed.
    fn report(&mut self, ctx: &StepContext) {
        if std::mem::take(&mut self.unreported) {
            ctx.reporter.emit(EventKind::Health {
                problems: self.problems.values().cloned().collect(),
            });
        }
    }
}

/// The reloads to make after one refresh: each target once, with the
/// longest splay asked for it.
#[derive(Default)]
struct Reloads<'a>(Vec<(&'a Reload, Duration)>);

impl<'a> Reloads<'a> {
    fn add(&mut self, change: &'a crate::plan::OnChange) {
        let Some(reload) = &change.reload else { return };
        match self.0.iter_mut().find(|(r, _)| *r == reload) {
            Some((_, splay)) => *splay = (*splay).max(change.splay),
            None => self.0.push((reload, change.splay)),
        }
    }
}

/// Whether `step` is a template that renders one of `changed`.
fn uses_any(step: &Step, changed: &BTreeSet<String>) -> bool {
    matches!(step.kind, StepKind::Template(_))
        && step.secret_refs.iter().any(|n| changed.contains(n))
}

/// Writes the template again; when its check fails, puts the old content
/// back and says why.
async fn rerender_step(
    step: &Step,
    ctx: &StepContext,
    stop: &CancellationToken,
) -> Result<(), String> {
    let StepKind::Template(spec) = &step.kind else {
        return Ok(());
    };
    let secrets = ctx
        .secrets
        .resolve(&step.secret_refs)
        .await
        .map_err(|e| e.to_string())?;
    let inputs = StepInputs { step, secrets };
    let dest = inputs
        .path(&spec.dest, "template.dest", ctx)
        .map_err(|e| e.to_string())?;
    let old = zeroize::Zeroizing::new(std::fs::read(&dest).ok());
    steps::run_attempt(&inputs, ctx, stop)
        .await
        .map_err(|e| e.to_string())?;
    let Some(check) = step.on_change.as_ref().and_then(|c| c.check.as_ref()) else {
        ctx.reporter.notice(
            Level::Info,
            format!("{} rendered again with a changed secret", dest.display()),
        );
        return Ok(());
    };
    let cmd = inputs.command(check, ctx).map_err(|e| e.to_string())?;
    if let Err(err) = bounded(&step.name, &cmd, ctx, stop).await {
        let restored = match old.as_ref() {
            Some(bytes) => steps::file::write_file(&dest, bytes, spec.mode, spec.owner.as_deref())
                .map_err(|e| e.to_string()),
            None => crate::fsutil::remove_file(&dest).map_err(|e| e.to_string()),
        };
        return Err(match restored {
            Ok(()) => format!(
                "the check of the new {} failed ({err}); the old content was put back, nothing was reloaded",
                dest.display()
            ),
            Err(restore) => format!(
                "the check of the new {} failed ({err}), and the old content could not be put back: {restore}",
                dest.display()
            ),
        });
    }
    ctx.reporter.notice(
        Level::Info,
        format!(
            "{} rendered again with a changed secret and checked",
            dest.display()
        ),
    );
    Ok(())
}

/// Tells a target about changed files.
async fn run_reload(
    reload: &Reload,
    ctx: &StepContext,
    app: Option<u32>,
    stop: &CancellationToken,
) {
    match reload {
        Reload::Signal { signal, target } => {
            let Ok(signal) = Signal::try_from(*signal) else {
                return;
            };
            let sent = match target {
                ReloadTarget::App => app.is_some_and(|pgid| {
                    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal)
                        .is_ok()
                }),
                ReloadTarget::Service(step) => ctx.services.signal(step, signal),
            };
            let who = match target {
                ReloadTarget::App => "the app".to_string(),
                ReloadTarget::Service(step) => format!("service `{step}`"),
            };
            let (level, message) = if sent {
                (
                    Level::Info,
                    format!("sent {signal} to {who}: a file it reads changed"),
                )
            } else {
                (
                    Level::Warn,
                    format!("could not send {signal} to {who}: it is not running"),
                )
            };
            ctx.reporter.notice(level, message);
        }
        Reload::Command(argv) => {
            let cmd = Cmd {
                argv: argv.clone(),
                ..Cmd::default()
            };
            if let Err(err) = bounded("reload", &cmd, ctx, stop).await {
                ctx.reporter.notice(
                    Level::Warn,
                    format!("the reload command `{}` failed: {err}", argv.join(" ")),
                );
            }
        }
    }
}

/// Runs `cmd` to its end as `step`'s output, within [`COMMAND_LIMIT`].
async fn bounded(
    step: &str,
    cmd: &Cmd,
    ctx: &StepContext,
    stop: &CancellationToken,
) -> Result<(), steps::StepError> {
    let token = stop.child_token();
    let run = steps::process::run(step, cmd, ctx, Output::Log, &token);
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => result,
        () = tokio::time::sleep(COMMAND_LIMIT) => {
            token.cancel();
            let _ = run.await;
            Err(steps::StepError::Timeout { after: COMMAND_LIMIT })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::OnChange;

    fn change(signal: i32, splay: u64) -> OnChange {
        OnChange {
            check: None,
            reload: Some(Reload::Signal {
                signal,
                target: ReloadTarget::App,
            }),
            splay: Duration::from_secs(splay),
        }
    }

    #[test]
    fn one_target_is_reloaded_once_with_the_longest_splay() {
        let (a, b, c) = (change(1, 5), change(1, 30), change(10, 0));
        let mut reloads = Reloads::default();
        for change in [&a, &b, &c] {
            reloads.add(change);
        }
        let splays: Vec<u64> = reloads.0.iter().map(|(_, s)| s.as_secs()).collect();
        assert_eq!(splays, [30, 0]);
    }
}
