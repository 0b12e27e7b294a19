//! `bootplan status`.

use std::path::Path;
use std::time::Duration;

use super::Cli;
use crate::error::{ErrorCode, exit};
use crate::lifecycle::status::{self as run_status, Current};
use crate::stdio::{errln, outln};
use crate::telemetry::status::StatusDoc;

/// `bootplan status --history`.
pub fn history(cli: &Cli, plan: Option<&Path>) -> i32 {
    let plan = match super::load_optional(plan) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let runs = crate::telemetry::history::runs(&super::dirs(cli, plan.as_ref()).state);
    crate::stdio::write_out_raw(crate::analyze::history::report(&runs).as_bytes());
    exit::READY
}

pub fn status(cli: &Cli, plan: Option<&Path>, json: bool, wait: bool, timeout: Duration) -> i32 {
    let plan = match super::load_optional(plan) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let path = super::dirs(cli, plan.as_ref()).status_file();
    let current = if wait {
        let waited = run_status::wait(&path, timeout, |elapsed| {
            errln!(
                "bootplan: still waiting for the run to finish after {}s ({})",
                elapsed.as_secs(),
                path.display()
            );
        });
        match waited {
            Ok(Some(current)) => Ok(current),
            Ok(None) => {
                errln!(
                    "bootplan: still not finished after {}; giving up [deadline.exceeded]",
                    humantime::format_duration(timeout)
                );
                return exit::DEADLINE;
            }
            Err(err) => Err(err),
        }
    } else {
        run_status::current(&path)
    };
    let current = match current {
        Ok(current) => current,
        Err(err) => {
            errln!("bootplan: no status: {err}");
            return exit::UNAVAILABLE;
        }
    };
    if let Current::Gone { why, .. } = &current {
        errln!(
            "bootplan: {why}; the last state it recorded is below [{}]",
            ErrorCode::RunGone
        );
    }
    let doc = current.doc();
    if json {
        outln!("{}", serde_json::to_string_pretty(doc).unwrap_or_default());
    } else {
        print_status(doc);
    }
    match &current {
        Current::Running(_) => exit::DEADLINE,
        Current::Gone { .. } => ErrorCode::RunGone.exit_code(),
        Current::Finished(doc) if doc.outcome.is_ready() => exit::READY,
        Current::Finished(doc) => doc.exit_code.unwrap_or(exit::STEP_FAILED),
    }
}

fn print_status(doc: &StatusDoc) {
    outln!("plan:      {} ({})", doc.plan.name, doc.plan.path);
    outln!("bootstrap: {}", doc.bootstrap_id);
    outln!("started:   {}", doc.started_at);
    outln!("outcome:   {}", doc.outcome.as_str());
    if let Some(e) = &doc.error {
        outln!("error:     [{}] {}", e.code, e.message);
    }
    for problem in &doc.problems {
        outln!("problem:   {problem}");
    }
    let width = doc.steps.keys().map(String::len).max().unwrap_or(4).max(4);
    outln!(
        "\n{:<width$}  {:<9}  {:>8}  {:>9}  NOTE",
        "STEP",
        "STATE",
        "ATTEMPTS",
        "DURATION"
    );
    for (name, s) in &doc.steps {
        let note = s
            .error
            .as_ref()
            .map(|e| format!("[{}] {}", e.code, e.message))
            .or_else(|| s.skip_reason.clone())
            .or_else(|| s.waiting_for.as_ref().map(|w| format!("waiting for {w}")))
            .or_else(|| {
                let t = s.throttle.as_ref()?;
                Some(if t.held {
                    format!("queued {}ms for semaphore {}", t.queue_ms, t.semaphore)
                } else {
                    format!(
                        "ran without a slot of semaphore {} (etcd unavailable)",
                        t.semaphore
                    )
                })
            })
            .unwrap_or_default();
        let duration = s
            .duration_ms
            .map(|d| format!("{d}ms"))
            .unwrap_or_else(|| "-".into());
        outln!(
            "{name:<width$}  {:<9}  {:>8}  {duration:>9}  {note}",
            s.state.as_str(),
            s.attempts
        );
    }
}
