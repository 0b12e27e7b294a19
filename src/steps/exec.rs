//! `exec` steps: the final process replaces bootplan (execve), so the app
//! gets bootplan's PID (PID 1 in a container) and its exit code is the
//! container's. The engine calls this only after every other step is done
//! and the final status and journal are on disk.

use std::os::unix::process::CommandExt;

use super::{StepContext, StepError, StepInputs};

/// The rendered command to exec. Its `Debug` shows no argument or value
/// (see [`super::process::Cmd`]).
pub struct ExecRequest {
    pub step: String,
    pub cmd: super::process::Cmd,
    pub bootstrap_id: String,
}

impl std::fmt::Debug for ExecRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecRequest")
            .field("step", &self.step)
            .field("cmd", &self.cmd)
            .finish_non_exhaustive()
    }
}

/// Renders the exec step's argv, env and cwd.
pub fn prepare(
    argv: &[String],
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
) -> Result<ExecRequest, StepError> {
    Ok(ExecRequest {
        step: inputs.step.name.clone(),
        cmd: inputs.command(argv, ctx)?,
        bootstrap_id: ctx.bootstrap_id.clone(),
    })
}

/// Replaces this process with the request. Returns only on failure.
pub fn exec(request: &ExecRequest) -> std::io::Error {
    let cmd = &request.cmd;
    let mut command = std::process::Command::new(cmd.program());
    for name in crate::process::withheld_env() {
        command.env_remove(name);
    }
    command
        .args(cmd.argv.iter().skip(1))
        .env("BOOTPLAN_BOOTSTRAP_ID", &request.bootstrap_id)
        .env("BOOTPLAN_STEP", &request.step)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    // The process becomes the app: its user, limits, umask and
    // no_new_privs are set here, in bootplan itself, just before the exec.
    if let Some(restrictions) = &cmd.restrictions
        && let Err(err) = restrictions.apply()
    {
        return err;
    }
    command.exec()
}
