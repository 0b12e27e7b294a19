//! Why facts could not be gathered. Every variant names the provider and the
//! URL or path involved; none ever carries user data.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// Nothing answered (connection refused, timeouts, 5xx) before the budget ran out.
    #[error("{provider}: {url} did not answer within the {} detection budget (last: {last})", humantime::format_duration(*budget))]
    Unreachable {
        provider: &'static str,
        url: String,
        budget: Duration,
        last: String,
    },
    /// The service answered with a status that retrying will not fix.
    #[error("{provider}: {url} answered HTTP {status}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Status {
        provider: &'static str,
        url: String,
        status: u16,
        hint: Option<&'static str>,
    },
    /// The service answered, but not in the documented shape.
    #[error("{provider}: unexpected response from {url}: {message}")]
    Malformed {
        provider: &'static str,
        url: String,
        message: String,
    },
    #[error("{provider}: cannot read {path}: {source}")]
    Read {
        provider: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The provider's data source is absent (no seed, config drive not mounted, ...).
    #[error("{provider}: {message}")]
    Unavailable {
        provider: &'static str,
        message: String,
    },
    /// `provider: auto` found no evidence and the plan says `fallback: fail`.
    #[error(
        "no cloud provider detected (looked at {looked_at}) and the plan says `fallback: fail`"
    )]
    NotDetected { looked_at: String },
}

impl FactsError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FactsError::Malformed { .. } => ErrorCode::FactsMalformed,
            FactsError::Unreachable { .. }
            | FactsError::Status { .. }
            | FactsError::Read { .. }
            | FactsError::Unavailable { .. }
            | FactsError::NotDetected { .. } => ErrorCode::FactsUnreachable,
        }
    }
}
