//! `bootplan run`, from the plan file to the verdict: load the plan, claim
//! the state and run directories (nothing is written before their lock is
//! held), start the outputs (status file, logs, metrics, traces, readiness
//! and report sinks), open the journal, gather facts, then run the plan
//! through [`super::run`] and hand over to the `exec` app when there is one.
//! A panic anywhere in the run is `internal.error`, exit 70, recorded in
//! the status file like any other failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::Flock;
use tracing::Instrument;

use super::dirs::{self, Refusal, RunDirs};
use crate::engine::journal::Journal;
use crate::error::{ErrorCode, exit};
use crate::facts::FactsSettings;
use crate::fsutil::BackgroundWriter;
use crate::plan::{self, Plan, PlanError};
use crate::redact::Redactor;
use crate::secrets::SecretStore;
use crate::stdio::errln;
use crate::steps::StepContext;
use crate::telemetry::console::ConsoleSink;
use crate::telemetry::jsonlog::JsonLogSink;
use crate::telemetry::observe::{self, Observability, TelemetryArgs};
use crate::telemetry::queue::QueuedWriter;
use crate::telemetry::status::{self, StatusSink};
use crate::telemetry::{ErrorInfo, EventKind, Level, LogFormat, Outcome, Reporter, traces};

/// What `bootplan run` was asked to do.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The plan file, or a URL.
    pub plan: PathBuf,
    /// How a plan from a URL is checked (`--require-signature`, `--trusted-key`).
    pub verification: crate::plan::source::Verification,
    /// `--state-dir`, overriding the plan's.
    pub state_dir: Option<PathBuf>,
    /// `--run-dir`, overriding the plan's.
    pub run_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: Level,
    pub telemetry: TelemetryArgs,
    /// `--supervise`.
    pub supervise: bool,
    /// `--report-url`, overriding the plan's webhook.
    pub report_url: Option<String>,
    /// `--user-data`: the plan is the user data of this provider (`None`:
    /// the detected one), and `plan` is unused.
    pub user_data: Option<Option<String>>,
    /// `--compat cloud-init`, beside the plan's `compat:`.
    pub compat: crate::plan::lifecycle::Compat,
}

/// Runs the plan; returns bootplan's exit code (unless it execs the app).
pub fn run(opts: &BootOptions) -> i32 {
    let started = Instant::now();
    let (loaded, notices) = load_plan(opts);
    let dirs = RunDirs::resolve(
        opts.state_dir.as_deref(),
        opts.run_dir.as_deref(),
        loaded.as_ref().ok(),
    );
    let secrets_dir = loaded
        .as_ref()
        .ok()
        .and_then(|p| dirs::secrets_dir(p, &dirs.run));
    let lock = match dirs::claim(&dirs, secrets_dir.as_deref()) {
        Ok(lock) => lock,
        Err(refusal) => {
            errln!("error: {} [{}]", refusal.message, refusal.code);
            // The lock holder's status, readiness file and metrics stay as they are.
            if let Ok(plan) = &loaded {
                report_refusal(opts, plan, &refusal);
            }
            return refusal.code.exit_code();
        }
    };
    match loaded {
        Ok(plan) => run_plan(opts, &plan, &dirs, lock, started, notices),
        Err(err) => invalid_plan(opts, &dirs, &err),
    }
}

/// The plan from its file or URL, or from the user data (with what the
/// log should say about how it was made).
fn load_plan(opts: &BootOptions) -> (Result<Plan, PlanError>, Vec<(Level, String)>) {
    match &opts.user_data {
        None => (plan::load_with(&opts.plan, &opts.verification), Vec::new()),
        Some(provider) => match super::userdata::load(provider.as_deref(), &opts.verification) {
            Ok(made) => (Ok(made.plan), made.notices),
            Err(err) => (Err(err), Vec::new()),
        },
    }
}

/// An invalid plan: nothing runs, but the status file, the metrics and the
/// report say why, and an earlier run's readiness file is removed.
fn invalid_plan(opts: &BootOptions, dirs: &RunDirs, err: &PlanError) -> i32 {
    crate::plan::print_error(err);
    let doc = write_invalid_status(&dirs.status_file(), &opts.plan, err);
    for warning in observe::record_invalid_plan(&opts.telemetry, &opts.plan) {
        errln!("bootplan: warning: {warning}");
    }
    super::readyfile::remove(&dirs.run.join("ready"));
    if opts.compat.cloud_init {
        super::cloud_init::record_invalid(
            super::cloud_init::CloudInitPaths::default(),
            &opts.plan,
            format!("bootplan: {err} [{}]", err.code()),
        );
    }
    report_invalid_plan(opts, &doc);
    err.code().exit_code()
}

