//! Secrets against real peers on loopback: an OpenBao dev server (plain HTTP
//! and `-dev-tls`), a moto server (Secrets Manager, SSM), a loopback IMDSv2
//! server of our own, and the `exec` and `file` backends. Ends with the leak
//! canary: a secret from every backend must appear nowhere but in the files
//! the plan asked for.
//!
//! Peers come from `scripts/deps/openbao.sh` and `scripts/deps/moto.sh`
//! (`.tools/bin`). Outside CI a missing peer skips the test with a reason;
//! under CI it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde_json::Value;

use crate::harness::{Sandbox, code, dump, free_port, log_lines, peer, under_ci, wait_until};

// ---------------------------------------------------------------- peers

/// Kills and reaps a server when the test ends, however it ends.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain-HTTP GET on loopback; returns the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// An OpenBao dev server on loopback (also used by the lifecycle tests).
pub(crate) struct Bao {
    _server: Server,
    port: u16,
    scheme: &'static str,
    /// The dev-tls CA, when TLS is on.
    ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Bao {
    pub(crate) fn start(tls: bool) -> Option<Bao> {
        Bao::start_on(free_port(), tls, false)
    }

    /// A server that logs every request to `audit_log()` (OpenBao enables
    /// audit devices from its configuration only).
    pub(crate) fn start_audited() -> Option<Bao> {
        Bao::start_on(free_port(), false, true)
    }

    pub(crate) fn audit_log(&self) -> PathBuf {
        self._dir.path().join("audit.log")
    }

    fn start_on(port: u16, tls: bool, audit: bool) -> Option<Bao> {
        let bin = peer("bao")?;
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "server",
            "-dev",
            "-dev-no-store-token",
            "-dev-root-token-id=root",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ]);
        if audit {
            let config = dir.path().join("audit.hcl");
            let log = dir.path().join("audit.log");
            std::fs::write(
                &config,
                format!(
                    "audit \"file\" \"file\" {{\n  options = {{ file_path = \"{}\" }}\n}}\n",
                    log.display()
                ),
            )
            .unwrap();
            cmd.arg(format!("-config={}", config.display()));
        }
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        cmd.env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = Server(cmd.spawn().expect("start bao"));
        let ca = tls.then(|| dir.path().join("vault-ca.pem"));
        let bao = Bao {
            _server: server,
            port,
            scheme: if tls { "https" } else { "http" },
            ca,
            _dir: dir,
        };
        // Ready when the CLI can talk to it (this also proves the CA works).
        wait_until("openbao to answer", Duration::from_secs(30), || {
            bao.ca.as_ref().is_none_or(|c| c.exists()) && bao.cli(&["status"]).status.success()
        });
        Some(bao)
    }

    pub(crate) fn addr(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(peer("bao").unwrap());
        cmd.args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", "root")
            .env("HOME", self._dir.path())
            .stdin(Stdio::null());
        if let Some(ca) = &self.ca {
            cmd.env("BAO_CACERT", ca);
        }
        cmd.output().expect("run bao")
    }

    /// Runs a CLI command that must succeed and returns its trimmed stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "bao {args:?}: {}", dump(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a CLI command with a file argument written from `text` (policies, keys).
    pub(crate) fn ok_with_file(&self, args: &[&str], name: &str, text: &str) -> String {
        let path = self._dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("FILE", &path.display().to_string()))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args)
    }
}

pub(crate) struct Moto {
    _server: Server,
    port: u16,
}

impl Moto {
    pub(crate) fn start() -> Option<Moto> {
        let bin = peer("moto_server")?;
        let port = free_port();
        let server = Server(
            Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto_server"),
        );
        wait_until("moto to answer", Duration::from_secs(30), || {
            http_status(port, "/moto-api/").is_some()
        });
        Some(Moto {
            _server: server,
            port,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs boto3 (moto's own dependency) against the server; `script` sees
    /// `sm`, `ssm` and `s3` clients.
    pub(crate) fn boto(&self, script: &str) {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/moto/bin/python");
        let python = if python.exists() {
            python
        } else {
            PathBuf::from("python3")
        };
        let prelude = format!(
            "import boto3\nkw=dict(endpoint_url='{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\nsm=boto3.client('secretsmanager', **kw)\nssm=boto3.client('ssm', **kw)\ns3=boto3.client('s3', **kw)\n",
            self.url()
        );
        let out = Command::new(python)
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("run python");
        assert!(out.status.success(), "boto3 setup failed: {}", dump(&out));
    }
}

// ------------------------------------------------------------- helpers

/// `bootplan run` with AWS variables cleared, so nothing reaches real AWS.
fn run_with(sb: &Sandbox, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut cmd = sb.cmd();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "VAULT_ADDR",
        "VAULT_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    // Never the real metadata address: a closed loopback port unless a test says otherwise.
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(extra).args(["run", "plan.yaml"]);
    cmd.output().expect("run bootplan")
}

fn step_code(sb: &Sandbox, step: &str) -> String {
    sb.step(step)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// --------------------------------------------------------------- vault

/// A proxy in front of the server that keeps everything the clients sent,
/// and the most requests it had in flight at once. It counts requests, not
/// connections: a pooling client may open a connection it then never uses.
struct RecordingProxy {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
    most_in_flight: Arc<AtomicUsize>,
}

fn recording_proxy(target: u16) -> RecordingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (record, most) = (sent.clone(), most_in_flight.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (record, most, in_flight) = (record.clone(), most.clone(), in_flight.clone());
            std::thread::spawn(move || {
                let mut from_client = BufReader::new(client.try_clone().unwrap());
                let mut from_server = BufReader::new(server.try_clone().unwrap());
                let (mut to_client, mut to_server) = (client, server);
                while let Some(request) = read_http_message(&mut from_client) {
                    record.lock().unwrap().extend_from_slice(&request);
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let response = to_server
                        .write_all(&request)
                        .ok()
                        .and_then(|()| read_http_message(&mut from_server));
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    match response {
                        Some(response) if to_client.write_all(&response).is_ok() => {}
                        _ => break,
                    }
                }
            });
        }
    });
    RecordingProxy {
        port,
        sent,
        most_in_flight,
    }
}

/// One HTTP/1.1 message as it came: the head and a body framed by
/// `Content-Length`, chunked encoding or (a response without either) the end
/// of the stream. `None` at the end of the stream.
fn read_http_message(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    let (mut length, mut chunked) = (None, false);
    loop {
        let start = message.len();
        if reader.read_until(b'\n', &mut message).ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&message[start..]).to_ascii_lowercase();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = Some(value.trim().parse::<usize>().ok()?);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            chunked = true;
        }
    }
    let head = String::from_utf8_lossy(&message);
    let status = head
        .strip_prefix("HTTP/")
        .map(|s| s.split(' ').nth(1).unwrap_or_default());
    let bodiless = status.is_some_and(|s| s.starts_with('1') || s == "204" || s == "304");
    if bodiless || (!chunked && length.is_none() && status.is_none()) {
        return Some(message);
    }
    if !chunked && length.is_none() {
        reader.read_to_end(&mut message).ok()?;
        return Some(message);
    }
    if let Some(length) = length.filter(|_| !chunked) {
        let start = message.len();
        message.resize(start + length, 0);
        reader.read_exact(&mut message[start..]).ok()?;
        return Some(message);
    }
    loop {
        let start = message.len();
        reader.read_until(b'\n', &mut message).ok()?;
        let size = String::from_utf8_lossy(&message[start..]);
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let start = message.len();
        // The chunk and its CRLF; the last (empty) chunk ends with an empty trailer line.
        message.resize(start + size + 2, 0);
        reader.read_exact(&mut message[start..]).ok()?;
        if size == 0 {
            return Some(message);
        }
    }
}

/// The secrets of one step are read in parallel: the server sees several
/// requests in flight at once (a client reading one at a time keeps one
/// connection), and no more than `concurrency`.
#[test]
fn secrets_of_a_step_are_read_in_parallel_within_the_backends_bound() {
    let Some(bao) = Bao::start(false) else { return };
    for i in 0..12 {
        bao.ok(&[
            "kv",
            "put",
            &format!("secret/par/p{i}"),
            &format!("v=parallel-value-{i}"),
        ]);
    }
    let proxy = recording_proxy(bao.port);
    let sb = Sandbox::new();
    let mut secrets = String::new();
    let mut inline = String::new();
    for i in 0..12 {
        secrets.push_str(&format!(
            "  s{i}: {{ vault: {{ path: secret/par/p{i}, key: v }} }}\n"
        ));
        inline.push_str(&format!("{{{{ secrets.s{i} }}}},"));
    }
    sb.plan(&format!(
        "version: 1\nname: par\nbackends:\n  vault:\n    address: http://127.0.0.1:{port}\n    concurrency: 4\n    auth: {{ token: {{ env: T }} }}\nsecrets:\n{secrets}steps:\n  render: {{ template: {{ inline: \"{inline}\", dest: out.txt }} }}\n",
        port = proxy.port
    ));
    let out = sb
        .cmd()
        .env("T", "root")
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let expected: Vec<String> = (0..12).map(|i| format!("parallel-value-{i},")).collect();
    assert_eq!(sb.read("out.txt"), expected.concat());
    let most = proxy.most_in_flight.load(Ordering::SeqCst);
    assert!((2..=4).contains(&most), "{most} requests in flight at once");
    let sent = String::from_utf8_lossy(&proxy.sent.lock().unwrap()).into_owned();
    for i in 0..12 {
        assert_eq!(
            sent.matches(&format!("GET /v1/secret/data/par/p{i} "))
                .count(),
            1,
            "p{i}"
        );
    }
}

