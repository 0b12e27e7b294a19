//! The download cache: verified content under the state directory, named
//! by its digest (`downloads/sha256/HEX`), so the same content is fetched
//! once whichever step or run asks for it. A blob enters only after its
//! digest matched and its bytes are durable; its modification time is
//! its last use, and the least recently used blobs go when the cache
//! outgrows `max_cache_size`. The state directory is bootplan's own
//! (checked before anything runs), so a blob is trusted by its name.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::DownloadError;
use crate::digest::Digest;

pub struct Cache {
    root: PathBuf,
    max_size: u64,
}

impl Cache {
    pub fn new(root: PathBuf, max_size: u64) -> Cache {
        Cache { root, max_size }
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.algorithm.name()).join(digest.hex())
    }

    /// The blob of `digest`, when cached (and marked as just used).
    pub fn lookup(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.blob_path(digest);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() {
            return None;
        }
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(path)
    }

    /// Moves the verified file at `from` into the cache as `digest`'s blob.
    pub fn insert(&self, from: &Path, digest: &Digest) -> Result<PathBuf, DownloadError> {
        let path = self.blob_path(digest);
        let err = |e: std::io::Error| DownloadError::Store {
            detail: format!("cannot keep the download in {}: {e}", path.display()),
        };
        if let Some(dir) = path.parent() {
            super::fetch::create_private_dir(dir).map_err(err)?;
        }
        std::fs::rename(from, &path).map_err(err)?;
        if let Some(dir) = path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(path)
    }

    /// Removes the least recently used blobs until the cache fits, never `keep`.
    pub fn evict(&self, keep: &Path) {
        let mut blobs: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for algorithm in ["sha256", "sha512"] {
            let Ok(entries) = std::fs::read_dir(self.root.join(algorithm)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_file() {
                    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    blobs.push((used, meta.len(), entry.path()));
                }
            }
        }
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        blobs.sort();
        for (_, size, path) in blobs {
            if total <= self.max_size {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn the_least_recently_used_blob_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), 10);
        let mut paths = Vec::new();
        for (i, content) in [b"aaaa", b"bbbb", b"cccc"].iter().enumerate() {
            let from = dir.path().join(format!("in{i}"));
            std::fs::write(&from, content).unwrap();
            let digest = Digest::of(Algorithm::Sha256, *content);
            let path = cache.insert(&from, &digest).unwrap();
            let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
            paths.push((digest, path));
        }
        // The oldest is used again: the second oldest goes instead.
        assert!(cache.lookup(&paths[0].0).is_some());
        cache.evict(&paths[2].1);
        assert!(paths[0].1.exists());
        assert!(!paths[1].1.exists());
        assert!(paths[2].1.exists());
    }
}
