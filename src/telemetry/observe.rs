//! Wiring of metrics and traces for one bootplan process: the CLI flags,
//! their merge with the plan's `telemetry:` section, start-up (recorder,
//! endpoint, trace pipeline) and the end-of-run deliveries (textfile, push,
//! trace flush).
//!
//! Telemetry never decides the verdict: a delivery that fails is reported
//! as a warning and the run's exit code stands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;

use super::export::{self, ExportError, StatusHandle, TelemetryServer};
use super::metrics::{self as m, MetricsSink};
use super::traces::{self, Tracing};
use crate::plan::telemetry::{PushgatewayConfig, TelemetryConfig};

/// Command-line telemetry settings; each overrides the plan's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Serve /metrics, /healthz, /readyz and /status on this address.
    #[arg(
        long,
        global = true,
        env = "BOOTPLAN_METRICS_LISTEN",
        value_name = "ADDR"
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// Write a node_exporter textfile here at the end of the run.
    #[arg(
        long,
        global = true,
        env = "BOOTPLAN_METRICS_TEXTFILE",
        value_name = "PATH"
    )]
    pub metrics_textfile: Option<PathBuf>,
    /// Push the metrics to this Pushgateway at the end of the run.
    #[arg(
        long,
        global = true,
        env = "BOOTPLAN_PUSHGATEWAY_URL",
        value_name = "URL",
        value_parser = parse_url
    )]
    pub pushgateway_url: Option<String>,
    /// The Pushgateway job [default: bootplan].
    #[arg(
        long,
        global = true,
        env = "BOOTPLAN_PUSHGATEWAY_JOB",
        value_name = "JOB"
    )]
    pub pushgateway_job: Option<String>,
    /// A grouping label for the push, `name=value` (repeatable; fixed values only).
    #[arg(long, global = true, value_name = "NAME=VALUE", value_parser = parse_label)]
    pub pushgateway_grouping: Vec<(String, String)>,
    /// Export traces to this OTLP/HTTP endpoint (e.g. http://127.0.0.1:4318).
    #[arg(
        long,
        global = true,
        env = "BOOTPLAN_OTLP_ENDPOINT",
        value_name = "URL",
        value_parser = parse_url
    )]
    pub otlp_endpoint: Option<String>,
    /// Keep serving the metrics endpoint this long after the run (until
    /// SIGTERM/SIGINT), so a final scrape sees the verdict.
    #[arg(long, global = true, env = "BOOTPLAN_METRICS_LINGER", value_name = "DURATION",
          value_parser = crate::plan::duration::parse_duration)]
    pub metrics_linger: Option<Duration>,
}

fn parse_url(text: &str) -> Result<String, String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(text.to_string())
    } else {
        Err(format!("`{text}` is not an http:// or https:// URL"))
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    if !crate::plan::telemetry::is_label_name(name) {
        return Err(format!("`{name}` is not a Prometheus label name"));
    }
    Ok((name.to_string(), value.to_string()))
}

impl TelemetryArgs {
    /// The plan's settings with these flags laid over them.
    pub fn merge(&self, plan: &TelemetryConfig) -> TelemetryConfig {
        let mut config = plan.clone();
        if let Some(addr) = self.metrics_listen {
            config.listen = Some(addr);
        }
        if let Some(path) = &self.metrics_textfile {
            config.textfile = Some(path.clone());
        }
        if let Some(url) = &self.pushgateway_url {
            let base = config.pushgateway.take();
            config.pushgateway = Some(PushgatewayConfig {
                url: url.clone(),
                job: self
                    .pushgateway_job
                    .clone()
                    .or_else(|| base.as_ref().map(|b| b.job.clone()))
                    .unwrap_or_else(|| "bootplan".into()),
                grouping: if self.pushgateway_grouping.is_empty() {
                    base.map(|b| b.grouping).unwrap_or_default()
                } else {
                    self.pushgateway_grouping.clone()
                },
            });
        }
        if let Some(url) = &self.otlp_endpoint {
            config.otlp = Some(url.clone());
        }
        config
    }
}

/// Metrics and traces of this process.
pub struct Observability {
    plan: String,
    config: TelemetryConfig,
    metrics: Option<PrometheusHandle>,
    server: Option<TelemetryServer>,
    tracing: Option<Tracing>,
    finished: bool,
}