/// `max_requests_per_second` holds a backend's requests to its rate on
/// the client side: twelve reads at 4/s take at least two seconds past the
/// first second's burst, where the same plan without it takes a fraction
/// of a second; each path is still read once (no request was lost or
/// turned into a retry).
#[test]
fn a_backends_request_rate_is_held_by_its_token_bucket() {
    let Some(bao) = Bao::start(false) else { return };
    for i in 0..12 {
        bao.ok(&[
            "kv",
            "put",
            &format!("secret/rate/p{i}"),
            &format!("v=rate-value-{i}"),
        ]);
    }
    let run = |limit: &str| {
        let proxy = recording_proxy(bao.port);
        let sb = Sandbox::new();
        let mut secrets = String::new();
        let mut inline = String::new();
        for i in 0..12 {
            secrets.push_str(&format!(
                "  s{i}: {{ vault: {{ path: secret/rate/p{i}, key: v }} }}\n"
            ));
            inline.push_str(&format!("{{{{ secrets.s{i} }}}},"));
        }
        sb.plan(&format!(
            "version: 1\nname: rate\nbackends:\n  vault:\n    address: http://127.0.0.1:{port}\n{limit}    auth: {{ token: {{ env: T }} }}\nsecrets:\n{secrets}steps:\n  render: {{ template: {{ inline: \"{inline}\", dest: out.txt }} }}\n",
            port = proxy.port
        ));
        let out = sb
            .cmd()
            .env("T", "root")
            .args(["run", "plan.yaml"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", dump(&out));
        let expected: Vec<String> = (0..12).map(|i| format!("rate-value-{i},")).collect();
        assert_eq!(sb.read("out.txt"), expected.concat());
        let sent = String::from_utf8_lossy(&proxy.sent.lock().unwrap()).into_owned();
        for i in 0..12 {
            assert_eq!(
                sent.matches(&format!("GET /v1/secret/data/rate/p{i} "))
                    .count(),
                1,
                "p{i}"
            );
        }
        sb.step("render")["duration_ms"].as_u64().unwrap()
    };
    let free = run("");
    let held = run("    max_requests_per_second: 4\n");
    eprintln!("12 reads: {free}ms without a limit, {held}ms at 4 requests/s");
    assert!(held >= 2000, "12 reads at 4/s took only {held}ms");
    assert!(free < 1500, "without a limit the reads took {free}ms");
}

/// Many keys of one KV path cost one read of that path (counted by a
/// proxy in front of the real server).
#[test]
fn many_keys_of_one_vault_path_are_read_once() {
    let Some(bao) = Bao::start(false) else { return };
    let sb = Sandbox::new();
    let proxy = recording_proxy(bao.port);
    let (port, sent) = (proxy.port, proxy.sent);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}=value-number-{i}")).collect();
    let mut put = vec!["kv", "put", "secret/app/many"];
    put.extend(keys.iter().map(String::as_str));
    bao.ok(&put);
    let mut secrets = String::new();
    let mut inline = String::new();
    for i in 0..40 {
        secrets.push_str(&format!(
            "  s{i}: {{ vault: {{ path: secret/app/many, key: k{i} }} }}\n"
        ));
        inline.push_str(&format!("{{{{ secrets.s{i} }}}},"));
    }
    sb.plan(&format!(
        "version: 1\nname: many\nbackends:\n  vault:\n    address: http://127.0.0.1:{port}\n    auth: {{ token: {{ env: T }} }}\nsecrets:\n{secrets}steps:\n  render: {{ template: {{ inline: \"{inline}\", dest: out.txt }} }}\n",
    ));
    let out = sb
        .cmd()
        .env("T", "root")
        .args(["run", "plan.yaml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let expected: Vec<String> = (0..40).map(|i| format!("value-number-{i},")).collect();
    assert_eq!(sb.read("out.txt"), expected.concat());
    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).into_owned();
    let reads = sent.matches("GET /v1/secret/data/app/many ").count();
    assert_eq!(reads, 1, "the path was read {reads} times");
}

#[test]
fn vault_kv2_versions_kv1_and_json_keys_with_token_from_env() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&[
        "kv",
        "put",
        "secret/web/db",
        "password=first-pass",
        "user=web",
    ]);
    bao.ok(&[
        "kv",
        "put",
        "secret/web/db",
        "password=second-pass",
        "user=web",
    ]);
    bao.ok(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    bao.ok(&["kv", "put", "kv1/legacy", "api_key=legacy-key-value"]);
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: vault-kv
backends:
  vault:
    address: {addr}
    auth: {{ token: {{ env: TEST_VAULT_TOKEN }} }}
secrets:
  latest: {{ vault: {{ path: secret/web/db, key: password }} }}
  first: {{ vault: {{ path: secret/data/web/db, key: password, version: 1 }} }}
  mounted: {{ vault: {{ mount: secret, path: web/db, key: user }} }}
  legacy: {{ vault: {{ path: kv1/legacy, key: api_key, kv: 1 }} }}
  whole: {{ vault: {{ path: kv1/legacy, kv: 1 }} }}
steps:
  render:
    template:
      inline: "{{{{ secrets.latest }}}} {{{{ secrets.first }}}} {{{{ secrets.mounted }}}} {{{{ secrets.legacy }}}} {{{{ secrets.whole }}}}"
      dest: out.txt
      mode: "0600"
"#,
        addr = bao.addr()
    ));
    let out = run_with(&sb, &[("TEST_VAULT_TOKEN", "root")], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        sb.read("out.txt"),
        r#"second-pass first-pass web legacy-key-value {"api_key":"legacy-key-value"}"#
    );
}

#[test]
fn vault_dev_tls_with_plan_ca_and_token_from_file() {
    let Some(bao) = Bao::start(true) else { return };
    bao.ok(&["kv", "put", "secret/tls", "value=over-tls-value"]);
    let sb = Sandbox::new();
    sb.write("token", "root\n");
    let ca = bao.ca.clone().unwrap();
    let plan = |ca_line: &str| {
        format!(
            r#"
version: 1
name: vault-tls
backends:
  vault:
    address: {addr}
    {ca_line}
    auth: {{ token: {{ file: token }} }}
    retry: {{ attempts: 1 }}
secrets:
  v: {{ vault: {{ path: secret/tls, key: value }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.v }}}}", dest: out.txt, mode: "0600" }}, frequency: always }}
"#,
            addr = bao.addr()
        )
    };
    sb.plan(&plan(&format!("ca_file: {}", ca.display())));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "over-tls-value");

    // Without the CA the server's certificate is not trusted: unreachable.
    sb.plan(&plan(""));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(step_code(&sb, "render"), "secret.unreachable");
}

fn approle_setup(bao: &Bao, role: &str, extra: &[&str]) -> String {
    let _ = bao.cli(&["auth", "enable", "approle"]);
    bao.ok_with_file(
        &["policy", "write", "reader", "FILE"],
        "reader.hcl",
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n",
    );
    let mut args = vec![
        "write".to_string(),
        format!("auth/approle/role/{role}"),
        "token_policies=reader".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bao.ok(&args);
    bao.ok(&[
        "read",
        "-field=role_id",
        &format!("auth/approle/role/{role}/role-id"),
    ])
}

fn approle_plan(bao: &Bao, role_id: &str, wrapped: bool, steps: &str) -> String {
    format!(
        r#"
version: 1
name: vault-approle
backends:
  vault:
    address: {addr}
    auth:
      approle: {{ role_id: "{role_id}", secret_id: {{ file: secret-id }}, wrapped: {wrapped} }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
  b: {{ vault: {{ path: secret/app/two, key: v }} }}
steps:
{steps}
"#,
        addr = bao.addr()
    )
}

#[test]
fn vault_approle_plain_and_response_wrapped_secret_id() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["kv", "put", "secret/app/one", "v=approle-one"]);
    bao.ok(&["kv", "put", "secret/app/two", "v=approle-two"]);
    let role_id = approle_setup(&bao, "web", &[]);
    let steps =
        r#"  render: { template: { inline: "{{ secrets.a }}", dest: out.txt, mode: "0600" } }"#;

    let sb = Sandbox::new();
    let secret_id = bao.ok(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/web/secret-id",
    ]);
    sb.write("secret-id", &secret_id);
    sb.plan(&approle_plan(&bao, &role_id, false, steps));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "approle-one");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&secret_id),
        "secret id leaked"
    );

    // A response-wrapped secret id is unwrapped through sys/wrapping/unwrap.
    let sb = Sandbox::new();
    let wrapping = bao.ok(&[
        "write",
        "-f",
        "-wrap-ttl=60s",
        "-field=wrapping_token",
        "auth/approle/role/web/secret-id",
    ]);
    sb.write("secret-id", &wrapping);
    sb.plan(&approle_plan(&bao, &role_id, true, steps));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "approle-one");

    // A wrapping token is single-use: the second run cannot log in.
    std::fs::remove_file(sb.path().join("out.txt")).unwrap();
    let out = run_with(
        &sb,
        &[(
            "BOOTPLAN_STATE_DIR",
            &sb.path().join("state2").display().to_string(),
        )],
        &[],
    );
    assert_eq!(code(&out), 77, "{}", dump(&out));
    assert_eq!(step_code(&sb, "render"), "secret.auth_failed");

    // A wrong secret id: auth_failed, exit 77, and no retries on the 4xx.
    let sb = Sandbox::new();
    sb.write("secret-id", "00000000-0000-0000-0000-000000000000");
    sb.plan(&approle_plan(&bao, &role_id, false, steps));
    let started = Instant::now();
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 77, "{}", dump(&out));
    assert_eq!(step_code(&sb, "render"), "secret.auth_failed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a 4xx must not be retried"
    );
}

#[test]
fn vault_token_is_renewed_when_the_run_outlives_its_ttl() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["kv", "put", "secret/app/one", "v=renew-one"]);
    bao.ok(&["kv", "put", "secret/app/two", "v=renew-two"]);
    // A 6s token, and a secret id good for one login only. The run idles
    // longer than the TTL between two reads: the second read can only succeed
    // if the token was renewed in the meantime (a new login would fail).
    let role_id = approle_setup(
        &bao,
        "short",
        &["token_ttl=6s", "token_max_ttl=60s", "secret_id_num_uses=1"],
    );
    let secret_id = bao.ok(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/short/secret-id",
    ]);
    let sb = Sandbox::new();
    sb.write("secret-id", &secret_id);
    let steps = r#"  first: { template: { inline: "{{ secrets.a }}", dest: one.txt, mode: "0600" } }
  idle: { run: ["sleep", "7"], needs: [first] }
  second: { template: { inline: "{{ secrets.b }}", dest: two.txt, mode: "0600" }, needs: [idle] }"#;
    sb.plan(&approle_plan(&bao, &role_id, false, steps));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("two.txt"), "renew-two");
}

#[test]
fn vault_token_is_revoked_at_exit_when_the_plan_asks() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["kv", "put", "secret/app/one", "v=revoke-me"]);
    let token = bao.ok(&["token", "create", "-ttl=1h", "-field=token"]);
    let sb = Sandbox::new();
    sb.write("token", &token);
    sb.plan(&format!(
        r#"
version: 1
name: vault-revoke
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ file: token }} }}, revoke_on_exit: true }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#,
        addr = bao.addr()
    ));
    assert!(
        bao.cli(&["token", "lookup", &token]).status.success(),
        "token valid before the run"
    );
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(
        !bao.cli(&["token", "lookup", &token]).status.success(),
        "token still valid after the run"
    );
}

/// A JWT signed with a fresh RSA key by `openssl`, and the key's public PEM.
fn signed_jwt(dir: &Path, claims: &str) -> Option<(String, String)> {
    let key = dir.join("jwt-key.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    assert!(ok, "openssl genpkey");
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .ok()?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(claims)
    );
    let mut sign = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    sign.stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let signature = sign.wait_with_output().unwrap().stdout;
    Some((
        format!("{signing_input}.{}", b64.encode(signature)),
        String::from_utf8(public.stdout).unwrap(),
    ))
}

