//! IMDSv2: the EC2 instance metadata service, token protocol only.
//!
//! A session token is obtained with `PUT /latest/api/token` and the
//! `X-aws-ec2-metadata-token-ttl-seconds` header, cached, and fetched again
//! a minute before it expires (or when the service answers 401). Every read
//! carries it in `X-aws-ec2-metadata-token`. `AWS_EC2_METADATA_DISABLED=true`
//! turns it off, as in the AWS SDKs. The client never uses a proxy:
//! metadata is link-local.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use std::sync::Arc;

use super::super::http::{Failure, Net};
use super::super::{Redactor, SecretValue};

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Session token lifetime asked for (the service's maximum is 6 hours).
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
/// A token this close to its expiry is replaced before use.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

pub struct Imds {
    net: Net,
    base: String,
    token: Mutex<Option<(SecretValue, Instant)>>,
    redactor: Arc<Redactor>,
}

impl Imds {
    pub fn new(net: Net, base: &str, redactor: Arc<Redactor>) -> Imds {
        Imds {
            net,
            base: base.trim_end_matches('/').to_string(),
            token: Mutex::new(None),
            redactor,
        }
    }

    /// Reads a metadata path (e.g. `meta-data/placement/region`) as text.
    #[tracing::instrument(skip_all, fields(backend = "imds", path = %path))]
    pub async fn get(&self, path: &str) -> Result<zeroize::Zeroizing<String>, Failure> {
        let url = format!("{}/latest/{}", self.base, path.trim_start_matches('/'));
        if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err(Failure::Unreachable(format!(
                "{url}: instance metadata is disabled (AWS_EC2_METADATA_DISABLED=true)"
            )));
        }
        for refreshed in [false, true] {
            let token = self.token(refreshed).await?;
            let result = self
                .net
                .send(&url, |c| {
                    let mut value = reqwest::header::HeaderValue::from_str(token.expose())
                        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("invalid"));
                    value.set_sensitive(true);
                    c.get(&url).header("X-aws-ec2-metadata-token", value)
                })
                .await;
            match result {
                Ok(response) => {
                    let text = String::from_utf8(response.body.to_vec()).map_err(|_| {
                        Failure::Unreachable(format!("{url}: the answer is not UTF-8"))
                    })?;
                    return Ok(zeroize::Zeroizing::new(text));
                }
                // The token expired or the service restarted: get a new one, once.
                Err(Failure::Status { status: 401, .. }) if !refreshed => continue,
                Err(failure) => return Err(failure),
            }
        }
        Err(Failure::Unreachable(format!(
            "{url}: the metadata service rejects fresh tokens"
        )))
    }

    async fn token(&self, force: bool) -> Result<SecretValue, Failure> {
        let mut slot = self.token.lock().await;
        if let Some((token, expires)) = slot.as_ref()
            && !force
            && Instant::now() + TOKEN_MARGIN < *expires
        {
            return Ok(token.clone());
        }
        let url = format!("{}/latest/api/token", self.base);
        let ttl = TOKEN_TTL.as_secs().to_string();
        let response = self
            .net
            .send(&url, |c| {
                c.put(&url)
                    .header("X-aws-ec2-metadata-token-ttl-seconds", ttl.as_str())
            })
            .await?;
        let token = String::from_utf8(response.body.to_vec())
            .map_err(|_| Failure::Unreachable(format!("{url}: the token is not UTF-8")))?;
        let token = SecretValue::new(token.trim().to_string());
        self.redactor.add_secret(token.expose());
        *slot = Some((token.clone(), Instant::now() + TOKEN_TTL));
        Ok(token)
    }
}
