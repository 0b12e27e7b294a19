//! Running services: start a process, wait for its readiness probe, then
//! watch it for the rest of the run (and of supervision). A service that
//! exits is restarted by its policy (backoff doubling from MIN to MAX, up to
//! `limit` restarts) and must pass its probe again. A required service that
//! is gone for good is reported once through [`Services::next_failure`]; the
//! engine and the supervisor stop on it. Services stop in reverse start order.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::ErrorCode;
use crate::plan::lifecycle::{RestartOn, RestartPolicy};
use crate::process::{self, Child};
use crate::steps::StepError;
use crate::steps::probe::{NotifyListener, Probe};
use crate::steps::process::Cmd;
use crate::telemetry::metrics::{SERVICE_READY, SERVICE_RESTARTS};
use crate::telemetry::{ErrorInfo, Level, Reporter};

/// Everything needed to (re)start one service.
pub struct ServiceUnit {
    pub step: String,
    pub cmd: Cmd,
    pub bootstrap_id: String,
    pub probe: Probe,
    /// Bound on one readiness wait (the step's `timeout`).
    pub ready_limit: Option<Duration>,
    pub policy: RestartPolicy,
    pub required: bool,
    pub grace: Duration,
    pub reporter: Arc<Reporter>,
    pub notify: Option<Arc<NotifyListener>>,
}

/// A started service process that passed its probe.
pub struct Running {
    child: Child,
    readers: Vec<JoinHandle<()>>,
}

/// A required service that is gone for good.
#[derive(Debug, Clone)]
pub struct ServiceFailure {
    pub step: String,
    pub error: ErrorInfo,
}

struct Handle {
    step: String,
    /// The running process's pid (its group's id), 0 while there is none.
    pid: Arc<AtomicU32>,
    stop: CancellationToken,
    /// The grace to stop with, in ms; set by `stop_all` before `stop` fires.
    grace_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// The services of this run, in start order.
pub struct Services {
    running: Mutex<Vec<Handle>>,
    failure: watch::Sender<Option<ServiceFailure>>,
    notify_dir: OnceLock<PathBuf>,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            running: Mutex::new(Vec::new()),
            failure: watch::channel(None).0,
            notify_dir: OnceLock::new(),
        }
    }
}

impl Services {
    /// Where per-service notify sockets go (RUN_DIR/notify). Set once by the CLI.
    pub fn set_notify_dir(&self, dir: PathBuf) {
        let _ = self.notify_dir.set(dir);
    }

