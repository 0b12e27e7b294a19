//! The platforms' own signals of the verdict, sent when the run finishes
//! (ready, failed with its error code, deadline): CloudFormation
//! `SignalResource` and EC2 Auto Scaling `CompleteLifecycleAction`
//! (`aws.rs`: SigV4 with the secrets layer's AWS credential chain), the
//! Azure wireserver health report (`azure.rs`) and a GCE guest attribute
//! (`gce.rs`).
//!
//! Each signal is bounded (the report's `timeout` per request, `attempts`
//! tries with jittered backoff) and runs beside the others. A signal that
//! is not delivered never changes the verdict: it is logged as a warning
//! and counted in `bootplan_platform_signals_total{platform,result}`.

mod aws;
mod azure;
mod gce;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::plan::lifecycle::ReportSpec;
use crate::plan::report::PlatformSignal;
use crate::plan::secret_source::AwsConfig;
use crate::redact::Redactor;
use crate::telemetry::status::StatusDoc;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The most of a platform's answer quoted in a message.
const QUOTE: usize = 300;

/// What the signals say.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub ready: bool,
    /// The run's outcome (`ready`, `failed`, `deadline_exceeded`, ...).
    pub outcome: &'static str,
    /// The error code of a run that is not ready.
    pub code: Option<&'static str>,
    /// Its (redacted) message.
    pub message: Option<String>,
    /// The step that failed, if one did.
    pub failed_step: Option<String>,
}

impl Verdict {
    /// The verdict of a finished status document.
    pub fn of(doc: &StatusDoc) -> Verdict {
        Verdict {
            ready: doc.outcome.is_ready(),
            outcome: doc.outcome.as_str(),
            code: doc.error.as_ref().map(|e| e.code.as_str()),
            message: doc.error.as_ref().map(|e| e.message.clone()),
            failed_step: doc.failed_step.clone(),
        }
    }

    /// `code (step NAME): message` of a run that is not ready (the outcome
    /// when there is no error).
    fn reason(&self) -> String {
        let step = self
            .failed_step
            .as_ref()
            .map(|s| format!(" (step {s})"))
            .unwrap_or_default();
        match (&self.code, &self.message) {
            (Some(code), Some(message)) => format!("{code}{step}: {message}"),
            (Some(code), None) => format!("{code}{step}"),
            _ => self.outcome.to_string(),
        }
    }
}

/// Who is signalling: from the facts (when they were gathered) and the run.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub bootstrap_id: String,
}

/// What the signals need besides the plan's `report:`.
#[derive(Clone)]
pub struct Context {
    pub identity: Identity,
    /// `backends.aws`: the IMDS and STS endpoints and timeouts of the
    /// credential chain (the signals' own region and endpoint win).
    pub aws: Option<AwsConfig>,
    pub redactor: Arc<Redactor>,
}

/// Why a signal was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{platform} signal to {url} failed after {attempts} attempt(s): {last}")]
    Undelivered {
        platform: &'static str,
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{platform} signal not sent: {detail}")]
    NotSent {
        platform: &'static str,
        detail: String,
    },
}

/// Sends every signal of `spec` at once and returns how each went (also
/// logged and counted here).
/// Each gives up after `limit` in all.
pub async fn send_all(
    spec: &ReportSpec,
    verdict: &Verdict,
    ctx: &Context,
    limit: Duration,
) -> Vec<(&'static str, Result<String, SignalError>)> {
    let sends = spec.signals.iter().map(|signal| async move {
        let platform = signal.platform();
        let result = tokio::time::timeout(limit, send_one(signal, spec, verdict, ctx))
            .await
            .unwrap_or_else(|_| {
                Err(SignalError::NotSent {
                    platform,
                    detail: format!("gave up after {}", humantime::format_duration(limit)),
                })
            });
        match &result {
            Ok(what) => {
                crate::telemetry::metrics::record_platform_signal(platform, true);
                crate::stdio::errln!("bootplan: {platform} signal sent: {what}");
            }
            Err(err) => {
                crate::telemetry::metrics::record_platform_signal(platform, false);
                crate::stdio::errln!("bootplan: warning: {err} (the verdict stands)");
            }
        }
        (platform, result)
    });
    futures_util::future::join_all(sends).await
}

