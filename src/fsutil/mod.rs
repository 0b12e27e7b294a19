//! Crash-safe file writes: temp file in the same directory, fsync, rename,
//! fsync the directory. A reader sees the old content or the new, never half.
//!
//! Every write goes through a directory opened by [`walk::open_dir`]: no
//! symbolic link at the file itself is followed (the rename replaces the
//! link, never its target), and links in parent directories are followed
//! only where nobody but root (or the file's owner) could have planted them.
//! A temp file a killed writer left beside its target is removed by the
//! next write of that target.

pub mod tree;
pub mod walk;
mod writer;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;

pub use walk::Trust;
pub use writer::BackgroundWriter;

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// An I/O failure, with the path it happened on.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A symbolic link that someone other than root could have planted.
    #[error("refusing to follow the symbolic link {link}: {reason}")]
    UnsafeLink { link: PathBuf, reason: String },
    /// The owner could not be set (that needs root).
    #[error("cannot set owner of {path}: {source}")]
    Owner {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// The underlying I/O error kind, when there is one.
    pub fn kind(&self) -> Option<io::ErrorKind> {
        match self {
            FsError::Io { source, .. } | FsError::Owner { source, .. } => Some(source.kind()),
            FsError::UnsafeLink { .. } => None,
        }
    }
}

fn ctx<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn errno_ctx<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> FsError + 'a {
    move |errno| FsError::Io {
        action,
        path: path.to_path_buf(),
        source: errno.into(),
    }
}

/// How to write a file.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Permission bits, exact (the umask does not narrow them).
    pub mode: u32,
    /// (uid, gid) set on the temp file before any content is written.
    pub owner: Option<(u32, u32)>,
    /// fsync the file and its directory (a journal); without it the file is
    /// still whole, just not durable (status snapshots on a tmpfs).
    pub durable: bool,
    /// Mode of parent directories that must be created.
    pub dir_mode: u32,
}

impl WriteOptions {
    pub fn new(mode: u32) -> WriteOptions {
        WriteOptions {
            mode,
            owner: None,
            durable: true,
            dir_mode: 0o755,
        }
    }
}

/// Writes `contents` to `path` atomically and durably with permission bits
/// `mode`. The temp file is created with `mode` already set, so the content
/// is never readable with wider permissions, even for an instant.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    write_file(path, contents, WriteOptions::new(mode))
}

/// Like [`write_atomic`] but without the fsyncs.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    write_file(
        path,
        contents,
        WriteOptions {
            durable: false,
            ..WriteOptions::new(mode)
        },
    )
}

/// Writes `contents` to `path` atomically: a temp file beside it with the
/// final mode and owner, the content, then a rename over `path`.
pub fn write_file(path: &Path, contents: &[u8], options: WriteOptions) -> Result<(), FsError> {
    let mut file = AtomicFile::create(path, options)?;
    file.write_all(contents)?;
    file.commit()
}

/// A file being written in pieces and put in place whole: a temp file
/// beside `path` (created with the final mode and owner, in a directory
/// opened by [`walk::open_dir`]), renamed over `path` by [`AtomicFile::commit`].
/// Dropped without a commit, the temp file is removed and `path` is untouched.
pub struct AtomicFile {
    dir: OwnedFd,
    dir_path: PathBuf,
    name: std::ffi::OsString,
    tmp_name: std::ffi::OsString,
    tmp_path: PathBuf,
    path: PathBuf,
    file: File,
    durable: bool,
}

impl AtomicFile {
    /// Creates the temp file (and missing parent directories).
    pub fn create(path: &Path, options: WriteOptions) -> Result<AtomicFile, FsError> {
        let name = file_name(path)?.to_os_string();
        let dir_path = parent_dir(path).to_path_buf();
        let trust = Trust {
            owner: options.owner.map(|(uid, _)| uid),
        };
        let dir = walk::open_dir(&dir_path, Some(options.dir_mode), trust)?;
        remove_stale_temps(&dir, &dir_path, &name);
        let tmp_name = temp_name(&name);
        let tmp_path = dir_path.join(&tmp_name);
        let file = match create_temp(&dir, &tmp_name, &tmp_path, options) {
            Ok(file) => file,
            Err(err) => {
                let _ = nix::unistd::unlinkat(
                    &dir,
                    tmp_name.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                return Err(err);
            }
        };
        Ok(AtomicFile {
            dir,
            dir_path,
            name,
            tmp_name,
            tmp_path,
            path: path.to_path_buf(),
            file,
            durable: options.durable,
        })
    }

    /// The temp file, for writing (and reading back).
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), FsError> {
        self.file
            .write_all(bytes)
            .map_err(ctx("cannot write", &self.tmp_path))
    }

