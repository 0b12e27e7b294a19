//! The status file: one JSON document describing the run, rewritten
//! atomically as steps change state.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{ErrorInfo, Event, EventKind, Outcome, Sink, StepState, timestamp};
use crate::fsutil::BackgroundWriter;

pub const SCHEMA_VERSION: u32 = 1;

/// The status document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    pub schema_version: u32,
    pub bootstrap_id: String,
    pub plan: PlanInfo,
    pub pid: u32,
    /// When the process `pid` started (clock ticks after boot): with the
    /// boot id, it tells a live run from a pid reused by another process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    /// The boot the run happened in (the kernel's boot id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    pub started_at: String,
    pub started_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// What keeps a ready system from being fully well since (see
    /// `EventKind::Health`); the outcome says `degraded` while there are any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The run's own verdict, which `outcome` returns to once the problems
    /// are gone.
    #[serde(skip)]
    pub verdict: Option<Outcome>,
    /// The start splay this run waited before its first step's work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_splay_ms: Option<u64>,
    pub steps: IndexMap<String, StepStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanInfo {
    pub name: String,
    pub path: String,
    pub digest: String,
}

/// One step's entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepStatus {
    pub kind: String,
    pub state: StepState,
    /// The steps this one needs (for `bootplan analyze critical-chain`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// What a running step is waiting for (a secret store, a port, a URL,
    /// its place in a semaphore's queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The semaphore a `throttle:` step queued for, and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<AttemptRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<UndoRecord>,
}

/// A throttled step's time in its semaphore's queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThrottleRecord {
    pub semaphore: String,
    /// Time queued for the slot so far (final once `acquired_unix_ms` is set).
    pub queue_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquired_unix_ms: Option<u64>,
    /// `false`: etcd was unavailable and the step ran without a slot
    /// (`on_unavailable: proceed`).
    pub held: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UndoRecord {
    pub ok: bool,
    pub finished_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl StatusDoc {
    /// Applies one event. Pure: the file write is the sink's business.
    pub fn apply(&mut self, event: &Event) {
        let now = unix_ms(event.at);
        match &event.kind {
            EventKind::RunStarted { .. } | EventKind::Output { .. } | EventKind::Notice { .. } => {}
            EventKind::Health { problems } => {
                self.problems = problems.clone();
                if self.outcome.is_ready() {
                    self.outcome = match (problems.is_empty(), self.verdict) {
                        (true, Some(verdict)) => verdict,
                        _ => Outcome::Degraded,
                    };
                }
            }
            EventKind::Waiting {
                step,
                target,
                elapsed,
            } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.waiting_for = Some(format!("{target} (for {}s)", elapsed.as_secs()));
                }
            }
            EventKind::StartSplay { delay } => {
                self.start_splay_ms = Some(delay.as_millis() as u64);
            }
            EventKind::Queued {
                step,
                semaphore,
                position,
                slots,
                elapsed,
            } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.state = StepState::Waiting;
                    s.waiting_for = Some(format!(
                        "{} (for {}s)",
                        super::event::queue_place(semaphore, *position, *slots),
                        elapsed.as_secs()
                    ));
                    s.throttle = Some(ThrottleRecord {
                        semaphore: semaphore.clone(),
                        queue_ms: elapsed.as_millis() as u64,
                        acquired_unix_ms: None,
                        held: false,
                    });
                }
            }
            EventKind::SlotAcquired {
                step,
                semaphore,
                waited,
                throttled,
            } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.state = StepState::Running;
                    s.waiting_for = None;
                    s.throttle = Some(ThrottleRecord {
                        semaphore: semaphore.clone(),
                        queue_ms: waited.as_millis() as u64,
                        acquired_unix_ms: Some(now),
                        held: *throttled,
                    });
                }
            }
            EventKind::StepSkipped { step, reason } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.state = StepState::Skipped;
                    s.skip_reason = Some(reason.clone());
                    s.finished_unix_ms = Some(now);
                }
            }
            EventKind::StepStarted { step } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.state = StepState::Running;
                    s.started_unix_ms = Some(now);
                }
            }
            EventKind::AttemptStarted { step, attempt } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.waiting_for = None;
                    s.attempts = *attempt;
                    s.attempt_log.push(AttemptRecord {
                        attempt: *attempt,
                        started_unix_ms: now,
                        finished_unix_ms: None,
                        error: None,
                        retry_in_ms: None,
                    });
                }
            }
            EventKind::AttemptFailed {
                step,
                error,
                retry_in,
                ..
            } => {
                if let Some(rec) = self
                    .steps
                    .get_mut(step)
                    .and_then(|s| s.attempt_log.last_mut())
                {
                    rec.finished_unix_ms = Some(now);
                    rec.error = Some(error.clone());
                    rec.retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
                }
            }
            EventKind::StepFinished {
                step,
                state,
                attempts,
                duration,
                error,
            } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.state = *state;
                    s.waiting_for = None;
                    s.attempts = *attempts;
                    s.finished_unix_ms = Some(now);
                    s.duration_ms = Some(duration.as_millis() as u64);
                    s.error = error.clone();
                    if let Some(rec) = s.attempt_log.last_mut()
                        && rec.finished_unix_ms.is_none()
                    {
                        rec.finished_unix_ms = Some(now);
                        rec.error = error.clone();
                    }
                }
            }
            EventKind::StepNotRun { step, reason } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.state = StepState::NotRun;
                    s.skip_reason = Some(reason.clone());
                }
            }
            EventKind::UndoFinished { step, error } => {
                if let Some(s) = self.steps.get_mut(step) {
                    s.undo = Some(UndoRecord {
                        ok: error.is_none(),
                        finished_unix_ms: now,
                        error: error.clone(),
                    });
                }
            }
            EventKind::RunFinished {
                outcome,
                exit_code,
                error,
                failed_step,
                duration,
            } => {
                self.outcome = *outcome;
                self.verdict = Some(*outcome);
                self.exit_code = Some(*exit_code);
                self.error = error.clone();
                self.failed_step = failed_step.clone();
                self.finished_at = Some(timestamp(event.at));
                self.duration_ms = Some(duration.as_millis() as u64);
            }
        }
    }

    /// A fresh document for a run that starts now.
    pub fn new(event: &Event) -> Option<StatusDoc> {
        let EventKind::RunStarted {
            bootstrap_id,
            plan,
            plan_path,
            digest,
            boot_id,
            steps,
        } = &event.kind
        else {
            return None;
        };
        Some(StatusDoc {
            schema_version: SCHEMA_VERSION,
            bootstrap_id: bootstrap_id.clone(),
            plan: PlanInfo {
                name: plan.clone(),
                path: plan_path.clone(),
                digest: digest.clone(),
            },
            pid: std::process::id(),
            pid_start: process_start(std::process::id()),
            boot_id: boot_id.clone(),
            started_at: timestamp(event.at),
            started_unix_ms: unix_ms(event.at),
            finished_at: None,
            duration_ms: None,
            outcome: Outcome::Running,
            exit_code: None,
            error: None,
            failed_step: None,
            problems: Vec::new(),
            verdict: None,
            start_splay_ms: None,
            steps: steps
                .iter()
                .map(|(name, kind)| {
                    (
                        name.clone(),
                        StepStatus {
                            kind: kind.to_string(),
                            state: StepState::Pending,
                            needs: Vec::new(),
                            attempts: 0,
                            started_unix_ms: None,
                            finished_unix_ms: None,
                            duration_ms: None,
                            skip_reason: None,
                            waiting_for: None,
                            throttle: None,
                            error: None,
                            attempt_log: Vec::new(),
                            undo: None,
                        },
                    )
                })
                .collect(),
        })
    }
}

