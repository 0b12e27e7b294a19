//! `service` steps: start a long-running process and count the step done once
//! its `ready` check passes (TCP, HTTP, file, command, or the process's own
//! sd_notify READY=1). Started services are watched and restarted by their
//! `restart` policy until the run (or the supervised app) ends; they are then
//! stopped in reverse start order (SIGTERM, grace, SIGKILL). The watching
//! lives in [`running`].

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub mod running;

pub use running::{ServiceFailure, Services};

use super::probe::{NotifyListener, Probe};
use crate::plan::WaitTarget;
use running::ServiceUnit;

use super::{StepAction, StepContext, StepError, StepInputs};

pub struct ServiceAction<'a> {
    pub argv: &'a [String],
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
        let notify = match ready.target {
            WaitTarget::Notify => Some(Arc::new(
                NotifyListener::bind(&ctx.services.notify_dir(), &inputs.step.name)
                    .map_err(|source| StepError::Spawn {
                        program: format!(
                            "notify socket in {}",
                            ctx.services.notify_dir().display()
                        ),
                        source,
                    })?
                    .with_reporter(ctx.reporter.clone()),
            )),
            _ => None,
        };
        let unit = ServiceUnit {
            step: inputs.step.name.clone(),
            probe: Probe::new(ready, "ready", inputs, ctx, notify.clone())?,
            cmd,
            bootstrap_id: ctx.bootstrap_id.clone(),
            ready_limit: inputs.step.timeout,
            policy: inputs.step.restart,
            required: inputs.step.required,
            grace: ctx.kill_grace,
            reporter: ctx.reporter.clone(),
            notify,
        };
        let running = running::start(&unit, cancel).await?;
        ctx.services.adopt(unit, running);
        Ok(())
    }
}
