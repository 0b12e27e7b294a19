//! Running the system's own tools (useradd, apt-get, systemctl, …): by
//! absolute path from the standard directories, by argv, with a fixed
//! `PATH` and the C locale (their messages are parsed), their output
//! streamed as the step's output and kept for the error message.
//!
//! [`Sys`] is how a kind reaches the machine during one attempt: it runs
//! tools, says what the step does (a line of the step's output), and knows
//! whether it may speak at all (`bootplan plan` runs the same read-only
//! queries quietly).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::OsError;
use crate::process::{Command, Output, Stdio};
use crate::telemetry::{EventKind, Reporter, Stream};

/// The `PATH` tools run with, and the directories they are looked up in:
/// bootplan may run as PID 1 with no `PATH` at all, and maintainer
/// scripts expect the sbin directories.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most output kept of one stream for parsing and error messages.
const MAX_KEPT: usize = 4 * 1024 * 1024;

/// How long a tool's pipes may stay open after it exited.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// How long a cancelled tool gets between its stop signal and SIGKILL.
const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// The absolute path of `name` in the standard directories.
pub fn find(name: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// [`find`], or [`OsError::ToolMissing`] saying what it was needed for.
pub fn require(name: &str, purpose: &str) -> Result<PathBuf, OsError> {
    find(name).ok_or_else(|| OsError::ToolMissing {
        tool: name.to_string(),
        purpose: purpose.to_string(),
    })
}

/// One invocation of a system tool.
#[derive(Clone)]
pub struct Tool {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    /// Bytes written to its stdin (a password hash for `chpasswd -e`).
    stdin: Option<zeroize::Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl Tool {
    pub fn new(program: PathBuf) -> Tool {
        Tool {
            program,
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Tool {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Tool {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Tool {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Feeds `bytes` to the tool's stdin (never shown: [`Tool::display`]
    /// leaves it out, and it is wiped when dropped).
    pub fn stdin(mut self, bytes: Vec<u8>) -> Tool {
        self.stdin = Some(zeroize::Zeroizing::new(bytes));
        self
    }

    /// The command line, for messages: program name and arguments (which
    /// never hold secrets; those go through stdin).
    pub fn display(&self) -> String {
        let name = self.program.file_name().map_or_else(
            || self.program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        std::iter::once(name)
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .env_remove("NOTIFY_SOCKET")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::Piped)
            .stderr(Stdio::Piped);
        if self.stdin.is_some() {
            cmd.stdin(Stdio::Piped);
        }
        cmd
    }
}

/// How a tool ended, with what it printed (up to a few MiB of each stream).
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub(crate) command: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `exit status 100` or `killed by signal 9`.
    pub fn status_text(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "unknown status".to_string(),
        }
    }

    /// The last few non-empty lines of stderr (else stdout), as `: a; b`.
    pub fn detail(&self) -> String {
        let source = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = source
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let last = &lines[lines.len().saturating_sub(3)..];
        if last.is_empty() {
            String::new()
        } else {
            format!(": {}", last.join("; "))
        }
    }

    /// This run as a [`OsError::ToolFailed`] with `code`.
    pub fn failure(&self, code: crate::error::ErrorCode) -> OsError {
        OsError::ToolFailed {
            code,
            command: self.command.clone(),
            status: self.status_text(),
            detail: self.detail(),
        }
    }

    /// `Ok` on exit status 0, else [`Ran::failure`].
    pub fn ok_or(self, code: crate::error::ErrorCode) -> Result<Ran, OsError> {
        if self.success() {
            Ok(self)
        } else {
            Err(self.failure(code))
        }
    }
}

/// Where a step's attempt reaches the machine: its output (or none, in a
/// dry run), its cancellation and the grace its tools get when stopped.
pub struct Sys<'a> {
    talk: Option<(&'a Reporter, &'a str)>,
    cancel: &'a CancellationToken,
    grace: Duration,
}

impl<'a> Sys<'a> {
    /// For a step's attempt: tool output and [`Sys::say`] lines are the
    /// step's output.
    pub fn step(
        reporter: &'a Reporter,
        step: &'a str,
        cancel: &'a CancellationToken,
        grace: Duration,
    ) -> Sys<'a> {
        Sys {
            talk: Some((reporter, step)),
            cancel,
            grace,
        }
    }

    /// For `bootplan plan`: the same read-only queries, nothing shown.
    pub fn quiet(cancel: &'a CancellationToken) -> Sys<'a> {
        Sys {
            talk: None,
            cancel,
            grace: DEFAULT_GRACE,
        }
    }

    /// One line of the step's output, in bootplan's own words.
    pub fn say(&self, line: impl Into<String>) {
        if let Some((reporter, step)) = self.talk {
            reporter.emit(EventKind::Output {
                step: step.to_string(),
                stream: Stream::Stdout,
                line: line.into(),
            });
        }
    }

    /// Runs `tool` to its end; its output is streamed as the step's (not
    /// in a dry run) and kept. A failed exit status is in [`Ran`], not an
    /// error.
    pub async fn run(&self, tool: &Tool) -> Result<Ran, OsError> {
        self.run_as(tool, self.talk.is_some()).await
    }

    /// [`Sys::run`] with the output kept but never streamed (queries whose
    /// output is data, such as `dpkg-query`).
    pub async fn query(&self, tool: &Tool) -> Result<Ran, OsError> {
        self.run_as(tool, false).await
    }

    async fn run_as(&self, tool: &Tool, stream: bool) -> Result<Ran, OsError> {
        let command = tool.command();
        let program = tool.display();
        let mut child = command.spawn().map_err(|source| OsError::Spawn {
            program: tool.program.display().to_string(),
            source,
        })?;
        let stdin = child.stdin.take();
        let feed = async {
            if let (Some(mut pipe), Some(bytes)) = (stdin, &tool.stdin) {
                // A tool that exits without reading all of it is judged
                // by its exit status, not by the broken pipe.
                let _ = pipe.write_all(bytes).await;
                let _ = pipe.shutdown().await;
            }
        };
        let talk = self.talk.filter(|_| stream);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let read = async {
            tokio::join!(
                keep(stdout, talk, Stream::Stdout),
                keep(stderr, talk, Stream::Stderr),
            )
        };
        let work = async {
            let ((), (out, err)) = tokio::join!(feed, read);
            (out, err)
        };
        tokio::pin!(work);
        let mut kept = None;
        // As in `process::run`: pipes first (at exit they are at end of
        // file already), then the exit status; what a tool left running is
        // killed when it exits, and its pipes get a moment to close.
        let status = loop {
            tokio::select! {
                biased;
                both = &mut work, if kept.is_none() => kept = Some(both),
                status = child.wait() => break status,
                () = self.cancel.cancelled() => {
                    child.terminate(self.grace).await;
                    return Err(OsError::Cancelled);
                }
            }
        };
        let status = status.map_err(|source| OsError::Spawn {
            program: program.clone(),
            source,
        })?;
        let (out, err) = match kept {
            Some(both) => both,
            None => tokio::time::timeout(PIPE_DRAIN, &mut work)
                .await
                .unwrap_or_default(),
        };
        Ok(Ran {
            status,
            stdout: out,
            stderr: err,
            command: program,
        })
    }
}

/// Reads a pipe to its end, keeping up to [`MAX_KEPT`] bytes, and streams
/// its lines as the step's output when `talk` says so.
async fn keep(
    pipe: Option<impl AsyncRead + Unpin>,
    talk: Option<(&Reporter, &str)>,
    stream: Stream,
) -> String {
    let Some(pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    match talk {
        Some((reporter, step)) => {
            let tee = Tee {
                inner: pipe,
                kept: &mut kept,
            };
            crate::process::pump(tee, step, stream, reporter, Output::Log).await;
        }
        None => {
            let mut pipe = pipe;
            let mut buf = vec![0u8; 8192];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = MAX_KEPT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// A reader that keeps a copy of what passes through it (bounded).
struct Tee<'a, R> {
    inner: R,
    kept: &'a mut Vec<u8>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let new = &buf.filled()[before..];
            let room = MAX_KEPT.saturating_sub(this.kept.len());
            this.kept.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::secrets::Redactor;
    use crate::telemetry::{Event, Sink};

    struct Lines(Arc<Mutex<Vec<String>>>);

    impl Sink for Lines {
        fn event(&mut self, event: &Event) {
            if let EventKind::Output { line, .. } = &event.kind {
                self.0.lock().unwrap().push(line.clone());
            }
        }
    }

    #[tokio::test]
    async fn output_is_streamed_and_kept_and_stdin_fed() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reporter = Reporter::new(Arc::new(Redactor::new()));
        reporter.add_sink(Box::new(Lines(seen.clone())));
        let cancel = CancellationToken::new();
        let sys = Sys::step(&reporter, "s", &cancel, Duration::from_secs(1));
        let tool = Tool::new(find("sh").unwrap())
            .args([
                "-c",
                "read x; echo \"got $x\"; echo oops >&2; echo $LC_ALL; exit 3",
            ])
            .stdin(b"secret-ish\n".to_vec());
        let ran = sys.run(&tool).await.unwrap();
        assert_eq!(ran.status.code(), Some(3));
        assert_eq!(ran.stdout, "got secret-ish\nC\n");
        assert_eq!(ran.stderr, "oops\n");
        assert_eq!(ran.detail(), ": oops");
        let lines = seen.lock().unwrap().clone();
        assert!(lines.contains(&"got secret-ish".to_string()), "{lines:?}");
        assert!(!tool.display().contains("secret"), "stdin is never shown");
        // Quiet: kept, not streamed.
        seen.lock().unwrap().clear();
        let ran = Sys::quiet(&cancel)
            .run(&Tool::new(find("echo").unwrap()).arg("hi"))
            .await
            .unwrap();
        assert_eq!(ran.stdout, "hi\n");
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_tool_is_stopped() {
        let cancel = CancellationToken::new();
        let sys = Sys::quiet(&cancel);
        let tool = Tool::new(find("sleep").unwrap()).arg("60");
        let run = sys.run(&tool);
        cancel.cancel();
        let started = std::time::Instant::now();
        assert!(matches!(run.await, Err(OsError::Cancelled)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
