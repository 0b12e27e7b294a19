//! Opening directories without being redirected by someone else's symlink.
//!
//! bootplan writes as root into paths that may pass through directories
//! other users own (a home directory, `/tmp`). Each component is opened
//! relative to the one before it with `O_NOFOLLOW`, so what is checked is
//! what is used: no name is looked up twice. A symbolic link is followed
//! only when the directory holding it is writable by nobody but root (or
//! the file's future owner, or bootplan's own user): a link in such a
//! directory was put there by someone who could write the target anyway.
//! Any other link is refused with the path and the reason.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};

use super::FsError;

/// How many links one walk may follow (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// Who may have written a directory for its links to be followed.
#[derive(Debug, Clone, Copy)]
pub struct Trust {
    /// The uid that will own what is written (also trusted), if not root.
    pub owner: Option<u32>,
}

impl Trust {
    pub const ROOT_ONLY: Trust = Trust { owner: None };

    /// Whether `stat` describes a directory that only trusted users can change.
    fn trusts(&self, stat: &nix::sys::stat::FileStat) -> bool {
        let euid = nix::unistd::geteuid().as_raw();
        let owner_ok = stat.st_uid == 0 || stat.st_uid == euid || Some(stat.st_uid) == self.owner;
        let others_write = stat.st_mode & 0o002 != 0;
        // A group-writable directory is someone else's unless its group is root's.
        let group_write = stat.st_mode & 0o020 != 0 && stat.st_gid != 0;
        owner_ok && !others_write && !group_write
    }
}

/// Opens the directory `dir` (relative paths from the working directory)
/// for use with the `*at` calls, creating missing components with `mode`
/// when `create` is set. Links are followed only inside trusted
/// directories (see the module docs).
pub fn open_dir(dir: &Path, create: Option<u32>, trust: Trust) -> Result<OwnedFd, FsError> {
    let mut walk = Walk {
        shown: PathBuf::new(),
        links: 0,
        trust,
        create,
        original: dir,
    };
    let (start, rest) = start_of(dir);
    let mut current = open_here(start).map_err(|e| walk.io("cannot open directory", e))?;
    walk.shown = PathBuf::from(start);
    let mut queue: VecDeque<OsString> = components(rest);
    while let Some(name) = queue.pop_front() {
        current = walk.step(current, &name, &mut queue)?;
    }
    Ok(current)
}

struct Walk<'a> {
    /// The path walked so far, links resolved, for messages.
    shown: PathBuf,
    links: usize,
    trust: Trust,
    create: Option<u32>,
    original: &'a Path,
}

impl Walk<'_> {
    fn io(&self, action: &'static str, errno: Errno) -> FsError {
        FsError::Io {
            action,
            path: self.original.to_path_buf(),
            source: std::io::Error::from(errno),
        }
    }

    /// Moves from `dir` into its entry `name`; a link's target components
    /// are put in front of `queue`.
    fn step(
        &mut self,
        dir: OwnedFd,
        name: &OsStr,
        queue: &mut VecDeque<OsString>,
    ) -> Result<OwnedFd, FsError> {
        let next = self.shown.join(name);
        match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if is_kind(&stat, SFlag::S_IFLNK) => {
                self.follow(&dir, name, queue)?;
                if queue
                    .front()
                    .is_some_and(|c| c.as_bytes().starts_with(b"/"))
                {
                    queue.pop_front();
                    self.shown = PathBuf::from("/");
                    return open_here("/").map_err(|e| self.io("cannot open directory", e));
                }
                Ok(dir)
            }
            Ok(stat) if is_kind(&stat, SFlag::S_IFDIR) => {
                let opened =
                    open_child(&dir, name).map_err(|e| self.io("cannot open directory", e))?;
                self.shown = next;
                Ok(opened)
            }
            Ok(_) => Err(FsError::Io {
                action: "not a directory:",
                path: next,
                source: std::io::Error::from(Errno::ENOTDIR),
            }),
            Err(Errno::ENOENT) if self.create.is_some() => {
                let mode = Mode::from_bits_truncate(self.create.unwrap_or(0o755));
                match mkdirat(&dir, name, mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(FsError::Io {
                            action: "cannot create directory",
                            path: next,
                            source: e.into(),
                        });
                    }
                }
                // Looked at again: whatever is there now is what gets checked.
                self.step(dir, name, queue)
            }
            Err(e) => Err(FsError::Io {
                action: "cannot open directory",
                path: next,
                source: e.into(),
            }),
        }
    }

    /// Queues the target of the link `name` in `dir`, when `dir` is trusted.
    fn follow(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        queue: &mut VecDeque<OsString>,
    ) -> Result<(), FsError> {
        let link = self.shown.join(name);
        let stat = fstat(dir).map_err(|e| self.io("cannot inspect directory", e))?;
        if !self.trust.trusts(&stat) {
            return Err(FsError::UnsafeLink {
                link,
                reason: format!(
                    "its directory {} (owner uid {}, mode {:04o}) can be written by users other than root, so the link may point anywhere",
                    self.shown.display(),
                    stat.st_uid,
                    stat.st_mode & 0o7777
                ),
            });
        }
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(FsError::Io {
                action: "too many symbolic links under",
                path: self.original.to_path_buf(),
                source: Errno::ELOOP.into(),
            });
        }
        let target = readlinkat(dir, name).map_err(|e| FsError::Io {
            action: "cannot read link",
            path: link.clone(),
            source: e.into(),
        })?;
        let target = Path::new(&target);
        let mut front = components(target);
        if target.is_absolute() {
            front.push_front(OsString::from("/"));
        }
        for component in front.into_iter().rev() {
            queue.push_front(component);
        }
        Ok(())
    }
}

fn is_kind(stat: &nix::sys::stat::FileStat, kind: SFlag) -> bool {
    stat.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// Where a walk starts (`/` or `.`) and the path after it.
fn start_of(path: &Path) -> (&'static str, &Path) {
    match path.strip_prefix("/") {
        Ok(rest) => ("/", rest),
        Err(_) => (".", path),
    }
}

/// The normal components and `..` of `path`, in order (`.` dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

const DIR_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn open_here(start: &str) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(start, DIR_FLAGS, Mode::empty())
}

fn open_child(dir: &impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    openat(dir, name, DIR_FLAGS, Mode::empty())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/c");
        open_dir(&target, Some(0o750), Trust::ROOT_ONLY).unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750 & !umask());
    }

    fn umask() -> u32 {
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(old);
        old.bits()
    }

    #[test]
    fn follows_links_in_private_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        chmod(&private, 0o755);
        std::os::unix::fs::symlink(&real, private.join("link")).unwrap();
        open_dir(&private.join("link"), None, Trust::ROOT_ONLY).unwrap();

        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o777);
        std::os::unix::fs::symlink(&real, shared.join("link")).unwrap();
        let err = open_dir(&shared.join("link/sub"), Some(0o755), Trust::ROOT_ONLY).unwrap_err();
        assert!(matches!(err, FsError::UnsafeLink { .. }), "{err}");
        assert!(err.to_string().contains("shared/link"), "{err}");
        assert!(!real.join("sub").exists(), "created through the link");
    }

    #[test]
    fn a_file_in_the_way_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let err = open_dir(&dir.path().join("f/x"), Some(0o755), Trust::ROOT_ONLY).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
