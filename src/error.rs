//! Stable error codes and the exit codes they map to.
//!
//! Each code has a runbook entry in `docs/runbook.md`; a test checks that
//! every variant here has one. Codes are part of the contract: add new ones,
//! never rename.

use serde::{Serialize, Serializer};

/// Process exit codes (sysexits-style).
pub mod exit {
    pub const READY: i32 = 0;
    pub const STEP_FAILED: i32 = 1;
    pub const USAGE: i32 = 64;
    pub const INVALID_PLAN: i32 = 65;
    pub const UNAVAILABLE: i32 = 69;
    pub const SOFTWARE: i32 = 70;
    pub const CANT_CREATE: i32 = 73;
    pub const DEADLINE: i32 = 75;
    pub const DENIED: i32 = 77;
    /// Stopped by SIGTERM (128 + 15). A run stopped by signal n exits 128+n;
    /// this is the code of the usual one.
    pub const INTERRUPTED: i32 = 143;
}

macro_rules! error_codes {
    ($( $variant:ident => ($code:literal, $exit:expr, $summary:literal) ),+ $(,)?) => {
        /// A stable, dotted error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode { $( $variant ),+ }

        impl ErrorCode {
            /// Every code, for documentation checks.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant ),+ ];

            /// The dotted name, e.g. `step.timeout`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code ),+ }
            }

            /// The exit code a run that ends on this error returns.
            pub fn exit_code(self) -> i32 {
                match self { $( ErrorCode::$variant => $exit ),+ }
            }

            /// One line on what the code means.
            pub fn summary(self) -> &'static str {
                match self { $( ErrorCode::$variant => $summary ),+ }
            }

            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code { $( $code => Some(ErrorCode::$variant), )+ _ => None }
            }
        }
    };
}