    /// Makes the content durable (when asked for), renames the temp file
    /// over the target and makes the rename durable.
    pub fn commit(mut self) -> Result<(), FsError> {
        if self.durable {
            self.file
                .sync_all()
                .map_err(ctx("cannot fsync", &self.tmp_path))?;
        }
        renameat(
            &self.dir,
            self.tmp_name.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(errno_ctx("cannot rename into", &self.path))?;
        // Renamed: nothing is left to remove.
        self.tmp_name.clear();
        if self.durable {
            sync_dir_fd(&self.dir, &self.dir_path)?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp_name.is_empty() {
            let _ = nix::unistd::unlinkat(
                &self.dir,
                self.tmp_name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Creates the temp file with the final mode and owner, before any content.
fn create_temp(
    dir: &OwnedFd,
    tmp_name: &OsStr,
    tmp_path: &Path,
    options: WriteOptions,
) -> Result<File, FsError> {
    let flags =
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        dir,
        tmp_name,
        flags,
        Mode::from_bits_truncate(options.mode & 0o777),
    )
    .map_err(errno_ctx("cannot create", tmp_path))?;
    let file = File::from(fd);
    if let Some((uid, gid)) = options.owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|source| {
            FsError::Owner {
                path: tmp_path.to_path_buf(),
                source,
            }
        })?;
    }
    // The umask may have narrowed the mode at creation, and chown clears
    // set-id bits: set the exact mode last, before any content.
    file.set_permissions(std::fs::Permissions::from_mode(options.mode))
        .map_err(ctx("cannot set mode of", tmp_path))?;
    Ok(file)
}

fn file_name(path: &Path) -> Result<&OsStr, FsError> {
    path.file_name().ok_or_else(|| FsError::Io {
        action: "not a file path:",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temp name beside the target, unique per process and call, hidden by
/// a dot: `.NAME.PID.RANDOM.tmp`.
fn temp_name(name: &OsStr) -> std::ffi::OsString {
    let unique = fastrand::u64(..);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{unique:016x}.tmp", std::process::id()));
    tmp
}

/// Removes temp files of `name` left by writers that are gone (killed
/// mid-write). A writer that still runs keeps its file.
fn remove_stale_temps(dir: &OwnedFd, dir_path: &Path, name: &OsStr) {
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(name.as_bytes());
    prefix.push(b'.');
    let Ok(entries) = std::fs::read_dir(dir_path) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = stale_temp_pid(file_name.as_bytes(), &prefix) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = nix::unistd::unlinkat(
                dir,
                file_name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// The writer's pid in a temp name `PREFIX PID . 16 hex . tmp`.
fn stale_temp_pid(file_name: &[u8], prefix: &[u8]) -> Option<u32> {
    let rest = file_name.strip_prefix(prefix)?.strip_suffix(b".tmp")?;
    let text = std::str::from_utf8(rest).ok()?;
    let (pid, random) = text.split_once('.')?;
    (random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| pid.parse().ok())
        .flatten()
}

fn sync_dir_fd(dir: &OwnedFd, dir_path: &Path) -> Result<(), FsError> {
    // The walk's descriptors are O_PATH, which fsync refuses.
    let readable = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_ctx("cannot open directory", dir_path))?;
    File::from(readable)
        .sync_all()
        .map_err(ctx("cannot fsync directory", dir_path))
}

/// Opens `path` for reading without following a link at it (its parents
/// as in [`walk::open_dir`]). `Ok(None)` when it does not exist.
pub fn open_nofollow(path: &Path) -> Result<Option<File>, FsError> {
    let name = file_name(path)?;
    let dir = walk::open_dir(parent_dir(path), None, Trust::ROOT_ONLY)?;
    match openat(
        &dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(nix::errno::Errno::ELOOP) => Err(FsError::UnsafeLink {
            link: path.to_path_buf(),
            reason: "bootplan's own files are never links".into(),
        }),
        Err(e) => Err(errno_ctx("cannot open", path)(e)),
    }
}

/// Reads `path` whole, refusing a link at it; `Ok(None)` when absent.
pub fn read_nofollow(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    let Some(mut file) = open_nofollow(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(ctx("cannot read", path))?;
    Ok(Some(bytes))
}

/// Removes `path` (not a link's target), if it exists.
pub fn remove_file(path: &Path) -> Result<(), FsError> {
    let name = file_name(path)?;
    let dir = match walk::open_dir(parent_dir(path), None, Trust::ROOT_ONLY) {
        Ok(dir) => dir,
        Err(err) if err.kind() == Some(io::ErrorKind::NotFound) => return Ok(()),
        Err(err) => return Err(err),
    };
    match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(errno_ctx("cannot remove", path)(e)),
    }
}

/// A directory bootplan keeps its state in (journal, lock, status, ready
/// file, secret files) that someone else could change.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{} is not bootplan's own: owner uid {owner}, mode {mode:04o} ({problem}); fix: {fix}",
    path.display()
)]
pub struct UntrustedDir {
    pub path: PathBuf,
    pub owner: u32,
    pub mode: u32,
    pub problem: &'static str,
    pub fix: String,
}

/// Why a state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error(transparent)]
    Untrusted(#[from] UntrustedDir),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Makes sure `dir` exists and is bootplan's own: owned by the effective
/// user and not writable by group or others (with `private`, not readable
/// either). A missing directory is created with `create_mode`.
pub fn ensure_own_dir(dir: &Path, create_mode: u32, private: bool) -> Result<(), DirError> {
    let fd = walk::open_dir(dir, Some(create_mode), Trust::ROOT_ONLY)?;
    let stat = nix::sys::stat::fstat(fd.as_fd()).map_err(errno_ctx("cannot inspect", dir))?;
    let euid = nix::unistd::geteuid().as_raw();
    let mode = stat.st_mode & 0o7777;
    let problem = if stat.st_uid != euid {
        Some("owned by another user")
    } else if mode & 0o022 != 0 {
        Some("writable by group or others")
    } else if private && mode & 0o077 != 0 {
        Some("readable by group or others")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(UntrustedDir {
            path: dir.to_path_buf(),
            owner: stat.st_uid,
            mode,
            problem,
            fix: format!(
                "chown {euid} {dir} && chmod {} {dir}",
                if private { "0700" } else { "go-w" },
                dir = dir.display()
            ),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_exact_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.txt");
        write_atomic(&path, b"hello", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        write_atomic(&path, b"again", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "temp files left behind");
    }

    #[test]
    fn a_link_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"original").unwrap();
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        write_atomic(&target, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"original");
        assert!(!std::fs::symlink_metadata(&target).unwrap().is_symlink());
        assert!(matches!(
            read_nofollow(&outside).unwrap().as_deref(),
            Some(b"original")
        ));
        std::os::unix::fs::symlink(&outside, dir.path().join("link")).unwrap();
        let err = read_nofollow(&dir.path().join("link")).unwrap_err();
        assert!(matches!(err, FsError::UnsafeLink { .. }), "{err}");
    }

    #[test]
    fn temp_files_of_dead_writers_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that cannot be running: above the kernel's pid_max limit.
        let stale = dir.path().join(".state.json.4194999.00112233445566ff.tmp");
        let live = dir.path().join(format!(
            ".state.json.{}.00112233445566ff.tmp",
            std::process::id()
        ));
        let other = dir.path().join(".other.json.4194999.00112233445566ff.tmp");
        for path in [&stale, &live, &other] {
            std::fs::write(path, b"half").unwrap();
        }
        write_atomic(&dir.path().join("state.json"), b"{}", 0o600).unwrap();
        assert!(!stale.exists(), "a dead writer's temp file stays");
        assert!(live.exists(), "a live writer's temp file was removed");
        assert!(other.exists(), "another target's temp file was removed");
    }

    #[test]
    fn own_directories_are_created_private_and_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_own_dir(&state, 0o700, true).unwrap();
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_own_dir(&state, 0o700, true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("writable by group or others"), "{text}");
        assert!(text.contains("mode 0777"), "{text}");
        assert!(text.contains("chmod 0700"), "{text}");
    }
}
