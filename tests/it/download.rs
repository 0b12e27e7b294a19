//! `download` steps against a real nginx from Debian on loopback (installed
//! by `scripts/deps/nginx.sh`): digests, `Range` resume after a cut
//! transfer (`limit_rate`), mirrors after a 500, `Retry-After` on a 429
//! (`limit_req`), the cache (requests counted in nginx's access log),
//! hostile archives and `max_size`. Outside CI a missing nginx skips the
//! test with a reason; under CI it fails.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::Digest as _;

use crate::harness::{Sandbox, code, dump, free_port, peer, wait_until};

/// An nginx serving `www/` of its own temp dir on a loopback port, one
/// process (`master_process off`) so the pid kept is the server's.
pub(crate) struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of the access log.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub at: f64,
    pub status: u16,
    pub uri: String,
    pub range: String,
    pub bytes_sent: u64,
}

impl Nginx {
    pub(crate) fn start() -> Option<Nginx> {
        let bin = peer("nginx")?;
        let dir = tempfile::tempdir().expect("nginx dir");
        let port = free_port();
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 128; }}
http {{
  log_format counted '$msec $status "$request_uri" "$http_range" $bytes_sent';
  access_log {d}/access.log counted;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  default_type application/octet-stream;
  sendfile on;
  # One request per 2 s from the test's address: the second in a row gets 429.
  limit_req_zone $binary_remote_addr zone=busy:1m rate=30r/m;
  # The first request of a transfer is slow; a resumed one (with Range) is not.
  map $http_range $first_rate {{ "" 64k; default 0; }}
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
    location /slow/ {{ limit_rate $first_rate; }}
    location /broken/ {{ return 500; }}
    location /private/ {{
      if ($http_authorization != "Bearer tok-7f3a9c2e51") {{ return 401; }}
    }}
    location /busy/ {{
      limit_req zone=busy;
      limit_req_status 429;
      add_header Retry-After 2 always;
    }}
    location /chunked/ {{
      gzip on;
      gzip_types *;
      gzip_min_length 0;
    }}
  }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, port, dir };
        wait_until("nginx accepts connections", Duration::from_secs(10), || {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let error = std::fs::read_to_string(nginx.dir.path().join("error.log"));
                panic!("nginx exited {status}: {error:?}");
            }
            TcpStream::connect(("127.0.0.1", nginx.port)).is_ok()
        });
        Some(nginx)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Puts `bytes` at `path` below the web root.
    pub(crate) fn serve(&self, path: &str, bytes: &[u8]) {
        let file = self.dir.path().join("www").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }

    pub(crate) fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// Every request nginx logged so far.
    pub(crate) fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut quoted = line.split('"');
                let head = quoted.next()?;
                let uri = quoted.next()?.to_string();
                quoted.next()?;
                let range = quoted.next()?.to_string();
                let tail = quoted.next()?;
                let mut head = head.split_whitespace();
                Some(Request {
                    at: head.next()?.parse().ok()?,
                    status: head.next()?.parse().ok()?,
                    uri,
                    range: if range == "-" { String::new() } else { range },
                    bytes_sent: tail.trim().parse().ok()?,
                })
            })
            .collect()
    }

    pub(crate) fn requests_for(&self, path: &str) -> Vec<Request> {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.requests()
            .into_iter()
            .filter(|r| r.uri == path)
            .collect()
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Bytes that are not all the same (so a resumed transfer that misplaced
/// a piece would not hash the same).
fn content(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

fn run(sb: &Sandbox) -> std::process::Output {
    sb.cmd()
        .args(["run", "plan.yaml"])
        .output()
        .expect("run bootplan")
}

fn step_code(sb: &Sandbox, step: &str) -> String {
    sb.step(step)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The names in `dir` (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_matching_digest_places_the_file_and_a_mismatch_keeps_the_old_one() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let good = content(100_000);
    nginx.serve("files/agent.bin", &good);
    let dest = sb.path().join("opt/agent.bin");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, b"the old agent").unwrap();
    // The server's content is not what the plan pins.
    let wrong = sha256(b"something else");
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  agent:
    download: {{ url: "{}", sha256: "{wrong}", dest: "{}", attempts: 1 }}
"#,
        nginx.url("files/agent.bin"),
        dest.display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 1, "{}", dump(&out));
    assert_eq!(step_code(&sb, "agent"), "download.checksum_mismatch");
    let message = sb.step("agent")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(&sha256(&good)),
        "the digest got is named: {message}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"the old agent");
    assert_eq!(
        names(dest.parent().unwrap()),
        vec!["agent.bin"],
        "no temp file is left"
    );
    assert!(
        names(&sb.state_dir().join("downloads/sha256")).is_empty(),
        "nothing was cached"
    );
    assert!(
        names(&sb.state_dir().join("downloads/partial")).is_empty(),
        "the bad bytes are gone"
    );

    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  agent:
    download: {{ url: "{}", sha256: "{}", dest: "{}", mode: "0750" }}
"#,
        nginx.url("files/agent.bin"),
        sha256(&good),
        dest.display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), good);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
        0o750
    );
}

