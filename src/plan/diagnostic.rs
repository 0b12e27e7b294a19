//! Plan problems with a location, a field path and a hint.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// A position in the plan file (1-based). Unknown positions are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    /// Converts a serde-saphyr location; its "unknown" location (line 0) becomes `None`.
    pub fn from_saphyr(loc: serde_saphyr::Location) -> Option<Position> {
        (loc.line() > 0).then(|| Position {
            line: loc.line(),
            column: loc.column(),
        })
    }
}

/// How bad a problem is: an error makes the plan invalid, a warning is
/// reported and the plan still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Error,
    Warning,
}

/// One problem found in a plan.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    #[serde(default)]
    pub severity: Severity,
    pub file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Dotted path of the offending field, e.g. `steps.app.needs`.
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(pos) = self.position {
            write!(f, ":{}:{}", pos.line, pos.column)?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)?;
        } else {
            write!(f, ": {}: {}", self.field, self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// The closest candidate to `word`, if any is close enough to be a likely
/// typo: at most two edits away (and fewer edits than the word is long), or
/// sharing most of its prefix (`instance` → `instance_id`).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(word, c),
                strsim::jaro_winkler(word, c),
                c,
            )
        })
        .filter(|&(dist, jw, _)| (dist <= 2 && dist < word.chars().count()) || jw >= 0.88)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

/// Adds a "did you mean" hint to serde's `unknown field `x`, expected one of ...`
/// and `unknown variant` messages (with or without backticks around names).
pub fn hint_for_serde_message(message: &str) -> Option<String> {
    let (word, rest) = ["unknown field ", "unknown variant "]
        .iter()
        .find_map(|prefix| {
            let start = message.find(prefix)? + prefix.len();
            let tail = &message[start..];
            let word_end = tail.find(',').unwrap_or(tail.len());
            Some((tail[..word_end].trim().trim_matches('`'), &tail[word_end..]))
        })?;
    let list = rest
        .split_once("expected one of ")
        .or_else(|| rest.split_once("expected "))
        .map_or("", |(_, list)| list);
    let expected: Vec<&str> = list
        .split(", ")
        .flat_map(|part| part.split(" or "))
        .map(|name| name.trim().trim_matches('`'))
        .filter(|name| !name.is_empty() && !name.contains(' '))
        .collect();
    if let Some(best) = did_you_mean(word, expected.iter().copied()) {
        return Some(format!("did you mean `{best}`?"));
    }
    (!expected.is_empty()).then(|| format!("valid names here: {}", expected.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_field() {
        let hint =
            hint_for_serde_message("unknown field `neds`, expected one of `run`, `needs`, `env`");
        assert_eq!(hint.as_deref(), Some("did you mean `needs`?"));
    }

    #[test]
    fn suggests_for_short_and_prefix_typos() {
        assert_eq!(did_you_mean("rn", ["run", "env", "shell"]), Some("run"));
        assert_eq!(
            did_you_mean("instance", ["instance_id", "region"]),
            Some("instance_id")
        );
        assert_eq!(did_you_mean("xyz", ["run", "env"]), None);
    }

    #[test]
    fn suggests_without_backticks() {
        let hint = hint_for_serde_message(
            "unknown variant `per-reboot`, expected one of always, per-boot, once",
        );
        assert_eq!(hint.as_deref(), Some("did you mean `per-boot`?"));
    }

    #[test]
    fn lists_fields_when_nothing_is_close() {
        let hint = hint_for_serde_message("unknown field `zzz`, expected `run` or `env`").unwrap();
        assert!(hint.contains("run, env"), "{hint}");
    }
}
