//! Supervision: bootplan stays the parent of the `exec` app instead of
//! replacing itself with it.
//!
//! The app runs in its own process group. SIGTERM, SIGINT, SIGHUP, SIGQUIT,
//! SIGUSR1, SIGUSR2 and SIGWINCH are forwarded to that group. The app is
//! "ready" when the exec step's `ready` check passes (at once without one);
//! then the instance is registered and the run's verdict (`RunFinished`) is
//! given, which the sinks turn into READY=1, the readiness file, the status
//! file and the report. On SIGTERM (and SIGINT before the app is ready) the
//! instance is deregistered first, then the app gets the grace to exit (then
//! SIGKILL); when the app has exited, any registration left is removed and
//! the services are stopped newest first. bootplan exits with the app's
//! code (128+n for signal n). A required service gone for good stops the app
//! and exits with `service.failed`'s code.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::register::{self, Registration};
use super::signals::Forwarder;
use super::verdict::Ending as Verdict;
use super::{Options, notify, readyfile};
use crate::engine::RunSummary;
use crate::error::{ErrorCode, exit};
use crate::plan::lifecycle::Registry;
use crate::plan::{Plan, Step, WaitTarget};
use crate::process::{Stdio, reaper};
use crate::steps::exec::ExecRequest;
use crate::steps::probe::{NotifyListener, Probe};
use crate::steps::service::ServiceFailure;
use crate::steps::{StepContext, StepError, StepInputs};
use crate::telemetry::{ErrorInfo, EventKind, Level, Outcome, StepState};

/// Where the supervised run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The app runs but is not ready yet; the run has no verdict.
    Starting,
    /// The app is ready and registered; the verdict was given.
    Ready,
}

/// How long the app must have been ready before the lean supervisor takes
/// it over: the hand-over costs an `exec`, which an app that exits at once
/// should not pay.
const LEAN_AFTER: Duration = Duration::from_secs(1);

/// How supervision ended.
pub enum Supervised {
    /// The app exited (or never started): bootplan's exit code.
    Exited(i32),
    /// The app is ready and only the app needs bootplan: the lean
    /// supervisor takes over (see [`super::lean`]).
    HandedOff(Box<super::lean::Handoff>),
}

/// Why supervision is ending, when not by the app's own exit.
enum Ending {
    Signal(i32),
    Service(ServiceFailure),
    Deadline,
    Failed(ErrorInfo),
    /// The app was ready but the verdict could not be recorded (the exit code).
    Unrecorded(i32),
}

