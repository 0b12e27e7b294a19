//! A file rewritten in the background whenever its state changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{WriteOptions, write_file};

/// Shortest pause between two background writes. A burst of changes (a
/// wide plan finishing many steps at once) costs one write per pause
/// instead of one per change. A reader is at most this far behind;
/// [`BackgroundWriter::flush`] cuts the pause short.
const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(100);

type Render = Box<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Writes a file from a background thread whenever it is marked dirty,
/// coalescing bursts. The content is produced by `render` at write time,
/// so a write always holds the newest state. Keeps slow disks (and fsync)
/// off the caller's path. The thread starts at the first
/// [`BackgroundWriter::mark_dirty`]; a file only ever written with
/// [`BackgroundWriter::write_now`] costs none.
pub struct BackgroundWriter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Held while writing: one write at a time, so an older state is never
    /// renamed over a newer one. Holds when the last write ended.
    writing: Mutex<Option<Instant>>,
    path: PathBuf,
    options: WriteOptions,
    render: Render,
}

#[derive(Default)]
struct State {
    /// Changes asked for, and the newest one written.
    requested: u64,
    written: u64,
    thread: bool,
    /// A caller waits in `flush`: no pause.
    urgent: bool,
    stop: bool,
    last_error: Option<String>,
}

impl BackgroundWriter {
    /// `durable` adds the fsyncs of the file and its directory.
    pub fn new(path: PathBuf, mode: u32, durable: bool, render: Render) -> BackgroundWriter {
        let options = WriteOptions {
            durable,
            dir_mode: 0o700,
            ..WriteOptions::new(mode)
        };
        BackgroundWriter {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                writing: Mutex::new(None),
                path,
                options,
                render,
            }),
        }
    }

    /// Asks for a write of the current state, soon.
    pub fn mark_dirty(&self) {
        let mut state = self.shared.lock();
        state.requested += 1;
        if !state.thread {
            let worker = self.shared.clone();
            state.thread = std::thread::Builder::new()
                .name("bootplan-writer".into())
                .spawn(move || worker.run())
                .is_ok();
        }
        self.shared.changed.notify_all();
    }

    /// Writes the current state now, on the caller's thread.
    pub fn write_now(&self) -> Result<(), String> {
        let target = {
            let mut state = self.shared.lock();
            state.requested += 1;
            state.requested
        };
        self.shared.write(target)
    }

    /// Waits until every write asked for so far is done. Returns the last
    /// write's error, if it failed.
    pub fn flush(&self) -> Result<(), String> {
        let mut state = self.shared.lock();
        let target = state.requested;
        if state.written < target {
            if !state.thread {
                drop(state);
                return self.shared.write(target);
            }
            state.urgent = true;
            self.shared.changed.notify_all();
            while state.written < target && !state.stop {
                state = self
                    .shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        state.last_error.clone().map_or(Ok(()), Err)
    }

    /// The error of the last write, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        let _ = self.flush();
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renders and writes the state of request `target` (or newer).
    fn write(&self, target: u64) -> Result<(), String> {
        let mut last_write = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if self.lock().written >= target {
            // Another writer wrote a newer state meanwhile.
            return self.lock().last_error.clone().map_or(Ok(()), Err);
        }
        let bytes = (self.render)();
        let result = write_file(&self.path, &bytes, self.options).map_err(|e| e.to_string());
        *last_write = Some(Instant::now());
        let mut state = self.lock();
        state.written = state.written.max(target);
        state.last_error = result.clone().err();
        drop(state);
        self.changed.notify_all();
        result
    }

    /// How much of the pause after the last write is left.
    fn pause_left(&self) -> Option<Duration> {
        let last = (*self.writing.lock().unwrap_or_else(|p| p.into_inner()))?;
        MIN_WRITE_INTERVAL
            .checked_sub(last.elapsed())
            .filter(|left| !left.is_zero())
    }

    fn run(&self) {
        loop {
            let mut state = self.lock();
            while state.requested == state.written && !state.stop {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.requested == state.written {
                return;
            }
            let urgent = state.urgent || state.stop;
            drop(state);
            if !urgent && let Some(left) = self.pause_left() {
                let state = self.lock();
                // Woken early by a flush (urgent) or the end; else the pause ends.
                let _ = self
                    .changed
                    .wait_timeout_while(state, left, |s| !s.urgent && !s.stop);
                continue;
            }
            let target = {
                let mut state = self.lock();
                state.urgent = false;
                state.requested
            };
            let _ = self.write(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    /// A writer of a counter's current value, and the counter; `renders`
    /// counts the writes.
    fn counter_writer(path: &Path) -> (BackgroundWriter, Arc<AtomicU32>, Arc<AtomicU32>) {
        let version = Arc::new(AtomicU32::new(0));
        let renders = Arc::new(AtomicU32::new(0));
        let (current, counted) = (version.clone(), renders.clone());
        let render = move || {
            counted.fetch_add(1, Ordering::SeqCst);
            current.load(Ordering::SeqCst).to_string().into_bytes()
        };
        let writer = BackgroundWriter::new(path.to_path_buf(), 0o644, false, Box::new(render));
        (writer, version, renders)
    }

    #[test]
    fn flush_writes_the_newest_state_and_bursts_coalesce() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.txt");
        let (writer, version, renders) = counter_writer(&path);
        writer.flush().unwrap();
        assert!(!path.exists(), "written with nothing asked for");
        version.store(1, Ordering::SeqCst);
        writer.write_now().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1");
        // A burst right after a write: the pause holds the thread back, so
        // the burst costs one write, done by the flush at the latest.
        for v in 2..=50 {
            version.store(v, Ordering::SeqCst);
            writer.mark_dirty();
        }
        writer.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "50");
        assert_eq!(
            renders.load(Ordering::SeqCst),
            2,
            "the burst was not coalesced"
        );
        version.store(51, Ordering::SeqCst);
        writer.mark_dirty();
        drop(writer);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "51");
    }

    #[test]
    fn writes_from_the_caller_and_the_thread_never_go_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.txt");
        let (writer, version, _) = counter_writer(&path);
        let writer = Arc::new(writer);
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::SeqCst) {
                    if let Ok(text) = std::fs::read_to_string(&path) {
                        let seen: u32 = text.parse().unwrap();
                        assert!(seen >= last, "went back from {last} to {seen}");
                        last = seen;
                    }
                }
            })
        };
        let marker = {
            let (writer, version) = (writer.clone(), version.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    version.fetch_add(1, Ordering::SeqCst);
                    writer.mark_dirty();
                }
            })
        };
        for _ in 0..100 {
            version.fetch_add(1, Ordering::SeqCst);
            writer.write_now().unwrap();
        }
        marker.join().unwrap();
        writer.flush().unwrap();
        done.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "400");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "temp files left behind");
    }

    #[test]
    fn a_failed_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let (writer, _, _) = counter_writer(&dir.path().join("file/state.txt"));
        let err = writer.write_now().unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        writer.mark_dirty();
        assert!(writer.flush().is_err());
        assert!(writer.last_error().is_some());
    }
}