/// The run's outputs: every event goes through `reporter` (redacted) to
/// the status file, the logs, metrics and the readiness and report sinks.
struct Outputs {
    reporter: Arc<Reporter>,
    /// The live status document, recorded in the history at the end.
    status_doc: Arc<std::sync::Mutex<Option<status::StatusDoc>>>,
    /// Where the history goes, and how many runs it keeps.
    state_dir: PathBuf,
    history: u32,
    redactor: Arc<Redactor>,
    status: Arc<BackgroundWriter>,
    obs: Observability,
    ready_file: PathBuf,
    started: Instant,
    /// The report's deliveries, waited for before the metrics go out.
    deliveries: super::report::Deliveries,
}

impl Outputs {
    fn start(
        opts: &BootOptions,
        plan: &Plan,
        dirs: &RunDirs,
        started: Instant,
    ) -> (Outputs, Vec<String>) {
        let redactor = Arc::new(Redactor::new());
        // Secrets and credentials in bootplan's own environment are known
        // from the start, before any child could print one.
        for name in &plan.secret_env {
            if let Ok(value) = std::env::var(name) {
                redactor.add_secret(&value);
            }
        }
        // And no child inherits them, unless a step's `env:` passes one on.
        crate::process::withhold_env(plan.secret_env.iter().cloned());
        let status_sink = StatusSink::new(dirs.status_file()).with_needs(step_needs(plan));
        let status = status_sink.writer();
        let status_doc = status_sink.document();
        // Metrics and traces start before the run so nothing recorded is lost.
        let (obs, warnings) = Observability::start(
            opts.telemetry.merge(&plan.telemetry),
            &plan.name,
            Some(status_sink.document()),
        );
        let reporter = Arc::new(Reporter::new(redactor.clone()));
        reporter.add_sink(Box::new(status_sink));
        add_log_sink(&reporter, opts);
        if let Some(sink) = obs.metrics_sink(started) {
            reporter.add_sink(sink);
        }
        let ready_file = super::ready_file(plan, &dirs.run);
        let deliveries = super::add_sinks(&reporter, plan, opts.report_url.as_deref(), opts.compat);
        let warnings = warnings.iter().map(ToString::to_string).collect();
        let outputs = Outputs {
            reporter,
            status_doc,
            state_dir: dirs.state.clone(),
            history: plan.history,
            redactor,
            status,
            obs,
            ready_file,
            started,
            deliveries,
        };
        (outputs, warnings)
    }

    /// Ends the run before any step with `code` and `message`.
    fn fail(&mut self, plan: &Plan, code: ErrorCode, message: String) -> i32 {
        super::readyfile::remove(&self.ready_file);
        for step in &plan.steps {
            self.reporter.emit(EventKind::StepNotRun {
                step: step.name.clone(),
                reason: "the run stopped before its first step".into(),
            });
        }
        self.reporter.emit(EventKind::RunFinished {
            outcome: Outcome::Failed,
            exit_code: code.exit_code(),
            error: Some(ErrorInfo { code, message }),
            failed_step: None,
            duration: self.started.elapsed(),
        });
        self.finish();
        code.exit_code()
    }

    /// Delivers the metrics and traces and flushes every sink.
    fn finish(&mut self) {
        // The platform signals count themselves: before the metrics go out.
        self.deliveries.wait();
        for warning in self.obs.finish_run() {
            self.reporter.notice(Level::Warn, warning.to_string());
        }
        self.record_history();
        let dropped = crate::telemetry::queue::dropped();
        if dropped > 0 {
            errln!("bootplan: {dropped} log line(s) were dropped: the log reader did not keep up");
        }
        self.reporter.finish();
    }
}

impl Outputs {
    /// Keeps the run's final status in the state directory's history.
    fn record_history(&self) {
        let doc = self
            .status_doc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(doc) = doc.filter(|d| d.outcome != Outcome::Running) else {
            return;
        };
        if let Err(err) = crate::telemetry::history::record(&self.state_dir, &doc, self.history) {
            self.reporter.notice(
                Level::Warn,
                format!("the run was not kept in the history: {err}"),
            );
        }
    }
}

/// Whether the run logs JSON lines (on stdout) rather than the console view.
fn logs_json(opts: &BootOptions) -> bool {
    use std::io::IsTerminal;
    match opts.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    }
}

