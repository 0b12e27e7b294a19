//! The `exec` backend: a helper command (argv, no shell) prints the secret
//! on stdout. For stores bootplan has no client for (1Password, pass, a
//! company CLI). Its stdout is kept in a zeroized buffer (at most
//! [`MAX_OUTPUT`]; more is an error); its stderr is read and dropped, never
//! logged (helpers are known to echo what they fetched). Both are read to
//! their end while it runs, so a helper never blocks on a full pipe. Exit
//! 69 means the store was unreachable, 77 access denied, any other
//! non-zero status "not found". A helper that outlasts its timeout is
//! killed with everything it started (its process tree, as every child).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

use super::{SecretError, SecretValue, local};
use crate::plan::secret_source::ExecSecret;
use crate::process::Stdio;

const BACKEND: &str = "exec";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A secret larger than this is not a secret but a mistake.
const MAX_OUTPUT: usize = 1 << 20;
/// One read of the helper's output.
const CHUNK: usize = 8 * 1024;

#[tracing::instrument(skip_all, fields(backend = BACKEND, secret = name))]
pub async fn fetch(name: &str, spec: &ExecSecret, cwd: &Path) -> Result<SecretValue, SecretError> {
    let err = |kind: fn(String, String) -> SecretError, detail: String| kind(name.into(), detail);
    let Some((program, args)) = spec.command.split_first() else {
        return Err(err(not_found, "the helper command is empty".into()));
    };
    let mut command = crate::process::Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::Piped)
        .stderr(Stdio::Piped);
    let mut child = command
        .spawn()
        .map_err(|e| err(unreachable, format!("cannot start `{program}`: {e}")))?;
    let limit = spec.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // The wait runs beside the reads: when the helper exits, what it left
    // is killed, so a leftover holding a pipe open cannot hold up the fetch.
    let run = async {
        let (out, (), status) = tokio::join!(read_capped(stdout), discard(stderr), child.wait());
        (status, out)
    };
    let Ok((status, out)) = tokio::time::timeout(limit, run).await else {
        let _ = child.kill().await;
        return Err(err(
            unreachable,
            format!(
                "`{program}` did not finish within {}",
                humantime::format_duration(limit)
            ),
        ));
    };
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
    let Some(out) = out else {
        return Err(err(
            not_found,
            format!("`{program}` printed more than {} KiB", MAX_OUTPUT / 1024),
        ));
    };
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

/// Reads `pipe` to its end, keeping at most [`MAX_OUTPUT`] bytes in
/// zeroized memory (grown by copying, so no unzeroized copy is left in a
/// freed buffer); `None` when there was more.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Option<Zeroizing<Vec<u8>>> {
    let mut kept = Zeroizing::new(Vec::new());
    let Some(mut pipe) = pipe else {
        return Some(kept);
    };
    let mut chunk = Zeroizing::new(vec![0u8; CHUNK]);
    let mut too_much = false;
    loop {
        let read = match pipe.read(&mut chunk[..]).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if too_much || kept.len() + read > MAX_OUTPUT {
            // Read on (the helper must not block), keep nothing more.
            too_much = true;
            continue;
        }
        if kept.len() + read > kept.capacity() {
            let room = (kept.capacity() * 2).max(kept.len() + read).max(CHUNK);
            let mut bigger = Zeroizing::new(Vec::with_capacity(room.min(MAX_OUTPUT)));
            bigger.extend_from_slice(&kept);
            kept = bigger;
        }
        kept.extend_from_slice(&chunk[..read]);
    }
    (!too_much).then_some(kept)
}

/// Reads `pipe` to its end and drops what it says.
async fn discard(pipe: Option<impl AsyncRead + Unpin>) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = Zeroizing::new(vec![0u8; CHUNK]);
    while let Ok(1..) = pipe.read(&mut chunk[..]).await {}
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::plan::duration::HumanDuration;

    fn helper(script: &str, timeout: Duration) -> ExecSecret {
        ExecSecret {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            key: None,
            timeout: Some(HumanDuration(timeout)),
        }
    }

    async fn fetch_with(script: &str, timeout: Duration) -> Result<String, SecretError> {
        let dir = tempfile::tempdir().unwrap();
        fetch("s", &helper(script, timeout), dir.path())
            .await
            .map(|v| v.expose().to_string())
    }

    #[tokio::test]
    async fn output_past_the_cap_is_an_error_at_once_not_a_timeout() {
        // 2 MiB on stdout and on stderr: a helper that blocked on a full
        // pipe would run into the timeout instead.
        let started = Instant::now();
        let script = "head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2";
        let err = fetch_with(script, Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("printed more than 1024 KiB"),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // Just under the cap is a secret (well, a value).
        let script = "head -c 1048575 /dev/zero | tr '\\0' x; head -c 2097152 /dev/zero >&2";
        let value = fetch_with(script, Duration::from_secs(20)).await.unwrap();
        assert_eq!(value.len(), 1_048_575);
    }

    #[tokio::test]
    async fn a_helper_past_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("31.{}7", std::process::id());
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep {marker} & echo $! > {}; sleep 60",
            pid_file.display()
        );
        let err = fetch_with(&script, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not finish within"), "{err}");
        let left: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed and, being the helper's child, reparented and reaped
        // elsewhere: gone from /proc or a zombie, not running.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{left}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if matches!(state, None | Some("Z")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the helper's child {left} still runs"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
