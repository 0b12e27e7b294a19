//! The OS-facing layer that the OS step kinds share, so that no kind
//! reaches into another: running the system's own tools ([`tool`]), the
//! users and groups database ([`accounts`]), package managers ([`pkg`]),
//! systemd ([`systemd`]), sysctl ([`sysctl`]), the host name
//! ([`hostname`]) and SSH keys ([`ssh`]).
//!
//! Every function here either only reads the machine (what `bootplan plan`
//! may call) or says in its name and docs that it changes it. Tools are
//! started by argv through [`crate::process`], never through a shell, with
//! values the plan layer's [`crate::plan::os::syntax`] checks accepted.
//! Files are written through [`crate::fsutil`].

pub mod accounts;
pub mod hostname;
pub mod pkg;
pub mod ssh;
pub mod sysctl;
pub mod systemd;
pub mod tool;

use std::path::PathBuf;

use crate::error::ErrorCode;
use crate::fsutil::FsError;

pub use tool::Sys;

/// Why an OS step could not do its work. Messages name the tool, the
/// path, the package or the key concerned, never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    /// A rendered value does not match its syntax (a user name from a fact,
    /// a package name from a variable).
    #[error("{what}: {message}")]
    InvalidValue { what: String, message: String },
    /// A tool the step needs is not installed.
    #[error("`{tool}` is not installed: {purpose}")]
    ToolMissing { tool: String, purpose: String },
    /// A tool could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("`{command}` failed ({status}){detail}")]
    ToolFailed {
        code: ErrorCode,
        command: String,
        status: String,
        /// The tool's last words (`: …`), or empty.
        detail: String,
    },
    /// Something the step needs does not exist (a group for a user).
    #[error("{message}")]
    Missing { code: ErrorCode, message: String },
    /// `visudo -c` refused the sudo rules, or cannot check them.
    #[error("the sudo rules for `{user}` were not written: {detail}")]
    SudoInvalid { user: String, detail: String },
    /// The package manager does not know the package (or that version).
    #[error("{manager} has no package `{package}`: {reason}")]
    PackageNotFound {
        manager: &'static str,
        package: String,
        reason: String,
    },
    /// The transaction failed; `transient` when another try may succeed
    /// (a mirror that was unreachable or out of sync).
    #[error("{manager} failed{}: {reason}", if *transient { " (a mirror or network problem)" } else { "" })]
    PackagesFailed {
        manager: &'static str,
        transient: bool,
        reason: String,
    },
    /// A sysctl key this kernel does not have.
    #[error("sysctl `{key}` does not exist on this kernel (no {})", path.display())]
    SysctlUnknownKey { key: String, path: PathBuf },
    /// The kernel refused a sysctl value.
    #[error("cannot set sysctl `{key}` to `{value}` ({}): {source}", path.display())]
    Sysctl {
        key: String,
        value: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The host name could not be set.
    #[error("cannot set the host name to `{name}`: {source}")]
    Hostname {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// A unit action that needs a running systemd.
    #[error(
        "cannot {action} {unit}: systemd is not running here (no /run/systemd/system); only enable, disable and mask work offline (`systemctl --root`)"
    )]
    NoSystemd { unit: String, action: &'static str },
    /// Dropping to a user needs root.
    #[error("cannot run as `{user}`: changing user needs root (bootplan runs as uid {euid})")]
    NotRoot { user: String, euid: u32 },
    /// A file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Reading a file of the system (passwd, shadow, /proc) failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The step was cancelled while a tool ran (the tool was stopped).
    #[error("cancelled")]
    Cancelled,
}

impl OsError {
    pub fn code(&self) -> ErrorCode {
        match self {
            OsError::InvalidValue { .. } => ErrorCode::ValueInvalid,
            OsError::ToolMissing { .. } => ErrorCode::OsToolMissing,
            OsError::Spawn { .. } => ErrorCode::StepSpawnFailed,
            OsError::ToolFailed { code, .. } | OsError::Missing { code, .. } => *code,
            OsError::SudoInvalid { .. } => ErrorCode::UserSudoInvalid,
            OsError::PackageNotFound { .. } => ErrorCode::PackagesNotFound,
            OsError::PackagesFailed {
                transient: true, ..
            } => ErrorCode::PackagesUnavailable,
            OsError::PackagesFailed { .. } => ErrorCode::PackagesFailed,
            OsError::SysctlUnknownKey { .. } => ErrorCode::SysctlUnknownKey,
            OsError::Sysctl { .. } => ErrorCode::SysctlFailed,
            OsError::Hostname { .. } => ErrorCode::HostnameFailed,
            OsError::NoSystemd { .. } => ErrorCode::UnitNoSystemd,
            OsError::NotRoot { .. } => ErrorCode::StepSpawnFailed,
            OsError::Fs(FsError::UnsafeLink { .. }) => ErrorCode::PathUnsafe,
            OsError::Fs(_) => ErrorCode::FileWriteFailed,
            OsError::Read { .. } => ErrorCode::FileWriteFailed,
            OsError::Cancelled => ErrorCode::RunInterrupted,
        }
    }

    /// Whether another attempt could succeed: a failed tool or a mirror
    /// problem may pass; a bad value, a missing package, a refused sudo
    /// rule, an unknown key or a missing systemd will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            OsError::ToolFailed { .. }
            | OsError::Spawn { .. }
            | OsError::Hostname { .. }
            | OsError::Read { .. } => true,
            OsError::PackagesFailed { transient, .. } => *transient,
            OsError::Fs(err) => !matches!(err, FsError::UnsafeLink { .. }),
            OsError::InvalidValue { .. }
            | OsError::ToolMissing { .. }
            | OsError::Missing { .. }
            | OsError::SudoInvalid { .. }
            | OsError::PackageNotFound { .. }
            | OsError::SysctlUnknownKey { .. }
            | OsError::Sysctl { .. }
            | OsError::NoSystemd { .. }
            | OsError::NotRoot { .. }
            | OsError::Cancelled => false,
        }
    }
}

/// Checks a rendered value with one of [`crate::plan::os::syntax`]'s checks.
pub fn checked<T>(
    what: &str,
    value: &str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, OsError> {
    check(value).map_err(|message| OsError::InvalidValue {
        what: what.to_string(),
        message,
    })
}
