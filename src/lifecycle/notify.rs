//! systemd readiness: a [`Sink`] that speaks sd_notify when bootplan runs
//! under a `Type=notify` unit (`NOTIFY_SOCKET` set). While working it sends
//! `STATUS=` per step and `EXTEND_TIMEOUT_USEC=` (the time left until the
//! plan's deadline, so systemd's start timeout never cuts a run that is
//! still within its own bound); when the plan is ready it sends `READY=1`.
//! A failed run sends a final `STATUS=` naming the error code. Without
//! `NOTIFY_SOCKET` every call is a no-op.

use std::time::Instant;

use sd_notify::NotifyState;

use crate::telemetry::{Event, EventKind, Sink};

pub struct NotifySink {
    deadline: Instant,
    total: usize,
    finished: usize,
}

impl NotifySink {
    /// `deadline`: when the plan's deadline passes.
    pub fn new(deadline: Instant) -> NotifySink {
        NotifySink {
            deadline,
            total: 0,
            finished: 0,
        }
    }

    fn send(&self, states: &[NotifyState]) {
        // Best effort: systemd being gone must not fail the run.
        let _ = sd_notify::notify(states);
    }

    fn working(&self, status: &str) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.send(&[NotifyState::Status(status)]);
            return;
        }
        let usec = u32::try_from(left.as_micros()).unwrap_or(u32::MAX);
        self.send(&[
            NotifyState::Status(status),
            NotifyState::ExtendTimeoutUsec(usec),
        ]);
    }
}

/// Tells systemd that bootplan is stopping (supervised shutdown).
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

impl Sink for NotifySink {
    fn event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { steps, plan, .. } => {
                self.total = steps.len();
                self.working(&format!("starting plan {plan}"));
            }
            EventKind::StepStarted { step } => {
                self.working(&format!(
                    "running {step} ({}/{} steps finished)",
                    self.finished, self.total
                ));
            }
            EventKind::Waiting { step, elapsed, .. } => {
                self.working(&format!(
                    "{step}: still waiting after {}s",
                    elapsed.as_secs()
                ));
            }
            EventKind::Queued {
                step,
                semaphore,
                position,
                slots,
                ..
            } => {
                self.working(&format!(
                    "{step}: waiting for {}",
                    crate::telemetry::queue_place(semaphore, *position, *slots)
                ));
            }
            EventKind::StartSplay { delay } => {
                self.working(&format!("start splay: waiting {:.1}s", delay.as_secs_f64()));
            }
            EventKind::StepFinished { step, state, .. } => {
                self.finished += 1;
                self.working(&format!(
                    "{step} {} ({}/{} steps finished)",
                    state.as_str(),
                    self.finished,
                    self.total
                ));
            }
            EventKind::StepSkipped { .. } => self.finished += 1,
            EventKind::RunFinished { outcome, error, .. } if outcome.is_ready() => {
                let status = outcome.as_str().to_string();
                self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
            EventKind::RunFinished { outcome, error, .. } => {
                let status = match error {
                    Some(e) => format!("{} [{}]", outcome.as_str(), e.code),
                    None => outcome.as_str().to_string(),
                };
                self.send(&[NotifyState::Status(&status)]);
            }
            _ => {}
        }
    }
}
