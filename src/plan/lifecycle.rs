//! Plan sections for the lifecycle around the steps: service restart
//! policies, supervision, the readiness file, registration in etcd and the
//! report webhook. Raw types (a mirror of the file) and their resolved forms
//! live together here; `resolve_plan` and `resolve_step` check them and
//! return every problem as a [`Diagnostic`].
//!
//! To add a registry backend: add a field to [`RawRegister`], a variant to
//! [`Registry`], and a client in `lifecycle::register`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::diagnostic::{Diagnostic, Position};
use super::duration::HumanDuration;
use super::refs;
use super::report::Problems;
pub use super::report::{RawReport, ReportSpec};

const DEFAULT_RESTART_LIMIT: u32 = 3;
const DEFAULT_RESTART_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(10));
const DEFAULT_ETCD_TTL: Duration = Duration::from_secs(15);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// When a service that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartOn {
    /// After a non-zero exit or a signal (the default).
    #[default]
    Failure,
    /// After any exit, clean or not.
    Always,
    /// Never: the first exit is final.
    Never,
}

/// `restart:` on a `service` step.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    /// `failure` (default), `always` or `never`.
    #[serde(default)]
    pub on: RestartOn,
    /// Most restarts over the service's life. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Delay range `MIN..MAX` before a restart, doubling each time. Default `1s..10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<super::duration::Backoff>,
}

/// `supervise:` — bootplan stays the parent of the `exec` app.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSupervise {
    /// Supervise even without services (as `--supervise`). Supervision is
    /// automatic with services, as PID 1, with `ready` on the exec step, or with `register`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// On SIGTERM or failure, how long the app and then each service get
    /// between SIGTERM and SIGKILL. Default: the plan's `kill_grace`.
    #[serde(default)]
    pub stop_grace: Option<HumanDuration>,
}

/// `register:` — announce the instance once the app is ready.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegister {
    /// Register in etcd (v3 JSON gateway), under a key attached to a lease.
    pub etcd: RawEtcd,
}

/// Etcd registration settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    /// Client URLs, tried in order, e.g. `["https://10.0.0.5:2379"]`.
    pub endpoints: Vec<String>,
    /// The key (may use templates), e.g. `/services/web/{{ facts.instance_id }}`.
    pub key: String,
    /// Lease time to live: the entry disappears this long after bootplan dies. Default 15s.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// The address to announce (may use templates). Default: `facts.local_ipv4`, else the hostname.
    #[serde(default)]
    pub address: Option<String>,
    /// The port to announce.
    #[serde(default)]
    pub port: Option<u16>,
    /// PEM CA bundle for `https://` endpoints, relative to the plan file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Trust only `ca_file`, not the public web roots.
    #[serde(default)]
    pub ca_only: bool,
    /// Allow the password over plain `http://` to a host other than this
    /// machine (warned on every run). Default: refused.
    #[serde(default)]
    pub insecure_http: bool,
    /// User for etcd authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for etcd authentication: use `{{ secrets.NAME }}`.
    #[serde(default)]
    pub password: Option<String>,
    /// Limit for each request. Default 2s.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// A service's resolved restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RestartPolicy {
    pub on: RestartOn,
    pub limit: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            on: RestartOn::Failure,
            limit: DEFAULT_RESTART_LIMIT,
            min_backoff: DEFAULT_RESTART_BACKOFF.0,
            max_backoff: DEFAULT_RESTART_BACKOFF.1,
        }
    }
}

impl RestartPolicy {
    /// Whether an exit (`clean`: status 0) earns a restart, ignoring the limit.
    pub fn wants_restart(&self, clean: bool) -> bool {
        match self.on {
            RestartOn::Always => true,
            RestartOn::Failure => !clean,
            RestartOn::Never => false,
        }
    }

