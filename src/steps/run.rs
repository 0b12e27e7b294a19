//! `run` (argv, no shell) and `shell` (explicit `/bin/sh -c`) steps.

use tokio_util::sync::CancellationToken;

use super::process::{self, Cmd, Output};
use super::{StepAction, StepContext, StepError, StepInputs};

/// A command given as argv.
pub struct RunAction<'a> {
    pub argv: &'a [String],
}

/// A script run by `/bin/sh -c`. Every value interpolated into it is one
/// quoted shell word; secrets are never interpolated into it (validation
/// rejects that): they reach the script through `env`.
pub struct ShellAction<'a> {
    pub script: &'a str,
}

impl StepAction for RunAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let cmd = inputs.command(self.argv, ctx)?;
        process::run(&inputs.step.name, &cmd, ctx, Output::Log, cancel).await
    }
}

impl StepAction for ShellAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let script = inputs.render_script(self.script, "shell", ctx)?;
        let base = inputs.command(&[], ctx)?;
        let cmd = Cmd {
            argv: vec!["/bin/sh".into(), "-c".into(), script],
            ..base
        };
        process::run(&inputs.step.name, &cmd, ctx, Output::Log, cancel).await
    }
}
