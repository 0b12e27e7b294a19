//! The readiness file (default `RUN_DIR/ready`): absent until the plan is
//! ready, written atomically then, removed at the start of every run and
//! when a supervised app stops. Probes (`test -f`, Kubernetes `exec`
//! readiness probes) need nothing but the filesystem.

use std::path::{Path, PathBuf};

use crate::telemetry::{Event, EventKind, Sink};

pub struct ReadyFileSink {
    path: PathBuf,
    bootstrap_id: String,
}

impl ReadyFileSink {
    /// Removes a readiness file left by an earlier run and returns the sink.
    pub fn new(path: PathBuf) -> ReadyFileSink {
        remove(&path);
        ReadyFileSink {
            path,
            bootstrap_id: String::new(),
        }
    }
}

/// Removes the readiness file (nothing to do when it is absent).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

impl Sink for ReadyFileSink {
    fn event(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { bootstrap_id, .. } => {
                self.bootstrap_id = bootstrap_id.clone();
                remove(&self.path);
            }
            EventKind::RunFinished { outcome, .. } if outcome.is_ready() => {
                let body = serde_json::json!({
                    "bootstrap_id": self.bootstrap_id,
                    "outcome": outcome.as_str(),
                    "ready_at": crate::telemetry::timestamp(event.at),
                });
                let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
                bytes.push(b'\n');
                if let Err(err) = crate::fsutil::replace_file(&self.path, &bytes, 0o644) {
                    crate::stdio::errln!("bootplan: cannot write the readiness file: {err}");
                }
            }
            EventKind::RunFinished { .. } => remove(&self.path),
            _ => {}
        }
    }
}