/// JSON lines on stdout, or the console view on stderr.
fn add_log_sink(reporter: &Reporter, opts: &BootOptions) {
    use std::io::IsTerminal;
    if logs_json(opts) {
        reporter.add_sink(Box::new(JsonLogSink::new(
            QueuedWriter::stdout(),
            opts.log_level,
        )));
    } else {
        reporter.add_sink(Box::new(ConsoleSink::new(
            opts.log_level,
            std::io::stderr().is_terminal(),
        )));
    }
}

/// A valid plan, with the directories claimed.
fn run_plan(
    opts: &BootOptions,
    plan: &Plan,
    dirs: &RunDirs,
    lock: Flock<std::fs::File>,
    started: Instant,
    notices: Vec<(Level, String)>,
) -> i32 {
    let (mut outputs, warnings) = Outputs::start(opts, plan, dirs, started);
    let bootstrap_id = new_bootstrap_id();
    let journal = match Journal::open(&dirs.state, &plan.name, lock) {
        Ok(journal) => Arc::new(journal),
        Err(err) => {
            let refusal = Refusal::from_journal(&err);
            let message = outputs.redactor.redact(&refusal.message).into_owned();
            errln!("error: {message} [{}]", refusal.code);
            crate::telemetry::metrics::record_refused_run(refusal.code);
            outputs.finish();
            report_refusal(opts, plan, &refusal);
            return refusal.code.exit_code();
        }
    };
    // An earlier run's readiness must not stand for this one.
    super::readyfile::remove(&outputs.ready_file);
    outputs.reporter.emit(EventKind::RunStarted {
        bootstrap_id: bootstrap_id.clone(),
        plan: plan.name.clone(),
        plan_path: plan.path.display().to_string(),
        digest: plan.digest.clone(),
        boot_id: crate::facts::current_boot_id(),
        steps: plan
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.kind.name()))
            .collect(),
    });
    if let Some(err) = outputs.status.last_error() {
        // Without a status file nobody could tell what this run did: stop
        // before the first step.
        let refusal = Refusal {
            code: ErrorCode::StateUnwritable,
            message: format!("the run directory is not writable: {err}"),
        };
        errln!("error: {} [{}]", refusal.message, refusal.code);
        crate::telemetry::metrics::record_refused_run(refusal.code);
        report_refusal(opts, plan, &refusal);
        return refusal.code.exit_code();
    }
    for warning in warnings {
        outputs.reporter.notice(Level::Warn, warning);
    }
    for warning in &plan.warnings {
        outputs.reporter.notice(Level::Warn, warning.to_string());
    }
    for (level, notice) in notices {
        outputs.reporter.notice(level, notice);
    }
    if let Some(aside) = &journal.recovered_from {
        outputs.reporter.notice(
            Level::Warn,
            format!(
                "the journal was unreadable and was moved to {}; completed steps will run again",
                aside.display()
            ),
        );
    }
    // What a killed earlier run left goes first; then this run's own group.
    match crate::process::cgroup::reclaim_leftovers(&dirs.run) {
        Ok(Some(reclaimed)) => outputs.reporter.notice(Level::Warn, reclaimed.to_string()),
        Ok(None) => {}
        Err(err) => outputs.reporter.notice(Level::Warn, err.to_string()),
    }
    let containment = crate::process::cgroup::contain_run(&dirs.run, &outputs.reporter);
    for (level, message) in containment.notices() {
        outputs.reporter.notice(level, message);
    }
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_steps(
            opts,
            plan,
            dirs,
            journal,
            bootstrap_id,
            containment,
            &mut outputs,
        )
    }));
    ran.unwrap_or_else(|panic| {
        let message = format!(
            "bootplan panicked: {} (a bug; please report it)",
            crate::engine::panic_text(panic.as_ref())
        );
        outputs.fail(plan, ErrorCode::Internal, message)
    })
}

