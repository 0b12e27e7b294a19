//! The lean supervisor.
//!
//! Once a supervised app is ready and nothing but the app needs bootplan
//! (no service, no secret kept fresh, no registration to withdraw, no
//! metrics or traces to export), what the boot needed is dead weight for as
//! long as the app runs: the async runtime, HTTP clients, the parsed plan,
//! caches, and the pages of the binary the boot touched. bootplan then
//! replaces its own image with a small loop: it `exec`s itself with a
//! [`Handoff`] (JSON in [`HANDOFF_ENV`]). Same pid, same children, same
//! cgroup; the state directory's lock is kept by its descriptor, and the
//! forwarded signals (and SIGCHLD) are blocked across the `exec`, so one
//! sent meanwhile waits for the new image instead of being lost.
//!
//! The loop does what the full supervisor does once the app is ready:
//! forwards signals to the app's process group (SIGTERM as the app's stop
//! signal, then SIGKILL after the grace), reaps every child (orphans too),
//! and when the app has exited: `STOPPING=1`, the readiness file and the
//! secret files removed, what the app left killed, the run's cgroup ended,
//! and bootplan exits with the app's code (128+n for signal n). If the
//! `exec` fails, the same loop runs in the process as it is.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::error::exit;
use crate::process::cgroup::ReleasedGroup;
use crate::process::{Released, reaper};
use crate::stdio::errln;
use crate::telemetry::queue::QueuedWriter;
use crate::telemetry::{Event, EventKind, Level};

/// The argument that starts the lean supervisor (`bootplan __supervise
/// PROGRAM`, as `ps` shows it).
pub const LEAN_ARG: &str = "__supervise";

/// The environment variable that carries the [`Handoff`].
pub const HANDOFF_ENV: &str = "BOOTPLAN_HANDOFF";

/// Everything the lean supervisor needs, from the full one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    pub app: Released,
    /// The app's program, for the log.
    pub program: String,
    /// How long the app gets between its stop signal and SIGKILL.
    pub grace_ms: u64,
    /// Signals received but not forwarded yet, in order.
    pub pending: Vec<i32>,
    pub ready_file: PathBuf,
    pub secret_files: Vec<PathBuf>,
    pub run_group: Option<ReleasedGroup>,
    pub log: LogSpec,
}

/// Where and how the run logs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LogSpec {
    pub json: bool,
    pub level: Level,
    pub bootstrap_id: String,
}

/// Blocks the signals bootplan handles in the calling thread (bootplan's
/// main thread; its other threads block them from their start), so those
/// that arrive from now on stay pending for the lean supervisor, across an
/// `exec`.
pub fn hold_signals() {
    crate::sigmask::block_handled();
}

/// Replaces bootplan's image with the lean supervisor; when that fails,
/// runs it here. Returns bootplan's exit code (only when it runs here).
pub fn hand_off(handoff: Handoff) -> i32 {
    hold_signals();
    let Err(err) = exec_lean(&handoff);
    errln!("bootplan: cannot start the lean supervisor ({err}); supervising as it is");
    supervise(handoff)
}

fn exec_lean(handoff: &Handoff) -> Result<std::convert::Infallible, String> {
    let json = serde_json::to_string(handoff).map_err(|e| e.to_string())?;
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|e| e.to_string());
    let exe = cstring(b"/proc/self/exe")?;
    let args = [
        cstring(b"bootplan")?,
        cstring(LEAN_ARG.as_bytes())?,
        cstring(handoff.program.as_bytes())?,
    ];
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os().filter(|(k, _)| k != HANDOFF_ENV) {
        let mut pair = key.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        env.push(cstring(&pair)?);
    }
    env.push(cstring(format!("{HANDOFF_ENV}={json}").as_bytes())?);
    nix::unistd::execve(&exe, &args, &env).map_err(|e| e.to_string())
}

/// Whether this process was started as the lean supervisor.
pub fn invoked() -> bool {
    std::env::args_os().nth(1).as_deref() == Some(OsStr::new(LEAN_ARG))
}

/// The lean supervisor's entry point, after the `exec`.
pub fn main() -> i32 {
    let handoff = std::env::var(HANDOFF_ENV)
        .map_err(|e| e.to_string())
        .and_then(|json| serde_json::from_str::<Handoff>(&json).map_err(|e| e.to_string()));
    let handoff = match handoff {
        Ok(handoff) => handoff,
        Err(err) => {
            errln!("bootplan: `{LEAN_ARG}` is started by bootplan itself ({HANDOFF_ENV}: {err})");
            return exit::USAGE;
        }
    };
    if crate::process::parent_of(handoff.app.pid) != Some(std::process::id()) {
        errln!(
            "bootplan: `{LEAN_ARG}`: process {} is not a child of this process",
            handoff.app.pid
        );
        return exit::USAGE;
    }
    hold_signals();
    supervise(handoff)
}

