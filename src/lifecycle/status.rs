//! What `bootplan status` reports: the status file, and whether the run it
//! describes is still going. A status that says "running" whose bootplan
//! was killed (or that was written in an earlier boot) is not current.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::telemetry::Outcome;
use crate::telemetry::status::{StatusDoc, read_status};

/// The run a status file describes, as it stands.
#[derive(Debug)]
pub enum Current {
    /// The run is going on.
    Running(StatusDoc),
    /// The run ended with a verdict.
    Finished(StatusDoc),
    /// The status says "running", but the bootplan that wrote it is gone.
    Gone { doc: StatusDoc, why: String },
}

impl Current {
    pub fn doc(&self) -> &StatusDoc {
        match self {
            Current::Running(doc) | Current::Finished(doc) | Current::Gone { doc, .. } => doc,
        }
    }
}

/// Reads the status file and checks its run's process.
pub fn current(path: &Path) -> Result<Current, String> {
    let doc = read_status(path)?;
    if doc.outcome != Outcome::Running {
        return Ok(Current::Finished(doc));
    }
    match gone(&doc) {
        Some(why) => Ok(Current::Gone { doc, why }),
        None => Ok(Current::Running(doc)),
    }
}

/// Why the writer of a "running" status is not running any more, if it is not.
fn gone(doc: &StatusDoc) -> Option<String> {
    let boot_id = crate::facts::current_boot_id();
    if !doc.boot_id.is_empty() && !boot_id.is_empty() && doc.boot_id != boot_id {
        return Some(format!(
            "bootplan (pid {}) ran in an earlier boot and never finished",
            doc.pid
        ));
    }
    let alive = std::fs::read_to_string(format!("/proc/{}/stat", doc.pid))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    let same_process = match doc.pid_start {
        // A pid reused by another process started at another time.
        Some(start) => crate::telemetry::status::process_start(doc.pid) == Some(start),
        None => true,
    };
    (!(alive && same_process)).then(|| format!("bootplan (pid {}) is gone", doc.pid))
}

/// Waits until the run is no longer running (finished or gone), up to
/// `timeout`; `progress` is called every few seconds while waiting.
pub fn wait(
    path: &Path,
    timeout: Duration,
    mut progress: impl FnMut(Duration),
) -> Result<Option<Current>, String> {
    let started = Instant::now();
    let mut next_report = Duration::from_secs(5);
    loop {
        // A missing file is waited for too: the run may not have started yet.
        if let Ok(current) = current(path)
            && !matches!(current, Current::Running(_))
        {
            return Ok(Some(current));
        }
        if started.elapsed() >= timeout {
            return Ok(None);
        }
        if started.elapsed() >= next_report {
            progress(started.elapsed());
            next_report += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
