//! Fact-gathering settings: the plan's `facts:` block ([`FactsConfig`])
//! resolved together with the environment into [`FactsSettings`].
//!
//! Every place bootplan reads evidence from, and every metadata endpoint, can
//! be pointed elsewhere, so tests never touch the real DMI tree or
//! 169.254.169.254:
//!
//! | what | env | default |
//! |---|---|---|
//! | DMI strings | `BOOTPLAN_DMI_ROOT` | `/sys/class/dmi/id` |
//! | kernel command line | `BOOTPLAN_CMDLINE` (a file) | `/proc/cmdline` |
//! | NoCloud seed dirs | `BOOTPLAN_SEED_DIRS` (`:`-separated) | `/var/lib/cloud/seed/nocloud:/var/lib/cloud/seed/nocloud-net` |
//! | filesystem labels | `BOOTPLAN_DISK_LABELS_DIR` | `/dev/disk/by-label` |
//! | mount table | `BOOTPLAN_MOUNTS` | `/proc/self/mounts` |
//! | endpoint of P | `BOOTPLAN_METADATA_URL_<P>` (e.g. `_AWS`), else plan `facts.endpoints.<p>` | the platform's address |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::LocalSources;

pub use crate::plan::facts::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_BUDGET, FactsConfig, Fallback, ProviderChoice, ProviderKind,
};

/// Where local evidence is read from.
#[derive(Debug, Clone)]
pub struct EvidencePaths {
    pub dmi_root: PathBuf,
    pub cmdline: PathBuf,
    pub seed_dirs: Vec<PathBuf>,
    pub labels_dir: PathBuf,
    pub mounts: PathBuf,
}

impl EvidencePaths {
    /// The places looked at, for a "nothing found" message.
    pub fn describe(&self) -> String {
        format!(
            "DMI {}, kernel command line {}, labels {}, seed dirs {}",
            self.dmi_root.display(),
            self.cmdline.display(),
            self.labels_dir.display(),
            self.seed_dirs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Everything [`super::gather`] needs.
#[derive(Debug, Clone)]
pub struct FactsSettings {
    pub provider: ProviderChoice,
    pub fallback: Fallback,
    pub budget: Duration,
    pub attempt_timeout: Duration,
    endpoints: BTreeMap<ProviderKind, String>,
    pub paths: EvidencePaths,
    pub local: LocalSources,
    /// Where each retried metadata request is logged (none for `bootplan facts`).
    pub reporter: Option<std::sync::Arc<crate::telemetry::Reporter>>,
}

impl FactsSettings {
    /// Settings from the plan's block and the process environment.
    pub fn from_env(config: &FactsConfig) -> FactsSettings {
        FactsSettings::resolve(config, &|var| {
            std::env::var(var).ok().filter(|v| !v.is_empty())
        })
    }

    /// Settings from the plan's block and `env` (injected for tests).
    pub fn resolve(config: &FactsConfig, env: &dyn Fn(&str) -> Option<String>) -> FactsSettings {
        let path = |var: &str, default: &str| PathBuf::from(env(var).unwrap_or(default.into()));
        let seed_dirs = env("BOOTPLAN_SEED_DIRS")
            .unwrap_or_else(|| "/var/lib/cloud/seed/nocloud:/var/lib/cloud/seed/nocloud-net".into())
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
        let mut endpoints = BTreeMap::new();
        for kind in ProviderKind::ALL {
            let from_env = env(&format!("BOOTPLAN_METADATA_URL_{}", kind.env_suffix()));
            let url = from_env
                .or_else(|| config.endpoints.get(&kind).cloned())
                .or_else(|| kind.default_endpoint().map(str::to_string));
            if let Some(url) = url {
                endpoints.insert(kind, url.trim_end_matches('/').to_string());
            }
        }
        let fallback = config.fallback.unwrap_or(match config.provider {
            ProviderChoice::Auto => Fallback::Local,
            ProviderChoice::Pinned(_) => Fallback::Fail,
        });
        FactsSettings {
            provider: config.provider,
            fallback,
            budget: config.budget.unwrap_or(DEFAULT_BUDGET),
            attempt_timeout: config.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT),
            endpoints,
            paths: EvidencePaths {
                dmi_root: path("BOOTPLAN_DMI_ROOT", "/sys/class/dmi/id"),
                cmdline: path("BOOTPLAN_CMDLINE", "/proc/cmdline"),
                seed_dirs,
                labels_dir: path("BOOTPLAN_DISK_LABELS_DIR", "/dev/disk/by-label"),
                mounts: path("BOOTPLAN_MOUNTS", "/proc/self/mounts"),
            },
            local: LocalSources::default(),
            reporter: None,
        }
    }

    /// The metadata endpoint of `kind` (no trailing slash), if it has one.
    pub fn endpoint(&self, kind: ProviderKind) -> Option<&str> {
        self.endpoints.get(&kind).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_plan_endpoints_and_defaults_follow_the_choice() {
        let mut config = FactsConfig {
            provider: ProviderChoice::Pinned(ProviderKind::Aws),
            ..FactsConfig::default()
        };
        config
            .endpoints
            .insert(ProviderKind::Aws, "http://plan.example/".into());
        config
            .endpoints
            .insert(ProviderKind::Gcp, "http://plan-gcp.example".into());
        let env = |var: &str| match var {
            "BOOTPLAN_METADATA_URL_AWS" => Some("http://127.0.0.1:9".to_string()),
            "BOOTPLAN_SEED_DIRS" => Some("/a:/b".to_string()),
            _ => None,
        };
        let s = FactsSettings::resolve(&config, &env);
        assert_eq!(s.endpoint(ProviderKind::Aws), Some("http://127.0.0.1:9"));
        assert_eq!(
            s.endpoint(ProviderKind::Gcp),
            Some("http://plan-gcp.example")
        );
        assert_eq!(s.endpoint(ProviderKind::NoCloud), None);
        assert_eq!(s.fallback, Fallback::Fail);
        assert_eq!(
            s.paths.seed_dirs,
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        let auto = FactsSettings::resolve(&FactsConfig::default(), &|_| None);
        assert_eq!(auto.fallback, Fallback::Local);
        assert_eq!(auto.paths.dmi_root, PathBuf::from("/sys/class/dmi/id"));
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(ProviderKind::from_name("GCE"), Some(ProviderKind::Gcp));
        assert_eq!(ProviderKind::from_name("ec2"), Some(ProviderKind::Aws));
        assert_eq!(
            ProviderChoice::from_name("auto"),
            Some(ProviderChoice::Auto)
        );
        assert_eq!(ProviderKind::from_name("vmware"), None);
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::from_name(kind.name()), Some(kind));
        }
    }
}
