//! JSON-lines logs: one object per event, for log shippers.

use std::borrow::Cow;
use std::io::Write;

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

/// A field value of a log line.
enum Field<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
}

/// The fields of one log line, written in key order (as a JSON map with
/// sorted keys would be) without building an intermediate JSON value: this
/// runs for every step transition.
struct Fields<'a>(Vec<(&'static str, Field<'a>)>);

impl<'a> Fields<'a> {
    /// Sets `key`, replacing an earlier value.
    fn put(&mut self, key: &'static str, value: Field<'a>) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn str(&mut self, key: &'static str, value: &'a str) {
        self.put(key, Field::Str(Cow::Borrowed(value)));
    }

    fn owned(&mut self, key: &'static str, value: String) {
        self.put(key, Field::Str(Cow::Owned(value)));
    }

    fn ms(&mut self, key: &'static str, value: std::time::Duration) {
        self.put(key, Field::U64(value.as_millis() as u64));
    }

    fn write(mut self, out: &mut Vec<u8>) {
        self.0.sort_unstable_by_key(|(key, _)| *key);
        out.push(b'{');
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, key);
            out.push(b':');
            match value {
                Field::Str(s) => write_str(out, s),
                Field::U64(n) => {
                    let _ = write!(out, "{n}");
                }
                Field::I64(n) => {
                    let _ = write!(out, "{n}");
                }
            }
        }
        out.push(b'}');
    }
}

