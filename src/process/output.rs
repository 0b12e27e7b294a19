//! A child's output, read while it runs and reported line by line, and
//! [`run`]: one command to its end, with its output, for steps and checks.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::{Child, Command, ProcessError};
use crate::telemetry::{EventKind, Reporter, Stream};

/// Longest captured line; longer lines are cut so one runaway line cannot
/// exhaust memory.
const MAX_LINE: usize = 16 * 1024;

/// Largest read of a command's output at once.
const MAX_READ: usize = 16 * 1024;

/// Lines reported before the pump lets other work of its task run: a
/// command that floods its output must not hold off the deadline, signals
/// or the other steps (the read alone would let hundreds of lines through
/// per read, many reads per turn).
const LINES_PER_TURN: usize = 256;

/// How long to wait for output pipes to close once the process tree is
/// gone. Without a cgroup, a process that left the group may hold a pipe
/// open forever.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// What to do with the command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Stream each line to the reporter (redacted there).
    Log,
    /// Read and drop (checks such as `unless` and wait commands).
    Discard,
}

/// Runs `command` to its end, reporting its output as `step`'s. When
/// `cancel` fires, the command's tree gets SIGTERM, then SIGKILL after
/// `grace`. Whatever the command left running is killed when it exits.
pub async fn run(
    command: &Command,
    step: &str,
    reporter: &Reporter,
    output: Output,
    grace: Duration,
    cancel: &CancellationToken,
) -> Result<ExitStatus, ProcessError> {
    let program = || command.get_program().to_string_lossy().into_owned();
    let mut child = command.spawn().map_err(|source| ProcessError::Start {
        program: program(),
        source,
    })?;
    // The output is read here, beside the wait, rather than by tasks of its
    // own: one step's process costs no task spawns.
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let pumps = async {
        tokio::join!(
            pump_if(stdout, step, Stream::Stdout, reporter, output),
            pump_if(stderr, step, Stream::Stderr, reporter, output),
        );
    };
    tokio::pin!(pumps);
    let mut pumped = false;
    let status = loop {
        tokio::select! {
            // Pipes first: when the command exits, its pipes are at end of
            // file already, and reading them before the exit status spares
            // the drain below its timer.
            biased;
            () = &mut pumps, if !pumped => pumped = true,
            status = child.wait() => break status,
            () = cancel.cancelled() => {
                child.terminate(grace).await;
                if !pumped {
                    let _ = tokio::time::timeout(PIPE_DRAIN, &mut pumps).await;
                }
                return Err(ProcessError::Cancelled);
            }
        }
    };
    if !pumped {
        let _ = tokio::time::timeout(PIPE_DRAIN, &mut pumps).await;
    }
    status.map_err(|source| ProcessError::Wait {
        program: program(),
        source,
    })
}

/// Reports the child's output as `step`'s from tasks of their own, for a
/// child that outlives the caller (a service); [`drain`] ends them.
pub fn log_in_background(
    child: &mut Child,
    step: &str,
    reporter: &Arc<Reporter>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut readers = Vec::new();
    if let Some(pipe) = child.stdout.take() {
        readers.push(pump_task(pipe, step, Stream::Stdout, reporter));
    }
    if let Some(pipe) = child.stderr.take() {
        readers.push(pump_task(pipe, step, Stream::Stderr, reporter));
    }
    readers
}

fn pump_task(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    step: &str,
    stream: Stream,
    reporter: &Arc<Reporter>,
) -> tokio::task::JoinHandle<()> {
    let (step, reporter) = (step.to_string(), reporter.clone());
    tokio::spawn(async move {
        pump(pipe, &step, stream, &reporter, Output::Log).await;
    })
}

