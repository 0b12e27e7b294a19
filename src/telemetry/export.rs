//! Metric delivery: the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`,
//! `/status`), the node_exporter textfile and the Pushgateway push.
//!
//! The endpoint runs on its own thread with its own small runtime, so it
//! answers even while the engine's runtime is busy, and it lives as long as
//! its [`TelemetryServer`] handle: a supervisor keeps the handle to keep
//! serving after the run; dropping it stops the server.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use metrics_exporter_prometheus::PrometheusHandle;

use super::status::StatusDoc;
use crate::plan::telemetry::PushgatewayConfig;

/// How often the endpoint thread runs recorder upkeep between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Bound on one Pushgateway PUT.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a metric delivery failed. Never fails the run: reported as a warning.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the metrics endpoint thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write metrics textfile: {source}")]
    Textfile {
        #[source]
        source: crate::fsutil::FsError,
    },
    #[error("metrics push to {url} failed: {message}")]
    Push { url: String, message: String },
    #[error("cannot export traces to {url}: {message}")]
    Traces { url: String, message: String },
}

/// The shared live document of the status sink.
pub type StatusHandle = Arc<Mutex<Option<StatusDoc>>>;

#[derive(Clone)]
struct Shared {
    metrics: PrometheusHandle,
    status: StatusHandle,
}

/// The running endpoint. Dropping it stops the server.
pub struct TelemetryServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TelemetryServer {
    /// Binds `addr` now (so a bad address is reported before the run) and
    /// serves on a thread of its own.
    pub fn start(
        addr: SocketAddr,
        metrics: PrometheusHandle,
        status: StatusHandle,
    ) -> Result<TelemetryServer, ExportError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| ExportError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ExportError::Bind { addr, source })?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let shared = Shared { metrics, status };
        let thread = std::thread::Builder::new()
            .name("bootplan-metrics".into())
            .spawn(move || serve(listener, shared, stop_rx))
            .map_err(|source| ExportError::Thread { source })?;
        Ok(TelemetryServer {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for TelemetryServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, shared: Shared, stop: tokio::sync::oneshot::Receiver<()>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        crate::stdio::errln!("bootplan: cannot start the metrics endpoint runtime");
        return;
    };
    runtime.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            crate::stdio::errln!("bootplan: cannot use the metrics listener");
            return;
        };
        let upkeep = shared.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let app = router(shared);
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.await;
            })
            .await;
        if let Err(err) = result {
            crate::stdio::errln!("bootplan: metrics endpoint stopped: {err}");
        }
    });
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(shared)
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let text = super::metrics::render(&shared.metrics);
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response()
}

async fn readyz(State(shared): State<Shared>) -> Response {
    let outcome = lock(&shared.status).as_ref().map(|d| d.outcome);
    match outcome {
        Some(o) if o.is_ready() => (StatusCode::OK, format!("{}\n", o.as_str())).into_response(),
        Some(o) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", o.as_str())).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
    }
}

async fn status(State(shared): State<Shared>) -> Response {
    let body = lock(&shared.status)
        .as_ref()
        .and_then(|d| serde_json::to_string_pretty(d).ok());
    match body {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no run yet\n").into_response(),
    }
}

fn lock(status: &StatusHandle) -> std::sync::MutexGuard<'_, Option<StatusDoc>> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes the exposition text for node_exporter's textfile collector:
/// atomically (temp file, fsync, rename), so the collector never reads half.
pub fn write_textfile(path: &Path, text: &str) -> Result<(), ExportError> {
    crate::fsutil::replace_file(path, text.as_bytes(), 0o644)
        .map_err(|source| ExportError::Textfile { source })
}

/// The Pushgateway URL of a grouping key: `/metrics/job/<job>/<label>/<value>…`,
/// every value base64url-encoded (`label@base64`) so any character is safe.
pub fn push_url(config: &PushgatewayConfig, plan: &str) -> String {
    let enc = |v: &str| {
        if v.is_empty() {
            // The Pushgateway's spelling of an empty value.
            "=".to_string()
        } else {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
        }
    };
    let mut url = format!(
        "{}/metrics/job@base64/{}/plan@base64/{}",
        config.url.trim_end_matches('/'),
        enc(&config.job),
        enc(plan)
    );
    for (name, value) in &config.grouping {
        url.push_str(&format!("/{name}@base64/{}", enc(value)));
    }
    url
}

/// Replaces the group's metrics on the Pushgateway (HTTP PUT), bounded by
/// [`PUSH_TIMEOUT`]. Blocking: call it outside the async runtime.
pub fn push(config: &PushgatewayConfig, plan: &str, text: &str) -> Result<(), ExportError> {
    let url = push_url(config, plan);
    let fail = |message: String| ExportError::Push {
        url: config.url.clone(),
        message,
    };
    let mut client = crate::http::blocking_client_builder()
        .timeout(PUSH_TIMEOUT)
        .no_proxy();
    if crate::http::needs_no_roots(&config.url) {
        client = client.tls_certs_only([]);
    }
    let client = client.build().map_err(|e| fail(e.to_string()))?;
    // The plan label is in the grouping key; the pushed series must not
    // carry a conflicting one, so it is left to the key.
    let body = strip_label(text, "plan");
    let response = client
        .put(&url)
        .header(header::CONTENT_TYPE.as_str(), TEXT_FORMAT)
        .body(body)
        .send()
        .map_err(|e| fail(e.to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        let status = response.status();
        let detail: String = response
            .text()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        Err(fail(format!("HTTP {status}: {}", detail.trim())))
    }
}

/// Removes `name="…"` from every sample's label set (the global label that
/// the grouping key carries instead).
fn strip_label(text: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(&strip_from_line(line, name));
        }
        out.push('\n');
    }
    out
}

fn strip_from_line(line: &str, name: &str) -> String {
    let (Some(open), Some(close)) = (line.find('{'), line.find('}')) else {
        return line.to_string();
    };
    let labels = &line[open + 1..close];
    let prefix = format!("{name}=\"");
    let mut kept = Vec::new();
    let mut rest = labels;
    // Label values never contain `",` unescaped, so split on that boundary.
    while !rest.is_empty() {
        let end = find_label_end(rest);
        let label = &rest[..end];
        if !label.starts_with(&prefix) {
            kept.push(label);
        }
        rest = rest[end..].trim_start_matches(',');
    }
    if kept.is_empty() {
        format!("{}{}", &line[..open], &line[close + 1..])
    } else {
        format!(
            "{}{{{}}}{}",
            &line[..open],
            kept.join(","),
            &line[close + 1..]
        )
    }
}

/// Index just past one `name="value"` (respecting backslash escapes).
fn find_label_end(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = s.find('"').map_or(s.len(), |q| q + 1);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_key_is_encoded() {
        let config = PushgatewayConfig {
            url: "http://pg:9091/".into(),
            job: "bootplan".into(),
            grouping: vec![("env".into(), "prod/eu".into())],
        };
        assert_eq!(
            push_url(&config, "web"),
            "http://pg:9091/metrics/job@base64/Ym9vdHBsYW4/plan@base64/d2Vi/env@base64/cHJvZC9ldQ"
        );
    }

    #[test]
    fn strips_the_plan_label() {
        let text = "# TYPE a counter\na{plan=\"x\",outcome=\"ready\"} 1\nb{plan=\"x\"} 2\nc{k=\"a\\\"b\",plan=\"y\"} 3\nd 4\n";
        assert_eq!(
            strip_label(text, "plan"),
            "# TYPE a counter\na{outcome=\"ready\"} 1\nb 2\nc{k=\"a\\\"b\"} 3\nd 4\n"
        );
    }
}