/// Facts, secrets, the steps and the app: the part of a run that has
/// outputs to report to.
fn run_steps(
    opts: &BootOptions,
    plan: &Plan,
    dirs: &RunDirs,
    journal: Arc<Journal>,
    bootstrap_id: String,
    containment: crate::process::cgroup::RunContainment,
    outputs: &mut Outputs,
) -> i32 {
    let reporter = outputs.reporter.clone();
    let facts = match gather_facts(plan, &reporter, &outputs.redactor) {
        Ok(facts) => {
            (outputs.deliveries).set_facts(facts.instance_id.clone(), facts.region.clone());
            facts
        }
        Err(err) => {
            let code = err.code();
            return outputs.fail(plan, code, format!("cannot gather facts: {err}"));
        }
    };
    let secrets = SecretStore::new(
        plan.secrets.clone(),
        plan.dir().to_path_buf(),
        outputs.redactor.clone(),
    )
    .with_backends(plan.backends.clone())
    .with_files_dir(crate::secrets::files::dir_for(plan, &dirs.run))
    .with_deadline(outputs.started + plan.deadline)
    .with_region_hint(facts.region.clone())
    .with_scope(crate::plan::refs::TemplateScope::new(
        facts.template_value(),
        &plan.vars,
    ))
    .with_reporter(reporter.clone());
    crate::secrets::files::warn_if_not_tmpfs(&secrets, &reporter);
    let root_span = traces::root_span(&bootstrap_id, &plan.name);
    let holder = crate::fleet::semaphore::Holder {
        bootstrap_id: bootstrap_id.clone(),
        plan: plan.name.clone(),
        hostname: facts.hostname.clone(),
    };
    let mut ctx = StepContext::new(
        reporter.clone(),
        facts,
        plan.vars.clone(),
        secrets,
        plan.dir().to_path_buf(),
        bootstrap_id,
        plan.kill_grace,
    );
    ctx.fleet = crate::fleet::Fleet::new(
        plan.limits.clone(),
        plan.start_splay,
        holder,
        Some(tokio::time::Instant::from_std(
            outputs.started + plan.deadline,
        )),
    );
    ctx.downloads = crate::steps::download::Downloads::new(
        &dirs.state,
        plan.downloads.max_cache_size,
        Some(tokio::time::Instant::from_std(
            outputs.started + plan.deadline,
        )),
    );
    let ctx = Arc::new(ctx);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(crate::sigmask::block_handled)
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            let message = format!("cannot start the async runtime: {err}");
            return outputs.fail(plan, ErrorCode::Internal, message);
        }
    };
    ctx.services.set_notify_dir(dirs.run.join("notify"));
    let options = super::Options {
        supervise_flag: opts.supervise,
        verdict: super::verdict::Verdict {
            reporter: reporter.clone(),
            journal: journal.clone(),
            status: outputs.status.clone(),
            ready_file: outputs.ready_file.clone(),
            bootstrap_id: ctx.bootstrap_id.clone(),
            started: outputs.started,
        },
        lean: (!outputs.obs.exports()).then(|| super::lean::LogSpec {
            json: logs_json(opts),
            level: opts.log_level,
            bootstrap_id: ctx.bootstrap_id.clone(),
        }),
    };
    let finished = runtime
        .block_on(super::run(plan, ctx, journal.clone(), &options).instrument(root_span.clone()));
    let outcome = if finished.exit_code == exit::READY {
        "ready"
    } else {
        "failed"
    };
    traces::record_outcome(&root_span, outcome, None);
    // The root span must end before the final trace flush.
    drop(root_span);
    drop(options);
    if let Some(handoff) = finished.lean {
        return hand_off(*handoff, journal, runtime, containment, outputs);
    }
    drop(journal);
    runtime.block_on(outputs.obs.flush_traces());
    outputs.finish();
    let Some(request) = finished.exec else {
        linger(&runtime, &opts.telemetry, &outputs.obs);
        return finished.exit_code;
    };
    // Release the runtime (and its threads) and the run's cgroup before
    // the process image is replaced.
    drop(runtime);
    drop(containment);
    let err = crate::steps::exec::exec(&request);
    let message = format!("cannot exec `{}`: {err}", request.cmd.program());
    super::readyfile::remove(&outputs.ready_file);
    outputs.reporter.emit(EventKind::StepFinished {
        step: request.step.clone(),
        state: crate::telemetry::StepState::Failed,
        attempts: 1,
        duration: std::time::Duration::ZERO,
        error: Some(ErrorInfo {
            code: ErrorCode::ExecFailed,
            message: message.clone(),
        }),
    });
    outputs.reporter.emit(EventKind::RunFinished {
        outcome: Outcome::Failed,
        exit_code: ErrorCode::ExecFailed.exit_code(),
        error: Some(ErrorInfo {
            code: ErrorCode::ExecFailed,
            message,
        }),
        failed_step: Some(request.step.clone()),
        duration: outputs.started.elapsed(),
    });
    outputs.reporter.finish();
    ErrorCode::ExecFailed.exit_code()
}

