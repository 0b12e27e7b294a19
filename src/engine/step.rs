//! One step's run: its `when:` condition and journal record, its secrets
//! (shown as waited for when they take a while), `creates`/`unless`, then
//! its attempts, each bounded by the step's timeout, with retries drawn
//! from the step's backoff.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::journal::Journal;
use super::{StepResult, error_info};
use crate::error::ErrorCode;
use crate::plan::{Step, StepKind};
use crate::steps::process::{self, Output};
use crate::steps::{self, StepContext, StepError, StepInputs};
use crate::telemetry::{EventKind, StepState, traces};

/// Runs one step: skip checks, secrets, then attempts with retries.
pub(super) async fn execute(
    step: &Step,
    ctx: &StepContext,
    journal: &Journal,
    cancel: &CancellationToken,
) -> StepResult {
    if let Some(expr) = &step.when {
        match crate::plan::when::evaluate(expr, &ctx.template_scope) {
            Ok(true) => {}
            Ok(false) => return StepResult::Skipped(crate::plan::when::skip_reason(expr)),
            Err(message) => {
                let error = StepError::Render {
                    what: "when".into(),
                    message,
                };
                return StepResult::Failed {
                    error,
                    attempts: 0,
                    duration: Duration::ZERO,
                };
            }
        }
    }
    if let Some(reason) = journal.skip_reason(step, &ctx.facts) {
        return StepResult::Skipped(reason);
    }
    if let Some(warning) = journal.instance_change(step, &ctx.facts) {
        ctx.reporter.notice(crate::telemetry::Level::Warn, warning);
    }
    // The run's start splay, taken once, before the first step's work: its
    // secret fetches (network calls) if it has secrets, else its slot or
    // its first attempt. A rerun that skips every step never waits for it.
    if !step.secret_refs.is_empty() && !ctx.fleet.splay(&ctx.reporter, cancel).await {
        return StepResult::Cancelled {
            attempts: 0,
            duration: Duration::ZERO,
        };
    }
    let started = Instant::now();
    let failed = |error: StepError, attempts: u32| StepResult::Failed {
        error,
        attempts,
        duration: started.elapsed(),
    };
    // Secrets first: nothing runs with an unresolved secret. A fetch that is
    // still retrying when the run stops (deadline, failure, signal) is dropped.
    let (secrets, announced) = match wait_for_secrets(step, ctx, cancel).await {
        Some((Ok(values), announced)) => (values, announced),
        Some((Err(err), _)) => return failed(err.into(), 0),
        None => {
            return StepResult::Cancelled {
                attempts: 0,
                duration: started.elapsed(),
            };
        }
    };
    let inputs = StepInputs { step, secrets };
    match skip_by_condition(&inputs, ctx, cancel).await {
        Ok(Some(reason)) => return StepResult::Skipped(reason),
        Ok(None) => {}
        Err(StepError::Cancelled) => {
            return StepResult::Cancelled {
                attempts: 0,
                duration: started.elapsed(),
            };
        }
        Err(err) => return failed(err, 0),
    }
    let splay_began = Instant::now();
    if !ctx.fleet.splay(&ctx.reporter, cancel).await {
        return StepResult::Cancelled {
            attempts: 0,
            duration: started.elapsed(),
        };
    }
    // A splay waited here is the run's, not the step's time.
    let started = started + splay_began.elapsed();
    let failed = |error: StepError, attempts: u32| StepResult::Failed {
        error,
        attempts,
        duration: started.elapsed(),
    };
    if !announced {
        ctx.reporter.emit(EventKind::StepStarted {
            step: step.name.clone(),
        });
    }
    // A slot of the step's semaphore, queued for within the step's timeout;
    // the first attempt gets what the queue left of it.
    let mut slot = None;
    let mut first_limit = None;
    if let Some(semaphore) = &step.throttle {
        let queued = tokio::time::Instant::now();
        let limit = step.timeout.map(|t| (queued + t, t));
        match ctx
            .fleet
            .acquire(semaphore, &step.name, &ctx.reporter, cancel, limit)
            .await
        {
            Ok(crate::fleet::Acquired::Held(held)) => slot = Some(held),
            Ok(crate::fleet::Acquired::Unthrottled) => {}
            Err(crate::fleet::ThrottleError::Cancelled) => {
                return StepResult::Cancelled {
                    attempts: 0,
                    duration: started.elapsed(),
                };
            }
            Err(err) => return failed(err.into(), 0),
        }
        first_limit = step.timeout.map(|t| {
            t.saturating_sub(queued.elapsed())
                .max(Duration::from_millis(1))
        });
    }
    let result = attempts(&inputs, ctx, journal, cancel, started, first_limit).await;
    // Given back on every way out of the attempts: done, failed, timed out,
    // cancelled by the deadline, a signal or another step's failure.
    if let Some(slot) = slot {
        slot.release(&ctx.reporter).await;
    }
    result
}

