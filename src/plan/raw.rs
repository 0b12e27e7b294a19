//! Raw plan types: a faithful mirror of the plan file, with no I/O and no
//! cross-field checks. `plan::validate` turns these into a [`super::Plan`].
//!
//! Every struct rejects unknown fields so a typo is an error, not a silently
//! ignored setting. A step's kind is chosen by which kind key it carries
//! (`run`, `shell`, `file`, …); validation checks that exactly one is present.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::duration::HumanDuration;

/// The whole plan file. `S` is what a step is parsed into: [`RawStep`],
/// or, for a second look at a plan whose steps did not all parse, any
/// value (each step is then parsed on its own, so every broken step is
/// reported, not only the first).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, bound(deserialize = "S: Deserialize<'de>"))]
#[schemars(
    title = "bootplan plan",
    description = "A bootplan plan: steps that take a machine from blank to ready."
)]
pub struct RawPlan<S = RawStep> {
    /// Format version; only `1` exists.
    #[schemars(with = "u32")]
    pub version: Spanned<u32>,
    /// A short name for the plan, used in the status file, metrics and the journal.
    pub name: String,
    /// What this plan is for.
    #[serde(default)]
    pub description: Option<String>,
    /// The whole bootstrap must finish within this (e.g. `120s`, `5m`). Default 15m.
    #[serde(default)]
    pub deadline: Option<HumanDuration>,
    /// How many steps may run at the same time. Default 16.
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// When a step fails, run the `undo` of steps completed in this run, newest first.
    #[serde(default)]
    pub rollback: bool,
    /// How long a cancelled step's process group gets between SIGTERM and SIGKILL. Default 5s.
    #[serde(default)]
    pub kill_grace: Option<HumanDuration>,
    /// Plan variables, visible to templates as `vars.*`.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, serde_json::Value>")]
    pub vars: IndexMap<String, serde_json::Value>,
    /// Where the journal lives, relative to the plan file. `--state-dir` and
    /// `BOOTPLAN_STATE_DIR` override it. Default `/var/lib/bootplan`.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// Where the status file, readiness file and secret files go, relative to
    /// the plan file. `--run-dir` and `BOOTPLAN_RUN_DIR` override it. Default `/run/bootplan`.
    #[serde(default)]
    pub run_dir: Option<String>,
    /// Fact gathering settings.
    #[serde(default)]
    pub facts: Option<RawFacts>,
    /// Named secrets: where each comes from. Visible to templates as `secrets.*`.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, super::secret_source::SecretSource>")]
    pub secrets: IndexMap<String, Spanned<super::secret_source::SecretSource>>,
    /// Secret backend settings (Vault address and auth, AWS region, ...).
    #[serde(default)]
    pub backends: super::secret_source::BackendsConfig,
    /// The steps, by name. Order in the file does not matter: `needs` decides.
    #[schemars(with = "IndexMap<String, RawStep>")]
    pub steps: IndexMap<String, Spanned<S>>,
    /// How many runs' final status `bootplan status --history` and
    /// `bootplan analyze --list` keep in the state directory. Default 20; 0 keeps none.
    #[serde(default)]
    pub history: Option<u32>,
    /// Keep bootplan as the parent of the `exec` app (signals, reaping, shutdown order).
    #[serde(default)]
    pub supervise: Option<super::lifecycle::RawSupervise>,
    /// The readiness file, written when the plan is ready and removed at the
    /// start of each run. Relative to the plan file. Default `RUN_DIR/ready`.
    #[serde(default)]
    pub ready_file: Option<String>,
    /// Register the instance in a service registry once the app is ready.
    #[serde(default)]
    pub register: Option<super::lifecycle::RawRegister>,
    /// POST the final status to a webhook, on success and on every failure.
    #[serde(default)]
    pub report: Option<super::lifecycle::RawReport>,
    /// Where metrics and traces go. See docs/plan.md, "Telemetry".
    #[serde(default)]
    pub telemetry: Option<super::telemetry::RawTelemetry>,
    /// Fleet-wide concurrency limits: semaphores on etcd leases that steps
    /// take with `throttle: NAME`.
    #[serde(default)]
    pub limits: Option<super::limits::RawLimits>,
    /// A random delay `MIN..MAX` (e.g. `0s..20s`) before the first step that
    /// does work, so a fleet started together spreads out. Never applied
    /// when every step is skipped.
    #[serde(default)]
    pub start_splay: Option<super::duration::Backoff>,
    /// Other plan files whose steps, secrets, vars and backends are merged
    /// into this one: local paths, or URLs pinned (`URL#sha256=…`) or signed.
    #[serde(default)]
    #[schemars(with = "Vec<RawInclude>")]
    pub include: Vec<Spanned<RawInclude>>,
    /// Settings of the download cache.
    #[serde(default)]
    pub downloads: Option<super::download::RawDownloads>,
    /// Also write another tool's status files: `cloud-init` writes
    /// cloud-init's (`/run/cloud-init/status.json`, `result.json`,
    /// `/var/lib/cloud/instance/boot-finished`) for tools that wait on
    /// `cloud-init status --wait`.
    #[serde(default)]
    pub compat: Option<super::lifecycle::CompatName>,
}

