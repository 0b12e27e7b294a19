//! Secrets kept fresh while bootplan supervises: each secret with
//! `refresh:` is fetched again every interval (a tenth of it at random
//! either way, so a fleet does not poll in step). A changed value is
//! registered with the redactor (the old one stays masked), written to its
//! file, and every template step that renders it is rendered again; its
//! `on_change.check` runs against the new file, which is put back to the
//! old content when the check fails; then the `reload`s run, each target
//! once however many files changed. A store that does not answer leaves
//! the current values in place: a warning, a count, another try next time.
//! A service or the app whose `env` (or argv) uses a changed secret is
//! restarted, since a running process's environment cannot change: once
//! per refresh, instead of any signal to it, after the longest `splay` of
//! the changed secrets' own `on_change`.
//! While a secret cannot be refreshed, or a step's new file was refused by
//! its check, the status says `degraded` with the reasons; it says `ready`
//! again once they are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
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

/// The supervised app as the refresh sees it: its process group, for
/// `reload` signals, and the restarts it asks of the supervisor.
pub struct App {
    pgid: AtomicU32,
    restart: tokio::sync::Notify,
}

impl App {
    pub fn new(pgid: u32) -> App {
        App {
            pgid: AtomicU32::new(pgid),
            restart: tokio::sync::Notify::new(),
        }
    }

    /// The process group of the app now running (after a restart, the new one).
    pub fn pgid(&self) -> u32 {
        self.pgid.load(Ordering::SeqCst)
    }

    pub fn set_pgid(&self, pgid: u32) {
        self.pgid.store(pgid, Ordering::SeqCst);
    }

    /// Resolves when a changed secret in the app's `env` asks for a restart.
    pub async fn restart_asked(&self) {
        self.restart.notified().await;
    }
}

/// The exec step's command rendered again with the current secrets, for
/// a restart of the app.
pub async fn app_request(
    step: &Step,
    ctx: &StepContext,
) -> Result<crate::steps::exec::ExecRequest, steps::StepError> {
    let StepKind::Exec { argv } = &step.kind else {
        return Err(steps::StepError::Internal(format!(
            "step `{}` is not an exec step",
            step.name
        )));
    };
    let secrets = ctx.secrets.resolve(&step.secret_refs).await?;
    let inputs = StepInputs { step, secrets };
    steps::exec::prepare(argv, &inputs, ctx)
}

/// Keeps the plan's refreshed secrets current until `stop` fires. `app`
/// is the supervised app, for `reload` signals and restarts.
pub async fn keep_fresh(
    plan: &Plan,
    ctx: &StepContext,
    app: Option<&App>,
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
    app: Option<&App>,
    stop: &CancellationToken,
    health: &mut Health,
) {
    // Secrets whose own files changed tell their targets too.
    let mut reloads = Reloads::default();
    for change in changed.iter().filter_map(|n| plan.secret_reloads.get(n)) {
        reloads.add(change);
    }
    // A process whose environment (or argv) has a changed secret starts again.
    let splay = changed
        .iter()
        .filter_map(|n| plan.secret_reloads.get(n))
        .map(|c| c.splay)
        .max()
        .unwrap_or_default();
    for step in &plan.steps {
        let target = match step.kind {
            StepKind::Exec { .. } => ReloadTarget::App,
            StepKind::Service { .. } => ReloadTarget::Service(step.name.clone()),
            _ => continue,
        };
        if started_with_any(step, changed) {
            reloads.restart(target, splay);
        }
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
    let runs = reloads
        .into_list()
        .into_iter()
        .map(|(tell, splay)| async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(crate::retry::full_jitter(splay)) => match tell {
                    Tell::Reload(reload) => run_reload(reload, ctx, app, stop).await,
                    Tell::Restart(target) => restart(plan, &target, ctx, app, stop).await,
                }
            }
        });
    futures_util::future::join_all(runs).await;
}

/// Whether `step`'s `env` or argv (what a process is started with) uses
/// one of `changed`.
fn started_with_any(step: &Step, changed: &BTreeSet<String>) -> bool {
    let argv = match &step.kind {
        StepKind::Exec { argv } | StepKind::Service { argv } => argv,
        _ => return false,
    };
    argv.iter().chain(step.env.values()).any(|text| {
        crate::plan::refs::references(text).is_ok_and(|refs| {
            refs.iter().any(|r| {
                r.root == "secrets" && r.name.as_ref().is_some_and(|n| changed.contains(n))
            })
        })
    })
}

