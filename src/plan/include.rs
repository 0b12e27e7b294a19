//! `include:` — other plan files merged into this one.
//!
//! An entry is a local path (relative to the including file) or a URL
//! pinned with `#sha256=…` (or signed, under `--require-signature`). An
//! included file holds `steps`, `secrets`, `vars` and `backends` (and
//! may say `version: 1`); it includes nothing itself. The files are
//! merged in order, the including file last: a step defined twice is an
//! error naming both places unless the later definition says
//! `override: true`; a secret defined twice is an error; `vars` and each
//! backend's settings: the later file wins. Each problem is reported
//! with the file and line it is in; the plan's digest covers every file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostic, Position, Severity};
use super::raw::{RawPlan, RawStep};
use super::secret_source::{BackendsConfig, SecretSource};
use super::source::{self, Verification};

/// Most files one plan may include.
const MAX_INCLUDES: usize = 64;

/// An included file's content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFragment {
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub vars: IndexMap<String, serde_json::Value>,
    #[serde(default)]
    pub secrets: IndexMap<String, Spanned<SecretSource>>,
    #[serde(default)]
    pub backends: BackendsConfig,
    #[serde(default)]
    pub steps: IndexMap<String, Spanned<RawStep>>,
}

/// Where each part of a merged plan came from: file 0 is the including
/// plan, then the included files in order.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// (shown path, text) of each file.
    pub files: Vec<(PathBuf, String)>,
    /// The file each step's definition is in.
    pub step_file: HashMap<String, usize>,
    /// The file each secret's definition is in.
    pub secret_file: HashMap<String, usize>,
}

impl Sources {
    /// The file a diagnostic about `field` belongs to (`None`: the plan's own).
    pub fn file_of(&self, field: &str) -> Option<&(PathBuf, String)> {
        let (map, rest) = if let Some(rest) = field.strip_prefix("steps.") {
            (&self.step_file, rest)
        } else if let Some(rest) = field.strip_prefix("secrets.") {
            (&self.secret_file, rest)
        } else {
            return None;
        };
        // The longest name that the field starts with (names may hold dots).
        let index = map
            .iter()
            .filter(|(name, _)| {
                rest.strip_prefix(name.as_str())
                    .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, i)| *i)?;
        if index == 0 {
            return None;
        }
        self.files.get(index)
    }

    /// The digest of the merged plan: every file's text, in order.
    pub fn digest(&self, text: &str) -> String {
        use sha2::Digest as _;
        if self.files.len() <= 1 {
            return format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            );
        }
        let mut hasher = sha2::Sha256::new();
        hasher.update(text.as_bytes());
        for (path, text) in self.files.iter().skip(1) {
            hasher.update(b"\0include\0");
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update(b"\0");
            hasher.update(text.as_bytes());
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }
}

fn error(
    file: &Path,
    position: Option<Position>,
    field: String,
    message: String,
    hint: Option<&str>,
) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        position,
        field,
        message,
        hint: hint.map(str::to_string),
    }
}

fn shown(file: &Path, position: Option<Position>) -> String {
    match position {
        Some(p) => format!("{}:{}:{}", file.display(), p.line, p.column),
        None => file.display().to_string(),
    }
}

/// Reads every file `raw` includes and merges them into it. `path` is the
/// plan's own (shown) path; `remote` whether it came from a URL (then its
/// includes must be URLs too).
pub fn merge(
    raw: &mut RawPlan,
    path: &Path,
    text: &str,
    remote: bool,
    verification: &Verification,
) -> Result<Sources, Vec<Diagnostic>> {
    let mut sources = Sources {
        files: vec![(path.to_path_buf(), text.to_string())],
        ..Sources::default()
    };
    if raw.include.is_empty() {
        return Ok(sources);
    }
    let mut problems = Vec::new();
    if raw.include.len() > MAX_INCLUDES {
        problems.push(error(
            path,
            None,
            "include".into(),
            format!("at most {MAX_INCLUDES} files may be included"),
            None,
        ));
        return Err(problems);
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut steps: IndexMap<String, Spanned<RawStep>> = IndexMap::new();
    let mut secrets: IndexMap<String, Spanned<SecretSource>> = IndexMap::new();
    let mut vars: IndexMap<String, serde_json::Value> = IndexMap::new();
    let mut backends = BackendsConfig::default();
    let mut positions: HashMap<String, (usize, Option<Position>)> = HashMap::new();
    let mut secret_positions: HashMap<String, (usize, Option<Position>)> = HashMap::new();
    let includes = std::mem::take(&mut raw.include);
    for (i, entry) in includes.iter().enumerate() {
        let field = format!("include[{i}]");
        let at = Position::from_saphyr(entry.referenced);
        let (shown_path, text) = match read_include(&entry.value.0, &base, remote, verification) {
            Ok(found) => found,
            Err(message) => {
                problems.push(error(
                    path,
                    at,
                    field,
                    message,
                    Some("give a path relative to this plan, or a URL pinned with #sha256=HEX"),
                ));
                continue;
            }
        };
        let fragment: RawFragment = match super::load::parse_doc(&shown_path, &text) {
            Ok(f) => f,
            Err(d) => {
                problems.push(*d);
                continue;
            }
        };
        if fragment.version.is_some_and(|v| v != 1) {
            problems.push(error(
                &shown_path,
                None,
                "version".into(),
                "an included file says `version: 1` or nothing".into(),
                None,
            ));
        }
        let index = sources.files.len();
        sources.files.push((shown_path.clone(), text));
        add_file(
            index,
            &sources.files,
            fragment.steps,
            fragment.secrets,
            &mut steps,
            &mut secrets,
            &mut positions,
            &mut secret_positions,
            &mut problems,
        );
        vars.extend(fragment.vars);
        merge_backends(&mut backends, fragment.backends);
    }
    // The including plan last: its definitions are the latest.
    let own_steps = std::mem::take(&mut raw.steps);
    let own_secrets = std::mem::take(&mut raw.secrets);
    add_file(
        0,
        &sources.files,
        own_steps,
        own_secrets,
        &mut steps,
        &mut secrets,
        &mut positions,
        &mut secret_positions,
        &mut problems,
    );
    vars.extend(std::mem::take(&mut raw.vars));
    merge_backends(&mut backends, std::mem::take(&mut raw.backends));
    raw.steps = steps;
    raw.secrets = secrets;
    raw.vars = vars;
    raw.backends = backends;
    raw.include = includes;
    sources.step_file = positions.into_iter().map(|(k, (i, _))| (k, i)).collect();
    sources.secret_file = secret_positions
        .into_iter()
        .map(|(k, (i, _))| (k, i))
        .collect();
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(problems)
    }
}

