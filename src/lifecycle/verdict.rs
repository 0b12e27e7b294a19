//! Giving a run's verdict. The sinks turn it into the status file, READY=1,
//! metrics and the report; before a "ready" verdict, what the verdict
//! promises is made true first: the journal is durable (or the next boot
//! would redo what this one did) and the readiness file is written. When
//! either cannot be, or the status file cannot be written, the run is not
//! ready: `state.unwritable`, exit 73. A metrics or trace delivery that
//! fails stays a warning; it never changes the verdict.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::readyfile;
use crate::engine::RunSummary;
use crate::engine::journal::Journal;
use crate::error::ErrorCode;
use crate::fsutil::BackgroundWriter;
use crate::telemetry::{ErrorInfo, EventKind, Level, Outcome, Reporter};

/// What a run ended as.
#[derive(Debug, Clone)]
pub struct Ending {
    pub outcome: Outcome,
    pub exit_code: i32,
    pub error: Option<ErrorInfo>,
    pub failed_step: Option<String>,
}

impl From<&RunSummary> for Ending {
    fn from(summary: &RunSummary) -> Ending {
        Ending {
            outcome: summary.outcome,
            exit_code: summary.exit_code,
            error: summary.error.clone(),
            failed_step: summary.failed_step.clone(),
        }
    }
}

impl Ending {
    /// A failed ending with `error`'s code and exit code.
    pub fn failed(error: ErrorInfo, failed_step: Option<String>) -> Ending {
        Ending {
            outcome: Outcome::Failed,
            exit_code: error.code.exit_code(),
            error: Some(error),
            failed_step,
        }
    }
}

/// The run's essential outputs, and who gives the verdict.
#[derive(Clone)]
pub struct Verdict {
    pub reporter: Arc<Reporter>,
    pub journal: Arc<Journal>,
    /// The status file's writer: its last write must have succeeded.
    pub status: Arc<BackgroundWriter>,
    pub ready_file: PathBuf,
    pub bootstrap_id: String,
    /// When bootplan started (the run's duration counts from here).
    pub started: Instant,
}

impl Verdict {
    /// Gives the verdict `ending` (or `state.unwritable` when a ready run's
    /// outputs cannot be made) and returns the exit code.
    pub fn give(&self, ending: Ending) -> i32 {
        let ending = if ending.outcome.is_ready() {
            self.make_ready(ending)
        } else {
            if let Err(err) = self.journal.flush() {
                self.reporter
                    .notice(Level::Error, format!("the journal was not saved: {err}"));
            }
            readyfile::remove(&self.ready_file);
            ending
        };
        let ready = ending.outcome.is_ready();
        self.reporter.emit(EventKind::RunFinished {
            outcome: ending.outcome,
            exit_code: ending.exit_code,
            error: ending.error,
            failed_step: ending.failed_step,
            duration: self.started.elapsed(),
        });
        match self.status.last_error() {
            Some(err) => {
                // Nobody could tell what this run did: it is not ready.
                if ready {
                    readyfile::remove(&self.ready_file);
                }
                crate::stdio::errln!(
                    "error: the status file could not be written: {err} [{}]",
                    ErrorCode::StateUnwritable
                );
                ErrorCode::StateUnwritable.exit_code()
            }
            None => ending.exit_code,
        }
    }

    /// The journal durable and the readiness file written, or the ending
    /// that says why they are not.
    fn make_ready(&self, ending: Ending) -> Ending {
        let problem = match self.journal.flush() {
            Err(err) => Some(format!(
                "the journal could not be saved, so the next run would not know what this one did: {err}"
            )),
            Ok(()) => readyfile::write(&self.ready_file, &self.bootstrap_id, ending.outcome)
                .err()
                .map(|err| format!("the readiness file could not be written: {err}")),
        };
        match problem {
            None => ending,
            Some(message) => Ending::failed(
                ErrorInfo {
                    code: ErrorCode::StateUnwritable,
                    message,
                },
                None,
            ),
        }
    }
}
