//! Secret files: a secret with `to_file` is also written, atomically and
//! with mode 0600 unless the plan says otherwise, under the secrets
//! directory (`backends.files.dir`, default the run directory's `secrets/`,
//! i.e. `/run/bootplan/secrets` on a tmpfs). These are the only places
//! bootplan ever puts a secret on disk.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{SecretError, SecretValue};
use crate::plan::secret_source::{SecretFile, SecretSource};

const DEFAULT_MODE: u32 = 0o600;

/// Removes those of the secret files at `paths` that exist; returns how
/// many it removed. Stops at the first that cannot be removed.
pub fn remove(paths: &[PathBuf]) -> Result<usize, crate::fsutil::FsError> {
    let mut removed = 0;
    for path in paths {
        if std::fs::symlink_metadata(path).is_ok() {
            crate::fsutil::remove_file(path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Where the secret file of `spec` goes.
pub fn path_for(dir: &Path, spec: &SecretFile) -> PathBuf {
    dir.join(&spec.path)
}

/// Writes `value` to its file: temp file created with the final mode, fsync, rename.
pub fn write(
    name: &str,
    dir: &Path,
    spec: &SecretFile,
    value: &SecretValue,
) -> Result<PathBuf, SecretError> {
    write_bytes(name, dir, spec, value.expose().as_bytes())
}

/// Writes `bytes` (a secret, or a certificate that goes with one) like [`write`].
pub fn write_bytes(
    name: &str,
    dir: &Path,
    spec: &SecretFile,
    bytes: &[u8],
) -> Result<PathBuf, SecretError> {
    let path = path_for(dir, spec);
    let mode = spec.mode.map_or(DEFAULT_MODE, |m| m.0);
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(|e| failed(name, parent, e))?;
        // Only bootplan's user may list the secrets directory.
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
    }
    crate::fsutil::write_atomic(&path, bytes, mode).map_err(|e| SecretError::FileWrite {
        name: name.into(),
        path: path.clone(),
        detail: e.to_string(),
    })?;
    Ok(path)
}

fn failed(name: &str, path: &Path, err: std::io::Error) -> SecretError {
    SecretError::FileWrite {
        name: name.into(),
        path: path.to_path_buf(),
        detail: format!("cannot create directory {}: {err}", path.display()),
    }
}

/// Removes the secret files runs wrote: `plan`'s `to_file` secrets, or,
/// without a plan, everything in the default secrets directory
/// (`<run_dir>/secrets`). Returns how many files were removed.
pub fn remove_written(
    plan: Option<&crate::plan::Plan>,
    run_dir: &Path,
) -> Result<usize, crate::fsutil::FsError> {
    let paths: Vec<PathBuf> = match plan {
        Some(plan) => {
            let dir = dir_for(plan, run_dir);
            plan.secrets
                .values()
                .flat_map(SecretSource::files)
                .map(|spec| path_for(&dir, &spec))
                .collect()
        }
        None => match std::fs::read_dir(run_dir.join("secrets")) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        },
    };
    let mut removed = 0;
    for path in paths {
        if std::fs::symlink_metadata(&path).is_ok() {
            crate::fsutil::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The secrets directory of a run: `backends.files.dir` (relative to the
/// plan file), else `<run_dir>/secrets`.
pub fn dir_for(plan: &crate::plan::Plan, run_dir: &Path) -> PathBuf {
    match plan.backends.files.as_ref().and_then(|f| f.dir.as_ref()) {
        Some(dir) => plan.dir().join(dir),
        None => run_dir.join("secrets"),
    }
}

/// Warns at run start, once per directory, when secret files would land on
/// a disk-backed file system.
pub fn warn_if_not_tmpfs(store: &super::SecretStore, reporter: &crate::telemetry::Reporter) {
    let mut dirs: Vec<PathBuf> = store
        .file_paths()
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs.iter().filter(|d| !on_tmpfs(d)) {
        reporter.notice(
            crate::telemetry::Level::Warn,
            format!(
                "secret files will be written to {}, which is not on a tmpfs: they may reach a disk; \
                 use a directory under /run (backends.files.dir)",
                dir.display()
            ),
        );
    }
}

/// Whether `dir` (or its nearest existing ancestor) is on a memory-backed
/// file system (tmpfs or ramfs), where a secret never reaches a disk.
pub fn on_tmpfs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let mut probe = Some(dir);
    while let Some(p) = probe {
        if let Ok(stat) = nix::sys::statfs::statfs(p) {
            #[allow(clippy::unnecessary_cast)] // c_long: i64 here, i32 on 32-bit targets
            let kind = stat.filesystem_type().0 as i64;
            return kind == TMPFS_MAGIC || kind == RAMFS_MAGIC;
        }
        probe = p.parent();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SecretFile {
            path: "sub/db".into(),
            mode: None,
        };
        let path = write(
            "db",
            dir.path(),
            &spec,
            &SecretValue::new("hunter22".into()),
        )
        .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(path).unwrap(), "hunter22");
    }

    /// The file system type of the mount `path` is on, from mountinfo.
    fn mounted_type(path: &Path) -> String {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        mountinfo
            .lines()
            .filter_map(|line| {
                let (mount, fs) = line.split_once(" - ")?;
                let point = mount.split(' ').nth(4)?;
                let kind = fs.split(' ').next()?.to_string();
                path.starts_with(point).then_some((point.len(), kind))
            })
            .max()
            .map(|(_, kind)| kind)
            .unwrap()
    }

    #[test]
    fn tmpfs_is_recognised_as_the_mount_table_says() {
        let dir = tempfile::tempdir().unwrap();
        for path in [dir.path(), Path::new("/proc/self"), Path::new("/dev/shm")] {
            let expected = matches!(mounted_type(path).as_str(), "tmpfs" | "ramfs");
            assert_eq!(
                on_tmpfs(&path.join("missing/child")),
                expected,
                "{}",
                path.display()
            );
        }
    }
}
