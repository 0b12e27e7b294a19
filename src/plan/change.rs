//! `on_change:` as written, for template steps and for secrets: what a
//! refresh that wrote a new file tells (and, for templates, checks).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `on_change:` of a template step.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOnChange {
    /// A command (argv) that checks the new file; when it fails, the old
    /// content is put back and nothing is reloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Vec<String>>,
    /// What to tell about the new file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<RawReload>,
    /// Wait up to this long, at random, before the reload, so a fleet
    /// that got the same new value does not reload all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splay: Option<super::duration::HumanDuration>,
}

/// `on_change.reload`: a signal to the app or a service, a restart of
/// one, or a command.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// A signal, e.g. `HUP`, `USR1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Who gets the signal: `app` (the supervised `exec` app) or the name of a `service` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A command (argv) to run instead of a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Restart instead of a signal: `app` or the name of a `service` step
    /// (for a process that reads the file only when it starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
}
