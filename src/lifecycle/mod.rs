//! The lifecycle around the plan: services (`services`, `probe`), PID 1
//! supervision (`supervise`, with `process::reaper`), readiness signals
//! (`notify`, `readyfile`), registration (`register`) and reports off the
//! machine (`report`, with the platforms' signals in `platform`).
//!
//! `run` is the entry point the CLI calls instead of `engine::run`: it
//! decides whether to supervise, starts the reaper and the signal forwarder
//! before the first step, runs the engine, then supervises the app. Readiness
//! signals are telemetry sinks, registered by [`add_sinks`]. To add a
//! readiness signal: write a `Sink` that acts on `RunFinished` and register
//! it in `add_sinks`.

pub mod boot;
pub mod cloud_init;
pub mod dirs;
pub mod lean;
pub mod notify;
pub mod platform;
pub mod readyfile;
pub mod refresh;
pub mod register;
pub mod report;
pub mod signals;
pub mod status;
pub mod supervise;
pub mod userdata;
pub mod verdict;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{self, journal::Journal};
use crate::error::exit;
use crate::plan::lifecycle::ReportSpec;
use crate::plan::{Plan, StepKind};
use crate::process::reaper;
use crate::steps::StepContext;
use crate::steps::exec::ExecRequest;
use crate::telemetry::{EventKind, Reporter, StepState};

/// What the command line knows that the plan does not.
pub struct Options {
    /// `--supervise`.
    pub supervise_flag: bool,
    /// Who gives the verdict (and what it must make true first).
    pub verdict: verdict::Verdict,
    /// Set when nothing outside the plan keeps the run busy after its
    /// verdict (no telemetry exported): a ready app may then be handed to
    /// the lean supervisor. How the run logs.
    pub lean: Option<lean::LogSpec>,
}

/// Whether bootplan stays the parent of the exec app: with an `exec` step,
/// when `--supervise`, `supervise.enabled`, PID 1, any service, a `ready`
/// check on the exec step, or `register`. Without an `exec` step, only
/// `--supervise`/`supervise.enabled` with services: bootplan then keeps the
/// services running after ready, until SIGTERM/SIGINT (see
/// [`supervise::hold_services`]). PID 1 alone does not keep them: an init
/// container must run to completion.
pub fn should_supervise(plan: &Plan, flag: bool) -> bool {
    let has_services = plan
        .steps
        .iter()
        .any(|s| matches!(s.kind, StepKind::Service { .. }));
    let Some(exec) = plan
        .steps
        .iter()
        .find(|s| matches!(s.kind, StepKind::Exec { .. }))
    else {
        return has_services && (flag || plan.lifecycle.supervise);
    };
    flag || plan.lifecycle.supervise
        || std::process::id() == 1
        || exec.ready.is_some()
        || plan.lifecycle.register.is_some()
        || plan
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Service { .. }))
}

/// The readiness file: the plan's `ready_file`, else `RUN_DIR/ready`.
pub fn ready_file(plan: &Plan, run_dir: &std::path::Path) -> PathBuf {
    plan.lifecycle
        .ready_file
        .clone()
        .unwrap_or_else(|| run_dir.join("ready"))
}

/// Registers the sd_notify and report sinks. `report_url` (from
/// `--report-url`/`BOOTPLAN_REPORT_URL`) overrides the plan's webhook.
/// Returns the reports in flight, for the caller to wait for.
/// (The readiness file is the verdict's to write: see [`verdict`].)
pub fn add_sinks(
    reporter: &Reporter,
    plan: &Plan,
    report_url: Option<&str>,
    compat: crate::plan::lifecycle::Compat,
) -> report::Deliveries {
    // Outside a `Type=notify` unit every notification would be a no-op.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let deadline = Instant::now() + plan.deadline;
        reporter.add_sink(Box::new(notify::NotifySink::new(deadline)));
    }
    let deliveries = report::Deliveries::default();
    if let Some(spec) = report_spec(plan, report_url) {
        reporter.add_sink(Box::new(report::ReportSink::new(
            spec,
            deliveries.clone(),
            plan.backends.aws.clone(),
            reporter.redactor().clone(),
        )));
    }
    if plan.lifecycle.compat.union(compat).cloud_init {
        reporter.add_sink(Box::new(cloud_init::CloudInitSink::new(
            cloud_init::CloudInitPaths::default(),
        )));
    }
    deliveries
}

