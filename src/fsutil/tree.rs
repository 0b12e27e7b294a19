//! A tree of files built in a staging directory beside its target, then
//! moved into place.
//!
//! The staging directory (`.NAME.PID.RANDOM.tmp`, mode 0700) is made in
//! the target's parent, opened through [`super::walk::open_dir`], and held
//! by descriptor: every entry is created relative to a descriptor of its
//! own parent with `O_NOFOLLOW`/`*at` calls, each directory component
//! opened without following links. A link that an archive (or anyone)
//! put in the tree is therefore never followed by a later write: writing
//! `a/b` where `a` is a link fails instead of landing where `a` points.
//! Dropped without [`Staging::commit`], the staging tree is removed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};

use super::{FsError, Trust, errno_ctx};

/// How deep a tree [`remove_tree`] walks (an archive is bounded far below).
const MAX_DEPTH: usize = 4096;

const DIR_PATH: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// What kind of entry a name holds, without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Dir,
    File,
    Link,
    Other,
}

/// The kind of `name` in `dir`.
pub fn kind_at(dir: &impl AsFd, name: &OsStr) -> Result<Kind, Errno> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(match stat.st_mode & SFlag::S_IFMT.bits() {
            m if m == SFlag::S_IFDIR.bits() => Kind::Dir,
            m if m == SFlag::S_IFREG.bits() => Kind::File,
            m if m == SFlag::S_IFLNK.bits() => Kind::Link,
            _ => Kind::Other,
        }),
        Err(Errno::ENOENT) => Ok(Kind::Missing),
        Err(e) => Err(e),
    }
}

/// A staging directory beside `target`, and how to move it into place.
pub struct Staging {
    parent: OwnedFd,
    parent_path: PathBuf,
    target_name: OsString,
    tmp_name: OsString,
    tmp_path: PathBuf,
    root: OwnedFd,
    /// Owner given to every entry (and the staging root when it becomes the target).
    owner: Option<(u32, u32)>,
    /// The staging directory became the target: nothing to remove.
    placed: bool,
}

impl Staging {
    /// Creates the staging directory in `target`'s parent (created with
    /// `dir_mode` when missing), after removing staging directories that a
    /// killed bootplan left there for the same target.
    pub fn create(
        target: &Path,
        dir_mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<Staging, FsError> {
        let target_name = super::file_name(target)?.to_os_string();
        let parent_path = super::parent_dir(target).to_path_buf();
        let trust = Trust {
            owner: owner.map(|(uid, _)| uid),
        };
        let parent = super::walk::open_dir(&parent_path, Some(dir_mode), trust)?;
        remove_stale_staging(&parent, &parent_path, &target_name);
        let tmp_name = super::temp_name(&target_name);
        let tmp_path = parent_path.join(&tmp_name);
        mkdirat(
            &parent,
            tmp_name.as_os_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(errno_ctx("cannot create directory", &tmp_path))?;
        let root = match openat(&parent, tmp_name.as_os_str(), DIR_PATH, Mode::empty()) {
            Ok(root) => root,
            Err(e) => {
                let _ = unlinkat(&parent, tmp_name.as_os_str(), UnlinkatFlags::RemoveDir);
                return Err(errno_ctx("cannot open directory", &tmp_path)(e));
            }
        };
        Ok(Staging {
            parent,
            parent_path,
            target_name,
            tmp_name,
            tmp_path,
            root,
            owner,
            placed: false,
        })
    }

    /// The staging directory's path.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.tmp_path
    }

    /// Opens the directory at `components` below the staging root, creating
    /// missing ones with `mode`. A component that is a link (or not a
    /// directory) is refused, never followed. Each component must be a
    /// plain name (no `/`, `.` or `..`).
    pub fn dir(&self, components: &[OsString], mode: u32) -> Result<OwnedFd, FsError> {
        let mut current = self.reopen_root()?;
        let mut shown = self.tmp_path.clone();
        for name in components {
            check_name(name, &shown)?;
            shown.push(name);
            match kind_at(&current, name).map_err(errno_ctx("cannot inspect", &shown))? {
                Kind::Dir => {}
                Kind::Missing => {
                    mkdirat(&current, name.as_os_str(), Mode::from_bits_truncate(0o700))
                        .map_err(errno_ctx("cannot create directory", &shown))?;
                    self.finish_dir(&current, name, &shown, mode)?;
                }
                Kind::Link => {
                    return Err(FsError::UnsafeLink {
                        link: shown,
                        reason: "an entry may not be written through a symbolic link".into(),
                    });
                }
                Kind::File | Kind::Other => {
                    return Err(FsError::Io {
                        action: "not a directory:",
                        path: shown,
                        source: Errno::ENOTDIR.into(),
                    });
                }
            }
            current = openat(&current, name.as_os_str(), DIR_PATH, Mode::empty())
                .map_err(errno_ctx("cannot open directory", &shown))?;
        }
        Ok(current)
    }

    /// Sets a new directory's exact mode (the umask narrowed it) and owner.
    fn finish_dir(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        shown: &Path,
        mode: u32,
    ) -> Result<(), FsError> {
        self.chown_at(parent, name, shown)?;
        let fd = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_ctx("cannot open directory", shown))?;
        File::from(fd)
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(super::ctx("cannot set mode of", shown))
    }

