//! Credential sources of containers and Kubernetes, between the environment
//! and the instance role in the chain (the AWS SDKs' order):
//!
//! - **web identity** (EKS IRSA and pod identity webhooks, any OIDC
//!   provider): `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (and
//!   `AWS_ROLE_SESSION_NAME`), exchanged with STS
//!   `AssumeRoleWithWebIdentity`, an unsigned call;
//! - **the container endpoint** (ECS tasks, EKS Pod Identity):
//!   `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` below `169.254.170.2`, or
//!   `AWS_CONTAINER_CREDENTIALS_FULL_URI` (https, or http to loopback or
//!   the ECS/EKS agent addresses only), with the authorization token from
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `…_TOKEN`.
//!
//! Tokens read here are registered with the redactor by the caller.

use std::path::PathBuf;
use std::time::SystemTime;

use aws_credential_types::Credentials;

use super::super::SecretValue;
use super::super::http::{Failure, Net};

/// Largest web identity or authorization token file read.
const MAX_TOKEN_FILE: u64 = 64 * 1024;
const ECS_AGENT: &str = "http://169.254.170.2";
/// Hosts a plain-http full URI may name: the machine itself, the ECS agent
/// and the EKS Pod Identity agent.
const AGENT_HOSTS: [&str; 2] = ["169.254.170.2", "169.254.170.23"];

/// Credentials and when they end.
pub struct Obtained {
    pub credentials: Credentials,
    pub expires: Option<SystemTime>,
    /// The tokens read to obtain them, for the redactor.
    pub tokens: Vec<SecretValue>,
}

/// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, when both are set.
pub struct WebIdentity {
    token_file: PathBuf,
    role_arn: String,
    session_name: String,
}

impl WebIdentity {
    pub fn from_env() -> Option<WebIdentity> {
        let token_file = non_empty_env("AWS_WEB_IDENTITY_TOKEN_FILE")?;
        let role_arn = non_empty_env("AWS_ROLE_ARN")?;
        let session_name = non_empty_env("AWS_ROLE_SESSION_NAME")
            .unwrap_or_else(|| format!("bootplan-{}", std::process::id()));
        Some(WebIdentity {
            token_file: PathBuf::from(token_file),
            role_arn,
            session_name,
        })
    }

    /// Exchanges the token with STS at `endpoint`.
    pub async fn obtain(&self, net: &Net, endpoint: &str) -> Result<Obtained, Failure> {
        let token = read_token(&self.token_file)?;
        let body = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", &self.role_arn),
            ("RoleSessionName", &self.session_name),
            ("WebIdentityToken", token.expose()),
        ]);
        let body = SecretValue::new(body);
        let response = net
            .send(endpoint, |c| {
                c.post(endpoint)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .header("Accept", "application/xml")
                    .body(body.expose().to_string())
            })
            .await?;
        let text = String::from_utf8_lossy(&response.body);
        let found = assumed_credentials(&text).map_err(|why| {
            Failure::Unreachable(format!("{endpoint}: AssumeRoleWithWebIdentity: {why}"))
        })?;
        Ok(Obtained {
            tokens: vec![token],
            ..found
        })
    }
}

/// The container credentials endpoint, when the environment names one.
pub struct Container {
    url: String,
    auth: Option<SecretValue>,
}

