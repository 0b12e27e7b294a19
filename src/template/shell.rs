//! POSIX shell quoting, and where in a script a value may be pasted.
//!
//! A value interpolated into a `shell:` script must arrive as exactly one
//! shell word. Single quotes do that in a plain word context (`echo VALUE`,
//! `--name=VALUE`, `$(cat VALUE)`), but inside double quotes, a comment, a
//! here-document, `${...}`, backticks or after `$`/`\` the same quotes
//! change meaning and a value could end them. [`check_contexts`] finds each
//! placeholder's context with a small lexer so such a script is refused
//! instead of run.

/// Quotes `value` as one POSIX shell word. Words made only of characters
/// the shell never interprets stay as they are, for readable logs.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Where the lexer is in the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Plain words: the top level, or inside `$( ... )` (with its open
    /// parentheses counted, so `$( (a) )` ends at the right one).
    Words {
        parens: u32,
    },
    Single,
    Double,
    Backtick,
    /// `${ ... }` (counted braces) or `$(( ... ))`.
    Expansion,
    Comment,
}

/// A placeholder found where a quoted word would not stay one word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPlacement {
    /// The placeholder's index, as given by the caller's marker.
    pub index: usize,
    /// 1-based line of the script.
    pub line: usize,
    /// What surrounds it, e.g. "inside double quotes".
    pub context: &'static str,
}

impl BadPlacement {
    pub fn describe(&self) -> String {
        format!(
            "a value is interpolated {} on line {} of the script, where quoting cannot keep it one word",
            self.context, self.line
        )
    }
}

/// The hint shown with a [`BadPlacement`].
pub const PLACEMENT_HINT: &str = "bootplan quotes every `{{ ... }}` in a shell script as one word: \
     write `echo {{ vars.name }}`, not `echo \"{{ vars.name }}\"`; \
     for here-documents, comments and `${...}` pass the value through `env:` and use \"$NAME\"";

/// Checks every placeholder in `script`. Placeholders are `open` + decimal
/// index + `close`; every other character is script text. Returns the
/// badly placed ones.
pub fn check_contexts(script: &str, open: char, close: char) -> Vec<BadPlacement> {
    let mut lexer = Lexer::new(open, close);
    lexer.run(script);
    lexer.bad
}

struct Lexer {
    open: char,
    close: char,
    stack: Vec<Ctx>,
    line: usize,
    /// Here-documents whose bodies start after the current line:
    /// (delimiter, strip leading tabs).
    pending_heredocs: Vec<(String, bool)>,
    bad: Vec<BadPlacement>,
}

impl Lexer {
    fn new(open: char, close: char) -> Lexer {
        Lexer {
            open,
            close,
            stack: vec![Ctx::Words { parens: 0 }],
            line: 1,
            pending_heredocs: Vec::new(),
            bad: Vec::new(),
        }
    }

    fn top(&self) -> Ctx {
        *self.stack.last().unwrap_or(&Ctx::Words { parens: 0 })
    }

    fn flag(&mut self, index: usize, context: &'static str) {
        self.bad.push(BadPlacement {
            index,
            line: self.line,
            context,
        });
    }

    /// Reads a placeholder starting at `chars[i]` (the open marker);
    /// returns its index and the position after it.
    fn placeholder(&self, chars: &[char], i: usize) -> (usize, usize) {
        let mut j = i + 1;
        let mut index = 0usize;
        while j < chars.len() && chars[j] != self.close {
            index = index
                .saturating_mul(10)
                .saturating_add(chars[j].to_digit(10).unwrap_or(0) as usize);
            j += 1;
        }
        (index, (j + 1).min(chars.len()))
    }