    fn chown_at(&self, dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), FsError> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| FsError::Owner {
            path: shown.to_path_buf(),
            source: e.into(),
        })
    }

    /// Creates the regular file `name` in `dir` (opened by [`Staging::dir`])
    /// with `mode` and the staging owner. What an earlier entry put there
    /// (not a directory) is replaced.
    pub fn create_file(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        mode: u32,
        shown: &Path,
    ) -> Result<File, FsError> {
        check_name(name, shown)?;
        self.make_room(dir, name, shown)?;
        let fd = openat(
            dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno_ctx("cannot create", shown))?;
        let file = File::from(fd);
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|source| {
                FsError::Owner {
                    path: shown.to_path_buf(),
                    source,
                }
            })?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(super::ctx("cannot set mode of", shown))?;
        Ok(file)
    }

    /// Creates the symbolic link `name` in `dir` pointing at `target`. The
    /// caller decides whether the target may be written; this never
    /// follows it.
    pub fn symlink(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        target: &Path,
        shown: &Path,
    ) -> Result<(), FsError> {
        check_name(name, shown)?;
        self.make_room(dir, name, shown)?;
        nix::unistd::symlinkat(target, dir, name)
            .map_err(errno_ctx("cannot create link", shown))?;
        self.chown_at(dir, name, shown)
    }

    /// Makes `name` in `dir` another name of the regular file `from_name`
    /// in `from_dir` (both inside the staging tree).
    pub fn hard_link(
        &self,
        from_dir: &OwnedFd,
        from_name: &OsStr,
        dir: &OwnedFd,
        name: &OsStr,
        shown: &Path,
    ) -> Result<(), FsError> {
        check_name(name, shown)?;
        match kind_at(from_dir, from_name).map_err(errno_ctx("cannot inspect", shown))? {
            Kind::File => {}
            _ => {
                return Err(FsError::Io {
                    action: "a hard link must name a regular file extracted before it:",
                    path: shown.to_path_buf(),
                    source: Errno::EINVAL.into(),
                });
            }
        }
        self.make_room(dir, name, shown)?;
        nix::unistd::linkat(from_dir, from_name, dir, name, AtFlags::empty())
            .map_err(errno_ctx("cannot create hard link", shown))
    }

    /// Removes a file or link at `name`, so an entry that comes later in an
    /// archive replaces one that came before. A directory stays and is an error.
    fn make_room(&self, dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), FsError> {
        match kind_at(dir, name).map_err(errno_ctx("cannot inspect", shown))? {
            Kind::Missing => Ok(()),
            Kind::Dir => Err(FsError::Io {
                action: "a directory is in the way of",
                path: shown.to_path_buf(),
                source: Errno::EISDIR.into(),
            }),
            Kind::File | Kind::Link | Kind::Other => {
                unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(errno_ctx("cannot replace", shown))
            }
        }
    }

    /// Makes everything written in the staging tree durable (one `syncfs`
    /// instead of an fsync per file).
    pub fn sync(&self) -> Result<(), FsError> {
        let fd = openat(
            &self.root,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_ctx("cannot open directory", &self.tmp_path))?;
        nix::unistd::syncfs(&fd)
            .map_err(errno_ctx("cannot sync the file system of", &self.tmp_path))
    }

    /// Moves the staged tree into place. When the target does not exist,
    /// the staging directory becomes it (one rename; `dir_mode` is its
    /// mode). When it is a directory, the trees are merged: a staged
    /// directory whose name is a directory in the target is merged into
    /// it, every other entry is moved in with one rename that replaces
    /// (atomically exchanges, then removes) whatever had its name; other
    /// entries of the target stay. Each directory written is made durable.
    pub fn commit(mut self, dir_mode: u32) -> Result<(), FsError> {
        let target_path = self.parent_path.join(&self.target_name);
        match kind_at(&self.parent, &self.target_name)
            .map_err(errno_ctx("cannot inspect", &target_path))?
        {
            Kind::Missing => {
                self.finish_dir(&self.parent, &self.tmp_name, &self.tmp_path, dir_mode)?;
                renameat2(
                    &self.parent,
                    self.tmp_name.as_os_str(),
                    &self.parent,
                    self.target_name.as_os_str(),
                    RenameFlags::RENAME_NOREPLACE,
                )
                .map_err(errno_ctx("cannot rename into", &target_path))?;
                self.placed = true;
                super::sync_dir_fd(&self.parent, &self.parent_path)
            }
            Kind::Dir => {
                let target = openat(
                    &self.parent,
                    self.target_name.as_os_str(),
                    DIR_PATH,
                    Mode::empty(),
                )
                .map_err(errno_ctx("cannot open directory", &target_path))?;
                let root = self.reopen_root()?;
                merge_into(&root, &self.tmp_path, &target, &target_path, 0)
            }
            Kind::File | Kind::Link | Kind::Other => Err(FsError::Io {
                action: "not a directory:",
                path: target_path,
                source: Errno::ENOTDIR.into(),
            }),
        }
    }

    fn reopen_root(&self) -> Result<OwnedFd, FsError> {
        self.root
            .try_clone()
            .map_err(super::ctx("cannot open directory", &self.tmp_path))
    }
}

