//! Facts: every provider against a loopback metadata server answering with
//! the documented response shapes (fixtures in `tests/fixtures/facts/`),
//! NoCloud against the seed files Debian's cloud-init ships, auto-detection
//! over DMI fixture trees, and the run-time contracts (`facts.unreachable`,
//! fallback, `when:`, clone detection, user data never shown).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Sandbox, code, dump, log_lines, under_ci};

// ---------------------------------------------------------------- server

/// One request as the fake metadata server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: String,
    /// Path and query, e.g. `/metadata/instance?api-version=2021-02-01`.
    pub(crate) target: String,
    headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Req {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What the server answers.
pub(crate) struct Reply {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

pub(crate) fn ok(body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status: 200,
        body: body.into(),
        delay: Duration::ZERO,
    }
}
/// An answer with `code` and `body`.
pub(crate) fn reply(code: u16, body: impl Into<Vec<u8>>) -> Reply {
    Reply {
        status: code,
        body: body.into(),
        delay: Duration::ZERO,
    }
}
pub(crate) fn status(code: u16) -> Reply {
    Reply {
        status: code,
        body: Vec::new(),
        delay: Duration::ZERO,
    }
}

type Handler = dyn Fn(&Req, usize) -> Reply + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1 (one thread per connection,
/// `Connection: close`), recording every request. Stopped on drop.
pub(crate) struct MetadataServer {
    port: u16,
    requests: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetadataServer {
    /// `handler` gets the request and how many requests with the same path
    /// came before it (for "fail twice, then answer").
    pub(crate) fn start(
        handler: impl Fn(&Req, usize) -> Reply + Send + Sync + 'static,
    ) -> MetadataServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (reqs, handler) = (reqs.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, &reqs, &*handler));
            }
        });
        MetadataServer {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    pub(crate) fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path() == path).count()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, reqs: &Mutex<Vec<Req>>, handler: &Handler) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let req = Req {
        method,
        target,
        headers,
        body,
    };
    let seen = {
        let mut all = reqs.lock().unwrap();
        let seen = all.iter().filter(|r| r.path() == req.path()).count();
        all.push(req.clone());
        seen
    };
    let reply = handler(&req, seen);
    if !reply.delay.is_zero() {
        std::thread::sleep(reply.delay);
    }
    let mut out = stream;
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&reply.body);
}

// ---------------------------------------------------------------- fixtures and helpers

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/facts")
        .join(rel)
}

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

pub(crate) const AWS_TOKEN: &str = "AQAEAFixtureTokenForLoopbackTests==";

/// AWS IMDS in IMDSv2-required mode: GETs without the session token get 401,
/// a token PUT without the TTL header gets 400 (as the real service does).
pub(crate) fn aws_handler(req: &Req, _seen: usize) -> Reply {
    if req.path() == "/latest/api/token" {
        if req.method != "PUT" {
            return status(405);
        }
        if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
            return status(400);
        }
        return ok(AWS_TOKEN);
    }
    if req.header("x-aws-ec2-metadata-token") != Some(AWS_TOKEN) {
        return status(401);
    }
    match req.path() {
        "/latest/dynamic/instance-identity/document" => {
            ok(fixture_bytes("aws/identity-document.json"))
        }
        "/latest/meta-data/local-hostname" => ok("ip-10-158-112-84.us-west-2.compute.internal"),
        "/latest/meta-data/public-ipv4" => ok("54.191.24.7"),
        "/latest/meta-data/tags/instance" => ok("Name\nEnvironment"),
        "/latest/meta-data/tags/instance/Name" => ok("web-1"),
        "/latest/meta-data/tags/instance/Environment" => ok("production"),
        "/latest/user-data" => ok(fixture_bytes("aws/user-data")),
        _ => status(404),
    }
}

/// GCE refuses requests without `Metadata-Flavor: Google` (403).
fn gcp_handler(req: &Req, _seen: usize) -> Reply {
    if req.header("metadata-flavor") != Some("Google") {
        return status(403);
    }
    match req.target.as_str() {
        "/computeMetadata/v1/?recursive=true&alt=json" => ok(fixture_bytes("gcp/recursive.json")),
        _ => status(404),
    }
}

/// Azure IMDS answers 400 without `Metadata: true` or without an api-version.
fn azure_handler(req: &Req, _seen: usize) -> Reply {
    if req.header("metadata") != Some("true") || !req.target.contains("api-version=") {
        return status(400);
    }
    use base64::Engine;
    match req.path() {
        "/metadata/instance" => ok(fixture_bytes("azure/instance.json")),
        "/metadata/instance/compute/userData" => {
            ok(base64::engine::general_purpose::STANDARD.encode(fixture_bytes("azure/user-data")))
        }
        _ => status(404),
    }
}

