//! `limits:` — fleet-wide concurrency limits on etcd leases — and
//! `start_splay:`. Raw types as they are written, and their checks.
//! No I/O: the CA file is only named here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::duration::HumanDuration;

pub const DEFAULT_PREFIX: &str = "/bootplan/limits/";
const DEFAULT_TTL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const DEFAULT_ATTEMPTS: u32 = 5;
const MAX_SLOTS: u32 = 1_000_000;

/// `limits:` — named semaphores shared by every machine that uses the
/// same etcd and prefix.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Where the semaphores live.
    pub etcd: RawLimitsEtcd,
    /// The semaphores, by name: a step takes one with `throttle: NAME`.
    #[serde(default)]
    pub semaphores: IndexMap<String, RawSemaphore>,
    /// When etcd cannot be reached after retries: `fail` (default: the step
    /// fails with `throttle.unavailable`, exit 69) or `proceed` (the step
    /// runs unthrottled, with a warning).
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
}

/// `limits.etcd:` — the etcd cluster (v3 JSON gateway) holding the slots.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimitsEtcd {
    /// Client URLs, tried in order, e.g. `["https://etcd.internal:2379"]`.
    pub endpoints: Vec<String>,
    /// Key prefix of the semaphores. Default `/bootplan/limits/`; a slot is
    /// `PREFIX NAME/BOOTSTRAP_ID/STEP`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// PEM CA bundle for `https://` endpoints, relative to the plan file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Trust only `ca_file`, not the public web roots.
    #[serde(default)]
    pub ca_only: bool,
    /// Lease time to live: a slot whose holder died is free this long
    /// after its last keep-alive. Default 10s.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// Limit for each request. Default 2s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// How often a queued step looks at the queue again (jittered ±50%). Default 1s.
    #[serde(default)]
    pub poll_interval: Option<HumanDuration>,
    /// Tries of each etcd request before etcd counts as unavailable. Default 5.
    #[serde(default)]
    pub attempts: Option<u32>,
}

/// One semaphore.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSemaphore {
    /// How many holders at once, fleet-wide. At least 1.
    pub slots: u32,
    /// Overrides `limits.on_unavailable` for this semaphore.
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
}

/// What a throttled step does when etcd cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnavailable {
    /// Fail the step with `throttle.unavailable` (exit 69).
    #[default]
    Fail,
    /// Run the step without a slot, with a warning.
    Proceed,
}

/// The `limits:` block, validated.
#[derive(Debug, Clone)]
pub struct Limits {
    pub endpoints: Vec<String>,
    /// Ends with `/`.
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub ca_only: bool,
    pub ttl: Duration,
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub attempts: u32,
    pub semaphores: IndexMap<String, Semaphore>,
}

/// One semaphore, validated.
#[derive(Debug, Clone)]
pub struct Semaphore {
    pub name: String,
    pub slots: u32,
    pub on_unavailable: OnUnavailable,
}

/// `start_splay: MIN..MAX`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartSplay {
    pub min: Duration,
    pub max: Duration,
}

impl StartSplay {
    /// A delay drawn uniformly from `min..=max`.
    pub fn draw(&self) -> Duration {
        let (lo, hi) = (self.min.as_millis() as u64, self.max.as_millis() as u64);
        Duration::from_millis(fastrand::u64(lo..=hi.max(lo)))
    }
}

/// A problem: (field, message, hint).
pub type Problem = (String, String, Option<String>);

