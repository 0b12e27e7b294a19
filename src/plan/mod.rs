//! The plan: loading (`load`), raw file types (`raw`), and the resolved,
//! validated graph (`Plan`) that the engine runs.
//!
//! Loading has two phases, as in ripgrep's argument parsing: the file is
//! parsed into [`raw::RawPlan`] (a mirror of the file, no I/O beyond reading
//! it), then [`validate::resolve`] checks everything and builds [`Plan`],
//! collecting every problem before reporting. Nothing in this module has side
//! effects beyond reading the plan and the template sources it names.

pub mod bounded;
pub mod change;
pub mod diagnostic;
pub mod download;
pub mod duration;
pub mod facts;
pub mod include;
pub mod lifecycle;
pub mod limits;
pub mod load;
pub mod os;
pub mod os_step;
pub mod raw;
pub mod refs;
pub mod report;
pub mod secret_checks;
pub mod secret_source;
pub mod source;
pub mod telemetry;
pub mod validate;
pub mod when;

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

pub use diagnostic::{Diagnostic, Position, Severity};
pub use raw::{Frequency, OnFailure, RawStep};
pub use secret_source::{BackendsConfig, SecretSource};

use crate::error::ErrorCode;

/// Why a plan could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} problem(s) in the plan:\n{}",
        error_count(diagnostics),
        render(diagnostics)
    )]
    Invalid { diagnostics: Vec<Diagnostic> },
    #[error("cannot fetch plan {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("refusing plan {url}: {message}")]
    Untrusted { url: String, message: String },
    /// User data that is neither a bootplan plan nor cloud-init's.
    #[error("refusing {from} as a plan: {message}")]
    UserData { from: String, message: String },
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{d}\n"))
        .collect()
}

/// The errors among `diagnostics` (warnings do not make a plan invalid).
pub fn error_count(diagnostics: &[Diagnostic]) -> usize {
    diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}

impl PlanError {
    pub(crate) fn invalid_one(diagnostic: Diagnostic) -> PlanError {
        PlanError::Invalid {
            diagnostics: vec![diagnostic],
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            PlanError::Read { .. } => ErrorCode::PlanUnreadable,
            PlanError::Invalid { .. } => ErrorCode::PlanInvalid,
            PlanError::Fetch { .. } => ErrorCode::PlanUnreadable,
            PlanError::Untrusted { .. } => ErrorCode::PlanSignatureInvalid,
            PlanError::UserData { .. } => ErrorCode::PlanInvalid,
        }
    }
}

/// Prints each diagnostic on stderr, led by its severity.
pub fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        let severity = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        crate::stdio::errln!("{severity}: {d}");
    }
}

/// Prints why a plan could not be loaded, on stderr.
pub fn print_error(err: &PlanError) {
    match err {
        PlanError::Invalid { diagnostics } => {
            print_diagnostics(diagnostics);
            crate::stdio::errln!(
                "bootplan: the plan is invalid ({} problem(s)); nothing was run [plan.invalid]",
                error_count(diagnostics)
            );
        }
        PlanError::Read { .. }
        | PlanError::Fetch { .. }
        | PlanError::Untrusted { .. }
        | PlanError::UserData { .. } => {
            crate::stdio::errln!("error: {err} [{}]", err.code())
        }
    }
}