#[test]
fn a_transfer_cut_in_the_middle_resumes_with_one_range_request() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    // 64 KiB/s for a request without Range: 512 KiB take 8 s, and the
    // attempt is cut after 1 s.
    let body = content(512 * 1024);
    nginx.serve("slow/model.bin", &body);
    let dest = sb.path().join("model.bin");
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  model:
    download:
      url: "{}"
      sha256: "{}"
      dest: "{}"
      attempt_timeout: 1s
      backoff: 10ms..20ms
"#,
        nginx.url("slow/model.bin"),
        sha256(&body),
        dest.display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let requests = nginx.requests_for("slow/model.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, "", "{requests:?}");
    assert!(
        requests[0].bytes_sent < body.len() as u64,
        "the first was cut: {requests:?}"
    );
    assert_eq!(requests[1].status, 206, "{requests:?}");
    let offset: u64 = requests[1]
        .range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a Range from an offset: {requests:?}"));
    assert!(offset > 0 && offset < body.len() as u64, "{requests:?}");
    assert!(
        requests[1].bytes_sent < body.len() as u64 - offset + 1024,
        "only the rest was sent: {requests:?}"
    );
}

#[test]
fn a_primary_that_answers_500_is_left_for_the_mirror() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let body = content(10_000);
    nginx.serve("files/tool", &body);
    let dest = sb.path().join("bin/tool");
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  tool:
    download:
      url: "{}"
      mirrors: ["{}"]
      sha256: "{}"
      dest: "{}"
      attempts: 2
      backoff: 10ms..20ms
"#,
        nginx.url("broken/tool"),
        nginx.url("files/tool"),
        sha256(&body),
        dest.display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let seen: Vec<(String, u16)> = nginx
        .requests()
        .into_iter()
        .map(|r| (r.uri, r.status))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("/broken/tool".to_string(), 500),
            ("/broken/tool".to_string(), 500),
            ("/files/tool".to_string(), 200)
        ]
    );
}

/// A GET from the test itself (to use up the rate limit's slot).
fn get(port: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_429_is_retried_after_the_servers_retry_after() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let body = content(1000);
    nginx.serve("busy/pkg", &body);
    // The test's own request takes the slot: bootplan's first gets 429
    // with `Retry-After: 2`.
    assert_eq!(get(nginx.port, "/busy/pkg"), 200);
    let dest = sb.path().join("pkg");
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  pkg:
    download:
      url: "{}"
      sha256: "{}"
      dest: "{}"
      attempts: 3
      backoff: 10ms..20ms
"#,
        nginx.url("busy/pkg"),
        sha256(&body),
        dest.display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let requests = nginx.requests_for("busy/pkg");
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 429, 200], "{requests:?}");
    let waited = requests[2].at - requests[1].at;
    assert!(
        waited >= 1.95,
        "the retry waited for Retry-After (2 s), not the 20 ms backoff: {waited}"
    );
}

