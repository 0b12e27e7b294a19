//! The one redactor every output passes through.
//!
//! It knows every secret value fetched in this run, plus the forms a value
//! commonly leaks in: base64 (standard, unpadded, URL-safe), URL-encoding
//! (upper and lower case hex, `/` kept or not, `+` for space), JSON
//! escaping (serde's, MiniJinja's `tojson`, ASCII-only `\uXXXX`), each line
//! of a multi-line value, each `/`-separated part (a value used in a path
//! shows up cut at a `/`), and the leaf values of a JSON object. It replaces
//! them with `[REDACTED]` and counts each replacement: a leak that was
//! stopped.
//!
//! Values shorter than [`MIN_SECRET_LEN`] cannot be masked without
//! destroying ordinary output; [`Redactor::add_secret`] says so and the
//! caller warns. The redactor depends on nothing but its matcher and the
//! metrics facade, so every layer that emits text can use it.

use std::borrow::Cow;
use std::sync::RwLock;

use aho_corasick::AhoCorasick;
use base64::Engine;

pub const MASK: &str = "[REDACTED]";

/// Values shorter than this are not redacted: masking every "1" or "on" in
/// the output would destroy it while protecting nothing.
pub const MIN_SECRET_LEN: usize = 4;

#[derive(Default)]
pub struct Redactor {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    needles: Vec<zeroize::Zeroizing<String>>,
    matcher: Option<AhoCorasick>,
    /// The longest needle, in bytes: how much of a stream must be held
    /// back before it is known not to start a secret.
    longest: usize,
    /// Whether a byte begins some needle (for the stream's hold-back).
    first_bytes: Vec<bool>,
}

/// What registering a value achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Masked,
    /// Too short to mask safely: it will show in output.
    TooShort,
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Registers a secret value and the forms it leaks in.
    pub fn add_secret(&self, value: &str) -> Registered {
        if value.trim().len() < MIN_SECRET_LEN {
            return Registered::TooShort;
        }
        let mut forms = Vec::new();
        secret_forms(value, &mut forms);
        // A JSON object's values leak one by one (`{{ secrets.db.password }}`).
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(value) {
            let mut leaves = Vec::new();
            json_leaves(&json, &mut leaves);
            for leaf in leaves.iter().filter(|l| l.len() >= MIN_SECRET_LEN) {
                secret_forms(leaf, &mut forms);
            }
        }
        self.add_needles(forms);
        Registered::Masked
    }

    /// Registers a document that may hold secrets but is mostly ordinary
    /// text (cloud user data): the whole text, and the values that look
    /// like credentials (`password: ...`, `token=...`, PEM blocks). Its
    /// ordinary lines are not needles, so `#cloud-config` or `packages:`
    /// in other output stays as it is.
    pub fn add_document(&self, text: &str) {
        let mut forms = Vec::new();
        if text.trim().len() >= MIN_SECRET_LEN {
            forms.push(text.to_string());
            forms.push(text.trim().to_string());
        }
        for value in credential_values(text) {
            secret_forms(&value, &mut forms);
        }
        self.add_needles(forms);
    }

    fn add_needles(&self, forms: Vec<String>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let before = inner.needles.len();
        for form in forms {
            if form.len() >= MIN_SECRET_LEN && !inner.needles.iter().any(|n| **n == form) {
                inner.needles.push(zeroize::Zeroizing::new(form));
            }
        }
        if inner.needles.len() == before {
            return;
        }
        // Longest first, so a value's encoded form is masked whole.
        inner.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        inner.longest = inner.needles.first().map_or(0, |n| n.len());
        let mut first_bytes = vec![false; 256];
        for needle in &inner.needles {
            if let Some(&b) = needle.as_bytes().first() {
                first_bytes[b as usize] = true;
            }
        }
        inner.first_bytes = first_bytes;
        inner.matcher = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(inner.needles.iter().map(|n| n.as_bytes()))
            .ok();
    }

    /// `text` with every known secret masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_owned(text) {
            Some(clean) => Cow::Owned(clean),
            None => Cow::Borrowed(text),
        }
    }

    /// The masked text, or `None` when nothing needed masking.
    pub fn redact_owned(&self, text: &str) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let matcher = inner.matcher.as_ref()?;
        let count = matcher.find_iter(text).count() as u64;
        if count == 0 {
            return None;
        }
        self.count(count);
        let masks = vec![MASK; inner.needles.len()];
        Some(matcher.replace_all(text, &masks))
    }

    fn count(&self, count: u64) {
        metrics::counter!("bootplan_secret_redactions_total").increment(count);
    }

    /// A redactor for a byte stream (a child's output), masking secrets
    /// that span reads.
    pub fn stream(&self) -> RedactingStream<'_> {
        RedactingStream {
            redactor: self,
            pending: Vec::new(),
        }
    }
}

