//! Prometheus metrics: a [`MetricsSink`] that derives every
//! run metric from events, and the process-wide recorder that also catches
//! what other modules record through the `metrics` facade macros (secret
//! fetch latency and errors, redactions).
//!
//! Labels are bounded by construction: `plan` (a global label, the plan
//! name), `outcome` (a fixed set), `step` (the plan's step names), `code`
//! (the error-code table), `backend` (the secret backend kinds). Never an
//! instance id, a bootstrap id or free text.
//!
//! To add a metric: a name constant here, an entry in `METRICS` (a test
//! holds it against the docs' metrics table), its buckets in [`install`] if
//! it is a histogram, and the code that records it.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{Event, EventKind, Outcome, Sink, StepState};

pub const RUNS_TOTAL: &str = "bootplan_runs_total";
pub const TIME_TO_READY: &str = "bootplan_time_to_ready_seconds";
pub const BOOT_TO_READY: &str = "bootplan_boot_to_ready_seconds";
pub const STEP_DURATION: &str = "bootplan_step_duration_seconds";
pub const STEP_RETRIES: &str = "bootplan_step_retries_total";
pub const SERVICE_READY: &str = "bootplan_service_ready_seconds";
pub const SERVICE_RESTARTS: &str = "bootplan_service_restarts_total";
pub const PLAN_VALIDATION_FAILURES: &str = "bootplan_plan_validation_failures_total";
pub const ERRORS_TOTAL: &str = "bootplan_errors_total";
pub const READY: &str = "bootplan_ready";
pub const LAST_RUN_TIMESTAMP: &str = "bootplan_last_run_timestamp_seconds";
pub const SECRET_FETCH_DURATION: &str = "bootplan_secret_fetch_duration_seconds";
pub const SECRET_FETCH_ERRORS: &str = "bootplan_secret_fetch_errors_total";
pub const SECRET_REDACTIONS: &str = "bootplan_secret_redactions_total";
pub const DEPENDENCY_RETRIES: &str = crate::retry::RETRIES_METRIC;
pub const LOG_LINES_DROPPED: &str = "bootplan_log_lines_dropped_total";
pub const SECRET_ROTATIONS: &str = "bootplan_secret_rotations_total";
pub const SECRET_EXPIRY: &str = "bootplan_secret_expiry_timestamp_seconds";
pub const THROTTLE_WAIT: &str = "bootplan_throttle_wait_seconds";
pub const PLATFORM_SIGNALS: &str = "bootplan_platform_signals_total";
pub const DOWNLOAD_BYTES: &str = "bootplan_download_bytes_total";
pub const DOWNLOAD_DURATION: &str = "bootplan_download_duration_seconds";
pub const DOWNLOAD_CACHE_HITS: &str = "bootplan_download_cache_hits_total";
pub const DOWNLOAD_CACHE_MISSES: &str = "bootplan_download_cache_misses_total";

/// Every metric family bootplan exports: (name, type, labels besides
/// `plan`), held against the metrics table of `docs/plan.md` by a test.
#[cfg(test)]
const METRICS: &[(&str, &str, &[&str])] = &[
    (RUNS_TOTAL, "counter", &["outcome"]),
    (TIME_TO_READY, "histogram", &[]),
    (BOOT_TO_READY, "histogram", &[]),
    (STEP_DURATION, "histogram", &["step", "outcome"]),
    (STEP_RETRIES, "counter", &["step"]),
    (SERVICE_READY, "histogram", &["step"]),
    (SERVICE_RESTARTS, "counter", &["step"]),
    (PLAN_VALIDATION_FAILURES, "counter", &[]),
    (ERRORS_TOTAL, "counter", &["code"]),
    (READY, "gauge", &[]),
    (LAST_RUN_TIMESTAMP, "gauge", &[]),
    (SECRET_FETCH_DURATION, "histogram", &["backend"]),
    (SECRET_FETCH_ERRORS, "counter", &["backend", "code"]),
    (SECRET_REDACTIONS, "counter", &[]),
    (DEPENDENCY_RETRIES, "counter", &["dependency"]),
    (LOG_LINES_DROPPED, "counter", &[]),
    (SECRET_ROTATIONS, "counter", &["secret", "outcome"]),
    (SECRET_EXPIRY, "gauge", &["secret"]),
    (THROTTLE_WAIT, "histogram", &["semaphore"]),
    (DOWNLOAD_BYTES, "counter", &["step", "source"]),
    (DOWNLOAD_DURATION, "histogram", &["step"]),
    (DOWNLOAD_CACHE_HITS, "counter", &["step"]),
    (DOWNLOAD_CACHE_MISSES, "counter", &["step"]),
];

