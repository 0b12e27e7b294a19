//! The timeline of one run, rebuilt from its status file, and the two
//! questions asked of it: which steps took longest (blame) and which chain
//! of steps decided when the run finished (critical chain).
//!
//! Times are milliseconds from the run's start. A step's *wait* is the time
//! between its needs being done (or the run starting) and the step starting;
//! it includes queueing behind `max_parallel`, secret fetches and skip
//! checks, which happen before a step is reported started. A `throttle:`
//! step's *queue* time (waiting for a slot of a fleet-wide semaphore) falls
//! after its start and is kept apart from its run time.

use serde::Serialize;

use crate::telemetry::status::StatusDoc;
use crate::telemetry::{Outcome, StepState};

/// One attempt of a step.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    /// `ok`, `failed` or `running` (no end recorded).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Backoff before the next attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// One step on the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    pub step: String,
    pub kind: String,
    pub state: StepState,
    pub needs: Vec<String>,
    /// When everything it needs was done (or the run started).
    pub ready_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The semaphore a `throttle:` step queued for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semaphore: Option<String>,
    /// Time queued for the semaphore's slot (part of start..end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
}

impl StepLine {
    /// Time from start to end, less the time queued for a slot.
    pub fn run_ms(&self) -> Option<u64> {
        let span = self.end_ms?.saturating_sub(self.start_ms?);
        Some(span.saturating_sub(self.queue_ms.unwrap_or(0)))
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub plan: String,
    pub bootstrap_id: String,
    pub outcome: Outcome,
    pub started_at: String,
    /// Run length (to the verdict), or to the last recorded step end while running.
    pub total_ms: u64,
    pub steps: Vec<StepLine>,
}

/// One entry of `blame`.
#[derive(Debug, Clone, Serialize)]
pub struct Blame {
    pub step: String,
    pub kind: String,
    pub state: StepState,
    pub run_ms: u64,
    pub attempts: u32,
    /// Time queued for a semaphore's slot, not counted in `run_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semaphore: Option<String>,
}

/// One link of the critical chain, first (earliest) link first.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub step: String,
    pub state: StepState,
    pub start_ms: u64,
    pub end_ms: u64,
    pub wait_ms: u64,
    pub run_ms: u64,
    /// Time queued for a semaphore's slot, not counted in `run_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
}

