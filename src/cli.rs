//! Command-line interface: parse arguments, wire the sinks, call the library,
//! and map the result to an exit code. No logic of its own beyond that.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use crate::engine::{self, journal};
use crate::error::{ErrorCode, exit};
use crate::facts::{FactsSettings, Gathered, ProviderChoice};
use crate::plan::{self, Plan, PlanError};
use crate::secrets::{Redactor, SecretStore};
use crate::steps::StepContext;
use crate::telemetry::console::ConsoleSink;
use crate::telemetry::jsonlog::JsonLogSink;
use crate::telemetry::observe::{self, Observability};
use crate::telemetry::status::{self, StatusSink};
use crate::telemetry::traces;
use crate::telemetry::{ErrorInfo, EventKind, Level, Outcome, Reporter};
use tracing::Instrument;

const DEFAULT_STATE_DIR: &str = "/var/lib/bootplan";
const DEFAULT_RUN_DIR: &str = "/run/bootplan";
const STATUS_FILE: &str = "status.json";

#[derive(Debug, Parser)]
#[command(
    name = "bootplan",
    version,
    about = "Take a machine from a blank start to ready, driven by a declarative plan."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where the journal lives [default: the plan's state_dir, else /var/lib/bootplan]
    #[arg(long, global = true, env = "BOOTPLAN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where the status file goes [default: the plan's run_dir, else /run/bootplan]
    #[arg(long, global = true, env = "BOOTPLAN_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Log format: `auto` is text on a terminal, JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "BOOTPLAN_LOG_FORMAT")]
    log_format: LogFormat,
    /// Least severe level to log.
    #[arg(long, global = true, value_enum, default_value_t = Level::Info, env = "BOOTPLAN_LOG_LEVEL")]
    log_level: Level,
    #[command(flatten)]
    telemetry: crate::telemetry::observe::TelemetryArgs,
    /// `run`: stay the parent of the exec app (forward signals, reap, stop in order)
    /// even without services. Automatic with services, as PID 1, or with `register`.
    #[arg(long, global = true, env = "BOOTPLAN_SUPERVISE")]
    supervise: bool,
    /// `run`: POST the final status here too (overrides the plan's `report.webhook`;
    /// the only report URL when the plan cannot be parsed).
    #[arg(long, global = true, env = "BOOTPLAN_REPORT_URL")]
    report_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a plan to ready.
    Run { plan: PathBuf },
    /// Validate a plan and report every problem (exit 65 when invalid).
    Check {
        plan: PathBuf,
        /// Print the problems as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a run would do, without doing anything.
    Plan {
        plan: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the plan file's JSON Schema.
    Schema,
    /// Show the status of the current or last run.
    Status {
        /// A plan file whose run_dir to read.
        #[arg(long)]
        plan: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Wait until the run has finished.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 75).
        #[arg(long, value_parser = crate::plan::duration::parse_duration, default_value = "5m")]
        timeout: Duration,
    },
    /// Forget journal records so steps run again.
    Reset {
        /// Steps to forget; all when none are named.
        steps: Vec<String>,
        /// Only records of this plan (a plan file; its state_dir is used too).
        #[arg(long)]
        plan: Option<PathBuf>,
    },
    /// Print the facts bootplan sees on this machine (never the user data, unless asked).
    Facts {
        #[arg(long)]
        json: bool,
        /// Provider to ask: auto, aws, gcp, azure, openstack, digitalocean, nocloud, local.
        #[arg(long)]
        provider: Option<String>,
        /// Use this plan's `facts:` settings (provider, fallback, budget, endpoints).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Print only the raw user data, to stdout (it is never shown otherwise).
        #[arg(long)]
        user_data: bool,
    },
    /// Where the time of the last run went: blame, critical chain, waterfall.
    Analyze(crate::analyze::AnalyzeArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::READY
                }
                _ => exit::USAGE,
            };
        }
    };
    match &cli.command {
        Command::Run { plan } => run(&cli, plan),
        Command::Check { plan, json } => check(plan, *json),
        Command::Plan { plan, json } => dry_run(&cli, plan, *json),
        Command::Schema => {
            println!("{}", schema_json());
            exit::READY
        }
        Command::Status {
            plan,
            json,
            wait,
            timeout,
        } => status_cmd(&cli, plan.as_deref(), *json, *wait, *timeout),
        Command::Reset { steps, plan } => reset(&cli, steps, plan.as_deref()),
        Command::Facts {
            json,
            provider,
            plan,
            user_data,
        } => facts_cmd(*json, provider.as_deref(), plan.as_deref(), *user_data),
        Command::Analyze(args) => {
            let status = match &args.status {
                Some(path) => path.clone(),
                None => match status_path(&cli, args.plan.as_deref()) {
                    Ok(path) => path,
                    Err(code) => return code,
                },
            };
            crate::analyze::command(args, &status)
        }
    }
}