/// Keeps the status file current. Intermediate states are written in the
/// background (coalesced); the final state is written before `RunFinished`
/// returns, so a reader that sees a final outcome sees the whole run.
pub struct StatusSink {
    doc: Arc<Mutex<Option<StatusDoc>>>,
    writer: Arc<BackgroundWriter>,
    needs: IndexMap<String, Vec<String>>,
}

impl StatusSink {
    pub fn new(path: PathBuf) -> StatusSink {
        let doc: Arc<Mutex<Option<StatusDoc>>> = Arc::new(Mutex::new(None));
        let for_render = doc.clone();
        let writer = Arc::new(BackgroundWriter::new(
            path,
            0o644,
            false,
            Box::new(move || {
                // Serialized under the lock. Copying the document out first
                // costs about as long as formatting it (an allocation per
                // string, ~600 for 100 steps) and then the formatting on
                // top; the engine waits for the lock at most once per write.
                let doc = for_render.lock().unwrap_or_else(|p| p.into_inner());
                let mut bytes = serde_json::to_vec_pretty(&*doc).unwrap_or_default();
                bytes.push(b'\n');
                bytes
            }),
        ));
        StatusSink {
            doc,
            writer,
            needs: IndexMap::new(),
        }
    }

    /// Records each step's `needs` in the document (step name → names).
    pub fn with_needs(mut self, needs: IndexMap<String, Vec<String>>) -> StatusSink {
        self.needs = needs;
        self
    }

    /// The file's writer, to ask whether the last write failed.
    pub fn writer(&self) -> Arc<BackgroundWriter> {
        self.writer.clone()
    }

    /// A handle to the live document, for other sinks (e.g. the /status endpoint).
    pub fn document(&self) -> Arc<Mutex<Option<StatusDoc>>> {
        self.doc.clone()
    }
}

impl Sink for StatusSink {
    fn event(&mut self, event: &Event) {
        if matches!(
            event.kind,
            EventKind::Output { .. } | EventKind::Notice { .. }
        ) {
            return;
        }
        {
            let mut doc = self.doc.lock().unwrap_or_else(|p| p.into_inner());
            match doc.as_mut() {
                Some(doc) => doc.apply(event),
                None => {
                    *doc = StatusDoc::new(event);
                    if let Some(doc) = doc.as_mut() {
                        for (name, step) in doc.steps.iter_mut() {
                            step.needs = self.needs.get(name).cloned().unwrap_or_default();
                        }
                    }
                }
            }
        }
        match event.kind {
            EventKind::RunStarted { .. } | EventKind::RunFinished { .. } => {
                if let Err(err) = self.writer.write_now() {
                    crate::stdio::errln!(
                        "bootplan: cannot write status file {}: {err}",
                        self.writer.path().display()
                    );
                }
            }
            _ => self.writer.mark_dirty(),
        }
    }

    fn finish(&mut self) {
        let _ = self.writer.flush();
    }
}

/// When process `pid` started, in clock ticks after boot (`/proc/PID/stat`
/// field 22); `None` when it does not exist.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count from the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Reads a status file.
pub fn read_status(path: &std::path::Path) -> Result<StatusDoc, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("cannot parse {}: {e}", path.display()))
}
