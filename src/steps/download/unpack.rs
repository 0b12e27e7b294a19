//! Putting verified content in place: copied as a file, decompressed
//! (gzip, zstd, xz) into a file, or extracted (tar, tar.*, zip) into a
//! staging tree beside `dest` that is moved into place whole.
//!
//! Extraction refuses, and then extracts nothing: members named with
//! `..` or an absolute path, device files and FIFOs, links whose target
//! is absolute or climbs out of `dest`, hard links to anything but a file
//! extracted before, and archives that unpack to more than `max_size`.
//! No write follows a link (see [`crate::fsutil::tree`]).

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::DownloadError;
use crate::fsutil::tree::Staging;
use crate::fsutil::{self, FsError};
use crate::plan::download::{ArchiveFormat, Compression, DownloadSpec, ExtractSpec};
use crate::steps::StepError;

const DEFAULT_FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
/// Most members an archive may have.
const MAX_MEMBERS: u64 = 1_000_000;

pub(super) fn place(
    spec: &DownloadSpec,
    url: &str,
    blob: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), StepError> {
    let open = || {
        File::open(blob).map_err(|e| {
            StepError::Fs(FsError::Io {
                action: "cannot open",
                path: blob.to_path_buf(),
                source: e,
            })
        })
    };
    match &spec.extract {
        None if already_there(blob, dest, spec.mode.unwrap_or(DEFAULT_FILE_MODE), owner) => Ok(()),
        None => write_file(spec, url, open()?, dest, owner, false),
        Some(x) if !x.format.is_archive() => {
            let reader = decompress(x.format.compression(), open()?, url, x.format)?;
            write_file(spec, url, reader, dest, owner, true)
        }
        Some(x) => extract(spec, x, url, open()?, dest, owner),
    }
}

/// Whether `dest` is already a regular file (not a link) with the blob's
/// exact content, mode and owner: then it is left alone — no write, no new
/// inode under a running program, no fsync.
fn already_there(blob: &Path, dest: &Path, mode: u32, owner: Option<(u32, u32)>) -> bool {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
    };
    let (Ok(mut have), Ok(mut want)) = (open(dest), open(blob)) else {
        return false;
    };
    let (Ok(meta), Ok(want_meta)) = (have.metadata(), want.metadata()) else {
        return false;
    };
    if !meta.is_file()
        || meta.len() != want_meta.len()
        || meta.mode() & 0o7777 != mode & 0o7777
        || owner.is_some_and(|(uid, gid)| meta.uid() != uid || meta.gid() != gid)
        || meta.nlink() != 1
    {
        return false;
    }
    let mut a = vec![0u8; 256 * 1024];
    let mut b = vec![0u8; 256 * 1024];
    loop {
        let n = match read_full(&mut have, &mut a) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let m = match read_full(&mut want, &mut b) {
            Ok(m) => m,
            Err(_) => return false,
        };
        if n != m || a[..n] != b[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn decompress(
    compression: Compression,
    file: File,
    url: &str,
    format: ArchiveFormat,
) -> Result<Box<dyn Read>, StepError> {
    let reader = BufReader::with_capacity(256 * 1024, file);
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(
            |e| DownloadError::ArchiveInvalid {
                url: url.to_string(),
                format: format.name().into(),
                detail: e.to_string(),
            },
        )?),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new(reader, true)),
    })
}

/// Copies (or decompresses) `reader` into `dest` atomically, bounded by max_size.
fn write_file(
    spec: &DownloadSpec,
    url: &str,
    mut reader: impl Read,
    dest: &Path,
    owner: Option<(u32, u32)>,
    decompressing: bool,
) -> Result<(), StepError> {
    let options = fsutil::WriteOptions {
        owner,
        ..fsutil::WriteOptions::new(spec.mode.unwrap_or(DEFAULT_FILE_MODE))
    };
    let mut file = fsutil::AtomicFile::create(dest, options).map_err(|e| owner_error(spec, e))?;
    let limit = spec.max_size;
    let mut limited = (&mut reader).take(limit + 1);
    let copied = std::io::copy(&mut limited, file.file()).map_err(|e| {
        if decompressing {
            StepError::Download(DownloadError::ArchiveInvalid {
                url: url.to_string(),
                format: spec.extract.as_ref().map_or("", |x| x.format.name()).into(),
                detail: e.to_string(),
            })
        } else {
            StepError::Fs(FsError::Io {
                action: "cannot write",
                path: dest.to_path_buf(),
                source: e,
            })
        }
    })?;
    if copied > limit {
        return Err(DownloadError::TooLarge {
            url: url.to_string(),
            limit,
        }
        .into());
    }
    file.commit().map_err(StepError::Fs)
}

fn owner_error(spec: &DownloadSpec, err: FsError) -> StepError {
    match (&spec.owner, err) {
        (Some(owner), FsError::Owner { path, source }) => StepError::Owner {
            owner: owner.clone(),
            path,
            message: format!("{source} (setting an owner needs root)"),
        },
        (_, err) => StepError::Fs(err),
    }
}