/// The run's log, for the few lines the lean supervisor writes: in the
/// run's format (a JSON line on stdout, else a console line on stderr),
/// through a queue that a stalled reader cannot block. No reporter, sinks
/// or redactor: these lines carry no value from the plan.
struct Log {
    spec: LogSpec,
    out: QueuedWriter,
}

impl Log {
    fn new(spec: LogSpec) -> Log {
        let out = match spec.json {
            true => QueuedWriter::stdout(),
            false => QueuedWriter::stderr(),
        };
        Log { spec, out }
    }

    fn notice(&mut self, level: Level, message: impl Into<String>) {
        if level > self.spec.level {
            return;
        }
        let message = message.into();
        let mut line = Vec::with_capacity(256);
        if self.spec.json {
            let event = Event {
                at: std::time::SystemTime::now(),
                kind: EventKind::Notice { level, message },
            };
            crate::telemetry::jsonlog::write_event(&mut line, &event, &self.spec.bootstrap_id);
        } else {
            line.extend_from_slice(format!("bootplan: {}: {message}", level.as_str()).as_bytes());
        }
        line.push(b'\n');
        let _ = self.out.write_all(&line);
    }

    fn finish(&mut self) {
        let _ = self.out.flush();
    }
}

/// The loop: forwards signals, reaps, and ends the run when the app exits.
fn supervise(handoff: Handoff) -> i32 {
    let mut log = Log::new(handoff.log.clone());
    let containment = handoff.run_group.clone().map(ReleasedGroup::adopt);
    let app = handoff.app.clone().adopt();
    let mut stop = Stop {
        pgid: Pid::from_raw(app.pid() as i32),
        stop_signal: app.stop_signal(),
        grace: Duration::from_millis(handoff.grace_ms),
        stopping: false,
        kill_at: None,
    };
    for &signal in &handoff.pending {
        stop.forward(signal, &mut log);
    }
    let signals = SignalFd::with_flags(
        &crate::sigmask::handled(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    );
    let mut orphans = 0;
    let code = loop {
        let (code, others) = reaper::reap_exited(app.pid());
        orphans += others;
        if let Some(code) = code {
            break code;
        }
        match &signals {
            Ok(signals) => {
                let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, stop.timeout());
                while let Ok(Some(info)) = signals.read_signal() {
                    let signal = info.ssi_signo as i32;
                    if signal != libc::SIGCHLD {
                        stop.forward(signal, &mut log);
                    }
                }
            }
            // Without a signalfd (never expected on Linux): look again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
        stop.kill_when_due(&mut log);
    };
    app.exited();
    super::notify::stopping();
    super::readyfile::remove(&handoff.ready_file);
    remove_secret_files(&handoff.secret_files, &mut log);
    drop(containment);
    if orphans > 0 {
        log.notice(
            Level::Debug,
            format!("reaped {orphans} orphaned process(es)"),
        );
    }
    log.notice(Level::Info, format!("the app exited with code {code}"));
    log.finish();
    code
}

/// Stopping the app: its process group, its stop signal, the grace.
struct Stop {
    pgid: Pid,
    stop_signal: Signal,
    grace: Duration,
    /// Whether the app was asked to stop (the grace runs once).
    stopping: bool,
    /// When the app gets SIGKILL, once asked to stop, until it got it.
    kill_at: Option<Instant>,
}

impl Stop {
    /// A signal for the app: SIGTERM as its stop signal (the grace starts
    /// then), the others as they are.
    fn forward(&mut self, signal: i32, log: &mut Log) {
        let sent = match signal {
            libc::SIGTERM => self.stop_signal,
            other => Signal::try_from(other).unwrap_or(Signal::SIGTERM),
        };
        let _ = killpg(self.pgid, sent);
        if signal == libc::SIGTERM && !self.stopping {
            self.stopping = true;
            self.kill_at = Some(Instant::now() + self.grace);
            log.notice(
                Level::Info,
                format!(
                    "signal {signal}: stopping the app (grace {})",
                    humantime::format_duration(self.grace)
                ),
            );
        }
    }

    /// How long to wait for a signal: until the SIGKILL is due, else as
    /// long as it takes.
    fn timeout(&self) -> PollTimeout {
        self.kill_at.map_or(PollTimeout::NONE, |at| {
            let left = at.saturating_duration_since(Instant::now()).as_millis();
            PollTimeout::try_from(left.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
        })
    }

    fn kill_when_due(&mut self, log: &mut Log) {
        if self.kill_at.is_some_and(|at| Instant::now() >= at) {
            log.notice(Level::Warn, "the app outlived its grace; SIGKILL");
            let _ = killpg(self.pgid, Signal::SIGKILL);
            self.kill_at = None;
        }
    }
}

fn remove_secret_files(paths: &[PathBuf], log: &mut Log) {
    if let Err(err) = crate::secrets::files::remove(paths) {
        log.notice(Level::Warn, format!("cannot remove a secret file: {err}"));
    }
}
