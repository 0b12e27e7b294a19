//! `service` steps: start a long-running process and count the step done once
//! its `ready` check passes. Started services keep running until the run
//! ends; they are then stopped in reverse start order (SIGTERM, grace, SIGKILL).

use std::sync::Mutex;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::process::{self, Output};
use super::wait::wait_until_ready;
use super::{StepAction, StepContext, StepError, StepInputs};

pub struct ServiceAction<'a> {
    pub argv: &'a [String],
}

/// A service process that passed its readiness check.
pub struct RunningService {
    pub step: String,
    pub child: Child,
    pub pgid: Pid,
    pub readers: Vec<tokio::task::JoinHandle<()>>,
}

/// The services started in this run, in start order.
#[derive(Default)]
pub struct Services {
    running: Mutex<Vec<RunningService>>,
}

impl Services {
    fn push(&self, service: RunningService) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(service);
    }

    pub fn is_empty(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Stops every service, newest first, each within `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        let services: Vec<RunningService> =
            std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        for mut service in services.into_iter().rev() {
            process::terminate_group(&mut service.child, service.pgid, grace).await;
            process::drain(service.readers).await;
        }
    }
}

impl StepAction for ServiceAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let cmd = inputs.command(self.argv, ctx)?;
        let ready = inputs
            .step
            .ready
            .as_ref()
            .ok_or_else(|| StepError::ServiceExited {
                program: cmd.program().to_string(),
                status: "no ready check".into(),
            })?;
        let mut child = process::spawn(&inputs.step.name, &cmd, ctx, Output::Log)?;
        let Some(pid) = child.id() else {
            return Err(StepError::ServiceExited {
                program: cmd.program().to_string(),
                status: "exited at once".into(),
            });
        };
        let pgid = Pid::from_raw(pid as i32);
        let readers = process::take_readers(&mut child, &inputs.step.name, ctx, Output::Log);
        let program = cmd.program().to_string();
        let result =
            wait_until_ready(
                ready,
                inputs.step.timeout,
                inputs,
                ctx,
                cancel,
                || match child.try_wait() {
                    Ok(Some(status)) => Some(StepError::ServiceExited {
                        program: program.clone(),
                        status: status.to_string(),
                    }),
                    _ => None,
                },
            )
            .await;
        match result {
            Ok(()) => {
                ctx.services.push(RunningService {
                    step: inputs.step.name.clone(),
                    child,
                    pgid,
                    readers,
                });
                Ok(())
            }
            Err(err) => {
                process::terminate_group(&mut child, pgid, ctx.kill_grace).await;
                process::drain(readers).await;
                Err(err)
            }
        }
    }
}