    pub fn notify_dir(&self) -> PathBuf {
        self.notify_dir
            .get()
            .cloned()
            .unwrap_or_else(|| std::env::temp_dir().join("bootplan-notify"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Handle>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes over a ready service and watches it until [`Services::stop_all`].
    pub fn adopt(&self, unit: ServiceUnit, running: Running) {
        let stop = CancellationToken::new();
        let failure = self.failure.clone();
        let grace_ms = Arc::new(AtomicU64::new(unit.grace.as_millis() as u64));
        let step = unit.step.clone();
        let pid = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(watch_service(
            unit,
            running,
            stop.clone(),
            grace_ms.clone(),
            failure,
            pid.clone(),
        ));
        self.lock().push(Handle {
            step,
            pid,
            stop,
            grace_ms,
            task,
        });
    }

    /// Sends `signal` to the running process group of service `step`;
    /// false when the service is not running.
    pub fn signal(&self, step: &str, signal: nix::sys::signal::Signal) -> bool {
        let pid = self
            .lock()
            .iter()
            .find(|h| h.step == step)
            .map_or(0, |h| h.pid.load(Ordering::SeqCst));
        pid != 0 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal).is_ok()
    }

    /// Whether no service runs (none was started, or all were stopped).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The required service already gone for good, if any.
    pub fn failed(&self) -> Option<ServiceFailure> {
        self.failure.borrow().clone()
    }

    /// Resolves when a required service is gone for good (once per run).
    pub async fn next_failure(&self) -> Option<ServiceFailure> {
        let mut rx = self.failure.subscribe();
        rx.wait_for(Option::is_some).await.ok()?.clone()
    }

    /// Stops service `step` within `grace` and forgets it, so that it can
    /// be started again (with a new environment). False when it was not running.
    pub async fn stop_one(&self, step: &str, grace: Duration) -> bool {
        let handle = {
            let mut running = self.lock();
            let Some(at) = running.iter().position(|h| h.step == step) else {
                return false;
            };
            running.remove(at)
        };
        handle
            .grace_ms
            .store(grace.as_millis() as u64, Ordering::SeqCst);
        handle.stop.cancel();
        let _ = handle.task.await;
        true
    }

    /// Stops every service, newest first, each within `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        let handles: Vec<Handle> = std::mem::take(&mut *self.lock());
        for handle in handles.into_iter().rev() {
            handle
                .grace_ms
                .store(grace.as_millis() as u64, Ordering::SeqCst);
            handle.stop.cancel();
            let _ = handle.task.await;
        }
    }
}

/// Starts the unit's process and waits until its probe passes. The first
/// start's time to ready is recorded by the metrics sink from the step's
/// events; restarts record it in [`watch_service`].
pub async fn start(unit: &ServiceUnit, cancel: &CancellationToken) -> Result<Running, StepError> {
    unit.probe.reset();
    let mut command = unit.cmd.command_for(&unit.bootstrap_id, &unit.step);
    if let Some(listener) = &unit.notify {
        command.env("NOTIFY_SOCKET", listener.path());
    }
    let mut child = command.spawn().map_err(|source| StepError::Spawn {
        program: unit.cmd.program().to_string(),
        source,
    })?;
    if let Some(listener) = &unit.notify {
        listener.expect_from(child.members());
    }
    let readers = process::log_in_background(&mut child, &unit.step, &unit.reporter);
    let program = unit.cmd.program().to_string();
    let result = unit
        .probe
        .wait(unit.ready_limit, cancel, || match child.try_wait() {
            Ok(Some(status)) => Some(StepError::ServiceExited {
                program: program.clone(),
                status: status.to_string(),
            }),
            _ => None,
        })
        .await;
    match result {
        Ok(()) => Ok(Running { child, readers }),
        Err(err) => {
            child.terminate(unit.grace).await;
            process::drain(readers).await;
            Err(err)
        }
    }
}

/// Watches one service: restarts it by its policy, reports it when it is
/// gone for good, and stops it when asked.
async fn watch_service(
    unit: ServiceUnit,
    running: Running,
    stop: CancellationToken,
    grace_ms: Arc<AtomicU64>,
    failure: watch::Sender<Option<ServiceFailure>>,
    pid: Arc<AtomicU32>,
) {
    let mut current = Some(running);
    let mut restarts = 0u32;
    loop {
        pid.store(
            current.as_ref().map_or(0, |p| p.child.pid()),
            Ordering::SeqCst,
        );
        let ended = match current.take() {
            Some(mut proc) => tokio::select! {
                status = proc.child.wait() => {
                    process::drain(proc.readers).await;
                    match status {
                        Ok(s) => (s.success(), format!("exited with {s}")),
                        Err(e) => (false, format!("lost: {e}")),
                    }
                }
                () = stop.cancelled() => {
                    let grace = Duration::from_millis(grace_ms.load(Ordering::SeqCst));
                    proc.child.terminate(grace).await;
                    process::drain(proc.readers).await;
                    return;
                }
            },
            None => return,
        };
        let (clean, what) = ended;
        if !unit.policy.wants_restart(clean) || restarts >= unit.policy.limit {
            gone_for_good(&unit, clean, &what, restarts, &failure);
            return;
        }
        restarts += 1;
        if !announce_restart(&unit, &what, restarts, &stop).await {
            return;
        }
        // Start again; a start that fails counts as one more exit.
        let mut began = Instant::now();
        let mut outcome = start(&unit, &stop).await;
        while let Err(err) = outcome {
            if matches!(err, StepError::Cancelled) || stop.is_cancelled() {
                return;
            }
            let what = format!("did not come back: {err}");
            if restarts >= unit.policy.limit {
                gone_for_good(&unit, false, &what, restarts, &failure);
                return;
            }
            restarts += 1;
            if !announce_restart(&unit, &what, restarts, &stop).await {
                return;
            }
            began = Instant::now();
            outcome = start(&unit, &stop).await;
        }
        if let Ok(proc) = outcome {
            metrics::histogram!(SERVICE_READY, "step" => unit.step.clone())
                .record(began.elapsed().as_secs_f64());
            unit.reporter.notice(
                Level::Info,
                format!("service `{}` is ready again", unit.step),
            );
            current = Some(proc);
        }
    }
}

/// Says restart number `restarts` is coming, counts it, and waits out its
/// backoff. `false` when the run is stopping instead.
async fn announce_restart(
    unit: &ServiceUnit,
    what: &str,
    restarts: u32,
    stop: &CancellationToken,
) -> bool {
    let delay = unit.policy.delay(restarts);
    unit.reporter.notice(
        Level::Warn,
        format!(
            "service `{}` {what}; restart {restarts} of {} in {}",
            unit.step,
            unit.policy.limit,
            humantime::format_duration(delay)
        ),
    );
    metrics::counter!(SERVICE_RESTARTS, "step" => unit.step.clone()).increment(1);
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}

fn gone_for_good(
    unit: &ServiceUnit,
    clean: bool,
    what: &str,
    restarts: u32,
    failure: &watch::Sender<Option<ServiceFailure>>,
) {
    // A clean exit under `on: failure` is the service finishing, not failing.
    if clean && unit.policy.on == RestartOn::Failure {
        unit.reporter.notice(
            Level::Warn,
            format!("service `{}` {what}; not restarted (clean exit)", unit.step),
        );
        return;
    }
    let message = format!(
        "service `{}` {what} after {restarts} restart(s) (limit {})",
        unit.step, unit.policy.limit
    );
    if !unit.required {
        unit.reporter.notice(
            Level::Warn,
            format!("{message}; it is not required, carrying on"),
        );
        return;
    }
    unit.reporter.notice(Level::Error, message.clone());
    failure.send_if_modified(|slot| {
        if slot.is_some() {
            return false;
        }
        *slot = Some(ServiceFailure {
            step: unit.step.clone(),
            error: ErrorInfo {
                code: ErrorCode::ServiceFailed,
                message,
            },
        });
        true
    });
}
