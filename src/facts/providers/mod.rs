//! Metadata providers: one module per platform behind [`MetadataProvider`],
//! and one dispatch table, [`fetch`].
//!
//! A provider only reads. It never writes to the host, never mounts
//! anything, never changes the network. Optional capabilities (tags, user
//! data) are default methods, so a provider implements only what its
//! platform offers. HTTP goes through [`MetadataClient`], whose base URL is
//! injected here from [`FactsSettings`], so every provider can be pointed at
//! a loopback server.
//!
//! To add a provider: a module implementing `MetadataProvider`, an arm in
//! [`fetch`], and a [`ProviderKind`] variant (see `facts/mod.rs`).

pub mod aws;
pub mod azure;
pub mod digitalocean;
pub mod gcp;
pub mod nocloud;
pub mod openstack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::http::MetadataClient;
use super::settings::{FactsSettings, ProviderKind};
use super::{CloudFacts, FactsError, UserData};

/// What one platform's metadata says about this instance. Implementations
/// must only read (HTTP GET, the IMDSv2 token PUT, reading files).
#[allow(async_fn_in_trait)]
pub trait MetadataProvider {
    /// The identity facts: instance id, region, zone, type, addresses, ...
    async fn identity(&self) -> Result<CloudFacts, FactsError>;

    /// Instance tags, when the platform exposes them. Called after `identity`.
    async fn tags(&self) -> Result<BTreeMap<String, String>, FactsError> {
        Ok(BTreeMap::new())
    }

    /// Raw user data, when set. Called after `identity`. Never logged.
    async fn user_data(&self) -> Result<Option<UserData>, FactsError> {
        Ok(None)
    }
}

/// Everything a provider returned.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub facts: CloudFacts,
    pub tags: BTreeMap<String, String>,
    pub user_data: Option<UserData>,
}

/// The dispatch table: asks `kind`'s provider, within the settings' budget.
pub fn fetch(kind: ProviderKind, settings: &FactsSettings) -> Result<Fetched, FactsError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| FactsError::Unavailable {
            provider: kind.name(),
            message: format!("cannot start the async runtime: {err}"),
        })?;
    runtime.block_on(async {
        match kind {
            ProviderKind::Local => Ok(Fetched::default()),
            ProviderKind::Aws => collect(&aws::Aws::new(client(kind, settings)?)).await,
            ProviderKind::Gcp => collect(&gcp::Gcp::new(client(kind, settings)?)).await,
            ProviderKind::Azure => collect(&azure::Azure::new(client(kind, settings)?)).await,
            ProviderKind::DigitalOcean => {
                collect(&digitalocean::DigitalOcean::new(client(kind, settings)?)).await
            }
            ProviderKind::OpenStack => {
                let source = match mounted_config_drive(settings, &["config-2", "CONFIG-2"]) {
                    Some(dir) => openstack::Source::ConfigDrive(dir),
                    None => openstack::Source::Network(client(kind, settings)?),
                };
                collect(&openstack::OpenStack::new(source)).await
            }
            ProviderKind::NoCloud => collect(&nocloud::NoCloud::locate(settings)?).await,
        }
    })
}

async fn collect<P: MetadataProvider>(provider: &P) -> Result<Fetched, FactsError> {
    let facts = provider.identity().await?;
    let (tags, user_data) = tokio::join!(provider.tags(), provider.user_data());
    Ok(Fetched {
        facts,
        tags: tags?,
        user_data: user_data?,
    })
}

/// A client for `kind`'s configured endpoint, with the settings' budget.
pub fn client(kind: ProviderKind, settings: &FactsSettings) -> Result<MetadataClient, FactsError> {
    let base = settings
        .endpoint(kind)
        .ok_or_else(|| FactsError::Unavailable {
            provider: kind.name(),
            message: "no metadata endpoint is configured".into(),
        })?;
    MetadataClient::new(kind.name(), base, settings)
}

/// Where a config drive with one of `labels` is mounted, if it is. bootplan
/// never mounts it (that would change the host); it reads a drive that the
/// system (fstab, systemd, the initramfs) has already mounted.
pub fn mounted_config_drive(settings: &FactsSettings, labels: &[&str]) -> Option<PathBuf> {
    let device = labels.iter().find_map(|label| {
        let link = settings.paths.labels_dir.join(label);
        std::fs::symlink_metadata(&link).ok()?;
        Some(std::fs::canonicalize(&link).unwrap_or(link))
    })?;
    let mounts = std::fs::read_to_string(&settings.paths.mounts).ok()?;
    mount_point(&mounts, &device)
}

/// The mount point of `device` in a mounts table (`/proc/self/mounts` format).
pub fn mount_point(mounts: &str, device: &Path) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let source = unescape_mount(fields.next()?);
        let target = unescape_mount(fields.next()?);
        let source_path = PathBuf::from(&source);
        let same =
            source_path == device || std::fs::canonicalize(&source_path).is_ok_and(|p| p == device);
        same.then(|| PathBuf::from(target))
    })
}

/// Mount tables escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(code) = u8::from_str_radix(digits, 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a file of a file-based source, naming it on failure. `Ok(None)`
/// when it does not exist.
pub fn read_optional(provider: &'static str, path: &Path) -> Result<Option<Vec<u8>>, FactsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FactsError::Read {
            provider,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A JSON value at a path of object keys, as a non-empty string (numbers too).
pub fn json_str(value: &serde_json::Value, keys: &[&str]) -> Option<String> {
    let mut v = value;
    for key in keys {
        v = v.get(key)?;
    }
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// User data, or `None` when empty.
pub fn non_empty(bytes: Vec<u8>) -> Option<UserData> {
    (!bytes.is_empty()).then(|| UserData::new(bytes))
}

/// Tags given as a list of names (GCE network tags, DigitalOcean tags):
/// each becomes a key with an empty value.
pub fn tag_list(value: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    value
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .map(|t| (t.to_string(), String::new()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_point_with_escapes() {
        let mounts = "proc /proc proc rw 0 0\n/dev/sr0 /mnt/config\\0402 iso9660 ro 0 0\n";
        assert_eq!(
            mount_point(mounts, Path::new("/dev/sr0")),
            Some(PathBuf::from("/mnt/config 2"))
        );
        assert_eq!(mount_point(mounts, Path::new("/dev/sr1")), None);
    }
}