#[allow(clippy::too_many_arguments)]
fn add_file(
    index: usize,
    files: &[(PathBuf, String)],
    new_steps: IndexMap<String, Spanned<RawStep>>,
    new_secrets: IndexMap<String, Spanned<SecretSource>>,
    steps: &mut IndexMap<String, Spanned<RawStep>>,
    secrets: &mut IndexMap<String, Spanned<SecretSource>>,
    positions: &mut HashMap<String, (usize, Option<Position>)>,
    secret_positions: &mut HashMap<String, (usize, Option<Position>)>,
    problems: &mut Vec<Diagnostic>,
) {
    let file = &files[index].0;
    for (name, step) in new_steps {
        let at = Position::from_saphyr(step.referenced);
        if let Some((earlier, earlier_at)) = positions.get(&name) {
            if !step.value.replaces {
                problems.push(error(
                    file,
                    at,
                    format!("steps.{name}"),
                    format!(
                        "step `{name}` is defined twice: here and at {}",
                        shown(&files[*earlier].0, *earlier_at)
                    ),
                    Some("rename one of them, or write `override: true` on this one to replace the earlier"),
                ));
                continue;
            }
        } else if step.value.replaces {
            problems.push(Diagnostic {
                severity: Severity::Warning,
                ..error(
                    file,
                    at,
                    format!("steps.{name}.override"),
                    format!("`override: true`, but no earlier file defines step `{name}`"),
                    None,
                )
            });
        }
        positions.insert(name.clone(), (index, at));
        steps.insert(name, step);
    }
    for (name, secret) in new_secrets {
        let at = Position::from_saphyr(secret.referenced);
        if let Some((earlier, earlier_at)) = secret_positions.get(&name) {
            problems.push(error(
                file,
                at,
                format!("secrets.{name}"),
                format!(
                    "secret `{name}` is defined twice: here and at {}",
                    shown(&files[*earlier].0, *earlier_at)
                ),
                Some("define each secret in one file"),
            ));
            continue;
        }
        secret_positions.insert(name.clone(), (index, at));
        secrets.insert(name, secret);
    }
}

fn merge_backends(into: &mut BackendsConfig, later: BackendsConfig) {
    if later.vault.is_some() {
        into.vault = later.vault;
    }
    if later.aws.is_some() {
        into.aws = later.aws;
    }
    if later.files.is_some() {
        into.files = later.files;
    }
}

/// The (shown path, text) of one include entry.
fn read_include(
    entry: &str,
    base: &Path,
    remote: bool,
    verification: &Verification,
) -> Result<(PathBuf, String), String> {
    if source::is_url(entry) {
        return source::fetch_verified(entry, verification)
            .map(|text| (source::shown_path(entry), text))
            .map_err(|e| e.to_string());
    }
    if remote {
        return Err(format!(
            "`{entry}` is a local path in a plan from a URL: include pinned URLs"
        ));
    }
    let path = base.join(entry);
    super::load::read_plan_text(&path)
        .map(|text| (path.clone(), text))
        .map_err(|e| match e {
            super::PlanError::Invalid { diagnostics } => diagnostics
                .first()
                .map(|d| format!("{}: {}", path.display(), d.message))
                .unwrap_or_default(),
            other => other.to_string(),
        })
}
