//! Running a command for a step: its own process group, output streamed
//! line by line to the reporter, and a clean kill of the whole group on
//! cancellation (SIGTERM, grace, SIGKILL). No child outlives its step: when
//! the command exits, anything left in its group is killed too, and every
//! child dies with bootplan (`PR_SET_PDEATHSIG`, see [`crate::spawn`]) if
//! bootplan is killed.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::{StepContext, StepError};
use crate::spawn::{Child, Command, Stdio};
use crate::telemetry::{EventKind, Stream};

/// Longest captured line; longer lines are cut so one runaway line cannot
/// exhaust memory.
const MAX_LINE: usize = 16 * 1024;

/// How long to wait for output pipes to close once the process group is gone.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// A command ready to spawn (already rendered).
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl Cmd {
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// Builds the spawnable command: own process group, no stdin, piped output,
    /// killed if bootplan dies.
    pub fn command(&self, ctx: &StepContext, step: &str) -> Command {
        self.command_for(&ctx.bootstrap_id, step)
    }

    /// [`Cmd::command`] without a context, for processes started outside a
    /// step (service restarts, readiness commands). bootplan's own
    /// `NOTIFY_SOCKET` is not passed on: a child must not tell systemd that
    /// bootplan is ready.
    pub fn command_for(&self, bootstrap_id: &str, step: &str) -> Command {
        let mut cmd = Command::new(self.program());
        cmd.args(&self.argv[1..])
            .env_remove("NOTIFY_SOCKET")
            .env("BOOTPLAN_BOOTSTRAP_ID", bootstrap_id)
            .env("BOOTPLAN_STEP", step)
            .envs(crate::telemetry::traces::step_env())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::Piped)
            .stderr(Stdio::Piped)
            .own_process_group()
            .kill_on_drop();
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }
}

/// What to do with the command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Stream each line to the reporter (redacted there).
    Log,
    /// Read and drop (checks such as `unless` and wait commands).
    Discard,
}

/// Runs `cmd` to completion. `Ok` means exit status 0.
pub async fn run(
    step: &str,
    cmd: &Cmd,
    ctx: &StepContext,
    output: Output,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    // Started without waiting for the exec: a program that cannot start
    // shows up as the wait's error below, one wake-up fewer per command.
    let mut child = start(step, cmd, ctx)?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // The output is read here, beside the wait, rather than by tasks of its
    // own: one step's process costs no task spawns, handles or timers.
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let pumps = async {
        let reporter = &ctx.reporter;
        tokio::join!(
            pump_if(stdout, step, Stream::Stdout, reporter, output),
            pump_if(stderr, step, Stream::Stderr, reporter, output),
        );
    };
    tokio::pin!(pumps);
    let mut pumped = false;
    let status = loop {
        tokio::select! {
            // Keeps reading while the command runs, so a full pipe never
            // blocks it.
            () = &mut pumps, if !pumped => pumped = true,
            status = child.wait() => break status,
            () = cancel.cancelled() => {
                if let Some(pgid) = pgid {
                    terminate_group(&mut child, pgid, ctx.kill_grace).await;
                }
                if !pumped {
                    let _ = tokio::time::timeout(PIPE_DRAIN, &mut pumps).await;
                }
                return Err(StepError::Cancelled);
            }
        }
    };
    if let Some(pgid) = pgid {
        // Background leftovers of the command die with it.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if !pumped {
        // A process that escaped the group may hold a pipe open forever.
        let _ = tokio::time::timeout(PIPE_DRAIN, &mut pumps).await;
    }
    let status = status.map_err(|source| StepError::Spawn {
        program: cmd.program().to_string(),
        source,
    })?;
    exit_result(cmd.program(), status)
}

/// Starts the command without waiting for it (see [`crate::spawn::Command::start`]).
fn start(step: &str, cmd: &Cmd, ctx: &StepContext) -> Result<Child, StepError> {
    cmd.command(ctx, step)
        .start()
        .map_err(|source| StepError::Spawn {
            program: cmd.program().to_string(),
            source,
        })
}

/// Waits briefly for the readers to hit end of file; a process that escaped
/// the group may hold a pipe open forever, so give up after [`PIPE_DRAIN`].
pub async fn drain(readers: Vec<tokio::task::JoinHandle<()>>) {
    for handle in readers {
        let abort = handle.abort_handle();
        if tokio::time::timeout(PIPE_DRAIN, handle).await.is_err() {
            abort.abort();
        }
    }
}

/// SIGTERM to the group, then SIGKILL after `grace` if the leader is still there.
pub async fn terminate_group(child: &mut Child, pgid: Pid, grace: Duration) {
    if killpg(pgid, Signal::SIGTERM) == Err(nix::errno::Errno::ESRCH)
        && let Some(pid) = child.id()
    {
        // Started a moment ago and not yet in its own group: the leader
        // alone (not reaped yet, so its pid cannot belong to another).
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
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

/// [`pump`] for a stream that may not be piped.
async fn pump_if(
    reader: Option<impl AsyncRead + Unpin>,
    step: &str,
    stream: Stream,
    reporter: &std::sync::Arc<crate::telemetry::Reporter>,
    output: Output,
) {
    if let Some(reader) = reader {
        pump(reader, step.to_string(), stream, reporter.clone(), output).await;
    }
}

async fn pump(
    reader: impl AsyncRead + Unpin,
    step: String,
    stream: Stream,
    reporter: std::sync::Arc<crate::telemetry::Reporter>,
    output: Output,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if output == Output::Discard {
            continue;
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        reporter.emit(EventKind::Output {
            step: step.clone(),
            stream,
            line: String::from_utf8_lossy(&buf).into_owned(),
        });
    }
}
