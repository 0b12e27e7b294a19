//! `bootplan reset`.

use std::path::Path;

use super::Cli;
use crate::engine::journal;
use crate::error::{ErrorCode, exit};
use crate::stdio::{errln, outln};

pub fn reset(cli: &Cli, steps: &[String], plan: Option<&Path>) -> i32 {
    let plan = match super::load_optional(plan) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    let dirs = super::dirs(cli, plan.as_ref());
    match journal::reset(&dirs.state, plan.as_ref().map(|p| p.name.as_str()), steps) {
        Ok(removed) => outln!("forgot {removed} record(s) in {}", dirs.state.display()),
        Err(err) => {
            errln!("error: {err} [{}]", ErrorCode::StateUnwritable);
            return ErrorCode::StateUnwritable.exit_code();
        }
    }
    // Forgetting everything also forgets the secrets the runs wrote out.
    if steps.is_empty() {
        match crate::secrets::files::remove_written(plan.as_ref(), &dirs.run) {
            Ok(0) => {}
            Ok(n) => outln!("removed {n} secret file(s)"),
            Err(err) => {
                errln!("error: {err} [{}]", ErrorCode::FileWriteFailed);
                return ErrorCode::FileWriteFailed.exit_code();
            }
        }
    }
    exit::READY
}
