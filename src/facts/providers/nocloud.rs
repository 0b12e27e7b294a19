//! NoCloud: the files cloud-init's NoCloud datasource reads — `meta-data`
//! (YAML; `instance-id` required) and `user-data` (raw) — from, in order:
//!
//! 1. the kernel command line, `ds=nocloud;s=<seed>;i=<instance-id>;h=<hostname>`
//!    (or the same string in DMI `product_serial`), where the seed is
//!    `file:///dir/`, a plain `/dir/`, or `http(s)://host/path/`;
//!    `i` and `h` override the seed's values, as in cloud-init;
//! 2. a mounted config drive labelled `cidata`;
//! 3. the seed directories (`/var/lib/cloud/seed/nocloud`, `.../nocloud-net`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{MetadataProvider, mounted_config_drive, non_empty, read_optional};
use crate::facts::detect::nocloud_cmdline_arg;
use crate::facts::http::MetadataClient;
use crate::facts::settings::FactsSettings;
use crate::facts::{CloudFacts, FactsError, UserData};

const PROVIDER: &str = "nocloud";

/// Where the seed files are.
pub enum Seed {
    Dir(PathBuf),
    Http(MetadataClient),
}

pub struct NoCloud {
    seed: Seed,
    /// `i=` and `h=` from the command line.
    overrides: BTreeMap<String, String>,
}

/// The `key=value` pairs after `ds=nocloud;` (short names expanded).
pub fn parse_ds_arg(arg: &str) -> BTreeMap<String, String> {
    let value = arg.strip_prefix("ds=").unwrap_or(arg);
    value
        .split(';')
        .skip(1)
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let key = match k {
                "s" => "seedfrom",
                "i" => "instance-id",
                "h" => "local-hostname",
                other => other,
            };
            (key.to_string(), v.to_string())
        })
        .collect()
}