#[test]
fn vault_jwt_and_kubernetes_service_account_login() {
    let Some(bao) = Bao::start(false) else { return };
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(!under_ci(), "openssl missing");
        return;
    }
    bao.ok(&["kv", "put", "secret/app/one", "v=jwt-secret"]);
    bao.ok_with_file(
        &["policy", "write", "reader", "FILE"],
        "reader.hcl",
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n",
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = format!(
        r#"{{"sub":"system:serviceaccount:web:app","aud":"bootplan","iat":{now},"nbf":{now},"exp":{}}}"#,
        now + 600
    );
    let dir = tempfile::tempdir().unwrap();
    let (jwt, public) = signed_jwt(dir.path(), &claims).unwrap();
    // The `kubernetes` method logs in exactly as `jwt` does (POST
    // auth/<mount>/login with role and the service-account JWT). A real
    // Kubernetes auth mount would call a cluster's TokenReview API, which no
    // loopback peer provides, so the jwt method is mounted at `kubernetes`
    // too: what is tested is our client's default mount and login request.
    for mount in ["jwt", "kubernetes"] {
        bao.ok(&["auth", "enable", &format!("-path={mount}"), "jwt"]);
        bao.ok_with_file(
            &[
                "write",
                &format!("auth/{mount}/config"),
                "jwt_validation_pubkeys=@FILE",
            ],
            "pub.pem",
            &public,
        );
        bao.ok(&[
            "write",
            &format!("auth/{mount}/role/app"),
            "role_type=jwt",
            "bound_audiences=bootplan",
            "user_claim=sub",
            "token_policies=reader",
        ]);
    }
    for method in ["jwt", "kubernetes"] {
        let sb = Sandbox::new();
        sb.write("sa-token", &jwt);
        sb.plan(&format!(
            r#"
version: 1
name: vault-{method}
backends:
  vault:
    address: {addr}
    auth: {{ {method}: {{ role: app, jwt: {{ file: sa-token }} }} }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#,
            addr = bao.addr()
        ));
        let out = run_with(&sb, &[], &[]);
        assert_eq!(code(&out), 0, "{method}: {}", dump(&out));
        assert_eq!(sb.read("out.txt"), "jwt-secret", "{method}");
    }
    // A JWT the server did not sign is rejected: auth_failed.
    let sb = Sandbox::new();
    let (forged, _) = signed_jwt(dir.path(), &claims).unwrap();
    sb.write("sa-token", &forged);
    sb.plan(&format!(
        "version: 1\nname: forged\nbackends: {{ vault: {{ address: {}, auth: {{ jwt: {{ role: app, jwt: {{ file: sa-token }} }} }} }} }}\nsecrets: {{ a: {{ vault: {{ path: secret/app/one, key: v }} }} }}\nsteps: {{ s: {{ run: [\"true\"], env: {{ A: \"{{{{ secrets.a }}}}\" }} }} }}\n",
        bao.addr()
    ));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 77, "{}", dump(&out));
    assert_eq!(step_code(&sb, "s"), "secret.auth_failed");
}

#[test]
fn vault_denied_by_policy_not_found_and_bad_token() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["kv", "put", "secret/app/one", "v=allowed"]);
    bao.ok(&["kv", "put", "secret/other/x", "v=forbidden"]);
    bao.ok_with_file(
        &["policy", "write", "reader", "FILE"],
        "reader.hcl",
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n",
    );
    let token = bao.ok(&["token", "create", "-policy=reader", "-field=token"]);
    let plan = |path: &str| {
        format!(
            "version: 1\nname: acl\nbackends: {{ vault: {{ address: {}, auth: {{ token: {{ env: T }} }} }} }}\nsecrets: {{ a: {{ vault: {{ path: {path}, key: v }} }} }}\nsteps:\n  s: {{ run: [\"true\"], env: {{ A: \"{{{{ secrets.a }}}}\" }} }}\n  after: {{ run: [\"true\"], needs: [s] }}\n",
            bao.addr()
        )
    };
    let cases = [
        ("secret/app/one", token.as_str(), 0, ""),
        ("secret/other/x", token.as_str(), 77, "secret.denied"),
        ("secret/app/missing", token.as_str(), 1, "secret.not_found"),
        (
            "secret/app/one",
            "s.not-a-real-token",
            77,
            "secret.auth_failed",
        ),
    ];
    for (path, tok, exit, err) in cases {
        let sb = Sandbox::new();
        sb.plan(&plan(path));
        let out = run_with(&sb, &[("T", tok)], &[]);
        assert_eq!(code(&out), exit, "{path}: {}", dump(&out));
        assert_eq!(step_code(&sb, "s"), err, "{path}");
        if exit != 0 {
            // Nothing runs with an unresolved secret.
            assert_eq!(sb.step("s")["attempts"], 0, "{path}");
            assert_eq!(sb.step("after")["state"], "not_run", "{path}");
        }
    }
}

#[test]
fn a_literal_vault_token_in_the_plan_is_rejected() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: literal
backends:
  vault: { address: "http://127.0.0.1:9", auth: { token: "s.hunter2hunter2" } }
secrets:
  a: { vault: { path: secret/x, key: v } }
steps:
  s: { run: ["true"], env: { A: "{{ secrets.a }}" } }
"#,
    );
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backends.vault.auth.token") && err.contains("inline"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2"),
        "the rejected literal was echoed back: {err}"
    );
}

/// A loopback TCP forwarder that starts accepting only when told to: the
/// "server down, then back" case, with the real OpenBao behind it.
fn forwarder(
    listen: u16,
    target: u16,
    up: Arc<AtomicBool>,
    first_accept: Arc<Mutex<Option<Instant>>>,
) {
    std::thread::spawn(move || {
        while !up.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let listener = TcpListener::bind(("127.0.0.1", listen)).expect("bind forwarder");
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            first_accept
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

#[test]
fn vault_down_then_back_within_the_deadline_succeeds() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["kv", "put", "secret/app/one", "v=came-back"]);
    let port = free_port();
    let up = Arc::new(AtomicBool::new(false));
    let first_accept = Arc::new(Mutex::new(None));
    forwarder(port, bao.port, up.clone(), first_accept.clone());
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: comes-back
deadline: 60s
backends:
  vault:
    address: http://127.0.0.1:{port}
    auth: {{ token: {{ env: T }} }}
    retry: {{ attempts: 100, backoff: 50ms..300ms, max_elapsed: 40s }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#
    ));
    let mut child = sb
        .cmd()
        .env("T", "root")
        .args(["run", "plan.yaml"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // The store is down while the run starts and retries; bring it back.
    wait_until("the run to start", Duration::from_secs(10), || {
        sb.run_dir().join("status.json").exists()
    });
    std::thread::sleep(Duration::from_millis(1500)); // the outage being simulated, not synchronisation
    up.store(true, Ordering::SeqCst);
    let status = child.wait().unwrap();
    assert!(status.success(), "run failed: {:?}", sb.status());
    assert_eq!(sb.read("out.txt"), "came-back");
    let back_after = first_accept
        .lock()
        .unwrap()
        .expect("the forwarder was used")
        .duration_since(started);
    assert!(
        back_after >= Duration::from_millis(1500),
        "the run did not meet the outage"
    );
}

/// A store outage is visible while it lasts: a warn line per failed
/// attempt, the waiting step `running` with what it waits for in the
/// status file, and the retries counted in the metrics.
#[test]
fn a_vault_outage_shows_in_the_logs_the_status_and_the_metrics() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["kv", "put", "secret/app/one", "v=came-back"]);
    let port = free_port();
    let up = Arc::new(AtomicBool::new(false));
    forwarder(port, bao.port, up.clone(), Arc::new(Mutex::new(None)));
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: outage
deadline: 60s
backends:
  vault:
    address: http://127.0.0.1:{port}
    auth: {{ token: {{ env: T }} }}
    retry: {{ attempts: 100, backoff: 50ms..300ms, max_elapsed: 40s }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt }} }}
"#
    ));
    let textfile = sb.path().join("bootplan.prom");
    let mut child = sb
        .cmd()
        .env("T", "root")
        .args(["run", "plan.yaml", "--metrics-textfile"])
        .arg(&textfile)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    // While the store is down, the step shows as running and says why.
    wait_until(
        "the step to show what it waits for",
        Duration::from_secs(20),
        || {
            let Ok(text) = std::fs::read_to_string(sb.run_dir().join("status.json")) else {
                return false;
            };
            let status: Value = serde_json::from_str(&text).unwrap_or_default();
            let step = &status["steps"]["render"];
            step["state"] == "running"
                && step["waiting_for"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("secret(s) a"))
        },
    );
    up.store(true, Ordering::SeqCst);
    let status = child.wait().unwrap();
    let logs = logs.join().unwrap();
    assert!(status.success(), "run failed: {:?}", sb.status());
    let warnings: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == "warn")
        .collect();
    let retry_line = warnings
        .iter()
        .filter_map(|l| l["msg"].as_str())
        .find(|m| {
            m.starts_with(&format!("vault at http://127.0.0.1:{port}/v1/"))
                && m.contains(" unreachable: cannot connect")
        })
        .unwrap_or_else(|| panic!("no retry warning in:\n{logs}"));
    assert!(
        retry_line.contains("attempt 1 of 100, retrying in"),
        "{retry_line}"
    );
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    let retries: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("bootplan_dependency_retries_total{")
                && l.contains("dependency=\"vault\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no vault retries counted in:\n{metrics}"));
    assert!(retries >= 1.0, "{metrics}");
    assert_eq!(sb.step("render")["state"], "done");
    assert!(
        sb.step("render").get("waiting_for").is_none(),
        "{}",
        sb.step("render")
    );
}

#[test]
fn vault_that_stays_down_fails_with_69_within_the_deadline() {
    let sb = Sandbox::new();
    let port = free_port(); // nothing listens here
    sb.plan(&format!(
        r#"
version: 1
name: stays-down
deadline: 30s
backends:
  vault:
    address: http://127.0.0.1:{port}
    auth: {{ token: {{ env: T }} }}
    retry: {{ attempts: 1000, backoff: 50ms..250ms, max_elapsed: 2s }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#
    ));
    let started = Instant::now();
    let out = run_with(&sb, &[("T", "root")], &[]);
    let took = started.elapsed();
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(step_code(&sb, "render"), "secret.unreachable");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(30),
        "took {took:?}"
    );
    let msg = sb.step("render")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("attempt"), "{msg}");
}

