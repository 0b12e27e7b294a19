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
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::{StepContext, StepError};
use crate::spawn::{Child, Command, Stdio};
use crate::telemetry::{EventKind, Reporter, Stream};

/// Longest captured line; longer lines are cut so one runaway line cannot
/// exhaust memory.
const MAX_LINE: usize = 16 * 1024;

/// Largest read of a command's output at once.
const MAX_READ: usize = 16 * 1024;

/// How long to wait for output pipes to close once the process group is gone.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// How long a command's output goes unread at first. A command that exits
/// sooner has its output read once, after its exit, and wakes bootplan once
/// (its exit) instead of three times (each pipe it closes, then its exit).
/// Its first lines are at most this late, and a command that fills a pipe
/// (64 KiB) within this time waits at most this long.
const QUIET_START: Duration = Duration::from_millis(20);

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
    let quiet_start = tokio::time::sleep(QUIET_START);
    tokio::pin!(quiet_start);
    let (mut reading, mut pumped) = (false, false);
    let status = loop {
        tokio::select! {
            // Pipes first: when the command exits, its pipes are at end of
            // file already, and reading them before the exit status spares
            // the drain below its timer.
            biased;
            // Keeps reading while the command runs, so a full pipe never
            // blocks it for long.
            () = &mut pumps, if reading && !pumped => pumped = true,
            status = child.wait() => break status,
            () = &mut quiet_start, if !reading => reading = true,
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
    reporter: &Reporter,
    output: Output,
) {
    if let Some(reader) = reader {
        pump(reader, step, stream, reporter, output).await;
    }
}

/// Reads `reader` to its end and reports each line as `step`'s output
/// (redacted by the reporter); a line longer than [`MAX_LINE`] is cut into
/// pieces of that size. With [`Output::Discard`] it only reads.
pub async fn pump(
    mut reader: impl AsyncRead + Unpin,
    step: &str,
    stream: Stream,
    reporter: &Reporter,
    output: Output,
) {
    // On the heap, not an array: that would make every step's future (which
    // holds this future) kilobytes bigger, copied each time it moves. Small
    // at first (most commands print little; a request of a kilobyte or more
    // makes glibc consolidate its free lists), doubled while reads fill it.
    let mut chunk = Vec::with_capacity(512);
    let mut line = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        while line.last().is_some_and(|b| *b == b'\r') {
            line.pop();
        }
        reporter.emit(EventKind::Output {
            step: step.to_string(),
            stream,
            line: String::from_utf8_lossy(line).into_owned(),
        });
        line.clear();
    };
    loop {
        chunk.clear();
        let read = match reader.read_buf(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if read == chunk.capacity() && read < MAX_READ {
            chunk.reserve(read * 2);
        }
        if output == Output::Discard {
            continue;
        }
        let mut rest = &chunk[..read];
        while !rest.is_empty() {
            let room = MAX_LINE - line.len();
            let window = &rest[..rest.len().min(room)];
            if let Some(end) = window.iter().position(|b| *b == b'\n') {
                line.extend_from_slice(&rest[..end]);
                rest = &rest[end + 1..];
                emit(&mut line);
            } else if window.len() == room {
                line.extend_from_slice(window);
                rest = &rest[room..];
                emit(&mut line);
            } else {
                line.extend_from_slice(rest);
                rest = &[];
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;
    use crate::secrets::Redactor;
    use crate::telemetry::{Event, Sink};

    /// Gives its bytes `size` at a time, so lines straddle reads.
    struct Chunked {
        bytes: Vec<u8>,
        size: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.size.min(self.bytes.len()).min(buf.remaining());
            buf.put_slice(&self.bytes[..n]);
            self.bytes.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    struct Lines(Arc<Mutex<Vec<String>>>);

    impl Sink for Lines {
        fn event(&mut self, event: &Event) {
            if let EventKind::Output { line, .. } = &event.kind {
                self.0.lock().unwrap().push(line.clone());
            }
        }
    }

    async fn lines_of(bytes: &[u8], size: usize, output: Output) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reporter = Reporter::new(Arc::new(Redactor::new()));
        reporter.add_sink(Box::new(Lines(seen.clone())));
        let reader = Chunked {
            bytes: bytes.to_vec(),
            size,
        };
        pump(reader, "s", Stream::Stdout, &reporter, output).await;
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn output_is_reported_line_by_line_however_it_is_read() {
        let text = b"one\r\ntwo\n\nthree without newline";
        let expected = ["one", "two", "", "three without newline"];
        for size in [1, 2, 3, 7, 4096] {
            assert_eq!(lines_of(text, size, Output::Log).await, expected, "{size}");
        }
        assert!(lines_of(text, 3, Output::Discard).await.is_empty());
        assert!(lines_of(b"", 1, Output::Log).await.is_empty());
    }

    #[tokio::test]
    async fn a_runaway_line_is_cut_at_the_limit() {
        let mut text = vec![b'x'; MAX_LINE * 2 + 10];
        text.extend_from_slice(b"\nend\n");
        let lines = lines_of(&text, 1000, Output::Log).await;
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 10, 3]);
        assert_eq!(lines[3], "end");
    }
}