error_codes! {
    UsageInvalid => ("usage.invalid", exit::USAGE, "the command line is wrong"),
    PlanInvalid => ("plan.invalid", exit::INVALID_PLAN, "the plan failed validation; nothing ran"),
    PlanUnreadable => ("plan.unreadable", exit::INVALID_PLAN, "the plan file could not be read"),
    StepExitNonzero => ("step.exit_nonzero", exit::STEP_FAILED, "a step's command exited with a non-zero status"),
    StepSignaled => ("step.signaled", exit::STEP_FAILED, "a step's command was killed by a signal"),
    StepSpawnFailed => ("step.spawn_failed", exit::STEP_FAILED, "a step's command could not be started"),
    StepTimeout => ("step.timeout", exit::STEP_FAILED, "a step's attempt ran past its timeout"),
    StepCancelled => ("step.cancelled", exit::STEP_FAILED, "a step was stopped because another step failed"),
    StepWaitTimeout => ("step.wait_timeout", exit::STEP_FAILED, "a wait step's condition did not become true in time"),
    TemplateRenderFailed => ("template.render_failed", exit::STEP_FAILED, "a template could not be rendered"),
    FileWriteFailed => ("file.write_failed", exit::STEP_FAILED, "a file could not be written, or its owner set"),
    PathUnsafe => ("path.unsafe", exit::STEP_FAILED, "a rendered path climbs out with `..` from a value or holds a NUL, or writing it would follow a symlink someone else controls"),
    DeadlineExceeded => ("deadline.exceeded", exit::DEADLINE, "the plan's global deadline passed before the run finished"),
    RunInterrupted => ("run.interrupted", exit::INTERRUPTED, "bootplan was asked to stop during the run (exit 128+signal: 143 for SIGTERM, 130 for SIGINT)"),
    StateUnwritable => ("state.unwritable", exit::CANT_CREATE, "the state or run directory could not be written, or another bootplan holds its lock"),
    StateUntrusted => ("state.untrusted", exit::CANT_CREATE, "the state, run or secrets directory (or a file bootplan keeps there) could be changed by someone other than bootplan's user"),
    RunGone => ("run.gone", exit::UNAVAILABLE, "the bootplan that wrote the status file was killed (or the machine rebooted) before the run finished"),
    Internal => ("internal.error", exit::SOFTWARE, "a bug in bootplan: a step panicked"),
    ExecFailed => ("exec.failed", exit::STEP_FAILED, "the final exec could not replace bootplan"),
    FactsUnreachable => ("facts.unreachable", exit::UNAVAILABLE, "no metadata provider answered within the detection budget"),
    FactsMalformed => ("facts.malformed", exit::UNAVAILABLE, "the metadata service answered, but not in its documented shape"),
    SecretUnreachable => ("secret.unreachable", exit::UNAVAILABLE, "the secret store did not answer after retries"),
    SecretAuthFailed => ("secret.auth_failed", exit::DENIED, "the secret store rejected bootplan's credentials"),
    SecretDenied => ("secret.denied", exit::DENIED, "the secret store refused access to a secret"),
    SecretNotFound => ("secret.not_found", exit::STEP_FAILED, "a secret does not exist at the given path or key"),
    ServiceFailed => ("service.failed", exit::UNAVAILABLE, "a required service exited and was not brought back within its restart limit"),
    DownloadChecksumMismatch => ("download.checksum_mismatch", exit::STEP_FAILED, "downloaded content does not match the digest the plan gives; the bytes were discarded and nothing was placed"),
    DownloadUnavailable => ("download.unavailable", exit::UNAVAILABLE, "no source of a download gave it within its retries (connection failures, HTTP errors, timeouts)"),
    DownloadTooLarge => ("download.too_large", exit::STEP_FAILED, "a download (or what its archive unpacks to) is larger than its max_size"),
    DownloadRefused => ("download.refused", exit::STEP_FAILED, "a download was refused before or while fetching: a URL bootplan cannot fetch, secrets over plain http, a local file that cannot be read"),
    DownloadArchiveUnsafe => ("download.archive_unsafe", exit::STEP_FAILED, "an archive holds a member that would land outside dest (`..`, absolute path, escaping link) or a device file; nothing was extracted"),
    DownloadArchiveInvalid => ("download.archive_invalid", exit::STEP_FAILED, "verified content does not decompress or unpack as the format says; nothing was extracted"),
    PlanSignatureInvalid => ("plan.signature_invalid", exit::DENIED, "a remote plan's pin or signature did not verify with a trusted key; it was not parsed"),
    RegisterFailed => ("register.failed", exit::UNAVAILABLE, "the instance could not be registered in the service registry"),
    ValueInvalid => ("value.invalid", exit::STEP_FAILED, "a value a template rendered (a user, group or host name, a package, unit or sysctl name, an SSH key) does not match its syntax"),
    OsToolMissing => ("os.tool_missing", exit::STEP_FAILED, "a system tool the step needs (useradd, visudo, systemctl, ssh-keygen, a package manager) is not installed"),
    UserFailed => ("user.failed", exit::STEP_FAILED, "useradd, usermod, userdel or chpasswd failed, or a group the user needs does not exist"),
    UserSudoInvalid => ("user.sudo_invalid", exit::STEP_FAILED, "visudo rejected the user's sudo rules (or is missing); nothing was written to /etc/sudoers.d"),
    GroupFailed => ("group.failed", exit::STEP_FAILED, "groupadd, groupmod or groupdel failed"),
    PackagesNotFound => ("packages.not_found", exit::STEP_FAILED, "the package manager has no such package, or not that version"),
    PackagesUnavailable => ("packages.unavailable", exit::UNAVAILABLE, "a package mirror was unreachable or out of sync after retries"),
    PackagesFailed => ("packages.failed", exit::STEP_FAILED, "the package transaction failed (a conflict, a maintainer script, a broken package database)"),
    HostnameFailed => ("hostname.failed", exit::STEP_FAILED, "the host name could not be set"),
    SysctlUnknownKey => ("sysctl.unknown_key", exit::STEP_FAILED, "a sysctl key does not exist on this kernel; nothing was applied"),
    SysctlFailed => ("sysctl.failed", exit::STEP_FAILED, "the kernel refused a sysctl value"),
    UnitFailed => ("unit.failed", exit::STEP_FAILED, "systemctl could not reload, enable, disable, mask, start or restart a unit"),
    UnitNoSystemd => ("unit.no_systemd", exit::STEP_FAILED, "a unit was to be started or restarted, but systemd is not running"),
    SshHostKeysFailed => ("ssh_host_keys.failed", exit::STEP_FAILED, "SSH host keys could not be made"),
    ThrottleUnavailable => ("throttle.unavailable", exit::UNAVAILABLE, "a `throttle:` step could not take a slot of its fleet-wide semaphore: etcd did not answer after retries"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ErrorCode::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code `{text}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_dotted() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(code.as_str().contains('.'), "{code}");
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        }
    }
}
