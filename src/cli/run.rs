//! `bootplan run PLAN` and `bootplan run --user-data`.

use std::path::PathBuf;

use super::Cli;
use crate::lifecycle::boot::{self, BootOptions};
use crate::plan::lifecycle::Compat;

/// Where the plan comes from, and what the command line adds to it.
pub struct Source {
    pub plan: Option<PathBuf>,
    /// `--user-data [--provider P]`.
    pub user_data: Option<Option<String>>,
    pub compat: Compat,
}

pub fn run(cli: &Cli, source: Source, verification: crate::plan::source::Verification) -> i32 {
    let plan = source.plan.unwrap_or_else(|| {
        crate::lifecycle::userdata::shown_path(
            source
                .user_data
                .as_ref()
                .and_then(|p| p.as_deref())
                .unwrap_or("detected"),
        )
    });
    boot::run(&BootOptions {
        plan,
        verification,
        state_dir: cli.state_dir.clone(),
        run_dir: cli.run_dir.clone(),
        log_format: cli.log_format,
        log_level: cli.log_level,
        telemetry: cli.telemetry.clone(),
        supervise: cli.supervise,
        report_url: cli.report_url.clone(),
        user_data: source.user_data,
        compat: source.compat,
    })
}
