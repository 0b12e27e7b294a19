//! The engine: runs a validated plan as a DAG.
//!
//! One loop owns every step's state (`StepState` by dense id), starts ready
//! steps up to `max_parallel`, and reacts to three things: a step finishing,
//! the global deadline, and a stop signal. On a failure (unless the step says
//! `on_failure: continue`), the deadline or a signal, it cancels running
//! steps (their process groups get SIGTERM, then SIGKILL after the grace),
//! starts nothing new, and runs `undo`s in reverse when the plan asks.
//! The engine knows nothing about clouds or secret stores: it sees steps,
//! a context, a journal and a reporter.

pub mod dryrun;
pub mod journal;
mod step;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{ErrorCode, exit};
use crate::plan::{OnFailure, Plan, Step, StepKind};
use crate::steps::exec::ExecRequest;
use crate::steps::process::{self, Output};
use crate::steps::{self, StepContext, StepError, StepInputs};
use crate::telemetry::{ErrorInfo, EventKind, Outcome, StepState, traces};
use journal::Journal;

/// Longest an `undo` command may take when its step sets no timeout.
const UNDO_TIMEOUT: Duration = Duration::from_secs(60);

/// How the steps of a run ended, and the exec to perform if they ended in
/// one. Not yet a verdict: the caller gives it.
#[derive(Debug)]
pub struct RunSummary {
    pub outcome: Outcome,
    pub exit_code: i32,
    pub error: Option<ErrorInfo>,
    pub failed_step: Option<String>,
    pub exec: Option<ExecRequest>,
    /// Ids of the steps completed in this run, in completion order (for a
    /// rollback after the run, by the supervisor).
    pub completed: Vec<usize>,
}

/// How one step ended, as seen by the scheduler.
pub(crate) enum StepResult {
    Done {
        attempts: u32,
        duration: Duration,
    },
    Skipped(String),
    Failed {
        error: StepError,
        attempts: u32,
        duration: Duration,
    },
    Cancelled {
        attempts: u32,
        duration: Duration,
    },
}

/// Why the run stopped early.
enum Stop {
    Failed { step: usize, error: ErrorInfo },
    Deadline,
    Signal(i32),
}

/// Runs `plan` to its end. Never panics on a step's behalf: a panicking step
/// becomes an `internal.error` failure.
pub async fn run(plan: &Plan, ctx: Arc<StepContext>, journal: Arc<Journal>) -> RunSummary {
    let mut graph = Graph::new(plan);
    let stop = schedule(plan, &ctx, &journal, &mut graph).await;
    wind_down(plan, &ctx, graph, stop).await
}

/// The DAG's bookkeeping: each step's state, how many of its needs are not
/// finished yet, and which steps are ready to start.
struct Graph {
    state: Vec<StepState>,
    waiting_on: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    ready: VecDeque<usize>,
    /// Steps done in this run, in completion order (rollback runs them backwards).
    completed: Vec<usize>,
    /// A step with `on_failure: continue` failed.
    degraded: bool,
    /// The exec step, set aside when ready: it runs last, by replacing bootplan.
    exec_step: Option<usize>,
}