/// Hands the ready app to the lean supervisor: the run's outputs are
/// flushed and the runtime is gone first; the state directory's lock and
/// the run's cgroup go with the app.
fn hand_off(
    mut handoff: super::lean::Handoff,
    journal: Arc<Journal>,
    runtime: tokio::runtime::Runtime,
    containment: crate::process::cgroup::RunContainment,
    outputs: &mut Outputs,
) -> i32 {
    if let Err(err) = journal.flush() {
        outputs
            .reporter
            .notice(Level::Warn, format!("cannot write the journal: {err}"));
    }
    if let Err(err) = journal.keep_lock_across_exec() {
        outputs.reporter.notice(
            Level::Warn,
            format!("the state directory's lock is not kept while the app runs: {err}"),
        );
    }
    // Never dropped: that would unlock the state directory.
    std::mem::forget(journal);
    outputs.finish();
    drop(runtime);
    handoff.run_group = containment.release();
    super::lean::hand_off(handoff)
}

/// Gathers facts before any step: reports where they came from and
/// registers the user data with the redactor.
fn gather_facts(
    plan: &Plan,
    reporter: &Arc<Reporter>,
    redactor: &Redactor,
) -> Result<crate::facts::Facts, crate::facts::FactsError> {
    let mut settings = FactsSettings::from_env(&plan.facts);
    // Detection is part of the bootstrap: it may not outlast the plan's deadline.
    settings.budget = settings.budget.min(plan.deadline);
    settings.reporter = Some(reporter.clone());
    let gathered = crate::facts::gather(&settings)?;
    if let Some(user_data) = &gathered.facts.user_data {
        redactor.add_document(&user_data.text());
    }
    let level = if gathered.fell_back.is_some() {
        Level::Warn
    } else {
        Level::Info
    };
    reporter.notice(level, gathered.summary());
    Ok(gathered.facts)
}

/// A random (v4) UUID for the run.
pub fn new_bootstrap_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Each step's `needs`, by name, for the status file.
fn step_needs(plan: &Plan) -> indexmap::IndexMap<String, Vec<String>> {
    plan.steps
        .iter()
        .map(|s| {
            let needs = s.needs.iter().map(|&id| plan.steps[id].name.clone());
            (s.name.clone(), needs.collect())
        })
        .collect()
}

/// With `--metrics-linger`, keeps the endpoint up after the run so a final
/// scrape sees the verdict; SIGTERM or SIGINT ends the wait early.
fn linger(runtime: &tokio::runtime::Runtime, args: &TelemetryArgs, obs: &Observability) {
    let (Some(limit), Some(_)) = (args.metrics_linger, obs.server()) else {
        return;
    };
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(limit) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
}

/// Sends a refused run's error to the report webhook, when one is known.
fn report_refusal(opts: &BootOptions, plan: &Plan, refusal: &Refusal) {
    let Some(spec) = super::report_spec(plan, opts.report_url.as_deref()) else {
        return;
    };
    let sent = super::report::report_early_failure(
        &spec,
        plan,
        &new_bootstrap_id(),
        refusal.code,
        refusal.message.clone(),
    );
    if let Err(err) = sent {
        errln!("bootplan: {err}");
    }
}

/// Sends the invalid-plan status to the report webhook, when one is known.
fn report_invalid_plan(opts: &BootOptions, doc: &serde_json::Value) {
    let Some(spec) = super::report::spec_for_invalid_plan(opts.report_url.as_deref(), &opts.plan)
    else {
        return;
    };
    let body = serde_json::to_vec(doc).unwrap_or_default();
    if let Err(err) = super::report::post_blocking(&spec, body) {
        errln!("bootplan: {err}");
    }
}

/// Records an invalid plan in the status file, so `status` and fleet
/// tooling see why nothing ran.
fn write_invalid_status(
    status_file: &Path,
    plan_path: &Path,
    err: &PlanError,
) -> serde_json::Value {
    let now = std::time::SystemTime::now();
    let doc = serde_json::json!({
        "schema_version": status::SCHEMA_VERSION,
        "bootstrap_id": new_bootstrap_id(),
        "plan": { "name": "", "path": plan_path.display().to_string(), "digest": "" },
        "pid": std::process::id(),
        "started_at": crate::telemetry::timestamp(now),
        "started_unix_ms": status::unix_ms(now),
        "finished_at": crate::telemetry::timestamp(now),
        "duration_ms": 0,
        "outcome": Outcome::Invalid,
        "exit_code": err.code().exit_code(),
        "error": { "code": err.code(), "message": err.to_string() },
        "steps": {},
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    if let Err(write_err) = crate::fsutil::replace_file(status_file, &bytes, 0o644) {
        errln!("bootplan: cannot record the invalid plan: {write_err}");
    }
    doc
}