impl NoCloud {
    /// Finds the seed, or says where it looked.
    pub fn locate(settings: &FactsSettings) -> Result<NoCloud, FactsError> {
        let cmdline = std::fs::read_to_string(&settings.paths.cmdline).unwrap_or_default();
        let serial = std::fs::read_to_string(settings.paths.dmi_root.join("product_serial"))
            .unwrap_or_default();
        let mut args = nocloud_cmdline_arg(&cmdline)
            .or_else(|| nocloud_cmdline_arg(serial.trim()))
            .map(parse_ds_arg)
            .unwrap_or_default();
        let seedfrom = args.remove("seedfrom");
        let seed = match seedfrom {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Seed::Http(
                MetadataClient::new(PROVIDER, url.trim_end_matches('/'), settings)?,
            ),
            Some(path) => Seed::Dir(PathBuf::from(path.strip_prefix("file://").unwrap_or(&path))),
            None => {
                let dir = mounted_config_drive(settings, &["cidata", "CIDATA"]).or_else(|| {
                    settings
                        .paths
                        .seed_dirs
                        .iter()
                        .find(|d| d.join("meta-data").is_file())
                        .cloned()
                });
                match dir {
                    Some(dir) => Seed::Dir(dir),
                    None if args.contains_key("instance-id") => Seed::Dir(PathBuf::new()),
                    None => {
                        return Err(FactsError::Unavailable {
                            provider: PROVIDER,
                            message: format!(
                                "no NoCloud seed: no `ds=nocloud;s=...` on the kernel command line, no mounted `cidata` drive, no meta-data in {}",
                                settings
                                    .paths
                                    .seed_dirs
                                    .iter()
                                    .map(|p| p.display().to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        });
                    }
                }
            }
        };
        Ok(NoCloud {
            seed,
            overrides: args,
        })
    }

    /// A seed file's bytes; `None` when absent.
    async fn file(&self, name: &str) -> Result<(String, Option<Vec<u8>>), FactsError> {
        match &self.seed {
            Seed::Dir(dir) if dir.as_os_str().is_empty() => Ok((name.to_string(), None)),
            Seed::Dir(dir) => {
                let path: PathBuf = dir.join(name);
                Ok((path.display().to_string(), read_optional(PROVIDER, &path)?))
            }
            Seed::Http(client) => {
                let path = format!("/{name}");
                Ok((
                    client.url(&path),
                    client.get_optional(&path, &[]).await?.map(|r| r.body),
                ))
            }
        }
    }
}

/// A meta-data value as a string (YAML may give numbers or booleans).
fn meta_str(meta: &serde_json::Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| super::json_str(meta, &[k]))
}

/// Maps NoCloud meta-data (EC2-shaped keys, as in cloud-init's example seed)
/// to cloud facts.
pub fn facts_from_meta(meta: &serde_json::Value) -> CloudFacts {
    let zone = meta_str(meta, &["availability-zone", "availability_zone"]).or_else(|| {
        meta.get("placement")
            .and_then(|p| meta_str(p, &["availability-zone"]))
    });
    CloudFacts {
        instance_id: meta_str(meta, &["instance-id", "instance_id"]),
        region: meta_str(meta, &["region"]),
        zone,
        instance_type: meta_str(meta, &["instance-type", "instance_type"]),
        hostname: meta_str(meta, &["local-hostname", "hostname"]),
        local_ipv4: meta_str(meta, &["local-ipv4"]),
        public_ipv4: meta_str(meta, &["public-ipv4"]),
        image_id: meta_str(meta, &["ami-id", "image-id"]),
        account: None,
    }
}

impl MetadataProvider for NoCloud {
    async fn identity(&self) -> Result<CloudFacts, FactsError> {
        let (origin, bytes) = self.file("meta-data").await?;
        let meta: serde_json::Value = match bytes {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                if text.trim().is_empty() {
                    serde_json::Value::Object(Default::default())
                } else {
                    serde_saphyr::from_str(&text).map_err(|err| FactsError::Malformed {
                        provider: PROVIDER,
                        url: origin.clone(),
                        message: format!("meta-data is not YAML: {err}"),
                    })?
                }
            }
            None if self.overrides.contains_key("instance-id") => {
                serde_json::Value::Object(Default::default())
            }
            None => {
                return Err(FactsError::Unavailable {
                    provider: PROVIDER,
                    message: format!("no meta-data at {origin}"),
                });
            }
        };
        let mut facts = facts_from_meta(&meta);
        if let Some(id) = self.overrides.get("instance-id") {
            facts.instance_id = Some(id.clone());
        }
        if let Some(host) = self.overrides.get("local-hostname") {
            facts.hostname = Some(host.clone());
        }
        if facts.instance_id.is_none() {
            return Err(FactsError::Malformed {
                provider: PROVIDER,
                url: origin,
                message: "meta-data has no `instance-id` (cloud-init requires it)".into(),
            });
        }
        Ok(facts)
    }

    async fn user_data(&self) -> Result<Option<UserData>, FactsError> {
        Ok(self.file("user-data").await?.1.and_then(non_empty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cmdline_pairs() {
        let args = parse_ds_arg("ds=nocloud;s=file:///seed/;i=iid-1;h=web-1");
        assert_eq!(args["seedfrom"], "file:///seed/");
        assert_eq!(args["instance-id"], "iid-1");
        assert_eq!(args["local-hostname"], "web-1");
        assert!(parse_ds_arg("ds=nocloud").is_empty());
    }

    #[test]
    fn maps_ec2_shaped_meta_data() {
        let meta: serde_json::Value = serde_saphyr::from_str(
            "instance-id: i-1\nlocal-hostname: h\nplacement: {availability-zone: us-east-1d}\nami-launch-index: '0'\n",
        )
        .unwrap();
        let facts = facts_from_meta(&meta);
        assert_eq!(facts.instance_id.as_deref(), Some("i-1"));
        assert_eq!(facts.zone.as_deref(), Some("us-east-1d"));
        assert_eq!(facts.hostname.as_deref(), Some("h"));
    }
}