/// Run outcomes that get a `bootplan_runs_total` series from the start (at
/// 0), so the first real increment is visible to `rate()`.
const FINAL_OUTCOMES: &[Outcome] = &[
    Outcome::Ready,
    Outcome::Degraded,
    Outcome::Failed,
    Outcome::DeadlineExceeded,
    Outcome::Interrupted,
    Outcome::Invalid,
];

const READY_BUCKETS: &[f64] = &[
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
const STEP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const FETCH_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) with `plan` as a global label,
/// and returns the handle that renders the exposition text. Must run before
/// the first step so that facade-recorded metrics land too. `None` if another
/// recorder was installed first (then nothing can be exported).
pub fn install(plan: &str) -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = builder(plan).ok()?.install_recorder().ok()?;
            describe();
            preregister();
            Some(handle)
        })
        .clone()
}

fn builder(plan: &str) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .add_global_label("plan", plan)
        .set_buckets(STEP_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TIME_TO_READY.into()), READY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BOOT_TO_READY.into()), READY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SERVICE_READY.into()), READY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(SECRET_FETCH_DURATION.into()), FETCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(THROTTLE_WAIT.into()), READY_BUCKETS)
}

fn describe() {
    describe_counter!(RUNS_TOTAL, "Finished bootplan runs, by outcome.");
    describe_histogram!(
        TIME_TO_READY,
        Unit::Seconds,
        "Time from bootplan's process start to ready."
    );
    describe_histogram!(
        BOOT_TO_READY,
        Unit::Seconds,
        "Time from kernel boot (CLOCK_BOOTTIME) to ready; not recorded inside containers."
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Step run time (all attempts and backoff), by step and final state."
    );
    describe_counter!(STEP_RETRIES, "Step attempts that failed and were retried.");
    describe_counter!(
        DEPENDENCY_RETRIES,
        "Failed requests to a dependency (vault, aws, metadata, etcd, report) that were retried."
    );
    describe_counter!(
        SECRET_ROTATIONS,
        "Refreshes of secrets while supervising, by outcome: changed, unchanged, failed, check_failed."
    );
    describe_gauge!(
        SECRET_EXPIRY,
        metrics::Unit::Seconds,
        "When the secret's current value ends (a certificate's notAfter, a lease's end), Unix time."
    );
    describe_counter!(
        DOWNLOAD_BYTES,
        "Bytes fetched by download steps, by step and source scheme (https, http, file, data)."
    );
    describe_histogram!(
        DOWNLOAD_DURATION,
        Unit::Seconds,
        "Time a download step's attempt spent fetching and placing its content."
    );
    describe_counter!(
        DOWNLOAD_CACHE_HITS,
        "Download steps served from the download cache, without the network."
    );
    describe_counter!(
        DOWNLOAD_CACHE_MISSES,
        "Download steps whose content was not in the download cache."
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log reader did not keep up."
    );
    describe_histogram!(
        SERVICE_READY,
        Unit::Seconds,
        "Time from a service step's start to its readiness check passing."
    );
    describe_counter!(
        SERVICE_RESTARTS,
        "Times a service was restarted by its restart policy."
    );
    describe_counter!(
        PLAN_VALIDATION_FAILURES,
        "Runs refused because the plan was invalid or unreadable."
    );
    describe_counter!(
        ERRORS_TOTAL,
        "Errors reported (failed attempts, failed steps, failed runs), by error code."
    );
    describe_gauge!(
        READY,
        "1 when the last run reached ready (or degraded), else 0."
    );
    describe_gauge!(
        LAST_RUN_TIMESTAMP,
        Unit::Seconds,
        "Unix time the last run finished."
    );
    describe_histogram!(
        SECRET_FETCH_DURATION,
        Unit::Seconds,
        "Secret fetch latency, by backend."
    );
    describe_counter!(
        SECRET_FETCH_ERRORS,
        "Failed secret fetches, by backend and error code."
    );
    describe_histogram!(
        THROTTLE_WAIT,
        Unit::Seconds,
        "Time throttled steps queued for a slot of a fleet-wide semaphore, by semaphore."
    );
    describe_counter!(
        PLATFORM_SIGNALS,
        "Platform signals of the verdict (cloudformation, autoscaling, azure, gce_guest_attributes), by result: sent, failed."
    );
    describe_counter!(
        SECRET_REDACTIONS,
        "Secret values removed from an output channel (leaks that were stopped)."
    );
}

