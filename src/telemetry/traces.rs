//! OpenTelemetry traces over OTLP/HTTP, through `tracing`.
//!
//! Span tree of one run: `bootstrap` (root) → `step <name>` → `attempt <n>`
//! → whatever the step does over the network (functions marked
//! `#[tracing::instrument]` in the secret, metadata and registry clients
//! become children of the span that is current when they run). Attributes:
//! `bootstrap.id`, `plan`, `step`, `attempt`, `outcome`, `error.code`; never
//! an error message or any other free text, so no secret can reach a span.
//!
//! Spans leave through a batch processor on its own thread. An exporter
//! wrapper ([`Retaining`]) keeps batches the collector refused or could not
//! take (it may not be up yet: it is often started by the plan itself) and
//! sends them with the next batch; [`Tracing::shutdown`] flushes within a
//! bound and never holds up exit.
//!
//! When traces are off no subscriber is installed and every span here is a
//! disabled no-op, so child processes get no `TRACEPARENT`.

use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use super::export::ExportError;

/// Default bound on the final flush.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most spans kept while the collector is unreachable.
const RETAIN_MAX: usize = 8192;

/// The installed trace pipeline.
pub struct Tracing {
    provider: SdkTracerProvider,
    flush_timeout: Duration,
    url: String,
}

/// The OTLP/HTTP traces URL: `<base>/v1/traces` unless the URL has a path.
pub fn traces_url(endpoint: &str) -> String {
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(i) if after_scheme[i..].len() > 1 => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// Builds the exporter and installs the global `tracing` subscriber. Call it
/// outside any async runtime (the blocking HTTP client owns one).
pub fn init(endpoint: &str, flush_timeout: Option<Duration>) -> Result<Tracing, ExportError> {
    let url = traces_url(endpoint);
    let fail = |message: String| ExportError::Traces {
        url: url.clone(),
        message,
    };
    let mut client = crate::http::blocking_client_builder()
        .timeout(EXPORT_TIMEOUT)
        .no_proxy();
    if crate::http::needs_no_roots(&url) {
        client = client.tls_certs_only([]);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client.build().map_err(|e| fail(e.to_string()))?)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let processor = BatchSpanProcessor::builder(Retaining::new(exporter))
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_secs(1))
                .with_max_queue_size(RETAIN_MAX)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("bootplan")
                .build(),
        )
        .build();
    let tracer = provider.tracer("bootplan");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| fail(format!("a tracing subscriber is already installed: {e}")))?;
    Ok(Tracing {
        provider,
        flush_timeout: flush_timeout.unwrap_or(DEFAULT_FLUSH_TIMEOUT),
        url,
    })
}

impl Tracing {
    /// Flushes and stops the pipeline, giving up after the flush timeout so
    /// an unreachable collector never holds up exit.
    pub fn shutdown(self) -> Result<(), ExportError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let provider = self.provider;
        let timeout = self.flush_timeout;
        let url = self.url;
        let spawned = std::thread::Builder::new()
            .name("bootplan-trace-flush".into())
            .spawn(move || {
                let _ = provider.force_flush();
                let _ = tx.send(provider.shutdown_with_timeout(timeout));
            });
        if spawned.is_err() {
            return Err(ExportError::Traces {
                url,
                message: "cannot start the flush thread".into(),
            });
        }
        match rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ExportError::Traces {
                url,
                message: format!("flush failed: {e}"),
            }),
            Err(_) => Err(ExportError::Traces {
                url,
                message: format!(
                    "spans not flushed within {}",
                    humantime::format_duration(timeout)
                ),
            }),
        }
    }
}

/// An exporter that keeps what it could not send and retries it with the
/// next batch (bounded by [`RETAIN_MAX`], oldest dropped first).
#[derive(Debug)]
pub struct Retaining<E> {
    inner: E,
    pending: Mutex<Vec<SpanData>>,
}

impl<E> Retaining<E> {
    pub fn new(inner: E) -> Retaining<E> {
        Retaining {
            inner,
            pending: Mutex::new(Vec::new()),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Retaining<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut all = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        all.extend(batch);
        let result = self.inner.export(all.clone()).await;
        if result.is_err() {
            let excess = all.len().saturating_sub(RETAIN_MAX);
            all.drain(..excess);
            *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = all;
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let left = self.pending.lock().map(|p| p.len()).unwrap_or(0);
        self.inner.shutdown_with_timeout(timeout)?;
        if left > 0 {
            return Err(OTelSdkError::InternalFailure(format!(
                "{left} span(s) could not be delivered"
            )));
        }
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The root span of one bootstrap.
pub fn root_span(bootstrap_id: &str, plan: &str) -> Span {
    tracing::info_span!(
        "bootstrap",
        otel.name = "bootstrap",
        bootstrap.id = bootstrap_id,
        plan = plan,
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// A step's span; a child of the span current where it is created.
pub fn step_span(step: &str, kind: &str, bootstrap_id: &str) -> Span {
    tracing::info_span!(
        "step",
        otel.name = format!("step {step}"),
        bootstrap.id = bootstrap_id,
        step = step,
        step.kind = kind,
        attempts = tracing::field::Empty,
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// One attempt of a step.
pub fn attempt_span(step: &str, attempt: u32, bootstrap_id: &str) -> Span {
    tracing::info_span!(
        "attempt",
        otel.name = format!("attempt {attempt}"),
        bootstrap.id = bootstrap_id,
        step = step,
        attempt = attempt,
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records how the span's work ended; an error code marks the span failed.
pub fn record_outcome(span: &Span, outcome: &str, code: Option<&str>) {
    span.record("outcome", outcome);
    match code {
        Some(code) => {
            span.record("error.code", code);
            span.record("otel.status_code", "ERROR");
        }
        None => {
            span.record("otel.status_code", "OK");
        }
    }
}

/// W3C trace context of `span` as environment variables (`TRACEPARENT`,
/// and `TRACESTATE` when not empty). Empty when traces are off.
pub fn span_env(span: &Span) -> Vec<(String, String)> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return Vec::new();
    }
    let mut env = vec![(
        "TRACEPARENT".to_string(),
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ),
    )];
    let state = sc.trace_state().header();
    if !state.is_empty() {
        env.push(("TRACESTATE".to_string(), state));
    }
    env
}

tokio::task_local! {
    /// The trace context a step's child processes inherit.
    static STEP_TRACE_ENV: Vec<(String, String)>;
}

/// Runs `fut` (a step) with `env` as its child processes' trace context.
/// A plain function, not an `async fn`: that would store `fut` twice (as its
/// argument and inside the scope), doubling the size of every step's future.
pub fn with_step_env<F: std::future::Future>(
    env: Vec<(String, String)>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    STEP_TRACE_ENV.scope(env, fut)
}

/// The trace context of the step whose task is running (empty outside one).
pub fn step_env() -> Vec<(String, String)> {
    STEP_TRACE_ENV.try_with(Clone::clone).unwrap_or_default()
}

/// Trace and span id of the current span, for log lines (None when traces are off).
pub fn current_ids() -> Option<(String, String)> {
    let cx = Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path() {
        assert_eq!(traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h:4318/custom"), "http://h:4318/custom");
    }

    #[test]
    fn no_subscriber_no_traceparent() {
        let span = step_span("a", "run", "b");
        assert!(span_env(&span).is_empty());
        assert!(current_ids().is_none());
        assert!(step_env().is_empty());
    }
}