/// A JSON string, escaped by serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends the JSON object for one event to `out`.
pub fn write_event(out: &mut Vec<u8>, event: &Event, bootstrap_id: &str) {
    let mut f = Fields(Vec::with_capacity(12));
    f.owned("ts", timestamp(event.at));
    f.str("level", event.kind.level().as_str());
    f.str("bootstrap_id", bootstrap_id);
    f.str("event", event.kind.name());
    if let Some(step) = event.kind.step() {
        f.str("step", step);
    }
    if let Some((trace_id, span_id)) = super::traces::current_ids() {
        f.owned("trace_id", trace_id);
        f.owned("span_id", span_id);
    }
    match &event.kind {
        EventKind::RunStarted {
            plan,
            plan_path,
            digest,
            steps,
            ..
        } => {
            f.str("plan", plan);
            f.str("plan_path", plan_path);
            f.str("digest", digest);
            f.put("step_count", Field::U64(steps.len() as u64));
            f.owned(
                "msg",
                format!("starting plan {plan} ({} steps)", steps.len()),
            );
        }
        EventKind::StepSkipped { reason, .. } => f.owned("msg", format!("skipped: {reason}")),
        EventKind::StepStarted { .. } => f.str("msg", "started"),
        EventKind::AttemptStarted { attempt, .. } => f.put("attempt", Field::U64(*attempt as u64)),
        EventKind::AttemptFailed {
            attempt,
            error,
            retry_in,
            ..
        } => {
            f.put("attempt", Field::U64(*attempt as u64));
            f.str("code", error.code.as_str());
            if let Some(d) = retry_in {
                f.ms("retry_in_ms", *d);
            }
            f.str("msg", &error.message);
        }
        EventKind::Output { stream, line, .. } => {
            f.str("stream", stream.as_str());
            f.str("msg", line);
        }
        EventKind::Waiting {
            target, elapsed, ..
        } => {
            f.ms("duration_ms", *elapsed);
            f.owned(
                "msg",
                format!("still waiting for {target} after {}s", elapsed.as_secs()),
            );
        }
        EventKind::StartSplay { delay } => {
            f.ms("duration_ms", *delay);
            f.owned(
                "msg",
                format!(
                    "start splay: the first step's work waits {:.1}s",
                    delay.as_secs_f64()
                ),
            );
        }
        EventKind::Queued {
            semaphore,
            position,
            slots,
            elapsed,
            ..
        } => {
            f.str("semaphore", semaphore);
            f.put("position", Field::U64(u64::from(*position)));
            f.ms("duration_ms", *elapsed);
            f.owned(
                "msg",
                format!(
                    "waiting for {} after {}s",
                    super::event::queue_place(semaphore, *position, *slots),
                    elapsed.as_secs()
                ),
            );
        }
        EventKind::SlotAcquired {
            semaphore,
            waited,
            throttled,
            ..
        } => {
            f.str("semaphore", semaphore);
            f.ms("duration_ms", *waited);
            f.owned(
                "msg",
                super::event::slot_message(semaphore, *waited, *throttled),
            );
        }
        EventKind::StepFinished {
            state,
            attempts,
            duration,
            error,
            ..
        } => {
            f.str("state", state.as_str());
            f.put("attempt", Field::U64(*attempts as u64));
            f.ms("duration_ms", *duration);
            if let Some(e) = error {
                f.str("code", e.code.as_str());
                f.str("msg", &e.message);
            }
        }
        EventKind::StepNotRun { reason, .. } => f.owned("msg", format!("not run: {reason}")),
        EventKind::UndoFinished { error, .. } => match error {
            Some(e) => {
                f.str("code", e.code.as_str());
                f.owned("msg", format!("undo failed: {}", e.message));
            }
            None => f.str("msg", "undo done"),
        },
        EventKind::Notice { message, .. } => f.str("msg", message),
        EventKind::Health { problems } => match problems.as_slice() {
            [] => f.str("msg", "healthy again"),
            _ => f.owned("msg", format!("degraded: {}", problems.join("; "))),
        },
        EventKind::RunFinished {
            outcome,
            exit_code,
            error,
            failed_step,
            duration,
        } => {
            f.str("outcome", outcome.as_str());
            f.put("exit_code", Field::I64(i64::from(*exit_code)));
            f.ms("duration_ms", *duration);
            if let Some(step) = failed_step {
                f.str("step", step);
            }
            if let Some(e) = error {
                f.str("code", e.code.as_str());
                f.str("msg", &e.message);
            }
        }
    }
    f.write(out);
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
        write_event(&mut self.line, event, &self.bootstrap_id);
        self.line.push(b'\n');
        // A closed stdout must not fail the boot; the status file still records it.
        let _ = self.out.write_all(&self.line);
    }

    fn finish(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::error::ErrorCode;
    use crate::telemetry::{ErrorInfo, StepState, Stream};

    fn line(kind: EventKind) -> String {
        let mut sink = JsonLogSink::new(Vec::new(), Level::Debug);
        sink.bootstrap_id = "b-1".into();
        sink.event(&Event {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
            kind,
        });
        String::from_utf8(sink.out).unwrap()
    }

    /// The keys in the order they appear in the line.
    fn keys(line: &str) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut keys: Vec<(usize, String)> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (line.find(&format!("\"{k}\":")).unwrap(), k.clone()))
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    #[test]
    fn a_failed_step_is_one_json_line_with_sorted_keys() {
        let text = line(EventKind::StepFinished {
            step: "migrate".into(),
            state: StepState::Failed,
            attempts: 3,
            duration: Duration::from_millis(1234),
            error: Some(ErrorInfo {
                code: ErrorCode::StepExitNonzero,
                message: "`app` exited with \"status\" 2\n".into(),
            }),
        });
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["ts"], "1970-01-01T00:00:01.500Z");
        assert_eq!(value["level"], "error");
        assert_eq!(value["bootstrap_id"], "b-1");
        assert_eq!(value["event"], "step_finished");
        assert_eq!(value["step"], "migrate");
        assert_eq!(value["state"], "failed");
        assert_eq!(value["attempt"], 3);
        assert_eq!(value["duration_ms"], 1234);
        assert_eq!(value["code"], "step.exit_nonzero");
        assert_eq!(value["msg"], "`app` exited with \"status\" 2\n");
        let keys = keys(&text);
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn output_lines_and_run_results_carry_their_fields() {
        let text = line(EventKind::Output {
            step: "s".into(),
            stream: Stream::Stderr,
            line: "tab\there \u{1b}[0m".into(),
        });
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["stream"], "stderr");
        assert_eq!(value["msg"], "tab\there \u{1b}[0m");
        let text = line(EventKind::RunFinished {
            outcome: crate::telemetry::Outcome::Failed,
            exit_code: -1,
            error: None,
            failed_step: Some("db".into()),
            duration: Duration::from_secs(2),
        });
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["exit_code"], -1);
        assert_eq!(value["step"], "db");
        assert_eq!(value["duration_ms"], 2000);
        assert_eq!(keys(&text).iter().filter(|k| *k == "step").count(), 1);
    }
}
