//! The run history, listed and compared: how this boot compares with the
//! usual ones, and which steps made the difference.

use crate::telemetry::status::StatusDoc;

/// A step is called out when it took this much longer than its median...
const NOTABLE_MS: u64 = 100;
/// ...and this many times its median.
const NOTABLE_FACTOR: f64 = 1.2;

/// A table of the recorded runs (run 1 is the newest) and, when there are
/// earlier runs, how the newest compares with them.
pub fn report(runs: &[StatusDoc]) -> String {
    if runs.is_empty() {
        return "no runs recorded yet\n".into();
    }
    let mut out = format!(
        "{:>4}  {:<24}  {:<18}  {:>10}\n",
        "RUN", "STARTED", "OUTCOME", "DURATION"
    );
    for (i, run) in runs.iter().enumerate() {
        out.push_str(&format!(
            "{:>4}  {:<24}  {:<18}  {:>10}\n",
            i + 1,
            run.started_at,
            run.outcome.as_str(),
            run.duration_ms.map_or("-".into(), seconds)
        ));
    }
    if let Some(line) = compare(runs) {
        out.push('\n');
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// "this run 3.1 s, median of the last 19: 2.4 s; `fetch` +0.6 s", for the
/// newest run against the others.
pub fn compare(runs: &[StatusDoc]) -> Option<String> {
    let (latest, earlier) = runs.split_first()?;
    let this = latest.duration_ms?;
    let typical = median(earlier.iter().filter_map(|r| r.duration_ms).collect())?;
    let mut line = format!(
        "this run {}, median of the {} before: {}",
        seconds(this),
        earlier.len(),
        seconds(typical)
    );
    let mut slower: Vec<(String, u64)> = latest
        .steps
        .iter()
        .filter_map(|(name, step)| {
            let ms = step.duration_ms?;
            let usual = median(
                earlier
                    .iter()
                    .filter_map(|r| r.steps.get(name)?.duration_ms)
                    .collect(),
            )?;
            let notable = ms >= usual + NOTABLE_MS && ms as f64 >= usual as f64 * NOTABLE_FACTOR;
            notable.then(|| (name.clone(), ms - usual))
        })
        .collect();
    slower.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if !slower.is_empty() {
        let named: Vec<String> = slower
            .iter()
            .take(3)
            .map(|(name, more)| format!("`{name}` +{}", seconds(*more)))
            .collect();
        line.push_str(&format!("; slower: {}", named.join(", ")));
    }
    Some(line)
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[values.len() / 2])
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(duration: u64, fetch: u64) -> StatusDoc {
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "bootstrap_id": "b", "pid": 1,
            "plan": {"name": "p", "path": "p.yaml", "digest": ""},
            "started_at": "2026-12-01T00:00:00.000Z", "started_unix_ms": 0,
            "outcome": "ready", "duration_ms": duration,
            "steps": {
                "fetch": {"kind": "run", "state": "done", "attempts": 1, "duration_ms": fetch},
                "quick": {"kind": "run", "state": "done", "attempts": 1, "duration_ms": 10}
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_newest_run_is_compared_with_the_median_and_the_slower_steps_named() {
        let runs = [
            run(3100, 900),
            run(2400, 300),
            run(2500, 310),
            run(2300, 290),
        ];
        assert_eq!(
            compare(&runs).unwrap(),
            "this run 3.1 s, median of the 3 before: 2.4 s; slower: `fetch` +0.6 s"
        );
        assert!(compare(&runs[..1]).is_none());
        let table = report(&runs);
        assert!(
            table.contains("   1  2026-12-01T00:00:00.000Z  ready"),
            "{table}"
        );
    }
}
