//! cloud-init compatibility: the status files tools that wait on
//! `cloud-init status --wait` read (Packer, multipass, image builds), in
//! cloud-init's own formats, and the reading side for bootplan's
//! `cloud-init status` entry point.
//!
//! - `/run/cloud-init/status.json`: `v1` with the four stages cloud-init
//!   reports (`init-local`, `init`, `modules-config`, `modules-final`),
//!   each `{start, finished, errors, recoverable_errors}`, the datasource
//!   and the current `stage` (set while the run lasts, `null` after it);
//! - `/run/cloud-init/result.json`: written when the run has finished
//!   (cloud-init's "done" marker), `{v1: {datasource, errors}}`;
//! - `/var/lib/cloud/instance/boot-finished`: uptime, time and version.
//!
//! A failed run puts its error code and message in `modules-final.errors`
//! (cloud-init: status `error`); a degraded one (a refresh or check
//! failing while supervising) in `recoverable_errors`, as cloud-init 23.4
//! and later report it (status `done`, extended status `degraded done`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::telemetry::{Event, EventKind, Outcome, Sink};

/// The stages cloud-init writes into status.json, in boot order.
const STAGES: [&str; 4] = ["init-local", "init", "modules-config", "modules-final"];

/// Where cloud-init keeps its files (under `/`, or a root for tests of
/// the reading side).
#[derive(Debug, Clone)]
pub struct CloudInitPaths {
    pub run_dir: PathBuf,
    pub instance_dir: PathBuf,
}

impl Default for CloudInitPaths {
    fn default() -> CloudInitPaths {
        CloudInitPaths {
            run_dir: PathBuf::from("/run/cloud-init"),
            instance_dir: PathBuf::from("/var/lib/cloud/instance"),
        }
    }
}

impl CloudInitPaths {
    fn status(&self) -> PathBuf {
        self.run_dir.join("status.json")
    }
    fn result(&self) -> PathBuf {
        self.run_dir.join("result.json")
    }
    fn boot_finished(&self) -> PathBuf {
        self.instance_dir.join("boot-finished")
    }
}

/// Writes cloud-init's status files from the run's (redacted) events.
pub struct CloudInitSink {
    paths: CloudInitPaths,
    datasource: String,
    started: f64,
    finished: Option<f64>,
    errors: Vec<String>,
    recoverable: Vec<String>,
    /// Set once a write failed (said once, at warn, on stderr).
    failed: bool,
}

impl CloudInitSink {
    pub fn new(paths: CloudInitPaths) -> CloudInitSink {
        CloudInitSink {
            paths,
            datasource: String::new(),
            started: 0.0,
            finished: None,
            errors: Vec::new(),
            recoverable: Vec::new(),
            failed: false,
        }
    }

    /// The `v1` document of status.json as it stands.
    fn status_doc(&self) -> Value {
        let mut v1 = serde_json::Map::new();
        for stage in STAGES {
            let last = stage == "modules-final";
            let mut recoverable = serde_json::Map::new();
            if last && !self.recoverable.is_empty() {
                recoverable.insert("WARNING".into(), json!(self.recoverable));
            }
            v1.insert(
                stage.into(),
                json!({
                    "start": self.started,
                    "finished": self.finished,
                    "errors": if last { self.errors.clone() } else { Vec::new() },
                    "recoverable_errors": recoverable,
                }),
            );
        }
        v1.insert("datasource".into(), json!(self.datasource));
        v1.insert(
            "stage".into(),
            match self.finished {
                None => json!("modules-final"),
                Some(_) => Value::Null,
            },
        );
        v1.insert("bootplan_pid".into(), json!(std::process::id()));
        json!({ "v1": v1 })
    }

    fn write(&mut self, path: &Path, value: &Value, durable: bool) {
        let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
        bytes.push(b'\n');
        self.write_bytes(path, &bytes, durable);
    }

    fn write_bytes(&mut self, path: &Path, bytes: &[u8], durable: bool) {
        let written = match durable {
            true => crate::fsutil::write_atomic(path, bytes, 0o644),
            false => crate::fsutil::replace_file(path, bytes, 0o644),
        };
        if let Err(err) = written
            && !self.failed
        {
            self.failed = true;
            crate::stdio::errln!(
                "bootplan: warning: cannot write cloud-init's status file {}: {err}",
                path.display()
            );
        }
    }