    /// The delay before restart number `n` (1-based): MIN·2^(n-1), at most MAX.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.min_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// The plan's lifecycle settings, resolved.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// `supervise.enabled`.
    pub supervise: bool,
    /// Grace for stopping the app and each service; `None`: the plan's kill_grace.
    pub stop_grace: Option<Duration>,
    /// `ready_file`, resolved against the plan's directory; `None`: RUN_DIR/ready.
    pub ready_file: Option<PathBuf>,
    pub register: Option<Registry>,
    pub report: Option<ReportSpec>,
    /// `compat:`.
    pub compat: Compat,
}

/// Status files other tools read, written beside bootplan's own (`compat:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CompatName {
    /// cloud-init's `/run/cloud-init/status.json` and `result.json` and
    /// `/var/lib/cloud/instance/boot-finished`, so tools that wait on
    /// `cloud-init status --wait` see bootplan's verdict.
    CloudInit,
}

/// Which compatibility outputs a run writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compat {
    pub cloud_init: bool,
}

impl Compat {
    /// Both sets: what the plan asks for, and what the command line adds.
    pub fn union(self, other: Compat) -> Compat {
        Compat {
            cloud_init: self.cloud_init || other.cloud_init,
        }
    }

    pub fn from_name(name: Option<CompatName>) -> Compat {
        Compat {
            cloud_init: name == Some(CompatName::CloudInit),
        }
    }
}

/// Where to register.
#[derive(Debug, Clone)]
pub enum Registry {
    Etcd(EtcdSpec),
}

/// Etcd registration, resolved (templates still unrendered).
#[derive(Debug, Clone)]
pub struct EtcdSpec {
    pub endpoints: Vec<String>,
    pub key: String,
    pub ttl: Duration,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub ca_file: Option<PathBuf>,
    pub ca_only: bool,
    pub insecure_http: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
    /// Secrets the key, address and password templates use.
    pub secret_refs: Vec<String>,
}

/// The names templates may use, for checking registration templates.
pub struct Names<'a> {
    pub secrets: &'a BTreeSet<String>,
    pub vars: &'a BTreeSet<String>,
    pub facts: &'a [&'a str],
}

/// Checks the plan-level lifecycle sections.
pub fn resolve_plan(
    file: &Path,
    plan_dir: &Path,
    supervise: Option<&RawSupervise>,
    ready_file: Option<&str>,
    register: Option<&RawRegister>,
    report: Option<&RawReport>,
    names: &Names,
) -> (Lifecycle, Vec<Diagnostic>) {
    let mut p = Problems {
        file,
        found: Vec::new(),
    };
    let lifecycle = Lifecycle {
        supervise: supervise.and_then(|s| s.enabled).unwrap_or(false),
        stop_grace: supervise.and_then(|s| s.stop_grace).map(HumanDuration::get),
        ready_file: ready_file.map(|f| plan_dir.join(f)),
        register: register.map(|r| Registry::Etcd(etcd(&r.etcd, plan_dir, names, &mut p))),
        report: report.map(|r| {
            let (spec, found) = super::report::resolve(file, r);
            p.found.extend(found);
            spec
        }),
        compat: Compat::default(),
    };
    (lifecycle, p.found)
}