/// One member, as the archive names it, before it is checked.
struct Member {
    /// Its path, for messages.
    shown: String,
    components: Vec<OsString>,
}

/// Splits a member name into plain components (empty and `.` dropped);
/// refuses `..` and absolute names.
fn member_components(name: &[u8]) -> Result<Member, String> {
    let shown = String::from_utf8_lossy(name).into_owned();
    if name.first() == Some(&b'/') {
        return Err(format!("`{shown}` is an absolute path"));
    }
    if name.contains(&0) {
        return Err(format!("`{}` holds a NUL byte", shown.escape_debug()));
    }
    let mut components = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(format!("`{shown}` climbs out with `..`")),
            _ => components.push(OsString::from_vec(part.to_vec())),
        }
    }
    Ok(Member { shown, components })
}

/// Whether a link at `at` (components of its own path) to `target` stays
/// below the root: lexically, absolute targets refused.
fn link_stays_inside(at: &[OsString], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') || target.is_empty() || target.contains(&0) {
        return false;
    }
    let mut depth: Vec<&[u8]> = at[..at.len().saturating_sub(1)]
        .iter()
        .map(|c| c.as_encoded_bytes())
        .collect();
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            other => depth.push(other),
        }
    }
    true
}

/// Whether `path` (after strip_components, joined by `/`) is selected.
fn included(patterns: &[String], path: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            let p = p.trim_end_matches('/');
            path == p || path.starts_with(&format!("{p}/")) || glob(p.as_bytes(), path.as_bytes())
            // A directory that leads to an included member is made as needed.
        })
}

/// `*` and `?` within one component, `**` across components.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=text.len()).any(|i| glob(rest, &text[i..]))
        }
        Some((b'*', rest)) => (0..=text.len())
            .take_while(|&i| i == 0 || text[i - 1] != b'/')
            .any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => text.first().is_some_and(|c| *c != b'/') && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// What an entry is, in either archive format.
enum EntryKind {
    File,
    Dir,
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
    Refused(&'static str),
    Skip,
}

struct Extractor<'a> {
    spec: &'a DownloadSpec,
    extract: &'a ExtractSpec,
    url: &'a str,
    staging: Staging,
    written: u64,
    members: u64,
}