    fn started(&mut self, at: SystemTime, plan_path: &str) {
        self.started = unix_secs(at);
        self.datasource = format!("DataSourceBootplan [plan={plan_path}]");
        // A result from an earlier boot or run would read as "done".
        let _ = std::fs::remove_file(self.paths.result());
        let doc = self.status_doc();
        self.write(&self.paths.status(), &doc, false);
    }

    fn finished(&mut self, at: SystemTime, outcome: Outcome, error: Option<String>) {
        self.finished = Some(unix_secs(at));
        if outcome != Outcome::Ready && outcome != Outcome::Degraded {
            let why =
                error.unwrap_or_else(|| format!("bootplan: the run ended {}", outcome.as_str()));
            self.errors = vec![why];
        }
        let status = self.status_doc();
        self.write(&self.paths.status(), &status, true);
        let result = self.result_doc();
        self.write(&self.paths.result(), &result, true);
        let line = format!(
            "{} - {} - v. bootplan {}\n",
            uptime().unwrap_or_default(),
            httpdate::fmt_http_date(at),
            env!("CARGO_PKG_VERSION")
        );
        self.write_bytes(&self.paths.boot_finished(), line.as_bytes(), true);
    }

    fn result_doc(&self) -> Value {
        let mut recoverable = serde_json::Map::new();
        if !self.recoverable.is_empty() {
            recoverable.insert("WARNING".into(), json!(self.recoverable));
        }
        json!({ "v1": {
            "datasource": self.datasource,
            "errors": self.errors,
            "recoverable_errors": recoverable,
        }})
    }

    /// A change of health after the verdict (while supervising).
    fn health(&mut self, problems: &[String]) {
        if self.finished.is_none() || self.recoverable == problems {
            return;
        }
        self.recoverable = problems.to_vec();
        let status = self.status_doc();
        self.write(&self.paths.status(), &status, false);
        let result = self.result_doc();
        self.write(&self.paths.result(), &result, false);
    }
}

/// A plan that could not be loaded: cloud-init's files say `error`, so a
/// caller waiting on `cloud-init status --wait` does not wait for ever.
pub fn record_invalid(paths: CloudInitPaths, plan_path: &Path, message: String) {
    let mut sink = CloudInitSink::new(paths);
    let now = SystemTime::now();
    sink.started(now, &plan_path.display().to_string());
    sink.finished(now, Outcome::Invalid, Some(message));
}

impl Sink for CloudInitSink {
    fn event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { plan_path, .. } => self.started(event.at, plan_path),
            EventKind::RunFinished { outcome, error, .. } => {
                let error = error
                    .as_ref()
                    .map(|e| format!("bootplan: {} [{}]", e.message, e.code));
                self.finished(event.at, *outcome, error);
            }
            EventKind::Health { problems } => self.health(problems),
            _ => {}
        }
    }
}

fn unix_secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}

/// The machine's uptime in seconds, as /proc/uptime gives it.
fn uptime() -> Option<String> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next().map(str::to_string)
}

/// What `cloud-init status` says, read from the status files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    NotRun,
    Running,
    Done,
    /// Done, with recoverable errors (cloud-init's `degraded done`).
    Degraded,
    Error,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::NotRun => "not run",
            State::Running => "running",
            State::Done | State::Degraded => "done",
            State::Error => "error",
        }
    }

    /// cloud-init's exit codes: 1 on error, 2 on recoverable errors, else 0.
    pub fn exit_code(&self) -> i32 {
        match self {
            State::Error => 1,
            State::Degraded => 2,
            _ => 0,
        }
    }

    fn waiting(&self) -> bool {
        matches!(self, State::NotRun | State::Running)
    }
}

/// The status, read as cloud-init's `status` reads it.
#[derive(Debug, Clone)]
pub struct Details {
    pub state: State,
    pub detail: String,
    pub errors: Vec<String>,
    pub recoverable: Vec<String>,
    pub datasource: String,
    pub last_update: Option<f64>,
}

