//! A step's commands: the rendered [`Cmd`], the environment bootplan gives
//! it, and [`run`], which runs one through [`crate::process`] and turns its
//! end into the step's result.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{StepContext, StepError};
use crate::plan::os::{Limit, Privileges, syntax};
use crate::process::{Command, Ids, ProcessError, Restrictions, Stdio};
use crate::system::{OsError, accounts};

pub use crate::process::Output;

/// A command ready to spawn (already rendered). Its arguments and
/// environment may hold secrets, so its `Debug` shows the program, the
/// number of arguments and the names of the variables only.
#[derive(Clone, Default)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Who it runs as and with what limits (`user:`, `umask:`, …).
    pub restrictions: Option<Restrictions>,
    /// The signal that asks it to stop (`stop_signal:`), default SIGTERM.
    pub stop_signal: Option<i32>,
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
        if let Some(restrictions) = &self.restrictions {
            cmd.restrict(restrictions.clone());
        }
        if let Some(signal) = self
            .stop_signal
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
        {
            cmd.stop_signal(signal);
        }
        cmd
    }
}

/// A command's [`Restrictions`] and the environment that goes with them.
pub type Restricted = (Restrictions, Vec<(String, String)>);

/// What a command runs as: the step's `user`, `group`, `groups` (rendered,
/// checked and looked up now), `umask`, `no_new_privs` and limits, plus the
/// user's `HOME`, `USER` and `LOGNAME` for its environment. `None` when the
/// step sets none of them.
pub fn restrictions(
    privileges: &Privileges,
    render: impl Fn(&str, &str) -> Result<String, StepError>,
) -> Result<Option<Restricted>, StepError> {
    if privileges.is_empty()
        || (privileges.user.is_none()
            && privileges.umask.is_none()
            && !privileges.no_new_privs
            && privileges.limits == Default::default())
    {
        return Ok(None);
    }
    let numeric = |s: &str| s.parse::<u32>().ok();
    let name_of = |text: &str, what: &str| -> Result<String, StepError> {
        let value = render(text, what)?;
        if numeric(&value).is_none() {
            crate::system::checked(what, &value, syntax::account_name)?;
        }
        Ok(value)
    };
    let group_id = |name: &str| -> Result<u32, StepError> {
        if let Some(gid) = numeric(name) {
            return Ok(gid);
        }
        accounts::group(name)?.map(|g| g.gid).ok_or_else(|| {
            StepError::Os(OsError::Missing {
                code: crate::error::ErrorCode::StepSpawnFailed,
                message: format!("no group named `{name}` to run the command with"),
            })
        })
    };
    let mut env = Vec::new();
    let ids = match &privileges.user {
        None => None,
        Some(text) => {
            let user = name_of(text, "user")?;
            let euid = nix::unistd::geteuid().as_raw();
            let account = match numeric(&user) {
                Some(uid) => accounts::user_by_uid(uid)?,
                None => Some(accounts::user(&user)?.ok_or_else(|| {
                    StepError::Os(OsError::Missing {
                        code: crate::error::ErrorCode::StepSpawnFailed,
                        message: format!("no user named `{user}` to run the command as (create it with a `user` step the command `needs`)"),
                    })
                })?),
            };
            let uid = account
                .as_ref()
                .map_or_else(|| numeric(&user).unwrap_or(0), |a| a.uid);
            if euid != 0 && euid != uid {
                return Err(StepError::Os(OsError::NotRoot { user, euid }));
            }
            let gid = match &privileges.group {
                Some(text) => group_id(&name_of(text, "group")?)?,
                None => account.as_ref().map_or(uid, |a| a.gid),
            };
            let groups = match &privileges.groups {
                Some(list) => list
                    .iter()
                    .enumerate()
                    .map(|(i, g)| group_id(&name_of(g, &format!("groups[{i}]"))?))
                    .collect::<Result<Vec<_>, _>>()?,
                None => match &account {
                    Some(a) => accounts::supplementary_gids(&a.name, gid)?,
                    None => Vec::new(),
                },
            };
            if let Some(account) = &account {
                env.push(("HOME".to_string(), account.home.display().to_string()));
                env.push(("USER".to_string(), account.name.clone()));
                env.push(("LOGNAME".to_string(), account.name.clone()));
            }
            Some(Ids::new(uid, gid, &groups))
        }
    };
    use nix::sys::resource::Resource;
    let limits = [
        (Resource::RLIMIT_NOFILE, privileges.limits.nofile),
        (Resource::RLIMIT_NPROC, privileges.limits.nproc),
        (Resource::RLIMIT_CORE, privileges.limits.core),
    ]
    .into_iter()
    .filter_map(|(resource, limit): (Resource, Option<Limit>)| {
        limit.map(|l| (resource, l.soft, l.hard))
    })
    .collect();
    Ok(Some((
        Restrictions {
            ids,
            umask: privileges.umask,
            no_new_privs: privileges.no_new_privs,
            limits,
        },
        env,
    )))
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
            ..Cmd::default()
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