/// The JSON Schema of the plan format, pretty-printed.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(crate::plan::raw::RawPlan);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

fn state_dir(cli: &Cli, plan: Option<&Plan>) -> PathBuf {
    cli.state_dir
        .clone()
        .or_else(|| plan.and_then(|p| p.state_dir.clone()))
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

fn run_dir(cli: &Cli, plan: Option<&Plan>) -> PathBuf {
    cli.run_dir
        .clone()
        .or_else(|| plan.and_then(|p| p.run_dir.clone()))
        .unwrap_or_else(|| DEFAULT_RUN_DIR.into())
}

fn print_plan_error(err: &PlanError) {
    match err {
        PlanError::Invalid { diagnostics } => {
            for d in diagnostics {
                eprintln!("error: {d}");
            }
            eprintln!(
                "bootplan: the plan is invalid ({} problem(s)); nothing was run [plan.invalid]",
                diagnostics.len()
            );
        }
        PlanError::Read { .. } => eprintln!("error: {err} [{}]", err.code()),
    }
}

fn check(path: &Path, json: bool) -> i32 {
    match plan::load(path) {
        Ok(plan) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "plan": plan.name, "steps": plan.steps.len()})
                );
            } else {
                println!(
                    "{}: ok ({} steps, plan {})",
                    path.display(),
                    plan.steps.len(),
                    plan.name
                );
            }
            exit::READY
        }
        Err(err) => {
            if json {
                let diagnostics = match &err {
                    PlanError::Invalid { diagnostics } => {
                        serde_json::to_value(diagnostics).unwrap_or_default()
                    }
                    PlanError::Read { .. } => {
                        serde_json::json!([{ "file": path, "field": "", "message": err.to_string() }])
                    }
                };
                println!(
                    "{}",
                    serde_json::json!({"valid": false, "code": err.code().as_str(), "diagnostics": diagnostics})
                );
            } else {
                print_plan_error(&err);
            }
            err.code().exit_code()
        }
    }
}

fn dry_run(cli: &Cli, path: &Path, json: bool) -> i32 {
    let plan = match plan::load(path) {
        Ok(plan) => plan,
        Err(err) => {
            print_plan_error(&err);
            return err.code().exit_code();
        }
    };
    let facts = match crate::facts::gather(&FactsSettings::from_env(&plan.facts)) {
        Ok(gathered) => gathered.facts,
        Err(err) => {
            eprintln!("error: {err} [{}]", err.code());
            return err.code().exit_code();
        }
    };
    let decisions = engine::dryrun::decide(&plan, &state_dir(cli, Some(&plan)), &facts);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&decisions).unwrap_or_default()
        );
        return exit::READY;
    }
    let width = decisions
        .iter()
        .map(|d| d.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("{:<width$}  {:<8}  {:<6}  REASON", "STEP", "KIND", "ACTION");
    for d in &decisions {
        println!(
            "{:<width$}  {:<8}  {:<6}  {}",
            d.step, d.kind, d.action, d.reason
        );
    }
    exit::READY
}