#[test]
fn retries_stop_before_the_run_deadline() {
    // A generous retry budget but a 3s deadline: the fetch gives up (69)
    // before the engine's deadline (75) would fire.
    let sb = Sandbox::new();
    let port = free_port();
    sb.plan(&format!(
        "version: 1\nname: tight\ndeadline: 3s\nbackends: {{ vault: {{ address: \"http://127.0.0.1:{port}\", timeout: 500ms, auth: {{ token: {{ env: T }} }}, retry: {{ attempts: 1000, backoff: 50ms..200ms, max_elapsed: 60s }} }} }}\nsecrets: {{ a: {{ vault: {{ path: secret/x, key: v }} }} }}\nsteps: {{ s: {{ run: [\"true\"], env: {{ A: \"{{{{ secrets.a }}}}\" }} }} }}\n"
    ));
    let out = run_with(&sb, &[("T", "root")], &[]);
    assert_eq!(code(&out), 69, "{}", dump(&out));
}

// ----------------------------------------------------------------- aws

#[test]
fn aws_secrets_manager_and_ssm_with_env_credentials() {
    let Some(moto) = Moto::start() else { return };
    moto.boto(
        r#"
sm.create_secret(Name='prod/plain', SecretString='sm-plain-value')
sm.create_secret(Name='prod/json', SecretString='{"user":"admin","password":"sm-json-pass"}')
sm.create_secret(Name='prod/rotated', SecretString='old-value')
sm.put_secret_value(SecretId='prod/rotated', SecretString='new-value')
ssm.put_parameter(Name='/prod/one', Value='ssm-one-value', Type='SecureString')
ssm.put_parameter(Name='/prod/two', Value='ssm-two-value', Type='SecureString')
ssm.put_parameter(Name='/prod/three', Value='{"k":"ssm-three-value"}', Type='String')
"#,
    );
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: aws
backends:
  aws:
    region: us-east-1
    endpoints: {{ secretsmanager: "{url}", ssm: "{url}" }}
secrets:
  plain: {{ aws_secretsmanager: {{ id: prod/plain }} }}
  pass: {{ aws_secretsmanager: {{ id: prod/json, key: password }} }}
  current: {{ aws_secretsmanager: {{ id: prod/rotated }} }}
  previous: {{ aws_secretsmanager: {{ id: prod/rotated, version_stage: AWSPREVIOUS }} }}
  one: {{ aws_ssm: {{ name: /prod/one }} }}
  two: {{ aws_ssm: {{ name: /prod/two }} }}
  three: {{ aws_ssm: {{ name: /prod/three, key: k }} }}
steps:
  sm:
    template:
      inline: "{{{{ secrets.plain }}}} {{{{ secrets.pass }}}} {{{{ secrets.current }}}} {{{{ secrets.previous }}}}"
      dest: sm.txt
      mode: "0600"
  # Three parameters needed together: one GetParameters call.
  ssm:
    template: {{ inline: "{{{{ secrets.one }}}} {{{{ secrets.two }}}} {{{{ secrets.three }}}}", dest: ssm.txt, mode: "0600" }}
  # One on its own: GetParameter.
  single: {{ template: {{ inline: "{{{{ secrets.one }}}}", dest: single.txt, mode: "0600" }}, needs: [ssm] }}
"#,
        url = moto.url()
    ));
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDTESTING"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-key-testing"),
    ];
    let out = run_with(&sb, &env, &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        sb.read("sm.txt"),
        "sm-plain-value sm-json-pass new-value old-value"
    );
    assert_eq!(
        sb.read("ssm.txt"),
        "ssm-one-value ssm-two-value ssm-three-value"
    );
    assert_eq!(sb.read("single.txt"), "ssm-one-value");

    // Not found, in each service: exit 1, secret.not_found, before the step starts.
    for (spec, step) in [
        ("aws_secretsmanager: { id: prod/missing }", "sm"),
        ("aws_ssm: { name: /prod/missing }", "ssm"),
    ] {
        let sb = Sandbox::new();
        sb.plan(&format!(
            "version: 1\nname: missing\nbackends: {{ aws: {{ region: us-east-1, endpoints: {{ secretsmanager: \"{u}\", ssm: \"{u}\" }} }} }}\nsecrets: {{ x: {{ {spec} }} }}\nsteps: {{ {step}: {{ run: [\"true\"], env: {{ X: \"{{{{ secrets.x }}}}\" }} }} }}\n",
            u = moto.url()
        ));
        let out = run_with(&sb, &env, &[]);
        assert_eq!(code(&out), 1, "{}", dump(&out));
        assert_eq!(step_code(&sb, step), "secret.not_found");
    }
}

/// A loopback IMDSv2 server of our own. moto's metadata endpoints are not
/// enough: they ignore the token protocol (no TTL header required on the
/// PUT, no 401 on a GET without a token) and answer 500 for unknown roles,
/// so they cannot show that bootplan speaks IMDSv2 properly.
struct Imds {
    port: u16,
    token_puts: Arc<AtomicUsize>,
    credential_gets: Arc<AtomicUsize>,
    unauthorized: Arc<AtomicUsize>,
}

impl Imds {
    /// Hands out credentials that expire `expires_in` from each request.
    fn start(expires_in: Duration) -> Imds {
        Imds::start_with(expires_in, false)
    }

    /// `forget_tokens`: the service forgets its session tokens after handing
    /// out credentials, as after a restart; the next read gets a 401.
    fn start_with(expires_in: Duration, forget_tokens: bool) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let imds = Imds {
            port,
            token_puts: Arc::default(),
            credential_gets: Arc::default(),
            unauthorized: Arc::default(),
        };
        let (puts, gets, unauth) = (
            imds.token_puts.clone(),
            imds.credential_gets.clone(),
            imds.unauthorized.clone(),
        );
        std::thread::spawn(move || {
            let tokens = Mutex::new(Vec::<String>::new());
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some((method, path, headers)) = read_request(&mut stream) else {
                    continue;
                };
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let (status, body) = if method == "PUT" && path == "/latest/api/token" {
                    match header("x-aws-ec2-metadata-token-ttl-seconds")
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        Some(ttl) if (1..=21600).contains(&ttl) => {
                            let n = puts.fetch_add(1, Ordering::SeqCst);
                            let token = format!("imds-token-{n}-{}", fastrand::u64(..));
                            tokens.lock().unwrap().push(token.clone());
                            (200, token)
                        }
                        _ => (
                            400,
                            "missing or invalid X-aws-ec2-metadata-token-ttl-seconds".into(),
                        ),
                    }
                } else if header("x-aws-ec2-metadata-token")
                    .is_none_or(|t| !tokens.lock().unwrap().contains(&t))
                {
                    unauth.fetch_add(1, Ordering::SeqCst);
                    (401, String::new())
                } else if path == "/latest/meta-data/iam/security-credentials/" {
                    (200, "bootplan-test-role".into())
                } else if path == "/latest/meta-data/iam/security-credentials/bootplan-test-role" {
                    let n = gets.fetch_add(1, Ordering::SeqCst);
                    if forget_tokens {
                        tokens.lock().unwrap().clear();
                    }
                    let expires = humantime::format_rfc3339_seconds(SystemTime::now() + expires_in);
                    (
                        200,
                        format!(
                            r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAIMDS{n}","SecretAccessKey":"imds-secret-{n}","Token":"imds-session-{n}","Expiration":"{expires}"}}"#
                        ),
                    )
                } else if path == "/latest/meta-data/placement/region" {
                    (200, "us-east-1".into())
                } else {
                    (404, String::new())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        imds
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Method, path and headers of one HTTP/1 request.
type Request = (String, String, Vec<(String, String)>);

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().unwrap_or(0);
        }
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, headers))
}

fn imds_plan(sb: &Sandbox, moto: &Moto, imds: &Imds) {
    sb.plan(&format!(
        r#"
version: 1
name: imds
backends:
  aws:
    endpoints: {{ secretsmanager: "{url}", imds: "{imds}" }}
secrets:
  a: {{ aws_secretsmanager: {{ id: imds/a }} }}
  b: {{ aws_secretsmanager: {{ id: imds/b }} }}
steps:
  first: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: a.txt, mode: "0600" }} }}
  second: {{ template: {{ inline: "{{{{ secrets.b }}}}", dest: b.txt, mode: "0600" }}, needs: [first] }}
"#,
        url = moto.url(),
        imds = imds.url()
    ));
}

#[test]
fn aws_credentials_from_imdsv2_are_cached_and_refreshed_before_expiry() {
    let Some(moto) = Moto::start() else { return };
    moto.boto("sm.create_secret(Name='imds/a', SecretString='via-imds-a')\nsm.create_secret(Name='imds/b', SecretString='via-imds-b')\n");

    // Long-lived credentials: one token, one credential fetch, region from IMDS.
    let imds = Imds::start(Duration::from_secs(3600));
    let sb = Sandbox::new();
    imds_plan(&sb, &moto, &imds);
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        (sb.read("a.txt"), sb.read("b.txt")),
        ("via-imds-a".into(), "via-imds-b".into())
    );
    assert_eq!(
        imds.token_puts.load(Ordering::SeqCst),
        1,
        "the IMDS token is cached"
    );
    assert_eq!(
        imds.credential_gets.load(Ordering::SeqCst),
        1,
        "credentials are cached"
    );
    assert_eq!(
        imds.unauthorized.load(Ordering::SeqCst),
        0,
        "every read carried the token"
    );
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(!logs.contains("imds-secret-0") && !logs.contains("imds-session-0"));

    // Credentials within five minutes of expiry are fetched again before use.
    let imds = Imds::start(Duration::from_secs(120));
    let sb = Sandbox::new();
    imds_plan(&sb, &moto, &imds);
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        imds.credential_gets.load(Ordering::SeqCst),
        2,
        "near-expiry credentials are refreshed"
    );
    assert_eq!(
        imds.token_puts.load(Ordering::SeqCst),
        1,
        "the 6h IMDS token is still reused"
    );
}

// ---------------------------------------------------------------- exec

#[test]
fn exec_backend_reads_helper_stdout_and_maps_its_exit_status() {
    let sb = Sandbox::new();
    let plan = |helper: &str| {
        format!(
            "version: 1\nname: exec\nsecrets:\n  x: {{ exec: {{ command: [\"/bin/sh\", \"-c\", {helper:?}], key: token }} }}\nsteps:\n  s: {{ template: {{ inline: \"{{{{ secrets.x }}}}\", dest: out.txt, mode: \"0600\" }}, frequency: always }}\n"
        )
    };
    sb.plan(&plan(
        r#"echo 'helper noise' >&2; printf '{"token":"from-helper"}\n'"#,
    ));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "from-helper");
    for (exit, want, code_name) in [
        (77, 77, "secret.denied"),
        (69, 69, "secret.unreachable"),
        (3, 1, "secret.not_found"),
    ] {
        sb.plan(&plan(&format!("exit {exit}")));
        let out = sb.run();
        assert_eq!(code(&out), want, "{}", dump(&out));
        assert_eq!(step_code(&sb, "s"), code_name);
    }
}

// ------------------------------------------------------------ files

