//! The one redactor every output passes through.
//!
//! It knows every secret value fetched in this run, plus the encodings a value
//! commonly leaks in (base64, URL-encoding, JSON escaping), and replaces them
//! with `[REDACTED]`. Each replacement is counted: a leak that was stopped.

use std::borrow::Cow;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::AhoCorasick;
use base64::Engine;

pub const MASK: &str = "[REDACTED]";

/// Values shorter than this are not redacted: masking every "1" or "on" in
/// the output would destroy it while protecting nothing.
const MIN_SECRET_LEN: usize = 4;

#[derive(Default)]
pub struct Redactor {
    inner: RwLock<Inner>,
    redactions: AtomicU64,
}

#[derive(Default)]
struct Inner {
    needles: Vec<zeroize::Zeroizing<String>>,
    matcher: Option<AhoCorasick>,
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Registers a secret value and its encoded forms.
    pub fn add_secret(&self, value: &str) {
        if value.len() < MIN_SECRET_LEN {
            return;
        }
        let mut forms = vec![value.to_string()];
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64_url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        forms.push(b64.encode(value));
        forms.push(b64.encode(value).trim_end_matches('=').to_string());
        forms.push(b64_url.encode(value));
        forms.push(url_encode(value));
        let json = serde_json::to_string(value).unwrap_or_default();
        forms.push(json.trim_matches('"').to_string());
        // Multi-line secrets (keys, certificates) leak line by line in logs.
        forms.extend(
            value
                .lines()
                .filter(|l| l.trim().len() >= 8)
                .map(str::to_string),
        );

        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for form in forms {
            if form.len() >= MIN_SECRET_LEN && !inner.needles.iter().any(|n| **n == form) {
                inner.needles.push(zeroize::Zeroizing::new(form));
            }
        }
        // Longest first, so a value's encoded form is masked whole.
        inner.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
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
        self.redactions.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("bootplan_secret_redactions_total").increment(count);
        let masks = vec![MASK; inner.needles.len()];
        Some(matcher.replace_all(text, &masks))
    }

    /// How many values were masked so far.
    pub fn redactions(&self) -> u64 {
        self.redactions.load(Ordering::Relaxed)
    }

    /// Whether any secret is registered.
    pub fn is_active(&self) -> bool {
        self.inner
            .read()
            .map(|i| i.matcher.is_some())
            .unwrap_or(true)
    }
}

fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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
        assert_eq!(r.redactions(), 3);
    }

    #[test]
    fn leaves_clean_text_alone() {
        let r = Redactor::new();
        r.add_secret("canary-value");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
        assert_eq!(r.redactions(), 0);
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
