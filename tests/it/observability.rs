//! Observability: the metrics endpoint scraped by a real
//! Prometheus, the textfile and a real Pushgateway checked by promtool,
//! alerting rules unit-tested by promtool, traces decoded from a loopback
//! OTLP/HTTP receiver, and the analyze report rendered by headless Chromium.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

use crate::harness::{Sandbox, code, dump, free_port, log_lines, peer, wait_until};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Kills the server when the test ends, however it ends.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(url: &str) -> Option<(u16, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .ok()?;
    let resp = client.get(url).send().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().unwrap_or_default()))
}

fn promtool_check_metrics(promtool: &Path, text: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_prometheus(prometheus: &Path, target: &str) -> (Server, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: bootplan\n    static_configs: [{{ targets: ['{target}'] }}]\n"
        ),
    )
    .unwrap();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let server = Server { child, _dir: dir };
    wait_until("prometheus ready", Duration::from_secs(60), || {
        http_get(&format!("http://127.0.0.1:{port}/-/ready")).is_some_and(|(s, _)| s == 200)
    });
    (server, port)
}

fn start_pushgateway(binary: &Path) -> (Server, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pushgateway");
    let server = Server { child, _dir: dir };
    wait_until("pushgateway ready", Duration::from_secs(30), || {
        http_get(&format!("http://127.0.0.1:{port}/-/ready")).is_some_and(|(s, _)| s == 200)
    });
    (server, port)
}

