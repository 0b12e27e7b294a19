//! `bootplan check`, `bootplan plan` and `bootplan schema`.

use std::path::Path;

use super::Cli;
use crate::engine;
use crate::error::exit;
use crate::facts::FactsSettings;
use crate::plan::{self, PlanError};
use crate::stdio::{errln, outln};

pub fn schema() -> i32 {
    outln!("{}", super::schema_json());
    exit::READY
}

pub fn check(path: &Path, json: bool) -> i32 {
    match plan::load(path) {
        Ok(plan) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"valid": true, "plan": plan.name, "steps": plan.steps.len(), "warnings": plan.warnings})
                );
            } else {
                crate::plan::print_diagnostics(&plan.warnings);
                outln!(
                    "{}: ok ({} steps, plan {})",
                    path.display(),
                    plan.steps.len(),
                    plan.name
                );
            }
            exit::READY
        }
        Err(err) => {
            if json {
                let diagnostics = match &err {
                    PlanError::Invalid { diagnostics } => {
                        serde_json::to_value(diagnostics).unwrap_or_default()
                    }
                    PlanError::Read { .. }
                    | PlanError::Fetch { .. }
                    | PlanError::Untrusted { .. }
                    | PlanError::UserData { .. } => {
                        serde_json::json!([{ "file": path, "field": "", "message": err.to_string() }])
                    }
                };
                outln!(
                    "{}",
                    serde_json::json!({"valid": false, "code": err.code().as_str(), "diagnostics": diagnostics})
                );
            } else {
                crate::plan::print_error(&err);
            }
            err.code().exit_code()
        }
    }
}

pub fn dry_run(cli: &Cli, path: &Path, json: bool) -> i32 {
    let plan = match plan::load(path) {
        Ok(plan) => plan,
        Err(err) => {
            crate::plan::print_error(&err);
            return err.code().exit_code();
        }
    };
    let facts = match crate::facts::gather(&FactsSettings::from_env(&plan.facts)) {
        Ok(gathered) => gathered.facts,
        Err(err) => {
            errln!("error: {err} [{}]", err.code());
            return err.code().exit_code();
        }
    };
    let decisions = engine::dryrun::decide(&plan, &super::dirs(cli, Some(&plan)).state, &facts);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&decisions).unwrap_or_default()
        );
        return exit::READY;
    }
    let width = decisions
        .iter()
        .map(|d| d.step.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let kinds = decisions
        .iter()
        .map(|d| d.kind.len())
        .max()
        .unwrap_or(4)
        .max(8);
    outln!(
        "{:<width$}  {:<kinds$}  {:<6}  REASON",
        "STEP",
        "KIND",
        "ACTION"
    );
    for d in &decisions {
        outln!(
            "{:<width$}  {:<kinds$}  {:<6}  {}",
            d.step,
            d.kind,
            d.action,
            d.reason
        );
    }
    exit::READY
}
