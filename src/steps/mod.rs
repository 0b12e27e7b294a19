//! Step kinds: one module each, behind [`StepAction`].
//!
//! The engine prepares a step's inputs (its resolved secrets) and calls
//! [`run_attempt`] once per attempt; retries, timeouts and the journal are the
//! engine's business. To add a kind: add its raw type in `plan/raw.rs`, its
//! resolved form in `plan::StepKind`, a module here implementing
//! [`StepAction`], and an arm in [`run_attempt`].

pub mod download;
pub mod exec;
pub mod file;
pub mod os;
pub mod probe;
pub mod process;
pub mod run;
pub mod service;
pub mod template;
pub mod wait;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indexmap::IndexMap;
use tokio_util::sync::CancellationToken;

use crate::error::ErrorCode;
use crate::facts::Facts;
use crate::fsutil::FsError;
use crate::plan::{Step, StepKind, refs};
use crate::secrets::{SecretError, SecretStore, SecretValue};
use crate::telemetry::Reporter;
use crate::template as tpl;

/// What one attempt of a step does.
#[allow(async_fn_in_trait)]
pub trait StepAction {
    /// Performs the step once. Must return promptly with
    /// [`StepError::Cancelled`] after cleaning up (killing its processes)
    /// when `cancel` fires. Must not retry: the engine owns retries.
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError>;
}

/// Shared, read-mostly state for every step of a run.
pub struct StepContext {
    pub reporter: Arc<Reporter>,
    pub facts: Facts,
    /// Facts, vars and env as templates see them, built once for the run.
    pub template_scope: refs::TemplateScope,
    pub secrets: SecretStore,
    pub plan_dir: PathBuf,
    pub bootstrap_id: String,
    pub kill_grace: Duration,
    pub services: service::Services,
    /// Fleet-wide semaphores and the start splay.
    pub fleet: crate::fleet::Fleet,
    /// The download cache and the run's deadline, for `download` steps.
    pub downloads: download::Downloads,
    http: OnceLock<reqwest::Client>,
}

impl StepContext {
    pub fn new(
        reporter: Arc<Reporter>,
        facts: Facts,
        vars: IndexMap<String, serde_json::Value>,
        secrets: SecretStore,
        plan_dir: PathBuf,
        bootstrap_id: String,
        kill_grace: Duration,
    ) -> StepContext {
        StepContext {
            reporter,
            template_scope: refs::TemplateScope::new(facts.template_value(), &vars),
            facts,
            secrets,
            plan_dir,
            bootstrap_id,
            kill_grace,
            services: service::Services::default(),
            fleet: crate::fleet::Fleet::default(),
            downloads: download::Downloads::default(),
            http: OnceLock::new(),
        }
    }

    /// The HTTP client, built on first use (most plans never need one).
    pub fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            crate::http::client_builder()
                .no_proxy()
                .build()
                .unwrap_or_default()
        })
    }
}

/// A step and the secret values it may use, fetched before it starts.
pub struct StepInputs<'a> {
    pub step: &'a Step,
    pub secrets: BTreeMap<String, SecretValue>,
}

impl StepInputs<'_> {
    /// Renders a template string with facts, vars, env and this step's secrets.
    pub fn render(&self, text: &str, what: &str, ctx: &StepContext) -> Result<String, StepError> {
        tpl::render_text(text, context(ctx, Some(&self.secrets))).map_err(render_error(what))
    }

    /// Renders a `shell:` script: no secrets in scope, and every value
    /// arrives as one quoted shell word.
    pub fn render_script(
        &self,
        text: &str,
        what: &str,
        ctx: &StepContext,
    ) -> Result<String, StepError> {
        tpl::render_shell(text, context(ctx, None)).map_err(render_error(what))
    }

    /// The step's rendered argv, env and cwd.
    pub fn command(&self, argv: &[String], ctx: &StepContext) -> Result<process::Cmd, StepError> {
        let argv = argv
            .iter()
            .enumerate()
            .map(|(i, a)| self.render(a, &format!("argv[{i}]"), ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let env = self
            .step
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.render(v, &format!("env.{k}"), ctx)?)))
            .collect::<Result<Vec<_>, StepError>>()?;
        // Relative paths in a plan, the working directory included, are
        // relative to the plan file's directory.
        let cwd = match &self.step.cwd {
            Some(cwd) => self.path(cwd, "cwd", ctx)?,
            None => ctx.plan_dir.clone(),
        };
        let cwd = Some(cwd);
        let restricted = process::restrictions(&self.step.privileges, |text, what| {
            self.render(text, what, ctx)
        })?;
        let (restrictions, mut env) = match restricted {
            Some((restrictions, user_env)) => {
                // The user's HOME and the rest, unless the plan sets them.
                let mut all: Vec<(String, String)> = user_env
                    .into_iter()
                    .filter(|(k, _)| !env.iter().any(|(name, _)| name == k))
                    .collect();
                all.extend(env);
                (Some(restrictions), all)
            }
            None => (None, env),
        };
        env.shrink_to_fit();
        Ok(process::Cmd {
            argv,
            env,
            cwd,
            restrictions,
            stop_signal: self.step.privileges.stop_signal,
        })
    }

    /// A path from the plan, rendered (no NUL, no `..` from a value) and
    /// made absolute against the plan's directory.
    pub fn path(&self, text: &str, what: &str, ctx: &StepContext) -> Result<PathBuf, StepError> {
        let rendered = tpl::render_path(text, context(ctx, Some(&self.secrets)))
            .map_err(render_error(what))?;
        Ok(ctx.plan_dir.join(rendered))
    }
}