/// A `bootplan run` left running in the background, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn endpoint_serves_while_running_and_prometheus_scrapes_it() {
    let (Some(promtool), Some(prometheus)) = (peer("promtool"), peer("prometheus")) else {
        return;
    };
    let sb = Sandbox::new();
    let port = free_port();
    sb.plan(&format!(
        r#"
version: 1
name: obs-endpoint
telemetry:
  metrics: {{ listen: "127.0.0.1:{port}" }}
steps:
  first:
    run: ["true"]
  gate:
    run: ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done"]
    needs: [first]
"#
    ));
    let child = sb
        .cmd()
        .args(["run", "plan.yaml", "--metrics-linger", "120s"])
        .args(["--metrics-textfile", "during.prom"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_until("endpoint up", Duration::from_secs(20), || {
        http_get(&format!("{base}/healthz")).is_some_and(|(s, _)| s == 200)
    });
    // Mid-run: not ready, status says running, metrics already valid.
    let (status, _) = http_get(&format!("{base}/readyz")).unwrap();
    assert_eq!(status, 503, "/readyz must not be 200 before ready");
    let (_, mid) = http_get(&format!("{base}/metrics")).unwrap();
    promtool_check_metrics(&promtool, &mid);
    assert!(
        mid.contains("bootplan_ready{plan=\"obs-endpoint\"} 0"),
        "{mid}"
    );
    // The textfile (set by flag) already shows the run as not ready.
    let during = sb.read("during.prom");
    assert!(
        during.contains("bootplan_ready{plan=\"obs-endpoint\"} 0"),
        "{during}"
    );
    assert!(during.contains("bootplan_runs_total{plan=\"obs-endpoint\",outcome=\"ready\"} 0"));

    sb.write("go", "");
    wait_until("ready", Duration::from_secs(20), || {
        http_get(&format!("{base}/readyz")).is_some_and(|(s, _)| s == 200)
    });
    let (_, status_json) = http_get(&format!("{base}/status")).unwrap();
    let doc: Value = serde_json::from_str(&status_json).unwrap();
    assert_eq!(doc["outcome"], "ready");
    assert_eq!(doc["steps"]["gate"]["needs"][0], "first");
    let (_, text) = http_get(&format!("{base}/metrics")).unwrap();
    promtool_check_metrics(&promtool, &text);
    assert!(
        text.contains("# TYPE bootplan_time_to_ready_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("bootplan_runs_total{plan=\"obs-endpoint\",outcome=\"ready\"} 1"));
    // The final textfile is written right after the verdict.
    wait_until("final textfile", Duration::from_secs(10), || {
        sb.read("during.prom")
            .contains("bootplan_ready{plan=\"obs-endpoint\"} 1")
    });

    let (_prom, prom_port) = start_prometheus(&prometheus, &format!("127.0.0.1:{port}"));
    let query = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=bootplan_runs_total%7Boutcome%3D%22ready%22%7D"
    );
    let mut last = String::new();
    wait_until("prometheus has the series", Duration::from_secs(60), || {
        let Some((_, body)) = http_get(&query) else {
            return false;
        };
        last = body.clone();
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().is_some_and(|r| {
            r.iter().any(|s| {
                s["metric"]["plan"] == "obs-endpoint"
                    && s["metric"]["job"] == "bootplan"
                    && s["value"][1] == "1"
            })
        })
    });
    assert!(last.contains("obs-endpoint"));

    // SIGTERM ends the linger promptly with the run's verdict.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut status = None;
    wait_until(
        "bootplan exits after SIGTERM",
        Duration::from_secs(15),
        || {
            status = running.0.try_wait().unwrap();
            status.is_some()
        },
    );
    assert_eq!(status.unwrap().code(), Some(0));
}

#[test]
fn textfile_and_pushgateway_get_the_final_metrics() {
    let (Some(promtool), Some(pushgateway)) = (peer("promtool"), peer("prometheus-pushgateway"))
    else {
        return;
    };
    let (_pg, pg_port) = start_pushgateway(&pushgateway);
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: obs-push
telemetry:
  metrics:
    textfile: out/bootplan.prom
    pushgateway:
      url: "http://127.0.0.1:{pg_port}"
      grouping: {{ env: it }}
steps:
  flaky:
    run: ["sh", "-c", "test -e once || {{ touch once; exit 4; }}"]
    retry: {{ attempts: 3, backoff: 10ms..20ms }}
  svc:
    service: ["sleep", "30"]
    ready: {{ command: ["true"], interval: 50ms }}
  after:
    run: ["true"]
    needs: [flaky, svc]
"#
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let text = sb.read("out/bootplan.prom");
    promtool_check_metrics(&promtool, &text);
    for want in [
        "bootplan_runs_total{plan=\"obs-push\",outcome=\"ready\"} 1",
        "bootplan_step_retries_total{plan=\"obs-push\",step=\"flaky\"} 1",
        "bootplan_errors_total{plan=\"obs-push\",code=\"step.exit_nonzero\"} 1",
        "bootplan_step_duration_seconds_count{plan=\"obs-push\",step=\"after\",outcome=\"done\"} 1",
        "bootplan_ready{plan=\"obs-push\"} 1",
        "bootplan_service_ready_seconds_count{plan=\"obs-push\",step=\"svc\"} 1",
        "# TYPE bootplan_service_ready_seconds histogram",
    ] {
        assert!(text.contains(want), "missing {want} in textfile:\n{text}");
    }
    // No temp file left beside it: the write was atomic.
    let leftovers: Vec<_> = std::fs::read_dir(sb.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let (_, pushed) = http_get(&format!("http://127.0.0.1:{pg_port}/metrics")).unwrap();
    let line = pushed
        .lines()
        .find(|l| l.starts_with("bootplan_runs_total{") && l.contains("outcome=\"ready\""))
        .unwrap_or_else(|| panic!("no pushed runs_total in:\n{pushed}"));
    for label in ["env=\"it\"", "job=\"bootplan\"", "plan=\"obs-push\""] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    assert!(line.ends_with(" 1"), "{line}");
    assert!(
        !pushed.contains("instance_id") && !pushed.contains("bootstrap_id"),
        "unbounded labels pushed"
    );
}

#[test]
fn invalid_plan_is_counted_in_the_textfile_set_by_flags() {
    let Some(promtool) = peer("promtool") else {
        return;
    };
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: broken\nsteps:\n  a:\n    run: [\"true\"]\n    needs: [missing]\n");
    let out = sb
        .cmd()
        .args(["run", "plan.yaml", "--metrics-textfile", "invalid.prom"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let text = sb.read("invalid.prom");
    promtool_check_metrics(&promtool, &text);
    assert!(
        text.contains("bootplan_plan_validation_failures_total{plan=\"plan\"} 1"),
        "{text}"
    );
    assert!(text.contains("bootplan_runs_total{plan=\"plan\",outcome=\"invalid\"} 1"));
}

#[test]
fn alerting_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = peer("promtool") else {
        return;
    };
    let dir = Path::new(REPO).join("deploy/prometheus");
    let check = Command::new(&promtool)
        .args([
            "check",
            "rules",
            "recording_rules.yml",
            "alerting_rules.yml",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new(&promtool)
        .args(["test", "rules", "tests/alerting_test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert is unit-tested and links to an existing runbook section.
    let alerts = std::fs::read_to_string(dir.join("alerting_rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("tests/alerting_test.yml")).unwrap();
    let runbook = std::fs::read_to_string(Path::new(REPO).join("docs/runbook.md")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 4);
    for name in names {
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "{name} has no firing test"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts: []")),
            "{name} has no quiet test"
        );
        assert!(
            runbook.contains(&format!("\n## alert: {name}\n")),
            "docs/runbook.md lacks `## alert: {name}`"
        );
    }
}

/// `bootplan_*` metric names in a text (recording-rule names have colons
/// and are not matched); histogram series suffixes are folded into the family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("bootplan_") {
        let start = i + pos;
        let preceded = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded && bytes.get(end) != Some(&b':') {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_count", "_sum"] {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
            names.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn every_metric_in_rules_and_dashboards_is_one_bootplan_exports() {
    // What a real run exports...
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: obs-names
telemetry: { metrics: { textfile: m.prom } }
steps:
  a:
    run: ["sh", "-c", "test -e once || { touch once; exit 4; }"]
    retry: { attempts: 2, backoff: 10ms..20ms }
"#,
    );
    let out = sb.run();
    let exported_text = sb.read("m.prom");
    assert!(!exported_text.is_empty(), "{}", dump(&out));
    let mut exported: BTreeSet<String> = exported_text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    // ...plus the families that only appear when a secret backend or the
    // kernel boot clock records them; they must be declared in the source.
    let source = std::fs::read_to_string(Path::new(REPO).join("src/telemetry/metrics.rs")).unwrap();
    for name in [
        "bootplan_secret_fetch_duration_seconds",
        "bootplan_secret_fetch_errors_total",
        "bootplan_boot_to_ready_seconds",
        "bootplan_service_ready_seconds",
        "bootplan_secret_rotations_total",
        "bootplan_secret_expiry_timestamp_seconds",
    ] {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{name} not declared"
        );
        exported.insert(name.to_string());
    }
    let mut used = BTreeSet::new();
    let mut files = vec![
        "deploy/prometheus/recording_rules.yml",
        "deploy/prometheus/alerting_rules.yml",
    ];
    files.extend([
        "deploy/grafana/executive.json",
        "deploy/grafana/oncall.json",
        "deploy/grafana/debug.json",
    ]);
    for file in files {
        let text = std::fs::read_to_string(Path::new(REPO).join(file)).unwrap();
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} uses no bootplan metric");
        used.extend(names);
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "used but not exported: {unknown:?}\nexported: {exported:?}"
    );
    // The dashboards parse as JSON with panels.
    for name in ["executive", "oncall", "debug"] {
        let text =
            std::fs::read_to_string(Path::new(REPO).join(format!("deploy/grafana/{name}.json")))
                .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["panels"].as_array().is_some_and(|p| p.len() >= 5),
            "{name}"
        );
    }
}

// ---- traces ------------------------------------------------------------

/// A loopback OTLP/HTTP receiver: decodes every POSTed
/// ExportTraceServiceRequest. While `refuse` is set it answers 503 (a
/// collector that is not up yet) and counts the refusals.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    refuse: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

impl Receiver {
    fn start(refuse: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicBool::new(refuse));
        let refused = Arc::new(AtomicUsize::new(0));
        let (s, r, n) = (spans.clone(), refuse.clone(), refused.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (s, r, n) = (s.clone(), r.clone(), n.clone());
                std::thread::spawn(move || serve_otlp(conn, &s, &r, &n));
            }
        });
        Receiver {
            port,
            spans,
            refuse,
            refused,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn serve_otlp(
    conn: TcpStream,
    spans: &Mutex<Vec<Span>>,
    refuse: &AtomicBool,
    refused: &AtomicUsize,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if refuse.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            "503 Service Unavailable"
        } else {
            let request =
                ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
            let mut all = spans.lock().unwrap();
            for rs in request.resource_spans {
                for ss in rs.scope_spans {
                    all.extend(ss.spans);
                }
            }
            "200 OK"
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        );
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_PLAN: &str = r#"
version: 1
name: obs-traces
telemetry:
  traces: { otlp: "http://127.0.0.1:PORT" }
steps:
  a:
    run: ["true"]
  b:
    run: ["sh", "-c", "test -e once || { touch once; exit 4; }"]
    retry: { attempts: 3, backoff: 10ms..20ms }
  c:
    run: ["sh", "-c", "printf %s \"$TRACEPARENT\" > traceparent.txt; echo hello"]
    needs: [a, b]
"#;

#[test]
fn traces_have_the_bootstrap_step_attempt_tree_and_children_get_traceparent() {
    let receiver = Receiver::start(false);
    let sb = Sandbox::new();
    sb.plan(&TRACE_PLAN.replace("PORT", &receiver.port.to_string()));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    // Flushed before exit: everything is already there.
    let spans = receiver.spans();
    let bootstrap_id = sb.status()["bootstrap_id"].as_str().unwrap().to_string();
    let by_name: HashMap<String, &Span> = spans.iter().map(|s| (s.name.clone(), s)).collect();
    let root = by_name
        .get("bootstrap")
        .unwrap_or_else(|| panic!("no root span in {spans:#?}"));
    assert!(root.parent_span_id.is_empty(), "the root has no parent");
    assert_eq!(
        attr(root, "bootstrap.id").as_deref(),
        Some(bootstrap_id.as_str())
    );
    assert_eq!(attr(root, "outcome").as_deref(), Some("ready"));
    // Only the documented attributes: no source paths, threads or timings.
    let allowed = [
        "bootstrap.id",
        "plan",
        "step",
        "step.kind",
        "attempt",
        "attempts",
        "outcome",
        "error.code",
    ];
    for s in &spans {
        assert_eq!(
            s.trace_id, root.trace_id,
            "one trace per bootstrap: {}",
            s.name
        );
        for kv in &s.attributes {
            assert!(
                allowed.contains(&kv.key.as_str()),
                "{}: unexpected attribute {}",
                s.name,
                kv.key
            );
        }
        assert!(s.events.is_empty(), "{}: events {:?}", s.name, s.events);
    }
    for step in ["a", "b", "c"] {
        let span = by_name[&format!("step {step}")];
        assert_eq!(
            span.parent_span_id, root.span_id,
            "step {step} is a child of the root"
        );
        assert_eq!(attr(span, "step").as_deref(), Some(step));
        assert_eq!(attr(span, "outcome").as_deref(), Some("done"));
        assert_eq!(
            attr(span, "bootstrap.id").as_deref(),
            Some(bootstrap_id.as_str())
        );
    }
    let step_b = by_name["step b"];
    let mut attempts_b: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == step_b.span_id)
        .collect();
    attempts_b.sort_by_key(|s| attr(s, "attempt"));
    assert_eq!(attempts_b.len(), 2, "two attempts of b: {attempts_b:#?}");
    assert_eq!(attr(attempts_b[0], "attempt").as_deref(), Some("1"));
    assert_eq!(
        attr(attempts_b[0], "error.code").as_deref(),
        Some("step.exit_nonzero")
    );
    assert_eq!(attr(attempts_b[0], "outcome").as_deref(), Some("failed"));
    assert_eq!(attr(attempts_b[1], "outcome").as_deref(), Some("ok"));
    assert_eq!(attr(step_b, "attempts").as_deref(), Some("2"));

    // The child process got the W3C trace context of its step's span.
    let step_c = by_name["step c"];
    let traceparent = sb.read("traceparent.txt");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "TRACEPARENT {traceparent:?}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], hex(&root.trace_id));
    assert_eq!(parts[2], hex(&step_c.span_id));
    assert_eq!(parts[3], "01", "sampled");

    // Log lines carry the trace and span ids.
    let lines = log_lines(&out);
    let output_line = lines
        .iter()
        .find(|l| l["event"] == "output" && l["step"] == "c")
        .unwrap_or_else(|| panic!("no output line: {}", dump(&out)));
    assert_eq!(output_line["trace_id"], hex(&root.trace_id));
    let attempt_c = spans
        .iter()
        .find(|s| s.parent_span_id == step_c.span_id)
        .unwrap();
    assert_eq!(output_line["span_id"], hex(&attempt_c.span_id));
}

#[test]
fn a_batch_under_way_at_the_end_is_sent_once() {
    // More spans than one batch: the flush task sends a batch while the
    // steps still run, and the run may end before its answer.
    let receiver = Receiver::start(false);
    let sb = Sandbox::new();
    let mut plan = format!(
        "version: 1\nname: obs-batches\ntelemetry:\n  traces: {{ otlp: \"http://127.0.0.1:{}\" }}\nsteps:\n",
        receiver.port
    );
    for i in 0..400 {
        plan.push_str(&format!("  w{i}:\n    wait: {{ file: plan.yaml }}\n"));
    }
    sb.plan(&plan);
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let spans = receiver.spans();
    let ids: BTreeSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    assert_eq!(ids.len(), spans.len(), "no span arrives twice");
    // The root, and a step and an attempt span per step.
    assert_eq!(spans.len(), 1 + 2 * 400);
}

#[test]
fn spans_are_kept_while_the_collector_is_down_and_sent_later() {
    let receiver = Receiver::start(true);
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: obs-buffer
telemetry:
  traces: {{ otlp: "http://127.0.0.1:{}" }}
steps:
  early:
    run: ["true"]
  gate:
    run: ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done"]
    needs: [early]
"#,
        receiver.port
    ));
    let child = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    // The exporter tried (and was refused) while the run was under way.
    wait_until("an export attempt", Duration::from_secs(30), || {
        receiver.refused.load(Ordering::SeqCst) > 0
    });
    receiver.refuse.store(false, Ordering::SeqCst);
    sb.write("go", "");
    let mut status = None;
    wait_until("run ends", Duration::from_secs(30), || {
        status = running.0.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
    let names: BTreeSet<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    for want in ["bootstrap", "step early", "step gate", "attempt 1"] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
}

#[test]
fn a_silent_collector_never_holds_up_exit() {
    // Accepts connections (the kernel does, from the backlog) but never answers.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = black_hole.local_addr().unwrap().port();
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: obs-silent
telemetry:
  traces: {{ otlp: "http://127.0.0.1:{port}", flush_timeout: 1s }}
steps:
  a:
    run: ["true"]
"#
    ));
    let started = std::time::Instant::now();
    let out = sb.run();
    let took = started.elapsed();
    assert_eq!(
        code(&out),
        0,
        "telemetry never changes the verdict: {}",
        dump(&out)
    );
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
    let warned = log_lines(&out)
        .iter()
        .any(|l| l["level"] == "warn" && l["msg"].as_str().is_some_and(|m| m.contains("spans")));
    assert!(
        warned,
        "a warning says spans were not delivered: {}",
        dump(&out)
    );
    drop(black_hole);
}

// ---- analyze ------------------------------------------------------------

#[test]
fn analyze_blame_chain_svg_and_html() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: obs-analyze
steps:
  slow:
    run: ["sh", "-c", "sleep 0.3"]
  flaky:
    run: ["sh", "-c", "test -e once || { touch once; exit 4; }"]
    retry: { attempts: 3, backoff: 50ms..60ms }
  last:
    run: ["true"]
    needs: [slow, flaky]
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let analyze = |args: &[&str]| {
        let out = sb.cmd().arg("analyze").args(args).output().unwrap();
        assert_eq!(code(&out), 0, "{}", dump(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let blame = analyze(&["blame"]);
    let first = blame.lines().next().unwrap();
    assert!(first.contains("slow"), "slowest first: {blame}");

    let chain = analyze(&["critical-chain"]);
    assert!(chain.contains("└─last"), "{chain}");
    assert!(chain.contains("  └─slow"), "slow gated last: {chain}");

    let json: Value =
        serde_json::from_str(&analyze(&["critical-chain", "--format", "json"])).unwrap();
    let links: Vec<&str> = json["critical_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert_eq!(links, ["slow", "last"]);
    assert!(json["critical_chain"][0]["run_ms"].as_u64().unwrap() >= 300);

    let status_file = sb.run_dir().join("status.json");
    let svg = analyze(&["--format", "svg", "--status", status_file.to_str().unwrap()]);
    let doc = roxmltree::Document::parse(&svg).expect("SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let flaky = doc
        .descendants()
        .find(|n| n.attribute("data-step") == Some("flaky"))
        .expect("a row for flaky");
    let fills: Vec<&str> = flaky
        .descendants()
        .filter_map(|n| n.attribute("fill"))
        .collect();
    assert!(fills.contains(&"#c62828"), "a failed attempt: {fills:?}");
    assert!(fills.contains(&"#f9a825"), "a backoff: {fills:?}");
    assert!(fills.contains(&"#2e7d32"), "an ok attempt: {fills:?}");

    let html = analyze(&["--format", "html"]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        !html.contains("<script") && !html.contains(" src=") && !html.contains(" href="),
        "self-contained"
    );
    let page = sb.write("report.html", &html);
    let Some(chromium) = peer("chromium") else {
        return;
    };
    let shot_dir = Path::new(REPO).join("target/observability");
    std::fs::create_dir_all(&shot_dir).unwrap();
    let shot = shot_dir.join("analyze-waterfall.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Bounded: a browser that hangs fails the test instead of stalling it.
    let mut browser = Running(child);
    let mut status = None;
    wait_until(
        "chromium writes the screenshot",
        Duration::from_secs(90),
        || {
            status = browser.0.try_wait().unwrap();
            status.is_some()
        },
    );
    assert!(status.unwrap().success(), "chromium failed: {status:?}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a real rendering, not a blank page ({} bytes)",
        png.len()
    );
}
