//! `template` steps: render MiniJinja (strict: an undefined name is an
//! error, not an empty string) and write the result atomically.

use tokio_util::sync::CancellationToken;

use super::{StepAction, StepContext, StepError, StepInputs};
use crate::plan::TemplateSpec;

pub struct TemplateAction<'a> {
    pub spec: &'a TemplateSpec,
}

impl StepAction for TemplateAction<'_> {
    async fn run(
        &self,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        _cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let dest = inputs.path(&self.spec.dest, "template.dest", ctx)?;
        let rendered =
            zeroize::Zeroizing::new(inputs.render(&self.spec.source, &self.spec.origin, ctx)?);
        super::file::write_file(
            &dest,
            rendered.as_bytes(),
            self.spec.mode,
            self.spec.owner.as_deref(),
        )
    }
}
