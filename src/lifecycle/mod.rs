//! The lifecycle around the plan: services (`services`, `probe`), PID 1
//! supervision (`supervise`, with `process::reaper`), readiness signals
//! (`notify`, `readyfile`), registration (`register`) and reports off the
//! machine (`report`).
//!
//! `run` is the entry point the CLI calls instead of `engine::run`: it
//! decides whether to supervise, starts the reaper and the signal forwarder
//! before the first step, runs the engine, then supervises the app. Readiness
//! signals are telemetry sinks, registered by [`add_sinks`]. To add a
//! readiness signal: write a `Sink` that acts on `RunFinished` and register
//! it in `add_sinks`.

pub mod boot;
pub mod dirs;
pub mod notify;
pub mod probe;
pub mod readyfile;
pub mod register;
pub mod report;
pub mod services;
pub mod status;
pub mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{self, RunSummary, journal::Journal};
use crate::plan::lifecycle::ReportSpec;
use crate::plan::{Plan, StepKind};
use crate::process::reaper;
use crate::steps::StepContext;
use crate::telemetry::Reporter;

/// What the CLI knows that the plan does not.
pub struct Options {
    /// `--supervise`.
    pub supervise_flag: bool,
    /// The readiness file's path.
    pub ready_file: PathBuf,
    /// When the run started (the deadline counts from here).
    pub started: Instant,
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

/// Registers the readiness and report sinks. `report_url` (from
/// `--report-url`/`BOOTPLAN_REPORT_URL`) overrides the plan's webhook.
pub fn add_sinks(reporter: &Reporter, plan: &Plan, ready_file: PathBuf, report_url: Option<&str>) {
    // Outside a `Type=notify` unit every notification would be a no-op.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let deadline = Instant::now() + plan.deadline;
        reporter.add_sink(Box::new(notify::NotifySink::new(deadline)));
    }
    reporter.add_sink(Box::new(readyfile::ReadyFileSink::new(ready_file)));
    if let Some(spec) = report_spec(plan, report_url) {
        reporter.add_sink(Box::new(report::ReportSink::new(spec)));
    }
}

/// The report webhook: `report_url` (from `--report-url`/`BOOTPLAN_REPORT_URL`)
/// overrides the plan's `report.webhook` and keeps its other settings.
pub fn report_spec(plan: &Plan, report_url: Option<&str>) -> Option<ReportSpec> {
    let plan_report = plan.lifecycle.report.clone();
    match (report_url, plan_report) {
        (Some(url), Some(spec)) => Some(ReportSpec {
            webhook: url.to_string(),
            ..spec
        }),
        (Some(url), None) => Some(ReportSpec {
            webhook: url.to_string(),
            timeout: Duration::from_secs(5),
            attempts: 3,
        }),
        (None, spec) => spec,
    }
}

/// How [`run`] ended.
#[derive(Debug)]
pub enum Finished {
    /// The engine's verdict; the caller execs `summary.exec` if there is one.
    Run(Box<RunSummary>),
    /// bootplan supervised the app, which has exited; this is bootplan's exit
    /// code. The verdict was given already: neither exec nor report again.
    Supervised(i32),
}

/// Runs the plan, and supervises its app when [`should_supervise`] says so.
pub async fn run(
    plan: &Plan,
    ctx: Arc<StepContext>,
    journal: Arc<Journal>,
    opts: &Options,
) -> Finished {
    let supervise = should_supervise(plan, opts.supervise_flag);
    // As PID 1, orphans are ours to reap even when there is no app.
    let reaper = (supervise || std::process::id() == 1).then(reaper::start);
    if !supervise {
        let summary = engine::run(plan, ctx, journal).await;
        if let Some(reaper) = reaper {
            reaper.abort();
        }
        return Finished::Run(Box::new(summary));
    }
    ctx.services.set_supervised(true);
    let mut signals = supervise::Forwarder::new();
    let summary = engine::run(plan, ctx.clone(), journal).await;
    if summary.exec.is_none() {
        if summary.outcome.is_ready() {
            // A services-only plan under --supervise: keep them until told to stop.
            let grace = plan.lifecycle.stop_grace.unwrap_or(plan.kill_grace);
            return Finished::Supervised(
                supervise::hold_services(&ctx, &mut signals, grace, &opts.ready_file).await,
            );
        }
        // The run failed: the engine gave the verdict and stopped the services.
        return Finished::Run(Box::new(summary));
    }
    Finished::Supervised(supervise::supervise(plan, ctx, summary, &mut signals, opts).await)
}

/// Rollback step, after the undos (by the engine and by the supervisor):
/// revoke the credentials the secret store obtained (the Vault token, when
/// the plan asks). `SecretStore::close` is idempotent, so the engine's own
/// close at the end of every run does no harm afterwards.
pub async fn revoke_secret_tokens(ctx: &StepContext) {
    close_secrets(ctx).await;
}

/// Ends the secret store's sessions (revokes the Vault token when the plan
/// asks); a failure is a warning. Idempotent.
pub async fn close_secrets(ctx: &StepContext) {
    if let Some(problem) = ctx.secrets.close().await {
        ctx.reporter.notice(crate::telemetry::Level::Warn, problem);
    }
}