fn preregister() {
    for outcome in FINAL_OUTCOMES {
        counter!(RUNS_TOTAL, "outcome" => outcome.as_str()).increment(0);
    }
    counter!(PLAN_VALIDATION_FAILURES).increment(0);
    counter!(SECRET_REDACTIONS).increment(0);
    gauge!(READY).set(0.0);
}

/// Counts one platform signal of the verdict, delivered or not.
pub fn record_platform_signal(platform: &'static str, sent: bool) {
    let result = if sent { "sent" } else { "failed" };
    counter!(PLATFORM_SIGNALS, "platform" => platform, "result" => result).increment(1);
}

/// Renders the exposition text (Prometheus text format 0.0.4), after upkeep.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// Counts a run that failed before its first step (e.g. an unwritable
/// state directory), so the delivered metrics do not say "still running".
pub fn record_refused_run(code: crate::error::ErrorCode) {
    counter!(RUNS_TOTAL, "outcome" => Outcome::Failed.as_str()).increment(1);
    counter!(ERRORS_TOTAL, "code" => code.as_str()).increment(1);
    gauge!(READY).set(0.0);
    gauge!(LAST_RUN_TIMESTAMP).set(unix_seconds(SystemTime::now()));
}

/// Counts a run refused for an invalid or unreadable plan.
pub fn record_invalid_plan() {
    counter!(PLAN_VALIDATION_FAILURES).increment(1);
    counter!(RUNS_TOTAL, "outcome" => Outcome::Invalid.as_str()).increment(1);
    counter!(ERRORS_TOTAL, "code" => crate::error::ErrorCode::PlanInvalid.as_str()).increment(1);
    gauge!(READY).set(0.0);
    gauge!(LAST_RUN_TIMESTAMP).set(unix_seconds(SystemTime::now()));
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds since kernel boot (CLOCK_BOOTTIME), where that means this
/// machine's boot: not inside a container, whose clock is the host's.
pub fn since_boot() -> Option<Duration> {
    if in_container() {
        return None;
    }
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
}

fn in_container() -> bool {
    std::env::var_os("container").is_some()
        || std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
}

/// Derives the run metrics from events.
pub struct MetricsSink {
    process_start: Instant,
    /// Step name → kind, from `RunStarted`.
    kinds: BTreeMap<String, &'static str>,
    /// Codes already counted for the final error of a step, so the run's own
    /// error (the same failure) is not counted twice.
    step_codes: HashSet<&'static str>,
}

impl MetricsSink {
    /// `process_start` is when bootplan started (time to ready counts from it).
    pub fn new(process_start: Instant) -> MetricsSink {
        MetricsSink {
            process_start,
            kinds: BTreeMap::new(),
            step_codes: HashSet::new(),
        }
    }

    fn step_finished(
        &mut self,
        step: &str,
        state: StepState,
        duration: Duration,
        code: Option<&'static str>,
    ) {
        histogram!(STEP_DURATION, "step" => step.to_string(), "outcome" => state.as_str())
            .record(duration.as_secs_f64());
        if let Some(code) = code {
            counter!(ERRORS_TOTAL, "code" => code).increment(1);
            self.step_codes.insert(code);
        }
        if state == StepState::Done && self.kinds.get(step) == Some(&"service") {
            histogram!(SERVICE_READY, "step" => step.to_string()).record(duration.as_secs_f64());
        }
    }

    fn run_finished(&mut self, outcome: Outcome, code: Option<&'static str>, at: SystemTime) {
        counter!(RUNS_TOTAL, "outcome" => outcome.as_str()).increment(1);
        if let Some(code) = code.filter(|c| !self.step_codes.contains(c)) {
            counter!(ERRORS_TOTAL, "code" => code).increment(1);
        }
        if outcome.is_ready() {
            histogram!(TIME_TO_READY).record(self.process_start.elapsed().as_secs_f64());
            if let Some(uptime) = since_boot() {
                histogram!(BOOT_TO_READY).record(uptime.as_secs_f64());
            }
        }
        gauge!(READY).set(if outcome.is_ready() { 1.0 } else { 0.0 });
        gauge!(LAST_RUN_TIMESTAMP).set(unix_seconds(at));
    }
}

impl Sink for MetricsSink {
    fn event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { steps, .. } => {
                self.kinds = steps.iter().map(|(n, k)| (n.clone(), *k)).collect();
                self.step_codes.clear();
                gauge!(READY).set(0.0);
            }
            EventKind::AttemptFailed {
                step,
                error,
                retry_in,
                ..
            } => {
                counter!(ERRORS_TOTAL, "code" => error.code.as_str()).increment(1);
                if retry_in.is_some() {
                    counter!(STEP_RETRIES, "step" => step.clone()).increment(1);
                }
            }
            EventKind::StepFinished {
                step,
                state,
                duration,
                error,
                ..
            } => {
                let code = error.as_ref().map(|e| e.code.as_str());
                self.step_finished(step, *state, *duration, code);
            }
            EventKind::RunFinished { outcome, error, .. } => {
                let code = error.as_ref().map(|e| e.code.as_str());
                self.run_finished(*outcome, code, event.at);
            }
            EventKind::SlotAcquired {
                semaphore, waited, ..
            } => {
                histogram!(THROTTLE_WAIT, "semaphore" => semaphore.clone())
                    .record(waited.as_secs_f64());
            }
            EventKind::StepSkipped { .. }
            | EventKind::StartSplay { .. }
            | EventKind::Queued { .. }
            | EventKind::StepStarted { .. }
            | EventKind::AttemptStarted { .. }
            | EventKind::Output { .. }
            | EventKind::Waiting { .. }
            | EventKind::StepNotRun { .. }
            | EventKind::UndoFinished { .. }
            | EventKind::Notice { .. }
            | EventKind::Health { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_in_the_docs_table_with_its_type_and_labels() {
        let docs = include_str!("../../docs/plan.md");
        for (name, kind, labels) in METRICS {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("{name} is not in the metrics table of docs/plan.md"));
            assert!(row.contains(&format!("| {kind} |")), "{row}");
            for label in *labels {
                assert!(row.contains(&format!("`{label}`")), "{row}: no `{label}`");
            }
        }
    }

    use super::*;
    use crate::error::ErrorCode;
    use crate::telemetry::ErrorInfo;

    fn ev(kind: EventKind) -> Event {
        Event {
            at: SystemTime::now(),
            kind,
        }
    }

    /// The recorder is process-wide, so one test drives a whole run.
    #[test]
    fn derives_run_metrics_from_events() {
        let handle = install("unit").expect("recorder");
        let mut sink = MetricsSink::new(Instant::now());
        sink.event(&ev(EventKind::RunStarted {
            bootstrap_id: "b".into(),
            plan: "unit".into(),
            plan_path: "p".into(),
            digest: "d".into(),
            boot_id: String::new(),
            steps: vec![("db".into(), "service"), ("mig".into(), "run")],
        }));
        let err = ErrorInfo {
            code: ErrorCode::StepExitNonzero,
            message: "x".into(),
        };
        sink.event(&ev(EventKind::AttemptFailed {
            step: "mig".into(),
            attempt: 1,
            error: err.clone(),
            retry_in: Some(Duration::from_millis(5)),
        }));
        for (step, state) in [("db", StepState::Done), ("mig", StepState::Done)] {
            sink.event(&ev(EventKind::StepFinished {
                step: step.into(),
                state,
                attempts: 2,
                duration: Duration::from_millis(30),
                error: None,
            }));
        }
        sink.event(&ev(EventKind::RunFinished {
            outcome: Outcome::Ready,
            exit_code: 0,
            error: None,
            failed_step: None,
            duration: Duration::from_millis(40),
        }));
        let text = render(&handle);
        for want in [
            "bootplan_runs_total{plan=\"unit\",outcome=\"ready\"} 1",
            "bootplan_runs_total{plan=\"unit\",outcome=\"failed\"} 0",
            "bootplan_step_retries_total{plan=\"unit\",step=\"mig\"} 1",
            "bootplan_errors_total{plan=\"unit\",code=\"step.exit_nonzero\"} 1",
            "bootplan_ready{plan=\"unit\"} 1",
            "bootplan_service_ready_seconds_count{plan=\"unit\",step=\"db\"} 1",
            "bootplan_time_to_ready_seconds_bucket{plan=\"unit\",le=\"+Inf\"} 1",
            "# TYPE bootplan_step_duration_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
        assert!(!text.contains("service_ready_seconds_count{plan=\"unit\",step=\"mig\"}"));
    }
}