/// Checks `limits:`; problems name their field (positions are found by it).
pub fn resolve(raw: &RawLimits, plan_dir: &Path) -> (Limits, Vec<Problem>) {
    let mut problems: Vec<Problem> = Vec::new();
    let mut push = |field: String, message: String, hint: Option<&str>| {
        problems.push((field, message, hint.map(str::to_string)));
    };
    let etcd = &raw.etcd;
    if etcd.endpoints.is_empty() {
        push(
            "limits.etcd.endpoints".into(),
            "no etcd endpoints".into(),
            Some("e.g. `endpoints: [\"https://etcd.internal:2379\"]`"),
        );
    }
    for url in &etcd.endpoints {
        let parsed = reqwest::Url::parse(url);
        let ok = parsed
            .as_ref()
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            push(
                "limits.etcd.endpoints".into(),
                format!("`{url}` is not an http(s) URL"),
                Some("etcd's JSON gateway listens on the client URL, e.g. `http://127.0.0.1:2379`"),
            );
        }
    }
    let mut prefix = etcd.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into());
    if !prefix.starts_with('/') || prefix.contains('\0') {
        push(
            "limits.etcd.prefix".into(),
            format!("the prefix `{prefix}` does not start with `/`"),
            Some("e.g. `prefix: /bootplan/limits/`"),
        );
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let ttl = etcd.ttl.map_or(DEFAULT_TTL, HumanDuration::get);
    if ttl < Duration::from_secs(2) {
        push(
            "limits.etcd.ttl".into(),
            "the lease TTL must be at least 2s".into(),
            Some(
                "etcd counts TTLs in whole seconds; a slot is freed this long after its holder dies",
            ),
        );
    }
    let timeout = etcd.timeout.map_or(DEFAULT_TIMEOUT, HumanDuration::get);
    if timeout.is_zero() {
        push(
            "limits.etcd.timeout".into(),
            "the request timeout must be above zero".into(),
            None,
        );
    }
    let poll_interval = etcd.poll_interval.map_or(DEFAULT_POLL, HumanDuration::get);
    if poll_interval < Duration::from_millis(10) {
        push(
            "limits.etcd.poll_interval".into(),
            "the poll interval must be at least 10ms".into(),
            Some("1s is kind to etcd for a fleet of hundreds"),
        );
    }
    let attempts = etcd.attempts.unwrap_or(DEFAULT_ATTEMPTS);
    if attempts == 0 {
        push(
            "limits.etcd.attempts".into(),
            "at least one attempt".into(),
            None,
        );
    }
    if etcd.ca_only && etcd.ca_file.is_none() {
        push(
            "limits.etcd.ca_only".into(),
            "`ca_only` needs a `ca_file` to trust".into(),
            None,
        );
    }
    if raw.semaphores.is_empty() {
        push(
            "limits.semaphores".into(),
            "no semaphores".into(),
            Some("e.g. `semaphores: { migrate: { slots: 1 } }`"),
        );
    }
    let mut semaphores = IndexMap::new();
    for (name, sem) in &raw.semaphores {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            push(
                format!("limits.semaphores.{name}"),
                format!("invalid semaphore name `{name}`"),
                Some("use letters, digits, `-`, `_` and `.` only"),
            );
        }
        if sem.slots == 0 || sem.slots > MAX_SLOTS {
            push(
                format!("limits.semaphores.{name}.slots"),
                format!(
                    "a semaphore has at least 1 slot and at most {MAX_SLOTS}, not {}",
                    sem.slots
                ),
                Some("`slots: 1` lets one machine of the fleet in at a time"),
            );
        }
        semaphores.insert(
            name.clone(),
            Semaphore {
                name: name.clone(),
                slots: sem.slots.max(1),
                on_unavailable: sem
                    .on_unavailable
                    .or(raw.on_unavailable)
                    .unwrap_or_default(),
            },
        );
    }
    let limits = Limits {
        endpoints: etcd
            .endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect(),
        prefix,
        ca_file: etcd.ca_file.as_ref().map(|f| plan_dir.join(f)),
        ca_only: etcd.ca_only,
        ttl,
        timeout,
        poll_interval,
        attempts: attempts.max(1),
        semaphores,
    };
    (limits, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawLimits {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_good_block_resolves_with_defaults() {
        let (limits, problems) = resolve(
            &raw(
                "etcd: { endpoints: [\"http://127.0.0.1:2379/\"], ca_file: ca.pem }\nsemaphores: { migrate: { slots: 2 }, mirror: { slots: 50, on_unavailable: proceed } }\n",
            ),
            Path::new("/plans"),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(limits.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(limits.prefix, DEFAULT_PREFIX);
        assert_eq!(limits.ttl, DEFAULT_TTL);
        assert_eq!(limits.ca_file, Some(PathBuf::from("/plans/ca.pem")));
        assert_eq!(limits.semaphores["migrate"].slots, 2);
        assert_eq!(
            limits.semaphores["migrate"].on_unavailable,
            OnUnavailable::Fail
        );
        assert_eq!(
            limits.semaphores["mirror"].on_unavailable,
            OnUnavailable::Proceed
        );
    }

    #[test]
    fn every_problem_is_named() {
        let (_, problems) = resolve(
            &raw(
                "etcd: { endpoints: [\"127.0.0.1:2379\", \"ftp://x\"], prefix: nope, ttl: 1s, poll_interval: 1ms, ca_only: true }\nsemaphores: { migrate: { slots: 0 } }\n",
            ),
            Path::new("."),
        );
        let fields: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "limits.etcd.endpoints",
                "limits.etcd.endpoints",
                "limits.etcd.prefix",
                "limits.etcd.ttl",
                "limits.etcd.poll_interval",
                "limits.etcd.ca_only",
                "limits.semaphores.migrate.slots"
            ]
        );
    }

    #[test]
    fn a_splay_is_drawn_inside_its_range() {
        let splay = StartSplay {
            min: Duration::from_millis(100),
            max: Duration::from_millis(300),
        };
        for _ in 0..200 {
            let d = splay.draw();
            assert!(d >= splay.min && d <= splay.max, "{d:?}");
        }
    }
}
