//! A step's commands: the rendered [`Cmd`], the environment bootplan gives
//! it, and [`run`], which runs one through [`crate::process`] and turns its
//! end into the step's result.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{StepContext, StepError};
use crate::process::{Command, ProcessError, Stdio};

pub use crate::process::Output;

/// A command ready to spawn (already rendered). Its arguments and
/// environment may hold secrets, so its `Debug` shows the program, the
/// number of arguments and the names of the variables only.
#[derive(Clone, Default)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Cmd")
            .field("program", &self.program())
            .field("args", &self.argv.len().saturating_sub(1))
            .field("env", &names)
            .finish_non_exhaustive()
    }
}

impl Cmd {
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// Builds the spawnable command: piped output, the step's environment.
    pub fn command(&self, ctx: &StepContext, step: &str) -> Command {
        self.command_for(&ctx.bootstrap_id, step)
    }

    /// [`Cmd::command`] without a context, for processes started outside a
    /// step (service restarts, readiness commands). bootplan's own
    /// `NOTIFY_SOCKET` is not passed on: a child must not tell systemd that
    /// bootplan is ready.
    pub fn command_for(&self, bootstrap_id: &str, step: &str) -> Command {
        let mut cmd = Command::new(self.program());
        cmd.args(self.argv.iter().skip(1))
            .env_remove("NOTIFY_SOCKET")
            .env("BOOTPLAN_BOOTSTRAP_ID", bootstrap_id)
            .env("BOOTPLAN_STEP", step)
            .envs(crate::telemetry::traces::step_env())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::Piped)
            .stderr(Stdio::Piped);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }
}

/// Runs `cmd` to completion as `step`'s. `Ok` means exit status 0.
pub async fn run(
    step: &str,
    cmd: &Cmd,
    ctx: &StepContext,
    output: Output,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    let command = cmd.command(ctx, step);
    let ran = crate::process::run(
        &command,
        step,
        &ctx.reporter,
        output,
        ctx.kill_grace,
        cancel,
    )
    .await;
    match ran {
        Ok(status) => exit_result(cmd.program(), status),
        Err(ProcessError::Cancelled) => Err(StepError::Cancelled),
        Err(ProcessError::Start { source, .. } | ProcessError::Wait { source, .. }) => {
            Err(StepError::Spawn {
                program: cmd.program().to_string(),
                source,
            })
        }
    }
}

pub fn exit_result(program: &str, status: std::process::ExitStatus) -> Result<(), StepError> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(StepError::ExitNonzero {
            program: program.to_string(),
            status: code,
        }),
        (None, Some(signal)) => Err(StepError::Signaled {
            program: program.to_string(),
            signal,
        }),
        (None, None) => Err(StepError::ExitNonzero {
            program: program.to_string(),
            status: -1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_argument_or_value() {
        let cmd = Cmd {
            argv: vec!["curl".into(), "-H".into(), "Authorization: s3cr3t".into()],
            env: vec![("TOKEN".into(), "hunter2".into())],
            cwd: None,
        };
        let shown = format!("{cmd:?}");
        assert!(shown.contains("curl") && shown.contains("TOKEN"), "{shown}");
        assert!(shown.contains("args: 2"), "{shown}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
