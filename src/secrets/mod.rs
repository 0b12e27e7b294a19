//! Secrets: the in-memory secret type, the redactor, and the backends.
//!
//! A secret value lives in a [`SecretValue`] (zeroized on drop, never shown
//! by Debug or Display). Every fetched value is registered with the
//! [`Redactor`] before anything can print it. Backends sit behind
//! [`SecretBackend`]; to add one, add its raw type in
//! `plan/secret_source.rs`, a module here, and an arm in [`SecretStore::fetch_one`].

pub mod local;
pub mod redact;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;

pub use redact::Redactor;

use crate::error::ErrorCode;
use crate::plan::SecretSource;

/// A secret's bytes, wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretValue(zeroize::Zeroizing<String>);

impl SecretValue {
    pub fn new(value: String) -> SecretValue {
        SecretValue(zeroize::Zeroizing::new(value))
    }

    /// The value itself. Callers must not log it; outputs pass the redactor.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

/// Why a secret could not be had. Messages never contain the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}`: {backend} backend not reachable: {detail}")]
    Unreachable {
        name: String,
        backend: &'static str,
        detail: String,
    },
    #[error("secret `{name}`: {backend} backend rejected the credentials: {detail}")]
    AuthFailed {
        name: String,
        backend: &'static str,
        detail: String,
    },
    #[error("secret `{name}`: {backend} backend denied access: {detail}")]
    Denied {
        name: String,
        backend: &'static str,
        detail: String,
    },
    #[error("secret `{name}`: not found in the {backend} backend: {detail}")]
    NotFound {
        name: String,
        backend: &'static str,
        detail: String,
    },
}

impl SecretError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SecretError::Unreachable { .. } => ErrorCode::SecretUnreachable,
            SecretError::AuthFailed { .. } => ErrorCode::SecretAuthFailed,
            SecretError::Denied { .. } => ErrorCode::SecretDenied,
            SecretError::NotFound { .. } => ErrorCode::SecretNotFound,
        }
    }
}

/// One way of fetching secrets.
pub trait SecretBackend {
    /// The backend's name, as in the plan and in metric labels.
    fn name(&self) -> &'static str;
}

/// Fetches each declared secret at most once per run, on first use, and
/// registers every value with the redactor before handing it out.
pub struct SecretStore {
    sources: BTreeMap<String, SecretSource>,
    /// Relative secret file paths are resolved against this (the plan's directory).
    base_dir: std::path::PathBuf,
    cache: Mutex<BTreeMap<String, SecretValue>>,
    redactor: Arc<Redactor>,
}

impl SecretStore {
    pub fn new(
        sources: impl IntoIterator<Item = (String, SecretSource)>,
        base_dir: std::path::PathBuf,
        redactor: Arc<Redactor>,
    ) -> SecretStore {
        SecretStore {
            sources: sources.into_iter().collect(),
            base_dir,
            cache: Mutex::new(BTreeMap::new()),
            redactor,
        }
    }

    /// The values of `names`, fetching those not fetched yet.
    pub async fn resolve(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, SecretValue>, SecretError> {
        let mut cache = self.cache.lock().await;
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(value) = cache.get(name) {
                out.insert(name.clone(), value.clone());
                continue;
            }
            let value = self.fetch_one(name).await?;
            self.redactor.add_secret(value.expose());
            cache.insert(name.clone(), value.clone());
            out.insert(name.clone(), value);
        }
        Ok(out)
    }

    async fn fetch_one(&self, name: &str) -> Result<SecretValue, SecretError> {
        let Some(source) = self.sources.get(name) else {
            return Err(SecretError::NotFound {
                name: name.to_string(),
                backend: "plan",
                detail: "not declared under `secrets:`".into(),
            });
        };
        if let Some(file) = &source.file {
            return local::fetch_file(name, file, &self.base_dir);
        }
        if let Some(env) = &source.env {
            return local::fetch_env(name, env);
        }
        Err(SecretError::NotFound {
            name: name.to_string(),
            backend: "plan",
            detail: "no backend configured".into(),
        })
    }
}