impl Details {
    /// `cloud-init status --format json`, with the keys of cloud-init 22.4
    /// and the extended ones of later releases.
    pub fn to_json(&self) -> Value {
        let last_update = self.last_update.map(format_time).unwrap_or_default();
        let extended = match self.state {
            State::Degraded => "degraded done".to_string(),
            ref other => other.as_str().to_string(),
        };
        let mut recoverable = serde_json::Map::new();
        if !self.recoverable.is_empty() {
            recoverable.insert("WARNING".into(), json!(self.recoverable));
        }
        let v1 = json!({
            "boot_status_code": "enabled-by-sysvinit",
            "datasource": self.datasource,
            "detail": self.detail,
            "errors": self.errors,
            "extended_status": extended,
            "last_update": last_update,
            "recoverable_errors": recoverable,
            "status": self.state.as_str(),
        });
        let mut doc = v1.clone();
        doc["schemas"] = json!({ "1": v1 });
        doc["_schema_version"] = json!("1");
        doc
    }

    /// `cloud-init status` (and `--long`) as text.
    pub fn to_text(&self, long: bool) -> String {
        let mut out = format!("status: {}\n", self.state.as_str());
        if long {
            if self.state == State::Degraded {
                out.push_str("extended_status: degraded done\n");
            }
            out.push_str("boot_status_code: enabled-by-sysvinit\n");
            if let Some(at) = self.last_update {
                out.push_str(&format!("last_update: {}\n", format_time(at)));
            }
            out.push_str(&format!("detail:\n{}\n", self.detail));
            for warning in &self.recoverable {
                out.push_str(&format!("recoverable error: {warning}\n"));
            }
        }
        out
    }
}

/// cloud-init's time format, `%a, %d %b %Y %H:%M:%S %z` in UTC.
fn format_time(secs: f64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis((secs.max(0.0) * 1000.0) as u64);
    httpdate::fmt_http_date(at).replace(" GMT", " +0000")
}

