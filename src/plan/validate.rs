//! Second loading phase: check a [`RawPlan`] as a whole and build a [`Plan`].
//!
//! Every check pushes a [`Diagnostic`] and carries on, so one run of
//! `bootplan check` reports every problem. The only I/O is reading template
//! sources named by `template.src`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::diagnostic::{Diagnostic, Position, Severity, did_you_mean};
use super::facts::FACT_NAMES;
use super::raw::{Frequency, RawPlan, RawStep, RawWait};
use super::refs::{self, ROOTS, Reference};
use super::{FileSpec, Plan, RetryPolicy, Step, StepKind, TemplateSpec, WaitSpec, WaitTarget};

const DEFAULT_DEADLINE: Duration = Duration::from_secs(15 * 60);
const DEFAULT_MAX_PARALLEL: u32 = 16;
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_HISTORY: u32 = 20;
const MAX_HISTORY: u32 = 1000;
const DEFAULT_WAIT_INTERVAL: Duration = Duration::from_millis(500);
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const KIND_KEYS: [&str; 15] = [
    "run",
    "shell",
    "file",
    "template",
    "wait",
    "exec",
    "service",
    "user",
    "group",
    "packages",
    "hostname",
    "sysctl",
    "unit",
    "ssh_host_keys",
    "download",
];

/// Validates `raw` (parsed from `text` at `path`) into a runnable plan.
///
/// `broken` are steps that did not parse (reported already): they count as
/// known names for `needs` and take part in the cycle check, and the plan
/// is invalid.
pub fn resolve(
    path: &Path,
    text: &str,
    raw: RawPlan,
    broken: Vec<BrokenStep>,
) -> Result<Plan, Vec<Diagnostic>> {
    resolve_merged(path, text, raw, broken, super::include::Sources::default())
}

/// [`resolve`] for a plan with its includes merged: each problem names
/// the file its step or secret came from.
pub fn resolve_merged(
    path: &Path,
    text: &str,
    raw: RawPlan,
    broken: Vec<BrokenStep>,
    sources: super::include::Sources,
) -> Result<Plan, Vec<Diagnostic>> {
    let mut v = Validator {
        file: path.to_path_buf(),
        plan_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        diagnostics: Vec::new(),
        sources,
    };
    let mut plan = v.plan(text, raw, &broken);
    plan.digest = v.sources.digest(text);
    v.locate_unplaced(text);
    if !broken.is_empty() {
        return Err(v.diagnostics);
    }
    if v.error_count() == 0 {
        plan.warnings = v.diagnostics;
        Ok(plan)
    } else {
        Err(v.diagnostics)
    }
}

/// A step that did not parse: its name, where it is, and the steps it
/// names in `needs` (as far as they could be read), so that the rest of
/// the plan can still be checked around it.
#[derive(Debug, Clone)]
pub struct BrokenStep {
    pub name: String,
    pub position: Option<Position>,
    pub needs: Vec<String>,
}

struct Validator {
    file: PathBuf,
    plan_dir: PathBuf,
    diagnostics: Vec<Diagnostic>,
    /// Where included steps and secrets came from.
    sources: super::include::Sources,
}

/// Context for checking one step's template references.
struct RefScope<'a> {
    secrets: &'a BTreeSet<String>,
    vars: &'a BTreeSet<String>,
    /// Environment variables that hold secrets (`env.NAME` of these is a secret).
    secret_env: &'a BTreeSet<String>,
}

impl RefScope<'_> {
    /// Whether `reference` reads a secret, directly or through `env.*`.
    fn is_secret(&self, reference: &Reference) -> bool {
        match (reference.root.as_str(), &reference.name) {
            ("secrets", _) => true,
            ("env", Some(name)) => self.secret_env.contains(name),
            _ => false,
        }
    }
}

impl Validator {
    fn error(
        &mut self,
        position: Option<Position>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(
            Severity::Error,
            position,
            field.into(),
            message.into(),
            hint,
        );
    }

    fn warn(
        &mut self,
        position: Option<Position>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(
            Severity::Warning,
            position,
            field.into(),
            message.into(),
            hint,
        );
    }

    fn push(
        &mut self,
        severity: Severity,
        position: Option<Position>,
        field: String,
        message: String,
        hint: Option<String>,
    ) {
        let file = match self.sources.file_of(&field) {
            Some((file, _)) => file.clone(),
            None => self.file.clone(),
        };
        self.diagnostics.push(Diagnostic {
            severity,
            file,
            position,
            field,
            message,
            hint,
        });
    }

    /// Reports what `plan::os` found, each at its field's position.
    fn os_problems(&mut self, problems: Vec<super::os::Problem>) {
        for p in problems {
            if p.warning {
                self.warn(None, p.field, p.message, p.hint);
            } else {
                self.error(None, p.field, p.message, p.hint);
            }
        }
    }

    /// How many errors (not warnings) were found so far.
    fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Gives every diagnostic without a position the position of its field
    /// in the file (found by its dotted path), else the top of the file.
    fn locate_unplaced(&mut self, text: &str) {
        for d in self.diagnostics.iter_mut().filter(|d| d.position.is_none()) {
            // An included file's problem is looked for in that file's text.
            let text = self
                .sources
                .files
                .iter()
                .find(|(file, _)| *file == d.file)
                .map_or(text, |(_, t)| t.as_str());
            d.position = Some(
                super::load::locate(text, &d.field).unwrap_or(Position { line: 1, column: 1 }),
            );
        }
    }

    fn plan(&mut self, text: &str, raw: RawPlan, broken: &[BrokenStep]) -> Plan {
        if raw.version.value != 1 {
            self.error(
                Position::from_saphyr(raw.version.referenced),
                "version",
                format!("unsupported plan version {}", raw.version.value),
                Some("this bootplan reads `version: 1`".into()),
            );
        }
        if raw.name.trim().is_empty() {
            self.error(
                None,
                "name",
                "the plan name is empty",
                Some("give the plan a short name such as `web-node`".into()),
            );
        }
        let max_parallel = raw.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL);
        if max_parallel == 0 {
            self.error(
                None,
                "max_parallel",
                "max_parallel must be at least 1",
                None,
            );
        }
        if raw.history.is_some_and(|h| h > MAX_HISTORY) {
            self.error(
                None,
                "history",
                format!("at most {MAX_HISTORY} runs are kept"),
                Some("the default, 20, is enough to compare a boot with the usual ones".into()),
            );
        }
        if raw.steps.is_empty() {
            self.error(
                None,
                "steps",
                "the plan has no steps",
                Some("add at least one step under `steps:`".into()),
            );
        }
        let facts_provider = raw
            .facts
            .as_ref()
            .and_then(|f| f.provider.clone())
            .unwrap_or_else(|| "auto".into());
        let facts = self.facts_config(raw.facts.as_ref());