impl<S> RawPlan<S> {
    /// The same plan with other steps.
    pub fn with_steps<T>(self, steps: IndexMap<String, Spanned<T>>) -> RawPlan<T> {
        RawPlan {
            version: self.version,
            name: self.name,
            description: self.description,
            deadline: self.deadline,
            max_parallel: self.max_parallel,
            rollback: self.rollback,
            kill_grace: self.kill_grace,
            vars: self.vars,
            state_dir: self.state_dir,
            run_dir: self.run_dir,
            facts: self.facts,
            secrets: self.secrets,
            backends: self.backends,
            steps,
            history: self.history,
            supervise: self.supervise,
            ready_file: self.ready_file,
            register: self.register,
            report: self.report,
            telemetry: self.telemetry,
            limits: self.limits,
            start_splay: self.start_splay,
            include: self.include,
            downloads: self.downloads,
            compat: self.compat,
        }
    }
}

/// Fact gathering settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFacts {
    /// Which metadata provider to use: `auto` (default: decide from local
    /// evidence — DMI, kernel command line, config drive, seed dirs — and ask
    /// only that one), or one of `aws`, `gcp`, `azure`, `openstack`,
    /// `digitalocean`, `nocloud`, `local` (never guesses).
    #[serde(default)]
    pub provider: Option<String>,
    /// When no provider is found or the chosen one does not answer within the
    /// budget: `local` (carry on with local facts) or `fail` (exit 69,
    /// `facts.unreachable`). Default `local` for `auto`, `fail` for a pinned provider.
    #[serde(default)]
    pub fallback: Option<FactsFallback>,
    /// Time for the whole detection, all retries included. Default 5s.
    #[serde(default)]
    pub budget: Option<HumanDuration>,
    /// Limit for one metadata request attempt. Default 1s.
    #[serde(default)]
    pub attempt_timeout: Option<HumanDuration>,
    /// Metadata endpoint per provider (e.g. `aws: http://127.0.0.1:8080`),
    /// overriding the platform's address. `BOOTPLAN_METADATA_URL_<PROVIDER>` overrides these.
    #[serde(default)]
    pub endpoints: IndexMap<String, String>,
}

/// What happens when facts cannot be gathered from a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FactsFallback {
    /// Carry on with local facts (`facts.cloud` is `local`).
    Local,
    /// Fail the run with `facts.unreachable` (exit 69) before any step runs.
    Fail,
}