/// Runs the app under supervision and returns bootplan's exit code, or
/// what the lean supervisor needs to take over.
pub async fn supervise(
    plan: &Plan,
    ctx: Arc<StepContext>,
    summary: RunSummary,
    request: ExecRequest,
    signals: &mut Forwarder,
    opts: &Options,
) -> Supervised {
    let Some(step) = plan.step_id(&request.step).map(|id| &plan.steps[id]) else {
        return Supervised::Exited(exit::SOFTWARE);
    };
    let grace = plan.lifecycle.stop_grace.unwrap_or(plan.kill_grace);
    let deadline =
        tokio::time::Instant::now() + plan.deadline.saturating_sub(opts.verdict.started.elapsed());
    if let Some(sig) = signals.drain_stale() {
        ctx.reporter.emit(EventKind::StepNotRun {
            step: step.name.clone(),
            reason: format!("bootplan received signal {sig} before the app started"),
        });
        ctx.services.stop_all(grace).await;
        let info = ErrorInfo {
            code: ErrorCode::RunInterrupted,
            message: format!("bootplan received signal {sig} before the app started"),
        };
        let (outcome, code) = (Outcome::Interrupted, 128 + sig);
        return Supervised::Exited(
            finish_run(plan, &ctx, &summary, outcome, code, Some(info), None, opts).await,
        );
    }
    let app_started = Instant::now();
    ctx.reporter.emit(EventKind::StepStarted {
        step: step.name.clone(),
    });
    ctx.reporter.emit(EventKind::AttemptStarted {
        step: step.name.clone(),
        attempt: 1,
    });

    // A service lost between the engine's last look and now: do not start the app.
    if let Some(failure) = ctx.services.failed() {
        let step_name = failure.step.clone();
        let why = Some(failure.error.clone());
        finish_step(&ctx, step, StepState::Cancelled, why, app_started);
        ctx.services.stop_all(grace).await;
        let code = failure.error.code.exit_code();
        let failed = Some(step_name);
        return Supervised::Exited(
            finish_run(
                plan,
                &ctx,
                &summary,
                Outcome::Failed,
                code,
                Some(failure.error),
                failed,
                opts,
            )
            .await,
        );
    }
    let prepared = prepare_probe(step, &ctx).await;
    let (probe, listener) = match prepared {
        Ok(pair) => pair,
        Err(err) => {
            let info = ErrorInfo {
                code: err.code(),
                message: err.to_string(),
            };
            return Supervised::Exited(
                fail_before_start(plan, &ctx, &summary, step, info, grace, app_started, opts).await,
            );
        }
    };
    let mut app = match spawn_app(&request, listener.as_deref().map(NotifyListener::path)) {
        Ok(app) => {
            if let Some(listener) = &listener {
                listener.expect_from(app.members());
            }
            app
        }
        Err(err) => {
            let info = ErrorInfo {
                code: ErrorCode::ExecFailed,
                message: format!("cannot start `{}`: {err}", request.cmd.program()),
            };
            return Supervised::Exited(
                fail_before_start(plan, &ctx, &summary, step, info, grace, app_started, opts).await,
            );
        }
    };
    let pid = app.pid();
    // The app's process group; a restart (a secret in its `env` changed) makes a new one.
    let control = super::refresh::App::new(pid);
    let pgid = || Pid::from_raw(control.pgid() as i32);
    ctx.reporter.notice(
        Level::Info,
        format!("supervising `{}` (pid {pid})", request.cmd.program()),
    );

    let probe_cancel = CancellationToken::new();
    let readiness = async {
        match &probe {
            Some(probe) => probe.wait(step.timeout, &probe_cancel, || None).await,
            None => Ok(()),
        }
    };
    tokio::pin!(readiness);
    let mut restarting = false;
    // When, and with which log, the lean supervisor takes over.
    let mut lean: Option<(tokio::time::Instant, super::lean::LogSpec)> = None;
    let mut phase = Phase::Starting;
    let mut ending: Option<Ending> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut registration: Option<Registration> = None;
    // `stop_signal:` of the exec step: what asks the app to stop.
    let stop_signal = request
        .cmd
        .stop_signal
        .and_then(|s| Signal::try_from(s).ok())
        .unwrap_or(Signal::SIGTERM);
    let stop_app = |kill_at: &mut Option<tokio::time::Instant>| {
        let _ = killpg(pgid(), stop_signal);
        *kill_at = Some(tokio::time::Instant::now() + grace);
    };

    let refresh_stop = CancellationToken::new();
    let refresher = super::refresh::keep_fresh(plan, &ctx, Some(&control), &refresh_stop);
    tokio::pin!(refresher);
    let app_code = loop {
        tokio::select! {
            status = app.wait() => {
                let code = status.map_or(exit::SOFTWARE, exit_code);
                if !(restarting && ending.is_none()) {
                    break Ok(code);
                }
                restarting = false;
                kill_at = None;
                match restart_app(step, &ctx, listener.as_deref()).await {
                    Ok(again) => {
                        control.set_pgid(again.pid());
                        app = again;
                    }
                    Err(message) => {
                        ctx.reporter.notice(Level::Error, message);
                        break Ok(code);
                    }
                }
            }
            () = control.restart_asked(), if phase == Phase::Ready && ending.is_none() && !restarting => {
                restarting = true;
                stop_app(&mut kill_at);
            }
            () = &mut refresher, if phase == Phase::Ready && ending.is_none() => {}
            result = &mut readiness, if phase == Phase::Starting && ending.is_none() => {
                match result.map_err(|e| ErrorInfo { code: e.code(), message: format!("the app did not get ready: {e}") }) {
                    Ok(()) => match register_instance(plan, &ctx).await {
                        Ok(reg) => {
                            registration = reg;
                            ctx.reporter.emit(EventKind::StepFinished {
                                step: step.name.clone(),
                                state: StepState::Done,
                                attempts: 1,
                                duration: app_started.elapsed(),
                                error: None,
                            });
                            let code = opts.verdict.give(Verdict::from(&summary));
                            if code == exit::READY {
                                phase = Phase::Ready;
                                // Nothing needs a secret any more, unless some are kept fresh.
                                if !ctx.secrets.refreshes() {
                                    super::close_secrets(&ctx).await;
                                }
                                let alone = registration.is_none()
                                    && !ctx.secrets.refreshes()
                                    && ctx.services.is_empty();
                                lean = opts.lean.clone().filter(|_| alone).map(|log| {
                                    (tokio::time::Instant::now() + LEAN_AFTER, log)
                                });
                            } else {
                                // Ready, but bootplan could not record it.
                                phase = Phase::Ready;
                                ending = Some(Ending::Unrecorded(code));
                                if let Some(reg) = registration.take() {
                                    reg.deregister(&ctx.reporter).await;
                                }
                                stop_app(&mut kill_at);
                            }
                        }
                        Err(info) => {
                            ending = Some(Ending::Failed(info));
                            stop_app(&mut kill_at);
                        }
                    },
                    Err(info) => {
                        ending = Some(Ending::Failed(info));
                        stop_app(&mut kill_at);
                    }
                }
            }
            sig = signals.recv() => {
                // SIGTERM asks for a stop. SIGINT does too before the app is
                // ready (as for the engine); after that the app decides (a
                // trapped Ctrl-C must not get it killed).
                let stop = sig == libc::SIGTERM || (sig == libc::SIGINT && phase == Phase::Starting);
                if stop && ending.is_none() {
                    // Leave discovery first, so nobody is sent to an app that is stopping.
                    if let Some(reg) = registration.take() {
                        reg.deregister(&ctx.reporter).await;
                    }
                }
                let forwarded = if sig == libc::SIGTERM {
                    stop_signal
                } else {
                    Signal::try_from(sig).unwrap_or(Signal::SIGTERM)
                };
                let _ = killpg(pgid(), forwarded);
                if stop && ending.is_none() {
                    ctx.reporter.notice(Level::Info, format!("signal {sig}: stopping the app (grace {})", humantime::format_duration(grace)));
                    ending = Some(Ending::Signal(sig));
                    kill_at = Some(tokio::time::Instant::now() + grace);
                }
            }
            Some(failure) = ctx.services.next_failure(), if ending.is_none() => {
                ending = Some(Ending::Service(failure));
                if let Some(reg) = registration.take() {
                    reg.deregister(&ctx.reporter).await;
                }
                stop_app(&mut kill_at);
            }
            () = tokio::time::sleep_until(deadline), if phase == Phase::Starting && ending.is_none() => {
                ending = Some(Ending::Deadline);
                stop_app(&mut kill_at);
            }
            () = sleep_until_opt(lean.as_ref().map(|l| l.0)), if ending.is_none() && !restarting => {
                // An app that is gone already needs no hand-over.
                if let Ok(Some(status)) = app.try_wait() {
                    break Ok(exit_code(status));
                }
                if let Some((_, log)) = lean.take() {
                    break Err(log);
                }
            }
            () = sleep_until_opt(kill_at) => {
                ctx.reporter.notice(Level::Warn, "the app outlived its grace; SIGKILL");
                let _ = killpg(pgid(), Signal::SIGKILL);
                kill_at = None;
            }
        }
    };
    // Anything the app left in its tree went with it when it exited.
    probe_cancel.cancel();
    refresh_stop.cancel();
    drop(listener);
    let app_code = match app_code {
        Ok(code) => code,
        Err(log) => {
            let stop = (stop_signal, grace);
            let handoff = hand_off(app, &request, stop, signals, &ctx, opts, log).await;
            return Supervised::HandedOff(Box::new(handoff));
        }
    };
    notify::stopping();
    readyfile::remove(&opts.verdict.ready_file);
    if let Some(reg) = registration {
        reg.deregister(&ctx.reporter).await;
    }
    ctx.services.stop_all(grace).await;
    super::close_secrets(&ctx).await;
    super::remove_secret_files(&ctx);
    let orphans = reaper::orphans_reaped();
    if orphans > 0 {
        ctx.reporter.notice(
            Level::Debug,
            format!("reaped {orphans} orphaned process(es)"),
        );
    }
    Supervised::Exited(
        conclude(
            plan,
            &ctx,
            &summary,
            step,
            phase,
            ending,
            app_code,
            app_started,
            opts,
        )
        .await,
    )
}

