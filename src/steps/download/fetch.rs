//! The sources of a download and the loop that tries them: each source
//! (the URL, then the mirrors in order) gets its own retry budget (full
//! jitter, `Retry-After`, the run's deadline); the bytes fetched so far
//! and their running hash are kept across attempts and sources, so a cut
//! transfer continues with a `Range` request instead of starting over.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;

use super::{DownloadError, Progress, Rendered};
use crate::digest::{Algorithm, Hasher};
use crate::plan::download::DownloadSpec;
use crate::retry::{self, Attempt, Budget, GaveUp};
use crate::steps::StepContext;
use crate::telemetry::Level;
use crate::telemetry::metrics as m;

/// A request that sends no byte for this long is cut (and resumed).
const STALL_LIMIT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 256 * 1024;

/// Bytes fetched so far, in a file, and their running hash.
pub(super) struct Partial {
    file: File,
    path: PathBuf,
    pub len: u64,
    hasher: Hasher,
    algorithm: Algorithm,
}

impl Partial {
    /// Opens (or creates) the partial file at `path`; bytes a killed run
    /// left there are hashed again and kept, to be continued.
    fn open(path: &Path, algorithm: Algorithm) -> Result<Partial, DownloadError> {
        let err = |e: std::io::Error| DownloadError::Store {
            detail: format!("cannot open {}: {e}", path.display()),
        };
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(err)?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        let mut hasher = algorithm.hasher();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Partial {
            file,
            path: path.to_path_buf(),
            len,
            hasher,
            algorithm,
        })
    }

    fn io_err(&self, e: std::io::Error) -> DownloadError {
        DownloadError::Store {
            detail: format!("cannot write {}: {e}", self.path.display()),
        }
    }

    fn reset(&mut self) -> Result<(), DownloadError> {
        self.file.set_len(0).map_err(|e| self.io_err(e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| self.io_err(e))?;
        self.len = 0;
        self.hasher = self.algorithm.hasher();
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), DownloadError> {
        self.file.write_all(bytes).map_err(|e| self.io_err(e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }
}

pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Fetches from the first source that gives content of the right digest;
/// returns the path of the verified file (`partial_path`), made durable
/// when it is to enter the cache.
pub(super) async fn fetch_all(
    spec: &DownloadSpec,
    rendered: &Rendered,
    partial_path: &Path,
    deadline: Option<tokio::time::Instant>,
    durable: bool,
    ctx: &StepContext,
) -> Result<PathBuf, DownloadError> {
    let algorithm = spec
        .digest
        .as_ref()
        .map_or(Algorithm::Sha256, |d| d.algorithm);
    let mut partial = Partial::open(partial_path, algorithm)?;
    // Bytes a killed run left are not verified yet: when the whole does
    // not match, the source is asked once more, from the first byte.
    let mut kept_from_before = partial.len > 0;
    let mut failures = Vec::new();
    let mut index = 0;
    while let Some(url) = rendered.sources.get(index) {
        if index > 0 && failures.len() == index {
            ctx.reporter.notice(
                Level::Warn,
                format!(
                    "step {}: trying mirror {url} after: {}",
                    rendered.step,
                    failures.last().map(ToString::to_string).unwrap_or_default()
                ),
            );
        }
        if let Err(err) = fetch_source(spec, rendered, url, &mut partial, deadline, ctx).await {
            failures.push(err);
            index += 1;
            continue;
        }
        let actual = std::mem::replace(&mut partial.hasher, algorithm.hasher()).finish();
        match &spec.digest {
            Some(expected) if *expected != actual => {
                // Discard the bad bytes; the next source starts from zero.
                partial.reset()?;
                if std::mem::take(&mut kept_from_before) {
                    ctx.reporter.notice(
                        Level::Warn,
                        format!(
                            "step {}: the bytes kept from an earlier run did not verify; fetching {url} again from the start",
                            rendered.step
                        ),
                    );
                    continue;
                }
                failures.push(DownloadError::ChecksumMismatch {
                    url: url.clone(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
                index += 1;
                continue;
            }
            Some(_) => {}
            None => ctx.reporter.notice(
                Level::Warn,
                format!(
                    "step {}: {url} was not verified; its {actual} (pin it with `{}: {}`)",
                    rendered.step,
                    actual.algorithm.name(),
                    actual.hex()
                ),
            ),
        }
        if durable {
            partial.file.sync_data().map_err(|e| partial.io_err(e))?;
        }
        return Ok(partial.path.clone());
    }
    drop(partial);
    let _ = std::fs::remove_file(partial_path);
    Err(if failures.len() == 1 {
        failures.remove(0)
    } else {
        DownloadError::AllSources(failures)
    })
}

/// One source with its retry budget (a span per source: its requests are
/// the network calls of the step's attempt).
#[tracing::instrument(name = "download", skip_all, fields(step = %rendered.step, source = scheme_label(url)))]
async fn fetch_source(
    spec: &DownloadSpec,
    rendered: &Rendered,
    url: &str,
    partial: &mut Partial,
    deadline: Option<tokio::time::Instant>,
    ctx: &StepContext,
) -> Result<(), DownloadError> {
    let budget = Budget {
        deadline,
        attempt_time: spec.attempt_timeout.unwrap_or(Duration::ZERO),
        ..Budget::new(spec.attempts, spec.min_backoff, spec.max_backoff)
    };
    let scheme = scheme_label(url);
    let step = rendered.step.as_str();
    let partial = tokio::sync::Mutex::new(partial);
    let result = retry::run(
        &budget,
        |retrying| {
            retry::count("download");
            ctx.reporter
                .notice(Level::Warn, format!("step {step}: {url}: {retrying}"));
        },
        |_attempt| {
            let partial = &partial;
            async move {
                let mut partial = partial.lock().await;
                let attempt = one_attempt(spec, rendered, url, scheme, &mut partial, ctx);
                match spec.attempt_timeout {
                    Some(limit) => match tokio::time::timeout(limit, attempt).await {
                        Ok(result) => result,
                        Err(_) => Attempt::retry(format!(
                            "attempt timed out after {}; {} byte(s) kept",
                            humantime::format_duration(limit),
                            partial.len
                        )),
                    },
                    None => attempt.await,
                }
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(GaveUp::Fatal(err)) => Err(err),
        Err(GaveUp::Exhausted(exhausted)) => Err(DownloadError::Unavailable {
            url: url.to_string(),
            detail: exhausted.to_string(),
        }),
    }
}

fn scheme_label(url: &str) -> &'static str {
    for scheme in ["https", "http", "file", "data", "s3"] {
        if url.starts_with(scheme) && url[scheme.len()..].starts_with(':') {
            return scheme;
        }
    }
    "other"
}

async fn one_attempt(
    spec: &DownloadSpec,
    rendered: &Rendered,
    url: &str,
    scheme: &'static str,
    partial: &mut Partial,
    ctx: &StepContext,
) -> Attempt<(), DownloadError> {
    match scheme {
        "http" | "https" => {
            let mut request = ctx.http().get(url).headers(rendered.headers.clone());
            if partial.len > 0 {
                request =
                    request.header(reqwest::header::RANGE, format!("bytes={}-", partial.len));
            }
            http_attempt(spec, rendered, url, scheme, partial, request, ctx).await
        }
        "s3" => {
            let Some((bucket, key)) = url
                .strip_prefix("s3://")
                .and_then(|rest| rest.split_once('/'))
                .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            else {
                return Attempt::Fail(DownloadError::Refused {
                    url: url.to_string(),
                    detail: "an S3 URL is s3://BUCKET/KEY".into(),
                });
            };
            let range = (partial.len > 0).then_some(partial.len);
            let request = match ctx.secrets.s3_get(url, bucket, key, range).await {
                Ok(request) => request,
                Err(err @ crate::secrets::SecretError::Unreachable { .. }) => {
                    return Attempt::retry(err.to_string());
                }
                Err(err) => {
                    return Attempt::Fail(DownloadError::Unavailable {
                        url: url.to_string(),
                        detail: err.to_string(),
                    });
                }
            };
            http_attempt(spec, rendered, url, scheme, partial, request, ctx).await
        }
        "file" => done_or_fail(file_attempt(spec, rendered, url, partial)),
        "data" => done_or_fail(data_attempt(spec, url, partial)),
        _ => Attempt::Fail(DownloadError::Refused {
            url: url.to_string(),
            detail: "bootplan cannot download from this kind of URL (use https://, http://, s3://, file:// or data:)".into(),
        }),
    }
}

fn done_or_fail(result: Result<(), DownloadError>) -> Attempt<(), DownloadError> {
    match result {
        Ok(()) => Attempt::Done(()),
        Err(err) => Attempt::Fail(err),
    }
}

fn count_bytes(step: &str, scheme: &'static str, n: u64) {
    metrics::counter!(m::DOWNLOAD_BYTES, "step" => step.to_string(), "source" => scheme)
        .increment(n);
}

/// One request (with `Range` when bytes are kept) and its answer.
async fn http_attempt(
    spec: &DownloadSpec,
    rendered: &Rendered,
    url: &str,
    scheme: &'static str,
    partial: &mut Partial,
    request: reqwest::RequestBuilder,
    ctx: &StepContext,
) -> Attempt<(), DownloadError> {
    use reqwest::StatusCode;
    let resuming = partial.len > 0;
    let response = match tokio::time::timeout(STALL_LIMIT, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return Attempt::retry(crate::http::describe_error(&err)),
        Err(_) => {
            return Attempt::retry(format!(
                "no answer within {}",
                humantime::format_duration(STALL_LIMIT)
            ));
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match status {
        StatusCode::PARTIAL_CONTENT if resuming => {
            let start = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(partial.len) {
                if let Err(e) = partial.reset() {
                    return Attempt::Fail(e);
                }
                return Attempt::retry("the server resumed at another offset; starting over");
            }
        }
        StatusCode::OK => {
            if resuming && let Err(e) = partial.reset() {
                return Attempt::Fail(e);
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE if resuming => {
            if let Err(e) = partial.reset() {
                return Attempt::Fail(e);
            }
            return Attempt::retry("the kept bytes are not a prefix of the content; starting over");
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            return Attempt::Retry {
                detail: format!("HTTP {status}"),
                retry_after,
            };
        }
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
            return Attempt::Retry {
                detail: format!("HTTP {status}"),
                retry_after,
            };
        }
        s => {
            return Attempt::Fail(DownloadError::Unavailable {
                url: url.to_string(),
                detail: format!("HTTP {s}"),
            });
        }
    }
    let total = response.content_length().map(|n| n + partial.len);
    if total.is_some_and(|t| t > spec.max_size) {
        return Attempt::Fail(DownloadError::TooLarge {
            url: url.to_string(),
            limit: spec.max_size,
        });
    }
    let mut progress = Progress::new(ctx, &rendered.step, url, total);
    let mut stream = response.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout(STALL_LIMIT, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                return Attempt::retry(format!(
                    "transfer cut after {} byte(s): {}",
                    partial.len,
                    crate::http::describe_error(&err)
                ));
            }
            Err(_) => {
                return Attempt::retry(format!(
                    "no byte for {}, {} byte(s) kept",
                    humantime::format_duration(STALL_LIMIT),
                    partial.len
                ));
            }
        };
        if partial.len + chunk.len() as u64 > spec.max_size {
            let _ = partial.reset();
            return Attempt::Fail(DownloadError::TooLarge {
                url: url.to_string(),
                limit: spec.max_size,
            });
        }
        if let Err(e) = partial.append(&chunk) {
            return Attempt::Fail(e);
        }
        count_bytes(&rendered.step, scheme, chunk.len() as u64);
        progress.update(partial.len);
    }
    if let Some(total) = total
        && partial.len != total
    {
        return Attempt::retry(format!(
            "transfer ended after {} of {total} byte(s)",
            partial.len
        ));
    }
    Attempt::Done(())
}

/// The first byte offset of a `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

fn file_attempt(
    spec: &DownloadSpec,
    rendered: &Rendered,
    url: &str,
    partial: &mut Partial,
) -> Result<(), DownloadError> {
    let refused = |detail: String| DownloadError::Refused {
        url: url.to_string(),
        detail,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| refused(format!("not a URL: {e}")))?;
    let path = parsed
        .to_file_path()
        .map_err(|()| refused("a file:// URL names an absolute local path".into()))?;
    partial.reset()?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| DownloadError::Unavailable {
            url: url.to_string(),
            detail: format!("cannot open {}: {e}", path.display()),
        })?;
    let meta = file.metadata().map_err(|e| refused(e.to_string()))?;
    if meta.is_dir() {
        return Err(refused(format!("{} is a directory", path.display())));
    }
    if meta.is_file() && meta.len() > spec.max_size {
        return Err(DownloadError::TooLarge {
            url: url.to_string(),
            limit: spec.max_size,
        });
    }
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DownloadError::Unavailable {
                    url: url.to_string(),
                    detail: format!("cannot read {}: {e}", path.display()),
                });
            }
        };
        if n == 0 {
            break;
        }
        if partial.len + n as u64 > spec.max_size {
            let _ = partial.reset();
            return Err(DownloadError::TooLarge {
                url: url.to_string(),
                limit: spec.max_size,
            });
        }
        partial.append(&buf[..n])?;
        count_bytes(&rendered.step, "file", n as u64);
    }
    Ok(())
}

fn data_attempt(
    spec: &DownloadSpec,
    url: &str,
    partial: &mut Partial,
) -> Result<(), DownloadError> {
    let bytes = decode_data_url(url).map_err(|detail| DownloadError::Refused {
        url: url.chars().take(64).collect(),
        detail,
    })?;
    if bytes.len() as u64 > spec.max_size {
        return Err(DownloadError::TooLarge {
            url: url.chars().take(64).collect(),
            limit: spec.max_size,
        });
    }
    partial.reset()?;
    partial.append(&bytes)
}

/// Decodes `data:[MEDIATYPE][;base64],DATA` (RFC 2397).
pub(super) fn decode_data_url(url: &str) -> Result<Vec<u8>, String> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| "not a data: URL".to_string())?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| "a data: URL needs a `,` before its data".to_string())?;
    let raw = percent_decode(data)?;
    if meta.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        use base64::Engine;
        let text: Vec<u8> = raw
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|e| format!("the data is not base64: {e}"))
    } else {
        Ok(raw)
    }
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_plain_and_base64() {
        assert_eq!(
            decode_data_url("data:,hello%20world").unwrap(),
            b"hello world"
        );
        assert_eq!(
            decode_data_url("data:application/octet-stream;base64,aGVsbG8=").unwrap(),
            b"hello"
        );
        assert!(decode_data_url("data:nocomma").is_err());
        assert!(decode_data_url("data:,bad%zz").is_err());
    }

    #[test]
    fn content_range_gives_the_first_offset() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }

    #[test]
    fn a_partial_file_is_hashed_again_when_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut p = Partial::open(&path, Algorithm::Sha256).unwrap();
        p.append(b"hello ").unwrap();
        drop(p);
        let mut p = Partial::open(&path, Algorithm::Sha256).unwrap();
        assert_eq!(p.len, 6);
        p.append(b"world").unwrap();
        assert_eq!(
            p.hasher.finish(),
            crate::digest::Digest::of(Algorithm::Sha256, b"hello world")
        );
    }
}
