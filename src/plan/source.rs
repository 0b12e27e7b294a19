//! Where plan text comes from: a local file, or a URL (`https://`,
//! `http://`, `file://`) that must be pinned (`URL#sha256=HEX`) or signed
//! (`--require-signature`: `URL.minisig` verified with a trusted minisign
//! key). The check is made on the bytes, before any of them is parsed: an
//! untrusted plan never reaches the YAML parser.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::PlanError;
use crate::digest::Digest;
use crate::signature::TrustedKeys;

/// Largest remote plan (or signature) fetched.
const MAX_REMOTE_BYTES: u64 = 4 * 1024 * 1024;
const ATTEMPTS: u32 = 4;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How plans from elsewhere are checked.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// `--require-signature`: every remote plan needs a valid signature.
    pub require_signature: bool,
    /// `--trusted-key` files, beside the keys directory's.
    pub trusted_keys: Vec<PathBuf>,
    /// Where trusted keys are (default `/etc/bootplan/keys`, or `BOOTPLAN_KEYS_DIR`).
    pub keys_dir: Option<PathBuf>,
}

/// Whether `text` names a plan by URL rather than by path.
pub fn is_url(text: &str) -> bool {
    ["https://", "http://", "file://"]
        .iter()
        .any(|s| text.starts_with(s))
}

/// A URL without its `#…` pin, and the pin.
pub fn split_pin(url: &str) -> Result<(&str, Option<Digest>), String> {
    match url.split_once('#') {
        None => Ok((url, None)),
        Some((base, fragment)) => Digest::parse_tagged(fragment)
            .map(|d| (base, Some(d)))
            .map_err(|e| format!("the pin `#{fragment}` is not a digest: {e}")),
    }
}

/// Fetches the plan at `url` (with its pin, if any) and checks it.
pub fn fetch_verified(url: &str, verification: &Verification) -> Result<String, PlanError> {
    let untrusted = |message: String| PlanError::Untrusted {
        url: url.to_string(),
        message,
    };
    let (base, pin) = split_pin(url).map_err(untrusted)?;
    if pin.is_none() && !verification.require_signature {
        return Err(untrusted(
            "a plan from a URL must be pinned (URL#sha256=HEX) or signed (--require-signature)"
                .into(),
        ));
    }
    let bytes = fetch(base)?;
    if let Some(pin) = &pin {
        let actual = Digest::of(pin.algorithm, &bytes);
        if actual != *pin {
            return Err(untrusted(format!(
                "the content's digest is {actual}, the pin says {pin}; it was not parsed"
            )));
        }
    }
    if verification.require_signature {
        let keys_dir = verification
            .keys_dir
            .clone()
            .unwrap_or_else(TrustedKeys::default_dir);
        let keys = TrustedKeys::load(&keys_dir, &verification.trusted_keys)
            .map_err(|e| untrusted(e.to_string()))?;
        let sig_url = format!("{base}{}", crate::signature::SIGNATURE_SUFFIX);
        let signature = fetch(&sig_url).map_err(|e| untrusted(format!("no signature: {e}")))?;
        let signature = String::from_utf8(signature)
            .map_err(|_| untrusted(format!("{sig_url} is not a minisign signature")))?;
        keys.verify(&bytes, &signature)
            .map_err(|e| untrusted(format!("{e}; it was not parsed")))?;
    }
    String::from_utf8(bytes).map_err(|e| PlanError::Fetch {
        url: url.to_string(),
        message: format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()),
    })
}

/// The bytes at `url`, bounded; http(s) retried with the one retry loop.
fn fetch(url: &str) -> Result<Vec<u8>, PlanError> {
    let failed = |message: String| PlanError::Fetch {
        url: url.to_string(),
        message,
    };
    if url.starts_with("file://") {
        let parsed = reqwest::Url::parse(url).map_err(|e| failed(e.to_string()))?;
        let path = parsed
            .to_file_path()
            .map_err(|()| failed("a file:// URL names an absolute local path".into()))?;
        return super::bounded::read_bounded(&path, MAX_REMOTE_BYTES).map_err(|e| match e {
            super::bounded::Bounded::Io(e) => failed(e.to_string()),
            super::bounded::Bounded::Problem(message, _) => failed(message),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(fetch_http(url))
}

async fn fetch_http(url: &str) -> Result<Vec<u8>, PlanError> {
    use crate::retry::{Attempt, Budget, GaveUp};
    use futures_util::StreamExt;
    let failed = |message: String| PlanError::Fetch {
        url: url.to_string(),
        message,
    };
    let client = crate::http::client_builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let budget = Budget::new(ATTEMPTS, Duration::from_millis(500), Duration::from_secs(5));
    let result = crate::retry::run(
        &budget,
        |retrying| crate::stdio::errln!("bootplan: fetching the plan {url}: {retrying}"),
        |_| {
            let client = &client;
            async move {
                let response = match client.get(url).send().await {
                    Ok(r) => r,
                    Err(e) => return Attempt::retry(crate::http::describe_error(&e)),
                };
                let status = response.status();
                if status.is_server_error() || status.as_u16() == 429 {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    return Attempt::Retry {
                        detail: format!("HTTP {status}"),
                        retry_after,
                    };
                }
                if !status.is_success() {
                    return Attempt::Fail(format!("HTTP {status}"));
                }
                if response
                    .content_length()
                    .is_some_and(|n| n > MAX_REMOTE_BYTES)
                {
                    return Attempt::Fail(format!("larger than {MAX_REMOTE_BYTES} bytes"));
                }
                let mut body = Vec::new();
                let mut stream = response.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => {
                            body.extend_from_slice(&chunk);
                            if body.len() as u64 > MAX_REMOTE_BYTES {
                                return Attempt::Fail(format!(
                                    "larger than {MAX_REMOTE_BYTES} bytes"
                                ));
                            }
                        }
                        Err(e) => return Attempt::retry(crate::http::describe_error(&e)),
                    }
                }
                Attempt::Done(body)
            }
        },
    )
    .await;
    match result {
        Ok(body) => Ok(body),
        Err(GaveUp::Fatal(message)) => Err(failed(message)),
        Err(GaveUp::Exhausted(e)) => Err(failed(e.to_string())),
    }
}

/// The path diagnostics show for a plan at `url` (its pin left off).
pub fn shown_path(url: &str) -> PathBuf {
    PathBuf::from(url.split('#').next().unwrap_or(url))
}

/// Whether `path` is really a URL given as a path.
pub fn path_is_url(path: &Path) -> bool {
    path.to_str().is_some_and(is_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_plan_needs_a_pin_or_a_signature_and_the_pin_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.yaml");
        std::fs::write(&path, "version: 1\n").unwrap();
        let url = format!("file://{}", path.display());
        let none = Verification::default();
        assert!(matches!(
            fetch_verified(&url, &none),
            Err(PlanError::Untrusted { .. })
        ));
        let good = Digest::of(crate::digest::Algorithm::Sha256, b"version: 1\n");
        let pinned = format!("{url}#sha256={}", good.hex());
        assert_eq!(fetch_verified(&pinned, &none).unwrap(), "version: 1\n");
        let bad = format!("{url}#sha256={}", "0".repeat(64));
        let err = fetch_verified(&bad, &none).unwrap_err();
        assert!(err.to_string().contains("not parsed"), "{err}");
    }
}
