//! Google Compute Engine metadata server.
//!
//! One recursive GET of `/computeMetadata/v1/?recursive=true&alt=json` with
//! `Metadata-Flavor: Google` (the server refuses requests without it)
//! returns the instance and project documents; everything is read from that.
//! Tags are the instance's network tags (GCE does not expose labels here);
//! user data is the `user-data` instance attribute, as cloud-init reads it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::{MetadataProvider, json_str, non_empty, tag_list};
use crate::facts::http::MetadataClient;
use crate::facts::{CloudFacts, FactsError, UserData};

pub const FLAVOR_HEADER: (&str, &str) = ("Metadata-Flavor", "Google");
const ALL_PATH: &str = "/computeMetadata/v1/?recursive=true&alt=json";

pub struct Gcp {
    client: MetadataClient,
    doc: OnceLock<serde_json::Value>,
}

impl Gcp {
    pub fn new(client: MetadataClient) -> Gcp {
        Gcp {
            client,
            doc: OnceLock::new(),
        }
    }

    fn doc(&self) -> Option<&serde_json::Value> {
        self.doc.get()
    }
}

/// The last segment of `projects/123/zones/us-central1-a`.
fn last_segment(path: Option<String>) -> Option<String> {
    path.map(|p| p.rsplit('/').next().unwrap_or(&p).to_string())
}

/// `us-central1-a` → `us-central1`.
pub fn region_of_zone(zone: &str) -> Option<String> {
    zone.rsplit_once('-').map(|(region, _)| region.to_string())
}

impl MetadataProvider for Gcp {
    async fn identity(&self) -> Result<CloudFacts, FactsError> {
        let response = self.client.get(ALL_PATH, &[FLAVOR_HEADER]).await?;
        let doc: serde_json::Value = self.client.json(&response)?;
        let instance_id =
            json_str(&doc, &["instance", "id"]).ok_or_else(|| FactsError::Malformed {
                provider: "gcp",
                url: response.url.clone(),
                message: "no instance.id".into(),
            })?;
        let zone = last_segment(json_str(&doc, &["instance", "zone"]));
        let nic = doc
            .pointer("/instance/networkInterfaces/0")
            .cloned()
            .unwrap_or_default();
        let facts = CloudFacts {
            instance_id: Some(instance_id),
            region: zone.as_deref().and_then(region_of_zone),
            zone,
            instance_type: last_segment(json_str(&doc, &["instance", "machineType"])),
            hostname: json_str(&doc, &["instance", "hostname"]),
            local_ipv4: json_str(&nic, &["ip"]),
            public_ipv4: nic
                .pointer("/accessConfigs/0")
                .and_then(|ac| json_str(ac, &["externalIp"])),
            image_id: json_str(&doc, &["instance", "image"]),
            account: json_str(&doc, &["project", "projectId"]),
        };
        let _ = self.doc.set(doc);
        Ok(facts)
    }

    async fn tags(&self) -> Result<BTreeMap<String, String>, FactsError> {
        Ok(tag_list(
            self.doc().and_then(|d| d.pointer("/instance/tags")),
        ))
    }

    async fn user_data(&self) -> Result<Option<UserData>, FactsError> {
        Ok(self
            .doc()
            .and_then(|d| d.pointer("/instance/attributes/user-data"))
            .and_then(|v| v.as_str())
            .and_then(|s| non_empty(s.as_bytes().to_vec())))
    }
}
