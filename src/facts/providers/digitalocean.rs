//! DigitalOcean droplet metadata.
//!
//! `GET /metadata/v1.json` returns the whole document (droplet id,
//! hostname, region, interfaces, tags); user data is `/metadata/v1/user-data`
//! (404 when none). DigitalOcean exposes no instance type, image or account.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::{MetadataProvider, json_str, non_empty, tag_list};
use crate::facts::http::MetadataClient;
use crate::facts::{CloudFacts, FactsError, UserData};

const ALL_PATH: &str = "/metadata/v1.json";
const USER_DATA_PATH: &str = "/metadata/v1/user-data";

pub struct DigitalOcean {
    client: MetadataClient,
    doc: OnceLock<serde_json::Value>,
}

impl DigitalOcean {
    pub fn new(client: MetadataClient) -> DigitalOcean {
        DigitalOcean {
            client,
            doc: OnceLock::new(),
        }
    }
}

impl MetadataProvider for DigitalOcean {
    async fn identity(&self) -> Result<CloudFacts, FactsError> {
        let response = self.client.get(ALL_PATH, &[]).await?;
        let doc: serde_json::Value = match self.client.json(&response)? {
            // The API reference shows the document wrapped in a one-element array.
            serde_json::Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
            doc => doc,
        };
        let droplet_id = json_str(&doc, &["droplet_id"]).ok_or_else(|| FactsError::Malformed {
            provider: "digitalocean",
            url: response.url.clone(),
            message: "no droplet_id".into(),
        })?;
        let address = |kind: &str| {
            doc.pointer(&format!("/interfaces/{kind}/0/ipv4"))
                .and_then(|v| json_str(v, &["ip_address"]))
        };
        let facts = CloudFacts {
            instance_id: Some(droplet_id),
            region: json_str(&doc, &["region"]),
            hostname: json_str(&doc, &["hostname"]),
            local_ipv4: address("private"),
            public_ipv4: address("public"),
            ..CloudFacts::default()
        };
        let _ = self.doc.set(doc);
        Ok(facts)
    }

    async fn tags(&self) -> Result<BTreeMap<String, String>, FactsError> {
        Ok(tag_list(self.doc.get().and_then(|d| d.get("tags"))))
    }

    async fn user_data(&self) -> Result<Option<UserData>, FactsError> {
        Ok(self
            .client
            .get_optional(USER_DATA_PATH, &[])
            .await?
            .and_then(|r| non_empty(r.body)))
    }
}