#[test]
fn content_in_the_cache_costs_no_request() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let body = content(50_000);
    nginx.serve("files/bundle", &body);
    let plan = |step: &str, dest: &str| {
        format!(
            r#"version: 1
name: dl
steps:
  {step}:
    download: {{ url: "{}", sha256: "{}", dest: "{}" }}
"#,
            nginx.url("files/bundle"),
            sha256(&body),
            sb.path().join(dest).display()
        )
    };
    sb.plan(&plan("first", "a/bundle"));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(nginx.requests().len(), 1);
    // Another step (another destination) with the same digest, and the
    // first destination deleted: both served from the cache.
    std::fs::remove_file(sb.path().join("a/bundle")).unwrap();
    sb.plan(&format!(
        "{}\n  again:\n    download: {{ url: \"{}\", sha256: \"{}\", dest: \"{}\" }}\n",
        plan("second", "b/bundle").trim_end(),
        nginx.url("files/bundle"),
        sha256(&body),
        sb.path().join("a/bundle").display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(sb.path().join("b/bundle")).unwrap(), body);
    assert_eq!(std::fs::read(sb.path().join("a/bundle")).unwrap(), body);
    assert_eq!(
        nginx.requests().len(),
        1,
        "no request after the first: {:?}",
        nginx.requests()
    );
}

// ------------------------------------------------------- hostile archives

/// A ustar header block for `name` of type `kind` with `size` bytes, link
/// target `link` — written by hand, since tar writers refuse these names.
fn tar_header(name: &[u8], kind: u8, size: usize, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// One tar member: name, type flag, content, link target.
type Member<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// A tar of `members`.
fn tar(members: &[Member<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, body, link) in members {
        out.extend_from_slice(&tar_header(name, *kind, body.len(), link));
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn hostile_archives_are_refused_with_nothing_extracted() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let outside = sb.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let absolute = format!("{}/planted", outside.display());
    let good: Member<'_> = (b"app/README", b'0', b"fine", b"");
    let attacks: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            tar(&[good, (b"app/../../outside/planted", b'0', b"pwned", b"")]),
            "climbs out",
        ),
        (
            "absolute",
            tar(&[good, (absolute.as_bytes(), b'0', b"pwned", b"")]),
            "absolute",
        ),
        (
            "symlink",
            tar(&[
                good,
                (b"app/escape", b'2', b"", b"../../outside"),
                (b"app/escape/planted", b'0', b"pwned", b""),
            ]),
            "points outside",
        ),
        (
            "device",
            tar(&[good, (b"app/mem", b'3', b"", b"")]),
            "device files",
        ),
    ];
    for (name, archive, reason) in attacks {
        let file = format!("files/{name}.tar");
        nginx.serve(&file, &archive);
        let dest = sb.path().join(format!("dest-{name}"));
        sb.plan(&format!(
            r#"version: 1
name: dl
steps:
  {name}:
    download: {{ url: "{}", sha256: "{}", dest: "{}/", extract: {{ format: tar }} }}
"#,
            nginx.url(&file),
            sha256(&archive),
            dest.display()
        ));
        let out = run(&sb);
        assert_eq!(code(&out), 1, "{name}: {}", dump(&out));
        assert_eq!(
            step_code(&sb, name),
            "download.archive_unsafe",
            "{name}: {}",
            dump(&out)
        );
        let message = sb.step(name)["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(reason), "{name}: {message}");
        assert!(!dest.exists(), "{name}: nothing was extracted");
        assert!(names(&outside).is_empty(), "{name}: nothing landed outside");
        let leftovers: Vec<String> = names(sb.path())
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{name}: no staging directory is left: {leftovers:?}"
        );
    }
}

