//! Reports off the machine: POST the final (redacted) status document to a
//! webhook and send the platforms' own signals (`platform/`), on success
//! and on every failure path, each with a few retries inside a short
//! bound, so a fleet learns of a failed boot without SSH.
//!
//! [`ReportSink`] keeps its own copy of the status document from the
//! (already redacted) events and, on `RunFinished`, posts it and sends the
//! signals from a background thread; `finish` (and [`Deliveries::wait`])
//! waits for that thread, so the report is sent before bootplan exits or
//! execs. For a plan that is invalid, the CLI calls [`post_blocking`] with
//! the document it wrote, using the URL from
//! `--report-url`/`BOOTPLAN_REPORT_URL`, or else the `report.webhook` of a
//! plan that parsed but failed validation (no platform signals: their
//! settings did not validate).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::platform::{self, Identity, Verdict};
use crate::plan::lifecycle::ReportSpec;
use crate::plan::secret_source::AwsConfig;
use crate::redact::Redactor;
use crate::telemetry::status::StatusDoc;
use crate::telemetry::{Event, EventKind, Sink};

/// Retry delays: full jitter over a cap that doubles from the first value up
/// to the second, so a fleet that fails together does not report together.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// However the report is configured, bootplan's verdict never waits longer
/// (for the webhook and for each platform signal).
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

/// The reports in flight, shared by the sink and the run's outputs (which
/// wait for them before the metrics are exported, so a push or textfile
/// counts the platform signals), and the facts the signals need, known
/// only after the sink was registered.
#[derive(Clone, Default)]
pub struct Deliveries {
    sending: Arc<Mutex<Vec<JoinHandle<()>>>>,
    identity: Arc<Mutex<Identity>>,
}

impl Deliveries {
    /// The instance id and region the facts found.
    pub fn set_facts(&self, instance_id: Option<String>, region: Option<String>) {
        let mut identity = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        identity.instance_id = instance_id;
        identity.region = region;
    }

    /// Waits for every report sent so far (each is bounded).
    pub fn wait(&self) {
        let handles: Vec<_> = self
            .sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for handle in handles {
            let _ = handle.join();
        }
    }

    fn identity(&self, bootstrap_id: &str) -> Identity {
        let mut identity = self
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        identity.bootstrap_id = bootstrap_id.to_string();
        identity
    }

    fn push(&self, handle: JoinHandle<()>) {
        self.sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }
}

/// Posts the status document and sends the platform signals when the run
/// finishes.
pub struct ReportSink {
    spec: ReportSpec,
    doc: Option<StatusDoc>,
    deliveries: Deliveries,
    /// `backends.aws`, for the AWS signals' credential chain.
    aws: Option<AwsConfig>,
    redactor: Arc<Redactor>,
}

impl ReportSink {
    pub fn new(
        spec: ReportSpec,
        deliveries: Deliveries,
        aws: Option<AwsConfig>,
        redactor: Arc<Redactor>,
    ) -> ReportSink {
        ReportSink {
            spec,
            doc: None,
            deliveries,
            aws,
            redactor,
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
        let verdict = Verdict::of(doc);
        let ctx = platform::Context {
            identity: self.deliveries.identity(&doc.bootstrap_id),
            aws: self.aws.clone(),
            redactor: self.redactor.clone(),
        };
        // Sinks must not block the engine: send from a thread, joined in finish().
        self.deliveries.push(std::thread::spawn(move || {
            if let Err(err) = deliver(&spec, body, &verdict, &ctx) {
                crate::stdio::errln!("bootplan: {err}");
            }
        }));
    }

    fn finish(&mut self) {
        self.deliveries.wait();
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
    let from_cli = cli_url.map(ReportSpec::webhook);
    from_cli.or_else(|| {
        let text = crate::plan::load::read_plan_text(plan_path).ok()?;
        let raw = crate::plan::load::parse::<serde_json::Value>(plan_path, &text).ok()?;
        let report = raw.report?;
        // Only the webhook: the platform signals of a plan that did not
        // validate are not trusted.
        Some(ReportSpec {
            timeout: report.timeout.map_or(Duration::from_secs(5), |t| t.get()),
            attempts: report.attempts.unwrap_or(3).clamp(1, 10),
            ..ReportSpec::webhook(&report.webhook?)
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
    let body = serde_json::to_vec(&doc).unwrap_or_default();
    let (spec, verdict) = (spec.clone(), Verdict::of(&doc));
    let ctx = platform::Context {
        identity: Identity {
            bootstrap_id: bootstrap_id.to_string(),
            ..Identity::default()
        },
        aws: plan.backends.aws.clone(),
        redactor: Arc::new(Redactor::new()),
    };
    std::thread::spawn(move || deliver(&spec, body, &verdict, &ctx))
        .join()
        .unwrap_or_else(|_| Err(ReportError::Client("the report thread panicked".into())))
}

/// Posts the webhook and sends the platform signals, all at once, each
/// bounded; only the webhook's failure is returned (each signal logs its own).
fn deliver(
    spec: &ReportSpec,
    body: Vec<u8>,
    verdict: &Verdict,
    ctx: &platform::Context,
) -> Result<(), ReportError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReportError::Client(e.to_string()))?;
    runtime.block_on(async {
        let webhook = async {
            match &spec.webhook {
                Some(url) => bounded_post(spec, url, body).await,
                None => Ok(()),
            }
        };
        let signals = platform::send_all(spec, verdict, ctx, MAX_REPORT_TIME);
        futures_util::future::join(webhook, signals).await.0
    })
}

fn post(spec: &ReportSpec, body: Vec<u8>) -> Result<(), ReportError> {
    let Some(url) = &spec.webhook else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReportError::Client(e.to_string()))?;
    runtime.block_on(bounded_post(spec, url, body))
}

async fn bounded_post(spec: &ReportSpec, url: &str, body: Vec<u8>) -> Result<(), ReportError> {
    tokio::time::timeout(MAX_REPORT_TIME, post_async(spec, url, body))
        .await
        .unwrap_or_else(|_| {
            Err(ReportError::Undelivered {
                url: url.to_string(),
                attempts: spec.attempts,
                last: format!(
                    "gave up after {}",
                    humantime::format_duration(MAX_REPORT_TIME)
                ),
            })
        })
}

#[tracing::instrument(skip_all, fields(url = %url))]
async fn post_async(spec: &ReportSpec, url: &str, body: Vec<u8>) -> Result<(), ReportError> {
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
        crate::stdio::errln!("bootplan: report to {url} failed: {retrying}");
    };
    let (client, body) = (&client, &body);
    let sent = crate::retry::run(&budget, announce, |attempt| async move {
        let sent = client
            .post(url)
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
            url: url.to_string(),
            attempts,
            last,
        }
    })
}