/// The names whose flag is set, in order: which of a set of mutually
/// exclusive optional keys (step kinds, secret backends, auth methods) a
/// mapping actually has.
pub fn present_keys<const N: usize>(keys: [(&'static str, bool); N]) -> Vec<&'static str> {
    keys.into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
}

/// Reads, parses and validates the plan at `path` (a local file, or a
/// pinned or signed URL checked as [`source::Verification::default`] says).
pub fn load(path: &Path) -> Result<Plan, PlanError> {
    load_with(path, &source::Verification::default())
}

/// Reads, parses and validates the plan at `path` — a file or a URL,
/// fetched and checked before it is parsed — with its includes merged.
pub fn load_with(path: &Path, verification: &source::Verification) -> Result<Plan, PlanError> {
    let (path, text, remote) = match path.to_str().filter(|p| source::is_url(p)) {
        Some(url) => (
            source::shown_path(url),
            source::fetch_verified(url, verification)?,
            true,
        ),
        None => (path.to_path_buf(), load::read_plan_text(path)?, false),
    };
    load_text(&path, &text, remote, verification)
}

/// Parses and validates plan `text` shown as `path` (a plan that came from
/// somewhere other than a file, such as user data, is `remote`: it may
/// include only pinned or signed URLs).
pub fn load_text(
    path: &Path,
    text: &str,
    remote: bool,
    verification: &source::Verification,
) -> Result<Plan, PlanError> {
    match load::parse::<RawStep>(path, text) {
        Ok(mut raw) => {
            let sources = include::merge(&mut raw, path, text, remote, verification)
                .map_err(|diagnostics| PlanError::Invalid { diagnostics })?;
            validate::resolve_merged(path, text, raw, Vec::new(), sources)
                .map_err(|diagnostics| PlanError::Invalid { diagnostics })
        }
        Err(first) => Err(PlanError::Invalid {
            diagnostics: every_step_problem(path, text, *first),
        }),
    }
}

/// Every problem of a plan whose parse failed with `first`: when the
/// problem is inside a step, each step is parsed on its own and the rest of
/// the plan is validated, so one `check` reports the broken steps and the
/// other steps' problems together. `first` keeps its exact position.
fn every_step_problem(path: &Path, text: &str, first: Diagnostic) -> Vec<Diagnostic> {
    let Ok(mut lenient) = load::parse::<serde_json::Value>(path, text) else {
        // The problem is outside the steps: nothing after it can be trusted.
        return vec![first];
    };
    let step_lines: Vec<u64> = lenient
        .steps
        .values()
        .map(|s| Position::from_saphyr(s.referenced).map_or(0, |p| p.line))
        .collect();
    // The step `first` is in: the last one that starts before it.
    let first_in = first
        .position
        .and_then(|p| step_lines.iter().rposition(|&l| l > 0 && l <= p.line));
    let mut diagnostics = vec![first];
    let mut good = indexmap::IndexMap::new();
    let mut broken = Vec::new();
    let steps = std::mem::take(&mut lenient.steps);
    for (index, (name, spanned)) in steps.iter().enumerate() {
        let position = Position::from_saphyr(spanned.referenced);
        match serde_path_to_error::deserialize::<_, RawStep>(&spanned.value) {
            Ok(step) => {
                let step = serde_saphyr::Spanned::new(step, spanned.referenced, spanned.defined);
                good.insert(name.clone(), step);
            }
            Err(err) => {
                let at = err.path().to_string();
                let field = if at == "." {
                    format!("steps.{name}")
                } else {
                    format!("steps.{name}.{at}")
                };
                if Some(index) == first_in {
                    // The parser's own message has the exact position; this adds the field.
                    if diagnostics[0].field.is_empty() {
                        diagnostics[0].field = field;
                    }
                } else {
                    let message = err.into_inner().to_string();
                    diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        file: path.to_path_buf(),
                        position,
                        field,
                        hint: diagnostic::hint_for_serde_message(&message)
                            .or_else(|| load::generic_hint(&message)),
                        message,
                    });
                }
                broken.push(validate::BrokenStep {
                    name: name.clone(),
                    position,
                    needs: needs_of(&spanned.value),
                });
            }
        }
    }
    let raw = lenient.with_steps(good);
    if let Err(more) = validate::resolve(path, text, raw, broken) {
        diagnostics.extend(more);
    }
    diagnostics
}

/// The `needs` of a step that did not parse, as far as they are names.
fn needs_of(step: &serde_json::Value) -> Vec<String> {
    step.get("needs")
        .and_then(serde_json::Value::as_array)
        .map(|needs| {
            needs
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A validated plan, ready to run. Steps are addressed by dense ids (their
/// index in `steps`), in file order.
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub path: PathBuf,
    /// `sha256:<hex>` of the plan file's bytes.
    pub digest: String,
    pub deadline: Duration,
    pub max_parallel: usize,
    pub rollback: bool,
    /// Runs kept in the state directory's history.
    pub history: u32,
    pub kill_grace: Duration,
    pub vars: IndexMap<String, serde_json::Value>,
    pub facts_provider: String,
    /// The `facts:` block, validated.
    pub facts: facts::FactsConfig,
    /// The plan's own `state_dir`, resolved against the plan's directory.
    pub state_dir: Option<PathBuf>,
    /// The plan's own `run_dir`, resolved against the plan's directory.
    pub run_dir: Option<PathBuf>,
    pub secrets: IndexMap<String, SecretSource>,
    /// Who a secret's refresh tells when it wrote the secret's files (its `on_change.reload`).
    pub secret_reloads: std::collections::BTreeMap<String, OnChange>,
    pub backends: BackendsConfig,
    pub steps: Vec<Step>,
    /// Supervision, readiness file, registration and report settings.
    pub lifecycle: lifecycle::Lifecycle,
    /// Where metrics and traces go (`telemetry:`).
    pub telemetry: telemetry::TelemetryConfig,
    /// The download cache's settings (`downloads:`).
    pub downloads: download::DownloadSettings,
    /// Environment variables that hold secrets or credentials (see
    /// [`secret_checks::secret_env_names`]).
    pub secret_env: std::collections::BTreeSet<String>,
    /// Fleet-wide semaphores (`limits:`).
    pub limits: Option<limits::Limits>,
    /// `start_splay:`.
    pub start_splay: Option<limits::StartSplay>,
    /// Problems that do not stop the plan from running.
    pub warnings: Vec<Diagnostic>,
}

impl Plan {
    /// The directory relative paths in the plan are resolved against.
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    pub fn step_id(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
}

/// One validated step.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: usize,
    pub name: String,
    pub kind: StepKind,
    /// Ids of the steps this one needs.
    pub needs: Vec<usize>,
    pub env: IndexMap<String, String>,
    pub cwd: Option<String>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub frequency: Frequency,
    pub creates: Option<String>,
    pub unless: Option<Vec<String>>,
    pub on_failure: OnFailure,
    pub undo: Option<Vec<String>>,
    pub ready: Option<WaitSpec>,
    /// For `service` steps: when the process is started again after it exits.
    pub restart: lifecycle::RestartPolicy,
    /// For `service` steps: whether losing it for good stops the run or the app.
    pub required: bool,
    /// A `when:` condition (a MiniJinja expression), checked at load time.
    pub when: Option<String>,
    /// Names of the secrets this step's templates and env use.
    pub secret_refs: Vec<String>,
    /// What a run, shell, service or exec command runs as (`user`,
    /// `group`, …), and a service's stop signal.
    pub privileges: os::Privileges,
    /// `sha256:<hex>` over the step's definition and non-secret inputs.
    pub fingerprint: String,
    /// For `template` steps: what a changed secret sets off.
    pub on_change: Option<OnChange>,
    /// The semaphore (of `limits.semaphores`) the step takes a slot of.
    pub throttle: Option<String>,
}

/// A template step's `on_change`.
#[derive(Debug, Clone)]
pub struct OnChange {
    pub check: Option<Vec<String>>,
    pub reload: Option<Reload>,
    /// The most a reload waits, at random, before it is made.
    pub splay: std::time::Duration,
}

/// Who hears of a changed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Signal {
        signal: i32,
        target: ReloadTarget,
    },
    /// Stop the process and start it again.
    Restart(ReloadTarget),
    Command(Vec<String>),
}

impl Reload {
    /// The supervised process told, for a signal or a restart.
    pub fn target(&self) -> Option<&ReloadTarget> {
        match self {
            Reload::Signal { target, .. } | Reload::Restart(target) => Some(target),
            Reload::Command(_) => None,
        }
    }
}

/// A process bootplan supervises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadTarget {
    /// The supervised `exec` app.
    App,
    /// A `service` step, by name.
    Service(String),
}

/// What a step does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Run {
        argv: Vec<String>,
    },
    Shell {
        script: String,
    },
    File(FileSpec),
    Template(TemplateSpec),
    Wait(WaitSpec),
    Exec {
        argv: Vec<String>,
    },
    Service {
        argv: Vec<String>,
    },
    /// `user`, `group`, `packages`, `hostname`, `sysctl`, `unit`, `ssh_host_keys`.
    Os(os::OsKind),
    Download(download::DownloadSpec),
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Run { .. } => "run",
            StepKind::Shell { .. } => "shell",
            StepKind::File(_) => "file",
            StepKind::Template(_) => "template",
            StepKind::Wait(_) => "wait",
            StepKind::Exec { .. } => "exec",
            StepKind::Service { .. } => "service",
            StepKind::Os(kind) => kind.name(),
            StepKind::Download(_) => "download",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileSpec {
    pub path: String,
    pub content: String,
    pub mode: u32,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TemplateSpec {
    /// The template text (read from `src` at load time, or given inline).
    pub source: String,
    /// Where the text came from, for messages.
    pub origin: String,
    pub dest: String,
    pub mode: u32,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitSpec {
    pub target: WaitTarget,
    pub interval: Duration,
    pub attempt_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitTarget {
    Tcp(String),
    Http(String),
    File(String),
    Command(Vec<String>),
    /// The process sends READY=1 on its NOTIFY_SOCKET.
    Notify,
}

impl WaitTarget {
    /// A short human description, e.g. `http://127.0.0.1:8080/healthz`.
    pub fn describe(&self) -> String {
        match self {
            WaitTarget::Tcp(addr) => format!("tcp {addr}"),
            WaitTarget::Http(url) => url.clone(),
            WaitTarget::File(path) => format!("file {path}"),
            WaitTarget::Command(argv) => format!("command `{}`", argv.join(" ")),
            WaitTarget::Notify => "sd_notify READY=1".to_string(),
        }
    }
}

/// Retry policy: `attempts` in total, delays drawn with full jitter from
/// `0..=min(max, min·2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The policy as a retry budget (no time limits of its own: the step's
    /// timeout and the run's deadline bound it).
    pub fn budget(&self) -> crate::retry::Budget {
        crate::retry::Budget::new(self.attempts, self.min_backoff, self.max_backoff)
    }

    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        min_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(30),
    };
}
