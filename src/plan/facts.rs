//! The plan's `facts:` block as the plan model types it: which provider,
//! what to fall back to, the detection budget, endpoint overrides; and the
//! names of the facts templates may read. `crate::facts` combines these
//! with the environment and gathers the facts.

use std::collections::BTreeMap;
use std::time::Duration;

/// Every fact name a template may reference.
pub const FACT_NAMES: &[&str] = &[
    "cloud",
    "instance_id",
    "region",
    "zone",
    "instance_type",
    "hostname",
    "local_ipv4",
    "public_ipv4",
    "image_id",
    "account",
    "tags",
    "machine_id",
    "boot_id",
    "kernel",
    "cpu_count",
    "memory_bytes",
    "user_data",
];

/// Default time for the whole detection (all attempts of all requests).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(5);
/// Default limit for one HTTP attempt.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// A metadata provider bootplan knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProviderKind {
    Aws,
    Gcp,
    Azure,
    OpenStack,
    DigitalOcean,
    NoCloud,
    Local,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::Aws,
        ProviderKind::Gcp,
        ProviderKind::Azure,
        ProviderKind::OpenStack,
        ProviderKind::DigitalOcean,
        ProviderKind::NoCloud,
        ProviderKind::Local,
    ];

    /// The name used in plans and as the value of `facts.cloud`.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Aws => "aws",
            ProviderKind::Gcp => "gcp",
            ProviderKind::Azure => "azure",
            ProviderKind::OpenStack => "openstack",
            ProviderKind::DigitalOcean => "digitalocean",
            ProviderKind::NoCloud => "nocloud",
            ProviderKind::Local => "local",
        }
    }

    /// Parses a provider name; `gce` and `ec2` are accepted as aliases.
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "ec2" => Some(ProviderKind::Aws),
            "gce" => Some(ProviderKind::Gcp),
            _ => ProviderKind::ALL.into_iter().find(|k| k.name() == name),
        }
    }

    /// The metadata service's address on the platform (no trailing slash).
    /// NoCloud and local have none: they read files.
    pub fn default_endpoint(self) -> Option<&'static str> {
        match self {
            ProviderKind::Aws
            | ProviderKind::Azure
            | ProviderKind::OpenStack
            | ProviderKind::DigitalOcean => Some("http://169.254.169.254"),
            ProviderKind::Gcp => Some("http://metadata.google.internal"),
            ProviderKind::NoCloud | ProviderKind::Local => None,
        }
    }

    /// The provider in environment variable names (`BOOTPLAN_METADATA_URL_AWS`).
    pub fn env_suffix(self) -> String {
        self.name().to_ascii_uppercase()
    }
}

/// `facts.provider`: detect, or use exactly this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderChoice {
    #[default]
    Auto,
    Pinned(ProviderKind),
}

impl ProviderChoice {
    pub fn from_name(name: &str) -> Option<ProviderChoice> {
        if name.trim().eq_ignore_ascii_case("auto") {
            return Some(ProviderChoice::Auto);
        }
        ProviderKind::from_name(name).map(ProviderChoice::Pinned)
    }
}

/// What happens when no provider is found or the chosen one does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Carry on with local facts (`cloud: local`), with a warning when a
    /// provider was named but did not answer.
    Local,
    /// Fail the run with `facts.unreachable` (exit 69).
    Fail,
}

/// The plan's `facts:` block, validated but not yet combined with the environment.
#[derive(Debug, Clone, Default)]
pub struct FactsConfig {
    pub provider: ProviderChoice,
    /// `None`: `local` for `auto`, `fail` for a pinned provider.
    pub fallback: Option<Fallback>,
    pub budget: Option<Duration>,
    pub attempt_timeout: Option<Duration>,
    pub endpoints: BTreeMap<ProviderKind, String>,
}