        let secret_names: BTreeSet<String> = raw.secrets.keys().cloned().collect();
        for (name, source) in &raw.secrets {
            let backends = source.value.backend_names();
            if backends.len() != 1 {
                self.error(
                    Position::from_saphyr(source.referenced),
                    format!("secrets.{name}"),
                    format!(
                        "a secret names exactly one backend, found {}",
                        if backends.is_empty() {
                            "none".into()
                        } else {
                            backends.join(", ")
                        }
                    ),
                    Some("e.g. `db_password: { file: { path: /run/keys/db } }`".into()),
                );
            }
        }
        for (field, message, hint) in super::secret_checks::check(&raw.secrets, &raw.backends) {
            let position = field
                .strip_prefix("secrets.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|name| raw.secrets.get(name))
                .and_then(|s| Position::from_saphyr(s.referenced));
            self.error(position, field, message, hint);
        }
        for (name, source) in &raw.secrets {
            if let Some(len) = self.short_local_secret(&source.value) {
                self.warn(
                    Position::from_saphyr(source.referenced),
                    format!("secrets.{name}"),
                    format!(
                        "the value is {len} character(s) long: values shorter than {} cannot be masked in output, so it shows wherever it is printed",
                        crate::redact::MIN_SECRET_LEN
                    ),
                    Some("use a longer secret, or make sure no step prints it".into()),
                );
            }
        }
        let var_names: BTreeSet<String> = raw.vars.keys().cloned().collect();
        let secret_env = super::secret_checks::secret_env_names(&raw.secrets, &raw.backends);
        let scope = RefScope {
            secrets: &secret_names,
            vars: &var_names,
            secret_env: &secret_env,
        };

        let names: Vec<String> = raw
            .steps
            .keys()
            .cloned()
            .chain(broken.iter().map(|b| b.name.clone()))
            .collect();
        let ids: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut steps = Vec::with_capacity(names.len());
        for (id, (name, spanned)) in raw.steps.iter().enumerate() {
            if let Some(step) = self.step(id, name, spanned, &ids, &scope, &raw.vars) {
                steps.push(step);
            }
        }
        // A file owned by a user needs the step that creates the user, etc.
        let implicit = super::os_step::implicit_needs(&raw.steps);
        for step in &mut steps {
            let before = step.needs.len();
            step.needs.extend(
                implicit
                    .iter()
                    .filter(|(dependent, _)| *dependent == step.id)
                    .map(|&(_, dependency)| dependency),
            );
            if step.needs.len() != before {
                step.needs.sort_unstable();
                step.needs.dedup();
            }
        }
        let step_names: Vec<&str> = raw.steps.keys().map(String::as_str).collect();
        let graph: Vec<GraphNode> = raw
            .steps
            .iter()
            .enumerate()
            .map(|(i, (name, s))| GraphNode {
                name,
                needs: s
                    .value
                    .needs
                    .iter()
                    .map(|n| n.value.as_str())
                    .chain(
                        implicit
                            .iter()
                            .filter(|(dependent, _)| *dependent == i)
                            .map(|&(_, dependency)| step_names[dependency]),
                    )
                    .collect(),
                position: Position::from_saphyr(s.referenced),
            })
            .chain(broken.iter().map(|b| GraphNode {
                name: &b.name,
                needs: b.needs.iter().map(String::as_str).collect(),
                position: b.position,
            }))
            .collect();
        self.check_cycles(&graph);
        let secret_reloads: std::collections::BTreeMap<String, super::OnChange> = raw
            .secrets
            .iter()
            .filter_map(|(name, source)| {
                let change = source.value.on_change.as_ref()?;
                let pos = Position::from_saphyr(source.referenced);
                let reload = self.reload(
                    pos,
                    &format!("secrets.{name}.on_change"),
                    change.reload.as_ref()?,
                )?;
                Some((
                    name.clone(),
                    super::OnChange {
                        check: None,
                        reload: Some(reload),
                        splay: change.splay.map(|s| s.get()).unwrap_or_default(),
                    },
                ))
            })
            .collect();
        if steps.len() == names.len() {
            self.check_exec(&steps, &raw);
            self.check_reload_targets(&steps, &raw, &secret_reloads);
        }
        let (mut lifecycle, lifecycle_problems) = super::lifecycle::resolve_plan(
            &self.file,
            &self.plan_dir,
            raw.supervise.as_ref(),
            raw.ready_file.as_deref(),
            raw.register.as_ref(),
            raw.report.as_ref(),
            &super::lifecycle::Names {
                secrets: &secret_names,
                vars: &var_names,
                facts: FACT_NAMES,
            },
        );
        self.diagnostics.extend(lifecycle_problems);
        lifecycle.compat = super::lifecycle::Compat::from_name(raw.compat);

        let (telemetry, problems) =
            super::telemetry::resolve(raw.telemetry.as_ref(), &self.plan_dir);
        for (field, message, hint) in problems {
            self.error(None, field, message, hint);
        }
        let limits = raw.limits.as_ref().map(|l| {
            let (limits, problems) = super::limits::resolve(l, &self.plan_dir);
            for (field, message, hint) in problems {
                self.error(None, field, message, hint);
            }
            limits
        });
        self.check_throttles(&raw, limits.as_ref());
        let start_splay = raw.start_splay.map(|b| super::limits::StartSplay {
            min: b.min,
            max: b.max,
        });

        Plan {
            name: raw.name,
            path: self.file.clone(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes()))),
            deadline: raw.deadline.map_or(DEFAULT_DEADLINE, |d| d.get()),
            max_parallel: max_parallel.max(1) as usize,
            rollback: raw.rollback,
            history: raw.history.unwrap_or(DEFAULT_HISTORY),
            kill_grace: raw.kill_grace.map_or(DEFAULT_KILL_GRACE, |d| d.get()),
            vars: raw.vars,
            facts_provider,
            facts,
            state_dir: raw.state_dir.as_ref().map(|d| self.plan_dir.join(d)),
            run_dir: raw.run_dir.as_ref().map(|d| self.plan_dir.join(d)),
            secrets: raw.secrets.into_iter().map(|(k, v)| (k, v.value)).collect(),
            secret_reloads,
            backends: raw.backends,
            steps,
            lifecycle,
            telemetry,
            downloads: super::download::DownloadSettings::resolve(raw.downloads.as_ref()),
            secret_env,
            limits,
            start_splay,
            warnings: Vec::new(),
        }
    }

    /// Every `throttle:` names a semaphore of `limits.semaphores`.
    fn check_throttles(&mut self, raw: &RawPlan, limits: Option<&super::limits::Limits>) {
        for (name, step) in &raw.steps {
            let Some(wanted) = &step.value.throttle else {
                continue;
            };
            let field = format!("steps.{name}.throttle");
            // Found by its field once every check is done (`locate_unplaced`).
            let pos = None;
            let Some(limits) = limits else {
                self.error(
                    pos,
                    field,
                    format!("the step takes semaphore `{wanted}`, but the plan has no `limits:`"),
                    Some(format!(
                        "add `limits: {{ etcd: {{ endpoints: [...] }}, semaphores: {{ {wanted}: {{ slots: 1 }} }} }}`"
                    )),
                );
                continue;
            };
            if !limits.semaphores.contains_key(wanted) {
                let hint = did_you_mean(wanted, limits.semaphores.keys().map(String::as_str))
                    .map(|s| format!("did you mean `{s}`?"))
                    .or_else(|| {
                        Some(format!(
                            "declare it under `limits.semaphores`, e.g. `{wanted}: {{ slots: 1 }}`"
                        ))
                    });
                self.error(pos, field, format!("unknown semaphore `{wanted}`"), hint);
            } else if matches!(
                (&step.value.exec, &step.value.service),
                (Some(_), _) | (_, Some(_))
            ) {
                self.error(
                    pos,
                    field,
                    "`throttle` applies to steps that end (`run`, `shell`, `file`, `template`, `wait`)",
                    Some("a service or the exec app would hold the slot for as long as it runs".into()),
                );
            }
        }
    }

    fn step(
        &mut self,
        id: usize,
        name: &str,
        spanned: &Spanned<RawStep>,
        ids: &HashMap<&str, usize>,
        scope: &RefScope,
        vars: &indexmap::IndexMap<String, serde_json::Value>,
    ) -> Option<Step> {
        let pos = Position::from_saphyr(spanned.referenced);
        let raw = &spanned.value;
        let field = format!("steps.{name}");
        let errors_before = self.error_count();

        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.error(
                pos,
                &field,
                format!("invalid step name `{name}`"),
                Some("use letters, digits, `-`, `_` and `.` only".into()),
            );
        }
        let mut kind = self.kind(pos, &field, raw);

        let mut needs = Vec::new();
        for need in &raw.needs {
            let need_pos = Position::from_saphyr(need.referenced).or(pos);
            match ids.get(need.value.as_str()) {
                Some(&dep) if dep == id => self.error(
                    need_pos,
                    format!("{field}.needs"),
                    format!("step `{name}` needs itself"),
                    Some("remove it from its own `needs`".into()),
                ),
                Some(&dep) => needs.push(dep),
                None => {
                    let hint = did_you_mean(&need.value, ids.keys().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| Some("`needs` lists names of other steps in this plan".into()));
                    self.error(
                        need_pos,
                        format!("{field}.needs"),
                        format!("unknown step `{}`", need.value),
                        hint,
                    );
                }
            }
        }
        needs.sort_unstable();
        needs.dedup();

        let retry = self.retry(pos, &field, raw);
        let default_frequency = match &kind {
            // OS kinds compare the machine with the plan each run and change
            // only what differs, so drift is repaired on the next run.
            Some(
                StepKind::Wait(_)
                | StepKind::Exec { .. }
                | StepKind::Service { .. }
                | StepKind::Os(_),
            ) => Frequency::Always,
            _ => Frequency::PerInstance,
        };
        let (privileges, problems) =
            super::os_step::resolve_privileges(&field, raw, kind.as_ref().map(StepKind::name));
        self.os_problems(problems);
        let retry = match &kind {
            Some(StepKind::Os(super::os::OsKind::Packages(_))) if raw.retry.is_none() => {
                super::os::PACKAGES_RETRY
            }
            _ => retry,
        };
        if let (Some(StepKind::Exec { .. } | StepKind::Service { .. }), Some(f)) =
            (&kind, raw.frequency)
            && f != Frequency::Always
        {
            self.error(
                pos,
                format!("{field}.frequency"),
                format!(
                    "`{}` steps start on every run; frequency `{}` cannot apply",
                    kind.as_ref().map_or("", StepKind::name),
                    f.as_str()
                ),
                Some("remove `frequency` from this step".into()),
            );
        }
        for (key, argv) in [("unless", &raw.unless), ("undo", &raw.undo)] {
            if argv
                .as_ref()
                .is_some_and(|a| a.is_empty() || a[0].is_empty())
            {
                self.error(
                    pos,
                    format!("{field}.{key}"),
                    "the command is empty",
                    Some(
                        "give an argv list such as [\"/usr/bin/test\", \"-f\", \"/etc/x\"]".into(),
                    ),
                );
            }
        }
        let ready = raw
            .ready
            .as_ref()
            .and_then(|r| self.wait_spec(pos, &format!("{field}.ready"), r));
        if ready.is_some()
            && !matches!(kind, Some(StepKind::Service { .. } | StepKind::Exec { .. }))
        {
            self.error(
                pos,
                format!("{field}.ready"),
                "`ready` applies to `service` and `exec` steps only",
                Some("use a separate `wait` step to wait for something".into()),
            );
        }
        if let Some(StepKind::Wait(WaitSpec {
            target: WaitTarget::Notify,
            ..
        })) = &kind
        {
            self.error(
                pos,
                format!("{field}.wait.notify"),
                "`notify` is a readiness check of a process bootplan starts",
                Some("use it in `ready:` of a `service` or `exec` step".into()),
            );
        }
        let (restart, lifecycle_problems) = super::lifecycle::resolve_step(
            &self.file,
            pos,
            &field,
            matches!(kind, Some(StepKind::Service { .. })),
            raw.restart.as_ref(),
            raw.required,
        );
        self.diagnostics.extend(lifecycle_problems);
        if let Some(StepKind::Service { .. }) = kind
            && ready.is_none()
        {
            self.error(
                pos,
                &field,
                "a service step needs a `ready` check",
                Some("e.g. `ready: { tcp: \"127.0.0.1:8080\" }`".into()),
            );
        }

        let mut secret_refs = self.check_references(pos, &field, raw, kind.as_ref(), scope);
        if let Some(expr) = &raw.when {
            self.check_when(pos, &field, expr, scope);
        }
        for wanted in &raw.secrets {
            if !scope.secrets.contains(wanted) {
                self.error(
                    pos,
                    format!("{field}.secrets"),
                    format!("the step asks for undeclared secret `{wanted}`"),
                    Some(format!("declare `{wanted}` under `secrets:`")),
                );
            } else if !secret_refs.contains(wanted) {
                secret_refs.push(wanted.clone());
            }
        }
        if let Some(StepKind::Template(spec)) = kind.as_mut() {
            let mode_given = raw.template.as_ref().is_some_and(|t| t.mode.is_some());
            self.secret_file_mode(pos, &field, spec, mode_given, scope);
        }
        if self.error_count() > errors_before {
            return None;
        }
        let on_change = self.on_change(pos, &field, raw, &kind);
        let kind = kind?;
        let fingerprint = fingerprint(raw, &kind, vars);
        Some(Step {
            id,
            name: name.to_string(),
            kind,
            needs,
            env: raw.env.clone(),
            cwd: raw.cwd.clone(),
            timeout: raw.timeout.map(|t| t.get()),
            retry,
            frequency: raw.frequency.unwrap_or(default_frequency),
            creates: raw.creates.clone(),
            unless: raw.unless.clone(),
            on_failure: raw.on_failure.unwrap_or_default(),
            undo: raw.undo.clone(),
            ready,
            restart,
            required: raw.required.unwrap_or(true),
            when: raw.when.clone(),
            secret_refs,
            privileges,
            fingerprint,
            on_change,
            throttle: raw.throttle.clone(),
        })
    }

    /// The length of a `file` or `env` secret that can be looked at now and
    /// is too short to be masked (other backends are only known at run time).
    fn short_local_secret(&self, source: &super::SecretSource) -> Option<usize> {
        let (text, key) = if let Some(file) = &source.file {
            let bytes =
                super::bounded::read_bounded(&self.plan_dir.join(&file.path), 1024 * 1024).ok()?;
            (String::from_utf8(bytes).ok()?, file.key.as_deref())
        } else if let Some(env) = &source.env {
            (std::env::var(&env.name).ok()?, env.key.as_deref())
        } else {
            return None;
        };
        let text = zeroize::Zeroizing::new(text);
        let value = match key {
            None => text.trim_end_matches(['\n', '\r']).to_string(),
            Some(key) => {
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&text).ok()?;
                object.get(key)?.as_str()?.to_string()
            }
        };
        let value = zeroize::Zeroizing::new(value);
        let len = value.trim().chars().count();
        (len < crate::redact::MIN_SECRET_LEN).then_some(len)
    }

    /// Checks the `facts:` block and resolves it (the environment is added at run time).
    fn facts_config(&mut self, raw: Option<&super::raw::RawFacts>) -> super::facts::FactsConfig {
        use super::facts::{FactsConfig, Fallback, ProviderChoice, ProviderKind};
        let mut config = FactsConfig::default();
        let Some(raw) = raw else { return config };
        let names = || {
            std::iter::once("auto")
                .chain(ProviderKind::ALL.iter().map(|k| k.name()))
                .collect::<Vec<_>>()
        };
        if let Some(name) = &raw.provider {
            match ProviderChoice::from_name(name) {
                Some(choice) => config.provider = choice,
                None => {
                    let hint = did_you_mean(name, names())
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("use one of: {}", names().join(", ")));
                    self.error(
                        None,
                        "facts.provider",
                        format!("unknown facts provider `{name}`"),
                        Some(hint),
                    );
                }
            }
        }
        config.fallback = raw.fallback.map(|f| match f {
            super::raw::FactsFallback::Local => Fallback::Local,
            super::raw::FactsFallback::Fail => Fallback::Fail,
        });
        for (key, value) in [
            ("budget", raw.budget),
            ("attempt_timeout", raw.attempt_timeout),
        ] {
            if value.is_some_and(|d| d.get().is_zero()) {
                self.error(
                    None,
                    format!("facts.{key}"),
                    format!("{key} must be more than zero"),
                    Some("e.g. `2s`".into()),
                );
            }
        }
        config.budget = raw.budget.map(|d| d.get());
        config.attempt_timeout = raw.attempt_timeout.map(|d| d.get());
        for (name, url) in &raw.endpoints {
            let kind = ProviderKind::from_name(name).filter(|k| k.default_endpoint().is_some());
            let Some(kind) = kind else {
                self.error(
                    None,
                    format!("facts.endpoints.{name}"),
                    format!("`{name}` is not a provider with a metadata endpoint"),
                    Some("one of: aws, gcp, azure, openstack, digitalocean".into()),
                );
                continue;
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                self.error(
                    None,
                    format!("facts.endpoints.{name}"),
                    format!("`{url}` is not an http(s) URL"),
                    Some("e.g. `http://169.254.169.254`".into()),
                );
            }
            config.endpoints.insert(kind, url.clone());
        }
        config
    }

    /// A template step's `on_change` (targets are checked once every step is known).
    fn on_change(
        &mut self,
        pos: Option<Position>,
        field: &str,
        raw: &RawStep,
        kind: &Option<StepKind>,
    ) -> Option<super::OnChange> {
        use super::OnChange;
        let raw_change = raw.on_change.as_ref()?;
        let where_ = format!("{field}.on_change");
        if !matches!(kind, Some(StepKind::Template(_))) {
            self.error(
                pos,
                &where_,
                "`on_change` applies to `template` steps",
                Some("it re-renders the template when a refreshed secret changes".into()),
            );
            return None;
        }
        if raw_change
            .check
            .as_ref()
            .is_some_and(|c| c.first().is_none_or(String::is_empty))
        {
            self.error(pos, format!("{where_}.check"), "the command is empty", None);
        }
        let reload = raw_change
            .reload
            .as_ref()
            .and_then(|r| self.reload(pos, &where_, r));
        Some(OnChange {
            check: raw_change.check.clone(),
            reload,
            splay: raw_change.splay.map(|s| s.get()).unwrap_or_default(),
        })
    }

    /// A typed `reload`: a signal (with its target) or a command.
    fn reload(
        &mut self,
        pos: Option<Position>,
        where_: &str,
        r: &super::change::RawReload,
    ) -> Option<super::Reload> {
        use super::{Reload, ReloadTarget};
        let target_of = |name: Option<&str>| match name {
            None | Some("app") => ReloadTarget::App,
            Some(step) => ReloadTarget::Service(step.to_string()),
        };
        if let Some(restart) = &r.restart {
            if r.signal.is_some() || r.target.is_some() || r.command.is_some() {
                self.error(
                    pos,
                    format!("{where_}.reload"),
                    "a reload is a `signal` (with an optional `target`), a `restart` or a `command`",
                    Some("e.g. `reload: { restart: app }`".into()),
                );
                return None;
            }
            return Some(Reload::Restart(target_of(Some(restart.as_str()))));
        }
        match (&r.signal, &r.target, &r.command) {
            (Some(signal), target, None) => {
                let name = signal.trim().to_ascii_uppercase();
                let name = if name.starts_with("SIG") {
                    name
                } else {
                    format!("SIG{name}")
                };
                match name.parse::<nix::sys::signal::Signal>() {
                    Ok(sig) => Some(Reload::Signal {
                        signal: sig as i32,
                        target: target_of(target.as_deref()),
                    }),
                    Err(_) => {
                        self.error(
                            pos,
                            format!("{where_}.reload.signal"),
                            format!("`{signal}` is not a signal"),
                            Some("e.g. `HUP`, `USR1`, `TERM`".into()),
                        );
                        None
                    }
                }
            }
            (None, None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {
                Some(Reload::Command(argv.clone()))
            }
            _ => {
                self.error(
                    pos,
                    format!("{where_}.reload"),
                    "a reload is a `signal` (with an optional `target`), a `restart` or a `command`",
                    Some("e.g. `reload: { signal: HUP, target: app }`".into()),
                );
                None
            }
        }
    }

    /// Reload targets name the app or a `service` step.
    fn check_reload_targets(
        &mut self,
        steps: &[Step],
        raw: &RawPlan,
        secret_reloads: &std::collections::BTreeMap<String, super::OnChange>,
    ) {
        let services: BTreeSet<&str> = steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Service { .. }))
            .map(|s| s.name.as_str())
            .collect();
        let has_app = steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Exec { .. }));
        let step_targets = steps.iter().filter_map(|step| {
            let pos = raw
                .steps
                .get(&step.name)
                .and_then(|s| Position::from_saphyr(s.referenced));
            Some((
                format!("steps.{}", step.name),
                pos,
                step.on_change.as_ref()?.reload.as_ref()?,
            ))
        });
        let secret_targets = secret_reloads.iter().filter_map(|(name, change)| {
            let pos = raw
                .secrets
                .get(name)
                .and_then(|s| Position::from_saphyr(s.referenced));
            Some((format!("secrets.{name}"), pos, change.reload.as_ref()?))
        });
        let targets: Vec<_> = step_targets.chain(secret_targets).collect();
        for (field, pos, reload) in targets {
            let Some(target) = reload.target() else {
                continue;
            };
            let problem = match target {
                super::ReloadTarget::App if !has_app => {
                    Some("the plan has no `exec` app".to_string())
                }
                super::ReloadTarget::Service(name) if !services.contains(name.as_str()) => {
                    Some(format!("`{name}` is not a `service` step of this plan"))
                }
                _ => None,
            };
            if let Some(problem) = problem {
                self.error(
                    pos,
                    format!("{field}.on_change.reload.target"),
                    problem,
                    Some("the target is `app` or the name of a service step".into()),
                );
            }
        }
    }

    /// Checks a `when:` condition: it parses, and reads only facts, vars and env.
    fn check_when(&mut self, pos: Option<Position>, field: &str, expr: &str, scope: &RefScope) {
        let where_ = format!("{field}.when");
        match super::when::references(expr) {
            Ok(found) => {
                for reference in found {
                    if reference.root == "secrets" {
                        self.error(
                            pos,
                            &where_,
                            "a `when:` condition may not read secrets",
                            Some("decide on facts.* and vars.*".into()),
                        );
                    } else {
                        self.check_reference(pos, &where_, &reference, scope);
                    }
                }
            }
            Err(msg) => self.error(
                pos,
                where_,
                msg,
                Some("write an expression such as `facts.cloud == \"aws\"`".into()),
            ),
        }
    }

    fn kind(&mut self, pos: Option<Position>, field: &str, raw: &RawStep) -> Option<StepKind> {
        let present = super::present_keys([
            ("run", raw.run.is_some()),
            ("shell", raw.shell.is_some()),
            ("file", raw.file.is_some()),
            ("template", raw.template.is_some()),
            ("wait", raw.wait.is_some()),
            ("exec", raw.exec.is_some()),
            ("service", raw.service.is_some()),
            (
                "user",
                matches!(raw.user, Some(super::os::UserField::Kind(_))),
            ),
            (
                "group",
                matches!(raw.group, Some(super::os::GroupField::Kind(_))),
            ),
            ("packages", raw.packages.is_some()),
            ("hostname", raw.hostname.is_some()),
            ("sysctl", raw.sysctl.is_some()),
            ("unit", raw.unit.is_some()),
            ("ssh_host_keys", raw.ssh_host_keys.is_some()),
            ("download", raw.download.is_some()),
        ]);
        if present.len() != 1 {
            let found = if present.is_empty() {
                "none".to_string()
            } else {
                present.join(" and ")
            };
            self.error(
                pos,
                field,
                format!("a step has exactly one kind, found {found}"),
                Some(format!("use one of: {}", KIND_KEYS.join(", "))),
            );
            return None;
        }
        let argv_ok = |this: &mut Self, key: &str, argv: &[String]| {
            if argv.is_empty() || argv[0].is_empty() {
                this.error(
                    pos,
                    format!("{field}.{key}"),
                    "the command is empty",
                    Some("give an argv list such as [\"/usr/bin/app\", \"serve\"]".into()),
                );
            }
        };
        if let Some(argv) = &raw.run {
            argv_ok(self, "run", argv);
            return Some(StepKind::Run { argv: argv.clone() });
        }
        if let Some(script) = &raw.shell {
            if script.trim().is_empty() {
                self.error(pos, format!("{field}.shell"), "the script is empty", None);
            }
            return Some(StepKind::Shell {
                script: script.clone(),
            });
        }
        if let Some(argv) = &raw.exec {
            argv_ok(self, "exec", argv);
            return Some(StepKind::Exec { argv: argv.clone() });
        }
        if let Some(argv) = &raw.service {
            argv_ok(self, "service", argv);
            return Some(StepKind::Service { argv: argv.clone() });
        }
        if let Some(file) = &raw.file {
            let mode = file.mode.map_or(0o644, |m| m.0);
            if file.path.trim().is_empty() {
                self.error(pos, format!("{field}.file.path"), "the path is empty", None);
            }
            return Some(StepKind::File(FileSpec {
                path: file.path.clone(),
                content: file.content.clone(),
                mode,
                owner: file.owner.clone(),
            }));
        }
        if let Some(t) = &raw.template {
            let mode = t.mode.map_or(0o644, |m| m.0);
            let (source, origin) = match (&t.src, &t.inline) {
                (Some(src), None) => {
                    let path = self.plan_dir.join(src);
                    match read_template(&path) {
                        Ok(text) => (text, path.display().to_string()),
                        Err(message) => {
                            self.error(
                                pos,
                                format!("{field}.template.src"),
                                format!("cannot read template {}: {message}", path.display()),
                                Some("`src` is relative to the plan file's directory".into()),
                            );
                            return None;
                        }
                    }
                }
                (None, Some(inline)) => (inline.clone(), format!("{field}.template.inline")),
                _ => {
                    self.error(
                        pos,
                        format!("{field}.template"),
                        "a template has exactly one of `src` or `inline`",
                        None,
                    );
                    return None;
                }
            };
            return Some(StepKind::Template(TemplateSpec {
                source,
                origin,
                dest: t.dest.clone(),
                mode,
                owner: t.owner.clone(),
            }));
        }
        if let Some((kind, problems)) = super::os_step::resolve_kind(&self.plan_dir, field, raw) {
            self.os_problems(problems);
            return kind.map(StepKind::Os);
        }
        if let Some(download) = &raw.download {
            let (spec, problems) = super::download::resolve(field, download);
            for p in problems {
                let severity = if p.warning {
                    Severity::Warning
                } else {
                    Severity::Error
                };
                self.push(severity, pos, p.field, p.message, p.hint);
            }
            return spec.map(StepKind::Download);
        }
        let wait = raw.wait.as_ref()?;
        self.wait_spec(pos, &format!("{field}.wait"), wait)
            .map(StepKind::Wait)
    }

    fn wait_spec(&mut self, pos: Option<Position>, field: &str, raw: &RawWait) -> Option<WaitSpec> {
        let mut targets = Vec::new();
        if let Some(addr) = &raw.tcp {
            if !addr.contains(':') {
                self.error(
                    pos,
                    format!("{field}.tcp"),
                    format!("`{addr}` is not host:port"),
                    Some("e.g. `127.0.0.1:5432`".into()),
                );
            }
            targets.push(WaitTarget::Tcp(addr.clone()));
        }
        if let Some(url) = &raw.http {
            if !(url.starts_with("http://")
                || url.starts_with("https://")
                || refs::is_template(url))
            {
                self.error(
                    pos,
                    format!("{field}.http"),
                    format!("`{url}` is not an http(s) URL"),
                    Some("e.g. `http://127.0.0.1:8080/healthz`".into()),
                );
            }
            targets.push(WaitTarget::Http(url.clone()));
        }
        if let Some(path) = &raw.file {
            targets.push(WaitTarget::File(path.clone()));
        }
        if let Some(argv) = &raw.command {
            if argv.is_empty() || argv[0].is_empty() {
                self.error(
                    pos,
                    format!("{field}.command"),
                    "the command is empty",
                    None,
                );
            }
            targets.push(WaitTarget::Command(argv.clone()));
        }
        match raw.notify {
            Some(true) => targets.push(WaitTarget::Notify),
            Some(false) => self.error(
                pos,
                format!("{field}.notify"),
                "`notify: false` waits for nothing",
                Some("remove it, or use `notify: true`".into()),
            ),
            None => {}
        }
        if targets.len() != 1 {
            self.error(
                pos,
                field,
                format!(
                    "wait for exactly one of tcp, http, file, command; found {}",
                    targets.len()
                ),
                None,
            );
            return None;
        }
        Some(WaitSpec {
            target: targets.remove(0),
            interval: raw.interval.map_or(DEFAULT_WAIT_INTERVAL, |d| d.get()),
            attempt_timeout: raw
                .attempt_timeout
                .map_or(DEFAULT_ATTEMPT_TIMEOUT, |d| d.get()),
        })
    }

    fn retry(&mut self, pos: Option<Position>, field: &str, raw: &RawStep) -> RetryPolicy {
        let Some(retry) = &raw.retry else {
            return RetryPolicy::NONE;
        };
        let mut policy = RetryPolicy {
            attempts: retry.attempts,
            ..RetryPolicy::NONE
        };
        if retry.attempts == 0 {
            self.error(
                pos,
                format!("{field}.retry.attempts"),
                "attempts must be at least 1",
                Some("attempts counts the first try too".into()),
            );
        }
        if let Some(backoff) = retry.backoff {
            policy.min_backoff = backoff.min;
            policy.max_backoff = backoff.max;
        }
        if raw.exec.is_some() && retry.attempts > 1 {
            self.error(
                pos,
                format!("{field}.retry"),
                "an exec step cannot be retried: bootplan is replaced by it",
                None,
            );
        }
        policy
    }

    /// Checks every template string of the step and returns the secrets it uses.
    fn check_references(
        &mut self,
        pos: Option<Position>,
        field: &str,
        raw: &RawStep,
        kind: Option<&StepKind>,
        scope: &RefScope,
    ) -> Vec<String> {
        let mut texts: Vec<(String, &str)> = Vec::new();
        for (i, arg) in raw
            .run
            .iter()
            .chain(&raw.exec)
            .chain(&raw.service)
            .flatten()
            .enumerate()
        {
            texts.push((format!("{field}.argv[{i}]"), arg));
        }
        for (k, value) in &raw.env {
            texts.push((format!("{field}.env.{k}"), value));
        }
        for (key, value) in [("cwd", &raw.cwd), ("creates", &raw.creates)] {
            if let Some(value) = value {
                texts.push((format!("{field}.{key}"), value));
            }
        }
        for (key, argv) in [("unless", &raw.unless), ("undo", &raw.undo)] {
            for arg in argv.iter().flatten() {
                texts.push((format!("{field}.{key}"), arg));
            }
        }
        match kind {
            Some(StepKind::File(f)) => texts.push((format!("{field}.file.path"), &f.path)),
            Some(StepKind::Template(t)) => {
                texts.push((format!("{field}.template.dest"), &t.dest));
                texts.push((t.origin.clone(), &t.source));
            }
            Some(StepKind::Wait(w)) => {
                push_wait_texts(&mut texts, &format!("{field}.wait"), &w.target)
            }
            Some(StepKind::Os(os)) => texts.extend(os.template_texts(field)),
            Some(StepKind::Download(d)) => texts.extend(super::download::texts(field, d)),
            _ => {}
        }
        let is_os = matches!(kind, Some(StepKind::Os(_)));
        if let Some(ready) = &raw.ready {
            for text in [&ready.tcp, &ready.http, &ready.file].into_iter().flatten() {
                texts.push((format!("{field}.ready"), text));
            }
        }

        for (where_, text) in &texts {
            let is_content =
                kind.is_some_and(|k| matches!(k, StepKind::Template(t) if t.origin == *where_));
            if !is_content && text.contains('\0') {
                self.error(
                    pos,
                    where_.clone(),
                    "the value holds a NUL byte, which no command line, environment or path can",
                    Some("remove the `\\0` escape".into()),
                );
            }
        }
        for key in raw
            .env
            .keys()
            .filter(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            self.error(
                pos,
                format!("{field}.env"),
                format!(
                    "`{}` is not an environment variable name",
                    key.escape_debug()
                ),
                Some("names are letters, digits and `_`, e.g. `DB_HOST`".into()),
            );
        }
        if raw.shell.as_deref().is_some_and(|s| s.contains('\0')) {
            self.error(
                pos,
                format!("{field}.shell"),
                "the script holds a NUL byte, which no command line can",
                None,
            );
        }
        let argv_fields = [".argv[", ".unless", ".undo"];
        let mut used_secrets = BTreeSet::new();
        let mut argv_warned = false;
        for (where_, text) in texts {
            match refs::references(text) {
                Ok(found) => {
                    for reference in found {
                        self.check_reference(pos, &where_, &reference, scope);
                        if reference.root == "secrets" {
                            used_secrets.extend(reference.name.clone());
                        }
                        if is_os
                            && scope.is_secret(&reference)
                            && !super::os::may_read_secrets(&where_)
                        {
                            self.error(
                                pos,
                                &where_,
                                "this value ends up where every user can read it (the passwd database, a unit, repository or sysctl file, the logs): it may not read a secret",
                                Some("only `user.password_hash` may read a secret; give a unit its secrets through a `template` with mode 0600 and `EnvironmentFile=`".into()),
                            );
                        }
                        if scope.is_secret(&reference)
                            && !argv_warned
                            && argv_fields.iter().any(|f| where_.contains(f))
                        {
                            argv_warned = true;
                            self.warn(
                                pos,
                                &where_,
                                "a secret in a command line is visible to every user of the machine in /proc/PID/cmdline",
                                Some("pass it through `env:` (e.g. `env: { TOKEN: \"{{ secrets.token }}\" }`) or a file (`to_file`)".into()),
                            );
                        }
                    }
                }
                Err(msg) => self.error(
                    pos,
                    where_,
                    msg,
                    Some("see the MiniJinja syntax: {{ vars.name }}, {% if ... %}".into()),
                ),
            }
        }
        if let Some(script) = &raw.shell {
            self.check_shell(pos, &format!("{field}.shell"), script, scope);
        }
        used_secrets.into_iter().collect()
    }

    /// A `shell:` script: no secrets (also not through `env.*`), every
    /// `{{ ... }}` where quoting keeps it one word, and a warning for
    /// `shell_unsafe` on values others control.
    fn check_shell(&mut self, pos: Option<Position>, field: &str, script: &str, scope: &RefScope) {
        match refs::references(script) {
            Ok(found) => {
                if found.iter().any(|r| scope.is_secret(r)) {
                    self.error(
                        pos,
                        field,
                        "secrets may not be interpolated into a shell string (also not through `env.*` of a variable that holds one)",
                        Some("pass the secret through `env:` and read \"$NAME\" in the script".into()),
                    );
                }
                for reference in found.iter().filter(|r| !scope.is_secret(r)) {
                    self.check_reference(pos, field, reference, scope);
                }
            }
            Err(msg) => {
                self.error(pos, field, msg, None);
                return;
            }
        }
        for bad in crate::template::shell_placements(script) {
            self.error(
                pos,
                field,
                bad.describe(),
                Some(crate::template::shell::PLACEMENT_HINT.into()),
            );
        }
        for (line, expr) in crate::template::expressions(script) {
            if !expr.contains("shell_unsafe") {
                continue;
            }
            let reads_untrusted = refs::references(&format!("{{{{ {expr} }}}}"))
                .is_ok_and(|found| found.iter().any(|r| r.root == "facts" || r.root == "env"));
            if reads_untrusted {
                self.warn(
                    pos,
                    field,
                    format!(
                        "`shell_unsafe` pastes a value that others control (facts.* or env.*) into the script unquoted, on line {line}"
                    ),
                    Some("remove `| shell_unsafe`: bootplan quotes the value as one word".into()),
                );
            }
        }
    }

    /// A template that renders a secret is written 0600 unless the plan
    /// gives a mode; a given mode may not let others read it, nor the file's
    /// group unless the owner names that group.
    fn secret_file_mode(
        &mut self,
        pos: Option<Position>,
        field: &str,
        spec: &mut TemplateSpec,
        mode_given: bool,
        scope: &RefScope,
    ) {
        let renders_secret = [&spec.source, &spec.dest].iter().any(|text| {
            refs::references(text).is_ok_and(|found| found.iter().any(|r| scope.is_secret(r)))
        });
        if !renders_secret {
            return;
        }
        if !mode_given {
            spec.mode = 0o600;
            return;
        }
        let group_named = spec.owner.as_deref().is_some_and(|o| o.contains(':'));
        let readable_by = if spec.mode & 0o004 != 0 {
            Some("every user")
        } else if spec.mode & 0o040 != 0 && !group_named {
            Some("the file's group")
        } else {
            None
        };
        if let Some(who) = readable_by {
            self.error(
                pos,
                format!("{field}.template.mode"),
                format!(
                    "mode {:04o} makes a file that holds a secret readable by {who}",
                    spec.mode
                ),
                Some("use \"0600\", or \"0640\" with `owner: user:group` naming the group that may read it".into()),
            );
        }
    }

    fn check_reference(
        &mut self,
        pos: Option<Position>,
        field: &str,
        reference: &Reference,
        scope: &RefScope,
    ) {
        let name = reference.name.as_deref();
        match (reference.root.as_str(), name) {
            ("env", _) => {}
            ("secrets", Some(n)) if scope.secrets.contains(n) => {}
            ("secrets", n) => {
                let n = n.unwrap_or("");
                let hint = did_you_mean(n, scope.secrets.iter().map(String::as_str))
                    .map(|s| format!("did you mean `secrets.{s}`?"))
                    .unwrap_or_else(|| format!("declare `{n}` under `secrets:`"));
                self.error(
                    pos,
                    field,
                    format!("the template uses undeclared secret `{n}`"),
                    Some(hint),
                );
            }
            ("vars", Some(n)) if scope.vars.contains(n) => {}
            ("vars", n) => {
                let n = n.unwrap_or("");
                let hint = did_you_mean(n, scope.vars.iter().map(String::as_str))
                    .map(|s| format!("did you mean `vars.{s}`?"))
                    .unwrap_or_else(|| format!("declare `{n}` under `vars:`"));
                self.error(
                    pos,
                    field,
                    format!("the template uses undeclared variable `vars.{n}`"),
                    Some(hint),
                );
            }
            ("facts", Some(n)) if FACT_NAMES.contains(&n) => {}
            ("facts", n) => {
                let n = n.unwrap_or("");
                let hint = did_you_mean(n, FACT_NAMES.iter().copied())
                    .map(|s| format!("did you mean `facts.{s}`?"))
                    .unwrap_or_else(|| format!("known facts: {}", FACT_NAMES.join(", ")));
                self.error(
                    pos,
                    field,
                    format!("the template uses unknown fact `{n}`"),
                    Some(hint),
                );
            }
            (root, _) => {
                let hint = did_you_mean(root, ROOTS)
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| "templates see facts.*, secrets.*, vars.* and env.*".into());
                self.error(
                    pos,
                    field,
                    format!("the template uses unknown variable `{root}`"),
                    Some(hint),
                );
            }
        }
    }

    /// Reports each dependency cycle as the chain `a -> b -> a` (a long
    /// one shortened to its first and last steps and its length).
    fn check_cycles(&mut self, graph: &[GraphNode]) {
        let ids: HashMap<&str, usize> =
            graph.iter().enumerate().map(|(i, n)| (n.name, i)).collect();
        let edges: Vec<Vec<usize>> = graph
            .iter()
            .map(|n| {
                n.needs
                    .iter()
                    .filter_map(|need| ids.get(need).copied())
                    .collect()
            })
            .collect();
        for cycle in find_cycles(&edges) {
            let first = &graph[cycle[0]];
            self.error(
                first.position,
                format!("steps.{}.needs", first.name),
                format!("dependency cycle: {}", describe_cycle(&cycle, graph)),
                Some("remove one of these `needs` to break the cycle".into()),
            );
        }
    }

    fn check_exec(&mut self, steps: &[Step], raw: &RawPlan) {
        let position = |name: &str| {
            raw.steps
                .get(name)
                .and_then(|s| Position::from_saphyr(s.referenced))
        };
        let execs: Vec<&Step> = steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Exec { .. }))
            .collect();
        if execs.len() > 1 {
            let names: Vec<&str> = execs.iter().map(|s| s.name.as_str()).collect();
            self.error(
                position(names[1]),
                "steps",
                format!("only one exec step may exist, found {}", names.join(", ")),
                Some("run the others as `run` or `service` steps".into()),
            );
        }
        for exec in execs {
            for step in steps.iter().filter(|s| s.needs.contains(&exec.id)) {
                self.error(
                    position(&step.name),
                    format!("steps.{}.needs", step.name),
                    format!(
                        "`{}` is the final exec step; nothing can run after it",
                        exec.name
                    ),
                    Some("remove it from `needs`".into()),
                );
            }
        }
    }
}