#[test]
fn an_archive_is_extracted_with_strip_components_and_include() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let archive = tar(&[
        (b"node_exporter-1.8.2/", b'5', b"", b""),
        (
            b"node_exporter-1.8.2/node_exporter",
            b'0',
            b"#!/bin/sh\necho hi\n",
            b"",
        ),
        (b"node_exporter-1.8.2/LICENSE", b'0', b"license", b""),
        (b"node_exporter-1.8.2/link", b'2', b"", b"node_exporter"),
    ]);
    let mut zst = Vec::new();
    {
        let mut child = Command::new("zstd")
            .args(["-q", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("zstd");
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        zst.extend_from_slice(&out.stdout);
    }
    nginx.serve("files/ne.tar.zst", &zst);
    let dest = sb.path().join("usr/local/bin");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("other"), b"kept").unwrap();
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  ne:
    download:
      url: "{}"
      sha256: "{}"
      extract: {{ strip_components: 1, include: [node_exporter, link] }}
      dest: "{}/"
      mode: "0755"
"#,
        nginx.url("files/ne.tar.zst"),
        sha256(&zst),
        dest.display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(names(&dest), vec!["link", "node_exporter", "other"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dest.join("node_exporter"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("node_exporter")
    );
}

#[test]
fn max_size_stops_a_body_that_does_not_end() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    // 64 GiB of zeros in a sparse file: served gzip-compressed and chunked,
    // the body has no length, and it goes on far past max_size.
    for dir in ["files", "chunked"] {
        let path = nginx.www().join(dir).join("huge");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
    }
    for (step, dir, headers) in [
        ("declared", "files", ""),
        ("endless", "chunked", "headers: { Accept-Encoding: gzip }"),
    ] {
        sb.plan(&format!(
            r#"version: 1
name: dl
steps:
  {step}:
    download: {{ url: "{}", sha256: "{}", dest: "{}", max_size: 1MiB, {headers} }}
"#,
            nginx.url(&format!("{dir}/huge")),
            sha256(b""),
            sb.path().join(step).display()
        ));
        let out = run(&sb);
        assert_eq!(code(&out), 1, "{step}: {}", dump(&out));
        assert_eq!(
            step_code(&sb, step),
            "download.too_large",
            "{step}: {}",
            dump(&out)
        );
        assert!(!sb.path().join(step).exists());
        let partial = sb.state_dir().join("downloads/partial");
        let kept: u64 = std::fs::read_dir(&partial)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(kept, 0, "{step}: the bytes were discarded");
    }
    // nginx logs the request once it sees the client gone.
    wait_until(
        "nginx logs the cut transfer",
        Duration::from_secs(20),
        || !nginx.requests_for("chunked/huge").is_empty(),
    );
    let endless = nginx.requests_for("chunked/huge");
    assert_eq!(endless.len(), 1, "{endless:?}");
    assert!(
        endless[0].bytes_sent < 64 << 20,
        "the transfer was stopped early: {endless:?}"
    );
}

// ------------------------------------------------------ plans from elsewhere

/// A throwaway minisign key pair in `dir`: (public key file, secret key file).
fn minisign_key(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let bin = peer("minisign")?;
    let (public, secret) = (dir.join("release.pub"), dir.join("release.key"));
    let out = Command::new(bin)
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("minisign -G");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((public, secret))
}

fn minisign_sign(secret: &Path, file: &Path) {
    let out = Command::new(peer("minisign").expect("minisign"))
        .arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(file)
        .output()
        .expect("minisign -S");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_signed_remote_plan_runs_and_a_tampered_one_is_refused_before_parsing() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let keys = sb.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let Some((public, secret)) = minisign_key(&keys) else {
        return;
    };
    let marker = sb.path().join("ran");
    let plan = format!(
        "version: 1\nname: remote\nsteps:\n  mark:\n    file: {{ path: \"{}\", content: \"signed\" }}\n",
        marker.display()
    );
    nginx.serve("plans/plan.yaml", plan.as_bytes());
    minisign_sign(&secret, &nginx.www().join("plans/plan.yaml"));
    let url = nginx.url("plans/plan.yaml");
    let run_remote = |args: &[&str]| {
        sb.cmd()
            .env("BOOTPLAN_KEYS_DIR", sb.path().join("no-keys"))
            .arg("run")
            .args(args)
            .output()
            .expect("run bootplan")
    };
    let trusted = public.to_str().unwrap();
    let out = run_remote(&["--require-signature", "--trusted-key", trusted, &url]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "signed");
    std::fs::remove_file(&marker).unwrap();

    // The attacker's plan: it would write the marker, and it is not even
    // valid YAML — parsing it would say plan.invalid; it is refused first.
    let tampered = format!(
        "{plan}  evil: {{ run: [\"/bin/sh\", \"-c\", \"touch {}\"] }}\n: : :\n",
        marker.display()
    );
    nginx.serve("plans/plan.yaml", tampered.as_bytes());
    let out = run_remote(&["--require-signature", "--trusted-key", trusted, &url]);
    assert_eq!(code(&out), 77, "{}", dump(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plan.signature_invalid"), "{stderr}");
    assert!(
        !stderr.contains("plan.invalid"),
        "it was never parsed: {stderr}"
    );
    assert!(!marker.exists());

    // A signature by a key that is not trusted is refused too.
    let other = sb.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_, other_secret) = minisign_key(&other).unwrap();
    nginx.serve("plans/plan.yaml", plan.as_bytes());
    minisign_sign(&other_secret, &nginx.www().join("plans/plan.yaml"));
    let out = run_remote(&["--require-signature", "--trusted-key", trusted, &url]);
    assert_eq!(code(&out), 77, "{}", dump(&out));

    // Pinned instead of signed: the right pin runs, a wrong one is refused.
    let out = run_remote(&[&format!("{url}#sha256={}", sha256(plan.as_bytes()))]);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let out = run_remote(&[&format!("{url}#sha256={}", sha256(b"another plan"))]);
    assert_eq!(code(&out), 77, "{}", dump(&out));
    // Neither pinned nor signed: refused.
    let out = run_remote(&[&url]);
    assert_eq!(code(&out), 77, "{}", dump(&out));
}

#[test]
fn includes_are_merged_and_a_step_defined_twice_names_both_places() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let base = "steps:\n  setup:\n    file: { path: base-out, content: base }\n  common:\n    run: [touch, \"{{ vars.greeting }}\"]\nvars:\n  greeting: from-base\n";
    sb.write("base.yaml", base);
    let remote = "steps:\n  fetched:\n    file: { path: remote-out, content: remote }\n";
    nginx.serve("base/remote.yaml", remote.as_bytes());
    let remote_url = format!(
        "{}#sha256={}",
        nginx.url("base/remote.yaml"),
        sha256(remote.as_bytes())
    );
    let plan = |setup_extra: &str| {
        format!(
            "version: 1\nname: merged\ninclude: [base.yaml, \"{remote_url}\"]\nvars:\n  greeting: from-plan\nsteps:\n  setup:\n{setup_extra}    file: {{ path: plan-out, content: plan }}\n"
        )
    };
    sb.plan(&plan(""));
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each step's body starts on the line after its name.
    assert!(
        stderr.contains("plan.yaml:8:5: steps.setup: step `setup` is defined twice")
            && stderr.contains("at base.yaml:3:5"),
        "both places are named: {stderr}"
    );

    sb.plan(&plan("    override: true\n"));
    let out = sb.run();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(sb.read("plan-out"), "plan");
    assert!(
        !sb.path().join("base-out").exists(),
        "the override replaced the included step"
    );
    assert!(
        sb.path().join("from-plan").exists() && !sb.path().join("from-base").exists(),
        "vars: the including plan wins"
    );
    assert_eq!(sb.read("remote-out"), "remote");
    let digest = sb.status()["plan"]["digest"]
        .as_str()
        .or(sb.status()["digest"].as_str())
        .unwrap_or_default()
        .to_string();
    let own = format!("sha256:{}", sha256(plan("    override: true\n").as_bytes()));
    assert!(
        digest.starts_with("sha256:") && digest != own,
        "the digest covers the included files: {digest}"
    );

    // A problem inside an included file is reported with that file's line.
    sb.write(
        "base.yaml",
        &base.replace("greeting }}\"]", "greeting }}\"]\n    needs: [nowhere]"),
    );
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("base.yaml:6:"), "{stderr}");
}

