//! The one HTTP client every metadata provider uses. It owns the base URL
//! (injected at construction, so tests point it at loopback), the
//! per-attempt timeout, retries with full jitter, and the detection budget
//! shared by all requests of one gathering. Providers only say which paths
//! and headers they need.
//!
//! Retried: connection errors, timeouts, 5xx and 429. Not retried: other
//! statuses (404 means "not set" for optional paths; 401/403 will not get
//! better by asking again). Never uses a proxy: metadata is link-local.

use std::time::Duration;

use tokio::time::Instant;

use super::FactsError;
use crate::retry::Attempt;

/// Smallest and largest retry delay cap (full jitter draws from 0..cap).
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A metadata HTTP client for one provider and one gathering.
pub struct MetadataClient {
    provider: &'static str,
    base: String,
    http: reqwest::Client,
    attempt_timeout: Duration,
    budget: Duration,
    deadline: Instant,
    reporter: Option<std::sync::Arc<crate::telemetry::Reporter>>,
}

/// A successful answer.
pub struct Response {
    pub provider: &'static str,
    pub url: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> Result<String, FactsError> {
        String::from_utf8(self.body.clone()).map_err(|_| FactsError::Malformed {
            provider: self.provider,
            url: self.url.clone(),
            message: "the body is not UTF-8".into(),
        })
    }
}

impl MetadataClient {
    /// A client for `provider` at `base` (no trailing slash). The budget
    /// starts now.
    pub fn new(
        provider: &'static str,
        base: &str,
        settings: &super::FactsSettings,
    ) -> Result<MetadataClient, FactsError> {
        let (attempt_timeout, budget) = (settings.attempt_timeout, settings.budget);
        let mut http = crate::http::client_builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if crate::http::needs_no_roots(base) {
            http = http.tls_certs_only([]);
        }
        let http = http.build().map_err(|err| FactsError::Unavailable {
            provider,
            message: format!("cannot build the HTTP client: {err}"),
        })?;
        Ok(MetadataClient {
            provider,
            base: base.trim_end_matches('/').to_string(),
            http,
            attempt_timeout,
            budget,
            deadline: Instant::now() + budget,
            reporter: settings.reporter.clone(),
        })
    }

    /// `base` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET a path that must exist.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Response, FactsError> {
        let url = self.url(path);
        match self.send(reqwest::Method::GET, &url, headers).await? {
            Some(response) => Ok(response),
            None => Err(FactsError::Status {
                provider: self.provider,
                url,
                status: 404,
                hint: None,
            }),
        }
    }

    /// GET a path that may be absent (404 → `None`).
    pub async fn get_optional(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<Response>, FactsError> {
        let url = self.url(path);
        self.send(reqwest::Method::GET, &url, headers).await
    }

    /// PUT with an empty body (AWS's IMDSv2 token); 404 → `None`.
    pub async fn put(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<Response>, FactsError> {
        let url = self.url(path);
        self.send(reqwest::Method::PUT, &url, headers).await
    }

    /// Parses a JSON body, naming the URL when it does not fit `T`.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: &Response,
    ) -> Result<T, FactsError> {
        serde_json::from_slice(&response.body).map_err(|err| FactsError::Malformed {
            provider: self.provider,
            url: response.url.clone(),
            message: format!("invalid JSON: {err}"),
        })
    }

    /// One request with retries inside the budget. `Ok(None)` for 404.
    #[tracing::instrument(skip_all, fields(provider = self.provider, url = %url))]
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<Response>, FactsError> {
        let mut budget = crate::retry::Budget::new(u32::MAX, BACKOFF_MIN, BACKOFF_MAX);
        budget.deadline = Some(self.deadline);
        let announce = |retrying: &crate::retry::Retrying<'_>| {
            crate::retry::count("metadata");
            if let Some(reporter) = &self.reporter {
                reporter.notice(
                    crate::telemetry::Level::Warn,
                    format!(
                        "{} metadata at {url} unreachable: {retrying}",
                        self.provider
                    ),
                );
            }
        };
        let sent = crate::retry::run(&budget, announce, |_| {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            self.attempt(
                method.clone(),
                url,
                headers,
                remaining.min(self.attempt_timeout),
            )
        })
        .await;
        sent.map_err(|gave_up| match gave_up {
            crate::retry::GaveUp::Fatal(err) => err,
            crate::retry::GaveUp::Exhausted(exhausted) => FactsError::Unreachable {
                provider: self.provider,
                url: url.to_string(),
                budget: self.budget,
                last: exhausted.last,
            },
        })
    }

    async fn attempt(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        limit: Duration,
    ) -> Attempt<Option<Response>, FactsError> {
        if limit.is_zero() {
            return Attempt::retry("no time left in the budget");
        }
        let mut request = self.http.request(method, url).timeout(limit);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) if err.is_timeout() => {
                return Attempt::retry(format!(
                    "no answer within {}",
                    humantime::format_duration(limit)
                ));
            }
            Err(err) => return Attempt::retry(crate::http::describe_error(&err)),
        };
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Attempt::retry(format!("HTTP {}", status.as_u16()));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Attempt::Done(None);
        }
        if !status.is_success() {
            return Attempt::Fail(FactsError::Status {
                provider: self.provider,
                url: url.to_string(),
                status: status.as_u16(),
                hint: status_hint(status.as_u16()),
            });
        }
        match response.bytes().await {
            Ok(body) => Attempt::Done(Some(Response {
                provider: self.provider,
                url: url.to_string(),
                body: body.to_vec(),
            })),
            Err(err) if err.is_timeout() => Attempt::retry("the body did not arrive in time"),
            Err(err) => Attempt::retry(crate::http::describe_error(&err)),
        }
    }
}

fn status_hint(status: u16) -> Option<&'static str> {
    match status {
        401 => Some("the metadata token was refused or is missing"),
        403 => Some("the metadata service refused the request"),
        400 => Some("the request lacks a header or parameter the service requires"),
        _ => None,
    }
}
