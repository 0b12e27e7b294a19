//! `wait` steps: poll until a TCP port accepts, an HTTP URL answers 2xx, a
//! file exists, or a command exits 0, through the same [`Probe`] services
//! are checked with. Each check is bounded; the wait says "still waiting"
//! every few seconds; the whole wait is bounded by the step's `timeout`
//! (and always by the run's deadline).

use tokio_util::sync::CancellationToken;

use super::probe::Probe;
use super::{StepAction, StepContext, StepError, StepInputs};
use crate::plan::WaitSpec;

pub struct WaitAction<'a> {
    pub spec: &'a WaitSpec,
    /// Bound on the whole wait; `None` waits until cancelled (the deadline).
    pub limit: Option<std::time::Duration>,
}

impl StepAction for WaitAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        // Validation keeps `notify` out of wait steps: it needs a process
        // bootplan starts, so there is no listener here.
        let probe = Probe::new(self.spec, "wait", inputs, ctx, None)?;
        probe.wait(self.limit, cancel, || None).await
    }
}
