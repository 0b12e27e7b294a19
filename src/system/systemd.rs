//! systemd: whether it runs (then `systemctl` talks to it), or not (then
//! `systemctl --root=/` edits the unit links offline, as in an image
//! build); unit states; one `daemon-reload` for every unit file written
//! before it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::OsError;
use super::tool::{self, Tool};

/// Where units written by bootplan go.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// Whether systemd is the running init (as `sd_booted` decides).
pub fn running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// The file a unit (or one of its drop-ins) is written to.
pub fn unit_path(unit: &str, dropin: Option<&str>) -> PathBuf {
    match dropin {
        Some(dropin) => PathBuf::from(format!("{UNIT_DIR}/{unit}.d/{dropin}")),
        None => PathBuf::from(format!("{UNIT_DIR}/{unit}")),
    }
}

/// `systemctl [--root=/] ARGS…`: offline when systemd is not running.
pub fn systemctl<I, S>(args: I) -> Result<Tool, OsError>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    let mut tool = Tool::new(tool::require("systemctl", "it manages systemd units")?)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .arg("--no-ask-password");
    if !running() {
        tool = tool.arg("--root=/");
    }
    Ok(tool.args(args))
}

/// A unit's enablement, as `systemctl is-enabled` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enablement {
    Enabled,
    Disabled,
    Masked,
    /// No `[Install]` section: neither enabled nor disabled.
    Static,
    /// systemd does not know the unit.
    NotFound,
    /// `alias`, `indirect`, `generated`, `transient`, …
    Other(String),
}

impl Enablement {
    pub fn parse(stdout: &str) -> Enablement {
        match stdout.lines().next().unwrap_or("").trim() {
            "enabled" | "enabled-runtime" | "linked" | "linked-runtime" | "alias" => {
                Enablement::Enabled
            }
            "disabled" => Enablement::Disabled,
            "masked" | "masked-runtime" => Enablement::Masked,
            "static" => Enablement::Static,
            "" | "not-found" => Enablement::NotFound,
            other => Enablement::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Enablement::Enabled => "enabled",
            Enablement::Disabled => "disabled",
            Enablement::Masked => "masked",
            Enablement::Static => "static",
            Enablement::NotFound => "not found",
            Enablement::Other(s) => s,
        }
    }
}

/// Unit files written so far by this process, and how many of them the
/// last `daemon-reload` covered: a reload after several writes covers
/// them all, so a run reloads once however many units it changed.
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static RELOADED: AtomicU64 = AtomicU64::new(0);
static RELOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Notes that a unit file was written; returns its number, for [`reload_for`].
pub fn wrote_unit() -> u64 {
    WRITTEN.fetch_add(1, Ordering::SeqCst) + 1
}

/// Reloads systemd unless a reload since write number `written` did so.
/// `Ok(true)` when this call reloaded.
pub async fn reload_for(sys: &super::Sys<'_>, written: u64) -> Result<bool, OsError> {
    if !running() {
        return Ok(false);
    }
    let _one_at_a_time = RELOAD.lock().await;
    if RELOADED.load(Ordering::SeqCst) >= written {
        return Ok(false);
    }
    // Writes until now are on disk: this reload covers them.
    let covers = WRITTEN.load(Ordering::SeqCst);
    sys.run(&systemctl(["daemon-reload"])?)
        .await?
        .ok_or(crate::error::ErrorCode::UnitFailed)?;
    RELOADED.fetch_max(covers, Ordering::SeqCst);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_paths() {
        assert_eq!(Enablement::parse("enabled\n"), Enablement::Enabled);
        assert_eq!(Enablement::parse("masked\n"), Enablement::Masked);
        assert_eq!(Enablement::parse(""), Enablement::NotFound);
        assert_eq!(
            Enablement::parse("indirect\n"),
            Enablement::Other("indirect".into())
        );
        assert_eq!(
            unit_path("app.service", Some("limits.conf")),
            PathBuf::from("/etc/systemd/system/app.service.d/limits.conf")
        );
    }
}
