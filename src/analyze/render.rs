//! Output forms of the analysis: text tables, JSON, an SVG waterfall and an
//! HTML page around it. The SVG and HTML are self-contained (inline styles,
//! no scripts, no external resources) so they open anywhere, offline.

use std::fmt::Write as _;

use super::timeline::{Link, Timeline};
use crate::telemetry::StepState;

fn secs(ms: u64) -> String {
    format!("{:.3}s", ms as f64 / 1000.0)
}

/// `systemd-analyze blame`-style list.
pub fn blame_text(t: &Timeline) -> String {
    let mut out = String::new();
    for b in t.blame() {
        let queued = match (&b.semaphore, b.queue_ms) {
            (Some(sem), Some(ms)) => format!(", queued {} for semaphore {sem}", secs(ms)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:>10} {} ({}, {}, {} attempt{}{queued})",
            secs(b.run_ms),
            b.step,
            b.kind,
            b.state.as_str(),
            b.attempts,
            if b.attempts == 1 { "" } else { "s" }
        );
    }
    if out.is_empty() {
        out.push_str("no step ran\n");
    }
    out
}

/// `systemd-analyze critical-chain`-style tree, last link first.
pub fn chain_text(t: &Timeline, failed: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "The time a step finished is after \"@\", its run time after \"+\", how long it\nwaited after its needs were done after \"~\", and its time queued for a\nsemaphore's slot after \"q\".\n"
    );
    let _ = writeln!(
        out,
        "{} {} @{}",
        t.plan,
        t.outcome.as_str(),
        secs(t.total_ms)
    );
    let chain = t.critical_chain(failed);
    for (depth, link) in chain.iter().rev().enumerate() {
        let _ = writeln!(
            out,
            "{}└─{} @{} +{} ~{}{}{}",
            "  ".repeat(depth),
            link.step,
            secs(link.end_ms),
            secs(link.run_ms),
            secs(link.wait_ms),
            link.queue_ms
                .map(|q| format!(" q{}", secs(q)))
                .unwrap_or_default(),
            if link.state == StepState::Done {
                String::new()
            } else {
                format!(" [{}]", link.state.as_str())
            }
        );
    }
    out
}