fn etcd(raw: &RawEtcd, plan_dir: &Path, names: &Names, p: &mut Problems) -> EtcdSpec {
    let field = "register.etcd";
    if raw.endpoints.is_empty() {
        p.push(
            format!("{field}.endpoints"),
            "no etcd endpoints",
            Some("e.g. `endpoints: [\"http://127.0.0.1:2379\"]`"),
        );
    }
    for url in &raw.endpoints {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            p.push(
                format!("{field}.endpoints"),
                format!("`{url}` is not an http(s) URL"),
                Some("etcd's JSON gateway listens on the client URL, e.g. `http://127.0.0.1:2379`"),
            );
        }
    }
    if raw.key.trim().is_empty() {
        p.push(format!("{field}.key"), "the key is empty", None);
    }
    let ttl = raw.ttl.map_or(DEFAULT_ETCD_TTL, HumanDuration::get);
    if ttl < Duration::from_secs(2) {
        p.push(
            format!("{field}.ttl"),
            "the lease TTL must be at least 2s",
            Some("etcd counts TTLs in whole seconds; 10s to 30s is usual"),
        );
    }
    if raw.username.is_some() != raw.password.is_some() {
        p.push(
            field,
            "`username` and `password` go together",
            Some("set both, or neither for an etcd without auth"),
        );
    }
    if raw.password.is_some() {
        for url in &raw.endpoints {
            if reqwest::Url::parse(url).is_ok()
                && let Err(message) =
                    crate::http::credential_transport(url, raw.insecure_http, "the etcd password")
            {
                p.push(
                    format!("{field}.endpoints"),
                    message,
                    Some("etcd serves TLS on its client URL with `--cert-file`/`--key-file`"),
                );
            }
        }
    }
    if raw.ca_only && raw.ca_file.is_none() {
        p.push(
            format!("{field}.ca_only"),
            "`ca_only` needs a `ca_file` to trust",
            None,
        );
    }
    let mut secret_refs = BTreeSet::new();
    let texts = [
        ("key", Some(&raw.key)),
        ("address", raw.address.as_ref()),
        ("password", raw.password.as_ref()),
    ];
    for (key, text) in texts {
        let Some(text) = text else { continue };
        check_refs(&format!("{field}.{key}"), text, names, &mut secret_refs, p);
    }
    if raw
        .password
        .as_ref()
        .is_some_and(|pw| !refs::is_template(pw))
    {
        p.push(
            format!("{field}.password"),
            "a literal password in the plan",
            Some("declare it under `secrets:` and write `{{ secrets.NAME }}`"),
        );
    }
    EtcdSpec {
        endpoints: raw
            .endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect(),
        key: raw.key.clone(),
        ttl,
        address: raw.address.clone(),
        port: raw.port,
        ca_file: raw.ca_file.as_ref().map(|f| plan_dir.join(f)),
        ca_only: raw.ca_only,
        insecure_http: raw.insecure_http,
        username: raw.username.clone(),
        password: raw.password.clone(),
        timeout: raw
            .timeout
            .map_or(DEFAULT_REQUEST_TIMEOUT, HumanDuration::get),
        secret_refs: secret_refs.into_iter().collect(),
    }
}

fn check_refs(
    field: &str,
    text: &str,
    names: &Names,
    secrets: &mut BTreeSet<String>,
    p: &mut Problems,
) {
    let found = match refs::references(text) {
        Ok(found) => found,
        Err(msg) => {
            p.push(field, msg, None);
            return;
        }
    };
    for reference in found {
        let name = reference.name.clone().unwrap_or_default();
        let known = match reference.root.as_str() {
            "env" => true,
            "secrets" => names.secrets.contains(&name),
            "vars" => names.vars.contains(&name),
            "facts" => names.facts.contains(&name.as_str()),
            _ => false,
        };
        if !known {
            p.push(
                field,
                format!("the template uses unknown `{}.{name}`", reference.root),
                Some("templates see declared secrets.*, vars.*, facts.* and env.*"),
            );
        } else if reference.root == "secrets" {
            secrets.insert(name);
        }
    }
}

