//! Facts about the machine, visible to templates as `facts.*`.
//!
//! Facts are read-only: nothing here changes the host. Local facts (machine
//! id, boot id, hostname, kernel, CPUs, memory) are always available; cloud
//! providers add more.
//!
//! How facts are gathered ([`gather`]):
//! 1. [`detect`] reads local evidence only (DMI strings, the kernel command
//!    line, config-drive labels, seed directories) and names at most one
//!    provider. Nothing is probed over the network to decide.
//! 2. That one provider (module per platform under [`providers`], behind
//!    [`providers::MetadataProvider`]) is queried through [`http::MetadataClient`],
//!    which owns per-attempt timeouts, full-jitter retries and the detection budget.
//! 3. Its answer is laid over the local facts; on failure the plan's
//!    `fallback` decides between local facts and `facts.unreachable`.
//!
//! To add a provider: add a [`ProviderKind`] variant (name, default
//! endpoint), a module under `providers/` implementing `MetadataProvider`, an
//! arm in `providers::fetch`, and its DMI/cmdline evidence in `detect.rs`.

pub mod detect;
pub mod error;
pub mod http;
pub mod providers;
pub mod settings;

use std::path::PathBuf;

use serde::Serialize;

pub use error::FactsError;
pub use settings::{FactsSettings, Fallback, ProviderChoice, ProviderKind};

/// The gathered facts. Unknown values are `None` (and render as empty).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    pub cloud: String,
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub hostname: String,
    pub local_ipv4: Option<String>,
    pub public_ipv4: Option<String>,
    pub image_id: Option<String>,
    pub account: Option<String>,
    pub tags: std::collections::BTreeMap<String, String>,
    pub machine_id: String,
    pub boot_id: String,
    pub kernel: String,
    pub cpu_count: usize,
    pub memory_bytes: u64,
    /// Raw user data. Never serialized with the other facts (so never in
    /// `bootplan facts` output, logs or status); templates see it as
    /// `facts.user_data` through [`Facts::template_value`].
    #[serde(skip)]
    pub user_data: Option<UserData>,
}

/// Raw user data: treated like a secret for output purposes. Its Debug form
/// shows only the length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserData(zeroize::Zeroizing<Vec<u8>>);

impl UserData {
    pub fn new(bytes: Vec<u8>) -> UserData {
        UserData(zeroize::Zeroizing::new(bytes))
    }

    /// The raw bytes. Callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text (lossy for binary data such as gzip).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserData([redacted, {} bytes])", self.0.len())
    }
}

/// What a cloud provider knows about the instance; laid over local facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudFacts {
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub hostname: Option<String>,
    pub local_ipv4: Option<String>,
    pub public_ipv4: Option<String>,
    pub image_id: Option<String>,
    pub account: Option<String>,
}

/// Facts and how they were found, for the notice at the start of a run.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub facts: Facts,
    /// The provider that answered (`local` when none did).
    pub provider: &'static str,
    /// Why that provider was chosen (the evidence, or "pinned by the plan").
    pub evidence: String,
    pub duration: std::time::Duration,
    /// Set when a provider was chosen but failed and the plan fell back to local.
    pub fell_back: Option<String>,
}

impl Gathered {
    /// One line for logs and `bootplan facts`; never includes user data.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "facts from {} ({}) in {:.1?}",
            self.provider, self.evidence, self.duration
        );
        if let Some(id) = &self.facts.instance_id {
            line.push_str(&format!("; instance {id}"));
        }
        if let Some(why) = &self.fell_back {
            line.push_str(&format!("; fell back to local facts: {why}"));
        }
        line
    }
}

/// Gathers facts as `settings` say: detect (or use the pinned provider),
/// query it within the budget, merge over local facts, apply the fallback.
pub fn gather(settings: &FactsSettings) -> Result<Gathered, FactsError> {
    let started = std::time::Instant::now();
    let local = Facts::local(&settings.local);
    let (kind, evidence) = match settings.provider {
        ProviderChoice::Pinned(kind) => (Some(kind), format!("pinned to {}", kind.name())),
        ProviderChoice::Auto => match detect::detect(&settings.paths) {
            Some(found) => (Some(found.kind), found.evidence),
            None => (None, "no cloud evidence found".to_string()),
        },
    };
    let finish = |facts: Facts, provider, evidence, fell_back| Gathered {
        facts,
        provider,
        evidence,
        duration: started.elapsed(),
        fell_back,
    };
    let kind = match kind {
        Some(ProviderKind::Local) => {
            return Ok(finish(local, "local", evidence, None));
        }
        Some(kind) => kind,
        None => {
            return match settings.fallback {
                Fallback::Local => Ok(finish(local, "local", evidence, None)),
                Fallback::Fail => Err(FactsError::NotDetected {
                    looked_at: settings.paths.describe(),
                }),
            };
        }
    };
    match providers::fetch(kind, settings) {
        Ok(fetched) => Ok(finish(
            local.with_cloud(kind.name(), fetched),
            kind.name(),
            evidence,
            None,
        )),
        Err(err) => match settings.fallback {
            Fallback::Local => Ok(finish(local, "local", evidence, Some(err.to_string()))),
            Fallback::Fail => Err(err),
        },
    }
}