/// Keeps the services of a ready, app-less plan running until SIGTERM or
/// SIGINT (exit 0) or until a required service is gone for good (exit 69);
/// then stops them newest first. Other signals are ignored.
pub async fn hold_services(
    plan: &Plan,
    ctx: &StepContext,
    signals: &mut Forwarder,
    grace: Duration,
    ready_file: &Path,
) -> i32 {
    let _ = signals.drain_stale();
    ctx.reporter
        .notice(Level::Info, "ready; supervising the services until SIGTERM");
    let refresh_stop = CancellationToken::new();
    let refresher = super::refresh::keep_fresh(plan, ctx, None, &refresh_stop);
    tokio::pin!(refresher);
    let code = loop {
        tokio::select! {
            () = &mut refresher => {}
            sig = signals.recv() => {
                if sig == libc::SIGTERM || sig == libc::SIGINT {
                    ctx.reporter.notice(Level::Info, format!("signal {sig}: stopping the services"));
                    break exit::READY;
                }
            }
            Some(failure) = ctx.services.next_failure() => {
                ctx.reporter.notice(
                    Level::Error,
                    format!("{} [{}]", failure.error.message, failure.error.code),
                );
                break failure.error.code.exit_code();
            }
        }
    };
    refresh_stop.cancel();
    notify::stopping();
    readyfile::remove(ready_file);
    ctx.services.stop_all(grace).await;
    super::close_secrets(ctx).await;
    super::remove_secret_files(ctx);
    code
}

