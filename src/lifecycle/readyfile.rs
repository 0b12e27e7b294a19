//! The readiness file (default `RUN_DIR/ready`): absent until the plan is
//! ready, written atomically then (by the verdict, before it is given),
//! removed at the start of every run, on a verdict that is not ready, and
//! when a supervised app stops. Probes (`test -f`, Kubernetes `exec`
//! readiness probes) need nothing but the filesystem.

use std::path::Path;

use crate::fsutil::FsError;
use crate::telemetry::Outcome;

/// Writes the readiness file for a ready run. It is never a link.
pub fn write(path: &Path, bootstrap_id: &str, outcome: Outcome) -> Result<(), FsError> {
    let body = serde_json::json!({
        "bootstrap_id": bootstrap_id,
        "outcome": outcome.as_str(),
        "ready_at": crate::telemetry::timestamp(std::time::SystemTime::now()),
    });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    crate::fsutil::replace_file(path, &bytes, 0o644)
}

/// Removes the readiness file (nothing to do when it is absent).
pub fn remove(path: &Path) {
    if let Err(err) = crate::fsutil::remove_file(path) {
        crate::stdio::errln!("bootplan: cannot remove the readiness file: {err}");
    }
}
