//! The `file` and `env` backends: secrets already on the machine (mounted
//! Kubernetes secrets, systemd credentials, CI variables).

use super::{SecretError, SecretValue};
use crate::plan::secret_source::{EnvSecret, FileSecret};

/// Largest secret file read: a key or a certificate chain is a few KiB; a
/// path that leads to a device or a huge file is a mistake.
const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// Reads a `file` secret: a regular file, bounded in size, its trailing
/// newline trimmed.
pub fn fetch_file(
    name: &str,
    spec: &FileSecret,
    base_dir: &std::path::Path,
) -> Result<SecretValue, SecretError> {
    let path = base_dir.join(&spec.path);
    let bytes = crate::plan::bounded::read_bounded(&path, MAX_SECRET_FILE).map_err(|err| {
        let err = match err {
            crate::plan::bounded::Bounded::Io(err) => err,
            crate::plan::bounded::Bounded::Problem(message, _) => {
                std::io::Error::new(std::io::ErrorKind::InvalidData, message)
            }
        };
        let detail = format!("cannot read {}: {err}", path.display());
        match err.kind() {
            std::io::ErrorKind::NotFound => SecretError::NotFound {
                name: name.into(),
                backend: "file",
                detail,
            },
            std::io::ErrorKind::PermissionDenied => SecretError::Denied {
                name: name.into(),
                backend: "file",
                detail,
            },
            _ => SecretError::Unreachable {
                name: name.into(),
                backend: "file",
                detail,
            },
        }
    })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotFound {
        name: name.into(),
        backend: "file",
        detail: format!("{} is not UTF-8 text", path.display()),
    })?;
    let text = zeroize::Zeroizing::new(text);
    select_key(
        name,
        "file",
        text.trim_end_matches(['\n', '\r']),
        spec.key.as_deref(),
    )
}

pub fn fetch_env(name: &str, spec: &EnvSecret) -> Result<SecretValue, SecretError> {
    let value = std::env::var(&spec.name).map_err(|_| SecretError::NotFound {
        name: name.into(),
        backend: "env",
        detail: format!("environment variable {} is not set", spec.name),
    })?;
    let value = zeroize::Zeroizing::new(value);
    select_key(name, "env", &value, spec.key.as_deref())
}

/// Takes `key` from a JSON object, or the whole text when no key is given.
pub fn select_key(
    name: &str,
    backend: &'static str,
    text: &str,
    key: Option<&str>,
) -> Result<SecretValue, SecretError> {
    let Some(key) = key else {
        return Ok(SecretValue::new(text.to_string()));
    };
    // Parse into a map of raw JSON fragments so values never pass through an
    // intermediate `serde_json::Value` tree that would outlive this call.
    let object: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|_| SecretError::NotFound {
            name: name.into(),
            backend,
            detail: format!("key `{key}` requested but the value is not a JSON object"),
        })?;
    let raw = object.get(key).ok_or_else(|| SecretError::NotFound {
        name: name.into(),
        backend,
        detail: format!("the JSON object has no key `{key}`"),
    })?;
    let value = match serde_json::from_str::<String>(raw.get()) {
        Ok(s) => s,
        Err(_) => raw.get().to_string(),
    };
    Ok(SecretValue::new(value))
}
