//! Run history: the final status document of the last runs, kept in the
//! state directory (`history/`), newest last, at most `keep` of them, each
//! bounded in size. `bootplan status --history` and `bootplan analyze
//! --list`/`--run N` read it.

use std::path::{Path, PathBuf};

use super::status::StatusDoc;
use crate::fsutil::FsError;

/// Largest status document kept (a plan of thousands of steps); a larger
/// one is not recorded.
const MAX_DOC_BYTES: usize = 4 * 1024 * 1024;

const DIR: &str = "history";

/// Records `doc` as the newest run and drops the oldest beyond `keep`
/// (`keep` 0 records nothing).
pub fn record(state_dir: &Path, doc: &StatusDoc, keep: u32) -> Result<(), FsError> {
    if keep == 0 {
        return Ok(());
    }
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    if bytes.len() > MAX_DOC_BYTES {
        return Ok(());
    }
    let dir = state_dir.join(DIR);
    let name = format!("{:016}-{}.json", doc.started_unix_ms, doc.bootstrap_id);
    crate::fsutil::write_file(
        &dir.join(name),
        &bytes,
        crate::fsutil::WriteOptions {
            durable: false,
            dir_mode: 0o700,
            ..crate::fsutil::WriteOptions::new(0o600)
        },
    )?;
    let files = files(&dir);
    for old in files.iter().take(files.len().saturating_sub(keep as usize)) {
        crate::fsutil::remove_file(old)?;
    }
    Ok(())
}

/// The recorded runs' files, oldest first.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    // The names start with the zero-padded start time.
    files.sort();
    files
}

/// The recorded runs, newest first (run 1 is the latest). Unreadable
/// entries are skipped.
pub fn runs(state_dir: &Path) -> Vec<StatusDoc> {
    let mut docs: Vec<StatusDoc> = files(&state_dir.join(DIR))
        .iter()
        .filter_map(|path| super::status::read_status(path).ok())
        .collect();
    docs.reverse();
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(started: u64) -> StatusDoc {
        serde_json::from_value(serde_json::json!({
            "schema_version": 1, "bootstrap_id": format!("b-{started}"),
            "plan": {"name": "p", "path": "p.yaml", "digest": ""}, "pid": 1,
            "started_at": "", "started_unix_ms": started, "outcome": "ready", "steps": {}
        }))
        .unwrap()
    }

    #[test]
    fn the_newest_runs_are_kept_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        for started in 1..=7 {
            record(dir.path(), &doc(started), 3).unwrap();
        }
        let kept: Vec<u64> = runs(dir.path()).iter().map(|d| d.started_unix_ms).collect();
        assert_eq!(kept, [7, 6, 5]);
        record(dir.path(), &doc(8), 0).unwrap();
        assert_eq!(runs(dir.path()).len(), 3, "keep 0 recorded a run");
    }
}
