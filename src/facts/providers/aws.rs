//! AWS EC2 instance metadata (IMDSv2).
//!
//! A session token is PUT first (`/latest/api/token` with a TTL header) and
//! sent on every GET; instances that require IMDSv2 answer 401 without it.
//! Identity comes from the instance identity document; hostname, public
//! address, tags (when "tags in metadata" is on) and user data from their
//! meta-data paths, each optional (404 = not set).

use std::collections::BTreeMap;

use serde::Deserialize;
use tokio::sync::OnceCell;

use super::{MetadataProvider, non_empty};
use crate::facts::http::MetadataClient;
use crate::facts::{CloudFacts, FactsError, UserData};

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// Six hours, the maximum; one gathering needs seconds, but a short TTL buys nothing.
const TOKEN_TTL_SECONDS: &str = "21600";
const IDENTITY_PATH: &str = "/latest/dynamic/instance-identity/document";
const TAGS_PATH: &str = "/latest/meta-data/tags/instance";

pub struct Aws {
    client: MetadataClient,
    /// `None` inside: the service has no token endpoint (IMDSv1 only).
    token: OnceCell<Option<String>>,
}

/// The fields of the identity document bootplan uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    account_id: Option<String>,
    availability_zone: Option<String>,
    image_id: Option<String>,
    instance_id: String,
    instance_type: Option<String>,
    private_ip: Option<String>,
    region: Option<String>,
}

impl Aws {
    pub fn new(client: MetadataClient) -> Aws {
        Aws {
            client,
            token: OnceCell::new(),
        }
    }

    async fn token(&self) -> Result<Option<String>, FactsError> {
        self.token
            .get_or_try_init(|| async {
                let answer = self
                    .client
                    .put(TOKEN_PATH, &[(TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS)])
                    .await?;
                match answer {
                    Some(response) => {
                        let token = response.text()?.trim().to_string();
                        if token.is_empty() {
                            return Err(FactsError::Malformed {
                                provider: "aws",
                                url: response.url,
                                message: "empty IMDSv2 token".into(),
                            });
                        }
                        Ok(Some(token))
                    }
                    None => Ok(None),
                }
            })
            .await
            .cloned()
    }

    async fn get_optional(&self, path: &str) -> Result<Option<Vec<u8>>, FactsError> {
        let token = self.token().await?;
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| vec![(TOKEN_HEADER, t)])
            .unwrap_or_default();
        Ok(self
            .client
            .get_optional(path, &headers)
            .await?
            .map(|r| r.body))
    }

    async fn get_text(&self, path: &str) -> Result<Option<String>, FactsError> {
        Ok(self
            .get_optional(path)
            .await?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty()))
    }
}

impl MetadataProvider for Aws {
    async fn identity(&self) -> Result<CloudFacts, FactsError> {
        let token = self.token().await?;
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| vec![(TOKEN_HEADER, t)])
            .unwrap_or_default();
        let (doc, hostname, public_ipv4) = tokio::join!(
            self.client.get(IDENTITY_PATH, &headers),
            self.get_text("/latest/meta-data/local-hostname"),
            self.get_text("/latest/meta-data/public-ipv4"),
        );
        let doc = doc?;
        let identity: IdentityDocument = self.client.json(&doc)?;
        Ok(CloudFacts {
            instance_id: Some(identity.instance_id),
            region: identity.region,
            zone: identity.availability_zone,
            instance_type: identity.instance_type,
            hostname: hostname?,
            local_ipv4: identity.private_ip,
            public_ipv4: public_ipv4?,
            image_id: identity.image_id,
            account: identity.account_id,
        })
    }

    async fn tags(&self) -> Result<BTreeMap<String, String>, FactsError> {
        let Some(keys) = self.get_text(TAGS_PATH).await? else {
            return Ok(BTreeMap::new());
        };
        let mut tags = BTreeMap::new();
        for key in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
            let value = self
                .get_text(&format!("{TAGS_PATH}/{key}"))
                .await?
                .unwrap_or_default();
            tags.insert(key.to_string(), value);
        }
        Ok(tags)
    }

    async fn user_data(&self) -> Result<Option<UserData>, FactsError> {
        Ok(self
            .get_optional("/latest/user-data")
            .await?
            .and_then(non_empty))
    }
}
