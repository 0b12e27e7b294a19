//! The one HTTP wrapper the network backends share: per-attempt timeouts,
//! retries with full jitter on connection errors, timeouts, 5xx and 429
//! (honouring `Retry-After`), never on other 4xx, never past the run's
//! deadline. Response bodies land in zeroized buffers.
//!
//! Backends build their `reqwest::Client` with [`client`] (ring provider,
//! optional private CA, optional no-proxy) and call [`Net::send`] with a
//! closure that builds the request afresh for each attempt.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::retry::Attempt;

use crate::plan::secret_source::NetRetry;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: u32 = 6;
const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(200);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(60);
/// Error bodies are only kept this long, for messages.
const MAX_ERROR_BODY: usize = 300;

/// A reqwest client for one backend. `ca_file` adds a private CA to the
/// platform roots; `no_proxy` is for link-local services (IMDS); `only_url`
/// is the one base URL the client talks to, when there is one (a plain
/// `http://` one needs no trust roots).
pub fn client(
    ca_file: Option<&Path>,
    ca_only: bool,
    no_proxy: bool,
    only_url: Option<&str>,
) -> Result<reqwest::Client, String> {
    let mut builder = crate::http::client_builder();
    if no_proxy {
        builder = builder.no_proxy();
    }
    if ca_file.is_none() && only_url.is_some_and(crate::http::needs_no_roots) {
        builder = builder.tls_certs_only([]);
    }
    crate::http::with_ca_file(builder, ca_file, ca_only)?
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {err}"))
}

/// Timeouts and retry budget for one backend.
#[derive(Clone)]
pub struct Net {
    pub client: reqwest::Client,
    pub timeout: Duration,
    pub budget: crate::retry::Budget,
    /// The backend, in retry messages and the retry metric.
    pub dependency: &'static str,
    /// Where each retried failure is logged.
    pub reporter: Option<std::sync::Arc<crate::telemetry::Reporter>>,
    /// `max_requests_per_second`: each attempt takes a token first
    /// (shared by every clone of this `Net`).
    pub bucket: Option<std::sync::Arc<crate::retry::TokenBucket>>,
}

impl Net {
    pub fn new(
        client: reqwest::Client,
        timeout: Option<Duration>,
        retry: Option<&NetRetry>,
        deadline: Option<Instant>,
        dependency: &'static str,
    ) -> Net {
        let (min_backoff, max_backoff) = retry
            .and_then(|r| r.backoff)
            .map_or((DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF), |b| {
                (b.min, b.max)
            });
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let attempts = retry.and_then(|r| r.attempts).unwrap_or(DEFAULT_ATTEMPTS);
        let mut budget = crate::retry::Budget::new(attempts, min_backoff, max_backoff);
        budget.max_elapsed = Some(
            retry
                .and_then(|r| r.max_elapsed)
                .map_or(DEFAULT_MAX_ELAPSED, |d| d.get()),
        );
        budget.deadline = deadline;
        budget.attempt_time = timeout;
        Net {
            client,
            timeout,
            budget,
            dependency,
            reporter: None,
            bucket: None,
        }
    }

    /// Holds requests to `rate` a second (none when `None`).
    pub fn with_rate_limit(mut self, rate: Option<f64>) -> Net {
        self.bucket = rate.map(|r| std::sync::Arc::new(crate::retry::TokenBucket::new(r)));
        self
    }

    /// Logs each retried failure through `reporter`.
    pub fn with_reporter(
        mut self,
        reporter: Option<std::sync::Arc<crate::telemetry::Reporter>>,
    ) -> Net {
        self.reporter = reporter;
        self
    }

    /// The same policy without retries (for best-effort calls such as revoke).
    pub fn single_attempt(&self) -> Net {
        let mut net = self.clone();
        net.budget.attempts = 1;
        net
    }

    /// Sends the request `build` makes, retrying what may get better; each
    /// retried failure is logged at warn and counted.
    /// `url` names the target in messages (never put credentials in it).
    pub async fn send(
        &self,
        url: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Response, Failure> {
        let announce = |retrying: &crate::retry::Retrying<'_>| {
            crate::retry::count(self.dependency);
            if let Some(reporter) = &self.reporter {
                reporter.notice(
                    crate::telemetry::Level::Warn,
                    format!("{} at {url} unreachable: {retrying}", self.dependency),
                );
            }
        };
        crate::retry::run(&self.budget, announce, |_| async {
            if let Some(bucket) = &self.bucket {
                bucket.take().await;
            }
            self.attempt(url, &build).await
        })
        .await
        .map_err(|gave_up| match gave_up {
            crate::retry::GaveUp::Fatal(failure) => failure,
            crate::retry::GaveUp::Exhausted(exhausted) => {
                Failure::Unreachable(format!("{url}: {exhausted}"))
            }
        })
    }

    async fn attempt(
        &self,
        url: &str,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Attempt<Response, Failure> {
        let request = build(&self.client).timeout(self.timeout);
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => {
                return Attempt::retry(format!("no answer within {:?}", self.timeout));
            }
            Ok(Err(err)) if err.is_builder() => {
                return Attempt::Fail(Failure::Unreachable(format!(
                    "{url}: invalid request: {}",
                    chain(&err)
                )));
            }
            Ok(Err(err)) => {
                return Attempt::retry(crate::http::describe_error(&err));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match tokio::time::timeout(self.timeout, response.bytes()).await {
            Ok(Ok(bytes)) => Zeroizing::new(bytes.to_vec()),
            Ok(Err(err)) => {
                return Attempt::retry(format!("reading the answer: {}", chain(&err)));
            }
            Err(_) => {
                return Attempt::retry(format!("answer not read within {:?}", self.timeout));
            }
        };
        if (200..300).contains(&status) {
            return Attempt::Done(Response { status, body });
        }
        let text = error_text(&body);
        if status == 429 || status >= 500 {
            return Attempt::Retry {
                detail: format!("HTTP {status}: {text}"),
                retry_after,
            };
        }
        Attempt::Fail(Failure::Status {
            status,
            message: text,
        })
    }
}

/// A successful (2xx) answer. The body may hold a secret: it is zeroized on drop.
pub struct Response {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
}

/// Why a request did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Connection errors, timeouts, 5xx or 429 until the retry budget ran out.
    Unreachable(String),
    /// A definitive answer (4xx other than 429); not retried.
    Status { status: u16, message: String },
}

/// The start of an error body, as text, for messages.
fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut end = text.len().min(MAX_ERROR_BODY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// An error with its sources, so "error sending request" says why.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_bounded_on_a_char_boundary() {
        let body = "é".repeat(400);
        let text = error_text(body.as_bytes());
        assert!(text.len() <= MAX_ERROR_BODY);
    }
}