/// Moves every entry of `from` into `into` (see [`Staging::commit`]); the
/// replaced entries land in `from`, removed with the staging tree.
fn merge_into(
    from: &OwnedFd,
    from_path: &Path,
    into: &OwnedFd,
    into_path: &Path,
    depth: usize,
) -> Result<(), FsError> {
    let mut names = list(from, from_path)?;
    names.sort();
    for name in names {
        let shown = into_path.join(&name);
        let theirs = kind_at(into, &name).map_err(errno_ctx("cannot inspect", &shown))?;
        let ours =
            kind_at(from, &name).map_err(errno_ctx("cannot inspect", &from_path.join(&name)))?;
        match (ours, theirs) {
            (Kind::Dir, Kind::Dir) if depth < MAX_DEPTH => {
                // Opened without following a link: one swapped in meanwhile fails here.
                let from_child = openat(from, name.as_os_str(), DIR_PATH, Mode::empty())
                    .map_err(errno_ctx("cannot open directory", &from_path.join(&name)))?;
                let into_child = openat(into, name.as_os_str(), DIR_PATH, Mode::empty())
                    .map_err(errno_ctx("cannot open directory", &shown))?;
                merge_into(
                    &from_child,
                    &from_path.join(&name),
                    &into_child,
                    &shown,
                    depth + 1,
                )?;
            }
            (_, Kind::Missing) => {
                renameat(from, name.as_os_str(), into, name.as_os_str())
                    .map_err(errno_ctx("cannot rename into", &shown))?;
            }
            _ => {
                renameat2(
                    from,
                    name.as_os_str(),
                    into,
                    name.as_os_str(),
                    RenameFlags::RENAME_EXCHANGE,
                )
                .map_err(errno_ctx("cannot replace", &shown))?;
            }
        }
    }
    super::sync_dir_fd(into, into_path)
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.placed {
            let _ = remove_tree(&self.parent, &self.tmp_name, &self.tmp_path);
        }
    }
}

/// A plain name: not empty, no `/`, not `.` or `..`, no NUL.
fn check_name(name: &OsStr, shown: &Path) -> Result<(), FsError> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes == b"."
        || bytes == b".."
        || bytes.contains(&b'/')
        || bytes.contains(&0)
    {
        return Err(FsError::Io {
            action: "not a plain file name below",
            path: shown.to_path_buf(),
            source: Errno::EINVAL.into(),
        });
    }
    Ok(())
}