/// A step as the cycle check sees it: a name and the names it needs.
struct GraphNode<'a> {
    name: &'a str,
    needs: Vec<&'a str>,
    position: Option<Position>,
}

/// Each cycle in the graph (by step index), found by a depth-first walk
/// without recursion, so a plan of any size cannot exhaust the stack.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Finished,
    }
    let mut marks = vec![Mark::New; edges.len()];
    let mut cycles = Vec::new();
    for root in 0..edges.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(&dep) = edges[node].get(*next) else {
                marks[node] = Mark::Finished;
                stack.pop();
                continue;
            };
            *next += 1;
            match marks[dep] {
                Mark::New => {
                    marks[dep] = Mark::Active;
                    stack.push((dep, 0));
                }
                Mark::Active => {
                    let start = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[start..].iter().map(|&(n, _)| n).collect();
                    cycle.push(dep);
                    cycles.push(cycle);
                }
                Mark::Finished => {}
            }
        }
    }
    cycles
}

/// `a -> b -> c -> a`, or for a long cycle its first and last few steps
/// and how many there are.
fn describe_cycle(cycle: &[usize], graph: &[GraphNode]) -> String {
    const SHOWN: usize = 4;
    let names: Vec<&str> = cycle.iter().map(|&i| graph[i].name).collect();
    if names.len() <= 2 * SHOWN + 1 {
        return names.join(" -> ");
    }
    format!(
        "{} -> … -> {} ({} steps)",
        names[..SHOWN].join(" -> "),
        names[names.len() - SHOWN..].join(" -> "),
        names.len() - 1
    )
}