impl Graph {
    fn new(plan: &Plan) -> Graph {
        let n = plan.steps.len();
        let waiting_on: Vec<usize> = plan.steps.iter().map(|s| s.needs.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for step in &plan.steps {
            for &dep in &step.needs {
                dependents[dep].push(step.id);
            }
        }
        let ready = (0..n).filter(|&i| waiting_on[i] == 0).collect();
        Graph {
            state: vec![StepState::Pending; n],
            waiting_on,
            dependents,
            ready,
            completed: Vec::new(),
            degraded: false,
            exec_step: None,
        }
    }

    /// The next step to start, marked running.
    fn next_ready(&mut self, plan: &Plan) -> Option<usize> {
        while let Some(id) = self.ready.pop_front() {
            if matches!(plan.steps[id].kind, StepKind::Exec { .. }) {
                self.exec_step = Some(id);
                continue;
            }
            self.state[id] = StepState::Running;
            return Some(id);
        }
        None
    }

    /// Records how `step` ended. Returns the error that stops the run when it
    /// failed closed (`on_failure: fail`).
    fn finished(&mut self, step: &Step, finished: Finished) -> Option<ErrorInfo> {
        let id = step.id;
        self.state[id] = finished.state;
        match finished.state {
            StepState::Done => {
                self.completed.push(id);
                self.release(id);
            }
            StepState::Skipped => self.release(id),
            StepState::Failed if step.on_failure == OnFailure::Continue => {
                self.degraded = true;
                self.release(id);
            }
            StepState::Failed => {
                return Some(finished.error.unwrap_or(ErrorInfo {
                    code: ErrorCode::Internal,
                    message: "failed".into(),
                }));
            }
            _ => {}
        }
        None
    }

    /// Marks `id` finished for its dependents; those with nothing left to wait
    /// for become ready.
    fn release(&mut self, id: usize) {
        for &dependent in &self.dependents[id] {
            self.waiting_on[dependent] -= 1;
            if self.waiting_on[dependent] == 0 {
                self.ready.push_back(dependent);
            }
        }
    }
}

/// Runs steps as the graph allows until none is left or the run stops;
/// returns why it stopped early, if it did.
async fn schedule(
    plan: &Plan,
    ctx: &Arc<StepContext>,
    journal: &Arc<Journal>,
    graph: &mut Graph,
) -> Option<Stop> {
    let deadline = tokio::time::Instant::now() + plan.deadline;
    let cancel = CancellationToken::new();
    // The running steps are futures polled by this one, not tasks of their
    // own: no task to allocate, schedule and join per step, and a step can
    // borrow the plan and the context instead of copying them.
    let mut running = FuturesUnordered::new();
    let mut stop: Option<Stop> = None;
    let mut signals = StopSignals::new();
    // Made once, not on every turn of the loop: each turn would otherwise
    // set and clear a timer and re-register for signals and failures.
    let deadline_passed = tokio::time::sleep_until(deadline);
    let signalled = async {
        match signals.recv().await {
            Some(signal) => signal,
            None => std::future::pending().await,
        }
    };
    let service_failed = async {
        match ctx.services.next_failure().await {
            Some(failure) => failure,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_passed, signalled, service_failed);
    loop {
        while stop.is_none() && running.len() < plan.max_parallel {
            let Some(id) = graph.next_ready(plan) else {
                break;
            };
            running.push(step_future(
                &plan.steps[id],
                ctx,
                journal,
                cancel.child_token(),
            ));
        }
        if running.is_empty() {
            return stop;
        }
        let stopped = tokio::select! {
            // The reasons to stop first: a step that always has work (a
            // command flooding its output) uses up the task's budget when
            // polled, and a timer polled after it would never see its turn.
            biased;
            () = &mut deadline_passed, if stop.is_none() => Some(Stop::Deadline),
            signal = &mut signalled, if stop.is_none() => Some(Stop::Signal(signal)),
            failure = &mut service_failed, if stop.is_none() => {
                // A required service is gone for good: the run cannot be ready.
                let step = plan.step_id(&failure.step).unwrap_or(0);
                Some(Stop::Failed { step, error: failure.error })
            }
            Some((id, result)) = running.next() => {
                let step = &plan.steps[id];
                let finished = finish_step(step, result, stop.as_ref(), ctx);
                graph
                    .finished(step, finished)
                    .filter(|_| stop.is_none())
                    .map(|error| Stop::Failed { step: id, error })
            }
        };
        if let Some(reason) = stopped {
            stop = Some(reason);
            cancel.cancel();
        }
    }
}

/// One step: its span parents its attempts and network calls, and its
/// trace context goes to the step's child processes. A panic inside it
/// fails the step with `internal.error` instead of ending bootplan.
fn step_future<'a>(
    step: &'a Step,
    ctx: &'a StepContext,
    journal: &'a Journal,
    token: CancellationToken,
) -> impl std::future::Future<Output = (usize, StepResult)> + 'a {
    let span = traces::step_span(&step.name, step.kind.name(), &ctx.bootstrap_id);
    let trace_env = traces::span_env(&span);
    let run = async move {
        let result = step::execute(step, ctx, journal, &token).await;
        step::trace_step_result(&result);
        result
    };
    let traced = traces::with_step_env(trace_env, run).instrument(span);
    std::panic::AssertUnwindSafe(traced)
        .catch_unwind()
        .map(|outcome| {
            let result = outcome.unwrap_or_else(|panic| StepResult::Failed {
                error: StepError::Internal(format!("the step panicked: {}", panic_text(&panic))),
                attempts: 0,
                duration: Duration::ZERO,
            });
            (step.id, result)
        })
}

