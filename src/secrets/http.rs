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

use crate::plan::secret_source::NetRetry;
use crate::plan::validate::parse_backoff;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: u32 = 6;
const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(200);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(60);
/// Error bodies are only kept this long, for messages.
const MAX_ERROR_BODY: usize = 300;

/// A reqwest client for one backend. `ca_file` adds a private CA to the
/// platform roots; `no_proxy` is for link-local services (IMDS).
pub fn client(
    ca_file: Option<&Path>,
    ca_only: bool,
    no_proxy: bool,
) -> Result<reqwest::Client, String> {
    let mut builder = crate::http::client_builder();
    if no_proxy {
        builder = builder.no_proxy();
    }
    crate::http::with_ca_file(builder, ca_file, ca_only)?
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {err}"))
}

/// Timeouts and retry budget for one backend.
#[derive(Debug, Clone)]
pub struct Net {
    pub client: reqwest::Client,
    pub timeout: Duration,
    pub attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_elapsed: Duration,
    /// The run's deadline: no attempt starts that could not finish before it.
    pub deadline: Option<Instant>,
}

impl Net {
    pub fn new(
        client: reqwest::Client,
        timeout: Option<Duration>,
        retry: Option<&NetRetry>,
        deadline: Option<Instant>,
    ) -> Net {
        let (min_backoff, max_backoff) = retry
            .and_then(|r| r.backoff.as_deref())
            .and_then(|b| parse_backoff(b).ok())
            .unwrap_or((DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF));
        Net {
            client,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            attempts: retry
                .and_then(|r| r.attempts)
                .unwrap_or(DEFAULT_ATTEMPTS)
                .max(1),
            min_backoff,
            max_backoff,
            max_elapsed: retry
                .and_then(|r| r.max_elapsed)
                .map_or(DEFAULT_MAX_ELAPSED, |d| d.get()),
            deadline,
        }
    }

    /// The same policy without retries (for best-effort calls such as revoke).
    pub fn single_attempt(&self) -> Net {
        Net {
            attempts: 1,
            ..self.clone()
        }
    }

    /// Sends the request `build` makes, retrying what may get better.
    /// `url` names the target in messages (never put credentials in it).
    pub async fn send(
        &self,
        url: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Response, Failure> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = self.attempt(url, &build).await;
            let (detail, retry_after) = match outcome {
                Attempt::Done(response) => return Ok(response),
                Attempt::Fatal(failure) => return Err(failure),
                Attempt::Retryable {
                    detail,
                    retry_after,
                } => (detail, retry_after),
            };
            let delay = self
                .jitter(attempt)
                .max(retry_after.unwrap_or(Duration::ZERO));
            let next_start = Instant::now() + delay;
            let out_of_budget = attempt >= self.attempts
                || next_start.duration_since(started) > self.max_elapsed
                || self.deadline.is_some_and(|d| next_start + self.timeout > d);
            if out_of_budget {
                return Err(Failure::Unreachable(format!(
                    "{url}: {detail} (gave up after {attempt} attempt(s) in {:.1}s)",
                    started.elapsed().as_secs_f64()
                )));
            }
            tracing::debug!(
                url,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "retrying secret store request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        url: &str,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Attempt {
        let request = build(&self.client).timeout(self.timeout);
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => {
                return Attempt::Retryable {
                    detail: format!("no answer within {:?}", self.timeout),
                    retry_after: None,
                };
            }
            Ok(Err(err)) if err.is_builder() => {
                return Attempt::Fatal(Failure::Unreachable(format!(
                    "{url}: invalid request: {}",
                    chain(&err)
                )));
            }
            Ok(Err(err)) => {
                return Attempt::Retryable {
                    detail: crate::http::describe_error(&err),
                    retry_after: None,
                };
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
                return Attempt::Retryable {
                    detail: format!("reading the answer: {}", chain(&err)),
                    retry_after: None,
                };
            }
            Err(_) => {
                return Attempt::Retryable {
                    detail: format!("answer not read within {:?}", self.timeout),
                    retry_after: None,
                };
            }
        };
        if (200..300).contains(&status) {
            return Attempt::Done(Response { status, body });
        }
        let text = error_text(&body);
        if status == 429 || status >= 500 {
            return Attempt::Retryable {
                detail: format!("HTTP {status}: {text}"),
                retry_after,
            };
        }
        Attempt::Fatal(Failure::Status {
            status,
            message: text,
        })
    }

    /// Full jitter: uniform in `0..=min(max, min·2^(attempt-1))`.
    fn jitter(&self, attempt: u32) -> Duration {
        crate::retry::backoff(self.min_backoff, self.max_backoff, attempt)
    }
}

enum Attempt {
    Done(Response),
    Fatal(Failure),
    Retryable {
        detail: String,
        retry_after: Option<Duration>,
    },
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
    fn jitter_stays_under_the_cap() {
        let net = Net::new(client(None, false, false).unwrap(), None, None, None);
        for attempt in 1..40 {
            assert!(net.jitter(attempt) <= DEFAULT_MAX_BACKOFF);
        }
        assert!(net.jitter(1) <= DEFAULT_MIN_BACKOFF);
    }

    #[test]
    fn error_text_is_bounded_on_a_char_boundary() {
        let body = "é".repeat(400);
        let text = error_text(body.as_bytes());
        assert!(text.len() <= MAX_ERROR_BODY);
    }
}