/// What the lean supervisor needs to take the ready app over (see
/// [`super::lean`]). From here on the forwarded signals stay pending for
/// it; those received already are passed on.
async fn hand_off(
    app: crate::process::Child,
    request: &ExecRequest,
    (stop_signal, grace): (Signal, Duration),
    signals: &mut Forwarder,
    ctx: &StepContext,
    opts: &Options,
    log: super::lean::LogSpec,
) -> super::lean::Handoff {
    super::lean::hold_signals();
    // A signal caught before the block reaches the forwarder once the
    // runtime's driver has run.
    tokio::task::yield_now().await;
    let pending = signals.drain_all();
    let app = crate::process::Released {
        stop_signal: stop_signal as i32,
        ..app.release()
    };
    super::lean::Handoff {
        app,
        program: request.cmd.program().to_string(),
        grace_ms: grace.as_millis() as u64,
        pending,
        ready_file: opts.verdict.ready_file.clone(),
        secret_files: ctx.secrets.file_paths(),
        run_group: None,
        log,
    }
}

/// Starts the app again, with its `env` rendered from the current secrets.
async fn restart_app(
    step: &Step,
    ctx: &StepContext,
    listener: Option<&NotifyListener>,
) -> Result<crate::process::Child, String> {
    let request = super::refresh::app_request(step, ctx)
        .await
        .map_err(|e| format!("could not start the app again: {e}"))?;
    let app = spawn_app(&request, listener.map(NotifyListener::path))
        .map_err(|e| format!("could not start `{}` again: {e}", request.cmd.program()))?;
    if let Some(listener) = listener {
        listener.expect_from(app.members());
    }
    ctx.reporter.notice(
        Level::Info,
        format!(
            "supervising `{}` again (pid {})",
            request.cmd.program(),
            app.pid()
        ),
    );
    Ok(app)
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The verdict and exit code once the app has exited.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    plan: &Plan,
    ctx: &Arc<StepContext>,
    summary: &RunSummary,
    step: &Step,
    phase: Phase,
    ending: Option<Ending>,
    app_code: i32,
    app_started: Instant,
    opts: &Options,
) -> i32 {
    // Before ready, the app's step ends failed (its own exit, or a failed
    // bootplan) or cancelled (a lost service, the deadline, a signal).
    let (state, outcome, code, info, failed_step) = match (phase, ending) {
        (Phase::Ready, None | Some(Ending::Signal(_))) => {
            ctx.reporter
                .notice(Level::Info, format!("the app exited with code {app_code}"));
            return app_code;
        }
        (Phase::Ready, Some(Ending::Service(f))) => {
            ctx.reporter.notice(
                Level::Error,
                format!("stopped the app: {} [{}]", f.error.message, f.error.code),
            );
            return f.error.code.exit_code();
        }
        (Phase::Ready, Some(Ending::Deadline | Ending::Failed(_))) => return app_code,
        (_, Some(Ending::Unrecorded(code))) => return code,
        (Phase::Starting, None) => app_failed(
            ErrorInfo {
                code: ErrorCode::StepExitNonzero,
                message: format!("the app exited with code {app_code} before it was ready"),
            },
            app_code,
            step,
        ),
        (Phase::Starting, Some(Ending::Failed(info))) => app_failed(info, app_code, step),
        (Phase::Starting, Some(Ending::Service(f))) => {
            let code = f.error.code.exit_code();
            (
                StepState::Cancelled,
                Outcome::Failed,
                code,
                f.error,
                Some(f.step),
            )
        }
        (Phase::Starting, Some(Ending::Deadline)) => {
            let info = ErrorInfo {
                code: ErrorCode::DeadlineExceeded,
                message: format!(
                    "the plan's deadline of {} passed before the app was ready",
                    humantime::format_duration(plan.deadline)
                ),
            };
            (
                StepState::Cancelled,
                Outcome::DeadlineExceeded,
                exit::DEADLINE,
                info,
                None,
            )
        }
        (Phase::Starting, Some(Ending::Signal(sig))) => {
            let info = ErrorInfo {
                code: ErrorCode::RunInterrupted,
                message: format!("bootplan received signal {sig} before the app was ready"),
            };
            (
                StepState::Cancelled,
                Outcome::Interrupted,
                128 + sig,
                info,
                None,
            )
        }
    };
    finish_step(ctx, step, state, Some(info.clone()), app_started);
    finish_run(
        plan,
        ctx,
        summary,
        outcome,
        code,
        Some(info),
        failed_step,
        opts,
    )
    .await
}

