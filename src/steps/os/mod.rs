//! The OS kinds (`user`, `group`, `packages`, `hostname`, `sysctl`,
//! `unit`, `ssh_host_keys`): one module each, all behind [`OsAction`].
//!
//! Every kind compares the machine with the plan and changes only what
//! differs, in one function that either only looks ([`Mode::Look`], what
//! `bootplan plan` runs) or also changes ([`Mode::Change`]), so the dry run
//! and the run can never disagree about what differs. What a kind found is
//! a [`Report`]: the changes (made, or that would be made) and, when there
//! are none, why the machine already matches. The machine is reached only
//! through [`crate::system`].

mod group;
mod host_keys;
mod hostname;
mod packages;
mod sysctl;
mod unit;
mod user;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{StepAction, StepContext, StepError, StepInputs};
use crate::facts::Facts;
use crate::plan::Step;
use crate::plan::os::OsKind;
use crate::system::{OsError, Sys};
use crate::template as tpl;

/// Whether a kind only looks at the machine or also changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Look,
    Change,
}

impl Mode {
    fn changes(self) -> bool {
        self == Mode::Change
    }
}

/// What a kind found: changes made (or, in a dry run, that would be
/// made), each recorded once it is done, and why nothing had to change
/// when the list is empty.
#[derive(Debug, Default)]
pub struct Report {
    pub changes: Vec<String>,
    pub satisfied: String,
    /// A reason the whole step does nothing here (a container sharing the
    /// host's UTS namespace).
    pub skipped: Option<String>,
}

impl Report {
    fn change(&mut self, text: impl Into<String>) {
        self.changes.push(text.into());
    }
}

/// Renders the kind's template strings: in a run with the step's secrets,
/// in a dry run without them (a field that needs one is then not compared).
pub struct Render {
    context: minijinja::Value,
    with_secrets: bool,
}

impl Render {
    fn text(&self, text: &str, what: &str) -> Result<String, StepError> {
        tpl::render_text(text, self.context.clone()).map_err(super::render_error(what))
    }

    /// Renders `text` when this renderer can: `Ok(None)` in a dry run
    /// for a field that reads a secret.
    fn secret_text(&self, text: &str, what: &str) -> Result<Option<String>, StepError> {
        match self.text(text, what) {
            Ok(value) => Ok(Some(value)),
            Err(_) if !self.with_secrets => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Renders `text` and checks it with `check`.
    fn checked(
        &self,
        text: &str,
        what: &str,
        check: impl FnOnce(&str) -> Result<(), String>,
    ) -> Result<String, StepError> {
        let value = self.text(text, what)?;
        crate::system::checked(what, &value, check)?;
        Ok(value)
    }
}

/// Everything a kind may use while it looks or changes.
pub struct Env<'a> {
    pub step: &'a Step,
    pub sys: &'a Sys<'a>,
    pub render: &'a Render,
    pub facts: &'a Facts,
    pub mode: Mode,
}

impl Env<'_> {
    /// The step's timeout in whole seconds (what a package manager may
    /// wait for its lock), at least one.
    fn lock_wait(&self) -> u64 {
        self.step
            .timeout
            .unwrap_or(Duration::from_secs(600))
            .as_secs()
            .max(1)
    }
}

async fn converge(kind: &OsKind, env: &Env<'_>, report: &mut Report) -> Result<(), StepError> {
    match kind {
        OsKind::Group(spec) => group::converge(spec, env, report).await,
        OsKind::User(spec) => user::converge(spec, env, report).await,
        OsKind::Packages(spec) => packages::converge(spec, env, report).await,
        OsKind::Hostname(spec) => hostname::converge(spec, env, report).await,
        OsKind::Sysctl(spec) => sysctl::converge(spec, env, report).await,
        OsKind::Unit(spec) => unit::converge(spec, env, report).await,
        OsKind::SshHostKeys(spec) => host_keys::converge(spec, env, report).await,
    }
}

/// An OS step's attempt.
pub struct OsAction<'a> {
    pub kind: &'a OsKind,
}

impl StepAction for OsAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let sys = Sys::step(&ctx.reporter, &inputs.step.name, cancel, ctx.kill_grace);
        let render = Render {
            context: super::context(ctx, Some(&inputs.secrets)),
            with_secrets: true,
        };
        let env = Env {
            step: inputs.step,
            sys: &sys,
            render: &render,
            facts: &ctx.facts,
            mode: Mode::Change,
        };
        // Changes are recorded once made: what a failed attempt did before
        // it failed is shown too.
        let mut report = Report::default();
        let result = converge(self.kind, &env, &mut report).await;
        for change in &report.changes {
            sys.say(format!("changed: {change}"));
        }
        result?;
        if let Some(reason) = &report.skipped {
            sys.say(format!("skipped: {reason}"));
        } else if report.changes.is_empty() {
            sys.say(format!("up to date: {}", report.satisfied));
        }
        Ok(())
    }
}

/// What `bootplan plan` says of an OS step: `("change", "would …; …")` or
/// `("ok", why nothing differs)`, found with the same read-only queries a
/// run makes first. Secrets are not fetched: a field that needs one is not
/// compared.
pub fn preview(
    step: &Step,
    kind: &OsKind,
    facts: &Facts,
    scope: &crate::plan::refs::TemplateScope,
) -> (&'static str, String) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return ("check", format!("cannot look at the machine: {err}")),
    };
    let cancel = CancellationToken::new();
    let sys = Sys::quiet(&cancel);
    let render = Render {
        context: scope.context(minijinja::Value::from(minijinja::value::Serde(
            std::collections::BTreeMap::<String, String>::new(),
        ))),
        with_secrets: false,
    };
    let env = Env {
        step,
        sys: &sys,
        render: &render,
        facts,
        mode: Mode::Look,
    };
    let mut report = Report::default();
    match runtime.block_on(converge(kind, &env, &mut report)) {
        Ok(()) => match report.skipped {
            Some(reason) => ("skip", reason),
            None if report.changes.is_empty() => ("ok", report.satisfied),
            None => (
                "change",
                format!("would {}", report.changes.join("; would ")),
            ),
        },
        Err(err) => ("check", format!("cannot tell: {err} [{}]", err.code())),
    }
}

impl From<OsError> for StepError {
    fn from(err: OsError) -> StepError {
        match err {
            OsError::Cancelled => StepError::Cancelled,
            other => StepError::Os(other),
        }
    }
}

/// The content of `path` without following a link at it; `None` when it
/// or its directory does not exist (yet).
fn read_existing(path: &std::path::Path) -> Result<Option<Vec<u8>>, crate::fsutil::FsError> {
    match crate::fsutil::read_nofollow(path) {
        Err(err) if err.kind() == Some(std::io::ErrorKind::NotFound) => Ok(None),
        other => other,
    }
}

/// Writes a system file (root-owned directories) atomically when its
/// content differs; says whether it did (or would).
fn sync_file(
    env: &Env<'_>,
    path: &std::path::Path,
    content: &[u8],
    mode: u32,
) -> Result<bool, StepError> {
    let current = read_existing(path)?;
    let same_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode)
    };
    if current.as_deref() == Some(content) && same_mode {
        return Ok(false);
    }
    if env.mode.changes() {
        crate::fsutil::write_atomic(path, content, mode)?;
    }
    Ok(true)
}