/// A panic's message, when it has one.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// After the last step: prepares the exec, reports steps that never ran,
/// and after a failure stops the services and rolls back when the plan
/// asks. The verdict is the caller's to give, from the summary: the engine
/// leaves the services of a successful run running and the secret store
/// open.
async fn wind_down(
    plan: &Plan,
    ctx: &Arc<StepContext>,
    mut graph: Graph,
    mut stop: Option<Stop>,
) -> RunSummary {
    let mut exec = None;
    if let (None, Some(id)) = (&stop, graph.exec_step) {
        match prepare_exec(&plan.steps[id], ctx).await {
            Ok(request) => {
                graph.state[id] = StepState::Done;
                exec = Some(request);
            }
            Err(error) => {
                let info = error_info(&error);
                ctx.reporter.emit(EventKind::StepFinished {
                    step: plan.steps[id].name.clone(),
                    state: StepState::Failed,
                    attempts: 1,
                    duration: Duration::ZERO,
                    error: Some(info.clone()),
                });
                graph.state[id] = StepState::Failed;
                stop = Some(Stop::Failed {
                    step: id,
                    error: info,
                });
            }
        }
    }

    report_not_run(plan, &graph.state, stop.as_ref(), ctx);
    if stop.is_some() {
        // Services first, so nothing uses what the undos take away.
        ctx.services.stop_all(plan.kill_grace).await;
        if plan.rollback {
            rollback(plan, &graph.completed, ctx).await;
        }
    }
    let mut summary = summarize(plan, stop, graph.degraded, exec);
    summary.completed = graph.completed;
    summary
}

struct Finished {
    state: StepState,
    error: Option<ErrorInfo>,
}

/// Emits the step's final event and says what state it ended in.
fn finish_step(
    step: &Step,
    result: StepResult,
    stop: Option<&Stop>,
    ctx: &StepContext,
) -> Finished {
    let name = step.name.clone();
    let (state, attempts, duration, error) = match result {
        StepResult::Skipped(reason) => {
            ctx.reporter
                .emit(EventKind::StepSkipped { step: name, reason });
            return Finished {
                state: StepState::Skipped,
                error: None,
            };
        }
        StepResult::Done { attempts, duration } => (StepState::Done, attempts, duration, None),
        StepResult::Failed {
            error,
            attempts,
            duration,
        } => (
            StepState::Failed,
            attempts,
            duration,
            Some(error_info(&error)),
        ),
        StepResult::Cancelled { attempts, duration } => (
            StepState::Cancelled,
            attempts,
            duration,
            Some(cancel_info(stop)),
        ),
    };
    ctx.reporter.emit(EventKind::StepFinished {
        step: name,
        state,
        attempts,
        duration,
        error: error.clone(),
    });
    Finished { state, error }
}

pub(crate) fn error_info(error: &StepError) -> ErrorInfo {
    ErrorInfo {
        code: error.code(),
        message: error.to_string(),
    }
}

fn cancel_info(stop: Option<&Stop>) -> ErrorInfo {
    match stop {
        Some(Stop::Deadline) => ErrorInfo {
            code: ErrorCode::DeadlineExceeded,
            message: "stopped: the plan's deadline passed".into(),
        },
        Some(Stop::Signal(sig)) => ErrorInfo {
            code: ErrorCode::RunInterrupted,
            message: format!("stopped: bootplan received signal {sig}"),
        },
        Some(Stop::Failed { .. }) | None => ErrorInfo {
            code: ErrorCode::StepCancelled,
            message: "stopped because another step failed".into(),
        },
    }
}