#[test]
fn an_s3_object_is_fetched_signed_with_the_aws_credentials_and_resumed_with_range() {
    let Some(moto) = crate::secrets::Moto::start() else {
        return;
    };
    let sb = Sandbox::new();
    let body = content(300_000);
    let source = sb.path().join("object.bin");
    std::fs::write(&source, &body).unwrap();
    moto.boto(&format!(
        "s3.create_bucket(Bucket='artifacts')\ns3.upload_file('{}', 'artifacts', 'agents/agent v1.bin')\n",
        source.display()
    ));
    let dest = sb.path().join("agent.bin");
    // Half the object is already here from an interrupted run: only the
    // rest is asked for (a signed Range request), and the whole must hash right.
    let partial = sb
        .state_dir()
        .join(format!("downloads/partial/sha256-{}", sha256(&body)));
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &body[..150_000]).unwrap();
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  agent:
    download: {{ url: "s3://artifacts/agents/agent v1.bin", sha256: "{}", dest: "{}", attempts: 2 }}
"#,
        sha256(&body),
        dest.display()
    ));
    let out = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_S3", moto.url())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/")
        .env("BOOTPLAN_METRICS_TEXTFILE", sb.path().join("metrics.prom"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let metrics = sb.read("metrics.prom");
    let fetched = metrics
        .lines()
        .find(|l| l.starts_with("bootplan_download_bytes_total{") && l.contains("source=\"s3\""))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no s3 byte count: {metrics}"))
        .to_string();
    assert_eq!(fetched, "150000", "only the missing half was fetched");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bootplan_download_cache_misses_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
    // An object that is not there: not retried, nothing placed.
    std::fs::remove_file(&dest).unwrap();
    std::fs::remove_dir_all(sb.state_dir().join("downloads")).unwrap();
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  other:
    download: {{ url: "s3://artifacts/missing.bin", sha256: "{}", dest: "{}", attempts: 1 }}
"#,
        sha256(&body),
        dest.display()
    ));
    let out = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_S3", moto.url())
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(step_code(&sb, "other"), "download.unavailable");
    assert!(!dest.exists());
}

