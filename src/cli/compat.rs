//! `bootplan compat cloud-init status`, also reached as `cloud-init status`
//! through a symlink named `cloud-init`: cloud-init's output and exit codes
//! (0 done, 1 error, 2 degraded), read from the files a run with
//! `compat: cloud-init` writes. Unlike cloud-init's, `--wait` gives up
//! after `--timeout`.

use std::time::Duration;

use clap::Parser;

use crate::error::exit;
use crate::lifecycle::cloud_init::{self, CloudInitPaths};
use crate::stdio::{errln, outln};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Tabular)]
    format: Format,
    /// Also the boot status code, the last update and the detail.
    #[arg(short, long)]
    long: bool,
    /// Block until the run has finished.
    #[arg(short, long)]
    wait: bool,
    /// With --wait: give up after this long (exit 1, status `running`).
    #[arg(long, value_parser = crate::plan::duration::parse_duration, default_value = "30m")]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Json,
    Tabular,
    Yaml,
}

/// `cloud-init ARGS`, when bootplan is invoked under that name.
#[derive(Debug, Parser)]
#[command(
    name = "cloud-init",
    about = "bootplan answering cloud-init's status command"
)]
struct CloudInitCli {
    #[command(subcommand)]
    command: CloudInitOnly,
}

#[derive(Debug, clap::Subcommand)]
enum CloudInitOnly {
    /// Report the run status (bootplan's run, in cloud-init's terms).
    Status(StatusArgs),
}

/// Whether the program was started as `cloud-init` (a symlink to bootplan).
pub fn invoked_as_cloud_init() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "cloud-init"))
        .unwrap_or(false)
}

/// The `cloud-init` entry point: only `status` is answered.
pub fn cloud_init_main() -> i32 {
    match CloudInitCli::try_parse() {
        Ok(CloudInitCli {
            command: CloudInitOnly::Status(args),
        }) => status(&args),
        Err(err) => {
            let _ = err.print();
            match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::READY
                }
                _ => {
                    errln!(
                        "bootplan answers only `cloud-init status [--wait] [--long] [--format json]` here; this machine is set up by bootplan"
                    );
                    exit::USAGE
                }
            }
        }
    }
}

pub fn status(args: &StatusArgs) -> i32 {
    let paths = CloudInitPaths::default();
    let tabular = args.format == Format::Tabular;
    let (details, final_state) = if args.wait {
        let ticked = std::cell::Cell::new(false);
        let (details, last) = cloud_init::wait(&paths, args.timeout, || {
            if tabular {
                ticked.set(true);
                crate::stdio::write_out_raw(b".");
            }
        });
        if ticked.get() {
            outln!("");
        }
        (details, last)
    } else {
        (cloud_init::read(&paths), true)
    };
    match args.format {
        Format::Tabular => crate::stdio::write_out_raw(details.to_text(args.long).as_bytes()),
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&details.to_json()).unwrap_or_default()
        ),
        Format::Yaml => crate::stdio::write_out_raw(
            serde_saphyr::to_string(&details.to_json())
                .unwrap_or_default()
                .as_bytes(),
        ),
    }
    if !final_state {
        errln!(
            "bootplan: gave up waiting after {} (status still `{}`)",
            humantime::format_duration(args.timeout),
            details.state.as_str()
        );
        return 1;
    }
    details.state.exit_code()
}
