//! Reading a plan file and parsing it into raw types, by file extension.

use super::bounded::{Bounded, read_bounded};
use std::path::Path;

use super::PlanError;
use super::diagnostic::{Diagnostic, Position, Severity, hint_for_serde_message};
use super::raw::RawPlan;

/// The plan file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Toml,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        // A plan from user data (`user-data:PROVIDER`) is YAML, like cloud-config.
        if path
            .to_str()
            .is_some_and(|p| p.starts_with(USER_DATA_SCHEME))
        {
            return Some(Format::Yaml);
        }
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// How a plan from the machine's user data is shown: `user-data:PROVIDER`.
pub const USER_DATA_SCHEME: &str = "user-data:";

/// Largest plan file accepted; a plan is a few KiB, anything near this is a mistake.
const MAX_PLAN_BYTES: u64 = 4 * 1024 * 1024;

/// Reads the file at `path` as UTF-8 text: a regular file of at most
/// [`MAX_PLAN_BYTES`]. A device (`/dev/zero`), a FIFO or a directory is
/// refused without reading it, and no read goes past the limit.
pub fn read_plan_text(path: &Path) -> Result<String, PlanError> {
    let bytes = read_bounded(path, MAX_PLAN_BYTES).map_err(|err| match err {
        Bounded::Io(source) => PlanError::Read {
            path: path.to_path_buf(),
            source,
        },
        Bounded::Problem(message, hint) => PlanError::invalid_one(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            position: None,
            field: String::new(),
            message,
            hint: Some(hint.into()),
        }),
    })?;
    String::from_utf8(bytes).map_err(|err| {
        let valid = err.utf8_error().valid_up_to();
        let bytes = err.into_bytes();
        let before = String::from_utf8_lossy(&bytes[..valid]);
        PlanError::invalid_one(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            position: Some(offset_to_position(&before, before.len())),
            field: String::new(),
            message: format!("the file is not valid UTF-8 (at byte {valid})"),
            hint: Some("save the plan as UTF-8 text".into()),
        })
    })
}

/// Parses `text` into the raw plan. A parse error stops at the first problem,
/// since nothing after it can be trusted.
pub fn parse<S: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<RawPlan<S>, Box<Diagnostic>> {
    parse_doc(path, text)
}

/// Parses `text` (YAML, JSON or TOML by `path`'s extension) into `T`.
pub fn parse_doc<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, Box<Diagnostic>> {
    let format = Format::from_path(path).ok_or_else(|| {
        Box::new(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            position: None,
            field: String::new(),
            message: "unknown plan file extension".into(),
            hint: Some("name the plan *.yaml, *.yml, *.toml or *.json".into()),
        })
    })?;
    match format {
        // JSON is a subset of YAML 1.2, so one parser gives both formats line and column.
        Format::Yaml | Format::Json => parse_yaml(path, text),
        Format::Toml => parse_toml(path, text),
    }
}

fn parse_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, Box<Diagnostic>> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options(text, options).map_err(|err| {
        let position = err.location().and_then(Position::from_saphyr);
        Box::new(parse_diagnostic(
            path,
            position,
            clean_saphyr_message(&err.to_string()),
        ))
    })
}

/// serde-saphyr appends " at line X, column Y" to messages; the location is
/// reported separately, so that tail is dropped.
fn clean_saphyr_message(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).trim();
    // Advice meant for programs embedding the parser, not for plan authors.
    let first_line = first_line
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first_line);
    match first_line.rfind(" at line ") {
        Some(idx) => first_line[..idx].to_string(),
        None => first_line.to_string(),
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, Box<Diagnostic>> {
    toml::from_str(text).map_err(|err: toml::de::Error| {
        let position = err.span().map(|span| offset_to_position(text, span.start));
        Box::new(parse_diagnostic(
            path,
            position,
            err.message().trim().to_string(),
        ))
    })
}

/// A parser's error as a diagnostic, with the best hint we have for it.
fn parse_diagnostic(path: &Path, position: Option<Position>, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        position,
        field: String::new(),
        hint: hint_for_serde_message(&message).or_else(|| generic_hint(&message)),
        message,
    }
}

pub(crate) fn generic_hint(message: &str) -> Option<String> {
    if message.contains("duplicate mapping key") || message.contains("duplicate key") {
        Some("each name may appear only once in a mapping; rename or merge one of them".into())
    } else if message.contains("expected sequence") {
        Some("this field takes a list, e.g. [\"/usr/bin/app\", \"serve\"]".into())
    } else if message.contains("expected mapping") {
        Some(
            "this field takes a mapping of `key: value` pairs; a plan starts with `version: 1`"
                .into(),
        )
    } else if message.contains("end of input") {
        Some(
            "the plan is empty or cut short; a plan needs at least `version`, `name` and `steps`"
                .into(),
        )
    } else if message.contains("missing field") {
        Some("add the field; see docs/plan.md for what each section needs".into())
    } else if message.contains("invalid type") {
        Some("check the value's type against docs/plan.md (commands are lists of strings)".into())
    } else {
        None
    }
}

/// 1-based line and column of a byte offset.
pub fn offset_to_position(text: &str, offset: usize) -> Position {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() as u64 + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    Position { line, column }
}

/// Where the field at dotted `path` (`steps.web.template.mode`,
/// `register.etcd.endpoints`) is written in the plan text, found by
/// looking for each key in turn after the one before: YAML and JSON keys
/// (`mode:`, `"mode":`) and TOML keys and tables (`mode =`, `[steps.web]`).
/// The deepest key found gives the position; `None` when not even the
/// first is there.
pub fn locate(text: &str, path: &str) -> Option<Position> {
    let mut from = 0;
    let mut found = None;
    for segment in path.split('.').map(|s| s.split('[').next().unwrap_or(s)) {
        if segment.is_empty() {
            continue;
        }
        match find_key(text, from, segment) {
            Some(at) => {
                found = Some(at);
                from = at + segment.len();
            }
            None => break,
        }
    }
    found.map(|at| offset_to_position(text, at))
}

/// The byte offset of `key` written as a key at or after `from`.
fn find_key(text: &str, from: usize, key: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut start = from;
    while let Some(rel) = text.get(start..)?.find(key) {
        let at = start + rel;
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = text[at + key.len()..].trim_start_matches(['"', '\'']);
        let after = after.trim_start_matches([' ', '\t']);
        let starts_key = before.is_none_or(|b| b" \t\n{,[.\"'".contains(&b));
        let ends_key = after.starts_with(':')
            || after.starts_with('=')
            || after.starts_with(']')
            || after.starts_with('.');
        if starts_key && ends_key {
            return Some(at);
        }
        start = at + key.len();
    }
    None
}
