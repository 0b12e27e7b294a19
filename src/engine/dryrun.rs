//! `bootplan plan`: what a run would do, with no side effects. It reads the
//! journal and checks `creates` paths; it never runs a command (so `unless`
//! is reported as "would check"). OS kinds look at the machine with the
//! same read-only queries a run starts with, and say what would change.

use std::path::Path;

use serde::Serialize;

use super::journal::{self, JournalDoc};
use crate::facts::Facts;
use crate::plan::{Frequency, Plan, StepKind, refs};

/// One step's predicted fate.
#[derive(Debug, Serialize)]
pub struct Decision {
    pub step: String,
    pub kind: &'static str,
    pub needs: Vec<String>,
    pub action: &'static str,
    pub reason: String,
}

/// Predicts, for each step in plan order, whether a run would run or skip it.
pub fn decide(plan: &Plan, state_dir: &Path, facts: &Facts) -> Vec<Decision> {
    let doc = journal::read_doc(state_dir).unwrap_or_else(|_| JournalDoc::default());
    let records = doc.plans.get(&plan.name);
    let scope = crate::plan::refs::TemplateScope::new(facts.template_value(), &plan.vars);
    plan.steps
        .iter()
        .map(|step| {
            let needs = step
                .needs
                .iter()
                .map(|&d| plan.steps[d].name.clone())
                .collect();
            let when_false = step
                .when
                .as_deref()
                .filter(|expr| matches!(crate::plan::when::evaluate(expr, &scope), Ok(false)));
            let (action, reason) = if let Some(expr) = when_false {
                ("skip", crate::plan::when::skip_reason(expr))
            } else if let Some(reason) = records
                .and_then(|r| r.get(&step.name))
                .and_then(|rec| journal::skip_reason(rec, step, facts))
            {
                ("skip", reason)
            } else if let Some(path) = step
                .creates
                .as_deref()
                .filter(|c| !refs::is_template(c))
                .map(|c| plan.path.parent().unwrap_or(Path::new(".")).join(c))
                .filter(|p| p.exists())
            {
                ("skip", format!("creates: {} exists", path.display()))
            } else if let Some(unless) = &step.unless {
                (
                    "check",
                    format!("runs unless `{}` succeeds", unless.join(" ")),
                )
            } else if let StepKind::Os(kind) = &step.kind {
                // Looks at the machine with the run's own read-only queries.
                crate::steps::os::preview(step, kind, facts, &scope)
            } else if matches!(step.kind, StepKind::Exec { .. }) {
                (
                    "exec",
                    "replaces bootplan once every other step is done".to_string(),
                )
            } else {
                let why = match records.and_then(|r| r.get(&step.name)) {
                    _ if step.frequency == Frequency::Always => "frequency always".to_string(),
                    None => "never completed".to_string(),
                    Some(rec) if rec.fingerprint != step.fingerprint => {
                        "definition changed since it last ran".to_string()
                    }
                    Some(_) => format!("frequency {}", step.frequency.as_str()),
                };
                ("run", why)
            };
            Decision {
                step: step.name.clone(),
                kind: step.kind.name(),
                needs,
                action,
                reason,
            }
        })
        .collect()
}