fn push_wait_texts<'a>(texts: &mut Vec<(String, &'a str)>, field: &str, target: &'a WaitTarget) {
    match target {
        WaitTarget::Tcp(s) | WaitTarget::Http(s) | WaitTarget::File(s) => {
            texts.push((field.to_string(), s))
        }
        WaitTarget::Command(argv) => {
            texts.extend(argv.iter().map(|a| (field.to_string(), a.as_str())))
        }
        WaitTarget::Notify => {}
    }
}

/// Largest template source accepted.
const MAX_TEMPLATE_BYTES: u64 = 4 * 1024 * 1024;

/// A template source: a regular UTF-8 file, bounded in size.
fn read_template(path: &Path) -> Result<String, String> {
    let bytes =
        super::bounded::read_bounded(path, MAX_TEMPLATE_BYTES).map_err(|err| match err {
            super::bounded::Bounded::Io(e) => e.to_string(),
            super::bounded::Bounded::Problem(message, _) => message,
        })?;
    String::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
}

/// The step's fingerprint: its definition (without `needs`/`description`),
/// the template text it renders, and the values of the plan vars it reads.
/// Secret values never enter it: only secret names, through the definition.
fn fingerprint(
    raw: &RawStep,
    kind: &StepKind,
    vars: &indexmap::IndexMap<String, serde_json::Value>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(raw).unwrap_or_default());
    let mut texts: Vec<&str> = Vec::new();
    if let StepKind::Template(t) = kind {
        hasher.update(b"\0template\0");
        hasher.update(t.source.as_bytes());
        texts.push(&t.source);
    }
    if let Some(source) = match kind {
        StepKind::Os(os) => os.fingerprint_text(),
        _ => None,
    } {
        hasher.update(b"\0source\0");
        hasher.update(source.as_bytes());
        texts.push(source);
    }
    let definition = serde_json::to_string(raw).unwrap_or_default();
    texts.push(&definition);
    let mut used_vars = BTreeSet::new();
    for text in texts {
        if let Ok(found) = refs::references(text) {
            used_vars.extend(
                found
                    .into_iter()
                    .filter(|r| r.root == "vars")
                    .filter_map(|r| r.name),
            );
        }
    }
    for name in used_vars {
        hasher.update(b"\0var\0");
        hasher.update(name.as_bytes());
        hasher.update(serde_json::to_vec(&vars.get(&name)).unwrap_or_default());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}