fn openstack_handler(req: &Req, _seen: usize) -> Reply {
    match req.path() {
        "/openstack/latest/meta_data.json" => ok(fixture_bytes("openstack/network/meta_data.json")),
        "/openstack/latest/user_data" => ok(fixture_bytes("openstack/network/user_data")),
        "/latest/meta-data/instance-type" => ok("m1.small"),
        "/latest/meta-data/local-ipv4" => ok("10.0.0.5"),
        "/latest/meta-data/public-ipv4" => status(404),
        "/latest/meta-data/ami-id" => ok("ami-00000001"),
        _ => status(404),
    }
}

fn digitalocean_handler(req: &Req, _seen: usize) -> Reply {
    match req.path() {
        "/metadata/v1.json" => ok(fixture_bytes("digitalocean/v1.json")),
        "/metadata/v1/user-data" => ok(fixture_bytes("digitalocean/user-data")),
        _ => status(404),
    }
}

/// `bootplan facts --json` plus `extra` args, with `env` set.
fn facts(sb: &Sandbox, extra: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = sb.cmd();
    cmd.args(["facts", "--json"]).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run bootplan facts")
}

fn facts_json(out: &Output) -> Value {
    assert_eq!(code(out), 0, "{}", dump(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", dump(out)))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plan that only sets facts options (for `bootplan facts --plan`).
fn facts_plan(sb: &Sandbox, facts_block: &str) -> PathBuf {
    sb.write(
        "facts-plan.yaml",
        &format!(
            "version: 1\nname: facts\nfacts: {facts_block}\nsteps:\n  noop: {{ run: [\"true\"] }}\n"
        ),
    )
}

// ---------------------------------------------------------------- providers

#[test]
fn aws_imdsv2_identity_document_tags_and_user_data() {
    let server = MetadataServer::start(aws_handler);
    let sb = Sandbox::new();
    let env = [("BOOTPLAN_METADATA_URL_AWS", server.url())];
    let f = facts_json(&facts(&sb, &["--provider", "aws"], &env));
    assert_eq!(f["cloud"], "aws");
    assert_eq!(f["instance_id"], "i-1234567890abcdef0");
    assert_eq!(f["region"], "us-west-2");
    assert_eq!(f["zone"], "us-west-2b");
    assert_eq!(f["instance_type"], "t2.micro");
    assert_eq!(f["image_id"], "ami-0b69ea66ff7391e80");
    assert_eq!(f["account"], "123456789012");
    assert_eq!(f["local_ipv4"], "10.158.112.84");
    assert_eq!(f["public_ipv4"], "54.191.24.7");
    assert_eq!(f["hostname"], "ip-10-158-112-84.us-west-2.compute.internal");
    assert_eq!(f["tags"]["Name"], "web-1");
    assert_eq!(f["tags"]["Environment"], "production");
    assert!(
        f.get("user_data").is_none(),
        "user data must not be printed: {f}"
    );
    // One token for the whole gathering, with the TTL header; every GET carried it.
    let reqs = server.requests();
    let puts: Vec<&Req> = reqs.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "{reqs:?}");
    assert_eq!(
        puts[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    assert!(
        reqs.iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.header("x-aws-ec2-metadata-token") == Some(AWS_TOKEN))
    );

    // The raw user data only with --user-data, byte for byte.
    let out = facts(&sb, &["--provider", "aws", "--user-data"], &env);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(out.stdout, fixture_bytes("aws/user-data"));
}

#[test]
fn aws_token_refused_fails_with_facts_unreachable() {
    // IMDSv2 required and tokens refused (403 on the PUT): GETs without a
    // token would be 401, so bootplan must stop at the token, not guess.
    let server = MetadataServer::start(|req, seen| {
        if req.path() == "/latest/api/token" {
            return status(403);
        }
        aws_handler(req, seen)
    });
    let sb = Sandbox::new();
    let out = facts(
        &sb,
        &["--provider", "aws"],
        &[("BOOTPLAN_METADATA_URL_AWS", server.url())],
    );
    assert_eq!(code(&out), 69, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("facts.unreachable")
            && err.contains("/latest/api/token")
            && err.contains("403"),
        "{err}"
    );
    assert_eq!(
        server.count("/latest/dynamic/instance-identity/document"),
        0
    );
}

#[test]
fn aws_without_token_gets_401_which_is_reported() {
    // A service that has no token endpoint (404) yet requires one on GETs:
    // bootplan falls back to IMDSv1 requests and reports the 401 it gets.
    let server = MetadataServer::start(|req, seen| {
        if req.path() == "/latest/api/token" {
            return status(404);
        }
        aws_handler(req, seen)
    });
    let sb = Sandbox::new();
    let out = facts(
        &sb,
        &["--provider", "aws"],
        &[("BOOTPLAN_METADATA_URL_AWS", server.url())],
    );
    assert_eq!(code(&out), 69, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let get = server
        .requests()
        .into_iter()
        .find(|r| r.method == "GET")
        .expect("a GET");
    assert_eq!(get.header("x-aws-ec2-metadata-token"), None);
}

#[test]
fn gcp_recursive_document_with_flavor_header() {
    let server = MetadataServer::start(gcp_handler);
    let sb = Sandbox::new();
    let f = facts_json(&facts(
        &sb,
        &["--provider", "gcp"],
        &[("BOOTPLAN_METADATA_URL_GCP", server.url())],
    ));
    assert_eq!(f["cloud"], "gcp");
    assert_eq!(f["instance_id"], "4520031799277581759");
    assert_eq!(f["zone"], "us-central1-a");
    assert_eq!(f["region"], "us-central1");
    assert_eq!(f["instance_type"], "e2-medium");
    assert_eq!(
        f["hostname"],
        "web-1.us-central1-a.c.example-project.internal"
    );
    assert_eq!(f["local_ipv4"], "10.128.0.2");
    assert_eq!(f["public_ipv4"], "34.122.2.10");
    assert_eq!(f["account"], "example-project");
    assert_eq!(
        f["image_id"],
        "projects/debian-cloud/global/images/debian-12-bookworm-v20240110"
    );
    assert!(f["tags"].get("http-server").is_some(), "{f}");
    assert!(
        !stdout(&facts(
            &sb,
            &["--provider", "gcp"],
            &[("BOOTPLAN_METADATA_URL_GCP", server.url())]
        ))
        .contains("gcp-user-data-secret-value")
    );
    let out = facts(
        &sb,
        &["--provider", "gce", "--user-data"],
        &[("BOOTPLAN_METADATA_URL_GCP", server.url())],
    );
    assert!(
        stdout(&out).contains("gcp-user-data-secret-value"),
        "{}",
        dump(&out)
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("metadata-flavor") == Some("Google"))
    );
}

#[test]
fn azure_imds_with_api_version_and_metadata_header() {
    let server = MetadataServer::start(azure_handler);
    let sb = Sandbox::new();
    let env = [("BOOTPLAN_METADATA_URL_AZURE", server.url())];
    let f = facts_json(&facts(&sb, &["--provider", "azure"], &env));
    assert_eq!(f["cloud"], "azure");
    assert_eq!(f["instance_id"], "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
    assert_eq!(f["region"], "westus");
    assert_eq!(f["zone"], "1");
    assert_eq!(f["instance_type"], "Standard_A3");
    assert_eq!(f["hostname"], "examplevmname");
    assert_eq!(f["local_ipv4"], "10.144.133.132");
    assert_eq!(f["public_ipv4"], "20.42.10.7");
    assert_eq!(f["account"], "xxxxxxxx-xxxxx-xxx-xxx-xxxx");
    assert_eq!(
        f["image_id"],
        "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
    );
    assert_eq!(f["tags"]["foo"], "bar");
    let out = facts(&sb, &["--provider", "azure", "--user-data"], &env);
    assert_eq!(
        out.stdout,
        fixture_bytes("azure/user-data"),
        "{}",
        dump(&out)
    );
    for r in server.requests() {
        assert_eq!(r.header("metadata"), Some("true"));
        assert!(r.target.contains("api-version=2021-02-01"), "{}", r.target);
    }
}

#[test]
fn openstack_metadata_service() {
    let server = MetadataServer::start(openstack_handler);
    let sb = Sandbox::new();
    let env = [("BOOTPLAN_METADATA_URL_OPENSTACK", server.url())];
    let f = facts_json(&facts(&sb, &["--provider", "openstack"], &env));
    assert_eq!(f["cloud"], "openstack");
    assert_eq!(f["instance_id"], "d8e02d56-2648-49a3-bf97-6be8f1204f38");
    assert_eq!(f["zone"], "nova");
    assert_eq!(f["hostname"], "test.novalocal");
    assert_eq!(f["account"], "f7ac731cc11f40efbc03a9f9e1d1d21f");
    assert_eq!(f["instance_type"], "m1.small");
    assert_eq!(f["local_ipv4"], "10.0.0.5");
    assert!(f["public_ipv4"].is_null(), "404 means not set: {f}");
    assert_eq!(f["tags"]["role"], "webserver");
    let out = facts(&sb, &["--provider", "openstack", "--user-data"], &env);
    assert_eq!(out.stdout, fixture_bytes("openstack/network/user_data"));
}

/// A config drive: label `config-2` links to a device that the mount table
/// shows mounted at the fixture directory.
fn fake_config_drive(sb: &Sandbox, label: &str, mounted_at: &Path) -> Vec<(&'static str, String)> {
    let labels = sb.path().join("labels");
    std::fs::create_dir_all(&labels).unwrap();
    let device = sb.write("dev/sr0", "");
    std::os::unix::fs::symlink(&device, labels.join(label)).unwrap();
    let mounts = sb.write(
        "mounts",
        &format!(
            "proc /proc proc rw 0 0\n{} {} iso9660 ro 0 0\n",
            device.display(),
            mounted_at.display()
        ),
    );
    vec![
        ("BOOTPLAN_DISK_LABELS_DIR", labels.display().to_string()),
        ("BOOTPLAN_MOUNTS", mounts.display().to_string()),
    ]
}

#[test]
fn openstack_config_drive_is_read_without_network() {
    let server = MetadataServer::start(openstack_handler);
    let sb = Sandbox::new();
    let mut env = fake_config_drive(&sb, "config-2", &fixture("openstack/config-drive"));
    env.push(("BOOTPLAN_METADATA_URL_OPENSTACK", server.url()));
    let out = facts(&sb, &["--provider", "auto"], &env);
    let f = facts_json(&out);
    assert_eq!(f["cloud"], "openstack");
    assert_eq!(f["instance_id"], "d8e02d56-2648-49a3-bf97-6be8f1204f38");
    assert_eq!(f["public_ipv4"], "203.0.113.10");
    assert_eq!(f["instance_type"], "m1.small");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config drive labelled config-2"),
        "{}",
        dump(&out)
    );
    assert!(
        server.requests().is_empty(),
        "the metadata service was asked: {:?}",
        server.requests()
    );
}

#[test]
fn digitalocean_metadata_document() {
    let server = MetadataServer::start(digitalocean_handler);
    let sb = Sandbox::new();
    let env = [("BOOTPLAN_METADATA_URL_DIGITALOCEAN", server.url())];
    let f = facts_json(&facts(&sb, &["--provider", "digitalocean"], &env));
    assert_eq!(f["cloud"], "digitalocean");
    assert_eq!(f["instance_id"], "2756294");
    assert_eq!(f["region"], "nyc3");
    assert_eq!(f["hostname"], "sample-droplet");
    assert_eq!(f["public_ipv4"], "104.131.20.105");
    assert_eq!(f["local_ipv4"], "10.132.255.113");
    assert!(f["tags"].get("tag1").is_some());
    let out = facts(&sb, &["--provider", "digitalocean", "--user-data"], &env);
    assert_eq!(out.stdout, fixture_bytes("digitalocean/user-data"));
}

// ---------------------------------------------------------------- faults and the budget

#[test]
fn slow_endpoint_is_retried_within_the_budget() {
    // The identity document hangs twice (longer than the attempt timeout), then answers.
    let server = MetadataServer::start(|req, seen| {
        if req.path() == "/latest/dynamic/instance-identity/document" && seen < 2 {
            let mut r = aws_handler(req, seen);
            r.delay = Duration::from_secs(3);
            return r;
        }
        aws_handler(req, seen)
    });
    let sb = Sandbox::new();
    let plan = facts_plan(&sb, "{ provider: aws, attempt_timeout: 200ms, budget: 5s }");
    let started = Instant::now();
    let out = facts(
        &sb,
        &["--plan", plan.to_str().unwrap()],
        &[("BOOTPLAN_METADATA_URL_AWS", server.url())],
    );
    let f = facts_json(&out);
    assert_eq!(f["instance_id"], "i-1234567890abcdef0");
    assert_eq!(
        server.count("/latest/dynamic/instance-identity/document"),
        3
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn failing_endpoint_is_retried_then_answers() {
    let server = MetadataServer::start(|req, seen| {
        if req.path() == "/metadata/v1.json" && seen < 2 {
            return status(if seen == 0 { 500 } else { 503 });
        }
        digitalocean_handler(req, seen)
    });
    let sb = Sandbox::new();
    let f = facts_json(&facts(
        &sb,
        &["--provider", "digitalocean"],
        &[("BOOTPLAN_METADATA_URL_DIGITALOCEAN", server.url())],
    ));
    assert_eq!(f["instance_id"], "2756294");
    assert_eq!(server.count("/metadata/v1.json"), 3);
}

#[test]
fn budget_running_out_fails_with_facts_unreachable() {
    let server = MetadataServer::start(|_, _| status(503));
    let sb = Sandbox::new();
    let plan = facts_plan(
        &sb,
        "{ provider: gcp, attempt_timeout: 250ms, budget: 800ms }",
    );
    let started = Instant::now();
    let out = facts(
        &sb,
        &["--plan", plan.to_str().unwrap()],
        &[("BOOTPLAN_METADATA_URL_GCP", server.url())],
    );
    let elapsed = started.elapsed();
    assert_eq!(code(&out), 69, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        // The last error is the 503, or, on a loaded machine, an attempt that
        // timed out before the 503 arrived; both are "unreachable".
        err.contains("facts.unreachable")
            && err.contains("800ms")
            && (err.contains("HTTP 503") || err.contains("no answer within")),
        "{err}"
    );
    assert!(
        server.requests().len() >= 2,
        "retried: {:?}",
        server.requests().len()
    );
    assert!(
        elapsed < Duration::from_millis(6000),
        "the budget bounds the wait: {elapsed:?}"
    );

    // A hanging service is bounded the same way.
    let hang = MetadataServer::start(|_, _| Reply {
        status: 200,
        body: Vec::new(),
        delay: Duration::from_secs(10),
    });
    let started = Instant::now();
    let out = facts(
        &sb,
        &["--plan", plan.to_str().unwrap()],
        &[("BOOTPLAN_METADATA_URL_GCP", hang.url())],
    );
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert!(
        started.elapsed() < Duration::from_millis(6000),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn malformed_answer_is_facts_malformed() {
    let server = MetadataServer::start(|_, _| ok("<html>captive portal</html>"));
    let sb = Sandbox::new();
    let out = facts(
        &sb,
        &["--provider", "azure"],
        &[("BOOTPLAN_METADATA_URL_AZURE", server.url())],
    );
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("facts.malformed"),
        "{}",
        dump(&out)
    );
}

// ---------------------------------------------------------------- NoCloud (Debian's cloud-init seed)

/// The example seed shipped by Debian's cloud-init package, or `None`
/// (skip) outside CI when it is not installed. `scripts/deps/cloud-init.sh` installs it.
fn debian_seed() -> Option<PathBuf> {
    let dir = PathBuf::from("/usr/share/doc/cloud-init/examples/seed");
    if dir.join("meta-data").is_file() && dir.join("user-data").is_file() {
        return Some(dir);
    }
    assert!(
        !under_ci(),
        "cloud-init's example seed is missing: run scripts/deps/cloud-init.sh"
    );
    eprintln!(
        "skipping: {} not found (run scripts/deps/cloud-init.sh)",
        dir.display()
    );
    None
}

fn assert_debian_seed_facts(f: &Value) {
    assert_eq!(f["cloud"], "nocloud");
    assert_eq!(f["instance_id"], "i-87018aed");
    assert_eq!(f["instance_type"], "m1.large");
    assert_eq!(f["zone"], "us-east-1d");
    assert_eq!(f["image_id"], "ami-fd4aa494");
    assert_eq!(f["local_ipv4"], "10.223.26.178");
    assert_eq!(f["public_ipv4"], "184.72.174.120");
}

#[test]
fn nocloud_seed_dir_from_debian_cloud_init() {
    let Some(seed) = debian_seed() else { return };
    let sb = Sandbox::new();
    let env = [(
        "BOOTPLAN_SEED_DIRS",
        format!("/nonexistent:{}", seed.display()),
    )];
    let out = facts(&sb, &["--provider", "auto"], &env);
    let f = facts_json(&out);
    assert_debian_seed_facts(&f);
    assert_eq!(f["hostname"], "domU-12-31-38-07-19-44.compute-1.internal");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("seed directory"),
        "{}",
        dump(&out)
    );
    let out = facts(&sb, &["--provider", "auto", "--user-data"], &env);
    assert_eq!(out.stdout, std::fs::read(seed.join("user-data")).unwrap());
}

#[test]
fn nocloud_kernel_cmdline_file_seed() {
    let Some(seed) = debian_seed() else { return };
    let sb = Sandbox::new();
    let cmdline = sb.write(
        "cmdline",
        &format!(
            "root=/dev/vda1 ro ds=nocloud;s=file://{}/;h=from-cmdline quiet\n",
            seed.display()
        ),
    );
    let out = facts(
        &sb,
        &["--provider", "auto"],
        &[("BOOTPLAN_CMDLINE", cmdline.display().to_string())],
    );
    let f = facts_json(&out);
    assert_debian_seed_facts(&f);
    assert_eq!(
        f["hostname"], "from-cmdline",
        "h= overrides the seed, as in cloud-init"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kernel command line"),
        "{}",
        dump(&out)
    );
}

#[test]
fn nocloud_net_seed_over_http() {
    let Some(seed) = debian_seed() else { return };
    let (meta, user) = (
        std::fs::read(seed.join("meta-data")).unwrap(),
        std::fs::read(seed.join("user-data")).unwrap(),
    );
    let server = MetadataServer::start(move |req, _| match req.path() {
        "/seed/meta-data" => ok(meta.clone()),
        "/seed/user-data" => ok(user.clone()),
        _ => status(404),
    });
    let sb = Sandbox::new();
    let cmdline = sb.write(
        "cmdline",
        &format!("ds=nocloud-net;s={}/seed/\n", server.url()),
    );
    let f = facts_json(&facts(
        &sb,
        &["--provider", "nocloud"],
        &[("BOOTPLAN_CMDLINE", cmdline.display().to_string())],
    ));
    assert_debian_seed_facts(&f);
    assert_eq!(server.count("/seed/meta-data"), 1);
}

#[test]
fn nocloud_pinned_without_seed_fails_and_names_where_it_looked() {
    let sb = Sandbox::new();
    let out = facts(&sb, &["--provider", "nocloud"], &[]);
    assert_eq!(code(&out), 69, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no NoCloud seed") && err.contains("no-seed"),
        "{err}"
    );
}

// ---------------------------------------------------------------- auto-detection

/// One loopback server per network provider, each counting its requests.
struct AllServers {
    servers: Vec<(&'static str, MetadataServer)>,
}

impl AllServers {
    fn start() -> AllServers {
        AllServers {
            servers: vec![
                ("aws", MetadataServer::start(aws_handler)),
                ("gcp", MetadataServer::start(gcp_handler)),
                ("azure", MetadataServer::start(azure_handler)),
                ("openstack", MetadataServer::start(openstack_handler)),
                ("digitalocean", MetadataServer::start(digitalocean_handler)),
            ],
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        self.servers
            .iter()
            .map(|(name, s)| {
                (
                    format!("BOOTPLAN_METADATA_URL_{}", name.to_uppercase()),
                    s.url(),
                )
            })
            .collect()
    }

    /// Providers whose server received at least one request.
    fn asked(&self) -> Vec<&'static str> {
        self.servers
            .iter()
            .filter(|(_, s)| !s.requests().is_empty())
            .map(|(n, _)| *n)
            .collect()
    }
}

#[test]
fn auto_detection_asks_only_the_provider_dmi_names() {
    let cases = [
        ("aws", "aws"),
        ("aws-xen", "aws"),
        ("gcp", "gcp"),
        ("azure", "azure"),
        ("openstack", "openstack"),
        ("digitalocean", "digitalocean"),
    ];
    for (tree, expected) in cases {
        let servers = AllServers::start();
        let sb = Sandbox::new();
        let mut cmd = sb.cmd();
        cmd.args(["facts", "--json", "--provider", "auto"])
            .env("BOOTPLAN_DMI_ROOT", fixture(&format!("dmi/{tree}")));
        for (k, v) in servers.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let f = facts_json(&out);
        assert_eq!(f["cloud"], expected, "DMI tree {tree}: {}", dump(&out));
        assert_eq!(
            servers.asked(),
            [expected],
            "DMI tree {tree}: only {expected} may be asked"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("DMI"),
            "{}",
            dump(&out)
        );
    }
}

#[test]
fn auto_detection_without_evidence_is_local_and_silent_on_the_network() {
    for tree in ["qemu", "hyperv"] {
        let servers = AllServers::start();
        let sb = Sandbox::new();
        let mut cmd = sb.cmd();
        cmd.args(["facts", "--json"])
            .env("BOOTPLAN_DMI_ROOT", fixture(&format!("dmi/{tree}")));
        for (k, v) in servers.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let f = facts_json(&out);
        assert_eq!(f["cloud"], "local", "{tree}");
        assert_eq!(f["instance_id"], f["machine_id"]);
        assert!(
            servers.asked().is_empty(),
            "{tree}: asked {:?}",
            servers.asked()
        );
    }
}

#[test]
fn auto_without_evidence_and_fallback_fail_is_facts_unreachable() {
    let sb = Sandbox::new();
    let plan = facts_plan(&sb, "{ provider: auto, fallback: fail }");
    let out = facts(&sb, &["--plan", plan.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cloud provider detected"),
        "{}",
        dump(&out)
    );
}

// ---------------------------------------------------------------- runs

#[test]
fn run_fails_closed_when_facts_are_unreachable() {
    let sb = Sandbox::new();
    let dead = format!("http://127.0.0.1:{}", crate::harness::free_port());
    sb.plan(
        "version: 1\nname: f\nfacts: { provider: aws, budget: 500ms, attempt_timeout: 100ms }\nsteps:\n  mark: { run: [\"touch\", \"ran\"] }\n",
    );
    let out = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .env("BOOTPLAN_METADATA_URL_AWS", &dead)
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert!(
        !sb.path().join("ran").exists(),
        "no step may run without facts"
    );
    let status = sb.status();
    assert_eq!(status["outcome"], "failed");
    assert_eq!(status["exit_code"], 69);
    assert_eq!(status["error"]["code"], "facts.unreachable");
    assert!(
        status["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/latest/api/token"),
        "{status}"
    );
    assert_eq!(status["steps"]["mark"]["state"], "not_run");
    let logs = log_lines(&out);
    assert!(
        logs.iter()
            .any(|l| l["event"] == "run_finished" && l.to_string().contains("facts.unreachable")),
        "{}",
        dump(&out)
    );
}

#[test]
fn run_falls_back_to_local_with_a_warning() {
    let sb = Sandbox::new();
    let dead = format!("http://127.0.0.1:{}", crate::harness::free_port());
    sb.plan("version: 1\nname: f\nfacts: { provider: auto, budget: 300ms, attempt_timeout: 100ms }\nsteps:\n  show: { run: [\"sh\", \"-c\", \"echo cloud={{ facts.cloud }} > out\"] }\n");
    let out = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .env("BOOTPLAN_DMI_ROOT", fixture("dmi/aws"))
        .env("BOOTPLAN_METADATA_URL_AWS", &dead)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out").trim(), "cloud=local");
    let logs = log_lines(&out);
    assert!(
        logs.iter()
            .any(|l| l["level"] == "warn" && l.to_string().contains("fell back to local facts")),
        "{}",
        dump(&out)
    );
}

#[test]
fn when_conditions_skip_with_reason_and_are_validated() {
    let sb = Sandbox::new();
    sb.plan(
        r#"version: 1
name: w
vars: { role: web }
steps:
  on-aws:
    run: ["touch", "aws"]
    when: 'facts.cloud == "aws"'
  on-local:
    run: ["touch", "local"]
    when: 'facts.cloud == "local" and vars.role == "web"'
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(sb.path().join("local").exists() && !sb.path().join("aws").exists());
    let step = sb.step("on-aws");
    assert_eq!(step["state"], "skipped");
    assert_eq!(
        step["skip_reason"],
        r#"when: `facts.cloud == "aws"` is false"#
    );

    let plan_out = sb
        .cmd()
        .args(["plan", "plan.yaml", "--json"])
        .output()
        .unwrap();
    let decisions: Value = serde_json::from_slice(&plan_out.stdout).expect("plan --json");
    assert_eq!(decisions[0]["action"], "skip", "{decisions}");

    for (when, expect) in [
        ("'facts.clod == \"aws\"'", "did you mean `facts.cloud`?"),
        ("'secrets.token == \"x\"'", "may not read secrets"),
        ("'facts.cloud =='", "template error"),
        ("'vars.nope'", "undeclared variable `vars.nope`"),
    ] {
        sb.plan(&format!(
            "version: 1\nname: w\nsecrets: {{ token: {{ env: {{ name: T }} }} }}\nsteps:\n  a:\n    run: [\"true\"]\n    when: {when}\n"
        ));
        let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
        assert_eq!(code(&out), 65, "{when}: {}", dump(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expect),
            "{when}: {}",
            dump(&out)
        );
    }
}

/// A NoCloud seed in the sandbox with this instance id.
fn seed(sb: &Sandbox, instance_id: &str, user_data: &str) -> String {
    sb.write(
        "seed/meta-data",
        &format!("instance-id: {instance_id}\nlocal-hostname: node\n"),
    );
    sb.write("seed/user-data", user_data);
    sb.path().join("seed").display().to_string()
}

#[test]
fn per_instance_reruns_and_warns_on_a_cloned_disk() {
    let sb = Sandbox::new();
    sb.plan("version: 1\nname: c\nsteps:\n  once-per-instance:\n    run: [\"sh\", \"-c\", \"echo x >> count\"]\n    frequency: per-instance\n");
    let machine = sb.write("machine-id", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n");
    let run = |sb: &Sandbox| {
        sb.cmd()
            .args(["run", "plan.yaml"])
            .env("BOOTPLAN_SEED_DIRS", sb.path().join("seed"))
            .env("BOOTPLAN_MACHINE_ID_FILE", &machine)
            .output()
            .unwrap()
    };
    seed(&sb, "iid-one", "");
    assert_eq!(code(&run(&sb)), 0);
    let out = run(&sb);
    assert_eq!(
        sb.step("once-per-instance")["state"],
        "skipped",
        "{}",
        dump(&out)
    );
    assert_eq!(sb.read("count").lines().count(), 1);

    // Same instance id, another machine id: the disk was cloned (or re-imaged).
    sb.write("machine-id", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n");
    let out = run(&sb);
    assert_eq!(sb.read("count").lines().count(), 2, "{}", dump(&out));
    let warn = log_lines(&out)
        .into_iter()
        .find(|l| l["level"] == "warn" && l.to_string().contains("cloned"));
    assert!(warn.is_some(), "{}", dump(&out));

    // Same machine id, another instance id: this disk was cloned onto a new instance.
    seed(&sb, "iid-two", "");
    let out = run(&sb);
    assert_eq!(sb.read("count").lines().count(), 3, "{}", dump(&out));
    assert!(
        stdout(&out).contains("now it is instance iid-two"),
        "{}",
        dump(&out)
    );
}

#[test]
fn user_data_is_never_shown_in_logs_status_or_facts() {
    let sb = Sandbox::new();
    let secret = "ud-secret-7f3a9c-do-not-log";
    let seed_dir = seed(&sb, "iid-ud", &format!("#cloud-config\ntoken: {secret}\n"));
    sb.plan(
        "version: 1\nname: u\nsteps:\n  echo:\n    run: [\"echo\", \"{{ facts.user_data }}\"]\n",
    );
    let out = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .env("BOOTPLAN_SEED_DIRS", &seed_dir)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        stdout(&out).contains("[REDACTED]"),
        "the step saw the user data: {}",
        dump(&out)
    );
    assert!(
        !stdout(&out).contains(secret) && !String::from_utf8_lossy(&out.stderr).contains(secret),
        "{}",
        dump(&out)
    );
    let status = std::fs::read_to_string(sb.run_dir().join("status.json")).unwrap();
    assert!(!status.contains(secret));
    let out = facts(&sb, &[], &[("BOOTPLAN_SEED_DIRS", seed_dir.clone())]);
    assert!(
        !stdout(&out).contains(secret) && !String::from_utf8_lossy(&out.stderr).contains(secret)
    );
    let out = sb
        .cmd()
        .args(["facts"])
        .env("BOOTPLAN_SEED_DIRS", &seed_dir)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("--user-data prints it") && !stdout(&out).contains(secret),
        "{}",
        dump(&out)
    );
}

#[test]
fn invalid_facts_block_is_reported_with_hints() {
    let sb = Sandbox::new();
    for (block, expect) in [
        ("{ provider: aws2 }", "did you mean `aws`?"),
        ("{ provider: vmware }", "use one of: auto, aws, gcp"),
        ("{ budget: 0s }", "budget must be more than zero"),
        (
            "{ endpoints: { nocloud: \"http://x\" } }",
            "not a provider with a metadata endpoint",
        ),
        (
            "{ endpoints: { aws: \"127.0.0.1:9\" } }",
            "is not an http(s) URL",
        ),
        ("{ fallback: maybe }", "unknown variant `maybe`"),
    ] {
        sb.plan(&format!(
            "version: 1\nname: f\nfacts: {block}\nsteps:\n  a: {{ run: [\"true\"] }}\n"
        ));
        let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
        assert_eq!(code(&out), 65, "{block}: {}", dump(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expect),
            "{block}: {}",
            dump(&out)
        );
    }
    let out = sb
        .cmd()
        .args(["facts", "--provider", "vmware"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 64, "{}", dump(&out));
}

// ---------------------------------------------------------------- attacks

/// Instance tags are set by anyone with the cloud's tag permission: a tag
/// pasted into a `shell:` script is one quoted word, never a command.
#[test]
fn a_cloud_tag_cannot_inject_a_command_into_a_shell_step() {
    let server = MetadataServer::start(|req, seen| match req.path() {
        "/latest/meta-data/tags/instance/Name" => ok("web-1; touch INJECTED #"),
        _ => aws_handler(req, seen),
    });
    let sb = Sandbox::new();
    sb.plan(concat!(
        "version: 1\nname: tags\nfacts: { provider: aws }\n",
        "steps:\n  a: { shell: \"echo name={{ facts.tags.Name }}\" }\n",
    ));
    let out = sb
        .cmd()
        .env("BOOTPLAN_METADATA_URL_AWS", server.url())
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        !sb.path().join("INJECTED").exists(),
        "the tag ran as a command"
    );
    let printed: Vec<Value> = log_lines(&out)
        .into_iter()
        .filter(|l| l["event"] == "output")
        .map(|l| l["msg"].clone())
        .collect();
    assert_eq!(printed, ["name=web-1; touch INJECTED #"], "{}", dump(&out));
}