/// The verdict parts when the app's step failed before ready: the app's own
/// exit code when it simply exited non-zero, else the error's.
fn app_failed(
    failure: ErrorInfo,
    app_code: i32,
    step: &Step,
) -> (StepState, Outcome, i32, ErrorInfo, Option<String>) {
    let code = if failure.code == ErrorCode::StepExitNonzero && app_code != 0 {
        app_code
    } else {
        failure.code.exit_code()
    };
    let failed_step = Some(step.name.clone());
    (
        StepState::Failed,
        Outcome::Failed,
        code,
        failure,
        failed_step,
    )
}

fn finish_step(
    ctx: &StepContext,
    step: &Step,
    state: StepState,
    error: Option<ErrorInfo>,
    started: Instant,
) {
    ctx.reporter.emit(EventKind::StepFinished {
        step: step.name.clone(),
        state,
        attempts: 1,
        duration: started.elapsed(),
        error,
    });
}

/// Gives a failed verdict: rollback when the plan asks, the secret
/// store's tokens revoked, then the verdict.
#[allow(clippy::too_many_arguments)]
async fn finish_run(
    plan: &Plan,
    ctx: &Arc<StepContext>,
    summary: &RunSummary,
    outcome: Outcome,
    exit_code: i32,
    error: Option<ErrorInfo>,
    failed_step: Option<String>,
    opts: &Options,
) -> i32 {
    if plan.rollback {
        crate::engine::rollback(plan, &summary.completed, ctx).await;
    }
    super::close_secrets(ctx).await;
    opts.verdict.give(Verdict {
        outcome,
        exit_code,
        error,
        failed_step,
    })
}