/// The template context: facts, vars, env and, when given, secrets.
pub(crate) fn context(
    ctx: &StepContext,
    secrets: Option<&BTreeMap<String, SecretValue>>,
) -> minijinja::Value {
    let secret_values: BTreeMap<&str, &str> = secrets
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    ctx.template_scope
        .context(minijinja::Value::from(minijinja::value::Serde(
            &secret_values,
        )))
}

pub(crate) fn render_error(what: &str) -> impl FnOnce(tpl::TemplateError) -> StepError + '_ {
    move |err| match err {
        tpl::TemplateError::UnsafePath { message } => StepError::UnsafePath {
            what: what.to_string(),
            message,
        },
        other => StepError::Render {
            what: what.to_string(),
            message: other.to_string(),
        },
    }
}

/// Renders `text` with facts, vars, env and, when given, secrets.
pub fn render(
    text: &str,
    what: &str,
    ctx: &StepContext,
    secrets: Option<&BTreeMap<String, SecretValue>>,
) -> Result<String, StepError> {
    tpl::render_text(text, context(ctx, secrets)).map_err(render_error(what))
}

/// Why an attempt failed. Messages never contain secret values (and pass the
/// redactor anyway).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("command `{program}` exited with status {status}")]
    ExitNonzero { program: String, status: i32 },
    #[error("command `{program}` was killed by signal {signal}")]
    Signaled { program: String, signal: i32 },
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attempt timed out after {}", humantime::format_duration(*after))]
    Timeout { after: Duration },
    #[error("{target} not ready after {}: {last}", humantime::format_duration(*after))]
    WaitTimeout {
        target: String,
        after: Duration,
        last: String,
    },
    #[error("cannot render {what}: {message}")]
    Render { what: String, message: String },
    #[error("unsafe {what}: {message}")]
    UnsafePath { what: String, message: String },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("cannot set owner `{owner}` of {path}: {message}")]
    Owner {
        owner: String,
        path: PathBuf,
        message: String,
    },
    #[error("service `{program}` exited before it was ready ({status})")]
    ServiceExited { program: String, status: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// An OS kind's failure (a system tool, the package manager, visudo).
    #[error(transparent)]
    Os(crate::system::OsError),
    #[error(transparent)]
    Throttle(#[from] crate::fleet::ThrottleError),
    #[error(transparent)]
    Download(#[from] download::DownloadError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cancelled")]
    Cancelled,
}

impl StepError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StepError::ExitNonzero { .. } | StepError::ServiceExited { .. } => {
                ErrorCode::StepExitNonzero
            }
            StepError::Signaled { .. } => ErrorCode::StepSignaled,
            StepError::Spawn { .. } => ErrorCode::StepSpawnFailed,
            StepError::Timeout { .. } => ErrorCode::StepTimeout,
            StepError::WaitTimeout { .. } => ErrorCode::StepWaitTimeout,
            StepError::Render { .. } => ErrorCode::TemplateRenderFailed,
            StepError::UnsafePath { .. } => ErrorCode::PathUnsafe,
            StepError::Fs(FsError::UnsafeLink { .. }) => ErrorCode::PathUnsafe,
            StepError::Fs(_) | StepError::Owner { .. } => ErrorCode::FileWriteFailed,
            StepError::Secret(e) => e.code(),
            StepError::Os(e) => e.code(),
            StepError::Throttle(crate::fleet::ThrottleError::TimedOut { .. }) => {
                ErrorCode::StepTimeout
            }
            StepError::Throttle(crate::fleet::ThrottleError::Cancelled) => {
                ErrorCode::RunInterrupted
            }
            StepError::Throttle(_) => ErrorCode::ThrottleUnavailable,
            StepError::Download(e) => e.code(),
            StepError::Internal(_) => ErrorCode::Internal,
            // The engine replaces this with the reason it cancelled.
            StepError::Cancelled => ErrorCode::RunInterrupted,
        }
    }

    /// Whether another attempt could succeed. A template that does not render
    /// or a missing program will not get better by trying again.
    pub fn is_retryable(&self) -> bool {
        if let StepError::Os(err) = self {
            return err.is_retryable();
        }
        if let StepError::Download(err) = self {
            return err.is_retryable();
        }
        !matches!(
            self,
            StepError::Render { .. }
                | StepError::UnsafePath { .. }
                | StepError::Cancelled
                | StepError::Secret(_)
                | StepError::Throttle(_)
        )
    }
}

/// Runs one attempt of `inputs.step`.
pub async fn run_attempt(
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    match &inputs.step.kind {
        StepKind::Run { argv } => run::RunAction { argv }.run(inputs, ctx, cancel).await,
        StepKind::Shell { script } => run::ShellAction { script }.run(inputs, ctx, cancel).await,
        StepKind::File(spec) => file::FileAction { spec }.run(inputs, ctx, cancel).await,
        StepKind::Template(spec) => {
            template::TemplateAction { spec }
                .run(inputs, ctx, cancel)
                .await
        }
        StepKind::Wait(spec) => {
            wait::WaitAction {
                spec,
                limit: inputs.step.timeout,
            }
            .run(inputs, ctx, cancel)
            .await
        }
        StepKind::Service { argv } => {
            service::ServiceAction { argv }
                .run(inputs, ctx, cancel)
                .await
        }
        StepKind::Download(spec) => {
            download::DownloadAction { spec }
                .run(inputs, ctx, cancel)
                .await
        }
        // The engine runs the exec step itself, last, by replacing bootplan.
        StepKind::Exec { .. } => Ok(()),
        StepKind::Os(kind) => os::OsAction { kind }.run(inputs, ctx, cancel).await,
    }
}