#[test]
fn a_download_killed_midway_continues_where_it_stopped_on_the_next_run() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    // 64 KiB/s without Range: 1 MiB would take 16 s.
    let body = content(1024 * 1024);
    nginx.serve("slow/image.bin", &body);
    let dest = sb.path().join("image.bin");
    sb.plan(&format!(
        r#"version: 1
name: dl
steps:
  image:
    download: {{ url: "{}", sha256: "{}", dest: "{}" }}
"#,
        nginx.url("slow/image.bin"),
        sha256(&body),
        dest.display()
    ));
    let partial = sb
        .state_dir()
        .join(format!("downloads/partial/sha256-{}", sha256(&body)));
    let first = crate::harness::Bootplan::new(
        sb.cmd()
            .args(["run", "plan.yaml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bootplan"),
    );
    wait_until(
        "a part of the body is on disk",
        Duration::from_secs(20),
        || std::fs::metadata(&partial).is_ok_and(|m| m.len() >= 64 * 1024),
    );
    let mut first = first.into_child();
    first.kill().expect("SIGKILL bootplan");
    first.wait().expect("reap bootplan");
    assert!(!dest.exists(), "nothing placed by the killed run");
    let kept = std::fs::metadata(&partial).unwrap().len();

    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let requests = nginx.requests_for("slow/image.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].status, 206, "{requests:?}");
    let offset: u64 = requests[1]
        .range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert_eq!(offset, kept, "resumed from the kept bytes: {requests:?}");
    assert!(!partial.exists(), "the partial file became the cached blob");
}

#[test]
fn kept_bytes_that_do_not_verify_are_fetched_again_from_the_start() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let body = content(200_000);
    nginx.serve("files/tool.bin", &body);
    let partial = sb
        .state_dir()
        .join(format!("downloads/partial/sha256-{}", sha256(&body)));
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    // Someone else's bytes where a killed run's would be.
    std::fs::write(&partial, vec![0xAA; 50_000]).unwrap();
    let dest = sb.path().join("tool.bin");
    sb.plan(&format!(
        "version: 1\nname: dl\nsteps:\n  tool:\n    download: {{ url: \"{}\", sha256: \"{}\", dest: \"{}\" }}\n",
        nginx.url("files/tool.bin"),
        sha256(&body),
        dest.display()
    ));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let requests = nginx.requests_for("files/tool.bin");
    let seen: Vec<(u16, &str)> = requests
        .iter()
        .map(|r| (r.status, r.range.as_str()))
        .collect();
    assert_eq!(seen, vec![(206, "bytes=50000-"), (200, "")], "{requests:?}");
}