/// Starts a service (or asks the supervisor to start the app) again with
/// the new values in its environment.
async fn restart(
    plan: &Plan,
    target: &ReloadTarget,
    ctx: &StepContext,
    app: Option<&App>,
    stop: &CancellationToken,
) {
    match target {
        ReloadTarget::App => match app {
            Some(app) => {
                ctx.reporter
                    .notice(Level::Info, "restarting the app: a secret it uses changed");
                app.restart.notify_one();
            }
            None => ctx.reporter.notice(
                Level::Warn,
                "could not restart the app: it is not supervised",
            ),
        },
        ReloadTarget::Service(name) => {
            let Some(step) = plan.step_id(name).map(|id| &plan.steps[id]) else {
                return;
            };
            if !ctx.services.stop_one(name, ctx.kill_grace).await {
                ctx.reporter.notice(
                    Level::Warn,
                    format!("could not restart service `{name}`: it is not running"),
                );
                return;
            }
            let started = async {
                let secrets = ctx.secrets.resolve(&step.secret_refs).await?;
                let inputs = StepInputs { step, secrets };
                steps::run_attempt(&inputs, ctx, stop).await
            };
            match started.await {
                Ok(()) => ctx.reporter.notice(
                    Level::Info,
                    format!("restarted service `{name}`: a secret it uses changed"),
                ),
                Err(err) => ctx.reporter.notice(
                    Level::Error,
                    format!(
                        "service `{name}` did not start again after a secret it uses changed: {err}"
                    ),
                ),
            }
        }
    }
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

/// What a refresh tells a target.
#[derive(Debug, PartialEq)]
enum Tell<'a> {
    Reload(&'a Reload),
    Restart(ReloadTarget),
}

/// The reloads to make after one refresh: each target once, with the
/// longest splay asked for it; a target that is restarted gets no signal.
#[derive(Default)]
struct Reloads<'a>(Vec<(Tell<'a>, Duration)>);

impl<'a> Reloads<'a> {
    fn add(&mut self, change: &'a crate::plan::OnChange) {
        match &change.reload {
            Some(Reload::Restart(target)) => self.restart(target.clone(), change.splay),
            Some(reload) => self.push(Tell::Reload(reload), change.splay),
            None => {}
        }
    }

    fn restart(&mut self, target: ReloadTarget, splay: Duration) {
        self.push(Tell::Restart(target), splay);
    }

    fn push(&mut self, tell: Tell<'a>, with: Duration) {
        match self.0.iter_mut().find(|(t, _)| *t == tell) {
            Some((_, splay)) => *splay = (*splay).max(with),
            None => self.0.push((tell, with)),
        }
    }

    /// The list to run: a signal to a target that is restarted is
    /// dropped (the new process reads every file anew), its splay kept.
    fn into_list(self) -> Vec<(Tell<'a>, Duration)> {
        let (mut list, signals): (Vec<_>, Vec<_>) = self
            .0
            .into_iter()
            .partition(|(t, _)| !matches!(t, Tell::Reload(Reload::Signal { .. })));
        for (tell, splay) in signals {
            let Tell::Reload(Reload::Signal { target, .. }) = &tell else {
                continue;
            };
            match list
                .iter_mut()
                .find(|(t, _)| matches!(t, Tell::Restart(r) if r == target))
            {
                Some((_, longest)) => *longest = (*longest).max(splay),
                None => list.push((tell, splay)),
            }
        }
        list
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
    app: Option<&App>,
    stop: &CancellationToken,
) {
    match reload {
        Reload::Signal { signal, target } => {
            let Ok(signal) = Signal::try_from(*signal) else {
                return;
            };
            let sent = match target {
                ReloadTarget::App => app.is_some_and(|app| {
                    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(app.pgid() as i32), signal)
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
        // Made by `restart`: `Reloads` keeps restarts apart.
        Reload::Restart(_) => {}
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

    #[test]
    fn a_restarted_target_gets_no_signal_but_its_splay() {
        let (a, b) = (change(1, 20), change(10, 0));
        let mut reloads = Reloads::default();
        reloads.add(&a);
        reloads.restart(ReloadTarget::App, Duration::from_secs(5));
        reloads.add(&b);
        reloads.restart(ReloadTarget::Service("db".into()), Duration::ZERO);
        let list = reloads.into_list();
        assert_eq!(
            list,
            [
                (Tell::Restart(ReloadTarget::App), Duration::from_secs(20)),
                (
                    Tell::Restart(ReloadTarget::Service("db".into())),
                    Duration::ZERO
                ),
            ]
        );
    }
}
