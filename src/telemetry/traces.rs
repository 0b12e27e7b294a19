//! OpenTelemetry traces over OTLP/HTTP, through `tracing`.
//!
//! Span tree of one run: `bootstrap` (root) → `step <name>` → `attempt <n>`
//! → whatever the step does over the network (functions marked
//! `#[tracing::instrument]` in the secret, metadata and registry clients
//! become children of the span that is current when they run). Attributes:
//! `bootstrap.id`, `plan`, `step`, `attempt`, `outcome`, `error.code`; never
//! an error message or any other free text, so no secret can reach a span
//! (`tracing` events, whose message is free text, are not recorded).
//!
//! A finished span goes into a bounded in-memory buffer ([`super::otlp`]):
//! no thread of bootplan's own and no HTTP client runtime. Batches are POSTed
//! as protobuf from the run's runtime (every second, or sooner when a batch
//! is full) and what is left at the end by [`Tracing::shutdown`], which is
//! bounded by `traces.flush_timeout` and never holds up exit. Batches the
//! collector refused or could not take (it may not be up yet: it is often
//! started by the plan itself) are kept and sent with the next batch, up to
//! a bound; spans beyond it are dropped and counted in the final warning.
//!
//! When traces are off no subscriber is installed and every span here is a
//! disabled no-op, so child processes get no `TRACEPARENT`.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

use super::export::ExportError;
use super::otlp::{Exporter, Queue};

/// Default bound on the final flush.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed trace pipeline.
pub struct Tracing {
    exporter: Arc<Exporter>,
    flush_timeout: Duration,
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

/// Installs the global `tracing` subscriber whose finished spans go to the
/// OTLP exporter. Starts no thread and opens no connection: the first
/// export happens on the run's runtime (see [`super::otlp`]).
pub fn init(endpoint: &str, flush_timeout: Option<Duration>) -> Result<Tracing, ExportError> {
    let url = traces_url(endpoint);
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("bootplan")
        .build();
    let exporter = Exporter::new(url.clone(), &resource);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Queue(exporter.clone()))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("bootplan");
    // Only our attributes, and the least work per span: no source location,
    // thread, target or busy/idle timing (taken on every poll), no OTel
    // context switched on every poll (nothing reads it: trace context goes
    // to children from the span itself). Events never reach a span: their
    // message is free text.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.is_span()));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| ExportError::Traces {
        url,
        message: format!("a tracing subscriber is already installed: {e}"),
    })?;
    Ok(Tracing {
        exporter,
        flush_timeout: flush_timeout.unwrap_or(DEFAULT_FLUSH_TIMEOUT),
    })
}

impl Tracing {
    /// The end-of-run flush, on the run's runtime: within the flush
    /// timeout, after the answer to a request under way.
    pub async fn drain(&self) {
        self.exporter.drain(self.flush_timeout).await;
    }

    /// Sends what [`Tracing::drain`] did not (or all, without it), giving
    /// up after the flush timeout so an
    /// unreachable collector never holds up exit. Spans that did not reach
    /// the collector (refused, unreachable, or dropped beyond the bound)
    /// come back as one error that counts them.
    pub fn shutdown(self) -> Result<(), ExportError> {
        let left = self.exporter.final_flush(self.flush_timeout);
        if left.unsent == 0 && left.dropped == 0 {
            return Ok(());
        }
        let mut parts = Vec::new();
        if left.unsent > 0 {
            let why = left.reason.as_deref().unwrap_or("not sent");
            parts.push(format!(
                "{} span(s) could not be delivered ({why})",
                left.unsent
            ));
        }
        if left.dropped > 0 {
            parts.push(format!(
                "{} span(s) were dropped: more than {} spans waited for the collector",
                left.dropped,
                super::otlp::RETAIN_MAX
            ));
        }
        Err(ExportError::Traces {
            url: self.exporter.url().to_string(),
            message: parts.join("; "),
        })
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