impl Observability {
    /// Installs what `config` asks for: the metrics recorder (always, when
    /// any metric delivery is set, before the run so facade-recorded metrics
    /// land), the endpoint, and the trace pipeline. Problems come back as
    /// warnings; whatever could start, started.
    pub fn start(
        config: TelemetryConfig,
        plan: &str,
        status: Option<StatusHandle>,
    ) -> (Observability, Vec<ExportError>) {
        let mut warnings = Vec::new();
        let metrics = if config.metrics_enabled() {
            m::install(plan)
        } else {
            None
        };
        let server = match (config.listen, &metrics) {
            (Some(addr), Some(handle)) => {
                let status = status.unwrap_or_else(|| Arc::new(Mutex::new(None)));
                match TelemetryServer::start(addr, handle.clone(), status) {
                    Ok(server) => Some(server),
                    Err(err) => {
                        warnings.push(err);
                        None
                    }
                }
            }
            _ => None,
        };
        let tracing = match &config.otlp {
            Some(url) => match traces::init(url, config.flush_timeout) {
                Ok(t) => Some(t),
                Err(err) => {
                    warnings.push(err);
                    None
                }
            },
            None => None,
        };
        // The textfile shows "running, not ready" from the start, so a
        // collector that scrapes during the boot sees every series at its
        // starting value and the final increment is visible to `rate()`.
        if let (Some(path), Some(handle)) = (&config.textfile, &metrics)
            && let Err(err) = export::write_textfile(path, &m::render(handle))
        {
            warnings.push(err);
        }
        let obs = Observability {
            plan: plan.to_string(),
            config,
            metrics,
            server,
            tracing,
            finished: false,
        };
        (obs, warnings)
    }

    /// The sink that turns events into metrics (None when metrics are off).
    pub fn metrics_sink(&self, process_start: Instant) -> Option<Box<dyn super::Sink>> {
        self.metrics
            .as_ref()
            .map(|_| Box::new(MetricsSink::new(process_start)) as Box<dyn super::Sink>)
    }

    /// The endpoint, if serving. A supervisor that outlives the run keeps
    /// the `Observability` (or takes the server) to keep it up.
    /// Whether anything is exported: metrics (an endpoint, a textfile, a
    /// push) or traces. Without, nothing outlives the run's verdict.
    pub fn exports(&self) -> bool {
        self.metrics.is_some() || self.server.is_some() || self.tracing.is_some()
    }

    pub fn server(&self) -> Option<&TelemetryServer> {
        self.server.as_ref()
    }

    /// The end-of-run trace flush, on the run's runtime (call it there,
    /// before [`Observability::finish_run`]); bounded by the flush timeout.
    pub async fn flush_traces(&self) {
        if let Some(tracing) = &self.tracing {
            tracing.drain().await;
        }
    }

    /// End-of-run deliveries: the textfile, the Pushgateway push and the
    /// trace flush, each bounded. Runs once; later calls do nothing.
    /// Blocking: call it outside the async runtime.
    pub fn finish_run(&mut self) -> Vec<ExportError> {
        let mut warnings = Vec::new();
        if std::mem::replace(&mut self.finished, true) {
            return warnings;
        }
        if let Some(handle) = &self.metrics {
            let text = m::render(handle);
            if let Some(path) = &self.config.textfile
                && let Err(err) = export::write_textfile(path, &text)
            {
                warnings.push(err);
            }
            if let Some(push) = &self.config.pushgateway
                && let Err(err) = export::push(push, &self.plan, &text)
            {
                warnings.push(err);
            }
        }
        if let Some(tracing) = self.tracing.take()
            && let Err(err) = tracing.shutdown()
        {
            warnings.push(err);
        }
        warnings
    }
}

/// Counts a refused (invalid or unreadable) plan and delivers the count
/// through the textfile and Pushgateway set by flags: the plan itself could
/// not be read, so only flags apply. The `plan` label is the file's stem.
pub fn record_invalid_plan(args: &TelemetryArgs, plan_path: &Path) -> Vec<ExportError> {
    let config = args.merge(&TelemetryConfig::default());
    if config.textfile.is_none() && config.pushgateway.is_none() {
        return Vec::new();
    }
    let label = plan_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = TelemetryConfig {
        listen: None,
        otlp: None,
        ..config
    };
    let (mut obs, mut warnings) = Observability::start(config, &label, None);
    m::record_invalid_plan();
    warnings.extend(obs.finish_run());
    warnings
}
