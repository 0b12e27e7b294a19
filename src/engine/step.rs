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
    if !announced {
        ctx.reporter.emit(EventKind::StepStarted {
            step: step.name.clone(),
        });
    }
    let mut delays = step.retry.budget().delays();
    let mut attempt = 0;
    loop {
        attempt += 1;
        ctx.reporter.emit(EventKind::AttemptStarted {
            step: step.name.clone(),
            attempt,
        });
        let span = traces::attempt_span(&step.name, attempt, &ctx.bootstrap_id);
        let result = attempt_with_timeout(&inputs, ctx, cancel)
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
) -> Result<(), StepError> {
    let limit = match inputs.step.kind {
        StepKind::Wait(_) | StepKind::Service { .. } => None,
        _ => inputs.step.timeout,
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