#[test]
fn secret_files_are_0600_atomic_and_under_the_plan_directory() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    sb.write("db.txt", "file-secret-value\n");
    sb.plan(
        r#"
version: 1
name: files
backends: { files: { dir: secret-files } }
secrets:
  db: { file: { path: db.txt }, to_file: { path: db-password } }
steps:
  # The step names the secret without a template: it reads the file.
  use: { run: ["cp", "secret-files/db-password", "copied.txt"], secrets: [db] }
"#,
    );
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let path = sb.path().join("secret-files/db-password");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "file-secret-value");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(sb.read("copied.txt"), "file-secret-value");
    // The sandbox is not a tmpfs here unless /tmp is: the run says so.
    let warned = log_lines(&out)
        .iter()
        .any(|l| l.to_string().contains("not on a tmpfs"));
    assert_eq!(
        warned,
        !bootplan::test_support::on_tmpfs(&sb.path().join("secret-files"))
    );
}

#[test]
fn secret_file_paths_may_not_escape_their_directory() {
    let sb = Sandbox::new();
    sb.plan(
        r#"
version: 1
name: escape
secrets:
  db: { env: { name: X }, to_file: { path: ../../etc/x, mode: "0644" } }
steps:
  s: { run: ["true"], secrets: [db, nope] }
"#,
    );
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("to_file.path"), "{err}");
    assert!(err.contains("to_file.mode"), "{err}");
    assert!(err.contains("undeclared secret `nope`"), "{err}");
}

// ---------------------------------------------------------- leak canary

#[test]
fn leak_canary_from_every_backend_appears_only_in_the_files_asked_for() {
    let Some(bao) = Bao::start(false) else { return };
    let Some(moto) = Moto::start() else { return };
    let salt = fastrand::u64(..);
    let canary = |backend: &str| format!("canary/{backend} +{salt:x}=&?");
    let backends = ["file", "env", "exec", "vault", "sm", "ssm"];
    bao.ok(&[
        "kv",
        "put",
        "secret/canary",
        &format!("v={}", canary("vault")),
    ]);
    moto.boto(&format!(
        "sm.create_secret(Name='canary', SecretString='{}')\nssm.put_parameter(Name='/canary', Value='{}', Type='SecureString')\n",
        canary("sm"),
        canary("ssm")
    ));
    let sb = Sandbox::new();
    sb.write("canary.txt", &canary("file"));
    sb.write(
        "helper.sh",
        &format!("#!/bin/sh\nprintf '%s' '{}'\n", canary("exec")),
    );
    let uses: String = backends
        .iter()
        .map(|b| format!("      C_{}: \"{{{{ secrets.{b} }}}}\"\n", b.to_uppercase()))
        .collect();
    let inline: String = backends
        .iter()
        .map(|b| format!("{{{{ secrets.{b} }}}}\\n"))
        .collect();
    sb.plan(&format!(
        r#"
version: 1
name: canary
backends:
  vault: {{ address: {vault}, auth: {{ token: {{ env: T }} }} }}
  aws: {{ region: us-east-1, endpoints: {{ secretsmanager: "{moto}", ssm: "{moto}" }} }}
  files: {{ dir: asked/secrets }}
secrets:
  file: {{ file: {{ path: canary.txt }}, to_file: {{ path: file }} }}
  env: {{ env: {{ name: CANARY_ENV }}, to_file: {{ path: env }} }}
  exec: {{ exec: {{ command: ["/bin/sh", "helper.sh"] }}, to_file: {{ path: exec }} }}
  vault: {{ vault: {{ path: secret/canary, key: v }}, to_file: {{ path: vault }} }}
  sm: {{ aws_secretsmanager: {{ id: canary }}, to_file: {{ path: sm }} }}
  ssm: {{ aws_ssm: {{ name: /canary }}, to_file: {{ path: ssm }} }}
steps:
  render:
    template: {{ inline: "{inline}", dest: asked/rendered.txt, mode: "0600" }}
  leak:
    # Does its best to leak: raw, base64 and URL-encoded, to stdout and stderr.
    shell: |
      for v in "$C_FILE" "$C_ENV" "$C_EXEC" "$C_VAULT" "$C_SM" "$C_SSM"; do
        echo "raw: $v" >&2
        echo "raw on stdout: $v"
        printf '%s' "$v" | base64 -w0 >&2; echo >&2
        python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$v" >&2
      done
      exit 3
    env:
{uses}    needs: [render]
"#,
        vault = bao.addr(),
        moto = moto.url(),
    ));
    // The metrics textfile lands in the sandbox, so the scan below covers
    // the metrics output too.
    let textfile = sb.path().join("metrics.prom").display().to_string();
    let env = [
        ("T", "root"),
        ("CANARY_ENV", canary("env").leak() as &str),
        ("AWS_ACCESS_KEY_ID", "AKIDCANARY"),
        ("AWS_SECRET_ACCESS_KEY", "canary-aws-secret-key"),
        ("BOOTPLAN_METRICS_TEXTFILE", textfile.as_str()),
    ];
    let out = run_with(&sb, &env, &["--log-level", "debug"]);
    assert_eq!(code(&out), 1, "{}", dump(&out));
    assert_eq!(step_code(&sb, "leak"), "step.exit_nonzero");
    // The leak step's output did reach the logs (redacted), so the check below means something.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("raw: [REDACTED]"), "{stdout}");

    let forms = |value: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(value);
        let url: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
        let url_std: String = value
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        vec![
            value.to_string(),
            b64.trim_end_matches('=').to_string(),
            url,
            url_std,
        ]
    };
    let mut haystacks = vec![
        (
            "stdout".to_string(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        ),
        (
            "stderr".to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        ),
    ];
    // Every file bootplan wrote or kept: status, journal, anything else, except
    // the files the plan asked for (and the inputs the test wrote).
    let asked = sb.path().join("asked");
    let inputs = [sb.path().join("canary.txt"), sb.path().join("helper.sh")];
    let mut stack = vec![sb.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.starts_with(&asked) || inputs.contains(&path) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                haystacks.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string(),
                ));
            }
        }
    }
    assert!(haystacks.iter().any(|(p, _)| p.ends_with("status.json")));
    // The metrics output was scanned, and it counted the leaks it stopped.
    let metrics = &haystacks
        .iter()
        .find(|(p, _)| p.ends_with("metrics.prom"))
        .expect("the metrics textfile was written")
        .1;
    let redactions: f64 = metrics
        .lines()
        .find(|l| l.starts_with("bootplan_secret_redactions_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("bootplan_secret_redactions_total in the textfile");
    assert!(redactions > 0.0, "no redaction counted:\n{metrics}");
    assert!(
        haystacks.iter().any(|(p, _)| p.contains("state")),
        "the journal was checked"
    );
    for backend in backends {
        for form in forms(&canary(backend)) {
            for (where_, text) in &haystacks {
                assert!(
                    !text.contains(&form),
                    "canary of {backend} ({form}) leaked into {where_}"
                );
            }
        }
        // ... and is exactly where the plan asked for it.
        let file = std::fs::read_to_string(asked.join("secrets").join(backend)).unwrap();
        assert_eq!(file, canary(backend));
    }
    let rendered = std::fs::read_to_string(asked.join("rendered.txt")).unwrap();
    assert!(backends.iter().all(|b| rendered.contains(&canary(b))));
    // The AWS secret key bootplan signed with is a secret too.
    assert!(!stdout.contains("canary-aws-secret-key"));
}

// ------------------------------------------------------------- examples

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

#[test]
fn the_quickstart_runs_with_its_file_secret_and_never_shows_it() {
    let sb = Sandbox::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    sb.write(
        "quickstart/page.html.j2",
        &std::fs::read_to_string(src.join("quickstart/page.html.j2")).unwrap(),
    );
    let token = std::fs::read_to_string(src.join("quickstart/api-token.txt")).unwrap();
    sb.write("quickstart/api-token.txt", &token);
    sb.plan(&example("quickstart.yaml"));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let token = token.trim();
    assert!(sb.read(".bootplan/secrets/app.env").contains(token));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(token), "the quickstart token leaked");
}

#[test]
fn the_vault_example_runs_as_documented() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&[
        "kv",
        "put",
        "secret/example/db",
        "user=app",
        "password=correct horse",
    ]);
    let sb = Sandbox::new();
    sb.plan(&example("vault.yaml"));
    let out = run_with(
        &sb,
        &[("VAULT_ADDR", &bao.addr()), ("VAULT_TOKEN", "root")],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert!(sb.read(".bootplan/out/db.conf").contains("user = app"));
    assert_eq!(
        sb.read(".bootplan/run/secrets/db-password"),
        "correct horse"
    );
}