/// The step's attempts, with retries; `first_limit` overrides the step's
/// timeout for the first attempt.
async fn attempts(
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
    journal: &Journal,
    cancel: &CancellationToken,
    started: Instant,
    first_limit: Option<Duration>,
) -> StepResult {
    let step = inputs.step;
    let failed = |error: StepError, attempts: u32| StepResult::Failed {
        error,
        attempts,
        duration: started.elapsed(),
    };
    let mut delays = step.retry.budget().delays();
    let mut attempt = 0;
    loop {
        attempt += 1;
        ctx.reporter.emit(EventKind::AttemptStarted {
            step: step.name.clone(),
            attempt,
        });
        let span = traces::attempt_span(&step.name, attempt, &ctx.bootstrap_id);
        let limit = if attempt == 1 { first_limit } else { None };
        let result = attempt_with_timeout(inputs, ctx, cancel, limit)
            .instrument(span.clone())
            .await;
        trace_attempt_result(&span, &result);
        match result {
            Ok(()) => {
                journal.record(step, &ctx.facts, &ctx.bootstrap_id);
                return StepResult::Done {
                    attempts: attempt,
                    duration: started.elapsed(),
                };
            }
            Err(StepError::Cancelled) => {
                return StepResult::Cancelled {
                    attempts: attempt,
                    duration: started.elapsed(),
                };
            }
            Err(error) => {
                let delay = if error.is_retryable() {
                    delays.next()
                } else {
                    None
                };
                let Some(delay) = delay else {
                    return failed(error, attempt);
                };
                ctx.reporter.emit(EventKind::AttemptFailed {
                    step: step.name.clone(),
                    attempt,
                    error: error_info(&error),
                    retry_in: Some(delay),
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return StepResult::Cancelled { attempts: attempt, duration: started.elapsed() },
                }
            }
        }
    }
}

/// How long a step may wait for its secrets before it shows as running
/// and waiting, and how often it says it still waits.
const SECRET_WAIT_SHOWN_AFTER: Duration = Duration::from_millis(250);
const SECRET_WAIT_REPEAT: Duration = Duration::from_secs(5);

/// Resolves the step's secrets. A fetch that takes a while (a store that
/// is down and being retried) shows: the step is started, and says what it
/// waits for, again every few seconds. `None` when the run was cancelled
/// meanwhile; the flag says whether the step was shown as started.
async fn wait_for_secrets(
    step: &Step,
    ctx: &StepContext,
    cancel: &CancellationToken,
) -> Option<(
    Result<
        std::collections::BTreeMap<String, crate::secrets::SecretValue>,
        crate::secrets::SecretError,
    >,
    bool,
)> {
    let resolve = ctx.secrets.resolve(&step.secret_refs);
    tokio::pin!(resolve);
    let started = Instant::now();
    let mut next = tokio::time::Instant::now() + SECRET_WAIT_SHOWN_AFTER;
    let mut announced = false;
    loop {
        tokio::select! {
            biased;
            resolved = &mut resolve => return Some((resolved, announced)),
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep_until(next) => {
                if !announced {
                    ctx.reporter.emit(EventKind::StepStarted { step: step.name.clone() });
                    announced = true;
                }
                ctx.reporter.emit(EventKind::Waiting {
                    step: step.name.clone(),
                    target: format!("secret(s) {}", step.secret_refs.join(", ")),
                    elapsed: started.elapsed(),
                });
                next += SECRET_WAIT_REPEAT;
            }
        }
    }
}

/// Records a step's end on its span (the current one in the step's future).
pub(super) fn trace_step_result(result: &StepResult) {
    let span = tracing::Span::current();
    let (outcome, code, attempts) = match result {
        StepResult::Done { attempts, .. } => (StepState::Done, None, *attempts),
        StepResult::Skipped(_) => (StepState::Skipped, None, 0),
        StepResult::Failed {
            error, attempts, ..
        } => (StepState::Failed, Some(error.code()), *attempts),
        StepResult::Cancelled { attempts, .. } => (
            StepState::Cancelled,
            Some(ErrorCode::StepCancelled),
            *attempts,
        ),
    };
    span.record("attempts", attempts);
    traces::record_outcome(&span, outcome.as_str(), code.map(|c| c.as_str()));
}

fn trace_attempt_result(span: &tracing::Span, result: &Result<(), StepError>) {
    match result {
        Ok(()) => traces::record_outcome(span, "ok", None),
        Err(StepError::Cancelled) => traces::record_outcome(span, "cancelled", None),
        Err(error) => traces::record_outcome(span, "failed", Some(error.code().as_str())),
    }
}

/// `creates` and `unless`: reasons to skip that come from the machine's state.
async fn skip_by_condition(
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
    cancel: &CancellationToken,
) -> Result<Option<String>, StepError> {
    let step = inputs.step;
    if let Some(creates) = &step.creates {
        let path = inputs.path(creates, "creates", ctx)?;
        if path.exists() {
            return Ok(Some(format!("creates: {} exists", path.display())));
        }
    }
    if let Some(unless) = &step.unless {
        let cmd = inputs.command(unless, ctx)?;
        match process::run(&step.name, &cmd, ctx, Output::Discard, cancel).await {
            Ok(()) => return Ok(Some(format!("unless: `{}` succeeded", unless.join(" ")))),
            Err(StepError::Cancelled) => return Err(StepError::Cancelled),
            Err(_) => {}
        }
    }
    Ok(None)
}

/// One attempt, bounded by the step's timeout. `wait` and `service` steps
/// bound their whole wait themselves, so the limit is theirs to apply.
async fn attempt_with_timeout(
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
    cancel: &CancellationToken,
    first_limit: Option<Duration>,
) -> Result<(), StepError> {
    let limit = match inputs.step.kind {
        // Their own limit bounds the wait; a throttled one also has what
        // its queue left of the timeout.
        StepKind::Wait(_) | StepKind::Service { .. } => first_limit,
        _ => first_limit.or(inputs.step.timeout),
    };
    // One attempt future for both paths: the step's future stores it once.
    let attempt_cancel = match limit {
        Some(_) => cancel.child_token(),
        None => cancel.clone(),
    };
    let attempt = steps::run_attempt(inputs, ctx, &attempt_cancel);
    tokio::pin!(attempt);
    let Some(limit) = limit else {
        return attempt.await;
    };
    tokio::select! {
        result = &mut attempt => result,
        () = tokio::time::sleep(limit) => {
            attempt_cancel.cancel();
            // Let the attempt kill its processes before reporting.
            let _ = attempt.await;
            if cancel.is_cancelled() { Err(StepError::Cancelled) } else { Err(StepError::Timeout { after: limit }) }
        }
    }
}
