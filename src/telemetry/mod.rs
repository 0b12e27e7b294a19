//! Telemetry: the event type and its sinks.
//!
//! The engine emits [`EventKind`]s through one [`Reporter`]; the reporter
//! timestamps them, passes every free-text field through the redactor, and
//! hands them to each [`Sink`] in turn. A sink never sees an unredacted event.
//! To add an output (metrics, traces, ...): implement [`Sink`] and register it
//! where the CLI builds the reporter.

pub mod console;
pub mod event;
pub mod export;
pub mod history;
pub mod jsonlog;
pub mod metrics;
pub mod observe;
pub mod otlp;
pub mod queue;
pub mod status;
pub mod traces;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use event::{ErrorInfo, Event, EventKind, Level, Outcome, StepState, Stream, queue_place};

use crate::redact::Redactor;

/// How run logs are written: `auto` is the console view on a terminal and
/// JSON lines otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Receives every event of a run, in order.
pub trait Sink: Send {
    /// Handles one event. Must not block for long: it runs on the engine's path.
    fn event(&mut self, event: &Event);
    /// Called once after the last event; flush buffers here.
    fn finish(&mut self) {}
}

/// Fans events out to the sinks, after redaction.
pub struct Reporter {
    sinks: Mutex<Vec<Box<dyn Sink>>>,
    redactor: Arc<Redactor>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

impl Reporter {
    pub fn new(redactor: Arc<Redactor>) -> Reporter {
        Reporter {
            sinks: Mutex::new(Vec::new()),
            redactor,
        }
    }

    pub fn add_sink(&self, sink: Box<dyn Sink>) {
        self.lock().push(sink);
    }

    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    pub fn emit(&self, mut kind: EventKind) {
        kind.redact_with(&|text| self.redactor.redact_owned(text));
        let event = Event {
            at: SystemTime::now(),
            kind,
        };
        for sink in self.lock().iter_mut() {
            sink.event(&event);
        }
    }

    pub fn notice(&self, level: Level, message: impl Into<String>) {
        self.emit(EventKind::Notice {
            level,
            message: message.into(),
        });
    }

    pub fn finish(&self) {
        for sink in self.lock().iter_mut() {
            sink.finish();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Sink>>> {
        // A panicking sink must not silence the others for the rest of the run.
        self.sinks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
