//! The directories a run keeps its state in, and claiming them: each must
//! be bootplan's own (or is created so), and the state directory's lock is
//! held before anything is written.

use std::path::{Path, PathBuf};

use nix::fcntl::Flock;

use crate::engine::journal;
use crate::error::ErrorCode;
use crate::fsutil::{DirError, FsError, ensure_own_dir};
use crate::plan::Plan;

const DEFAULT_STATE_DIR: &str = "/var/lib/bootplan";
const DEFAULT_RUN_DIR: &str = "/run/bootplan";
pub const STATUS_FILE: &str = "status.json";

/// Where a run's journal (state) and status, readiness file and sockets
/// (run) live.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub state: PathBuf,
    pub run: PathBuf,
}

impl RunDirs {
    /// The command line's directories, else the plan's, else the defaults.
    pub fn resolve(state: Option<&Path>, run: Option<&Path>, plan: Option<&Plan>) -> RunDirs {
        RunDirs {
            state: state
                .map(Path::to_path_buf)
                .or_else(|| plan.and_then(|p| p.state_dir.clone()))
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            run: run
                .map(Path::to_path_buf)
                .or_else(|| plan.and_then(|p| p.run_dir.clone()))
                .unwrap_or_else(|| DEFAULT_RUN_DIR.into()),
        }
    }

    pub fn status_file(&self) -> PathBuf {
        self.run.join(STATUS_FILE)
    }
}

/// Why a run was refused before it started. Nothing was written.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn from_dir(err: DirError) -> Refusal {
        let code = match &err {
            DirError::Untrusted(_) | DirError::Fs(FsError::UnsafeLink { .. }) => {
                ErrorCode::StateUntrusted
            }
            DirError::Fs(_) => ErrorCode::StateUnwritable,
        };
        Refusal {
            code,
            message: err.to_string(),
        }
    }

    pub fn from_journal(err: &journal::JournalError) -> Refusal {
        let code = match err {
            journal::JournalError::Fs(FsError::UnsafeLink { .. }) => ErrorCode::StateUntrusted,
            _ => ErrorCode::StateUnwritable,
        };
        Refusal {
            code,
            message: err.to_string(),
        }
    }
}

/// Makes sure the state, run and (when given) secrets directories are
/// bootplan's own, creating missing ones (0700, 0755, 0700), and takes the
/// state directory's lock.
pub fn claim(dirs: &RunDirs, secrets_dir: Option<&Path>) -> Result<Flock<std::fs::File>, Refusal> {
    ensure_own_dir(&dirs.state, 0o700, false).map_err(Refusal::from_dir)?;
    ensure_own_dir(&dirs.run, 0o755, false).map_err(Refusal::from_dir)?;
    if let Some(dir) = secrets_dir {
        ensure_own_dir(dir, 0o700, true).map_err(Refusal::from_dir)?;
    }
    journal::lock_state_dir(&dirs.state).map_err(|err| Refusal::from_journal(&err))
}

/// The secrets directory a run writes `to_file` secrets to, if it has any.
pub fn secrets_dir(plan: &Plan, run_dir: &Path) -> Option<PathBuf> {
    plan.secrets
        .values()
        .any(|s| s.to_file.is_some())
        .then(|| crate::secrets::files::dir_for(plan, run_dir))
}