    fn run(&mut self, script: &str) {
        let chars: Vec<char> = script.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == self.open {
                let (index, next) = self.placeholder(&chars, i);
                let prev = i.checked_sub(1).map(|p| chars[p]);
                match self.top() {
                    Ctx::Words { .. } if prev == Some('$') => self.flag(index, "right after `$`"),
                    Ctx::Words { .. } => {}
                    Ctx::Single => self.flag(index, "inside single quotes"),
                    Ctx::Double => self.flag(index, "inside double quotes"),
                    Ctx::Backtick => self.flag(index, "inside backticks"),
                    Ctx::Expansion => self.flag(index, "inside `${...}` or `$((...))`"),
                    Ctx::Comment => self.flag(index, "inside a comment"),
                }
                i = next;
                continue;
            }
            if c == '\n' {
                self.line += 1;
                if self.top() == Ctx::Comment {
                    self.stack.pop();
                }
                if !self.pending_heredocs.is_empty() {
                    i = self.heredoc_bodies(&chars, i + 1);
                    continue;
                }
                i += 1;
                continue;
            }
            i = match self.top() {
                Ctx::Words { parens } => self.words(&chars, i, parens),
                Ctx::Single => {
                    if c == '\'' {
                        self.stack.pop();
                    }
                    i + 1
                }
                Ctx::Double => self.double(&chars, i),
                Ctx::Backtick => {
                    if c == '\\' {
                        i + 2
                    } else {
                        if c == '`' {
                            self.stack.pop();
                        }
                        i + 1
                    }
                }
                Ctx::Expansion => self.expansion(&chars, i),
                Ctx::Comment => i + 1,
            };
        }
    }

    /// An escaped character: a placeholder right after `\` would lose its
    /// opening quote to the backslash.
    fn escaped(&mut self, chars: &[char], i: usize) -> usize {
        match chars.get(i + 1) {
            Some(&next) if next == self.open => {
                let (index, _) = self.placeholder(chars, i + 1);
                self.flag(index, "right after a backslash");
                i + 1
            }
            Some('\n') => {
                self.line += 1;
                i + 2
            }
            _ => i + 2,
        }
    }

    fn words(&mut self, chars: &[char], i: usize, parens: u32) -> usize {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\\' => return self.escaped(chars, i),
            '\'' => self.stack.push(Ctx::Single),
            '"' => self.stack.push(Ctx::Double),
            '`' => self.stack.push(Ctx::Backtick),
            '#' if starts_word(chars, i) => self.stack.push(Ctx::Comment),
            '$' if matches!(next, Some('(' | '{')) => return self.dollar(chars, i),
            '(' => self.set_parens(parens + 1),
            ')' if parens > 0 => self.set_parens(parens - 1),
            ')' if self.stack.len() > 1 => {
                self.stack.pop();
            }
            '<' if next == Some('<') && chars.get(i + 2) != Some(&'<') => {
                return self.heredoc_operator(chars, i + 2);
            }
            _ => {}
        }
        i + 1
    }

    /// `$(` (command substitution: words again), `$((` or `${` at `i`.
    fn dollar(&mut self, chars: &[char], i: usize) -> usize {
        match (chars.get(i + 1), chars.get(i + 2)) {
            (Some('('), Some('(')) => {
                self.stack.push(Ctx::Expansion);
                i + 3
            }
            (Some('('), _) => {
                self.stack.push(Ctx::Words { parens: 0 });
                i + 2
            }
            _ => {
                self.stack.push(Ctx::Expansion);
                i + 2
            }
        }
    }

    fn set_parens(&mut self, parens: u32) {
        if let Some(top) = self.stack.last_mut() {
            *top = Ctx::Words { parens };
        }
    }

    fn double(&mut self, chars: &[char], i: usize) -> usize {
        let next = chars.get(i + 1).copied();
        match chars[i] {
            '\\' => return self.escaped(chars, i),
            '"' => {
                self.stack.pop();
            }
            '`' => self.stack.push(Ctx::Backtick),
            '$' if matches!(next, Some('(' | '{')) => return self.dollar(chars, i),
            _ => {}
        }
        i + 1
    }

    /// Inside `${...}` or `$((...))`: nesting is followed only far enough to
    /// find the end; anything pasted inside is refused anyway.
    fn expansion(&mut self, chars: &[char], i: usize) -> usize {
        let mut depth = 1u32;
        let mut j = i;
        // Count from the opening of this expansion: scan to its end.
        while j < chars.len() {
            let c = chars[j];
            if c == self.open {
                let (index, next) = self.placeholder(chars, j);
                self.flag(index, "inside `${...}` or `$((...))`");
                j = next;
                continue;
            }
            match c {
                '\n' => self.line += 1,
                '\\' => j += 1,
                '{' | '(' => depth += 1,
                '}' | ')' => {
                    depth -= 1;
                    if depth == 0 {
                        // `$((` closes with `))`.
                        if c == ')' && chars.get(j + 1) == Some(&')') {
                            j += 1;
                        }
                        self.stack.pop();
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        j
    }

    /// After `<<`: reads the delimiter word (quotes removed) of a
    /// here-document whose body starts on the next line.
    fn heredoc_operator(&mut self, chars: &[char], mut i: usize) -> usize {
        let strip_tabs = chars.get(i) == Some(&'-');
        if strip_tabs {
            i += 1;
        }
        while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
            i += 1;
        }
        let mut delimiter = String::new();
        while let Some(&c) = chars.get(i) {
            if c.is_whitespace() || ";&|<>()".contains(c) {
                break;
            }
            if c == self.open {
                let (index, next) = self.placeholder(chars, i);
                self.flag(index, "in a here-document's delimiter");
                i = next;
                continue;
            }
            if c != '\'' && c != '"' && c != '\\' {
                delimiter.push(c);
            }
            i += 1;
        }
        self.pending_heredocs.push((delimiter, strip_tabs));
        i
    }

    /// Skips the bodies of the pending here-documents, starting at the
    /// beginning of a line; flags placeholders in them.
    fn heredoc_bodies(&mut self, chars: &[char], mut i: usize) -> usize {
        let pending = std::mem::take(&mut self.pending_heredocs);
        for (delimiter, strip_tabs) in pending {
            loop {
                if i >= chars.len() {
                    return i;
                }
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == '\n')
                    .map_or(chars.len(), |p| i + p);
                let mut line: &[char] = &chars[i..end];
                if strip_tabs {
                    while line.first() == Some(&'\t') {
                        line = &line[1..];
                    }
                }
                let text: String = line.iter().collect();
                let mut j = i;
                while j < end {
                    if chars[j] == self.open {
                        let (index, next) = self.placeholder(chars, j);
                        self.flag(index, "inside a here-document");
                        j = next;
                    } else {
                        j += 1;
                    }
                }
                self.line += 1;
                i = end + 1;
                if text == delimiter {
                    break;
                }
            }
        }
        i
    }
}

/// Whether the character at `i` begins a word (so `#` starts a comment).
fn starts_word(chars: &[char], i: usize) -> bool {
    match i.checked_sub(1).map(|p| chars[p]) {
        None => true,
        Some(prev) => prev.is_whitespace() || ";&|()<>".contains(prev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: char = '\u{1}';
    const C: char = '\u{2}';

    fn script(text: &str) -> String {
        // `@` stands for placeholder 0, `%` for placeholder 1.
        text.replace('@', &format!("{O}0{C}"))
            .replace('%', &format!("{O}1{C}"))
    }

    fn contexts(text: &str) -> Vec<&'static str> {
        check_contexts(&script(text), O, C)
            .into_iter()
            .map(|b| b.context)
            .collect()
    }

    #[test]
    fn quoting_keeps_any_value_one_word() {
        assert_eq!(quote("plain-word_1.2/x"), "plain-word_1.2/x");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("x; touch /tmp/i #"), "'x; touch /tmp/i #'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$(id)`id`"), "'$(id)`id`'");
    }

    #[test]
    fn word_contexts_are_accepted() {
        for ok in [
            "echo @",
            "echo --name=@ %",
            "x=$(cat @) && echo \"$x\"",
            "for f in @ %; do echo \"$f\"; done",
            "case @ in a) echo a;; esac",
            "echo 'quoted' @ \"dq\" %",
            "echo $( (echo @) )",
            "cat <<EOF\nplain\nEOF\necho @",
            "echo a # comment\necho @",
            "echo a#b @",
        ] {
            assert!(contexts(ok).is_empty(), "{ok:?}: {:?}", contexts(ok));
        }
    }

    #[test]
    fn contexts_that_would_break_the_quoting_are_refused() {
        for (bad, context) in [
            ("echo \"@\"", "inside double quotes"),
            ("echo 'x@'", "inside single quotes"),
            ("echo `@`", "inside backticks"),
            ("echo ${X:-@}", "inside `${...}` or `$((...))`"),
            ("echo $((1 + @))", "inside `${...}` or `$((...))`"),
            ("echo x # @", "inside a comment"),
            ("cat <<EOF\n@\nEOF", "inside a here-document"),
            ("cat <<-'EOF'\n\t@\n\tEOF", "inside a here-document"),
            ("echo \\@", "right after a backslash"),
            ("echo $@", "right after `$`"),
            ("echo \"$(echo \"@\")\"", "inside double quotes"),
        ] {
            assert_eq!(contexts(bad), [context], "{bad:?}");
        }
    }

    #[test]
    fn lines_are_counted_and_every_placement_reported() {
        let bad = check_contexts(&script("echo @\necho \"%\"\n"), O, C);
        assert_eq!(
            bad,
            [BadPlacement {
                index: 1,
                line: 2,
                context: "inside double quotes"
            }]
        );
    }

    #[test]
    fn after_a_heredoc_words_are_words_again() {
        assert!(contexts("cat <<A <<B\none\nA\ntwo\nB\necho @").is_empty());
        assert_eq!(
            contexts("cat <<A\n@\nA\necho \"%\""),
            ["inside a here-document", "inside double quotes"]
        );
    }
}
