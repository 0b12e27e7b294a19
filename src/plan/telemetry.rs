//! The plan's `telemetry:` section: where metrics and traces go.
//!
//! Raw types mirror the file; [`resolve`] checks them and yields a
//! [`TelemetryConfig`] that the CLI merges with its `--metrics-*` and
//! `--otlp-endpoint` flags (flags win). Nothing here does I/O.
//! To add a delivery: a field on the raw type, its check in [`resolve`],
//! its resolved form on [`TelemetryConfig`], and its exporter in `telemetry/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::duration::HumanDuration;

/// Telemetry delivery (metrics and traces). Every part is optional.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Prometheus metrics: an HTTP endpoint, a node_exporter textfile, a Pushgateway.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    /// OpenTelemetry traces over OTLP/HTTP.
    #[serde(default)]
    pub traces: Option<RawTraces>,
}

/// Where bootplan's Prometheus metrics go.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Serve `/metrics`, `/healthz`, `/readyz` and `/status` on this address
    /// (e.g. `127.0.0.1:9464`) while bootplan runs.
    #[serde(default)]
    pub listen: Option<String>,
    /// Write a node_exporter textfile here at the end of the run (atomically),
    /// relative to the plan file.
    #[serde(default)]
    pub textfile: Option<String>,
    /// Push to a Prometheus Pushgateway at the end of the run.
    #[serde(default)]
    pub pushgateway: Option<RawPushgateway>,
}

/// A Pushgateway push (HTTP PUT of the whole group) at the end of the run.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPushgateway {
    /// Base URL of the Pushgateway, e.g. `http://pushgateway:9091`.
    pub url: String,
    /// The `job` of the grouping key. Default `bootplan`.
    #[serde(default)]
    pub job: Option<String>,
    /// Further grouping labels (fixed values such as `env: prod`). The plan
    /// name is always added as `plan`. Never put an instance id here: each
    /// value makes a group that the Pushgateway keeps forever.
    #[serde(default)]
    pub grouping: IndexMap<String, String>,
}

/// Where traces go.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTraces {
    /// OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318` (spans are POSTed to
    /// `/v1/traces` under it unless the URL already has a path).
    pub otlp: String,
    /// How long bootplan may spend flushing spans at exit. Default 5s.
    #[serde(default)]
    pub flush_timeout: Option<HumanDuration>,
}

/// Resolved telemetry settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryConfig {
    pub listen: Option<SocketAddr>,
    pub textfile: Option<PathBuf>,
    pub pushgateway: Option<PushgatewayConfig>,
    pub otlp: Option<String>,
    pub flush_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PushgatewayConfig {
    pub url: String,
    pub job: String,
    pub grouping: Vec<(String, String)>,
}

impl TelemetryConfig {
    pub fn metrics_enabled(&self) -> bool {
        self.listen.is_some() || self.textfile.is_some() || self.pushgateway.is_some()
    }
}

/// Labels a grouping key may not use: they are set by bootplan or name
/// something per machine (unbounded).
const RESERVED_GROUPING: &[&str] = &[
    "job",
    "plan",
    "instance_id",
    "bootstrap_id",
    "machine_id",
    "boot_id",
];

/// A problem in the telemetry section: field path, message, hint.
pub type Problem = (String, String, Option<String>);

/// Checks the raw section; `plan_dir` resolves a relative textfile path.
pub fn resolve(raw: Option<&RawTelemetry>, plan_dir: &Path) -> (TelemetryConfig, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut config = TelemetryConfig::default();
    let Some(raw) = raw else {
        return (config, problems);
    };
    if let Some(metrics) = &raw.metrics {
        if let Some(listen) = &metrics.listen {
            match listen.parse::<SocketAddr>() {
                Ok(addr) => config.listen = Some(addr),
                Err(_) => problems.push((
                    "telemetry.metrics.listen".into(),
                    format!("`{listen}` is not an IP address and port"),
                    Some("e.g. `127.0.0.1:9464` or `0.0.0.0:9464`".into()),
                )),
            }
        }
        config.textfile = metrics.textfile.as_ref().map(|t| plan_dir.join(t));
        if let Some(push) = &metrics.pushgateway {
            match pushgateway(push) {
                Ok(p) => config.pushgateway = Some(p),
                Err(mut found) => problems.append(&mut found),
            }
        }
    }
    if let Some(traces) = &raw.traces {
        if let Err(problem) = check_url(&traces.otlp, "telemetry.traces.otlp") {
            problems.push(problem);
        }
        config.otlp = Some(traces.otlp.clone());
        config.flush_timeout = traces.flush_timeout.map(|d| d.get());
    }
    (config, problems)
}

