//! `wait` steps (and service readiness): poll until a TCP port accepts, an
//! HTTP URL answers 2xx, a file exists, or a command exits 0. Each check is
//! bounded; the wait says "still waiting" every few seconds; the whole wait is
//! bounded by the step's `timeout` (and always by the run's deadline).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::process::{self, Output};
use super::{StepAction, StepContext, StepError, StepInputs};
use crate::plan::{WaitSpec, WaitTarget};
use crate::telemetry::EventKind;

/// How often a long wait reports that it is still waiting.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

pub struct WaitAction<'a> {
    pub spec: &'a WaitSpec,
    /// Bound on the whole wait; `None` waits until cancelled (the deadline).
    pub limit: Option<Duration>,
}

impl StepAction for WaitAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        wait_until_ready(self.spec, self.limit, inputs, ctx, cancel, || None).await
    }
}

/// Polls `spec` until it is satisfied. `gone` is asked before each check and
/// may end the wait early (a service whose process exited).
pub async fn wait_until_ready(
    spec: &WaitSpec,
    limit: Option<Duration>,
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
    cancel: &CancellationToken,
    mut gone: impl FnMut() -> Option<StepError>,
) -> Result<(), StepError> {
    let target = render_target(&spec.target, inputs, ctx)?;
    let description = target.describe();
    let started = Instant::now();
    let mut next_report = REPORT_EVERY;
    loop {
        if let Some(err) = gone() {
            return Err(err);
        }
        let last =
            match tokio::time::timeout(spec.attempt_timeout, check(&target, inputs, ctx, cancel))
                .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(CheckError::Cancelled)) => return Err(StepError::Cancelled),
                Ok(Err(CheckError::NotYet(why))) => why,
                Err(_) => format!(
                    "check timed out after {}",
                    humantime::format_duration(spec.attempt_timeout)
                ),
            };
        let elapsed = started.elapsed();
        if limit.is_some_and(|limit| elapsed + spec.interval > limit) {
            return Err(StepError::WaitTimeout {
                target: description,
                after: elapsed,
                last,
            });
        }
        if elapsed >= next_report {
            ctx.reporter.emit(EventKind::Waiting {
                step: inputs.step.name.clone(),
                target: format!("{description} ({last})"),
                elapsed,
            });
            next_report += REPORT_EVERY;
        }
        tokio::select! {
            () = tokio::time::sleep(spec.interval) => {}
            () = cancel.cancelled() => return Err(StepError::Cancelled),
        }
    }
}

enum CheckError {
    NotYet(String),
    Cancelled,
}

fn render_target(
    target: &WaitTarget,
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
) -> Result<WaitTarget, StepError> {
    Ok(match target {
        WaitTarget::Tcp(addr) => WaitTarget::Tcp(inputs.render(addr, "wait.tcp", ctx)?),
        WaitTarget::Http(url) => WaitTarget::Http(inputs.render(url, "wait.http", ctx)?),
        WaitTarget::File(path) => {
            WaitTarget::File(inputs.path(path, "wait.file", ctx)?.display().to_string())
        }
        WaitTarget::Command(argv) => WaitTarget::Command(inputs.command(argv, ctx)?.argv),
        WaitTarget::Notify => WaitTarget::Notify,
    })
}

async fn check(
    target: &WaitTarget,
    inputs: &StepInputs<'_>,
    ctx: &StepContext,
    cancel: &CancellationToken,
) -> Result<(), CheckError> {
    match target {
        WaitTarget::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map(drop)
            .map_err(|e| CheckError::NotYet(format!("connect: {e}"))),
        WaitTarget::Http(url) => match ctx.http().get(url).send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(CheckError::NotYet(format!("HTTP {}", resp.status()))),
            Err(e) => Err(CheckError::NotYet(crate::http::describe_error(&e))),
        },
        WaitTarget::File(path) => match tokio::fs::metadata(path).await {
            Ok(_) => Ok(()),
            Err(e) => Err(CheckError::NotYet(e.to_string())),
        },
        // Validation keeps `notify` out of wait steps; services use lifecycle::probe.
        WaitTarget::Notify => Err(CheckError::NotYet(
            "notify readiness needs a process started by bootplan".into(),
        )),
        WaitTarget::Command(argv) => {
            let mut cmd = inputs
                .command(&[], ctx)
                .map_err(|e| CheckError::NotYet(e.to_string()))?;
            cmd.argv = argv.clone();
            match process::run(&inputs.step.name, &cmd, ctx, Output::Discard, cancel).await {
                Ok(()) => Ok(()),
                Err(StepError::Cancelled) => Err(CheckError::Cancelled),
                Err(e) => Err(CheckError::NotYet(e.to_string())),
            }
        }
    }
}
