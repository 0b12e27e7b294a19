//! The `exec` backend: a helper command (argv, no shell) prints the secret
//! on stdout. For stores bootplan has no client for (1Password, pass, a
//! company CLI). Its stdout is kept in a zeroized buffer; its stderr is
//! read and dropped, never logged (helpers are known to echo what they
//! fetched). Exit 69 means the store was unreachable, 77 access denied,
//! any other non-zero status "not found".

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use super::{SecretError, SecretValue, local};
use crate::plan::secret_source::ExecSecret;
use crate::spawn::Stdio;

const BACKEND: &str = "exec";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A secret larger than this is not a secret but a mistake.
const MAX_OUTPUT: u64 = 1 << 20;

#[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name))]
pub async fn fetch(name: &str, spec: &ExecSecret, cwd: &Path) -> Result<SecretValue, SecretError> {
    let err = |kind: fn(String, String) -> SecretError, detail: String| kind(name.into(), detail);
    let Some((program, args)) = spec.command.split_first() else {
        return Err(err(not_found, "the helper command is empty".into()));
    };
    let mut command = crate::spawn::Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::Piped)
        .stderr(Stdio::Piped)
        .kill_on_drop();
    let mut child = command
        .spawn()
        .await
        .map_err(|e| err(unreachable, format!("cannot start `{program}`: {e}")))?;
    let limit = spec.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let run = async {
        let mut out = Zeroizing::new(Vec::new());
        let mut discard = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut discard).await;
            }
        };
        tokio::join!(read_out, read_err);
        zeroize::Zeroize::zeroize(&mut discard);
        (child.wait().await, out)
    };
    let (status, out) = tokio::time::timeout(limit, run).await.map_err(|_| {
        err(
            unreachable,
            format!(
                "`{program}` did not finish within {}",
                humantime::format_duration(limit)
            ),
        )
    })?;
    let status = status.map_err(|e| err(unreachable, format!("waiting for `{program}`: {e}")))?;
    match status.code() {
        Some(0) => {}
        Some(69) => {
            return Err(err(
                unreachable,
                format!("`{program}` exited 69 (store unavailable)"),
            ));
        }
        Some(77) => {
            return Err(err(
                denied,
                format!("`{program}` exited 77 (permission denied)"),
            ));
        }
        Some(code) => {
            return Err(err(
                not_found,
                format!("`{program}` exited with status {code}"),
            ));
        }
        None => {
            return Err(err(
                unreachable,
                format!("`{program}` was killed by a signal"),
            ));
        }
    }
    let text = Zeroizing::new(String::from_utf8(out.to_vec()).map_err(|_| {
        err(
            not_found,
            format!("`{program}` printed something that is not UTF-8 text"),
        )
    })?);
    local::select_key(
        name,
        BACKEND,
        text.trim_end_matches(['\n', '\r']),
        spec.key.as_deref(),
    )
}

fn unreachable(name: String, detail: String) -> SecretError {
    SecretError::Unreachable {
        name,
        backend: BACKEND,
        detail,
    }
}

fn denied(name: String, detail: String) -> SecretError {
    SecretError::Denied {
        name,
        backend: BACKEND,
        detail,
    }
}

fn not_found(name: String, detail: String) -> SecretError {
    SecretError::NotFound {
        name,
        backend: BACKEND,
        detail,
    }
}
