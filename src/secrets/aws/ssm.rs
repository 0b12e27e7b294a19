//! AWS SSM Parameter Store: `GetParameter` for one parameter and
//! `GetParameters` for several at once, always `WithDecryption`.

use serde::{Deserialize, Serialize};

use super::{AwsClient, Service};
use crate::plan::secret_source::AwsSsmSecret;
use crate::secrets::{SecretError, SecretValue, local};

const BACKEND: &str = "aws_ssm";
/// `GetParameters` takes at most this many names per call.
pub const BATCH: usize = 10;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct One<'a> {
    name: &'a str,
    with_decryption: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Many<'a> {
    names: Vec<&'a str>,
    with_decryption: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OneAnswer {
    parameter: Parameter,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManyAnswer {
    #[serde(default)]
    parameters: Vec<Parameter>,
    #[serde(default)]
    invalid_parameters: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Parameter {
    name: String,
    value: String,
}

impl Drop for Parameter {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

fn unexpected(name: &str, err: serde_json::Error) -> SecretError {
    SecretError::NotFound {
        name: name.into(),
        backend: BACKEND,
        detail: format!("unexpected SSM answer: {err}"),
    }
}

/// One parameter.
#[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name, parameter = %spec.name))]
pub async fn fetch(
    client: &AwsClient,
    name: &str,
    spec: &AwsSsmSecret,
) -> Result<SecretValue, SecretError> {
    let body = serde_json::to_vec(&One {
        name: &spec.name,
        with_decryption: true,
    })
    .unwrap_or_default();
    let response = client
        .call(name, Service::Ssm, "GetParameter", &body)
        .await?;
    let answer: OneAnswer =
        serde_json::from_slice(&response.body).map_err(|err| unexpected(name, err))?;
    let mut answer = answer;
    let value = zeroize::Zeroizing::new(std::mem::take(&mut answer.parameter.value));
    local::select_key(name, BACKEND, &value, spec.key.as_deref())
}

/// Several parameters in one call (at most [`BATCH`]); `wanted` pairs each
/// secret name with its spec. Returns the values in the same order.
#[tracing::instrument(skip_all, fields(backend = BACKEND, count = wanted.len()))]
pub async fn fetch_many(
    client: &AwsClient,
    wanted: &[(&str, &AwsSsmSecret)],
) -> Result<Vec<SecretValue>, SecretError> {
    let Some((first, _)) = wanted.first() else {
        return Ok(Vec::new());
    };
    let body = serde_json::to_vec(&Many {
        names: wanted.iter().map(|(_, s)| s.name.as_str()).collect(),
        with_decryption: true,
    })
    .unwrap_or_default();
    let response = client
        .call(first, Service::Ssm, "GetParameters", &body)
        .await?;
    let answer: ManyAnswer =
        serde_json::from_slice(&response.body).map_err(|err| unexpected(first, err))?;
    let mut params = answer.parameters;
    let mut out = Vec::with_capacity(wanted.len());
    for (name, spec) in wanted {
        let Some(index) = params.iter().position(|p| p.name == spec.name) else {
            let invalid = answer.invalid_parameters.contains(&spec.name);
            return Err(SecretError::NotFound {
                name: (*name).into(),
                backend: BACKEND,
                detail: format!(
                    "parameter {} {}",
                    spec.name,
                    if invalid {
                        "does not exist"
                    } else {
                        "was not returned"
                    }
                ),
            });
        };
        let value = zeroize::Zeroizing::new(std::mem::take(&mut params.swap_remove(index).value));
        out.push(local::select_key(
            name,
            BACKEND,
            &value,
            spec.key.as_deref(),
        )?);
    }
    Ok(out)
}
