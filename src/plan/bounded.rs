//! Reading a file of a bounded size that must be a regular file: plans,
//! templates, unit sources, tokens. Opened without blocking (a FIFO with
//! no writer would wait forever) and checked before anything is read.

use std::path::Path;

/// Why a bounded read failed.
pub enum Bounded {
    Io(std::io::Error),
    /// What is wrong with the file, and a hint.
    Problem(String, &'static str),
}

impl std::fmt::Display for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bounded::Io(err) => err.fmt(f),
            Bounded::Problem(message, _) => f.write_str(message),
        }
    }
}

/// Reads a regular file of at most `limit` bytes. The file is opened
/// without blocking (a FIFO with no writer would wait forever) and checked
/// to be a regular file before anything is read.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Bounded> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(Bounded::Io)?;
    let meta = file.metadata().map_err(Bounded::Io)?;
    if !meta.file_type().is_file() {
        return Err(Bounded::Problem(
            "not a regular file (a device, FIFO, socket or directory)".into(),
            "give the path of a plan or template file",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(Bounded::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Bounded::Problem(
            format!("the file is larger than {limit} bytes"),
            "is this the right file?",
        ));
    }
    Ok(bytes)
}