/// The app never started: stop the services and give the verdict.
#[allow(clippy::too_many_arguments)]
async fn fail_before_start(
    plan: &Plan,
    ctx: &Arc<StepContext>,
    summary: &RunSummary,
    step: &Step,
    info: ErrorInfo,
    grace: Duration,
    started: Instant,
    opts: &Options,
) -> i32 {
    finish_step(ctx, step, StepState::Failed, Some(info.clone()), started);
    ctx.services.stop_all(grace).await;
    let code = info.code.exit_code();
    let failed_step = Some(step.name.clone());
    finish_run(
        plan,
        ctx,
        summary,
        Outcome::Failed,
        code,
        Some(info),
        failed_step,
        opts,
    )
    .await
}

/// Renders the exec step's `ready` check (and binds its notify socket).
async fn prepare_probe(
    step: &Step,
    ctx: &StepContext,
) -> Result<(Option<Probe>, Option<Arc<NotifyListener>>), StepError> {
    let Some(spec) = &step.ready else {
        return Ok((None, None));
    };
    let listener = match spec.target {
        WaitTarget::Notify => Some(Arc::new(
            NotifyListener::bind(&ctx.services.notify_dir(), &step.name)
                .map_err(|source| StepError::Spawn {
                    program: "notify socket".into(),
                    source,
                })?
                .with_reporter(ctx.reporter.clone()),
        )),
        _ => None,
    };
    let secrets = ctx.secrets.resolve(&step.secret_refs).await?;
    let inputs = StepInputs { step, secrets };
    let probe = Probe::new(spec, "ready", &inputs, ctx, listener.clone())?;
    Ok((Some(probe), listener))
}

/// Registers the instance when the plan asks; an error is the run's failure.
async fn register_instance(
    plan: &Plan,
    ctx: &StepContext,
) -> Result<Option<Registration>, ErrorInfo> {
    let Some(Registry::Etcd(spec)) = &plan.lifecycle.register else {
        return Ok(None);
    };
    register::register(spec, &plan.name, ctx)
        .await
        .map(Some)
        .map_err(|e| ErrorInfo {
            code: e.code(),
            message: format!("cannot register the instance: {e}"),
        })
}

/// The exit code of a process: its own, or 128+n when signal n ended it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|n| 128 + n))
        .unwrap_or(exit::SOFTWARE)
}

/// Starts the app in its own process group (on a terminal, in the
/// foreground), with stdin, stdout and stderr bootplan's own. Its exit is
/// noticed from its pidfd at once. Like every child it gets SIGKILL when
/// bootplan dies, so an app that ignores SIGTERM cannot outlive a killed
/// supervisor.
fn spawn_app(
    request: &ExecRequest,
    notify_socket: Option<&Path>,
) -> std::io::Result<crate::process::Child> {
    let cmd = &request.cmd;
    let mut command = crate::process::Command::new(cmd.program());
    command
        .args(cmd.argv.iter().skip(1))
        .env_remove("NOTIFY_SOCKET")
        .env("BOOTPLAN_BOOTSTRAP_ID", &request.bootstrap_id)
        .env("BOOTPLAN_STEP", &request.step)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::Inherit)
        .stdout(Stdio::Inherit)
        .stderr(Stdio::Inherit)
        .foreground();
    if let Some(path) = notify_socket {
        command.env("NOTIFY_SOCKET", path);
    }
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    if let Some(restrictions) = &cmd.restrictions {
        command.restrict(restrictions.clone());
    }
    command.spawn()
}