/// Checks a step's `restart` and `required` and returns its restart policy.
pub fn resolve_step(
    file: &Path,
    position: Option<Position>,
    field: &str,
    is_service: bool,
    restart: Option<&RawRestart>,
    required: Option<bool>,
) -> (RestartPolicy, Vec<Diagnostic>) {
    let mut p = Problems {
        file,
        found: Vec::new(),
    };
    if !is_service && (restart.is_some() || required.is_some()) {
        p.push(
            field,
            "`restart` and `required` apply to `service` steps only",
            Some("use `retry` to try a command again"),
        );
    }
    let mut policy = RestartPolicy::default();
    if let Some(raw) = restart {
        policy.on = raw.on;
        policy.limit = raw.limit.unwrap_or(DEFAULT_RESTART_LIMIT);
        if let Some(backoff) = raw.backoff {
            policy.min_backoff = backoff.min;
            policy.max_backoff = backoff.max;
        }
    }
    for d in &mut p.found {
        d.position = position;
    }
    (policy, p.found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_double_up_to_the_maximum() {
        let policy = RestartPolicy {
            on: RestartOn::Failure,
            limit: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let delays: Vec<u128> = (1..=4).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert_eq!(policy.delay(200), Duration::from_millis(350));
    }

    fn names() -> (BTreeSet<String>, BTreeSet<String>) {
        (BTreeSet::from(["pw".to_string()]), BTreeSet::new())
    }

    fn etcd_raw() -> RawEtcd {
        RawEtcd {
            endpoints: vec!["http://127.0.0.1:2379/".into()],
            key: "/services/{{ facts.instance_id }}".into(),
            ttl: None,
            address: None,
            port: Some(80),
            ca_file: Some("ca.pem".into()),
            ca_only: false,
            insecure_http: false,
            username: None,
            password: None,
            timeout: None,
        }
    }

    fn check(register: Option<RawRegister>, report: Option<RawReport>) -> (Lifecycle, Vec<String>) {
        let (secrets, vars) = names();
        let names = Names {
            secrets: &secrets,
            vars: &vars,
            facts: &["instance_id"],
        };
        let (lifecycle, found) = resolve_plan(
            Path::new("/p/plan.yaml"),
            Path::new("/p"),
            None,
            Some("ready"),
            register.as_ref(),
            report.as_ref(),
            &names,
        );
        (
            lifecycle,
            found
                .into_iter()
                .map(|d| format!("{}: {}", d.field, d.message))
                .collect(),
        )
    }

    #[test]
    fn a_good_etcd_section_resolves_with_defaults_and_paths() {
        let mut raw = etcd_raw();
        raw.username = Some("web".into());
        raw.password = Some("{{ secrets.pw }}".into());
        let (lifecycle, problems) = check(Some(RawRegister { etcd: raw }), None);
        assert!(problems.is_empty(), "{problems:?}");
        let Some(Registry::Etcd(spec)) = lifecycle.register else {
            panic!("no etcd")
        };
        assert_eq!(
            spec.endpoints,
            ["http://127.0.0.1:2379"],
            "trailing slash trimmed"
        );
        assert_eq!(spec.ttl, DEFAULT_ETCD_TTL);
        assert_eq!(spec.ca_file.as_deref(), Some(Path::new("/p/ca.pem")));
        assert_eq!(spec.secret_refs, ["pw"]);
        assert_eq!(lifecycle.ready_file.as_deref(), Some(Path::new("/p/ready")));
    }

    #[test]
    fn bad_registration_and_report_sections_say_what_is_wrong() {
        let mut raw = etcd_raw();
        raw.endpoints = vec!["127.0.0.1:2379".into()];
        raw.ttl = Some(HumanDuration(Duration::from_secs(1)));
        raw.username = Some("web".into());
        raw.key = "/s/{{ secrets.nope }}".into();
        let report: RawReport =
            serde_saphyr::from_str("{ webhook: \"ftp://x\", attempts: 0 }").expect("parses");
        let (_, problems) = check(Some(RawRegister { etcd: raw }), Some(report));
        let text = problems.join("\n");
        for expected in [
            "register.etcd.endpoints: `127.0.0.1:2379` is not an http(s) URL",
            "register.etcd.ttl: the lease TTL must be at least 2s",
            "register.etcd: `username` and `password` go together",
            "register.etcd.key: the template uses unknown `secrets.nope`",
            "report.webhook: `ftp://x` is not an http(s) URL",
            "report.attempts: attempts must be between 1 and 10",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    #[test]
    fn failure_policy_restarts_only_failures() {
        let policy = RestartPolicy::default();
        assert!(policy.wants_restart(false));
        assert!(!policy.wants_restart(true));
    }
}