async fn send_one(
    signal: &PlatformSignal,
    spec: &ReportSpec,
    verdict: &Verdict,
    ctx: &Context,
) -> Result<String, SignalError> {
    let net = Net {
        timeout: spec.timeout,
        budget: crate::retry::Budget::new(spec.attempts, FIRST_BACKOFF, MAX_BACKOFF),
    };
    match signal {
        PlatformSignal::CloudFormation { .. } | PlatformSignal::AutoScaling { .. } => {
            aws::send(signal, verdict, ctx, &net).await
        }
        PlatformSignal::Azure { endpoint } => azure::send(endpoint, verdict, &net).await,
        PlatformSignal::GceGuestAttribute {
            namespace,
            key,
            endpoint,
        } => gce::send(endpoint, namespace, key, verdict, &net).await,
    }
}

/// Per-request limit and retry budget of one signal.
struct Net {
    timeout: Duration,
    budget: crate::retry::Budget,
}

impl Net {
    /// Sends the request `build` makes (afresh for each attempt) until it
    /// succeeds, fails for good (a 4xx other than 408/429, or what
    /// `retryable` says of its body), or the budget runs out. Returns the
    /// answer's body.
    async fn send<F, Fut>(
        &self,
        platform: &'static str,
        url: &str,
        retryable: fn(u16, &str) -> bool,
        mut build: F,
    ) -> Result<String, SignalError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<reqwest::RequestBuilder, SignalError>>,
    {
        let announce = |retrying: &crate::retry::Retrying<'_>| {
            crate::retry::count("report");
            crate::stdio::errln!("bootplan: {platform} signal to {url} failed: {retrying}");
        };
        let timeout = self.timeout;
        let sent = crate::retry::run(&self.budget, announce, |attempt| {
            let request = build();
            async move {
                let request = match request.await {
                    Ok(request) => request,
                    Err(err) => return crate::retry::Attempt::Fail(Err(err)),
                };
                let response = match request.timeout(timeout).send().await {
                    Ok(response) => response,
                    Err(e) => return crate::retry::Attempt::retry(crate::http::describe_error(&e)),
                };
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() {
                    return crate::retry::Attempt::Done(body);
                }
                let detail = format!("HTTP {}: {}", status.as_u16(), quote(&body));
                let code = status.as_u16();
                if status.is_client_error() && !matches!(code, 408 | 429) && !retryable(code, &body)
                {
                    crate::retry::Attempt::Fail(Ok((attempt, detail)))
                } else {
                    crate::retry::Attempt::retry(detail)
                }
            }
        })
        .await;
        sent.map_err(|gave_up| {
            let (attempts, last) = match gave_up {
                crate::retry::GaveUp::Fatal(Err(err)) => return err,
                crate::retry::GaveUp::Fatal(Ok(failed)) => failed,
                crate::retry::GaveUp::Exhausted(e) => (e.attempts, e.last),
            };
            SignalError::Undelivered {
                platform,
                url: url.to_string(),
                attempts,
                last,
            }
        })
    }
}

/// A platform's answer, on one line and short.
fn quote(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return "(no body)".into();
    }
    match line.char_indices().nth(QUOTE) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// `text` with the five XML specials escaped.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The text of the first element named `name` in `xml` (`None` when it is
/// not XML or has no such element).
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_quoted_on_one_short_line() {
        assert_eq!(quote("<a>\n  x </a>\n"), "<a> x </a>");
        assert_eq!(quote(""), "(no body)");
        assert_eq!(quote(&"y".repeat(400)).chars().count(), QUOTE + 1);
    }

    #[test]
    fn xml_text_is_escaped_and_read_back() {
        let escaped = xml_escape("a<b & \"c\"\u{1}");
        assert_eq!(escaped, "a&lt;b &amp; &quot;c&quot; ");
        let doc = format!("<R><Inner><Code>{escaped}</Code></Inner></R>");
        assert_eq!(xml_text(&doc, "Code").as_deref(), Some("a<b & \"c\""));
        assert_eq!(xml_text("not xml", "Code"), None);
    }
}