#[test]
fn the_aws_example_runs_as_documented() {
    let Some(moto) = Moto::start() else { return };
    moto.boto(
        "sm.create_secret(Name='example/api', SecretString='{\"key\": \"abc123\"}')\nssm.put_parameter(Name='/example/license', Value='lic-42', Type='SecureString')\n",
    );
    let sb = Sandbox::new();
    sb.plan(&example("aws.yaml"));
    let env = [
        ("AWS_ENDPOINT_URL", moto.url()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_with(&sb, &env, &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        sb.read(".bootplan/out/app.env"),
        "API_KEY=abc123\nLICENSE=lic-42\n"
    );
}

// ------------------------------------------------- retry policy, exactly

/// One recorded request: method, path and headers.
type Seen = Arc<Mutex<Vec<Request>>>;

/// A loopback HTTP server answering from a script: the n-th request gets the
/// n-th `(status, extra header, body)`, the last entry repeats. For faults a
/// real OpenBao cannot be made to produce on cue (429 with Retry-After, 503).
fn scripted(script: Vec<(u16, &'static str, &'static str)>) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some(request) = read_request(&mut stream) else {
                continue;
            };
            let n = {
                let mut log = log.lock().unwrap();
                log.push(request);
                log.len() - 1
            };
            let (status, header, body) = script[n.min(script.len() - 1)];
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\n{header}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// Satisfies both `auth/token/lookup-self` and a KV v2 read.
const VAULT_OK: &str = r#"{"data":{"ttl":0,"renewable":false,"data":{"v":"scripted-ok"}}}"#;

fn scripted_plan(sb: &Sandbox, port: u16) {
    sb.plan(&format!(
        r#"
version: 1
name: scripted
deadline: 30s
backends:
  vault:
    address: http://127.0.0.1:{port}
    namespace: team-a
    auth: {{ token: {{ env: T }} }}
    retry: {{ attempts: 5, backoff: 10ms..50ms }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#
    ));
}

#[test]
fn retries_honour_retry_after_on_429_and_retry_5xx() {
    let (port, seen) = scripted(vec![
        (429, "Retry-After: 1\r\n", r#"{"errors":["rate limited"]}"#),
        (503, "", r#"{"errors":["sealed"]}"#),
        (200, "", VAULT_OK),
    ]);
    let sb = Sandbox::new();
    scripted_plan(&sb, port);
    let started = Instant::now();
    let out = run_with(&sb, &[("T", "scripted-token")], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "scripted-ok");
    let seen = seen.lock().unwrap();
    // lookup-self: 429, 503, 200; then the read.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert!(seen[3].1.starts_with("/v1/secret/data/app/one"), "{seen:?}");
    for (_, _, headers) in seen.iter() {
        let has = |name: &str, value: &str| {
            headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case(name) && v == value)
        };
        assert!(
            has("X-Vault-Namespace", "team-a"),
            "namespace header missing: {headers:?}"
        );
        assert!(
            has("X-Vault-Token", "scripted-token"),
            "token header missing: {headers:?}"
        );
    }
}

#[test]
fn a_4xx_is_never_retried() {
    for (status, exit, err) in [
        (400, 77, "secret.auth_failed"),
        (404, 1, "secret.not_found"),
    ] {
        // lookup-self succeeds; the read gets the 4xx (for 400 the login does).
        let script = if status == 400 {
            vec![(400, "", r#"{"errors":["bad"]}"#)]
        } else {
            vec![(200, "", VAULT_OK), (404, "", r#"{"errors":[]}"#)]
        };
        let (port, seen) = scripted(script);
        let sb = Sandbox::new();
        scripted_plan(&sb, port);
        let out = run_with(&sb, &[("T", "scripted-token")], &[]);
        assert_eq!(code(&out), exit, "{}", dump(&out));
        assert_eq!(step_code(&sb, "render"), err);
        let expected = if status == 400 { 1 } else { 2 };
        assert_eq!(
            seen.lock().unwrap().len(),
            expected,
            "HTTP {status} was retried"
        );
    }
}

#[test]
fn a_fetch_still_retrying_is_dropped_when_the_run_is_stopped() {
    // The store answers 503 forever; the test stops the run once it has
    // seen the fetch arrive, so the step is known to be inside it.
    let (port, seen) = scripted(vec![(503, "", r#"{"errors":["sealed"]}"#)]);
    let sb = Sandbox::new();
    sb.plan(&format!(
        "version: 1\nname: stop\ndeadline: 60s\nbackends: {{ vault: {{ address: \"http://127.0.0.1:{port}\", auth: {{ token: {{ env: T }} }}, retry: {{ attempts: 1000, backoff: 100ms..200ms, max_elapsed: 50s }} }} }}\nsecrets: {{ a: {{ vault: {{ path: secret/x, key: v }} }} }}\nsteps: {{ s: {{ run: [\"true\"], env: {{ A: \"{{{{ secrets.a }}}}\" }} }} }}\n"
    ));
    let mut child = sb
        .cmd()
        .env("T", "root")
        .args(["run", "plan.yaml"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the fetch to reach the store",
        Duration::from_secs(10),
        || !seen.lock().unwrap().is_empty(),
    );
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{:?}", sb.status());
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the retrying fetch held the run"
    );
    assert_eq!(sb.step("s")["state"], "cancelled");
}

#[test]
fn a_slow_fetch_does_not_hold_up_steps_that_need_other_secrets() {
    // The store makes bootplan wait a second (503 + Retry-After) for `a`.
    let (port, _seen) = scripted(vec![
        (503, "Retry-After: 1\r\n", r#"{"errors":["busy"]}"#),
        (200, "", VAULT_OK),
    ]);
    let sb = Sandbox::new();
    sb.write("local.txt", "local-secret-value");
    sb.plan(&format!(
        r#"
version: 1
name: parallel-secrets
backends:
  vault: {{ address: "http://127.0.0.1:{port}", auth: {{ token: {{ env: T }} }}, retry: {{ attempts: 3, backoff: 10ms..20ms }} }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
  local: {{ file: {{ path: local.txt }} }}
steps:
  slow: {{ run: ["true"], env: {{ A: "{{{{ secrets.a }}}}" }} }}
  other: {{ run: ["true"], env: {{ L: "{{{{ secrets.local }}}}" }} }}
  plain: {{ run: ["true"] }}
"#
    ));
    let out = run_with(&sb, &[("T", "scripted-token")], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let finished = |s: &str| sb.step(s)["finished_unix_ms"].as_u64().unwrap();
    for step in ["other", "plain"] {
        assert!(
            finished(step) + 500 < finished("slow"),
            "{step} waited for the slow fetch: {}",
            sb.status()
        );
    }
}

#[test]
fn ssm_parameters_needed_together_are_one_signed_get_parameters_call() {
    let (port, seen) = scripted(vec![(
        200,
        "",
        r#"{"Parameters":[{"Name":"/p/b","Value":"value-b"},{"Name":"/p/a","Value":"value-a"}],"InvalidParameters":[]}"#,
    )]);
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: batch
backends: {{ aws: {{ region: eu-west-3, endpoints: {{ ssm: "http://127.0.0.1:{port}" }} }} }}
secrets:
  a: {{ aws_ssm: {{ name: /p/a }} }}
  b: {{ aws_ssm: {{ name: /p/b }} }}
steps:
  s: {{ template: {{ inline: "{{{{ secrets.a }}}} {{{{ secrets.b }}}}", dest: out.txt, mode: "0600" }} }}
"#
    ));
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDBATCH"),
        ("AWS_SECRET_ACCESS_KEY", "batch-secret-key"),
        ("AWS_SESSION_TOKEN", "batch-session-token"),
    ];
    let out = run_with(&sb, &env, &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "value-a value-b");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let header = |name: &str| {
        seen[0]
            .2
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("x-amz-target"), "AmazonSSM.GetParameters");
    assert_eq!(header("content-type"), "application/x-amz-json-1.1");
    let auth = header("authorization");
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDBATCH/"),
        "{auth}"
    );
    assert!(auth.contains("/eu-west-3/ssm/aws4_request"), "{auth}");
    assert!(
        auth.contains("x-amz-target"),
        "the target header is signed: {auth}"
    );
    assert_eq!(header("x-amz-security-token"), "batch-session-token");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("batch-secret-key"));
}

#[test]
fn aws_endpoint_that_stays_down_fails_with_69() {
    let sb = Sandbox::new();
    let port = free_port();
    sb.plan(&format!(
        "version: 1\nname: aws-down\nbackends: {{ aws: {{ region: us-east-1, endpoints: {{ secretsmanager: \"http://127.0.0.1:{port}\" }}, retry: {{ attempts: 4, backoff: 50ms..100ms }} }} }}\nsecrets: {{ x: {{ aws_secretsmanager: {{ id: prod/x }} }} }}\nsteps: {{ s: {{ run: [\"true\"], env: {{ X: \"{{{{ secrets.x }}}}\" }} }} }}\n"
    ));
    let out = run_with(
        &sb,
        &[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "down-secret"),
        ],
        &[],
    );
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(step_code(&sb, "s"), "secret.unreachable");
    let msg = sb.step("s")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("gave up after 4 attempt(s)"), "{msg}");
}

#[test]
fn an_imds_token_rejected_with_401_is_replaced() {
    let Some(moto) = Moto::start() else { return };
    moto.boto("sm.create_secret(Name='imds/a', SecretString='via-imds-a')\nsm.create_secret(Name='imds/b', SecretString='via-imds-b')\n");
    // Near-expiry credentials (fetched twice) from a service that forgets
    // its tokens after each: the second fetch meets a 401 and gets a new token.
    let imds = Imds::start_with(Duration::from_secs(120), true);
    let sb = Sandbox::new();
    imds_plan(&sb, &moto, &imds);
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("b.txt"), "via-imds-b");
    assert_eq!(imds.unauthorized.load(Ordering::SeqCst), 1);
    assert_eq!(imds.token_puts.load(Ordering::SeqCst), 2);
    assert_eq!(imds.credential_gets.load(Ordering::SeqCst), 2);
}

/// While supervising, a refreshed secret that changed is rendered again in
/// every file that uses it, checked, and the app is told once; a new file
/// that fails its check is put back and the status says degraded until a
/// good value comes; no value is ever printed.
#[test]
fn a_rotated_secret_is_rendered_again_checked_and_the_app_reloaded() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&[
        "kv",
        "put",
        "secret/rot/db",
        "password=first-rotating-value",
    ]);
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: rotate
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ env: T }} }} }}
secrets:
  db: {{ vault: {{ path: secret/rot/db, key: password }}, refresh: 1s }}
steps:
  conf:
    template: {{ inline: "password={{{{ secrets.db }}}}\n", dest: conf.txt }}
    on_change:
      check: ["sh", "-c", "! grep -q refused conf.txt"]
      reload: {{ signal: HUP, target: app }}
  conf2:
    template: {{ inline: "db={{{{ secrets.db }}}}\n", dest: conf2.txt }}
    on_change:
      check: ["sh", "-c", "! grep -q refused conf2.txt"]
      reload: {{ signal: HUP, target: app }}
  app:
    exec: ["sh", "-c", "trap 'echo hup >> hups' HUP; touch up; while :; do sleep 0.05; done"]
    needs: [conf, conf2]
"#,
        addr = bao.addr()
    ));
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", "root")]);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("up").exists()
    });
    assert_eq!(sb.read("conf.txt"), "password=first-rotating-value\n");

    bao.ok(&[
        "kv",
        "put",
        "secret/rot/db",
        "password=second-rotating-value",
    ]);
    wait_until(
        "the file to be rendered again",
        Duration::from_secs(10),
        || sb.read("conf.txt") == "password=second-rotating-value\n",
    );
    wait_until("the app to be told", Duration::from_secs(5), || {
        !sb.read("hups").is_empty()
    });
    assert_eq!(sb.read("conf2.txt"), "db=second-rotating-value\n");

    // A value whose file fails the check: the old file is put back, the
    // status says why, and the app is not told. Reaching degraded takes
    // later refreshes, which must not have told the app again either.
    bao.ok(&[
        "kv",
        "put",
        "secret/rot/db",
        "password=refused-rotating-value",
    ]);
    wait_until(
        "the status to say degraded",
        Duration::from_secs(10),
        || sb.status()["outcome"] == "degraded",
    );
    let status = sb.status();
    assert!(
        status["problems"][0]
            .as_str()
            .unwrap()
            .contains("step `conf`"),
        "{status}"
    );
    assert_eq!(sb.read("conf.txt"), "password=second-rotating-value\n");
    assert_eq!(
        sb.read("hups"),
        "hup\n",
        "the app was told twice for one change"
    );

    // A good value again: ready, and one more reload.
    bao.ok(&[
        "kv",
        "put",
        "secret/rot/db",
        "password=third-rotating-value",
    ]);
    wait_until("the status to say ready", Duration::from_secs(10), || {
        sb.status()["outcome"] == "ready"
    });
    assert_eq!(sb.read("conf.txt"), "password=third-rotating-value\n");
    wait_until("the app to be told again", Duration::from_secs(5), || {
        sb.read("hups") == "hup\nhup\n"
    });

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_output(Duration::from_secs(20));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("the old content was put back"), "{logs}");
    for value in [
        "first-rotating-value",
        "second-rotating-value",
        "refused-rotating-value",
        "third-rotating-value",
    ] {
        assert!(!logs.contains(value), "{value} leaked:\n{logs}");
    }
}