/// One step. Exactly one kind key (`run`, `shell`, `file`, `template`, `wait`,
/// `exec`, `service`, `user`, `group`, `packages`, `hostname`, `sysctl`,
/// `unit`, `ssh_host_keys`, `download`) must be present; the other fields are common to
/// all kinds. `user` and `group` are kinds when they are mappings, and the
/// account a command runs as when they are names.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Run a command: an argv array, no shell involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Vec<String>>,
    /// Run a script with `/bin/sh -c`. Explicit on purpose: secrets may not appear here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Write a file atomically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<RawFile>,
    /// Render a MiniJinja template to a file atomically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<RawTemplate>,
    /// Wait until something is up: a TCP port, an HTTP URL, a file or a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<RawWait>,
    /// The final process: bootplan replaces itself with it once every other step is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// A long-running process started by bootplan, done once its `ready` check passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Vec<String>>,
    /// A mapping: create or update a user (the `user` kind). A name: the
    /// account a run, shell, service or exec command runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<super::os::UserField>,
    /// A mapping: create or update a group (the `group` kind). A name: the
    /// primary group a command runs with (with `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<super::os::GroupField>,
    /// Install and remove packages in one transaction of the system's package manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<super::os::RawPackages>,
    /// Set the host name (kernel, /etc/hostname, optionally /etc/hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<super::os::RawHostname>,
    /// Kernel settings (`net.core.somaxconn: 4096`): applied and kept in /etc/sysctl.d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<IndexMap<String, super::os::Scalar>>")]
    pub sysctl: Option<IndexMap<String, super::os::Scalar>>,
    /// A systemd unit or drop-in: written, enabled, started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<super::os::RawUnit>,
    /// Make new SSH host keys on a cloned disk, and print their fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_keys: Option<super::os::RawSshHostKeys>,
    /// Fetch a file (and unpack it), verified by its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<super::download::RawDownload>,

    /// What this step does, for people.
    #[serde(default, skip_serializing)]
    pub description: Option<String>,
    /// Steps that must be done before this one starts.
    #[serde(default, skip_serializing)]
    #[schemars(with = "Vec<String>")]
    pub needs: Vec<Spanned<String>>,
    /// Environment variables for the command (values may use templates).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, String>,
    /// Working directory for the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Limit for each attempt (for `wait`: for the whole wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Retry a failed attempt with exponential backoff and full jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RawRetry>,
    /// When the step runs again on later runs. Default `per-instance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<Frequency>,
    /// Skip the step when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<String>,
    /// Skip the step when this command (argv) exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<Vec<String>>,
    /// `fail` (default) stops the run; `continue` records the failure and goes on (degraded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// A command (argv) that rolls this step back, run when the plan has `rollback: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Vec<String>>,
    /// Readiness check for `service` steps (and the `exec` app when supervised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<RawWait>,
    /// Restart policy for `service` steps. Default: on failure, limit 3, backoff `1s..10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<super::lifecycle::RawRestart>,
    /// For `service` steps: whether the run (or the supervised app) stops when
    /// the service is gone for good. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Run the step only when this MiniJinja expression over `facts.*` and
    /// `vars.*` is true, e.g. `facts.cloud == "aws"`; otherwise it is skipped
    /// with the reason shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Secrets this step needs that none of its templates names, e.g. ones it
    /// reads from their `to_file` file. Fetched (and written) before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// For `template` steps: what happens when a refreshed secret changes
    /// what the template renders (see `refresh` on a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_change: Option<super::change::RawOnChange>,
    /// With `user`: the command's supplementary groups, exactly these.
    /// Default: the user's groups in the group database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// The command's umask, octal in a string (e.g. `"0027"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<String>,
    /// Start the command with `no_new_privs`: setuid binaries and file
    /// capabilities grant it nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privs: Option<bool>,
    /// The command's resource limits (`nofile`, `nproc`, `core`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<super::os::RawLimits>,
    /// For `service` and `exec` steps: the signal that asks the process to
    /// stop (default `SIGTERM`), e.g. `SIGQUIT` for nginx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Take a slot of this semaphore (from `limits.semaphores`) before the
    /// step starts; it is given back when the step ends, however it ends.
    #[serde(default, skip_serializing)]
    pub throttle: Option<String>,
    /// This step replaces a step of the same name from an included file.
    #[serde(default, rename = "override", skip_serializing)]
    pub replaces: bool,
}

/// `file:` step body.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// Destination path (may use templates).
    pub path: String,
    /// Literal content, written as is (no template rendering: use `template` for that).
    #[serde(default)]
    pub content: String,
    /// Octal permission bits, e.g. `"0644"`. Default `0644`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<super::duration::Mode>,
    /// `user` or `user:group`; needs root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `template:` step body: exactly one of `src` or `inline`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    /// Template file, relative to the plan file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Template text given inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Destination path (may use templates).
    pub dest: String,
    /// Octal permission bits, e.g. `"0640"`. Default `0644`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<super::duration::Mode>,
    /// `user` or `user:group`; needs root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A condition to wait for: exactly one of `tcp`, `http`, `file`, `command`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWait {
    /// `host:port` that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// URL that must answer with a 2xx status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Path that must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Command (argv) that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `true`: the process itself says READY=1 through sd_notify on the
    /// `NOTIFY_SOCKET` bootplan gives it (`ready` of services and exec only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<bool>,
    /// Time between checks. Default 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Limit for one check (connect, request or command). Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout: Option<HumanDuration>,
}

/// Retry policy for a step.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total attempts, including the first. At least 1.
    pub attempts: u32,
    /// Backoff range `MIN..MAX`, e.g. `1s..30s`; each delay is drawn uniformly
    /// from zero to min(MAX, MIN·2^n) (full jitter). Default `500ms..30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<super::duration::Backoff>,
}

/// When a step runs again on a later run of the same plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Frequency {
    /// Every run.
    Always,
    /// Once per kernel boot (keyed on the boot id).
    PerBoot,
    /// Once per instance (keyed on the instance id and the machine id).
    PerInstance,
    /// Once, ever (until `bootplan reset`).
    Once,
}

impl Frequency {
    pub fn as_str(self) -> &'static str {
        match self {
            Frequency::Always => "always",
            Frequency::PerBoot => "per-boot",
            Frequency::PerInstance => "per-instance",
            Frequency::Once => "once",
        }
    }
}

/// What a step's failure does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Fail the run (the default: fail closed).
    #[default]
    Fail,
    /// Record the failure, mark the run degraded, and go on.
    Continue,
}

/// One `include:` entry: a path, or a URL with its pin (`URL#sha256=HEX`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct RawInclude(pub String);
