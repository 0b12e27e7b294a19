//! Process handling: how every child of bootplan is started, contained,
//! reaped and read. Steps, services, probes, the supervised app and the
//! `exec` secret helper all start their processes here.
//!
//! - [`Command`] / [`Child`] (`command.rs`): a child through tokio's
//!   spawner, in its own process group, stdin from /dev/null, SIGKILL when
//!   dropped or when bootplan dies, in a cgroup leaf when the run has one;
//!   its tree (leaf, else process group) is killed when it exits.
//! - [`cgroup`]: the run's cgroup v2 group, one leaf per child, and
//!   [`cgroup::reclaim_leftovers`] for what a killed bootplan left.
//! - [`reaper`]: zombie reaping as PID 1 or subreaper, never taking the
//!   status of a child bootplan waits for.
//! - `output.rs`: [`pump`] (a stream, line by line, to the reporter) and
//!   [`run`] (one command to its end, cancellable).
//!
//! What is guaranteed, with a cgroup (cgroup v2, writable, delegated under
//! systemd, Linux 5.14+): nothing a child starts outlives the child's
//! first process, its cancellation, or the run; after a SIGKILL of
//! bootplan its direct children die at once and the rest when the next
//! run starts. Without one, the same holds for the child's process group
//! only: a process that leaves it (`setsid`, a daemon's double fork)
//! escapes, and after a SIGKILL of bootplan only the direct children die.

pub mod cgroup;
mod command;
mod output;
pub mod reaper;

pub use command::{
    Child, Command, Ids, Members, Released, Restrictions, Stdio, parent_of, withheld_env,
    withhold_env,
};
pub use output::{Output, drain, log_in_background, pump, run};

/// A command that did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start `{program}`: {source}")]
    Start {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lost `{program}` while waiting for it: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cancelled")]
    Cancelled,
}