pub fn json(t: &Timeline, failed: Option<&str>) -> String {
    let value = serde_json::json!({
        "plan": t.plan,
        "bootstrap_id": t.bootstrap_id,
        "outcome": t.outcome,
        "started_at": t.started_at,
        "total_ms": t.total_ms,
        "blame": t.blame(),
        "critical_chain": t.critical_chain(failed),
        "steps": t.steps,
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Escapes text for XML/HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Colour of a bar by what it shows.
fn colour(what: &str) -> &'static str {
    match what {
        "done" | "ok" => "#2e7d32",
        "failed" => "#c62828",
        "cancelled" => "#ef6c00",
        "skipped" | "not_run" => "#9e9e9e",
        "running" | "pending" => "#1565c0",
        "backoff" => "#f9a825",
        "wait" => "#b0bec5",
        _ => "#616161",
    }
}

const LABEL_W: f64 = 220.0;
const CHART_W: f64 = 760.0;
const ROW_H: f64 = 24.0;
const TOP: f64 = 40.0;

/// A "nice" tick interval for `total` ms over about ten ticks.
fn tick_ms(total: u64) -> u64 {
    let raw = (total.max(1) as f64 / 10.0).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    step.max(1.0) as u64
}

/// The waterfall: one row per step (in start order), its wait for its
/// needs, each attempt coloured by outcome, backoff between attempts, and a
/// line where the run ended. Critical-chain steps are outlined.
pub fn svg(t: &Timeline, failed: Option<&str>) -> String {
    let chain: Vec<Link> = t.critical_chain(failed);
    let on_chain = |name: &str| chain.iter().any(|l| l.step == name);
    let total = t.total_ms.max(1);
    let x = |ms: u64| LABEL_W + (ms.min(total) as f64 / total as f64) * CHART_W;
    let mut rows: Vec<_> = t.steps.iter().collect();
    rows.sort_by_key(|s| (s.start_ms.or(s.end_ms).unwrap_or(u64::MAX), s.step.clone()));
    let legend_y = TOP + rows.len() as f64 * ROW_H + 30.0;
    let height = legend_y + 40.0;
    let width = LABEL_W + CHART_W + 20.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<title>bootplan run {} of plan {}: {} in {}</title>"#,
        esc(&t.bootstrap_id),
        esc(&t.plan),
        t.outcome.as_str(),
        secs(t.total_ms)
    );
    let _ = writeln!(
        s,
        r##"<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#eceff1"/><line x1="0" y1="0" x2="0" y2="6" stroke="{}" stroke-width="3"/></pattern></defs>"##,
        colour("wait")
    );
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{} — {} in {}</text>"#,
        esc(&t.plan),
        t.outcome.as_str(),
        secs(t.total_ms)
    );
    // Time axis.
    let tick = tick_ms(total);
    let mut at = 0;
    while at <= total {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom:.1}" stroke="#eeeeee"/><text x="{x:.1}" y="{ty}" fill="#555555" text-anchor="middle">{label}</text>"##,
            x = x(at),
            bottom = TOP + rows.len() as f64 * ROW_H,
            ty = TOP - 6.0,
            label = secs(at)
        );
        at += tick;
    }
    for (i, step) in rows.iter().enumerate() {
        let y = TOP + i as f64 * ROW_H;
        let bar_y = y + 4.0;
        let bar_h = ROW_H - 8.0;
        let critical = on_chain(&step.step);
        let _ = writeln!(
            s,
            r#"<g class="step" data-step="{name}" data-state="{state}">"#,
            name = esc(&step.step),
            state = step.state.as_str()
        );
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="{ty:.1}" text-anchor="end"{weight}>{name}</text>"##,
            lx = LABEL_W - 8.0,
            ty = y + ROW_H / 2.0 + 4.0,
            weight = if critical {
                r#" font-weight="bold""#
            } else {
                ""
            },
            name = esc(&step.step)
        );
        if let Some(start) = step.start_ms
            && start > step.ready_ms
        {
            bar(
                &mut s,
                x(step.ready_ms),
                x(start),
                bar_y + bar_h / 4.0,
                bar_h / 2.0,
                "url(#hatch)",
                &format!(
                    "{}: waited {} after its needs",
                    step.step,
                    secs(start - step.ready_ms)
                ),
            );
        }
        if let (Some(start), Some(queue), Some(sem)) =
            (step.start_ms, step.queue_ms, step.semaphore.as_deref())
            && queue > 0
        {
            bar(
                &mut s,
                x(start),
                x(start + queue).max(x(start) + 2.0),
                bar_y,
                bar_h,
                "url(#hatch)",
                &format!(
                    "{}: queued {} for a slot of semaphore {sem}",
                    step.step,
                    secs(queue)
                ),
            );
        }
        if step.attempts.is_empty()
            && let (Some(start), Some(end)) = (step.start_ms, step.end_ms)
        {
            bar(
                &mut s,
                x(start),
                x(end).max(x(start) + 2.0),
                bar_y,
                bar_h,
                colour(step.state.as_str()),
                &format!(
                    "{}: {} in {}",
                    step.step,
                    step.state.as_str(),
                    secs(end - start)
                ),
            );
        }
        for (k, a) in step.attempts.iter().enumerate() {
            let fill = colour(a.outcome);
            let code = a
                .error_code
                .as_deref()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            bar(
                &mut s,
                x(a.start_ms),
                x(a.end_ms).max(x(a.start_ms) + 2.0),
                bar_y,
                bar_h,
                fill,
                &format!(
                    "{} attempt {}: {} in {}{code}",
                    step.step,
                    a.attempt,
                    a.outcome,
                    secs(a.end_ms.saturating_sub(a.start_ms))
                ),
            );
            if let Some(next) = step.attempts.get(k + 1)
                && next.start_ms > a.end_ms
            {
                bar(
                    &mut s,
                    x(a.end_ms),
                    x(next.start_ms),
                    bar_y + bar_h / 3.0,
                    bar_h / 3.0,
                    colour("backoff"),
                    &format!(
                        "{}: backoff {} before attempt {}",
                        step.step,
                        secs(next.start_ms - a.end_ms),
                        next.attempt
                    ),
                );
            }
        }
        if step.start_ms.is_none() {
            let note = match step.state {
                StepState::Skipped => "skipped",
                StepState::NotRun => "not run",
                StepState::Failed => "failed before starting",
                _ => step.state.as_str(),
            };
            let at = step.end_ms.unwrap_or(step.ready_ms);
            // Keep the note inside the chart.
            let note_x = (x(at) + 4.0).min(LABEL_W + CHART_W - 90.0);
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" fill="{}" font-style="italic">{}</text>"#,
                note_x,
                y + ROW_H / 2.0 + 4.0,
                colour(step.state.as_str()),
                note
            );
        }
        if critical && let (Some(start), Some(end)) = (step.start_ms, step.end_ms) {
            let _ = writeln!(
                s,
                r##"<rect class="critical" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#000000" stroke-width="1.5"/>"##,
                x(start) - 1.0,
                bar_y - 1.0,
                (x(end) - x(start)).max(2.0) + 2.0,
                bar_h + 2.0
            );
        }
        s.push_str("</g>\n");
    }
    let end_x = x(t.total_ms);
    let _ = writeln!(
        s,
        r##"<line x1="{end_x:.1}" y1="{TOP}" x2="{end_x:.1}" y2="{:.1}" stroke="{}" stroke-width="2" stroke-dasharray="4 3"><title>run ended ({}) at {}</title></line>"##,
        TOP + rows.len() as f64 * ROW_H,
        colour(if t.outcome.is_ready() {
            "done"
        } else {
            "failed"
        }),
        t.outcome.as_str(),
        secs(t.total_ms)
    );
    let legend = [
        ("ok", "attempt ok"),
        ("failed", "attempt failed"),
        ("cancelled", "cancelled"),
        ("backoff", "retry backoff"),
        ("wait", "waiting: needs, queue"),
        ("skipped", "skipped / not run"),
    ];
    for (i, (what, label)) in legend.iter().enumerate() {
        let lx = 10.0 + i as f64 * 160.0;
        let fill = if *what == "wait" {
            "url(#hatch)"
        } else {
            colour(what)
        };
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{legend_y}" width="14" height="14" fill="{fill}"/><text x="{}" y="{}">{label}</text>"#,
            lx + 20.0,
            legend_y + 12.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn bar(s: &mut String, x1: f64, x2: f64, y: f64, h: f64, fill: &str, title: &str) {
    let _ = writeln!(
        s,
        r#"<rect x="{x1:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{fill}"><title>{}</title></rect>"#,
        (x2 - x1).max(0.0),
        esc(title)
    );
}

/// One page: summary, waterfall, critical chain and blame tables.
pub fn html(t: &Timeline, failed: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">"
    );
    let _ = writeln!(
        s,
        "<title>bootplan: {} ({})</title>",
        esc(&t.plan),
        t.outcome.as_str()
    );
    s.push_str(
        "<style>body{font-family:sans-serif;margin:24px;color:#212121}table{border-collapse:collapse;margin:8px 0 24px}\
td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ready,.degraded{color:#2e7d32}.failed,.deadline_exceeded,.interrupted,.invalid{color:#c62828}</style>\n</head>\n<body>\n",
    );
    let _ = writeln!(
        s,
        "<h1>{} <span class=\"{}\">{}</span> in {}</h1>",
        esc(&t.plan),
        t.outcome.as_str(),
        t.outcome.as_str(),
        secs(t.total_ms)
    );
    let _ = writeln!(
        s,
        "<p>bootstrap {} · started {}</p>",
        esc(&t.bootstrap_id),
        esc(&t.started_at)
    );
    s.push_str(&svg(t, failed));
    s.push_str("<h2>Critical chain</h2>\n<table><tr><th>step</th><th>state</th><th>waited</th><th>queued</th><th>ran</th><th>finished at</th></tr>\n");
    for l in t.critical_chain(failed) {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&l.step),
            l.state.as_str(),
            secs(l.wait_ms),
            secs(l.queue_ms.unwrap_or(0)),
            secs(l.run_ms),
            secs(l.end_ms)
        );
    }
    s.push_str("</table>\n<h2>Blame</h2>\n<table><tr><th>step</th><th>kind</th><th>state</th><th>attempts</th><th>queued</th><th>ran</th></tr>\n");
    for b in t.blame() {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&b.step),
            esc(&b.kind),
            b.state.as_str(),
            b.attempts,
            secs(b.queue_ms.unwrap_or(0)),
            secs(b.run_ms)
        );
    }
    s.push_str("</table>\n</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_ms(1000), 100);
        assert_eq!(tick_ms(4500), 500);
        assert_eq!(tick_ms(12_000), 2000);
        assert_eq!(tick_ms(0), 1);
    }
}
