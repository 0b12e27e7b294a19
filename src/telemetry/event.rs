//! Every state change of a run is an [`Event`]; sinks turn events into logs,
//! the status file, metrics and traces.

use std::time::{Duration, SystemTime};

use crate::error::ErrorCode;

/// Which output stream a captured line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    /// Queued for a semaphore's slot (`throttle:`).
    Waiting,
    Done,
    Skipped,
    Failed,
    Cancelled,
    NotRun,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Waiting => "waiting",
            StepState::Done => "done",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
            StepState::NotRun => "not_run",
        }
    }
}

/// The verdict of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Running,
    Ready,
    Degraded,
    Failed,
    DeadlineExceeded,
    Interrupted,
    Invalid,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ready => "ready",
            Outcome::Degraded => "degraded",
            Outcome::Failed => "failed",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::Interrupted => "interrupted",
            Outcome::Invalid => "invalid",
        }
    }

    /// Whether the machine reached "ready" (possibly with tolerated failures).
    pub fn is_ready(self) -> bool {
        matches!(self, Outcome::Ready | Outcome::Degraded)
    }
}

/// An error as reported: a stable code and a (redacted) message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

/// A timestamped event.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum EventKind {
    RunStarted {
        bootstrap_id: String,
        plan: String,
        plan_path: String,
        digest: String,
        /// The kernel's boot id: a status file from an earlier boot is not current.
        boot_id: String,
        /// (step name, kind) in plan order.
        steps: Vec<(String, &'static str)>,
    },
    StepSkipped {
        step: String,
        reason: String,
    },
    StepStarted {
        step: String,
    },
    AttemptStarted {
        step: String,
        attempt: u32,
    },
    AttemptFailed {
        step: String,
        attempt: u32,
        error: ErrorInfo,
        retry_in: Option<Duration>,
    },
    Output {
        step: String,
        stream: Stream,
        line: String,
    },
    Waiting {
        step: String,
        target: String,
        elapsed: Duration,
    },
    /// The run's start splay begins: the first step's work waits `delay`.
    StartSplay {
        delay: Duration,
    },
    /// A throttled step waits in a semaphore's queue: `position` 1 is next.
    Queued {
        step: String,
        semaphore: String,
        position: u32,
        slots: u32,
        elapsed: Duration,
    },
    /// A throttled step may go on after `waited` in the queue: with a slot
    /// (`throttled`), or without one (etcd unavailable, `on_unavailable: proceed`).
    SlotAcquired {
        step: String,
        semaphore: String,
        waited: Duration,
        throttled: bool,
    },
    StepFinished {
        step: String,
        state: StepState,
        attempts: u32,
        duration: Duration,
        error: Option<ErrorInfo>,
    },
    /// Steps that never started because the run stopped first.
    StepNotRun {
        step: String,
        reason: String,
    },
    UndoFinished {
        step: String,
        error: Option<ErrorInfo>,
    },
    Notice {
        level: Level,
        message: String,
    },
    /// After ready: what keeps the running system from being fully well
    /// (a secret that cannot be refreshed, a new file its check refused).
    /// Empty when everything is well again.
    Health {
        problems: Vec<String>,
    },
    RunFinished {
        outcome: Outcome,
        exit_code: i32,
        error: Option<ErrorInfo>,
        failed_step: Option<String>,
        duration: Duration,
    },
}

/// Log levels, most severe first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// What a queued step waits for, as the status file and the logs say it:
/// `semaphore migrate (position 3, 1 slot)`.
pub fn queue_place(semaphore: &str, position: u32, slots: u32) -> String {
    format!(
        "semaphore {semaphore} (position {position}, {slots} slot{})",
        if slots == 1 { "" } else { "s" }
    )
}

/// The log line of a step that may go on after its queue.
pub fn slot_message(semaphore: &str, waited: Duration, throttled: bool) -> String {
    if throttled {
        format!(
            "took a slot of semaphore {semaphore} after {:.1}s in the queue",
            waited.as_secs_f64()
        )
    } else {
        format!(
            "runs without a slot of semaphore {semaphore}: etcd is unavailable (on_unavailable: proceed)"
        )
    }
}

impl EventKind {
    /// A stable event name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunStarted { .. } => "run_started",
            EventKind::StepSkipped { .. } => "step_skipped",
            EventKind::StepStarted { .. } => "step_started",
            EventKind::AttemptStarted { .. } => "attempt_started",
            EventKind::AttemptFailed { .. } => "attempt_failed",
            EventKind::Output { .. } => "output",
            EventKind::Waiting { .. } => "waiting",
            EventKind::StartSplay { .. } => "start_splay",
            EventKind::Queued { .. } => "queued",
            EventKind::SlotAcquired { .. } => "slot_acquired",
            EventKind::StepFinished { .. } => "step_finished",
            EventKind::StepNotRun { .. } => "step_not_run",
            EventKind::UndoFinished { .. } => "undo_finished",
            EventKind::Notice { .. } => "notice",
            EventKind::Health { .. } => "health",
            EventKind::RunFinished { .. } => "run_finished",
        }
    }

    pub fn level(&self) -> Level {
        match self {
            EventKind::AttemptFailed { .. } => Level::Warn,
            EventKind::StepFinished {
                state: StepState::Failed,
                ..
            } => Level::Error,
            EventKind::StepFinished {
                state: StepState::Cancelled,
                ..
            } => Level::Warn,
            EventKind::UndoFinished { error: Some(_), .. } => Level::Error,
            EventKind::RunFinished { outcome, .. } if !outcome.is_ready() => Level::Error,
            EventKind::Notice { level, .. } => *level,
            EventKind::Health { problems } if !problems.is_empty() => Level::Warn,
            EventKind::AttemptStarted { .. } => Level::Debug,
            EventKind::SlotAcquired {
                throttled: false, ..
            } => Level::Warn,
            _ => Level::Info,
        }
    }

    pub fn step(&self) -> Option<&str> {
        match self {
            EventKind::StepSkipped { step, .. }
            | EventKind::StepStarted { step }
            | EventKind::AttemptStarted { step, .. }
            | EventKind::AttemptFailed { step, .. }
            | EventKind::Output { step, .. }
            | EventKind::Waiting { step, .. }
            | EventKind::Queued { step, .. }
            | EventKind::SlotAcquired { step, .. }
            | EventKind::StepFinished { step, .. }
            | EventKind::StepNotRun { step, .. }
            | EventKind::UndoFinished { step, .. } => Some(step),
            EventKind::RunStarted { .. }
            | EventKind::StartSplay { .. }
            | EventKind::Notice { .. }
            | EventKind::Health { .. }
            | EventKind::RunFinished { .. } => None,
        }
    }

    /// Applies `redact` to every free-text field (messages and captured output).
    pub fn redact_with(&mut self, redact: &dyn Fn(&str) -> Option<String>) {
        let fix = |text: &mut String| {
            if let Some(clean) = redact(text) {
                *text = clean;
            }
        };
        match self {
            EventKind::Output { line, .. } => fix(line),
            EventKind::StepSkipped { reason, .. } | EventKind::StepNotRun { reason, .. } => {
                fix(reason)
            }
            EventKind::Waiting { target, .. } => fix(target),
            EventKind::Notice { message, .. } => fix(message),
            EventKind::Health { problems } => problems.iter_mut().for_each(fix),
            EventKind::AttemptFailed { error, .. } => fix(&mut error.message),
            EventKind::StepFinished { error: Some(e), .. }
            | EventKind::UndoFinished { error: Some(e), .. }
            | EventKind::RunFinished { error: Some(e), .. } => fix(&mut e.message),
            _ => {}
        }
    }
}
