//! Crash-safe file writes: temp file in the same directory, fsync, rename,
//! fsync the directory. A reader sees the old content or the new, never half.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An I/O failure with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn ctx<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` atomically with permission bits `mode`.
/// The temp file is created with `mode` already set, so the content is never
/// readable with wider permissions, even for an instant.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    write_atomic_owned(path, contents, mode, None)
}

/// [`write_atomic`], with the temp file given `owner` (uid, gid) before the
/// rename: the file never appears with the wrong owner.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), FsError> {
    write_via_temp(path, contents, mode, owner, true)
}

/// Like [`write_atomic`] but without the fsyncs: for files that only need to be
/// whole, not durable (status snapshots on a tmpfs).
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    write_via_temp(path, contents, mode, None, false)
}

/// Temp file beside `path` with the final mode (and owner), content, then a
/// rename over `path`; `durable` adds the fsyncs of the file and directory.
fn write_via_temp(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    durable: bool,
) -> Result<(), FsError> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(ctx("cannot create directory", dir))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(ctx("cannot create", &tmp))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(ctx("cannot set owner of", &tmp))?;
        }
        // The umask may have narrowed the mode at creation, and chown clears
        // set-id bits: set the exact mode last.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(ctx("cannot set mode of", &tmp))?;
        file.write_all(contents)
            .map_err(ctx("cannot write", &tmp))?;
        if durable {
            file.sync_all().map_err(ctx("cannot fsync", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(ctx("cannot rename into", path))?;
        if durable { sync_dir(dir) } else { Ok(()) }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temp name beside `path`, unique per process and call, hidden by a dot.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = fastrand::u64(..);
    parent_dir(path).join(format!(".{name}.{}.{unique:016x}.tmp", std::process::id()))
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("cannot fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    #[test]
    fn writes_with_exact_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.txt");
        write_atomic(&path, b"hello", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        write_atomic(&path, b"again", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"again");
        let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "temp files left behind");
    }

    /// A writer of a counter's current value, and the counter.
    fn counter_writer(path: &Path, start: u32) -> (BackgroundWriter, Arc<AtomicU32>) {
        let version = Arc::new(AtomicU32::new(start));
        let current = version.clone();
        let render = move || current.load(Ordering::SeqCst).to_string().into_bytes();
        let writer = BackgroundWriter::new(path.to_path_buf(), 0o644, false, Box::new(render));
        (writer, version)
    }

    #[test]
    fn background_writes_hold_the_newest_state_with_or_without_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.txt");
        let (writer, version) = counter_writer(&path, 1);
        // Nothing asked for yet: nothing written, no thread.
        writer.flush().unwrap();
        assert!(!path.exists());
        assert!(!writer.has_thread());
        // Written on this thread, at once.
        writer.write_now().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1");
        assert!(!writer.has_thread());
        // Later changes go through the thread; flush waits for the newest.
        for v in 2..=50 {
            version.store(v, Ordering::SeqCst);
            writer.mark_dirty();
        }
        assert!(writer.has_thread());
        writer.flush().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "50");
        version.store(51, Ordering::SeqCst);
        writer.write_now().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "51");
        drop(writer);
        assert_eq!(fs::read_to_string(&path).unwrap(), "51");
    }

    /// A change made just after a write (here `write_now`'s, as at the start
    /// of a run) waits out the pause instead of rewriting the file at once;
    /// a flush still has it written without waiting.
    #[test]
    fn a_change_just_after_a_write_waits_for_the_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.txt");
        let renders = Arc::new(AtomicU32::new(0));
        let counted = renders.clone();
        let render = move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            n.to_string().into_bytes()
        };
        let writer = BackgroundWriter::new(path.clone(), 0o644, false, Box::new(render));
        writer.write_now().unwrap();
        let wrote = std::time::Instant::now();
        writer.mark_dirty();
        assert!(writer.has_thread());
        // What is checked here is an absence: the thread, started by
        // `mark_dirty`, must not write within the pause. Look a third of
        // the way in; on a host too stalled to get there in time, only the
        // flush below is checked.
        std::thread::sleep(MIN_WRITE_INTERVAL / 3);
        if wrote.elapsed() < MIN_WRITE_INTERVAL * 9 / 10 {
            assert_eq!(
                renders.load(Ordering::SeqCst),
                1,
                "rewritten within the pause"
            );
        }
        writer.flush().unwrap();
        assert_eq!(renders.load(Ordering::SeqCst), 2);
        assert_eq!(fs::read_to_string(&path).unwrap(), "2");
    }

    /// On a runtime, a change just after a write starts no thread until the
    /// pause is over; then the thread starts and writes the change without
    /// being asked again. A flush before that writes on the caller's thread.
    #[tokio::test]
    async fn on_a_runtime_the_thread_starts_when_the_pause_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.txt");
        let (writer, version) = counter_writer(&path, 1);
        writer.write_now().unwrap();
        version.store(2, Ordering::SeqCst);
        writer.mark_dirty();
        assert!(!writer.has_thread(), "started within the pause");
        let deadline = std::time::Instant::now() + 10 * MIN_WRITE_INTERVAL;
        while fs::read_to_string(&path).unwrap() != "2" {
            assert!(std::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(MIN_WRITE_INTERVAL / 10).await;
        }
        assert!(writer.has_thread());

        // A new writer: this time the flush comes first.
        let (writer, version) = counter_writer(&path, 3);
        writer.write_now().unwrap();
        version.store(4, Ordering::SeqCst);
        writer.mark_dirty();
        writer.flush().unwrap();
        assert!(!writer.has_thread());
        assert_eq!(fs::read_to_string(&path).unwrap(), "4");
    }

    /// `write_now` writes on its caller's thread while the writing thread
    /// may be busy too: one write at a time, so the file never goes back
    /// to an older state.
    #[test]
    fn writes_from_the_caller_and_the_thread_never_go_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.txt");
        let (writer, version) = counter_writer(&path, 0);
        let writer = Arc::new(writer);
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !done.load(Ordering::SeqCst) {
                    if let Ok(text) = fs::read_to_string(&path) {
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
        assert_eq!(fs::read_to_string(&path).unwrap(), "400");
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "temp files left behind");
    }
}