#[test]
fn a_header_from_a_secret_is_sent_and_never_shown() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let body = content(4096);
    nginx.serve("private/app.bin", &body);
    sb.write("token", "tok-7f3a9c2e51\n");
    let dest = sb.path().join("app.bin");
    let plan = |auth: &str| {
        format!(
            r#"version: 1
name: dl
secrets:
  token: {{ file: {{ path: token }} }}
steps:
  app:
    download:
      url: "{}"
      sha256: "{}"
      dest: "{}"
      headers: {{ Authorization: "{auth}" }}
      attempts: 1
"#,
            nginx.url("private/app.bin"),
            sha256(&body),
            dest.display()
        )
    };
    // Without the right header the server says 401: not retried, nothing placed.
    sb.plan(&plan("Bearer nothing"));
    let out = run(&sb);
    assert_eq!(code(&out), 69, "{}", dump(&out));
    assert_eq!(step_code(&sb, "app"), "download.unavailable");
    assert!(
        sb.step("app")["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("401")
    );
    assert!(!dest.exists());

    sb.plan(&plan("Bearer {{ secrets.token }}"));
    let out = sb
        .cmd()
        .args(["run", "plan.yaml"])
        .env("BOOTPLAN_LOG_LEVEL", "debug")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let everything = format!(
        "{}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sb.status()
    );
    assert!(
        !everything.contains("tok-7f3a9c2e51"),
        "the token leaked: {everything}"
    );
}

#[test]
fn a_download_without_a_digest_is_invalid_unless_it_says_so_and_then_warns_every_run() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    nginx.serve("files/unpinned", b"whatever the server says");
    let dest = sb.path().join("unpinned");
    let plan = |extra: &str| {
        format!(
            "version: 1\nname: dl\nsteps:\n  loose:\n    download: {{ url: \"{}\", dest: \"{}\"{extra} }}\n    frequency: always\n",
            nginx.url("files/unpinned"),
            dest.display()
        )
    };
    sb.plan(&plan(""));
    let out = run(&sb);
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a digest"),
        "{}",
        dump(&out)
    );
    assert!(
        nginx.requests().is_empty(),
        "nothing was fetched for an invalid plan"
    );

    sb.plan(&plan(", insecure_no_digest: true"));
    for _ in 0..2 {
        let out = run(&sb);
        assert_eq!(code(&out), 0, "{}", dump(&out));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("without a digest"),
            "warned on every run: {text}"
        );
    }
    assert_eq!(std::fs::read(&dest).unwrap(), b"whatever the server says");
}

