//! `bootplan analyze`: where the time of a run went, from its status file.
//!
//! [`timeline`] rebuilds the run (steps, attempts, backoff, waits) and
//! answers `blame` and `critical-chain`; [`render`] prints them as text or
//! JSON, or draws a self-contained SVG/HTML waterfall. To add a view: a
//! variant of [`View`], a method on [`timeline::Timeline`], and its text form.

pub mod history;
pub mod render;
pub mod timeline;

use std::path::PathBuf;

use crate::error::exit;
use crate::telemetry::status;
use timeline::Timeline;

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Steps by run time, longest first.
    Blame,
    /// The chain of steps that decided when the run finished.
    CriticalChain,
}

/// How to show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    /// Every view, for machines.
    Json,
    /// A waterfall (Gantt) of steps, attempts, retries and waits.
    Svg,
    /// The waterfall with the blame and critical-chain tables, one self-contained page.
    Html,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    #[arg(value_enum, default_value_t = View::Blame)]
    pub view: View,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The status file to read [default: the run dir's status.json].
    #[arg(long, value_name = "FILE")]
    pub status: Option<PathBuf>,
    /// A plan file whose run_dir (and state_dir, for the history) to read.
    #[arg(long, value_name = "PLAN")]
    pub plan: Option<PathBuf>,
    /// A run from the history instead: 1 is the newest.
    #[arg(long, value_name = "N", conflicts_with = "status")]
    pub run: Option<usize>,
    /// List the runs in the history and compare the newest with the others.
    #[arg(long, conflicts_with_all = ["status", "run"])]
    pub list: bool,
}

/// Runs the command on `doc` (the run to analyze, or why there is none);
/// returns the exit code.
pub fn command(args: &AnalyzeArgs, doc: Result<status::StatusDoc, String>) -> i32 {
    let doc = match doc {
        Ok(doc) => doc,
        Err(err) => {
            crate::stdio::errln!("bootplan: no run to analyze: {err}");
            return exit::UNAVAILABLE;
        }
    };
    let timeline = Timeline::from_status(&doc);
    let failed = doc.failed_step.as_deref();
    let out = match args.format {
        Format::Text => match args.view {
            View::Blame => render::blame_text(&timeline),
            View::CriticalChain => render::chain_text(&timeline, failed),
        },
        Format::Json => render::json(&timeline, failed),
        Format::Svg => render::svg(&timeline, failed),
        Format::Html => render::html(&timeline, failed),
    };
    crate::stdio::write_out_raw(out.as_bytes());
    exit::READY
}