/// Writes a file from a background thread whenever it is marked dirty,
/// coalescing bursts: many changes in quick succession cost one write. The
/// content is produced by `render` at write time, so a write always holds the
/// newest state. Keeps slow disks (and fsync) off the caller's path.
///
/// The thread starts at the first [`BackgroundWriter::mark_dirty`]: a file
/// that is only ever written with [`BackgroundWriter::write_now`] (or not at
/// all, like the journal of a plan whose steps all run `always`) costs no
/// thread, and `write_now` before the thread exists writes on the caller's
/// thread instead of handing over to another and waiting. A change made
/// within the pause after a write is not due before the pause ends, so on
/// a tokio runtime the thread is only started then: a run shorter than the
/// pause, whose opening and final states are written by `write_now`, never
/// starts it.
pub struct BackgroundWriter {
    shared: std::sync::Arc<WriterShared>,
}

enum WriterThread {
    NotStarted,
    /// A task of the runtime starts the thread when the pause ends.
    Scheduled,
    Running,
    /// The thread could not be created: writes happen on the caller's thread.
    Unavailable,
}

type Render = Box<dyn Fn() -> Vec<u8> + Send + Sync>;

struct WriterShared {
    state: std::sync::Mutex<WriterState>,
    wake: std::sync::Condvar,
    thread: std::sync::Mutex<WriterThread>,
    path: PathBuf,
    mode: u32,
    durable: bool,
    render: Render,
}

#[derive(Default)]
struct WriterState {
    requested: u64,
    written: u64,
    stop: bool,
    /// A caller is waiting in `flush`: skip the pause between writes.
    urgent: bool,
    /// The writer is waiting for work (not writing, not pausing): only then
    /// does a new request need to wake it.
    idle: bool,
    /// A write is under way, on the thread or in `write_now`: one at a
    /// time, so an older state is never renamed over a newer one.
    writing: bool,
    /// Callers waiting in `flush`.
    flushers: u32,
    last_error: Option<String>,
    /// When the last write ended, on the thread or in `write_now`.
    last_write: Option<std::time::Instant>,
}

impl WriterState {
    /// How much of the pause after the last write is left, if any.
    fn pause_left(&self) -> Option<std::time::Duration> {
        let since = self.last_write?.elapsed();
        MIN_WRITE_INTERVAL
            .checked_sub(since)
            .filter(|left| !left.is_zero())
    }
}