#[test]
fn a_destination_that_already_holds_the_content_is_left_alone_and_a_changed_one_is_replaced() {
    use std::os::unix::fs::MetadataExt;
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let body = content(30_000);
    nginx.serve("files/bin", &body);
    let dest = sb.path().join("bin");
    sb.plan(&format!(
        "version: 1\nname: dl\nsteps:\n  bin:\n    download: {{ url: \"{}\", sha256: \"{}\", dest: \"{}\", mode: \"0755\" }}\n    frequency: always\n",
        nginx.url("files/bin"),
        sha256(&body),
        dest.display()
    ));
    for _ in 0..2 {
        let out = run(&sb);
        assert_eq!(code(&out), 0, "{}", dump(&out));
    }
    let first = std::fs::metadata(&dest).unwrap();
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    let again = std::fs::metadata(&dest).unwrap();
    assert_eq!(
        (first.ino(), first.mtime_nsec()),
        (again.ino(), again.mtime_nsec()),
        "not rewritten"
    );
    // Someone changed one byte: the verified content is put back.
    let mut changed = body.clone();
    changed[100] ^= 1;
    std::fs::write(&dest, &changed).unwrap();
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(
        nginx.requests().len(),
        1,
        "all from the cache after the first"
    );
}

#[test]
fn the_cache_keeps_to_max_cache_size_and_the_least_recently_used_goes() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    let (a, b) = (content(60_000), content(61_000));
    nginx.serve("files/a", &a);
    nginx.serve("files/b", &b);
    let plan = |name: &str, body: &[u8]| {
        format!(
            "version: 1\nname: dl\ndownloads: {{ max_cache_size: 100KiB }}\nsteps:\n  {name}:\n    download: {{ url: \"{}\", sha256: \"{}\", dest: \"{}\" }}\n    frequency: always\n",
            nginx.url(&format!("files/{name}")),
            sha256(body),
            sb.path().join(name).display()
        )
    };
    for (name, body) in [("a", &a), ("b", &b)] {
        sb.plan(&plan(name, body));
        let out = run(&sb);
        assert_eq!(code(&out), 0, "{}", dump(&out));
    }
    // Both do not fit: `a`, used least recently, went when `b` came in.
    let cached = names(&sb.state_dir().join("downloads/sha256"));
    assert_eq!(cached, vec![sha256(&b)]);
    std::fs::remove_file(sb.path().join("a")).unwrap();
    sb.plan(&plan("a", &a));
    let out = run(&sb);
    assert_eq!(code(&out), 0, "{}", dump(&out));
    assert_eq!(
        nginx.requests_for("files/a").len(),
        2,
        "a was fetched again"
    );
    assert_eq!(
        names(&sb.state_dir().join("downloads/sha256")),
        vec![sha256(&a)]
    );
}

#[test]
fn a_plan_from_a_url_may_not_include_a_local_file() {
    let Some(nginx) = Nginx::start() else { return };
    let sb = Sandbox::new();
    sb.write("local.yaml", "steps:\n  x:\n    run: [\"true\"]\n");
    let plan =
        "version: 1\nname: remote\ninclude: [local.yaml]\nsteps:\n  y:\n    run: [\"true\"]\n";
    nginx.serve("plans/p.yaml", plan.as_bytes());
    let url = format!(
        "{}#sha256={}",
        nginx.url("plans/p.yaml"),
        sha256(plan.as_bytes())
    );
    let out = sb.cmd().args(["run", &url]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("include pinned URLs"),
        "{}",
        dump(&out)
    );
}
