//! `bootplan import cloud-config`: user data written for cloud-init turned
//! into a plan, with a migration report that says, for every top-level key
//! (and every part of multipart user data), whether it was mapped, mapped
//! with a change in meaning (and which), or not supported (and what to do).
//!
//! `userdata.rs` splits the user data into parts; `modules.rs` maps each
//! cloud-config module to steps. Steps follow cloud-init's own order of
//! modules (boot commands, files, accounts, host name, packages, deferred
//! files, commands, scripts, the final message, power state), each needing
//! the one before, so the plan runs them in the order cloud-init would.

mod modules;
mod schema;
pub mod userdata;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;

use userdata::{Part, PartKind};

/// What became of one key or part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Mapped,
    /// Mapped, but it behaves differently under bootplan (the note says how).
    Changed,
    /// Not carried over (the note says what to do).
    Unsupported,
    /// A value cloud-init's schema refuses (the note says which and why);
    /// the module's other entries are still mapped where they can be.
    Invalid,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Mapped => "mapped",
            Outcome::Changed => "mapped with a change",
            Outcome::Unsupported => "not supported",
            Outcome::Invalid => "invalid",
        }
    }
}

/// One line of the migration report.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The key (`runcmd`, `users`), or the part (`part 2 (setup.sh)`).
    pub key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// The steps it became.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
}

/// The result of an import.
#[derive(Debug, Serialize)]
pub struct Import {
    /// The plan, as YAML; `None` when nothing could be mapped.
    #[serde(skip)]
    pub plan: Option<String>,
    pub entries: Vec<Entry>,
    /// What `bootplan check` still says of the plan (nothing: it is valid).
    #[serde(skip)]
    pub problems: Vec<String>,
}

impl Import {
    /// The report as text, one line per entry.
    pub fn report_text(&self, source: &str) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let at = match (e.line, e.column) {
                (Some(l), Some(c)) => format!("{source}:{l}:{c}"),
                _ if !e.origin.is_empty() => format!("{source} ({})", e.origin),
                _ => source.to_string(),
            };
            out.push_str(&format!("{at}: {}: {}", e.key, e.outcome.as_str()));
            if !e.note.is_empty() {
                out.push_str(&format!(": {}", e.note));
            }
            out.push('\n');
        }
        let count = |o: Outcome| self.entries.iter().filter(|e| e.outcome == o).count();
        out.push_str(&format!(
            "{} mapped, {} mapped with a change, {} not supported, {} invalid\n",
            count(Outcome::Mapped),
            count(Outcome::Changed),
            count(Outcome::Unsupported),
            count(Outcome::Invalid)
        ));
        out
    }
}

/// Why user data cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    UserData(#[from] userdata::UserDataError),
}

/// The plan being built: steps in order, each needing the one before.
#[derive(Default)]
pub(crate) struct Builder {
    steps: IndexMap<String, IndexMap<String, Value>>,
    pub(crate) report: Option<Value>,
    entries: Vec<Entry>,
}

impl Builder {
    /// Adds a step (its name made unique) after the previous one; returns the name.
    pub(crate) fn step(&mut self, name: &str, body: IndexMap<String, Value>) -> String {
        let mut unique = slug(name);
        let mut n = 2;
        while self.steps.contains_key(&unique) {
            unique = format!("{}-{n}", slug(name));
            n += 1;
        }
        self.steps.insert(unique.clone(), body);
        unique
    }

    /// The plan as YAML, each step needing the one before.
    fn render(&self, name: &str) -> String {
        let mut plan: IndexMap<String, Value> = IndexMap::new();
        plan.insert("version".into(), Value::from(1));
        plan.insert("name".into(), Value::from(name));
        if let Some(report) = &self.report {
            plan.insert("report".into(), report.clone());
        }
        let mut steps: IndexMap<String, Value> = IndexMap::new();
        let mut previous: Option<&String> = None;
        for (step, body) in &self.steps {
            let mut body = body.clone();
            if let Some(before) = previous {
                body.insert("needs".into(), Value::from(vec![before.clone()]));
            }
            steps.insert(
                step.clone(),
                serde_json::to_value(body).unwrap_or(Value::Null),
            );
            previous = Some(step);
        }
        plan.insert(
            "steps".into(),
            serde_json::to_value(steps).unwrap_or(Value::Null),
        );
        let text = serde_saphyr::to_string(&plan).unwrap_or_default();
        format!(
            "# Imported from cloud-config by `bootplan import cloud-config`;\n# the migration report says what changed.\n{text}"
        )
    }

    /// Takes out what `bootplan check` refused (a step, or the report), and
    /// says so in the entry it came from. False when a problem belongs to
    /// nothing that can be taken out.
    fn drop_refused(&mut self, problems: &[crate::plan::Diagnostic]) -> bool {
        let mut dropped_any = false;
        for problem in problems
            .iter()
            .filter(|d| d.severity == crate::plan::Severity::Error)
        {
            let mut parts = problem.field.splitn(3, '.');
            let (root, step) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let removed = if root == "steps" && self.steps.shift_remove(step).is_some() {
                Some(step.to_string())
            } else if root == "report" && self.report.take().is_some() {
                Some("report".to_string())
            } else {
                None
            };
            let Some(removed) = removed else { continue };
            dropped_any = true;
            let why = format!(
                "`{removed}` left out, bootplan refused it: {}: {}",
                problem.field, problem.message
            );
            for entry in &mut self.entries {
                let owns = entry.steps.contains(&removed)
                    || (removed == "report" && entry.key == "phone_home");
                if owns {
                    entry.steps.retain(|s| *s != removed);
                    entry.outcome = Outcome::Unsupported;
                    entry.note = if entry.note.is_empty() {
                        why.clone()
                    } else {
                        format!("{}; {why}", entry.note)
                    };
                }
            }
        }
        dropped_any
    }

