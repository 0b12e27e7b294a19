//! bootplan: takes a machine from a blank start to "ready", driven by a
//! declarative plan. See ARCHITECTURE.md for the map.

pub mod analyze;
pub mod cli;
pub mod engine;
pub mod error;
pub mod facts;
pub mod fsutil;
pub mod http;
pub mod lifecycle;
pub mod plan;
pub mod process;
pub mod redact;
pub mod retry;
pub mod secrets;
pub mod stdio;
pub mod steps;
pub mod telemetry;
pub mod template;
