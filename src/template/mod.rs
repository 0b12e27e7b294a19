//! Rendering plan strings (MiniJinja, strict about undefined names) in the
//! three contexts a rendered value can land in:
//!
//! - [`render_text`]: file contents, argv elements, env values, URLs. The
//!   value is pasted as it is.
//! - [`render_shell`]: a `shell:` script. Every interpolated value arrives
//!   as exactly one POSIX shell word (single-quoted), and a value placed
//!   where quoting cannot hold (inside double quotes, a comment, a
//!   here-document, ...) is refused. `| shell_unsafe` pastes a trusted
//!   fragment raw.
//! - [`render_path`]: a path bootplan writes or checks. A NUL, or a `..`
//!   component that came from an interpolated value, is refused.
//!
//! Interpolated values are recognised by a formatter that writes a
//! placeholder for each `{{ ... }}` output and keeps the value aside; the
//! placeholders are resolved after rendering, once their surroundings are
//! known. Facts, env, vars and secrets are data: the plan author's literal
//! text is the only thing that decides a script's or a path's shape.
//!
//! Filters added to MiniJinja's built-ins: `shquote` (quote for `sh`, for
//! `run:` argv handed to `sh -c` and for rendered scripts) and
//! `shell_unsafe` (no quoting in a `shell:` script; a no-op elsewhere).

pub mod shell;

use std::sync::{Arc, Mutex};

use minijinja::value::{Object, Value};

/// Marks the start and end of a placeholder in rendered text. Plan text may
/// not contain them (they are control characters no template needs).
const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';

/// Why a string could not be rendered. The message never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A syntax error, an undefined name, a failing filter.
    #[error("{message}")]
    Render { message: String },
    /// A value in a `shell:` script where quoting cannot keep it one word.
    #[error("{message}")]
    Placement { message: String },
    /// A rendered path with a NUL, or a `..` from an interpolated value.
    #[error("{message}")]
    UnsafePath { message: String },
}

/// How a rendered value is pasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Text,
    Shell,
    Path,
}

