//! Reports off the machine: POST the final (redacted) status document to a
//! webhook, on success and on every failure path, with a few retries inside
//! a short bound, so a fleet learns of a failed boot without SSH.
//!
//! [`ReportSink`] keeps its own copy of the status document from the
//! (already redacted) events and posts it on `RunFinished` from a
//! background thread; `finish` waits for that thread, so the report is sent
//! before bootplan exits or execs. For a plan that is invalid, the CLI calls
//! [`post_blocking`] with the document it wrote, using the URL from
//! `--report-url`/`BOOTPLAN_REPORT_URL`, or else the `report.webhook` of a
//! plan that parsed but failed validation.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::plan::lifecycle::ReportSpec;
use crate::telemetry::status::StatusDoc;
use crate::telemetry::{Event, EventKind, Sink};

/// Retry delays: full jitter over a cap that doubles from the first value up
/// to the second, so a fleet that fails together does not report together.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// However the report is configured, bootplan's verdict never waits longer.
const MAX_REPORT_TIME: Duration = Duration::from_secs(30);

/// Why a report was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report to {url} failed after {attempts} attempt(s): {last}")]
    Undelivered {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("cannot start the report client: {0}")]
    Client(String),
}

/// Posts the status document when the run finishes.
pub struct ReportSink {
    spec: ReportSpec,
    doc: Option<StatusDoc>,
    /// Reports in flight (a failed exec gives a second verdict).
    sending: Vec<JoinHandle<()>>,
}

impl ReportSink {
    pub fn new(spec: ReportSpec) -> ReportSink {
        ReportSink {
            spec,
            doc: None,
            sending: Vec::new(),
        }
    }
}

impl Sink for ReportSink {
    fn event(&mut self, event: &Event) {
        if matches!(
            event.kind,
            EventKind::Output { .. } | EventKind::Waiting { .. } | EventKind::Notice { .. }
        ) {
            return;
        }
        match self.doc.as_mut() {
            Some(doc) => doc.apply(event),
            None => self.doc = StatusDoc::new(event),
        }
        if !matches!(event.kind, EventKind::RunFinished { .. }) {
            return;
        }
        let Some(doc) = &self.doc else { return };
        let body = serde_json::to_vec(doc).unwrap_or_default();
        let spec = self.spec.clone();
        // Sinks must not block the engine: send from a thread, joined in finish().
        self.sending.push(std::thread::spawn(move || {
            if let Err(err) = post(&spec, body) {
                crate::stdio::errln!("bootplan: {err}");
            }
        }));
    }

    fn finish(&mut self) {
        for handle in self.sending.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Posts `body` from a fresh thread and waits for the outcome (for paths
/// where no reporter exists, such as an invalid plan).
pub fn post_blocking(spec: &ReportSpec, body: Vec<u8>) -> Result<(), ReportError> {
    let spec = spec.clone();
    std::thread::spawn(move || post(&spec, body))
        .join()
        .unwrap_or_else(|_| Err(ReportError::Client("the report thread panicked".into())))
}

/// The report URL for a plan that failed to load: the CLI's, else the
/// `report.webhook` of a plan that parsed but did not validate.
pub fn spec_for_invalid_plan(cli_url: Option<&str>, plan_path: &Path) -> Option<ReportSpec> {
    let from_cli = cli_url.map(|url| ReportSpec {
        webhook: url.to_string(),
        timeout: Duration::from_secs(5),
        attempts: 3,
    });
    from_cli.or_else(|| {
        let text = crate::plan::load::read_plan_text(plan_path).ok()?;
        let raw = crate::plan::load::parse::<serde_json::Value>(plan_path, &text).ok()?;
        let report = raw.report?;
        Some(ReportSpec {
            webhook: report.webhook,
            timeout: report.timeout.map_or(Duration::from_secs(5), |t| t.get()),
            attempts: report.attempts.unwrap_or(3).clamp(1, 10),
        })
    })
}

/// Reports a run that failed before its first event (e.g. the state
/// directory is not writable): a status document with just the verdict.
pub fn report_early_failure(
    spec: &ReportSpec,
    plan: &crate::plan::Plan,
    bootstrap_id: &str,
    code: crate::error::ErrorCode,
    message: String,
) -> Result<(), ReportError> {
    let now = std::time::SystemTime::now();
    let started = Event {
        at: now,
        kind: EventKind::RunStarted {
            bootstrap_id: bootstrap_id.to_string(),
            plan: plan.name.clone(),
            plan_path: plan.path.display().to_string(),
            digest: plan.digest.clone(),
            boot_id: crate::facts::current_boot_id(),
            steps: Vec::new(),
        },
    };
    let Some(mut doc) = StatusDoc::new(&started) else {
        return Ok(());
    };
    doc.apply(&Event {
        at: now,
        kind: EventKind::RunFinished {
            outcome: crate::telemetry::Outcome::Failed,
            exit_code: code.exit_code(),
            error: Some(crate::telemetry::ErrorInfo { code, message }),
            failed_step: None,
            duration: Duration::ZERO,
        },
    });
    post_blocking(spec, serde_json::to_vec(&doc).unwrap_or_default())
}

fn post(spec: &ReportSpec, body: Vec<u8>) -> Result<(), ReportError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReportError::Client(e.to_string()))?;
    runtime
        .block_on(async { tokio::time::timeout(MAX_REPORT_TIME, post_async(spec, body)).await })
        .unwrap_or_else(|_| {
            Err(ReportError::Undelivered {
                url: spec.webhook.clone(),
                attempts: spec.attempts,
                last: format!(
                    "gave up after {}",
                    humantime::format_duration(MAX_REPORT_TIME)
                ),
            })
        })
}

#[tracing::instrument(skip_all, fields(url = %spec.webhook))]
async fn post_async(spec: &ReportSpec, body: Vec<u8>) -> Result<(), ReportError> {
    let client = crate::http::client_builder()
        .timeout(spec.timeout)
        .no_proxy()
        .build()
        .map_err(|e| ReportError::Client(e.to_string()))?;
    let budget = crate::retry::Budget::new(spec.attempts, FIRST_BACKOFF, MAX_BACKOFF);
    // Not through the reporter: this runs while the reporter delivers the
    // verdict, on a thread it waits for.
    let announce = |retrying: &crate::retry::Retrying<'_>| {
        crate::retry::count("report");
        crate::stdio::errln!("bootplan: report to {} failed: {retrying}", spec.webhook);
    };
    let (client, body) = (&client, &body);
    let sent = crate::retry::run(&budget, announce, |attempt| async move {
        let sent = client
            .post(&spec.webhook)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => crate::retry::Attempt::Done(()),
            // A 4xx other than 408/429 will not get better by trying again.
            Ok(resp)
                if resp.status().is_client_error()
                    && !matches!(resp.status().as_u16(), 408 | 429) =>
            {
                crate::retry::Attempt::Fail((attempt, format!("HTTP {}", resp.status())))
            }
            Ok(resp) => crate::retry::Attempt::retry(format!("HTTP {}", resp.status())),
            Err(e) => crate::retry::Attempt::retry(crate::http::describe_error(&e)),
        }
    })
    .await;
    sent.map_err(|gave_up| {
        let (attempts, last) = match gave_up {
            crate::retry::GaveUp::Fatal(failed) => failed,
            crate::retry::GaveUp::Exhausted(e) => (e.attempts, e.last),
        };
        ReportError::Undelivered {
            url: spec.webhook.clone(),
            attempts,
            last,
        }
    })
}
