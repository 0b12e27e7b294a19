//! `include:` — other plan files merged into this one.
//!
//! An entry is a local path (relative to the including file) or a URL
//! pinned with `#sha256=…`. Steps, secrets, vars and backends of the
//! included files are merged in order, the including file last: a step
//! name defined twice is an error unless the later definition says
//! `override: true`; `vars` and backend settings later-wins.

use schemars::JsonSchema;
use serde::Deserialize;

/// One `include:` entry: a path, or a URL with its pin (`URL#sha256=HEX`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct RawInclude(pub String);