/// An interpolated value, kept aside while the template renders.
#[derive(Debug)]
struct Piece {
    text: String,
    kind: PieceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceKind {
    /// A plain value: quoted in a script.
    Value,
    /// The output of `shquote`: already one quoted word.
    Quoted,
    /// The output of `shell_unsafe`: pasted raw.
    Raw,
}

/// `shquote`'s output inside a `shell:` script: one word already.
#[derive(Debug)]
struct Quoted(String);

/// `shell_unsafe`'s output inside a `shell:` script.
#[derive(Debug)]
struct Unsafe(String);

impl Object for Quoted {
    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Object for Unsafe {
    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Renders `text` for a file, an argv element, an env value or a URL.
pub fn render_text(text: &str, context: Value) -> Result<String, TemplateError> {
    if !is_template(text) {
        return Ok(text.to_string());
    }
    let env = environment(Mode::Text, None);
    env.render_str(text, context).map_err(render_error)
}

/// Renders a `shell:` script: every value becomes one quoted shell word.
pub fn render_shell(text: &str, context: Value) -> Result<String, TemplateError> {
    if !is_template(text) {
        return Ok(text.to_string());
    }
    let (marked, pieces) = render_marked(text, context, Mode::Shell)?;
    let bad: Vec<shell::BadPlacement> = shell::check_contexts(&marked, OPEN, CLOSE)
        .into_iter()
        .filter(|b| {
            pieces
                .get(b.index)
                .is_some_and(|p| p.kind != PieceKind::Raw)
        })
        .collect();
    if let Some(first) = bad.first() {
        return Err(TemplateError::Placement {
            message: format!("{} ({})", first.describe(), shell::PLACEMENT_HINT),
        });
    }
    if pieces.iter().any(|p| p.text.contains('\0')) {
        return Err(TemplateError::Placement {
            message: "an interpolated value holds a NUL byte, which no shell word can".into(),
        });
    }
    Ok(substitute(&marked, &pieces, |piece| match piece.kind {
        PieceKind::Value => shell::quote(&piece.text),
        PieceKind::Quoted | PieceKind::Raw => piece.text.clone(),
    })
    .0)
}

/// Renders a path: refused when it holds a NUL, or when a `..` component
/// comes (wholly or partly) from an interpolated value.
pub fn render_path(text: &str, context: Value) -> Result<String, TemplateError> {
    let (path, interpolated) = if is_template(text) {
        let (marked, pieces) = render_marked(text, context, Mode::Path)?;
        substitute(&marked, &pieces, |piece| piece.text.clone())
    } else {
        (text.to_string(), Vec::new())
    };
    check_path(&path, &interpolated)?;
    Ok(path)
}

/// A path's NUL and `..` checks; `interpolated` are the byte ranges that
/// came from values.
fn check_path(path: &str, interpolated: &[std::ops::Range<usize>]) -> Result<(), TemplateError> {
    if path.contains('\0') {
        return Err(TemplateError::UnsafePath {
            message: "the path holds a NUL byte".into(),
        });
    }
    let mut start = 0;
    for component in path.split('/') {
        let range = start..start + component.len();
        start = range.end + 1;
        if component == ".."
            && interpolated
                .iter()
                .any(|r| r.start < range.end && range.start < r.end)
        {
            return Err(TemplateError::UnsafePath {
                message: format!(
                    "the rendered path `{}` climbs out with a `..` that came from an interpolated value",
                    printable(path)
                ),
            });
        }
    }
    Ok(())
}

/// Control characters shown escaped, so a message stays one line.
fn printable(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).collect()
}

/// Whether `text` contains template syntax at all; plain strings skip the parser.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// Renders with a placeholder for every interpolated value.
fn render_marked(
    text: &str,
    context: Value,
    mode: Mode,
) -> Result<(String, Vec<Piece>), TemplateError> {
    if text.contains(OPEN) || text.contains(CLOSE) {
        return Err(TemplateError::Render {
            message: "the text holds the control characters U+0001 or U+0002".into(),
        });
    }
    let pieces = Arc::new(Mutex::new(Vec::new()));
    let env = environment(mode, Some(pieces.clone()));
    let marked = env.render_str(text, context).map_err(render_error)?;
    drop(env);
    let pieces = std::mem::take(&mut *pieces.lock().unwrap_or_else(|p| p.into_inner()));
    // A block filter or a captured `{% set %}` that changed a placeholder
    // would hide where a value went: refuse rather than guess.
    let (_, ranges) = substitute(&marked, &pieces, |piece| piece.text.clone());
    let found = marked.matches(OPEN).count();
    if found != pieces.len()
        || ranges.len() != pieces.len()
        || marked.matches(CLOSE).count() != found
    {
        return Err(TemplateError::Render {
            message: "a value was transformed after it was printed (a filter block or a captured `set`); print values directly".into(),
        });
    }
    Ok((marked, pieces))
}

/// Replaces each placeholder of `marked` with `paste(piece)`; returns the
/// text and the byte range each pasted piece occupies in it.
fn substitute(
    marked: &str,
    pieces: &[Piece],
    paste: impl Fn(&Piece) -> String,
) -> (String, Vec<std::ops::Range<usize>>) {
    let mut out = String::with_capacity(marked.len());
    let mut ranges = Vec::new();
    let mut rest = marked;
    while let Some(open) = rest.find(OPEN) {
        out.push_str(&rest[..open]);
        let after = &rest[open + OPEN.len_utf8()..];
        let Some(close) = after.find(CLOSE) else {
            out.push_str(&rest[open..]);
            return (out, ranges);
        };
        let piece = after[..close]
            .parse::<usize>()
            .ok()
            .and_then(|i| pieces.get(i));
        match piece {
            Some(piece) => {
                let start = out.len();
                out.push_str(&paste(piece));
                ranges.push(start..out.len());
            }
            None => out.push_str(&rest[open..open + OPEN.len_utf8() + close + CLOSE.len_utf8()]),
        }
        rest = &after[close + CLOSE.len_utf8()..];
    }
    out.push_str(rest);
    (out, ranges)
}

/// A strict environment for one mode; with `pieces`, every printed value
/// is kept there and a placeholder printed instead.
fn environment(
    mode: Mode,
    pieces: Option<Arc<Mutex<Vec<Piece>>>>,
) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    if mode == Mode::Shell {
        env.add_filter("shquote", |value: String| {
            Value::from_object(Quoted(shell::quote(&value)))
        });
        env.add_filter("shell_unsafe", |value: String| {
            Value::from_object(Unsafe(value))
        });
    } else {
        env.add_filter("shquote", |value: String| shell::quote(&value));
        env.add_filter("shell_unsafe", |value: String| value);
    }
    if let Some(pieces) = pieces {
        env.set_formatter(move |out, _state, value| {
            let (text, kind) = if let Some(q) = value.downcast_object_ref::<Quoted>() {
                (q.0.clone(), PieceKind::Quoted)
            } else if let Some(u) = value.downcast_object_ref::<Unsafe>() {
                (u.0.clone(), PieceKind::Raw)
            } else if value.is_undefined() {
                (String::new(), PieceKind::Value)
            } else {
                (value.to_string(), PieceKind::Value)
            };
            if text.contains(OPEN) || text.contains(CLOSE) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "a printed value holds another printed value (a captured `set` or macro); print values directly",
                ));
            }
            let mut pieces = pieces.lock().unwrap_or_else(|p| p.into_inner());
            let index = pieces.len();
            pieces.push(Piece { text, kind });
            write!(out, "{OPEN}{index}{CLOSE}").map_err(minijinja::Error::from)
        });
    }
    env
}