/// Reads the status files the way cloud-init 22.4's `status` does: no
/// status.json is "not run"; status.json without result.json, a stage
/// set, or a stage started and not finished is "running"; errors in any
/// stage are "error". A run whose bootplan is gone is an error too, where
/// cloud-init would say "running" for ever.
pub fn read(paths: &CloudInitPaths) -> Details {
    let mut details = Details {
        state: State::NotRun,
        detail: "bootplan has not run yet".into(),
        errors: Vec::new(),
        recoverable: Vec::new(),
        datasource: String::new(),
        last_update: None,
    };
    let Ok(text) = std::fs::read_to_string(paths.status()) else {
        return details;
    };
    let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let v1 = doc
        .get("v1")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let done_marker = paths.result().exists();
    let mut running = !done_marker;
    let mut latest = 0.0_f64;
    for (key, value) in &v1 {
        match key.as_str() {
            "stage" => {
                if let Some(stage) = value.as_str() {
                    running = true;
                    details.detail = format!("Running in stage: {stage}");
                }
            }
            "datasource" => {
                let text = value.as_str().unwrap_or_default();
                let (ds, _) = text.split_once(' ').unwrap_or((text, ""));
                details.datasource = ds.to_lowercase().replace("datasource", "");
                if !running {
                    details.detail = text.to_string();
                }
            }
            _ => {
                let Some(stage) = value.as_object() else {
                    continue;
                };
                details.errors.extend(strings(stage.get("errors")));
                if let Some(Value::Object(by_level)) = stage.get("recoverable_errors") {
                    for messages in by_level.values() {
                        details.recoverable.extend(strings(Some(messages)));
                    }
                }
                let start = stage.get("start").and_then(Value::as_f64).unwrap_or(0.0);
                let finished = stage.get("finished").and_then(Value::as_f64).unwrap_or(0.0);
                if finished == 0.0 && start != 0.0 {
                    running = true;
                }
                latest = latest.max(start).max(finished);
            }
        }
    }
    if latest > 0.0 {
        details.last_update = Some(latest);
    }
    let pid = v1.get("bootplan_pid").and_then(Value::as_u64);
    if running && pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
        details
            .errors
            .push("bootplan: the run's bootplan is gone before it finished [run.gone]".into());
    }
    details.state = if !details.errors.is_empty() {
        details.detail = details.errors.join("\n");
        State::Error
    } else if running {
        State::Running
    } else if !details.recoverable.is_empty() {
        State::Degraded
    } else {
        State::Done
    };
    details
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (polling every quarter second, as cloud-init does) until the run
/// is no longer running, or `timeout` has passed; `tick` is called on
/// every poll (cloud-init prints a dot). The last reading, and whether it
/// is final.
pub fn wait(paths: &CloudInitPaths, timeout: Duration, mut tick: impl FnMut()) -> (Details, bool) {
    let until = std::time::Instant::now() + timeout;
    loop {
        let details = read(paths);
        if !details.state.waiting() {
            return (details, true);
        }
        if std::time::Instant::now() >= until {
            return (details, false);
        }
        tick();
        std::thread::sleep(Duration::from_millis(250).min(until - std::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> CloudInitPaths {
        CloudInitPaths {
            run_dir: dir.join("run"),
            instance_dir: dir.join("instance"),
        }
    }

    fn event(kind: EventKind) -> Event {
        Event {
            at: SystemTime::now(),
            kind,
        }
    }

    fn started() -> EventKind {
        EventKind::RunStarted {
            bootstrap_id: "b".into(),
            plan: "p".into(),
            plan_path: "/etc/bootplan/plan.yaml".into(),
            digest: String::new(),
            boot_id: String::new(),
            steps: Vec::new(),
        }
    }

    fn finished(outcome: Outcome, error: Option<crate::telemetry::ErrorInfo>) -> EventKind {
        EventKind::RunFinished {
            outcome,
            exit_code: 0,
            error,
            failed_step: None,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn a_run_reads_as_running_then_done_and_a_failed_one_as_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        assert_eq!(read(&paths).state, State::NotRun);
        let mut sink = CloudInitSink::new(paths.clone());
        sink.event(&event(started()));
        assert_eq!(read(&paths).state, State::Running);
        sink.event(&event(finished(Outcome::Ready, None)));
        let done = read(&paths);
        assert_eq!(
            (done.state.clone(), done.state.exit_code()),
            (State::Done, 0)
        );
        assert_eq!(done.datasource, "bootplan");
        assert!(
            std::fs::read_to_string(paths.boot_finished())
                .unwrap()
                .contains("v. bootplan")
        );

        // The next run starts from "running" again, and fails.
        let mut sink = CloudInitSink::new(paths.clone());
        sink.event(&event(started()));
        assert_eq!(read(&paths).state, State::Running);
        let error = crate::telemetry::ErrorInfo {
            code: crate::error::ErrorCode::StepExitNonzero,
            message: "step `x` exited with 3".into(),
        };
        sink.event(&event(finished(Outcome::Failed, Some(error))));
        let failed = read(&paths);
        assert_eq!(
            (failed.state.clone(), failed.state.exit_code()),
            (State::Error, 1)
        );
        assert!(
            failed.detail.contains("step.exit_nonzero"),
            "{}",
            failed.detail
        );
    }

    #[test]
    fn degraded_health_after_the_verdict_is_a_recoverable_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let mut sink = CloudInitSink::new(paths.clone());
        sink.event(&event(started()));
        sink.event(&event(finished(Outcome::Ready, None)));
        sink.event(&event(EventKind::Health {
            problems: vec!["secret `db` refresh failing".into()],
        }));
        let read_back = read(&paths);
        assert_eq!(read_back.state, State::Degraded);
        assert_eq!(read_back.state.exit_code(), 2);
        assert_eq!(read_back.to_json()["extended_status"], "degraded done");
        sink.event(&event(EventKind::Health { problems: vec![] }));
        assert_eq!(read(&paths).state, State::Done);
    }

    #[test]
    fn waiting_gives_up_at_the_timeout_and_a_gone_writer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(dir.path());
        let mut sink = CloudInitSink::new(paths.clone());
        sink.event(&event(started()));
        let mut ticks = 0;
        let (details, last) = wait(&paths, Duration::from_millis(300), || ticks += 1);
        assert_eq!((details.state, last), (State::Running, false));
        assert!(ticks >= 1);
        // A writer that is gone (a pid that cannot exist) never finishes.
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(paths.status()).unwrap()).unwrap();
        doc["v1"]["bootplan_pid"] = json!(u32::MAX);
        std::fs::write(paths.status(), doc.to_string()).unwrap();
        let (details, last) = wait(&paths, Duration::from_secs(5), || {});
        assert_eq!((details.state, last), (State::Error, true));
        assert!(details.detail.contains("run.gone"));
    }
}