/// Shortest pause between a write (the thread's or `write_now`'s) and the
/// thread's next one. A burst of changes (a wide plan finishing many steps
/// at once, a chain of short steps) then costs one write per pause instead
/// of one per change: each write serializes the whole document, on a
/// thread that competes with the steps' commands for the CPUs. A reader is
/// at most this far behind; `flush` cuts the pause short, so final states
/// are never late.
const MIN_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl BackgroundWriter {
    /// `durable` selects [`write_atomic`] (fsync) over [`replace_file`].
    pub fn new(path: PathBuf, mode: u32, durable: bool, render: Render) -> BackgroundWriter {
        let shared = std::sync::Arc::new(WriterShared {
            state: std::sync::Mutex::new(WriterState::default()),
            wake: std::sync::Condvar::new(),
            path,
            mode,
            durable,
            render,
            thread: std::sync::Mutex::new(WriterThread::NotStarted),
        });
        BackgroundWriter { shared }
    }

    /// Asks for a write of the current state, soon.
    pub fn mark_dirty(&self) {
        let mut state = self.shared.lock();
        state.requested += 1;
        // Waking a writer that is mid-write or pausing costs a futex call per
        // event and changes nothing: it looks at `requested` when it is done.
        if state.idle {
            self.shared.wake.notify_all();
        }
        let pause = state.pause_left();
        drop(state);
        match pause {
            Some(left) => self.start_thread_after(left),
            None => self.shared.start_thread(),
        }
    }

    /// Has the thread started when the pause after the last write ends: by
    /// a task of the current tokio runtime, or at once outside one.
    fn start_thread_after(&self, left: std::time::Duration) {
        // Checked first: every change within the pause comes here, and once
        // the thread is scheduled or running there is nothing to do.
        let mut thread = self.shared.thread_state();
        if !matches!(*thread, WriterThread::NotStarted) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(thread);
            return self.shared.start_thread();
        };
        *thread = WriterThread::Scheduled;
        drop(thread);
        let shared = self.shared.clone();
        runtime.spawn(async move {
            tokio::time::sleep(left).await;
            shared.start_thread();
        });
    }

    fn has_thread(&self) -> bool {
        matches!(*self.shared.thread_state(), WriterThread::Running)
    }

    /// Writes the current state now and waits until it is on disk. Unless
    /// the thread is writing at that moment, the write happens on the
    /// caller's thread: no hand-over to the thread and back (two wake-ups,
    /// each possibly across CPUs).
    pub fn write_now(&self) -> Result<(), String> {
        let mut state = self.shared.lock();
        state.requested += 1;
        if state.writing {
            drop(state);
            // The thread takes this request once its write is done.
            return self.flush();
        }
        let target = state.requested;
        state.writing = true;
        drop(state);
        let (state, result) = self.shared.write_claimed(target);
        // Wake the thread only for requests made meanwhile, and flushers.
        if state.flushers > 0 || state.requested > state.written {
            self.shared.wake.notify_all();
        }
        result
    }

    /// Waits until every write requested so far is done (a no-op when none
    /// is pending). Returns the last write error, if any.
    pub fn flush(&self) -> Result<(), String> {
        let mut state = self.shared.lock();
        let target = state.requested;
        if !self.has_thread() {
            let pending = state.written < target;
            drop(state);
            // No thread to wait for: write here, as `write_now` does.
            return if pending { self.write_now() } else { Ok(()) };
        }
        if state.written < target {
            state.urgent = true;
            self.shared.wake.notify_all();
        }
        state.flushers += 1;
        while state.written < target && !state.stop {
            state = self
                .shared
                .wake
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        state.flushers -= 1;
        state.last_error.clone().map_or(Ok(()), Err)
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        let _ = self.flush();
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        // Not joined: nothing is left to write, and the thread returns as
        // soon as it sees `stop` (or ends with the process, which is
        // exiting when the status and journal writers are dropped).
        *self.shared.thread_state() = WriterThread::Unavailable;
    }
}

impl WriterShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn thread_state(&self) -> std::sync::MutexGuard<'_, WriterThread> {
        self.thread.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the writing thread unless it runs already (or cannot, or the
    /// writer is gone).
    fn start_thread(self: &std::sync::Arc<Self>) {
        let mut thread = self.thread_state();
        if matches!(*thread, WriterThread::NotStarted | WriterThread::Scheduled) {
            let worker = self.clone();
            *thread = match std::thread::Builder::new()
                .name("bootplan-writer".into())
                .spawn(move || worker.run())
            {
                // Detached: see `Drop`.
                Ok(_) => WriterThread::Running,
                Err(_) => WriterThread::Unavailable,
            };
        }
    }

    fn write_once(&self) -> Result<(), String> {
        let bytes = (self.render)();
        let result = if self.durable {
            write_atomic(&self.path, &bytes, self.mode)
        } else {
            replace_file(&self.path, &bytes, self.mode)
        };
        result.map_err(|e| e.to_string())
    }

    /// Writes the state asked for by request `target`, for a writer that
    /// has set `writing` (one write at a time); returns the lock, retaken.
    fn write_claimed(
        &self,
        target: u64,
    ) -> (std::sync::MutexGuard<'_, WriterState>, Result<(), String>) {
        let result = self.write_once();
        let mut state = self.lock();
        state.writing = false;
        state.last_write = Some(std::time::Instant::now());
        state.written = state.written.max(target);
        state.last_error = result.clone().err();
        (state, result)
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            while (state.requested == state.written || state.writing) && !state.stop {
                state.idle = true;
                state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            state.idle = false;
            if state.stop && (state.requested == state.written || state.writing) {
                return;
            }
            // The pause counts from the last write, `write_now`'s included:
            // the first change after a run's opening write waits with the
            // rest instead of rewriting the file a moment later. A flush
            // (or the end) cuts it short.
            if let Some(left) = state.pause_left()
                && !state.urgent
                && !state.stop
            {
                state = self
                    .wake
                    .wait_timeout(state, left)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
                // Anything may have changed meanwhile: look again.
                continue;
            }
            let target = state.requested;
            state.urgent = false;
            state.writing = true;
            drop(state);
            state = self.write_claimed(target).0;
            self.wake.notify_all();
        }
    }
}