    pub(crate) fn entry(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// The plan, with what `bootplan check` refuses taken out (and
    /// reported) until it passes.
    fn finish(mut self, name: &str) -> Import {
        let mut plan = None;
        let mut left = Vec::new();
        for _ in 0..MAX_CHECK_ROUNDS {
            if self.steps.is_empty() {
                plan = None;
                break;
            }
            let text = self.render(name);
            let refused = match check(&text) {
                Ok(()) => Vec::new(),
                Err(problems) => problems,
            };
            let dropped = !refused.is_empty() && self.drop_refused(&refused);
            if !dropped {
                left = refused
                    .iter()
                    .filter(|d| d.severity == crate::plan::Severity::Error)
                    .map(|d| format!("{}: {}", d.field, d.message))
                    .collect();
                plan = Some(text);
                break;
            }
        }
        if plan.is_none() && !self.steps.is_empty() {
            left = vec![format!("more than {MAX_CHECK_ROUNDS} steps were refused")];
            plan = Some(self.render(name));
        }
        // In the order of the file (parts without a line last, as they came).
        self.entries.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Import {
            plan,
            entries: self.entries,
            problems: left,
        }
    }
}

/// Each round of [`Builder::finish`] takes out at least one refused step.
const MAX_CHECK_ROUNDS: usize = 64;

/// `bootplan check` of plan text (written to a scratch file, as plans are
/// read from files).
pub fn check(text: &str) -> Result<(), Vec<crate::plan::Diagnostic>> {
    let scratch_problem = |message: String| {
        vec![crate::plan::Diagnostic {
            file: std::path::PathBuf::new(),
            position: None,
            field: String::new(),
            message,
            hint: None,
            severity: crate::plan::Severity::Error,
        }]
    };
    let dir = tempfile::tempdir().map_err(|e| scratch_problem(e.to_string()))?;
    let path = dir.path().join("plan.yaml");
    std::fs::write(&path, text).map_err(|e| scratch_problem(e.to_string()))?;
    match crate::plan::load(&path) {
        Ok(_) => Ok(()),
        Err(crate::plan::PlanError::Invalid { diagnostics }) => Err(diagnostics),
        Err(other) => Err(scratch_problem(other.to_string())),
    }
}

/// A step name from free text: lowercase letters, digits and dashes.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "step".into() } else { out }
}

/// Imports user data (`source` names it in the plan's name).
pub fn import(bytes: &[u8], name: &str) -> Result<Import, ImportError> {
    let parts = userdata::parts(bytes)?;
    let mut builder = Builder::default();
    let mut configs: Vec<&Part> = Vec::new();
    let mut scripts: Vec<&Part> = Vec::new();
    let mut boothooks: Vec<&Part> = Vec::new();
    for part in &parts {
        match &part.kind {
            PartKind::CloudConfig => configs.push(part),
            PartKind::Jinja(inner) if **inner == PartKind::CloudConfig => configs.push(part),
            PartKind::Script | PartKind::Jinja(_) if is_script(part) => scripts.push(part),
            PartKind::Boothook => boothooks.push(part),
            other => builder.entry(part_entry(part, other)),
        }
    }
    for hook in &boothooks {
        modules::boothook(&mut builder, hook);
    }
    let merged = modules::parse_configs(&mut builder, &configs);
    modules::map_config(&mut builder, &merged, &scripts);
    Ok(builder.finish(&slug(name)))
}

fn is_script(part: &Part) -> bool {
    match &part.kind {
        PartKind::Script => true,
        PartKind::Jinja(inner) => **inner == PartKind::Script,
        _ => false,
    }
}

/// The report line of a part that is not mapped.
fn part_entry(part: &Part, kind: &PartKind) -> Entry {
    let (outcome, note) = match kind {
        PartKind::Include => (
            Outcome::Unsupported,
            format!(
                "#include fetches more user data from {} URL(s) at boot; fetch them and import each, or name a pinned plan URL",
                part.text
                    .lines()
                    .skip(1)
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .count()
            ),
        ),
        PartKind::Bootplan => (
            Outcome::Unsupported,
            "a bootplan plan: run it with `bootplan run`, it needs no import".into(),
        ),
        PartKind::Jinja(inner) => (
            Outcome::Unsupported,
            format!("a jinja template of {}: not imported", inner.describe()),
        ),
        other => (
            Outcome::Unsupported,
            format!(
                "a part of type {}: cloud-init ignores it too",
                other.describe()
            ),
        ),
    };
    Entry {
        key: part.kind.describe(),
        origin: part.origin.clone(),
        line: None,
        column: None,
        outcome,
        note,
        steps: Vec::new(),
    }
}