/// Redacts a byte stream before it is cut into lines: bytes that could be
/// the start of a secret are held back until the next read shows whether
/// they are, so a secret split across reads (or across the line-length
/// cut) is still masked. Bytes that cannot start a secret pass at once.
pub struct RedactingStream<'a> {
    redactor: &'a Redactor,
    pending: Vec<u8>,
}

impl RedactingStream<'_> {
    /// Takes the next bytes of the stream; returns the redacted bytes that
    /// are safe to pass on now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        self.drain(false)
    }

    /// The end of the stream: everything still held, redacted.
    pub fn finish(mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, at_end: bool) -> Vec<u8> {
        let inner = self
            .redactor
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some(matcher) = inner.matcher.as_ref() else {
            return std::mem::take(&mut self.pending);
        };
        let len = self.pending.len();
        // Where the held-back tail starts: the first position near the end
        // from which the rest is still the beginning of some secret.
        let hold_from = if at_end {
            len
        } else {
            let window = len.saturating_sub(inner.longest.saturating_sub(1));
            (window..len)
                .find(|&p| {
                    inner
                        .first_bytes
                        .get(self.pending[p] as usize)
                        .copied()
                        .unwrap_or(false)
                        && inner
                            .needles
                            .iter()
                            .any(|n| n.as_bytes().starts_with(&self.pending[p..]))
                })
                .unwrap_or(len)
        };
        let mut out = Vec::with_capacity(hold_from);
        let mut emitted = 0;
        let mut masked = 0;
        for found in matcher.find_iter(&self.pending[..]) {
            if found.start() >= hold_from {
                break;
            }
            out.extend_from_slice(&self.pending[emitted..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            emitted = found.end();
            masked += 1;
        }
        let cut = hold_from.max(emitted);
        out.extend_from_slice(&self.pending[emitted..cut]);
        self.pending.drain(..cut);
        drop(inner);
        if masked > 0 {
            self.redactor.count(masked);
        }
        out
    }
}

/// `value` and the forms it commonly leaks in, appended to `forms`.
fn secret_forms(value: &str, forms: &mut Vec<String>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64_url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    forms.push(value.to_string());
    forms.push(b64.encode(value));
    forms.push(b64.encode(value).trim_end_matches('=').to_string());
    forms.push(b64_url.encode(value));
    for keep_slash in [false, true] {
        for upper in [true, false] {
            let encoded = url_encode(value, keep_slash, upper);
            // `+` for space, as in HTML forms and query strings.
            forms.push(encoded.replace("%20", "+"));
            forms.push(encoded);
        }
    }
    let json = serde_json::to_string(value).unwrap_or_default();
    forms.push(json.trim_matches('"').to_string());
    forms.push(json_escape(value, true, false));
    forms.push(json_escape(value, true, true));
    forms.push(json_escape(value, false, true));
    // Multi-line secrets (keys, certificates) leak line by line in logs,
    // and a value with `/` used in a path shows up cut at a `/` (an error
    // names the first directory that could not be made).
    let prefixes = value.match_indices('/').map(|(at, _)| &value[..at]);
    for part in value.lines().chain(prefixes) {
        let part = part.trim();
        if part.len() >= MIN_SECRET_LEN && part != value {
            forms.push(part.to_string());
        }
    }
}

/// The string (and number) leaves of a JSON value.
fn json_leaves(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_leaves(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_leaves(v, out)),
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

/// Percent-encoding of everything but unreserved characters (and `/`
/// with `keep_slash`, as MiniJinja's `urlencode` does).
fn url_encode(value: &str, keep_slash: bool, upper: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) || (keep_slash && byte == b'/') {
            out.push(byte as char);
        } else if upper {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

/// JSON string escaping without the quotes: `html_safe` escapes `<>&'`
/// as `\u003c`… (MiniJinja's `tojson`), `ascii` every non-ASCII character
/// as `\uXXXX` (surrogate pairs beyond the BMP).
fn json_escape(value: &str, html_safe: bool, ascii: bool) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\'' if html_safe => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Values in a document that look like credentials: the value of a
/// `key: value` / `key=value` line whose key names a secret, and PEM
/// private key blocks.
fn credential_values(text: &str) -> Vec<String> {
    const SECRET_KEYS: [&str; 9] = [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credential",
        "auth",
    ];
    let mut values = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ").or_else(|| line.split_once('=')) else {
            continue;
        };
        let key = key.trim().trim_start_matches("- ").to_ascii_lowercase();
        if !SECRET_KEYS.iter().any(|k| key.contains(k)) {
            continue;
        }
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        if value.len() >= MIN_SECRET_LEN && !matches!(value, "|" | ">" | "|-" | ">-") {
            values.push(value.to_string());
        }
    }
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let Some(end) = block.find("-----END ") else {
            break;
        };
        let tail = &block[end + 9..];
        let close = tail.find("-----").map_or(tail.len(), |p| p + 5);
        let pem = &block[..end + 9 + close];
        if pem.contains("PRIVATE KEY") {
            values.push(pem.to_string());
        }
        rest = &block[end + 9 + close..];
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_value_and_encodings_and_counts() {
        let r = Redactor::new();
        r.add_secret("s3cr3t/p@ss word");
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t/p@ss word");
        let text = format!("a s3cr3t/p@ss word b {b64} c s3cr3t%2Fp%40ss%20word");
        let out = r.redact(&text);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(!out.contains(&b64), "{out}");
    }

    #[test]
    fn other_spellings_of_a_value_are_masked() {
        let r = Redactor::new();
        let secret = "p/a s&<é>x";
        assert_eq!(r.add_secret(secret), Registered::Masked);
        for leaked in [
            "p%2Fa%20s%26%3C%C3%A9%3Ex",          // upper-case percent-encoding
            "p%2fa%20s%26%3c%c3%a9%3ex",          // lower-case
            "p/a%20s%26%3C%C3%A9%3Ex",            // MiniJinja's urlencode keeps `/`
            "p%2Fa+s%26%3C%C3%A9%3Ex",            // `+` for space
            "p/a s\\u0026\\u003c\\u00e9\\u003ex", // tojson, ASCII-only
            "p/a s\\u0026\\u003cé\\u003ex",       // tojson
            "p/a s&<\\u00e9>x",                   // JSON \\u escapes
        ] {
            let out = r.redact(leaked);
            assert_eq!(out, MASK, "{leaked} -> {out}");
        }
    }

    #[test]
    fn json_objects_lines_and_path_prefixes_are_masked() {
        let r = Redactor::new();
        r.add_secret(r#"{"user":"admin-user","password":"hunter22"}"#);
        assert_eq!(r.redact("pw=hunter22"), format!("pw={MASK}"));
        r.add_secret("line1\nab12\ncd34");
        assert_eq!(r.redact("ab12"), MASK);
        r.add_secret("Zk9q/rest-of-it");
        assert_eq!(
            r.redact("cannot create directory /srv/Zk9q: denied"),
            format!("cannot create directory /srv/{MASK}: denied")
        );
        assert_eq!(r.add_secret("abc"), Registered::TooShort);
        assert_eq!(r.redact("abc"), "abc");
    }

    #[test]
    fn a_document_masks_itself_and_its_credentials_not_its_lines() {
        let r = Redactor::new();
        let user_data = "#cloud-config\npackages:\n  - nginx\nchpasswd:\n  password: s3cr3t-pw\n";
        r.add_document(user_data);
        assert_eq!(r.redact("#cloud-config"), "#cloud-config");
        assert_eq!(r.redact("packages:"), "packages:");
        assert_eq!(r.redact("the pw is s3cr3t-pw"), format!("the pw is {MASK}"));
        assert_eq!(r.redact(user_data), MASK);
    }

    #[test]
    fn a_stream_masks_a_secret_split_across_reads() {
        let r = Redactor::new();
        r.add_secret("canary-0123456789");
        let text = b"before canary-0123456789 after\nplain line\n";
        for size in [1, 2, 5, 7, 16, 64] {
            let mut stream = r.stream();
            let mut out = Vec::new();
            for chunk in text.chunks(size) {
                out.extend(stream.push(chunk));
            }
            out.extend(stream.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("before {MASK} after\nplain line\n"),
                "chunk size {size}"
            );
        }
        // Bytes that cannot begin a secret are passed on at once.
        let mut stream = r.stream();
        assert_eq!(stream.push(b"hello\n"), b"hello\n");
        assert_eq!(stream.push(b"x canar"), b"x ");
        assert_eq!(stream.push(b"y\n"), b"canary\n");
    }

    #[test]
    fn leaves_clean_text_alone() {
        let r = Redactor::new();
        r.add_secret("canary-value");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }
}

#[cfg(test)]
mod metric_tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::Redactor;

    /// Counts increments per counter name; enough to see what the redactor reports.
    #[derive(Default)]
    struct Counting(Mutex<Vec<(String, Arc<Count>)>>);

    #[derive(Default)]
    struct Count(AtomicU64);

    impl CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let count = Arc::new(Count::default());
            if let Ok(mut all) = self.0.lock() {
                all.push((key.name().to_string(), count.clone()));
            }
            Counter::from_arc(count)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn each_redaction_is_counted_as_a_metric() {
        let recorder = Counting::default();
        metrics::with_local_recorder(&recorder, || {
            let r = Redactor::new();
            r.add_secret("metric-canary");
            let _ = r.redact("a metric-canary b metric-canary");
            let _ = r.redact("clean");
        });
        let all = recorder.0.lock().unwrap();
        let total: u64 = all
            .iter()
            .filter(|(name, _)| name == "bootplan_secret_redactions_total")
            .map(|(_, c)| c.0.load(Ordering::Relaxed))
            .sum();
        assert_eq!(total, 2);
    }
}