fn pushgateway(raw: &RawPushgateway) -> Result<PushgatewayConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    if let Err(p) = check_url(&raw.url, "telemetry.metrics.pushgateway.url") {
        problems.push(p);
    }
    let job = raw.job.clone().unwrap_or_else(|| "bootplan".into());
    if job.is_empty() {
        problems.push((
            "telemetry.metrics.pushgateway.job".into(),
            "the job name is empty".into(),
            None,
        ));
    }
    let mut grouping = Vec::new();
    for (name, value) in &raw.grouping {
        let field = format!("telemetry.metrics.pushgateway.grouping.{name}");
        if !is_label_name(name) {
            problems.push((
                field,
                format!("`{name}` is not a Prometheus label name"),
                Some("use letters, digits and `_`, not starting with a digit".into()),
            ));
        } else if RESERVED_GROUPING.contains(&name.as_str()) {
            problems.push((
                field,
                format!("`{name}` cannot be a grouping label"),
                Some("`job` and `plan` are set by bootplan; per-machine ids would make one Pushgateway group per machine, kept forever".into()),
            ));
        } else if value.contains("{{") {
            problems.push((
                field,
                "grouping values are fixed strings, not templates".into(),
                Some("a per-machine value would make an unbounded number of groups".into()),
            ));
        } else {
            grouping.push((name.clone(), value.clone()));
        }
    }
    if problems.is_empty() {
        Ok(PushgatewayConfig {
            url: raw.url.clone(),
            job,
            grouping,
        })
    } else {
        Err(problems)
    }
}

fn check_url(url: &str, field: &str) -> Result<(), Problem> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err((
            field.into(),
            format!("`{url}` is not an http:// or https:// URL"),
            None,
        ))
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not the reserved `__` prefix.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_rejects() {
        let raw = RawTelemetry {
            metrics: Some(RawMetrics {
                listen: Some("127.0.0.1:9464".into()),
                textfile: Some("out/bootplan.prom".into()),
                pushgateway: Some(RawPushgateway {
                    url: "http://127.0.0.1:9091".into(),
                    job: None,
                    grouping: [("env".to_string(), "prod".to_string())]
                        .into_iter()
                        .collect(),
                }),
            }),
            traces: Some(RawTraces {
                otlp: "http://127.0.0.1:4318".into(),
                flush_timeout: None,
            }),
        };
        let (config, problems) = resolve(Some(&raw), Path::new("/etc/bootplan"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            config.textfile,
            Some(PathBuf::from("/etc/bootplan/out/bootplan.prom"))
        );
        assert_eq!(config.pushgateway.unwrap().job, "bootplan");

        let bad = RawTelemetry {
            metrics: Some(RawMetrics {
                listen: Some("localhost".into()),
                textfile: None,
                pushgateway: Some(RawPushgateway {
                    url: "pushgateway:9091".into(),
                    job: None,
                    grouping: [
                        ("instance_id".to_string(), "i-1".to_string()),
                        ("az".to_string(), "{{ facts.zone }}".to_string()),
                        ("9x".to_string(), "v".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                }),
            }),
            traces: None,
        };
        let (_, problems) = resolve(Some(&bad), Path::new("/"));
        assert_eq!(problems.len(), 5, "{problems:?}");
    }

    #[test]
    fn label_names() {
        assert!(is_label_name("env"));
        assert!(is_label_name("_x1"));
        assert!(!is_label_name("1x"));
        assert!(!is_label_name("a-b"));
        assert!(!is_label_name("__name__"));
    }
}