/// Where local facts are read from; overridable so tests and containers can
/// point them elsewhere.
#[derive(Debug, Clone)]
pub struct LocalSources {
    pub machine_id: Vec<PathBuf>,
    pub boot_id: PathBuf,
}

impl Default for LocalSources {
    fn default() -> Self {
        let env_path = |var: &str| std::env::var_os(var).map(PathBuf::from);
        LocalSources {
            machine_id: env_path("BOOTPLAN_MACHINE_ID_FILE")
                .map(|p| vec![p])
                .unwrap_or_else(|| {
                    vec!["/etc/machine-id".into(), "/var/lib/dbus/machine-id".into()]
                }),
            boot_id: env_path("BOOTPLAN_BOOT_ID_FILE")
                .unwrap_or_else(|| "/proc/sys/kernel/random/boot_id".into()),
        }
    }
}

/// The kernel's boot id (empty when unreadable).
pub fn current_boot_id() -> String {
    std::fs::read_to_string(LocalSources::default().boot_id)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Facts {
    /// Local facts only; `cloud` is `local` and the instance id is the machine id.
    pub fn local(sources: &LocalSources) -> Facts {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let machine_id = sources.machine_id.iter().find_map(read).unwrap_or_default();
        let boot_id = read(&sources.boot_id).unwrap_or_default();
        let uname = nix::sys::utsname::uname().ok();
        let hostname = uname
            .as_ref()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .unwrap_or_default();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Facts {
            cloud: "local".into(),
            instance_id: (!machine_id.is_empty()).then(|| machine_id.clone()),
            hostname,
            machine_id,
            boot_id,
            kernel,
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: memory_bytes().unwrap_or(0),
            ..Facts::default()
        }
    }

    /// These local facts with a provider's answer laid over them.
    pub fn with_cloud(mut self, cloud: &str, fetched: providers::Fetched) -> Facts {
        let c = fetched.facts;
        self.cloud = cloud.to_string();
        if c.instance_id.is_some() {
            self.instance_id = c.instance_id;
        }
        if let Some(hostname) = c.hostname.filter(|h| !h.is_empty()) {
            self.hostname = hostname;
        }
        self.region = c.region;
        self.zone = c.zone;
        self.instance_type = c.instance_type;
        self.local_ipv4 = c.local_ipv4;
        self.public_ipv4 = c.public_ipv4;
        self.image_id = c.image_id;
        self.account = c.account;
        self.tags = fetched.tags;
        self.user_data = fetched.user_data;
        self
    }

    /// The value templates and `when:` conditions see as `facts`: every
    /// serialized fact plus `user_data` (as text, or none).
    pub fn template_value(&self) -> minijinja::Value {
        let mut map: std::collections::BTreeMap<String, minijinja::Value> =
            match serde_json::to_value(self) {
                Ok(serde_json::Value::Object(fields)) => fields
                    .into_iter()
                    .map(|(k, v)| (k, minijinja::Value::from(minijinja::value::Serde(&v))))
                    .collect(),
                _ => std::collections::BTreeMap::new(),
            };
        map.insert(
            "user_data".into(),
            self.user_data
                .as_ref()
                .map_or(minijinja::Value::from(()), |u| {
                    minijinja::Value::from(u.text())
                }),
        );
        minijinja::Value::from(map)
    }

    /// The key for `per-instance` records: instance id and machine id together,
    /// so a cloned disk on a new instance (or a reused instance id on a new
    /// disk) is recognised as new.
    pub fn instance_key(&self) -> String {
        format!(
            "{}/{}",
            self.instance_id.as_deref().unwrap_or(""),
            self.machine_id
        )
    }
}

/// Splits a `per-instance` key back into (instance id, machine id).
/// The machine id never holds a `/`, so the last one separates them.
pub fn split_instance_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or((key, ""))
}

fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
