//! Azure Instance Metadata Service.
//!
//! `GET /metadata/instance?api-version=2021-02-01` with `Metadata: true`
//! (IMDS answers 400 without the header or the api-version). User data is a
//! separate, base64-encoded text endpoint (api-version 2021-01-01 or later).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine;

use super::{MetadataProvider, json_str, non_empty};
use crate::facts::http::MetadataClient;
use crate::facts::{CloudFacts, FactsError, UserData};

pub const METADATA_HEADER: (&str, &str) = ("Metadata", "true");
const INSTANCE_PATH: &str = "/metadata/instance?api-version=2021-02-01";
const USER_DATA_PATH: &str =
    "/metadata/instance/compute/userData?api-version=2021-02-01&format=text";

pub struct Azure {
    client: MetadataClient,
    doc: OnceLock<serde_json::Value>,
}

impl Azure {
    pub fn new(client: MetadataClient) -> Azure {
        Azure {
            client,
            doc: OnceLock::new(),
        }
    }
}

/// `publisher:offer:sku:version`, Azure's usual way to name a marketplace
/// image; a custom image's resource id otherwise.
fn image_of(compute: &serde_json::Value) -> Option<String> {
    let reference = compute.pointer("/storageProfile/imageReference")?;
    if let Some(id) = json_str(reference, &["id"]) {
        return Some(id);
    }
    let parts: Vec<String> = ["publisher", "offer", "sku", "version"]
        .iter()
        .map(|k| json_str(reference, &[k]).unwrap_or_default())
        .collect();
    parts.iter().any(|p| !p.is_empty()).then(|| parts.join(":"))
}

impl MetadataProvider for Azure {
    async fn identity(&self) -> Result<CloudFacts, FactsError> {
        let response = self.client.get(INSTANCE_PATH, &[METADATA_HEADER]).await?;
        let doc: serde_json::Value = self.client.json(&response)?;
        let compute = doc.get("compute").cloned().unwrap_or_default();
        let vm_id = json_str(&compute, &["vmId"]).ok_or_else(|| FactsError::Malformed {
            provider: "azure",
            url: response.url.clone(),
            message: "no compute.vmId".into(),
        })?;
        let address = doc
            .pointer("/network/interface/0/ipv4/ipAddress/0")
            .cloned()
            .unwrap_or_default();
        let facts = CloudFacts {
            instance_id: Some(vm_id),
            region: json_str(&compute, &["location"]),
            zone: json_str(&compute, &["zone"]),
            instance_type: json_str(&compute, &["vmSize"]),
            hostname: json_str(&compute, &["osProfile", "computerName"])
                .or_else(|| json_str(&compute, &["name"])),
            local_ipv4: json_str(&address, &["privateIpAddress"]),
            public_ipv4: json_str(&address, &["publicIpAddress"]),
            image_id: image_of(&compute),
            account: json_str(&compute, &["subscriptionId"]),
        };
        let _ = self.doc.set(doc);
        Ok(facts)
    }

    async fn tags(&self) -> Result<BTreeMap<String, String>, FactsError> {
        let Some(compute) = self.doc.get().and_then(|d| d.get("compute")) else {
            return Ok(BTreeMap::new());
        };
        // `tagsList` keeps values with `;` or `:` intact; `tags` is the older
        // `k1:v1;k2:v2` string.
        if let Some(list) = compute.get("tagsList").and_then(|t| t.as_array()) {
            return Ok(list
                .iter()
                .filter_map(|t| {
                    Some((
                        json_str(t, &["name"])?,
                        json_str(t, &["value"]).unwrap_or_default(),
                    ))
                })
                .collect());
        }
        Ok(json_str(compute, &["tags"])
            .unwrap_or_default()
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|pair| match pair.split_once(':') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (pair.to_string(), String::new()),
            })
            .collect())
    }

    async fn user_data(&self) -> Result<Option<UserData>, FactsError> {
        let Some(response) = self
            .client
            .get_optional(USER_DATA_PATH, &[METADATA_HEADER])
            .await?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&response.body);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|err| FactsError::Malformed {
                provider: "azure",
                url: response.url.clone(),
                message: format!("user data is not base64: {err}"),
            })?;
        Ok(non_empty(decoded))
    }
}
