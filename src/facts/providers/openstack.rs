//! OpenStack: the config drive when one is attached and mounted, else the
//! metadata service (afterburn's "config drive, else network").
//!
//! Both carry the same files: `openstack/latest/meta_data.json` (uuid,
//! hostname, availability_zone, project_id, meta) and
//! `openstack/latest/user_data`. The EC2-compatible data (instance type,
//! addresses, image) is `ec2/latest/meta-data.json` on the drive and
//! `/latest/meta-data/<key>` on the service, both optional. OpenStack does
//! not expose a region to the instance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::{MetadataProvider, json_str, non_empty, read_optional};
use crate::facts::http::MetadataClient;
use crate::facts::{CloudFacts, FactsError, UserData};

const PROVIDER: &str = "openstack";
const META_DATA: &str = "/openstack/latest/meta_data.json";
const USER_DATA: &str = "/openstack/latest/user_data";

/// Where the data comes from.
pub enum Source {
    /// A mounted config drive (its mount point).
    ConfigDrive(PathBuf),
    Network(MetadataClient),
}

pub struct OpenStack {
    source: Source,
    doc: OnceLock<serde_json::Value>,
}

impl OpenStack {
    pub fn new(source: Source) -> OpenStack {
        OpenStack {
            source,
            doc: OnceLock::new(),
        }
    }

    /// `meta_data.json`, parsed.
    async fn meta_data(&self) -> Result<serde_json::Value, FactsError> {
        match &self.source {
            Source::ConfigDrive(dir) => {
                let path = dir.join(META_DATA.trim_start_matches('/'));
                let bytes =
                    read_optional(PROVIDER, &path)?.ok_or_else(|| FactsError::Unavailable {
                        provider: PROVIDER,
                        message: format!("the config drive has no {}", path.display()),
                    })?;
                serde_json::from_slice(&bytes).map_err(|err| FactsError::Malformed {
                    provider: PROVIDER,
                    url: path.display().to_string(),
                    message: format!("invalid JSON: {err}"),
                })
            }
            Source::Network(client) => {
                let response = client.get(META_DATA, &[]).await?;
                client.json(&response)
            }
        }
    }

    /// The EC2-compatible keys bootplan uses, as one JSON object.
    async fn ec2_data(&self) -> Result<serde_json::Value, FactsError> {
        match &self.source {
            Source::ConfigDrive(dir) => {
                let path = dir.join("ec2/latest/meta-data.json");
                Ok(read_optional(PROVIDER, &path)?
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default())
            }
            Source::Network(client) => {
                let get = |key: &'static str| async move {
                    let answer = client
                        .get_optional(&format!("/latest/meta-data/{key}"), &[])
                        .await?;
                    Ok::<_, FactsError>(
                        answer.map(|r| (key, String::from_utf8_lossy(&r.body).trim().to_string())),
                    )
                };
                let (a, b, c, d) = tokio::join!(
                    get("instance-type"),
                    get("local-ipv4"),
                    get("public-ipv4"),
                    get("ami-id")
                );
                let mut map = serde_json::Map::new();
                for (key, value) in [a?, b?, c?, d?].into_iter().flatten() {
                    map.insert(key.to_string(), serde_json::Value::String(value));
                }
                Ok(serde_json::Value::Object(map))
            }
        }
    }
}

impl MetadataProvider for OpenStack {
    async fn identity(&self) -> Result<CloudFacts, FactsError> {
        let (doc, ec2) = tokio::join!(self.meta_data(), self.ec2_data());
        let (doc, ec2) = (doc?, ec2?);
        let uuid = json_str(&doc, &["uuid"]).ok_or_else(|| FactsError::Malformed {
            provider: PROVIDER,
            url: META_DATA.to_string(),
            message: "no uuid".into(),
        })?;
        let facts = CloudFacts {
            instance_id: Some(uuid),
            region: None,
            zone: json_str(&doc, &["availability_zone"]),
            instance_type: json_str(&ec2, &["instance-type"]),
            hostname: json_str(&doc, &["hostname"]).or_else(|| json_str(&doc, &["name"])),
            local_ipv4: json_str(&ec2, &["local-ipv4"]),
            public_ipv4: json_str(&ec2, &["public-ipv4"]),
            image_id: json_str(&ec2, &["ami-id"]),
            account: json_str(&doc, &["project_id"]),
        };
        let _ = self.doc.set(doc);
        Ok(facts)
    }

    /// The instance's `meta` key/value pairs (`openstack server set --property`).
    async fn tags(&self) -> Result<BTreeMap<String, String>, FactsError> {
        Ok(self
            .doc
            .get()
            .and_then(|d| d.get("meta"))
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn user_data(&self) -> Result<Option<UserData>, FactsError> {
        let bytes = match &self.source {
            Source::ConfigDrive(dir) => {
                read_optional(PROVIDER, &dir.join(USER_DATA.trim_start_matches('/')))?
            }
            Source::Network(client) => client.get_optional(USER_DATA, &[]).await?.map(|r| r.body),
        };
        Ok(bytes.and_then(non_empty))
    }
}