async fn prepare_exec(step: &Step, ctx: &StepContext) -> Result<ExecRequest, StepError> {
    let StepKind::Exec { argv } = &step.kind else {
        return Err(StepError::Internal(format!(
            "step `{}` is not an exec step",
            step.name
        )));
    };
    let secrets = ctx.secrets.resolve(&step.secret_refs).await?;
    let inputs = StepInputs { step, secrets };
    steps::exec::prepare(argv, &inputs, ctx)
}

fn report_not_run(plan: &Plan, state: &[StepState], stop: Option<&Stop>, ctx: &StepContext) {
    let reason = match stop {
        Some(Stop::Failed { step, .. }) => format!(
            "the run stopped after step `{}` failed",
            plan.steps[*step].name
        ),
        Some(Stop::Deadline) => "the run's deadline passed first".to_string(),
        Some(Stop::Signal(sig)) => format!("bootplan received signal {sig}"),
        None => "a step it needs did not complete".to_string(),
    };
    for step in &plan.steps {
        if state[step.id] == StepState::Pending {
            ctx.reporter.emit(EventKind::StepNotRun {
                step: step.name.clone(),
                reason: reason.clone(),
            });
        }
    }
}

/// Runs the `undo` of every step completed in this run, newest first.
pub async fn rollback(plan: &Plan, completed: &[usize], ctx: &StepContext) {
    for &id in completed.iter().rev() {
        let step = &plan.steps[id];
        let Some(undo) = &step.undo else { continue };
        let secrets = ctx
            .secrets
            .resolve(&step.secret_refs)
            .await
            .unwrap_or_default();
        let inputs = StepInputs { step, secrets };
        let result = match inputs.command(undo, ctx) {
            Ok(cmd) => {
                let token = CancellationToken::new();
                let limit = step.timeout.unwrap_or(UNDO_TIMEOUT);
                let run = process::run(&step.name, &cmd, ctx, Output::Log, &token);
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => r,
                    () = tokio::time::sleep(limit) => { token.cancel(); let _ = run.await; Err(StepError::Timeout { after: limit }) }
                }
            }
            Err(err) => Err(err),
        };
        ctx.reporter.emit(EventKind::UndoFinished {
            step: step.name.clone(),
            error: result.err().map(|e| error_info(&e)),
        });
    }
}

fn summarize(
    plan: &Plan,
    stop: Option<Stop>,
    degraded: bool,
    exec: Option<ExecRequest>,
) -> RunSummary {
    let (outcome, exit_code, error, failed_step) = match stop {
        None if degraded => (Outcome::Degraded, exit::READY, None, None),
        None => (Outcome::Ready, exit::READY, None, None),
        Some(Stop::Failed { step, error }) => (
            Outcome::Failed,
            error.code.exit_code(),
            Some(error),
            Some(plan.steps[step].name.clone()),
        ),
        Some(Stop::Deadline) => (
            Outcome::DeadlineExceeded,
            exit::DEADLINE,
            Some(ErrorInfo {
                code: ErrorCode::DeadlineExceeded,
                message: format!(
                    "the plan's deadline of {} passed before the run finished",
                    humantime::format_duration(plan.deadline)
                ),
            }),
            None,
        ),
        Some(Stop::Signal(sig)) => (
            Outcome::Interrupted,
            128 + sig,
            Some(ErrorInfo {
                code: ErrorCode::RunInterrupted,
                message: format!("bootplan received signal {sig} and stopped the run"),
            }),
            None,
        ),
    };
    RunSummary {
        outcome,
        exit_code,
        error,
        failed_step,
        exec,
        completed: Vec::new(),
    }
}

/// SIGINT and SIGTERM, as a stream of signal numbers.
struct StopSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) -> Option<i32> {
        async fn next(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
            match sig {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            Some(()) = next(&mut self.int) => Some(libc::SIGINT),
            Some(()) = next(&mut self.term) => Some(libc::SIGTERM),
        }
    }
}
