//! Facts about the machine, visible to templates as `facts.*`.
//!
//! Facts are read-only: nothing here changes the host. Local facts (machine
//! id, boot id, hostname, kernel, CPUs, memory) are always available; cloud
//! providers add more.

use std::path::PathBuf;

use serde::Serialize;

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
];

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

fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
