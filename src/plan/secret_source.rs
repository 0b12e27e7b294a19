//! Raw types for the `secrets:` and `backends:` sections of a plan.
//!
//! A secret names exactly one backend key; the backend modules under
//! `crate::secrets` know how to fetch each kind. To add a backend: add an
//! optional field here, a module under `src/secrets/`, and a dispatch arm there.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where one secret comes from: exactly one backend key.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Read the secret from a file (e.g. a mounted Kubernetes secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSecret>,
    /// Read the secret from an environment variable of bootplan's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvSecret>,
}

impl SecretSource {
    /// The backend keys present, for the "exactly one backend" check.
    pub fn backend_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.file.is_some() {
            names.push("file");
        }
        if self.env.is_some() {
            names.push("env");
        }
        names
    }
}

/// `file:` secret backend.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSecret {
    /// Path of the file holding the secret (trailing newline trimmed).
    pub path: String,
    /// When the file holds a JSON object, the key to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `env:` secret backend.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvSecret {
    /// Name of the environment variable.
    pub name: String,
    /// When the variable holds a JSON object, the key to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Settings shared by the secrets of one backend (addresses, auth, CAs).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {}
