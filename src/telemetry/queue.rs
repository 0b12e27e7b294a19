//! A writer that never makes its caller wait: the bytes of each write go
//! to a bounded queue, drained by a thread of their own into the real
//! stdout or stderr. When the reader stalls and the queue is full, new
//! lines are dropped and counted (`bootplan_log_lines_dropped_total`):
//! a stalled log reader never delays the deadline, signal handling or the
//! steps.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines held for a slow reader before new ones are dropped: enough for a
/// burst of output from a busy step while the reader catches up.
const QUEUE_LINES: usize = 65_536;

/// Bytes held for a slow reader before new lines are dropped.
const QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// How long [`QueuedWriter::flush`] waits for the reader at most.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Log lines dropped because the reader was not reading, process-wide.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many log lines were dropped so far.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A non-blocking writer for one output stream.
pub struct QueuedWriter {
    // Unbounded as a channel (it grows block by block, where a bounded one
    // would set aside room for every line up front): bounded by the counts
    // in `Progress`.
    queue: Sender<Vec<u8>>,
    progress: Arc<Progress>,
    sent: u64,
}

/// How far the draining thread got, for `flush`, and how much waits.
#[derive(Default)]
struct Progress {
    written: Mutex<u64>,
    changed: Condvar,
    queued_bytes: std::sync::atomic::AtomicUsize,
    queued_lines: std::sync::atomic::AtomicUsize,
}

impl QueuedWriter {
    /// A queue in front of `out`, drained by a new thread.
    pub fn new(out: impl Write + Send + 'static) -> QueuedWriter {
        let (queue, lines) = channel::<Vec<u8>>();
        let progress = Arc::new(Progress::default());
        let drained = progress.clone();
        let mut out = out;
        // Without a thread the queue fills and lines are dropped: never blocked on.
        let _ = std::thread::Builder::new()
            .name("bootplan-log".into())
            .spawn(move || {
                crate::sigmask::block_handled();
                for line in lines {
                    // A closed reader: keep draining, so nothing waits.
                    let _ = out.write_all(&line).and_then(|()| out.flush());
                    drained
                        .queued_bytes
                        .fetch_sub(line.len(), Ordering::Relaxed);
                    drained.queued_lines.fetch_sub(1, Ordering::Relaxed);
                    let mut written = drained.written.lock().unwrap_or_else(|p| p.into_inner());
                    *written += 1;
                    drained.changed.notify_all();
                }
            });
        QueuedWriter {
            queue,
            progress,
            sent: 0,
        }
    }

    pub fn stdout() -> QueuedWriter {
        QueuedWriter::new(std::io::stdout())
    }

    pub fn stderr() -> QueuedWriter {
        QueuedWriter::new(std::io::stderr())
    }
}

impl Write for QueuedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (bytes, lines) = (&self.progress.queued_bytes, &self.progress.queued_lines);
        let room = bytes.load(Ordering::Relaxed) + buf.len() <= QUEUE_BYTES
            && lines.load(Ordering::Relaxed) < QUEUE_LINES;
        let sent = room && {
            bytes.fetch_add(buf.len(), Ordering::Relaxed);
            lines.fetch_add(1, Ordering::Relaxed);
            match self.queue.send(buf.to_vec()) {
                Ok(()) => true,
                Err(_) => {
                    bytes.fetch_sub(buf.len(), Ordering::Relaxed);
                    lines.fetch_sub(1, Ordering::Relaxed);
                    false
                }
            }
        };
        if sent {
            self.sent += 1;
        } else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(super::metrics::LOG_LINES_DROPPED).increment(1);
        }
        Ok(buf.len())
    }

    /// Waits for the reader to take what was written, but never longer
    /// than [`FLUSH_LIMIT`].
    fn flush(&mut self) -> std::io::Result<()> {
        let until = Instant::now() + FLUSH_LIMIT;
        let mut written = self
            .progress
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while *written < self.sent {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            written = self
                .progress
                .changed
                .wait_timeout(written, left)
                .map(|(w, _)| w)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that never reads: each write blocks until released.
    struct Stalled(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, released) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = released.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_writer_and_drops_are_counted() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut writer = QueuedWriter::new(Stalled(gate.clone(), seen.clone()));
        let before = dropped();
        let started = Instant::now();
        for i in 0..QUEUE_LINES + 100 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // Bounded even though nothing was read.
        writer.flush().unwrap();
        assert!(
            started.elapsed() < FLUSH_LIMIT * 3,
            "{:?}",
            started.elapsed()
        );
        assert!(dropped() - before >= 99, "dropped {}", dropped() - before);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        writer.flush().unwrap();
        let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("line 0\nline 1\n"), "{}", &text[..40]);
    }
}