fn new_bootstrap_id() -> String {
    let bits = fastrand::u128(..);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Builds the reporter: status file plus console or JSON logs.
fn reporter(cli: &Cli, status: StatusSink, redactor: Arc<Redactor>) -> Arc<Reporter> {
    let reporter = Arc::new(Reporter::new(redactor));
    reporter.add_sink(Box::new(status));
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    if json {
        reporter.add_sink(Box::new(JsonLogSink::new(std::io::stdout(), cli.log_level)));
    } else {
        reporter.add_sink(Box::new(ConsoleSink::new(
            cli.log_level,
            std::io::stderr().is_terminal(),
        )));
    }
    reporter
}

fn run(cli: &Cli, path: &Path) -> i32 {
    let started = Instant::now();
    let plan = match plan::load(path) {
        Ok(plan) => plan,
        Err(err) => {
            print_plan_error(&err);
            let doc = write_invalid_status(&run_dir(cli, None), path, &err);
            for warning in observe::record_invalid_plan(&cli.telemetry, path) {
                eprintln!("bootplan: warning: {warning}");
            }
            // A readiness file from an earlier run must not say "ready" now.
            crate::lifecycle::readyfile::remove(&run_dir(cli, None).join("ready"));
            report_invalid_plan(cli, path, &doc);
            return err.code().exit_code();
        }
    };
    let run_dir = run_dir(cli, Some(&plan));
    let redactor = Arc::new(Redactor::new());
    let status_sink = StatusSink::new(run_dir.join(STATUS_FILE)).with_needs(step_needs(&plan));
    // Metrics and traces start before the run so nothing recorded is lost.
    let (mut obs, telemetry_warnings) = Observability::start(
        cli.telemetry.merge(&plan.telemetry),
        &plan.name,
        Some(status_sink.document()),
    );
    let reporter = reporter(cli, status_sink, redactor.clone());
    if let Some(sink) = obs.metrics_sink(started) {
        reporter.add_sink(sink);
    }
    let ready_file = crate::lifecycle::ready_file(&plan, &run_dir);
    crate::lifecycle::add_sinks(
        &reporter,
        &plan,
        ready_file.clone(),
        cli.report_url.as_deref(),
    );
    let bootstrap_id = new_bootstrap_id();

    let journal = match journal::Journal::open(&state_dir(cli, Some(&plan)), &plan.name) {
        Ok(journal) => Arc::new(journal),
        Err(err) => {
            eprintln!("error: {err} [{}]", ErrorCode::StateUnwritable);
            crate::telemetry::metrics::record_refused_run(ErrorCode::StateUnwritable);
            for warning in obs.finish_run() {
                eprintln!("bootplan: warning: {warning}");
            }
            if let Some(spec) = crate::lifecycle::report_spec(&plan, cli.report_url.as_deref()) {
                let message = redactor
                    .redact_owned(&err.to_string())
                    .unwrap_or(err.to_string());
                let sent = crate::lifecycle::report::report_early_failure(
                    &spec,
                    &plan,
                    &bootstrap_id,
                    ErrorCode::StateUnwritable,
                    message,
                );
                if let Err(err) = sent {
                    eprintln!("bootplan: {err}");
                }
            }
            return ErrorCode::StateUnwritable.exit_code();
        }
    };
    reporter.emit(EventKind::RunStarted {
        bootstrap_id: bootstrap_id.clone(),
        plan: plan.name.clone(),
        plan_path: plan.path.display().to_string(),
        digest: plan.digest.clone(),
        steps: plan
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.kind.name()))
            .collect(),
    });
    for warning in telemetry_warnings {
        reporter.notice(Level::Warn, warning.to_string());
    }
    // What a killed earlier run left goes first; then this run's own group.
    match crate::process::cgroup::reclaim_leftovers(&run_dir) {
        Ok(Some(reclaimed)) => reporter.notice(Level::Warn, reclaimed.to_string()),
        Ok(None) => {}
        Err(err) => reporter.notice(Level::Warn, err.to_string()),
    }
    let containment = crate::process::cgroup::contain_run(&run_dir, &reporter);
    for (level, message) in containment.notices() {
        reporter.notice(level, message);
    }
    if let Some(aside) = &journal.recovered_from {
        reporter.notice(
            Level::Warn,
            format!(
                "the journal was unreadable and was moved to {}; completed steps will run again",
                aside.display()
            ),
        );
    }
    let facts = match gather_for_run(&plan, &reporter, &redactor, started) {
        Ok(facts) => facts,
        Err(code) => return code,
    };
    let secrets = SecretStore::new(plan.secrets.clone(), plan.dir().to_path_buf(), redactor)
        .with_backends(plan.backends.clone())
        .with_files_dir(crate::secrets::files::dir_for(&plan, &run_dir))
        .with_deadline(started + plan.deadline)
        .with_region_hint(facts.region.clone());
    crate::secrets::files::warn_if_not_tmpfs(&secrets, &reporter);
    let root_span = traces::root_span(&bootstrap_id, &plan.name);
    let ctx = Arc::new(StepContext::new(
        reporter.clone(),
        facts,
        plan.vars.clone(),
        secrets,
        plan.dir().to_path_buf(),
        bootstrap_id,
        plan.kill_grace,
    ));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return exit::SOFTWARE;
        }
    };
    ctx.services.set_notify_dir(run_dir.join("notify"));
    let options = crate::lifecycle::Options {
        supervise_flag: cli.supervise,
        ready_file,
        started,
    };
    let finished = runtime.block_on(
        crate::lifecycle::run(&plan, ctx, journal.clone(), &options).instrument(root_span.clone()),
    );
    let summary = match finished {
        crate::lifecycle::Finished::Run(summary) => *summary,
        // Supervised: the verdict was given when the app was ready; this is
        // the app's exit code (or the supervisor's).
        crate::lifecycle::Finished::Supervised(code) => {
            let outcome = if code == exit::READY {
                "ready"
            } else {
                "failed"
            };
            traces::record_outcome(&root_span, outcome, None);
            drop(root_span);
            drop(journal);
            for warning in obs.finish_run() {
                reporter.notice(Level::Warn, warning.to_string());
            }
            reporter.finish();
            return code;
        }
    };
    traces::record_outcome(
        &root_span,
        summary.outcome.as_str(),
        summary.error.as_ref().map(|e| e.code.as_str()),
    );
    // The root span must end before the final trace flush.
    drop(root_span);
    drop(journal);
    for warning in obs.finish_run() {
        reporter.notice(Level::Warn, warning.to_string());
    }
    let Some(request) = summary.exec else {
        reporter.finish();
        linger(&runtime, &cli.telemetry, &obs);
        return summary.exit_code;
    };
    reporter.finish();
    drop(obs);
    // Release the runtime (and its threads) before the process image is replaced.
    drop(runtime);
    drop(containment);
    let err = crate::steps::exec::exec(&request);
    reporter.emit(EventKind::RunFinished {
        outcome: Outcome::Failed,
        exit_code: ErrorCode::ExecFailed.exit_code(),
        error: Some(ErrorInfo {
            code: ErrorCode::ExecFailed,
            message: format!("cannot exec `{}`: {err}", request.cmd.program()),
        }),
        failed_step: Some(request.step.clone()),
        duration: started.elapsed(),
    });
    reporter.finish();
    ErrorCode::ExecFailed.exit_code()
}