impl Container {
    /// `Ok(None)` when no endpoint is set; an error for one that may not be used.
    pub fn from_env() -> Result<Option<Container>, Failure> {
        let url = match (
            non_empty_env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            non_empty_env("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ) {
            (Some(relative), _) => format!("{ECS_AGENT}{relative}"),
            (None, Some(full)) => {
                allowed_full_uri(&full)?;
                full
            }
            (None, None) => return Ok(None),
        };
        let auth = match non_empty_env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            Some(file) => Some(read_token(&PathBuf::from(file))?),
            None => non_empty_env("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(SecretValue::new),
        };
        Ok(Some(Container { url, auth }))
    }

    pub async fn obtain(&self, net: &Net) -> Result<Obtained, Failure> {
        let response = net
            .send(&self.url, |c| {
                let request = c.get(&self.url);
                match &self.auth {
                    Some(token) => request.header("Authorization", token.expose()),
                    None => request,
                }
            })
            .await?;
        let parsed: super::ImdsCredentials =
            serde_json::from_slice(&response.body).map_err(|err| {
                Failure::Unreachable(format!(
                    "{}: container credentials are not the expected JSON: {err}",
                    self.url
                ))
            })?;
        let expires = parsed
            .expiration
            .as_deref()
            .and_then(|e| humantime::parse_rfc3339_weak(e).ok());
        Ok(Obtained {
            credentials: Credentials::new(
                parsed.access_key_id,
                parsed.secret_access_key,
                parsed.token,
                expires,
                "container",
            ),
            expires,
            tokens: self.auth.iter().cloned().collect(),
        })
    }
}

/// A full URI is https, or http to this machine or an agent address: the
/// authorization token must never travel to anyone else in the clear.
fn allowed_full_uri(full: &str) -> Result<(), Failure> {
    let url = reqwest::Url::parse(full).map_err(|err| {
        Failure::Unreachable(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI `{full}` is not a URL: {err}"
        ))
    })?;
    let host = url.host_str().unwrap_or("");
    let local = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || AGENT_HOSTS.contains(&host);
    if url.scheme() == "https" || (url.scheme() == "http" && local) {
        return Ok(());
    }
    Err(Failure::Unreachable(format!(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI `{full}` must be https, or http to loopback or the ECS/EKS agent"
    )))
}

fn read_token(path: &std::path::Path) -> Result<SecretValue, Failure> {
    let bytes = crate::plan::bounded::read_bounded(path, MAX_TOKEN_FILE).map_err(|err| {
        Failure::Unreachable(format!(
            "cannot read the token file {}: {err}",
            path.display()
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Failure::Unreachable(format!("the token file {} is not UTF-8", path.display()))
    })?;
    Ok(SecretValue::new(text.trim().to_string()))
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("a constant URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or("").to_string()
}

/// The credentials in an `AssumeRoleWithWebIdentityResponse`.
fn assumed_credentials(xml: &str) -> Result<Obtained, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|err| format!("not XML: {err}"))?;
    let field = |name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .map(str::trim)
            .map(String::from)
    };
    if let Some(message) = field("Message") {
        return Err(format!("STS refused: {message}"));
    }
    let missing = |name: &str| format!("the answer has no {name}");
    let key = field("AccessKeyId").ok_or_else(|| missing("AccessKeyId"))?;
    let secret = field("SecretAccessKey").ok_or_else(|| missing("SecretAccessKey"))?;
    let token = field("SessionToken");
    let expires = field("Expiration").and_then(|e| humantime::parse_rfc3339_weak(&e).ok());
    Ok(Obtained {
        credentials: Credentials::new(key, secret, token, expires, "web identity"),
        expires,
        tokens: Vec::new(),
    })
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sts_answer_gives_its_credentials() {
        let xml = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult><Credentials>
    <AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>secret-key-example</SecretAccessKey>
    <SessionToken>session-token-example</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>
  </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        let found = assumed_credentials(xml).unwrap();
        assert_eq!(found.credentials.access_key_id(), "ASIAEXAMPLE");
        assert_eq!(
            found.credentials.session_token(),
            Some("session-token-example")
        );
        assert!(found.expires.is_some());
        let refused = r#"<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized</Message></Error></ErrorResponse>"#;
        let Err(why) = assumed_credentials(refused) else {
            panic!("an STS error was taken for credentials")
        };
        assert!(why.contains("Not authorized"), "{why}");
    }

    #[test]
    fn a_full_uri_in_the_clear_may_only_name_this_machine_or_an_agent() {
        for ok in [
            "http://127.0.0.1:8080/creds",
            "http://[::1]/creds",
            "http://169.254.170.23/v1/credentials",
            "https://creds.internal/x",
        ] {
            assert!(allowed_full_uri(ok).is_ok(), "{ok}");
        }
        for bad in ["http://creds.internal/x", "ftp://127.0.0.1/", "not a url"] {
            assert!(allowed_full_uri(bad).is_err(), "{bad}");
        }
    }
}