/// The entry names of the directory `dir` (without `.` and `..`).
fn list(dir: &OwnedFd, shown: &Path) -> Result<Vec<OsString>, FsError> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_ctx("cannot open directory", shown))?;
    let mut listing = nix::dir::Dir::from_fd(fd).map_err(errno_ctx("cannot list", shown))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(errno_ctx("cannot list", shown))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir` and, when it is a directory, everything below
/// it. No link is followed: a link is removed, never its target. The walk
/// keeps its own stack, so no tree can exhaust the thread's.
pub fn remove_tree(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), FsError> {
    match kind_at(dir, name).map_err(errno_ctx("cannot inspect", shown))? {
        Kind::Missing => return Ok(()),
        Kind::Dir => {}
        _ => {
            return unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(errno_ctx("cannot remove", shown));
        }
    }
    // (parent descriptor, name, path shown, children listed yet)
    let first = dir
        .try_clone()
        .map_err(super::ctx("cannot open directory", shown))?;
    let mut stack: Vec<(OwnedFd, OsString, PathBuf, bool)> =
        vec![(first, name.to_os_string(), shown.to_path_buf(), false)];
    while let Some((parent, name, path, listed)) = stack.pop() {
        if listed || stack.len() > MAX_DEPTH {
            unlinkat(&parent, name.as_os_str(), UnlinkatFlags::RemoveDir)
                .map_err(errno_ctx("cannot remove directory", &path))?;
            continue;
        }
        let here = openat(&parent, name.as_os_str(), DIR_PATH, Mode::empty())
            .map_err(errno_ctx("cannot open directory", &path))?;
        let children = list(&here, &path)?;
        stack.push((parent, name, path.clone(), true));
        for child in children {
            let child_path = path.join(&child);
            match kind_at(&here, &child).map_err(errno_ctx("cannot inspect", &child_path))? {
                Kind::Missing => {}
                Kind::Dir => {
                    let again = here
                        .try_clone()
                        .map_err(super::ctx("cannot open directory", &child_path))?;
                    stack.push((again, child, child_path, false));
                }
                _ => unlinkat(&here, child.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(errno_ctx("cannot remove", &child_path))?,
            }
        }
    }
    Ok(())
}

/// Removes staging directories of `name` left by bootplans that are gone.
fn remove_stale_staging(dir: &OwnedFd, dir_path: &Path, name: &OsStr) {
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(name.as_bytes());
    prefix.push(b'.');
    let Ok(names) = list(dir, dir_path) else {
        return;
    };
    for entry in names {
        let Some(pid) = super::stale_temp_pid(entry.as_bytes(), &prefix) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = remove_tree(dir, &entry, &dir_path.join(&entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components(path: &str) -> Vec<OsString> {
        path.split('/').map(OsString::from).collect()
    }

    #[test]
    fn a_staged_tree_becomes_a_missing_target_in_one_rename() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("opt/app");
        let staging = Staging::create(&target, 0o755, None).unwrap();
        let dir = staging.dir(&components("bin"), 0o755).unwrap();
        let mut file = staging
            .create_file(&dir, OsStr::new("tool"), 0o755, Path::new("bin/tool"))
            .unwrap();
        std::io::Write::write_all(&mut file, b"#!/bin/sh\n").unwrap();
        staging.commit(0o755).unwrap();
        assert_eq!(
            std::fs::read(target.join("bin/tool")).unwrap(),
            b"#!/bin/sh\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(base.path().join("opt"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1, "the staging directory is gone");
    }

    #[test]
    fn into_an_existing_directory_trees_merge_and_each_file_replaces_its_name_only() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("bin");
        std::fs::create_dir_all(target.join("conf.d")).unwrap();
        std::fs::write(target.join("other"), b"kept").unwrap();
        std::fs::write(target.join("tool"), b"old").unwrap();
        std::fs::write(target.join("conf.d/stale"), b"old").unwrap();
        let staging = Staging::create(&target, 0o755, None).unwrap();
        let root = staging.dir(&[], 0o755).unwrap();
        let mut f = staging
            .create_file(&root, OsStr::new("tool"), 0o755, Path::new("tool"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"new").unwrap();
        let conf = staging.dir(&components("conf.d"), 0o755).unwrap();
        staging
            .create_file(&conf, OsStr::new("fresh"), 0o644, Path::new("fresh"))
            .unwrap();
        staging.commit(0o755).unwrap();
        assert_eq!(std::fs::read(target.join("tool")).unwrap(), b"new");
        assert_eq!(std::fs::read(target.join("other")).unwrap(), b"kept");
        assert!(target.join("conf.d/fresh").exists());
        assert!(
            target.join("conf.d/stale").exists(),
            "directories are merged, not replaced whole"
        );
        let leftovers = std::fs::read_dir(base.path()).unwrap().count();
        assert_eq!(leftovers, 1);
    }

    #[test]
    fn a_link_in_the_tree_is_never_written_through_and_drop_cleans_up() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let target = base.path().join("dest");
        let staging = Staging::create(&target, 0o755, None).unwrap();
        let root = staging.dir(&[], 0o755).unwrap();
        staging
            .symlink(&root, OsStr::new("escape"), &outside, Path::new("escape"))
            .unwrap();
        let err = staging.dir(&components("escape/sub"), 0o755).unwrap_err();
        assert!(matches!(err, FsError::UnsafeLink { .. }), "{err}");
        assert!(staging.dir(&components("../x"), 0o755).is_err());
        let staged = staging.path().to_path_buf();
        drop(staging);
        assert!(!staged.exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!target.exists());
    }
}