/// Requests of a kind in an OpenBao file audit log (each answer once).
pub(crate) fn audited(log: &Path, path: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "response" && v["request"]["path"] == path)
        .count()
}

/// A supervising bootplan keeps its AppRole token alive past the token's
/// max TTL: renewed while it can be, then replaced by a fresh login, with
/// every refresh answered and the app never told about it.
#[test]
fn a_token_past_its_max_ttl_is_replaced_by_a_fresh_login_while_supervising() {
    let Some(bao) = Bao::start_audited() else {
        return;
    };
    let audit = bao.audit_log();
    bao.ok(&["kv", "put", "secret/app/one", "v=lifecycle-one"]);
    bao.ok(&["kv", "put", "secret/app/two", "v=lifecycle-two"]);
    let role_id = approle_setup(&bao, "brief", &["token_ttl=3s", "token_max_ttl=6s"]);
    let secret_id = bao.ok(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/brief/secret-id",
    ]);
    let sb = Sandbox::new();
    sb.write("secret-id", &secret_id);
    let plan = approle_plan(
        &bao,
        &role_id,
        false,
        r#"  conf:
    template: { inline: "{{ secrets.a }}", dest: out.txt, mode: "0600" }
    on_change: { reload: { signal: HUP, target: app } }
  app:
    exec: ["sh", "-c", "trap 'echo hup >> hups' HUP; touch up; while :; do sleep 0.05; done"]
    needs: [conf]"#,
    )
    .replace(
        "a: { vault: { path: secret/app/one, key: v } }",
        "a: { vault: { path: secret/app/one, key: v }, refresh: 1s }",
    );
    sb.plan(&plan);
    let child = crate::harness::start_run(&sb, &["--supervise"]);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("up").exists()
    });
    // Two logins after the first: each token reached its max TTL and was replaced.
    wait_until("two fresh logins", Duration::from_secs(30), || {
        audited(&audit, "auth/approle/login") >= 3
    });
    assert!(
        audited(&audit, "auth/token/renew-self") >= 1,
        "the token was never renewed"
    );
    bao.ok(&["kv", "put", "secret/app/one", "v=lifecycle-three"]);
    wait_until("the new value", Duration::from_secs(10), || {
        sb.read("out.txt") == "lifecycle-three"
    });
    wait_until("the app to be told", Duration::from_secs(5), || {
        sb.read("hups") == "hup\n"
    });
    assert_eq!(sb.status()["outcome"], "ready");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_output(Duration::from_secs(20));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(!logs.contains("could not be refreshed"), "{logs}");
    assert!(!logs.contains(&secret_id), "the secret id leaked");
}

/// The store gone while bootplan supervises: the app keeps its values and
/// runs on, the status says degraded with the reason, and once the store is
/// back the next refresh brings it to ready with the store's current value.
#[test]
fn a_store_outage_while_supervising_keeps_the_values_and_recovers() {
    let Some(bao) = Bao::start(false) else { return };
    let port = bao.port;
    bao.ok(&["kv", "put", "secret/out/db", "password=before-outage-value"]);
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: outage
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ env: T }} }}, retry: {{ attempts: 1 }} }}
secrets:
  db: {{ vault: {{ path: secret/out/db, key: password }}, refresh: 1s }}
steps:
  conf: {{ template: {{ inline: "{{{{ secrets.db }}}}", dest: conf.txt }} }}
  app:
    exec: ["sh", "-c", "touch up; while :; do sleep 0.05; done"]
    needs: [conf]
"#,
        addr = bao.addr()
    ));
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", "root")]);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("up").exists()
    });
    drop(bao);
    wait_until(
        "the status to say degraded",
        Duration::from_secs(30),
        || sb.status()["outcome"] == "degraded",
    );
    let status = sb.status();
    assert!(
        status["problems"][0]
            .as_str()
            .unwrap()
            .contains("secret `db` cannot be refreshed"),
        "{status}"
    );
    assert_eq!(sb.read("conf.txt"), "before-outage-value");
    assert!(child.id() > 0 && sb.path().join("up").exists());

    // The store back (a new dev server on the same port, with a new value).
    let bao = Bao::start_on(port, false, false).expect("openbao again");
    bao.ok(&["kv", "put", "secret/out/db", "password=after-outage-value"]);
    wait_until("the status to say ready", Duration::from_secs(30), || {
        sb.status()["outcome"] == "ready"
    });
    wait_until("the new value", Duration::from_secs(5), || {
        sb.read("conf.txt") == "after-outage-value"
    });

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_output(Duration::from_secs(20));
    assert_eq!(code(&out), 143, "{}", dump(&out));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("could not be refreshed"), "{logs}");
    assert!(!logs.contains("outage-value"), "a value leaked:\n{logs}");
}