impl Timeline {
    pub fn from_status(doc: &StatusDoc) -> Timeline {
        let t0 = doc.started_unix_ms;
        let rel = |ms: u64| ms.saturating_sub(t0);
        let mut steps: Vec<StepLine> = doc
            .steps
            .iter()
            .map(|(name, s)| {
                let end_ms = s.finished_unix_ms.map(rel);
                // A skipped step has an end but no start: it took no time.
                let start_ms = s.started_unix_ms.map(rel).or(match s.state {
                    StepState::Skipped => end_ms,
                    _ => None,
                });
                let last = s.attempt_log.len();
                let attempts = s
                    .attempt_log
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let end = a.finished_unix_ms.map(rel);
                        let failed = a.error.is_some();
                        Attempt {
                            attempt: a.attempt,
                            start_ms: rel(a.started_unix_ms),
                            end_ms: end.or(end_ms).unwrap_or(rel(a.started_unix_ms)),
                            outcome: match (end.is_some() || end_ms.is_some(), failed) {
                                // The last attempt of a cancelled step was stopped, not failed.
                                _ if i + 1 == last && s.state == StepState::Cancelled => {
                                    "cancelled"
                                }
                                (_, true) => "failed",
                                (true, false) => "ok",
                                (false, false) => "running",
                            },
                            error_code: a.error.as_ref().map(|e| e.code.as_str().to_string()),
                            retry_in_ms: a.retry_in_ms,
                        }
                    })
                    .collect();
                StepLine {
                    step: name.clone(),
                    kind: s.kind.clone(),
                    state: s.state,
                    needs: s.needs.clone(),
                    ready_ms: 0,
                    start_ms,
                    end_ms,
                    attempts,
                    error_code: s.error.as_ref().map(|e| e.code.as_str().to_string()),
                    semaphore: s.throttle.as_ref().map(|t| t.semaphore.clone()),
                    queue_ms: s.throttle.as_ref().map(|t| t.queue_ms),
                }
            })
            .collect();
        // Ready time: the latest end among a step's needs.
        let ends: std::collections::HashMap<String, u64> = steps
            .iter()
            .filter_map(|s| Some((s.step.clone(), s.end_ms?)))
            .collect();
        for s in &mut steps {
            s.ready_ms = s
                .needs
                .iter()
                .filter_map(|n| ends.get(n).copied())
                .max()
                .unwrap_or(0);
        }
        let last_end = steps.iter().filter_map(|s| s.end_ms).max().unwrap_or(0);
        Timeline {
            plan: doc.plan.name.clone(),
            bootstrap_id: doc.bootstrap_id.clone(),
            outcome: doc.outcome,
            started_at: doc.started_at.clone(),
            total_ms: doc.duration_ms.unwrap_or(last_end).max(last_end),
            steps,
        }
    }

    /// Steps by run time, longest first; steps that never ran are left out.
    pub fn blame(&self) -> Vec<Blame> {
        let mut out: Vec<Blame> = self
            .steps
            .iter()
            .filter_map(|s| {
                Some(Blame {
                    step: s.step.clone(),
                    kind: s.kind.clone(),
                    state: s.state,
                    run_ms: s.run_ms()?,
                    attempts: s.attempts.len() as u32,
                    queue_ms: s.queue_ms,
                    semaphore: s.semaphore.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| b.run_ms.cmp(&a.run_ms).then_with(|| a.step.cmp(&b.step)));
        out
    }

    /// The chain that decided the end of the run: from the failed step (if
    /// the run failed on one) or the last step to finish, back through the
    /// need that finished last, to a step that waited on nothing.
    pub fn critical_chain(&self, failed_step: Option<&str>) -> Vec<Link> {
        let by_name = |name: &str| self.steps.iter().find(|s| s.step == name);
        let target = failed_step
            .and_then(by_name)
            .filter(|s| s.end_ms.is_some())
            .or_else(|| {
                self.steps
                    .iter()
                    .filter(|s| s.end_ms.is_some() && s.start_ms.is_some())
                    .max_by_key(|s| (s.end_ms, s.start_ms))
            });
        let mut chain = Vec::new();
        let mut current = target;
        let mut seen = std::collections::HashSet::new();
        while let Some(s) = current {
            if !seen.insert(s.step.clone()) {
                break;
            }
            let (Some(start), Some(end)) = (s.start_ms, s.end_ms) else {
                break;
            };
            chain.push(Link {
                step: s.step.clone(),
                state: s.state,
                start_ms: start,
                end_ms: end,
                wait_ms: start.saturating_sub(s.ready_ms),
                run_ms: s.run_ms().unwrap_or(0),
                queue_ms: s.queue_ms,
            });
            current = s
                .needs
                .iter()
                .filter_map(|n| by_name(n))
                .filter(|d| d.end_ms.is_some())
                .max_by_key(|d| d.end_ms);
        }
        chain.reverse();
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> StatusDoc {
        let json = serde_json::json!({
            "schema_version": 1, "bootstrap_id": "b", "pid": 1,
            "plan": {"name": "p", "path": "p.yaml", "digest": "d"},
            "started_at": "t", "started_unix_ms": 1000, "duration_ms": 900,
            "outcome": "ready",
            "steps": {
                "a": {"kind": "run", "state": "done", "attempts": 1,
                      "started_unix_ms": 1010, "finished_unix_ms": 1200,
                      "attempt_log": [{"attempt": 1, "started_unix_ms": 1010, "finished_unix_ms": 1200}]},
                "b": {"kind": "run", "state": "done", "attempts": 1,
                      "started_unix_ms": 1010, "finished_unix_ms": 1500},
                "c": {"kind": "run", "state": "done", "attempts": 2, "needs": ["a", "b"],
                      "started_unix_ms": 1520, "finished_unix_ms": 1890,
                      "attempt_log": [
                        {"attempt": 1, "started_unix_ms": 1520, "finished_unix_ms": 1600,
                         "error": {"code": "step.exit_nonzero", "message": "x"}, "retry_in_ms": 100},
                        {"attempt": 2, "started_unix_ms": 1700, "finished_unix_ms": 1890}]},
                "d": {"kind": "file", "state": "skipped", "attempts": 0, "needs": ["a"],
                      "finished_unix_ms": 1210, "skip_reason": "unchanged"},
                "q": {"kind": "run", "state": "done", "attempts": 1,
                      "started_unix_ms": 1010, "finished_unix_ms": 1410,
                      "throttle": {"semaphore": "migrate", "queue_ms": 300,
                                   "acquired_unix_ms": 1310, "held": true}},
                "e": {"kind": "run", "state": "cancelled", "attempts": 1,
                      "started_unix_ms": 1010, "finished_unix_ms": 1100,
                      "error": {"code": "step.cancelled", "message": "x"},
                      "attempt_log": [{"attempt": 1, "started_unix_ms": 1010, "finished_unix_ms": 1100,
                                       "error": {"code": "step.cancelled", "message": "x"}}]}
            }
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn blame_orders_by_run_time() {
        let t = Timeline::from_status(&doc());
        let names: Vec<_> = t.blame().into_iter().map(|b| b.step).collect();
        assert_eq!(names, ["b", "c", "a", "q", "e", "d"]);
        // Queue time is not run time.
        let q = t.blame().into_iter().find(|b| b.step == "q").unwrap();
        assert_eq!((q.run_ms, q.queue_ms), (100, Some(300)));
    }

    #[test]
    fn critical_chain_follows_the_last_need() {
        let t = Timeline::from_status(&doc());
        let chain = t.critical_chain(None);
        let names: Vec<_> = chain.iter().map(|l| l.step.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(chain[0].wait_ms, 10);
        assert_eq!(chain[1].wait_ms, 20);
        assert_eq!(chain[1].run_ms, 370);
        assert_eq!(t.steps[2].attempts[0].outcome, "failed");
        assert_eq!(t.steps[2].attempts[1].outcome, "ok");
        assert_eq!(t.steps[4].attempts[0].outcome, "cancelled");
    }
}
