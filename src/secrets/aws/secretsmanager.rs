//! AWS Secrets Manager `GetSecretValue`: a string secret (optionally a key of
//! its JSON object) or a binary one that holds UTF-8 text; and
//! `DescribeSecret`, which tells a refresh which version the stage points
//! at, so an unchanged secret is not read again.

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{AwsClient, Service};
use crate::plan::secret_source::AwsSecretsManagerSecret;
use crate::secrets::{SecretError, SecretValue, local};

const BACKEND: &str = "aws_secretsmanager";

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Request<'a> {
    secret_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    #[serde(default)]
    secret_string: Option<String>,
    #[serde(default)]
    secret_binary: Option<String>,
    #[serde(default)]
    version_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Describe<'a> {
    secret_id: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Described {
    #[serde(default)]
    version_ids_to_stages: std::collections::HashMap<String, Vec<String>>,
}

/// The stage a secret is read at (`AWSCURRENT` unless the plan says),
/// `None` for a pinned `version_id`.
fn stage(spec: &AwsSecretsManagerSecret) -> Option<&str> {
    match (&spec.version_stage, &spec.version_id) {
        (Some(stage), _) => Some(stage.as_str()),
        (None, Some(_)) => None,
        (None, None) => Some("AWSCURRENT"),
    }
}

/// The version id the secret's stage points at now (`DescribeSecret`,
/// which returns no value). `None` for a pinned version.
#[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name, id = %spec.id))]
pub async fn current_version(
    client: &AwsClient,
    name: &str,
    spec: &AwsSecretsManagerSecret,
) -> Result<Option<String>, SecretError> {
    let Some(stage) = stage(spec) else {
        return Ok(None);
    };
    let body = serde_json::to_vec(&Describe {
        secret_id: &spec.id,
    })
    .unwrap_or_default();
    let response = client
        .call(name, Service::SecretsManager, "DescribeSecret", &body)
        .await?;
    let described: Described =
        serde_json::from_slice(&response.body).map_err(|err| SecretError::NotFound {
            name: name.into(),
            backend: BACKEND,
            detail: format!("unexpected DescribeSecret answer: {err}"),
        })?;
    Ok(described
        .version_ids_to_stages
        .into_iter()
        .find(|(_, stages)| stages.iter().any(|s| s == stage))
        .map(|(id, _)| id))
}

#[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name, id = %spec.id))]
pub async fn fetch(
    client: &AwsClient,
    name: &str,
    spec: &AwsSecretsManagerSecret,
) -> Result<(SecretValue, Option<String>), SecretError> {
    let stage = stage(spec);
    let body = serde_json::to_vec(&Request {
        secret_id: &spec.id,
        version_stage: stage,
        version_id: spec.version_id.as_deref(),
    })
    .unwrap_or_default();
    let response = client
        .call(name, Service::SecretsManager, "GetSecretValue", &body)
        .await?;
    let answer: Answer =
        serde_json::from_slice(&response.body).map_err(|err| SecretError::NotFound {
            name: name.into(),
            backend: BACKEND,
            detail: format!("unexpected GetSecretValue answer: {err}"),
        })?;
    let version = answer.version_id;
    let text = match (answer.secret_string, answer.secret_binary) {
        (Some(text), _) => Zeroizing::new(text),
        (None, Some(b64)) => {
            let b64 = Zeroizing::new(b64);
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .unwrap_or_default(),
            );
            Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|_| {
                SecretError::NotFound {
                    name: name.into(),
                    backend: BACKEND,
                    detail: format!("secret {} is binary, not UTF-8 text", spec.id),
                }
            })?)
        }
        (None, None) => {
            return Err(SecretError::NotFound {
                name: name.into(),
                backend: BACKEND,
                detail: format!("secret {} has no value", spec.id),
            });
        }
    };
    let value = local::select_key(name, BACKEND, &text, spec.key.as_deref())?;
    Ok((value, version))
}
