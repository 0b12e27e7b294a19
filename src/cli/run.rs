//! `bootplan run PLAN`.

use std::path::Path;

use super::Cli;
use crate::lifecycle::boot::{self, BootOptions};

pub fn run(cli: &Cli, plan: &Path, verification: crate::plan::source::Verification) -> i32 {
    boot::run(&BootOptions {
        plan: plan.to_path_buf(),
        verification,
        state_dir: cli.state_dir.clone(),
        run_dir: cli.run_dir.clone(),
        log_format: cli.log_format,
        log_level: cli.log_level,
        telemetry: cli.telemetry.clone(),
        supervise: cli.supervise,
        report_url: cli.report_url.clone(),
    })
}
