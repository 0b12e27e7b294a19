//! bootplan: takes a machine from a blank start to "ready", driven by a
//! declarative plan. See ARCHITECTURE.md for the map.

mod analyze;
pub mod cli;
mod digest;
mod engine;
pub mod error;
mod facts;
mod fleet;
mod fsutil;
mod http;
mod import;
mod lifecycle;
pub mod plan;
mod process;
mod redact;
mod retry;
mod secrets;
mod sigmask;
mod signature;
mod stdio;
mod steps;
mod system;
mod telemetry;
mod template;

/// What the integration tests (`tests/it`) call besides the binary: the
/// host checks they share with bootplan, so a test looks where bootplan
/// looks. Not an API.
#[doc(hidden)]
pub mod test_support {
    pub use crate::process::cgroup::{own_cgroup, reclaim_leftovers};
    pub use crate::secrets::files::on_tmpfs;
}
