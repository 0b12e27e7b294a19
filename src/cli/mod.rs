//! Command-line interface: argument parsing and wiring, one module per
//! command. Each command calls the library and returns the exit code; none
//! has logic of its own.

mod check;
mod compat;
mod facts;
mod import;
mod reset;
mod run;
mod status;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{ErrorCode, exit};
use crate::lifecycle::dirs::RunDirs;
use crate::plan::Plan;
use crate::stdio::errln;
use crate::telemetry::{Level, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "bootplan",
    version,
    about = "Take a machine from a blank start to ready, driven by a declarative plan."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Where the journal lives [default: the plan's state_dir, else /var/lib/bootplan]
    #[arg(long, global = true, env = "BOOTPLAN_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the status file goes [default: the plan's run_dir, else /run/bootplan]
    #[arg(long, global = true, env = "BOOTPLAN_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Log format: `auto` is text on a terminal, JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "BOOTPLAN_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Least severe level to log.
    #[arg(long, global = true, value_enum, default_value_t = Level::Info, env = "BOOTPLAN_LOG_LEVEL")]
    pub log_level: Level,
    #[command(flatten)]
    pub telemetry: crate::telemetry::observe::TelemetryArgs,
    /// `run`: stay the parent of the exec app (forward signals, reap, stop in order)
    /// even without services. Automatic with services, as PID 1, or with `register`.
    #[arg(long, global = true, env = "BOOTPLAN_SUPERVISE")]
    pub supervise: bool,
    /// `run`: POST the final status here too (overrides the plan's `report.webhook`;
    /// the only report URL when the plan cannot be parsed).
    #[arg(long, global = true, env = "BOOTPLAN_REPORT_URL")]
    pub report_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a plan to ready. PLAN is a file, or a URL (https://, http://,
    /// file://) pinned as `URL#sha256=HEX` or signed (`--require-signature`).
    Run {
        /// The plan file or URL (not with --user-data).
        #[arg(required_unless_present = "user_data")]
        plan: Option<PathBuf>,
        /// Take the plan from the machine's user data: a `#bootplan` plan or a
        /// `text/x-bootplan` part runs as it is, cloud-config is imported on the
        /// fly (the migration report goes to the log); anything else is refused.
        #[arg(long, conflicts_with = "plan")]
        user_data: bool,
        /// With --user-data: the provider to ask (default: detected).
        #[arg(long, requires = "user_data")]
        provider: Option<String>,
        /// Also write another tool's status files: `cloud-init` writes
        /// /run/cloud-init/status.json, result.json and boot-finished.
        #[arg(long, value_enum, env = "BOOTPLAN_COMPAT")]
        compat: Option<CompatArg>,
        /// Refuse a plan from a URL (and its included URLs) unless `URL.minisig`
        /// verifies with a trusted minisign key; checked before the plan is parsed.
        #[arg(long, env = "BOOTPLAN_REQUIRE_SIGNATURE")]
        require_signature: bool,
        /// A minisign public key file to trust, beside /etc/bootplan/keys/*.pub
        /// (`BOOTPLAN_KEYS_DIR`). May be given more than once.
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
    },
    /// Validate a plan and report every problem (exit 65 when invalid).
    Check {
        plan: PathBuf,
        /// Print the problems as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a run would do, without doing anything.
    Plan {
        plan: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the plan file's JSON Schema.
    Schema,
    /// Show the status of the current or last run.
    Status {
        /// A plan file whose run_dir to read.
        #[arg(long)]
        plan: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Wait until the run has finished.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 75).
        #[arg(long, value_parser = crate::plan::duration::parse_duration, default_value = "5m")]
        timeout: Duration,
        /// The recorded runs instead, and how the last compares with the others.
        #[arg(long, conflicts_with_all = ["wait", "json"])]
        history: bool,
    },
    /// Forget journal records so steps run again.
    Reset {
        /// Steps to forget; all when none are named.
        steps: Vec<String>,
        /// Only records of this plan (a plan file; its state_dir is used too).
        #[arg(long)]
        plan: Option<PathBuf>,
    },
    /// Print the facts bootplan sees on this machine (never the user data, unless asked).
    Facts {
        #[arg(long)]
        json: bool,
        /// Provider to ask: auto, aws, gcp, azure, openstack, digitalocean, nocloud, local.
        #[arg(long)]
        provider: Option<String>,
        /// Use this plan's `facts:` settings (provider, fallback, budget, endpoints).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Print only the raw user data, to stdout (it is never shown otherwise).
        #[arg(long)]
        user_data: bool,
    },
    /// Where the time of the last run went: blame, critical chain, waterfall.
    Analyze(crate::analyze::AnalyzeArgs),
    /// Turn another tool's configuration into a plan.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Answer other tools' commands from bootplan's status.
    #[command(subcommand)]
    Compat(CompatCommand),
}

/// Other tools' status files bootplan can write.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompatArg {
    CloudInit,
}

#[derive(Debug, Subcommand)]
pub enum CompatCommand {
    /// cloud-init's commands (also when bootplan is invoked as `cloud-init`).
    #[command(name = "cloud-init", subcommand)]
    CloudInit(CloudInitCommand),
}

#[derive(Debug, Subcommand)]
pub enum CloudInitCommand {
    /// `cloud-init status`: done (exit 0), error (1), degraded (2), from
    /// the files a run with `compat: cloud-init` writes.
    Status(compat::StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// cloud-init user data (cloud-config, MIME multipart, scripts, gzip)
    /// to a plan, with a migration report on stderr.
    CloudConfig {
        /// The user data file (`-` for stdin).
        file: PathBuf,
        /// Write the plan here instead of to stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Print the report as JSON on stdout (with the plan, unless --output).
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line and returns the process exit code. A panic is
/// `internal.error`, exit 70.
pub fn main() -> i32 {
    if crate::lifecycle::lean::invoked() {
        return crate::lifecycle::lean::main();
    }
    if compat::invoked_as_cloud_init() {
        return compat::cloud_init_main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::READY
                }
                _ => exit::USAGE,
            };
        }
    };
    std::panic::catch_unwind(|| dispatch(&cli)).unwrap_or_else(|_| {
        errln!(
            "bootplan: internal error: bootplan panicked (a bug; please report it) [{}]",
            ErrorCode::Internal
        );
        ErrorCode::Internal.exit_code()
    })
}

fn dispatch(cli: &Cli) -> i32 {
    match &cli.command {
        Command::Run {
            plan,
            user_data,
            provider,
            compat,
            require_signature,
            trusted_keys,
        } => run::run(
            cli,
            run::Source {
                plan: plan.clone(),
                user_data: user_data.then(|| provider.clone()),
                compat: crate::plan::lifecycle::Compat {
                    cloud_init: matches!(compat, Some(CompatArg::CloudInit)),
                },
            },
            crate::plan::source::Verification {
                require_signature: *require_signature,
                trusted_keys: trusted_keys.clone(),
                keys_dir: None,
            },
        ),
        Command::Check { plan, json } => check::check(plan, *json),
        Command::Plan { plan, json } => check::dry_run(cli, plan, *json),
        Command::Schema => check::schema(),
        Command::Status {
            plan,
            json,
            wait,
            timeout,
            history,
        } => match history {
            true => status::history(cli, plan.as_deref()),
            false => status::status(cli, plan.as_deref(), *json, *wait, *timeout),
        },
        Command::Reset { steps, plan } => reset::reset(cli, steps, plan.as_deref()),
        Command::Facts {
            json,
            provider,
            plan,
            user_data,
        } => facts::facts(*json, provider.as_deref(), plan.as_deref(), *user_data),
        Command::Analyze(args) => analyze(cli, args),
        Command::Import(ImportCommand::CloudConfig { file, output, json }) => {
            import::cloud_config(file, output.as_deref(), *json)
        }
        Command::Compat(CompatCommand::CloudInit(CloudInitCommand::Status(args))) => {
            compat::status(args)
        }
    }
}

/// `bootplan analyze`: a status file, the run dir's, or a run of the history.
fn analyze(cli: &Cli, args: &crate::analyze::AnalyzeArgs) -> i32 {
    use crate::telemetry::{history, status};
    if let Some(path) = &args.status {
        return crate::analyze::command(args, status::read_status(path));
    }
    let dirs = match load_optional(args.plan.as_deref()) {
        Ok(plan) => dirs(cli, plan.as_ref()),
        Err(code) => return code,
    };
    if args.list {
        crate::stdio::write_out_raw(
            crate::analyze::history::report(&history::runs(&dirs.state)).as_bytes(),
        );
        return exit::READY;
    }
    let doc = match args.run {
        Some(n) => history::runs(&dirs.state)
            .into_iter()
            .nth(n.saturating_sub(1))
            .filter(|_| n > 0)
            .ok_or_else(|| format!("no run {n} in the history of {}", dirs.state.display())),
        None => status::read_status(&dirs.status_file()),
    };
    crate::analyze::command(args, doc)
}

/// The JSON Schema of the plan format, pretty-printed.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(crate::plan::raw::RawPlan);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// The run's directories: the flags', else the plan's, else the defaults.
fn dirs(cli: &Cli, plan: Option<&Plan>) -> RunDirs {
    RunDirs::resolve(cli.state_dir.as_deref(), cli.run_dir.as_deref(), plan)
}

/// Loads the plan a command's `--plan` names, if it names one; an invalid
/// plan is reported and becomes the exit code.
fn load_optional(path: Option<&std::path::Path>) -> Result<Option<Plan>, i32> {
    match path.map(crate::plan::load).transpose() {
        Ok(plan) => Ok(plan),
        Err(err) => {
            crate::plan::print_error(&err);
            Err(err.code().exit_code())
        }
    }
}
