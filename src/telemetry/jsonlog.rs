//! JSON-lines logs: one object per event, for log shippers.

use std::io::Write;

use serde_json::{Map, Value, json};

use super::{Event, EventKind, Level, Sink, timestamp};

/// Writes each event at or above `level` as one JSON line.
pub struct JsonLogSink<W: Write + Send> {
    out: W,
    level: Level,
    bootstrap_id: String,
    /// One line is built here, then written with one call.
    line: Vec<u8>,
}

impl<W: Write + Send> JsonLogSink<W> {
    pub fn new(out: W, level: Level) -> Self {
        JsonLogSink {
            out,
            level,
            bootstrap_id: String::new(),
            line: Vec::with_capacity(512),
        }
    }
}

/// The JSON object for one event.
pub fn event_json(event: &Event, bootstrap_id: &str) -> Value {
    let mut obj = Map::new();
    obj.insert("ts".into(), json!(timestamp(event.at)));
    obj.insert("level".into(), json!(event.kind.level().as_str()));
    obj.insert("bootstrap_id".into(), json!(bootstrap_id));
    obj.insert("event".into(), json!(event.kind.name()));
    if let Some(step) = event.kind.step() {
        obj.insert("step".into(), json!(step));
    }
    if let Some((trace_id, span_id)) = super::traces::current_ids() {
        obj.insert("trace_id".into(), json!(trace_id));
        obj.insert("span_id".into(), json!(span_id));
    }
    let mut put = |k: &str, v: Value| {
        obj.insert(k.into(), v);
    };
    match &event.kind {
        EventKind::RunStarted {
            plan,
            plan_path,
            digest,
            steps,
            ..
        } => {
            put("plan", json!(plan));
            put("plan_path", json!(plan_path));
            put("digest", json!(digest));
            put("step_count", json!(steps.len()));
            put(
                "msg",
                json!(format!("starting plan {plan} ({} steps)", steps.len())),
            );
        }
        EventKind::StepSkipped { reason, .. } => put("msg", json!(format!("skipped: {reason}"))),
        EventKind::StepStarted { .. } => put("msg", json!("started")),
        EventKind::AttemptStarted { attempt, .. } => put("attempt", json!(attempt)),
        EventKind::AttemptFailed {
            attempt,
            error,
            retry_in,
            ..
        } => {
            put("attempt", json!(attempt));
            put("code", json!(error.code.as_str()));
            if let Some(d) = retry_in {
                put("retry_in_ms", json!(d.as_millis() as u64));
            }
            put("msg", json!(error.message));
        }
        EventKind::Output { stream, line, .. } => {
            put("stream", json!(stream.as_str()));
            put("msg", json!(line));
        }
        EventKind::Waiting {
            target, elapsed, ..
        } => {
            put("duration_ms", json!(elapsed.as_millis() as u64));
            put(
                "msg",
                json!(format!(
                    "still waiting for {target} after {}s",
                    elapsed.as_secs()
                )),
            );
        }
        EventKind::StepFinished {
            state,
            attempts,
            duration,
            error,
            ..
        } => {
            put("state", json!(state.as_str()));
            put("attempt", json!(attempts));
            put("duration_ms", json!(duration.as_millis() as u64));
            if let Some(e) = error {
                put("code", json!(e.code.as_str()));
                put("msg", json!(e.message));
            }
        }
        EventKind::StepNotRun { reason, .. } => put("msg", json!(format!("not run: {reason}"))),
        EventKind::UndoFinished { error, .. } => match error {
            Some(e) => {
                put("code", json!(e.code.as_str()));
                put("msg", json!(format!("undo failed: {}", e.message)));
            }
            None => put("msg", json!("undo done")),
        },
        EventKind::Notice { message, .. } => put("msg", json!(message)),
        EventKind::RunFinished {
            outcome,
            exit_code,
            error,
            failed_step,
            duration,
        } => {
            put("outcome", json!(outcome.as_str()));
            put("exit_code", json!(exit_code));
            put("duration_ms", json!(duration.as_millis() as u64));
            if let Some(step) = failed_step {
                put("step", json!(step));
            }
            if let Some(e) = error {
                put("code", json!(e.code.as_str()));
                put("msg", json!(e.message));
            }
        }
    }
    Value::Object(obj)
}

impl<W: Write + Send> Sink for JsonLogSink<W> {
    fn event(&mut self, event: &Event) {
        if let EventKind::RunStarted { bootstrap_id, .. } = &event.kind {
            self.bootstrap_id = bootstrap_id.clone();
        }
        if event.kind.level() > self.level {
            return;
        }
        self.line.clear();
        if serde_json::to_writer(&mut self.line, &event_json(event, &self.bootstrap_id)).is_err() {
            return;
        }
        self.line.push(b'\n');
        // A closed stdout must not fail the boot; the status file still records it.
        let _ = self.out.write_all(&self.line);
    }

    fn finish(&mut self) {
        let _ = self.out.flush();
    }
}