/// A `vault_pki` certificate: issued at boot into its files (key 0600),
/// issued again at two thirds of its lifetime while bootplan supervises,
/// the app told each time, the key never printed.
#[test]
fn a_pki_certificate_is_issued_and_renewed_with_a_reload_each_time() {
    let Some(bao) = Bao::start(false) else { return };
    bao.ok(&["secrets", "enable", "pki"]);
    bao.ok(&["secrets", "tune", "-max-lease-ttl=1h", "pki"]);
    bao.ok(&[
        "write",
        "pki/root/generate/internal",
        "common_name=bootplan-test-ca",
        "ttl=1h",
    ]);
    bao.ok(&[
        "write",
        "pki/roles/web",
        "allowed_domains=svc",
        "allow_subdomains=true",
        "max_ttl=1h",
    ]);
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: pki
vars: {{ service: web }}
backends:
  vault: {{ address: {addr}, auth: {{ token: {{ env: T }} }} }}
secrets:
  tls:
    vault_pki: {{ role: web, common_name: "{{{{ vars.service }}}}.svc", ttl: 6s, cert_file: tls.crt, key_file: tls.key, chain_file: ca.crt }}
    on_change: {{ reload: {{ signal: HUP, target: app }} }}
steps:
  app:
    exec: ["sh", "-c", "trap 'echo hup >> hups' HUP; touch up; while :; do sleep 0.05; done"]
    secrets: [tls]
"#,
        addr = bao.addr()
    ));
    let child = crate::harness::start_run_with_env(&sb, &["--supervise"], &[("T", "root")]);
    wait_until("the app to start", Duration::from_secs(15), || {
        sb.path().join("up").exists()
    });
    let dir = sb.run_dir().join("secrets");
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("tls.key"), 0o600);
    assert_eq!(mode("tls.crt"), 0o644);
    let key = std::fs::read_to_string(dir.join("tls.key")).unwrap();
    assert!(key.contains("PRIVATE KEY"), "{key}");
    assert!(
        std::fs::read_to_string(dir.join("ca.crt"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let mut certificates = std::collections::BTreeSet::new();
    certificates.insert(std::fs::read_to_string(dir.join("tls.crt")).unwrap());

    // Two renewals (each at about 4s), each followed by one reload.
    wait_until("two renewals", Duration::from_secs(20), || {
        certificates.insert(std::fs::read_to_string(dir.join("tls.crt")).unwrap_or_default());
        certificates.len() >= 3 && sb.read("hups").lines().count() >= 2
    });
    let new_key = std::fs::read_to_string(dir.join("tls.key")).unwrap();
    assert_ne!(new_key, key, "the key was not issued again");
    assert_eq!(sb.status()["outcome"], "ready");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_output(Duration::from_secs(20));
    let logs = String::from_utf8_lossy(&out.stdout);
    for k in [&key, &new_key] {
        let body = k.lines().nth(1).unwrap();
        assert!(!logs.contains(body), "a private key leaked:\n{logs}");
    }
    // The files went with the app.
    assert!(!dir.join("tls.key").exists());
}

/// GCP and Azure logins with the machine's own identity: no token on
/// disk, the identity token fetched from the (loopback) metadata service
/// with its required header, then the login. OpenBao ships neither the
/// `gcp` nor the `azure` auth method (both verify the token with Google's or
/// Azure's APIs, which no loopback peer provides), so OpenBao's `jwt`
/// method, mounted at `gcp` and `azure`, stands in for the verifying side:
/// it checks the token's signature and audience as those methods do. The
/// metadata answers are fixtures of the documented responses.
#[test]
fn gcp_and_azure_logins_use_the_identity_from_the_metadata_service() {
    use crate::facts::{MetadataServer, ok, status};
    let Some(bao) = Bao::start(false) else { return };
    assert!(
        Command::new("openssl").arg("version").output().is_ok(),
        "openssl missing"
    );
    bao.ok(&["kv", "put", "secret/app/one", "v=cloud-identity-secret"]);
    bao.ok_with_file(
        &["policy", "write", "reader", "FILE"],
        "reader.hcl",
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n",
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dir = tempfile::tempdir().unwrap();
    let claims = |aud: &str| {
        format!(
            r#"{{"sub":"instance-1","aud":"{aud}","iat":{now},"nbf":{now},"exp":{}}}"#,
            now + 600
        )
    };
    let (gcp_jwt, public) = signed_jwt(dir.path(), &claims("vault/web")).unwrap();
    let (azure_jwt, azure_public) =
        signed_jwt(dir.path(), &claims("https://management.azure.com/")).unwrap();
    for (mount, key, audience) in [
        ("gcp", &public, "vault/web"),
        ("azure", &azure_public, "https://management.azure.com/"),
    ] {
        bao.ok(&["auth", "enable", &format!("-path={mount}"), "jwt"]);
        bao.ok_with_file(
            &[
                "write",
                &format!("auth/{mount}/config"),
                "jwt_validation_pubkeys=@FILE",
            ],
            "pub.pem",
            key,
        );
        bao.ok(&[
            "write",
            &format!("auth/{mount}/role/web"),
            "role_type=jwt",
            &format!("bound_audiences={audience}"),
            "user_claim=sub",
            "token_policies=reader",
        ]);
    }
    let (gcp_token, azure_token) = (gcp_jwt.clone(), azure_jwt.clone());
    let metadata = MetadataServer::start(move |req, _| match req.path() {
        "/computeMetadata/v1/instance/service-accounts/default/identity"
            if req.header("metadata-flavor") == Some("Google")
                && req.target.contains("audience=vault%2Fweb") =>
        {
            ok(gcp_token.clone())
        }
        "/metadata/identity/oauth2/token"
            if req.header("metadata") == Some("true")
                && req
                    .target
                    .contains("resource=https%3A%2F%2Fmanagement.azure.com%2F") =>
        {
            ok(format!(
                r#"{{"access_token":"{azure_token}","expires_in":"3599","token_type":"Bearer","resource":"https://management.azure.com/"}}"#
            ))
        }
        "/metadata/instance/compute" if req.header("metadata") == Some("true") => ok(
            r#"{"subscriptionId":"0000-sub","resourceGroupName":"rg-web","name":"web-1","vmScaleSetName":""}"#,
        ),
        _ => status(404),
    });
    for method in ["gcp", "azure"] {
        let sb = Sandbox::new();
        sb.plan(&format!(
            r#"
version: 1
name: cloud-{method}
backends:
  vault:
    address: {addr}
    auth: {{ {method}: {{ role: web, metadata_url: "{meta}" }} }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#,
            addr = bao.addr(),
            meta = metadata.url()
        ));
        let out = run_with(&sb, &[], &[]);
        assert_eq!(code(&out), 0, "{method}: {}", dump(&out));
        assert_eq!(sb.read("out.txt"), "cloud-identity-secret", "{method}");
        let logs = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for jwt in [&gcp_jwt, &azure_jwt] {
            assert!(!logs.contains(jwt.as_str()), "an identity token leaked");
        }
    }
    assert_eq!(
        metadata.count("/computeMetadata/v1/instance/service-accounts/default/identity"),
        1
    );
    assert_eq!(metadata.count("/metadata/identity/oauth2/token"), 1);

    // An identity the server did not sign: auth_failed, exit 77.
    let (forged, _) = signed_jwt(dir.path(), &claims("vault/web")).unwrap();
    let forged_meta = MetadataServer::start(move |_, _| ok(forged.clone()));
    let sb = Sandbox::new();
    sb.plan(&format!(
        "version: 1\nname: forged\nbackends: {{ vault: {{ address: {}, auth: {{ gcp: {{ role: web, metadata_url: \"{}\" }} }} }} }}\nsecrets: {{ a: {{ vault: {{ path: secret/app/one, key: v }} }} }}\nsteps: {{ s: {{ run: [\"true\"], env: {{ A: \"{{{{ secrets.a }}}}\" }} }} }}\n",
        bao.addr(),
        forged_meta.url()
    ));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 77, "{}", dump(&out));
    assert_eq!(step_code(&sb, "s"), "secret.auth_failed");
}

/// The credential sources of EKS and ECS: a web identity token exchanged
/// with STS (moto's `AssumeRoleWithWebIdentity`), and the container
/// credentials endpoint (a loopback fixture of its documented answer, with
/// its authorization token checked). Either way Secrets Manager (moto) is
/// called signed with the credentials obtained, and no token is printed.
#[test]
fn web_identity_and_container_credentials_sign_the_secret_reads() {
    use crate::facts::{MetadataServer, ok, status};
    let Some(moto) = Moto::start() else { return };
    moto.boto("sm.create_secret(Name='prod/identity', SecretString='identity-chain-value')\n");
    let proxy = recording_proxy(moto.port);
    let plan = format!(
        r#"
version: 1
name: aws-identity
backends:
  aws:
    region: us-east-1
    endpoints: {{ secretsmanager: "http://127.0.0.1:{port}", sts: "http://127.0.0.1:{port}" }}
secrets:
  a: {{ aws_secretsmanager: {{ id: prod/identity }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#,
        port = proxy.port
    );

    // Web identity: the projected service-account token of an EKS pod.
    let sb = Sandbox::new();
    let web_token = "eyJhbGciOiJSUzI1NiJ9.web-identity-token-for-the-test.c2lnbmF0dXJl";
    sb.write("token", web_token);
    sb.plan(&plan);
    let token_file = sb.path().join("token").display().to_string();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/web"),
    ];
    let out = run_with(&sb, &env, &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "identity-chain-value");
    let sent = String::from_utf8_lossy(&proxy.sent.lock().unwrap()).to_string();
    assert!(sent.contains("Action=AssumeRoleWithWebIdentity"), "{sent}");
    assert!(
        sent.contains(&format!("WebIdentityToken={web_token}")),
        "{sent}"
    );
    let signed = sent
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("authorization: aws4-hmac-sha256")
        })
        .expect("a signed Secrets Manager request");
    // Temporary credentials from STS (moto issues ASIA… keys), with their session token.
    assert!(signed.contains("Credential=ASIA"), "{signed}");
    assert!(
        sent.to_ascii_lowercase().contains("x-amz-security-token:"),
        "{sent}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(web_token),
        "the web identity token leaked"
    );
    proxy.sent.lock().unwrap().clear();

    // The container endpoint, with its authorization token from a file.
    let auth = "container-authorization-token-for-the-test";
    let creds = MetadataServer::start(move |req, _| {
        if req.path() == "/v1/credentials" && req.header("authorization") == Some(auth) {
            ok(
                r#"{"AccessKeyId":"ASIACONTAINEREXAMPLE","SecretAccessKey":"container-secret-key-example","Token":"container-session-token-example","Expiration":"2099-01-01T00:00:00Z"}"#,
            )
        } else {
            status(401)
        }
    });
    let sb = Sandbox::new();
    sb.write("auth-token", auth);
    sb.plan(&plan);
    let full_uri = format!("{}/v1/credentials", creds.url());
    let auth_file = sb.path().join("auth-token").display().to_string();
    let env = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.as_str()),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", auth_file.as_str()),
    ];
    let out = run_with(&sb, &env, &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "identity-chain-value");
    assert_eq!(creds.count("/v1/credentials"), 1);
    let sent = String::from_utf8_lossy(&proxy.sent.lock().unwrap()).to_string();
    assert!(sent.contains("Credential=ASIACONTAINEREXAMPLE/"), "{sent}");
    let logs = String::from_utf8_lossy(&out.stdout);
    for token in [auth, "container-session-token-example"] {
        assert!(!logs.contains(token), "{token} leaked");
    }

    // A full URI in the clear to another host is refused: the token stays home.
    let sb = Sandbox::new();
    sb.plan(&plan);
    let env = [(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://creds.example.com/v1/credentials",
    )];
    let out = run_with(&sb, &env, &[]);
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("must be https"),
        "{}",
        dump(&out)
    );
}

/// One HTTP/1.0 exchange with a loopback server: the status and the body.
fn http_exchange(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Vault's `aws` login (IAM type) with IMDSv2 credentials and no token on
/// disk. OpenBao 2.x ships without the `aws` auth method (it left the
/// built-in plugins), so its verifying side is a stand-in here that does
/// what the method does: it decodes the signed `sts:GetCallerIdentity`
/// request from the login, checks the server-id header is signed, sends the
/// request to STS (moto) as is, and on a caller identity answers with a
/// token minted by the real OpenBao, to which it passes every other
/// request: the secret is read from OpenBao with that token.
#[test]
fn an_aws_iam_login_proves_the_instance_identity_with_a_signed_sts_request() {
    use crate::facts::{MetadataServer, ok, status};
    let Some(bao) = Bao::start(false) else { return };
    let Some(moto) = Moto::start() else { return };
    bao.ok(&["kv", "put", "secret/app/one", "v=aws-iam-login-secret"]);
    bao.ok_with_file(
        &["policy", "write", "reader", "FILE"],
        "reader.hcl",
        "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n",
    );
    let minted = bao.ok(&[
        "token",
        "create",
        "-policy=reader",
        "-ttl=10m",
        "-field=token",
    ]);
    let imds = Imds::start(Duration::from_secs(3600));
    let (bao_port, moto_port) = (bao.port, moto.port);
    let callers = Arc::new(Mutex::new(Vec::<String>::new()));
    let (seen, token) = (callers.clone(), minted.clone());
    let vault = MetadataServer::start(move |req, _| {
        if req.path() != "/v1/auth/aws/login" {
            let presented = req.header("x-vault-token").unwrap_or_default();
            let (code, body) = http_exchange(
                bao_port,
                format!(
                    "GET {} HTTP/1.0\r\nX-Vault-Token: {presented}\r\n\r\n",
                    req.target
                )
                .as_bytes(),
            );
            return if code == 200 { ok(body) } else { status(code) };
        }
        let login: Value = serde_json::from_slice(&req.body).unwrap();
        let b64 = |field: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(login[field].as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        let url = String::from_utf8(b64("iam_request_url")).unwrap();
        let body = String::from_utf8(b64("iam_request_body")).unwrap();
        let headers: serde_json::Map<String, Value> =
            serde_json::from_slice(&b64("iam_request_headers")).unwrap();
        let header = |name: &str| headers[name][0].as_str().unwrap_or_default().to_string();
        if login["role"] != "web"
            || url != "https://sts.amazonaws.com/"
            || body != "Action=GetCallerIdentity&Version=2011-06-15"
            || header("x-vault-aws-iam-server-id") != "vault.test"
            || !header("authorization").contains("x-vault-aws-iam-server-id")
        {
            return status(400);
        }
        let mut replay = String::from("POST / HTTP/1.0\r\n");
        for (name, values) in &headers {
            replay.push_str(&format!("{name}: {}\r\n", values[0].as_str().unwrap()));
        }
        replay.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        let (code, identity) = http_exchange(moto_port, replay.as_bytes());
        let Some(arn) = identity
            .split("<Arn>")
            .nth(1)
            .and_then(|s| s.split("</Arn>").next())
        else {
            return status(403);
        };
        seen.lock()
            .unwrap()
            .push(format!("{code} {arn} {}", header("authorization")));
        ok(format!(
            r#"{{"auth":{{"client_token":"{token}","lease_duration":600,"renewable":false,"policies":["reader"]}}}}"#
        ))
    });
    let sb = Sandbox::new();
    sb.plan(&format!(
        r#"
version: 1
name: aws-login
backends:
  vault:
    address: {addr}
    auth: {{ aws: {{ role: web, header_value: vault.test }} }}
  aws: {{ region: us-east-1, endpoints: {{ imds: "http://127.0.0.1:{imds}" }} }}
secrets:
  a: {{ vault: {{ path: secret/app/one, key: v }} }}
steps:
  render: {{ template: {{ inline: "{{{{ secrets.a }}}}", dest: out.txt, mode: "0600" }} }}
"#,
        addr = vault.url(),
        imds = imds.port
    ));
    let out = run_with(&sb, &[], &[]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("out.txt"), "aws-iam-login-secret");
    let callers = callers.lock().unwrap().clone();
    assert_eq!(callers.len(), 1, "{callers:?}");
    // STS answered for the instance role's key from IMDSv2.
    assert!(callers[0].starts_with("200 arn:aws:"), "{callers:?}");
    assert!(callers[0].contains("Credential=ASIAIMDS0/"), "{callers:?}");
    assert_eq!(imds.credential_gets.load(Ordering::SeqCst), 1);
    let logs = String::from_utf8_lossy(&out.stdout);
    for leaked in [minted.as_str(), "imds-secret-0", "imds-session-0"] {
        assert!(!logs.contains(leaked), "{leaked} leaked");
    }
}