/// Waits briefly for reader tasks to hit end of file, then gives up on
/// them (see [`PIPE_DRAIN`]).
pub async fn drain(readers: Vec<tokio::task::JoinHandle<()>>) {
    for handle in readers {
        let abort = handle.abort_handle();
        if tokio::time::timeout(PIPE_DRAIN, handle).await.is_err() {
            abort.abort();
        }
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
    // holds this future) kilobytes bigger. Small at first (most commands
    // print little), doubled while reads fill it.
    let mut chunk = Vec::with_capacity(512);
    let mut line = Vec::new();
    let mut emitted = 0;
    let mut emit = |line: &mut Vec<u8>| {
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
    // Redacted before it is cut into lines, so a secret split across two
    // reads, or across the line-length cut, is still masked.
    let mut redacting = reporter.redactor().stream();
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
        let clean = redacting.push(&chunk[..read]);
        emitted += split_lines(&clean, &mut line, &mut emit);
        if emitted >= LINES_PER_TURN {
            emitted = 0;
            tokio::task::yield_now().await;
        }
    }
    if output == Output::Log {
        let clean = redacting.finish();
        split_lines(&clean, &mut line, &mut emit);
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// Adds `bytes` to the partial `line`, emitting each complete line (and
/// each [`MAX_LINE`] piece of a longer one); returns how many it emitted.
fn split_lines(mut bytes: &[u8], line: &mut Vec<u8>, emit: &mut impl FnMut(&mut Vec<u8>)) -> usize {
    let mut emitted = 0;
    while !bytes.is_empty() {
        let room = MAX_LINE - line.len();
        let window = &bytes[..bytes.len().min(room)];
        if let Some(end) = window.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            emit(line);
            emitted += 1;
        } else if window.len() == room {
            line.extend_from_slice(window);
            bytes = &bytes[room..];
            emit(line);
            emitted += 1;
        } else {
            line.extend_from_slice(bytes);
            bytes = &[];
        }
    }
    emitted
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;
    use crate::process::Stdio;
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

    fn reporter() -> (Reporter, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reporter = Reporter::new(Arc::new(Redactor::new()));
        reporter.add_sink(Box::new(Lines(seen.clone())));
        (reporter, seen)
    }

    async fn lines_of(bytes: &[u8], size: usize, output: Output) -> Vec<String> {
        let (reporter, seen) = reporter();
        let reader = Chunked {
            bytes: bytes.to_vec(),
            size,
        };
        pump(reader, "s", Stream::Stdout, &reporter, output).await;
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_secret_split_across_reads_or_the_line_cut_is_masked() {
        let (reporter, seen) = reporter();
        let secret = "canary-5ecr3t-value";
        reporter.redactor().add_secret(secret);
        for size in [1, 2, 5, 7, 4096] {
            seen.lock().unwrap().clear();
            let text = format!("one {secret} two\n");
            let reader = Chunked {
                bytes: text.into_bytes(),
                size,
            };
            pump(reader, "s", Stream::Stdout, &reporter, Output::Log).await;
            assert_eq!(
                *seen.lock().unwrap(),
                ["one [REDACTED] two"],
                "read size {size}"
            );
        }
        // The secret straddles the 16 KiB cut of a runaway line.
        seen.lock().unwrap().clear();
        let pad = "x".repeat(MAX_LINE - 6);
        let reader = Chunked {
            bytes: format!("{pad}{secret}\n").into_bytes(),
            size: 1000,
        };
        pump(reader, "s", Stream::Stdout, &reporter, Output::Log).await;
        let lines = seen.lock().unwrap().clone();
        assert_eq!(lines.concat(), format!("{pad}[REDACTED]"));
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("canary") && !l.contains("value")),
            "{lines:?}"
        );
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

    #[tokio::test]
    async fn a_command_runs_to_its_end_with_every_line_and_its_status() {
        let (reporter, seen) = reporter();
        let mut cmd = Command::new("sh");
        // More than a pipe holds, on both streams.
        cmd.args(["-c", "seq 1 20000; seq 1 20000 >&2; exit 4"])
            .stdout(Stdio::Piped)
            .stderr(Stdio::Piped);
        let cancel = CancellationToken::new();
        let status = run(&cmd, "s", &reporter, Output::Log, Duration::ZERO, &cancel)
            .await
            .unwrap();
        assert_eq!(status.code(), Some(4));
        assert_eq!(seen.lock().unwrap().len(), 40000);
    }

    #[tokio::test]
    async fn a_cancelled_command_is_stopped_and_reported_cancelled() {
        let (reporter, _) = reporter();
        let mut cmd = Command::new("sleep");
        cmd.arg("60").stdout(Stdio::Piped);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = std::time::Instant::now();
        let err = run(
            &cmd,
            "s",
            &reporter,
            Output::Log,
            Duration::from_secs(5),
            &cancel,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProcessError::Cancelled), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM was enough"
        );
        let err = run(
            &Command::new("bootplan-no-such-program"),
            "s",
            &reporter,
            Output::Log,
            Duration::ZERO,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("bootplan-no-such-program"),
            "{err}"
        );
    }
}