/// Gathers facts before any step: reports where they came from, registers
/// the user data with the redactor, and on failure finishes the run as
/// failed with the facts error code (no step runs).
fn gather_for_run(
    plan: &Plan,
    reporter: &Reporter,
    redactor: &Redactor,
    started: Instant,
) -> Result<crate::facts::Facts, i32> {
    let mut settings = FactsSettings::from_env(&plan.facts);
    // Detection is part of the bootstrap: it may not outlast the plan's deadline.
    settings.budget = settings.budget.min(plan.deadline);
    match crate::facts::gather(&settings) {
        Ok(gathered) => {
            if let Some(user_data) = &gathered.facts.user_data {
                redactor.add_secret(&user_data.text());
            }
            let level = if gathered.fell_back.is_some() {
                Level::Warn
            } else {
                Level::Info
            };
            reporter.notice(level, gathered.summary());
            Ok(gathered.facts)
        }
        Err(err) => {
            let code = err.code();
            let message = format!("cannot gather facts: {err}");
            for step in &plan.steps {
                reporter.emit(EventKind::StepNotRun {
                    step: step.name.clone(),
                    reason: "facts could not be gathered".into(),
                });
            }
            reporter.emit(EventKind::RunFinished {
                outcome: Outcome::Failed,
                exit_code: code.exit_code(),
                error: Some(ErrorInfo { code, message }),
                failed_step: None,
                duration: started.elapsed(),
            });
            reporter.finish();
            Err(code.exit_code())
        }
    }
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
fn linger(
    runtime: &tokio::runtime::Runtime,
    args: &crate::telemetry::observe::TelemetryArgs,
    obs: &Observability,
) {
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

/// Records an invalid plan in the status file, so `status` and fleet
/// tooling see why nothing ran.
/// Sends the invalid-plan status to the report webhook, when one is known.
fn report_invalid_plan(cli: &Cli, path: &Path, doc: &serde_json::Value) {
    let Some(spec) =
        crate::lifecycle::report::spec_for_invalid_plan(cli.report_url.as_deref(), path)
    else {
        return;
    };
    let body = serde_json::to_vec(doc).unwrap_or_default();
    if let Err(err) = crate::lifecycle::report::post_blocking(&spec, body) {
        eprintln!("bootplan: {err}");
    }
}

fn write_invalid_status(run_dir: &Path, path: &Path, err: &PlanError) -> serde_json::Value {
    let now = std::time::SystemTime::now();
    let doc = serde_json::json!({
        "schema_version": status::SCHEMA_VERSION,
        "bootstrap_id": new_bootstrap_id(),
        "plan": { "name": "", "path": path.display().to_string(), "digest": "" },
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
    let _ = crate::fsutil::replace_file(&run_dir.join(STATUS_FILE), &bytes, 0o644);
    doc
}

fn status_path(cli: &Cli, plan_path: Option<&Path>) -> Result<PathBuf, i32> {
    let plan = match plan_path.map(plan::load).transpose() {
        Ok(plan) => plan,
        Err(err) => {
            print_plan_error(&err);
            return Err(err.code().exit_code());
        }
    };
    Ok(run_dir(cli, plan.as_ref()).join(STATUS_FILE))
}

fn status_cmd(
    cli: &Cli,
    plan_path: Option<&Path>,
    json: bool,
    wait: bool,
    timeout: Duration,
) -> i32 {
    let path = match status_path(cli, plan_path) {
        Ok(path) => path,
        Err(code) => return code,
    };
    let started = Instant::now();
    let mut next_report = Duration::from_secs(5);
    let doc = loop {
        let doc = status::read_status(&path);
        let finished = matches!(&doc, Ok(d) if d.outcome != Outcome::Running);
        if !wait || finished {
            break doc;
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "bootplan: still not finished after {}; giving up [deadline.exceeded]",
                humantime::format_duration(timeout)
            );
            return exit::DEADLINE;
        }
        if started.elapsed() >= next_report {
            eprintln!(
                "bootplan: still waiting for the run to finish after {}s ({})",
                started.elapsed().as_secs(),
                path.display()
            );
            next_report += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let doc = match doc {
        Ok(doc) => doc,
        Err(err) => {
            eprintln!("bootplan: no status: {err}");
            return exit::UNAVAILABLE;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_status(&doc);
    }
    match doc.outcome {
        Outcome::Running => exit::DEADLINE,
        outcome if outcome.is_ready() => exit::READY,
        _ => doc.exit_code.unwrap_or(exit::STEP_FAILED),
    }
}

fn print_status(doc: &status::StatusDoc) {
    println!("plan:      {} ({})", doc.plan.name, doc.plan.path);
    println!("bootstrap: {}", doc.bootstrap_id);
    println!("started:   {}", doc.started_at);
    println!("outcome:   {}", doc.outcome.as_str());
    if let Some(e) = &doc.error {
        println!("error:     [{}] {}", e.code, e.message);
    }
    let width = doc.steps.keys().map(String::len).max().unwrap_or(4).max(4);
    println!(
        "\n{:<width$}  {:<9}  {:>8}  {:>9}  NOTE",
        "STEP", "STATE", "ATTEMPTS", "DURATION"
    );
    for (name, s) in &doc.steps {
        let note = s
            .error
            .as_ref()
            .map(|e| format!("[{}] {}", e.code, e.message))
            .or_else(|| s.skip_reason.clone())
            .unwrap_or_default();
        let duration = s
            .duration_ms
            .map(|d| format!("{d}ms"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{name:<width$}  {:<9}  {:>8}  {duration:>9}  {note}",
            s.state.as_str(),
            s.attempts
        );
    }
}

fn reset(cli: &Cli, steps: &[String], plan_path: Option<&Path>) -> i32 {
    let plan = match plan_path.map(plan::load).transpose() {
        Ok(plan) => plan,
        Err(err) => {
            print_plan_error(&err);
            return err.code().exit_code();
        }
    };
    let dir = state_dir(cli, plan.as_ref());
    match journal::reset(&dir, plan.as_ref().map(|p| p.name.as_str()), steps) {
        Ok(removed) => {
            println!("forgot {removed} record(s) in {}", dir.display());
            exit::READY
        }
        Err(err) => {
            eprintln!("error: {err} [{}]", ErrorCode::StateUnwritable);
            ErrorCode::StateUnwritable.exit_code()
        }
    }
}

fn facts_cmd(json: bool, provider: Option<&str>, plan_path: Option<&Path>, user_data: bool) -> i32 {
    let mut config = match plan_path.map(plan::load).transpose() {
        Ok(plan) => plan.map(|p| p.facts).unwrap_or_default(),
        Err(err) => {
            print_plan_error(&err);
            return err.code().exit_code();
        }
    };
    if let Some(name) = provider {
        match ProviderChoice::from_name(name) {
            // The fallback default follows the choice unless the plan set one.
            Some(choice) => config.provider = choice,
            None => {
                eprintln!(
                    "error: unknown provider `{name}`; use auto, aws, gcp, azure, openstack, digitalocean, nocloud or local [usage.invalid]"
                );
                return exit::USAGE;
            }
        }
    }
    let gathered: Gathered = match crate::facts::gather(&FactsSettings::from_env(&config)) {
        Ok(gathered) => gathered,
        Err(err) => {
            eprintln!("error: {err} [{}]", err.code());
            return err.code().exit_code();
        }
    };
    if user_data {
        use std::io::Write;
        return match &gathered.facts.user_data {
            Some(data) => {
                let _ = std::io::stdout().write_all(data.expose());
                exit::READY
            }
            None => {
                eprintln!("bootplan: {} has no user data", gathered.provider);
                exit::READY
            }
        };
    }
    eprintln!("bootplan: {}", gathered.summary());
    let facts = &gathered.facts;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(facts).unwrap_or_default()
        );
    } else if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(facts) {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{k:<14} {text}");
        }
        if let Some(data) = &facts.user_data {
            println!(
                "{:<14} ({} bytes; --user-data prints it)",
                "user_data",
                data.len()
            );
        }
    }
    exit::READY
}