/// The report: `report_url` (from `--report-url`/`BOOTPLAN_REPORT_URL`)
/// overrides the plan's `report.webhook` and keeps its other settings and
/// platform signals.
pub fn report_spec(plan: &Plan, report_url: Option<&str>) -> Option<ReportSpec> {
    let plan_report = plan.lifecycle.report.clone();
    match (report_url, plan_report) {
        (Some(url), Some(spec)) => Some(ReportSpec {
            webhook: Some(url.to_string()),
            ..spec
        }),
        (Some(url), None) => Some(ReportSpec::webhook(url)),
        (None, spec) => spec,
    }
}

/// How [`run`] ended: the verdict was given. `exec` is the app the caller
/// replaces itself with, when the run is ready and has one and bootplan
/// does not supervise it; `lean`, the ready app the caller hands to the
/// lean supervisor.
#[derive(Debug)]
pub struct Finished {
    pub exit_code: i32,
    pub exec: Option<ExecRequest>,
    pub lean: Option<Box<lean::Handoff>>,
}

/// Runs the plan, gives the verdict, and supervises the app when
/// [`should_supervise`] says so.
pub async fn run(
    plan: &Plan,
    ctx: Arc<StepContext>,
    journal: Arc<Journal>,
    opts: &Options,
) -> Finished {
    let supervise = should_supervise(plan, opts.supervise_flag);
    // As PID 1, orphans are ours to reap even when there is no app.
    let reaper = (supervise || std::process::id() == 1).then(reaper::start);
    // Listening from the start: a SIGHUP during the boot must not kill
    // bootplan (its default action) when the app would get it later.
    let mut signals = supervise.then(signals::Forwarder::new);
    let mut summary = engine::run(plan, ctx.clone(), journal).await;
    let grace = plan.lifecycle.stop_grace.unwrap_or(plan.kill_grace);
    let ready = summary.outcome.is_ready();
    let exec = summary.exec.take();
    let finished = match (signals.as_mut(), exec) {
        (Some(signals), Some(request)) if ready => {
            match supervise::supervise(plan, ctx, summary, request, signals, opts).await {
                supervise::Supervised::Exited(code) => Finished {
                    exit_code: code,
                    exec: None,
                    lean: None,
                },
                supervise::Supervised::HandedOff(handoff) => Finished {
                    exit_code: exit::READY,
                    exec: None,
                    lean: Some(handoff),
                },
            }
        }
        (Some(signals), None) if ready => {
            // A services-only plan under supervision: ready now, and the
            // services kept until told to stop.
            if !ctx.secrets.refreshes() {
                close_secrets(&ctx).await;
            }
            let code = opts.verdict.give(verdict::Ending::from(&summary));
            let code = if code == exit::READY {
                supervise::hold_services(plan, &ctx, signals, grace, &opts.verdict.ready_file).await
            } else {
                ctx.services.stop_all(grace).await;
                code
            };
            Finished {
                exit_code: code,
                exec: None,
                lean: None,
            }
        }
        (_, exec) => {
            // A one-shot run: its services end with it.
            ctx.services.stop_all(grace).await;
            close_secrets(&ctx).await;
            if let Some(request) = &exec {
                finish_exec_step(&ctx, &request.step);
            }
            let code = opts.verdict.give(verdict::Ending::from(&summary));
            Finished {
                exit_code: code,
                exec: exec.filter(|_| code == exit::READY),
                lean: None,
            }
        }
    };
    if let Some(reaper) = reaper
        && !supervise
    {
        reaper.abort();
    }
    finished
}

/// The `exec` step is done once bootplan hands over to it.
fn finish_exec_step(ctx: &StepContext, step: &str) {
    for kind in [
        EventKind::StepStarted {
            step: step.to_string(),
        },
        EventKind::StepFinished {
            step: step.to_string(),
            state: StepState::Done,
            attempts: 1,
            duration: Duration::ZERO,
            error: None,
        },
    ] {
        ctx.reporter.emit(kind);
    }
}

/// Removes the secret files the run wrote, once nothing can need them (the
/// supervised app or the held services have stopped); a failure is a warning.
pub fn remove_secret_files(ctx: &StepContext) {
    if let Err(err) = ctx.secrets.remove_files() {
        ctx.reporter.notice(
            crate::telemetry::Level::Warn,
            format!("cannot remove a secret file: {err}"),
        );
    }
}

/// Ends the secret store's sessions (revokes the Vault token when the plan
/// asks); a failure is a warning. Idempotent.
pub async fn close_secrets(ctx: &StepContext) {
    if let Some(problem) = ctx.secrets.close().await {
        ctx.reporter.notice(crate::telemetry::Level::Warn, problem);
    }
}