impl Extractor<'_> {
    fn unsafe_member(&self, member: &str, reason: impl Into<String>) -> StepError {
        DownloadError::ArchiveUnsafe {
            url: self.url.to_string(),
            member: member.to_string(),
            reason: reason.into(),
        }
        .into()
    }

    fn invalid(&self, detail: impl std::fmt::Display) -> StepError {
        DownloadError::ArchiveInvalid {
            url: self.url.to_string(),
            format: self.extract.format.name().into(),
            detail: detail.to_string(),
        }
        .into()
    }

    /// Checks and writes one entry.
    fn entry(
        &mut self,
        name: &[u8],
        kind: EntryKind,
        mode: u32,
        content: &mut dyn Read,
    ) -> Result<(), StepError> {
        self.members += 1;
        if self.members > MAX_MEMBERS {
            return Err(self.invalid(format!("more than {MAX_MEMBERS} members")));
        }
        let member = member_components(name)
            .map_err(|reason| self.unsafe_member(&String::from_utf8_lossy(name), reason))?;
        if let EntryKind::Refused(what) = kind {
            return Err(self.unsafe_member(&member.shown, format!("{what} are never extracted")));
        }
        let strip = self.extract.strip_components as usize;
        if member.components.len() <= strip {
            return Ok(());
        }
        let components = &member.components[strip..];
        let joined = components
            .iter()
            .map(|c| c.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if !included(&self.extract.include, &joined) {
            return Ok(());
        }
        let (parent, name) = components.split_at(components.len() - 1);
        let name = &name[0];
        let shown = PathBuf::from(&joined);
        match kind {
            EntryKind::Skip | EntryKind::Refused(_) => Ok(()),
            EntryKind::Dir => {
                let dir_mode = (mode & 0o777) | 0o700;
                self.staging.dir(components, dir_mode)?;
                Ok(())
            }
            EntryKind::File => {
                let dir = self.staging.dir(parent, DIR_MODE)?;
                let mode = self.spec.mode.unwrap_or(if mode & 0o777 == 0 {
                    DEFAULT_FILE_MODE
                } else {
                    mode & 0o777
                });
                let mut file = self.staging.create_file(&dir, name, mode, &shown)?;
                let room = self.spec.max_size.saturating_sub(self.written);
                let copied = std::io::copy(&mut content.take(room + 1), &mut file)
                    .map_err(|e| self.invalid(format!("{joined}: {e}")))?;
                self.written += copied;
                if copied > room {
                    return Err(DownloadError::TooLarge {
                        url: self.url.to_string(),
                        limit: self.spec.max_size,
                    }
                    .into());
                }
                Ok(())
            }
            EntryKind::Symlink(target) => {
                if !link_stays_inside(components, &target) {
                    return Err(self.unsafe_member(
                        &member.shown,
                        format!(
                            "a link to `{}` points outside the destination",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                }
                let dir = self.staging.dir(parent, DIR_MODE)?;
                let target = PathBuf::from(OsString::from_vec(target));
                self.staging.symlink(&dir, name, &target, &shown)?;
                Ok(())
            }
            EntryKind::HardLink(target) => {
                let to = member_components(&target).map_err(|reason| {
                    self.unsafe_member(&member.shown, format!("hard link: {reason}"))
                })?;
                if to.components.len() <= strip {
                    return Err(self.unsafe_member(
                        &member.shown,
                        "a hard link to a member outside the destination",
                    ));
                }
                let to = &to.components[strip..];
                let (to_parent, to_name) = to.split_at(to.len() - 1);
                let from_dir = self.staging.dir(to_parent, DIR_MODE)?;
                let dir = self.staging.dir(parent, DIR_MODE)?;
                self.staging
                    .hard_link(&from_dir, &to_name[0], &dir, name, &shown)?;
                Ok(())
            }
        }
    }
}

fn extract(
    spec: &DownloadSpec,
    extract: &ExtractSpec,
    url: &str,
    file: File,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), StepError> {
    let staging = Staging::create(dest, DIR_MODE, owner).map_err(|e| owner_error(spec, e))?;
    let mut x = Extractor {
        spec,
        extract,
        url,
        staging,
        written: 0,
        members: 0,
    };
    if extract.format == ArchiveFormat::Zip {
        extract_zip(&mut x, file)?;
    } else {
        let reader = decompress(extract.format.compression(), file, url, extract.format)?;
        extract_tar(&mut x, reader)?;
    }
    if x.members == 0 {
        return Err(x.invalid("the archive has no members"));
    }
    x.staging.sync()?;
    x.staging.commit(DIR_MODE)?;
    Ok(())
}

fn extract_tar(x: &mut Extractor<'_>, reader: Box<dyn Read>) -> Result<(), StepError> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| x.invalid(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| x.invalid(e))?;
        let name = entry.path_bytes().into_owned();
        let mode = entry.header().mode().unwrap_or(0o644);
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default()
        };
        let kind = match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => EntryKind::File,
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink(link()),
            EntryType::Link => EntryKind::HardLink(link()),
            EntryType::Char | EntryType::Block => EntryKind::Refused("device files"),
            EntryType::Fifo => EntryKind::Refused("FIFOs"),
            EntryType::GNUSparse => EntryKind::Refused("sparse files"),
            _ => EntryKind::Skip,
        };
        x.entry(&name, kind, mode, &mut entry)?;
    }
    Ok(())
}

fn extract_zip(x: &mut Extractor<'_>, file: File) -> Result<(), StepError> {
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| x.invalid(e))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| x.invalid(e))?;
        let name = entry.name_raw().to_vec();
        let mode = entry.unix_mode().unwrap_or(0o644);
        let kind = match mode & 0o170000 {
            0o120000 => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(4096)
                    .read_to_end(&mut target)
                    .map_err(|e| x.invalid(e))?;
                EntryKind::Symlink(target)
            }
            0o020000 | 0o060000 => EntryKind::Refused("device files"),
            0o010000 => EntryKind::Refused("FIFOs"),
            0o140000 => EntryKind::Refused("sockets"),
            _ if entry.is_dir() => EntryKind::Dir,
            _ => EntryKind::File,
        };
        x.entry(&name, kind, mode, &mut entry)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_stay_inside() {
        assert!(member_components(b"../etc/passwd").is_err());
        assert!(member_components(b"a/../../b").is_err());
        assert!(member_components(b"/etc/passwd").is_err());
        let m = member_components(b"./a//b/").unwrap();
        assert_eq!(m.components, vec![OsString::from("a"), OsString::from("b")]);
    }

    #[test]
    fn links_may_not_climb_out() {
        let at = |p: &str| member_components(p.as_bytes()).unwrap().components;
        assert!(link_stays_inside(&at("a/b/link"), b"../c"));
        assert!(link_stays_inside(&at("a/link"), b"../c"));
        assert!(!link_stays_inside(&at("a/link"), b"../../c"));
        assert!(!link_stays_inside(&at("link"), b"/etc"));
        assert!(!link_stays_inside(&at("link"), b".."));
    }

    #[test]
    fn include_takes_paths_directories_and_patterns() {
        let inc = |p: &[&str], path: &str| {
            included(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), path)
        };
        assert!(inc(&["node_exporter"], "node_exporter"));
        assert!(inc(&["bin"], "bin/tool"));
        assert!(!inc(&["bin"], "binary"));
        assert!(inc(&["*.so"], "lib.so"));
        assert!(!inc(&["*.so"], "x/lib.so"));
        assert!(inc(&["**/*.so"], "x/y/lib.so"));
        assert!(inc(&[], "anything"));
    }
}