fn render_error(err: minijinja::Error) -> TemplateError {
    TemplateError::Render {
        message: describe_error(&err),
    }
}

/// A template error as one line: what went wrong and on which template line.
pub fn describe_error(err: &minijinja::Error) -> String {
    let detail = err.detail().map(|d| format!(": {d}")).unwrap_or_default();
    match err.line() {
        Some(line) => format!("template error on line {line}: {}{detail}", err.kind()),
        None => format!("template error: {}{detail}", err.kind()),
    }
}

/// The `{{ ... }}` expressions of a template source, in order, each with
/// the source line it starts on. `{% ... %}` and `{# ... #}` are skipped.
/// Used at validation time, where nothing is rendered.
pub fn expressions(text: &str) -> Vec<(usize, &str)> {
    let mut found = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        let body = &rest[start + 2..];
        let Some(end) = body.find("}}") else { break };
        let line = text[..offset + start].matches('\n').count() + 1;
        found.push((
            line,
            body[..end].trim_matches(|c: char| c == '-' || c.is_whitespace()),
        ));
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    found
}

/// A template source with each `{{ ... }}` replaced by a placeholder and
/// the `{% ... %}`/`{# ... #}` tags removed: the script's shape as the
/// plan author wrote it, for checking placements at validation time.
pub fn source_with_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut index = 0;
    loop {
        let next = ["{{", "{%", "{#"]
            .iter()
            .filter_map(|open| rest.find(open).map(|at| (at, *open)))
            .min();
        let Some((at, open)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        let close = match open {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        let body = &rest[at + 2..];
        let Some(end) = body.find(close) else {
            return out;
        };
        // Keep the line count: a tag's own newlines stay.
        let newlines = body[..end].matches('\n').count();
        if open == "{{" {
            out.push_str(&format!("{OPEN}{index}{CLOSE}"));
            index += 1;
        }
        out.extend(std::iter::repeat_n('\n', newlines));
        rest = &body[end + close.len()..];
    }
}

/// Badly placed `{{ ... }}` in a `shell:` script's source, found without
/// rendering (the run checks the rendered script again).
pub fn shell_placements(script: &str) -> Vec<shell::BadPlacement> {
    shell::check_contexts(&source_with_placeholders(script), OPEN, CLOSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Value {
        minijinja::context! {
            env => minijinja::context! {
                APPNAME => "x; touch /tmp/INJECTED #",
                QUOTE => "it's \"here\" $(id) `id`",
                DOTS => "..",
                SUB => "a/../../etc",
                PLAIN => "web",
            },
        }
    }

    #[test]
    fn shell_values_arrive_as_one_word() {
        let script = render_shell("echo {{ env.APPNAME }} {{ env.QUOTE }}", ctx()).unwrap();
        assert_eq!(
            script,
            "echo 'x; touch /tmp/INJECTED #' 'it'\\''s \"here\" $(id) `id`'"
        );
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("printf '%s\\n' {}", &script[5..])])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "x; touch /tmp/INJECTED #\nit's \"here\" $(id) `id`\n"
        );
    }

    #[test]
    fn shell_values_in_quotes_are_refused() {
        let err = render_shell("echo \"hello {{ env.PLAIN }}\"", ctx()).unwrap_err();
        assert!(
            err.to_string().contains("inside double quotes on line 1"),
            "{err}"
        );
        // A quote opened by a condition the source scan cannot see is
        // still caught on the rendered script.
        let err = render_shell(
            "echo {% if env.PLAIN == 'web' %}'{% endif %}{{ env.APPNAME }}",
            ctx(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("inside single quotes"), "{err}");
    }

    #[test]
    fn shquote_and_shell_unsafe() {
        assert_eq!(
            render_shell("echo {{ env.APPNAME | shquote }}", ctx()).unwrap(),
            "echo 'x; touch /tmp/INJECTED #'"
        );
        assert_eq!(
            render_shell("{{ env.APPNAME | shell_unsafe }}", ctx()).unwrap(),
            "x; touch /tmp/INJECTED #"
        );
        assert_eq!(
            render_text(
                "sh -c {{ env.PLAIN | shquote }} {{ env.DOTS | shquote }}",
                ctx()
            )
            .unwrap(),
            "sh -c web .."
        );
        assert_eq!(
            render_text("{{ env.APPNAME | shquote }}", ctx()).unwrap(),
            "'x; touch /tmp/INJECTED #'"
        );
        assert_eq!(
            render_text("{{ env.APPNAME | shell_unsafe }}", ctx()).unwrap(),
            "x; touch /tmp/INJECTED #"
        );
    }

    #[test]
    fn capture_blocks_cannot_hide_a_value() {
        let err = render_shell(
            "{% set s %}{{ env.APPNAME }}{% endset %}echo {{ s }}",
            ctx(),
        )
        .unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
        let err = render_shell(
            "{% filter upper %}echo {{ env.APPNAME }}{% endfilter %}",
            ctx(),
        );
        assert!(err.is_err(), "{err:?}");
    }

    #[test]
    fn paths_cannot_climb_out_through_values() {
        assert_eq!(
            render_path("/srv/{{ env.PLAIN }}/app.conf", ctx()).unwrap(),
            "/srv/web/app.conf"
        );
        // The plan author's own `..` is theirs to write.
        assert_eq!(
            render_path("/srv/app/../x", ctx()).unwrap(),
            "/srv/app/../x"
        );
        for bad in [
            "/srv/{{ env.DOTS }}/etc/shadow",
            "/srv/{{ env.SUB }}/passwd",
            "/srv/.{{ '.' }}/x",
        ] {
            let err = render_path(bad, ctx()).unwrap_err();
            assert!(
                matches!(err, TemplateError::UnsafePath { .. }),
                "{bad}: {err}"
            );
            assert!(
                err.to_string().contains("came from an interpolated value"),
                "{err}"
            );
        }
        assert!(render_path("/srv/a\0b", ctx()).is_err());
    }

    #[test]
    fn source_placeholders_keep_lines() {
        let bad = shell_placements("echo {{ a }}\n{% if x %}\necho \"{{ b }}\"\n{% endif %}");
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 3);
        assert_eq!(bad[0].index, 1);
        assert_eq!(
            expressions("a {{ x | shell_unsafe }}\n{{- y -}}"),
            [(1, "x | shell_unsafe"), (2, "y")]
        );
    }
}
