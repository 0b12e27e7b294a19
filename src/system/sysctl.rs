//! Kernel settings under /proc/sys, and the file that keeps them across
//! boots in /etc/sysctl.d.

use std::path::{Path, PathBuf};

use super::OsError;

/// Where /proc/sys is (tests point it elsewhere through the functions' `root`).
pub const PROC_SYS: &str = "/proc/sys";

/// Where settings are kept across boots.
pub const SYSCTL_D: &str = "/etc/sysctl.d";

/// The file under /proc/sys for a key's path (from `syntax::sysctl_path`).
pub fn proc_path(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

/// The current value, whitespace normalised (the kernel separates fields
/// with tabs, plans with spaces); `None` when the key does not exist.
pub fn read(path: &Path) -> Result<Option<String>, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(normalize(&text))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// `a\tb  c\n` → `a b c`.
pub fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes `value` to the key's file (the kernel applies it at once).
pub fn write(key: &str, path: &Path, value: &str) -> Result<(), OsError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| OsError::Sysctl {
            key: key.to_string(),
            value: value.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(format!("{value}\n").as_bytes())
        .map_err(|source| OsError::Sysctl {
            key: key.to_string(),
            value: value.to_string(),
            path: path.to_path_buf(),
            source,
        })
}

/// The sysctl.d file a step keeps its settings in.
pub fn persist_path(step: &str) -> PathBuf {
    Path::new(SYSCTL_D).join(format!("90-bootplan-{step}.conf"))
}

/// The persisted file's content for `values` (key, value), in plan order.
pub fn persist_text(step: &str, values: &[(String, String)]) -> String {
    let mut text = format!("# Written by bootplan (step {step}); changes here are overwritten.\n");
    for (key, value) in values {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_compared_normalised_and_missing_keys_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tcp_rmem");
        std::fs::write(&path, "4096\t131072\t6291456\n").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("4096 131072 6291456"));
        assert_eq!(normalize("4096  131072 6291456"), "4096 131072 6291456");
        assert!(read(&dir.path().join("nope")).unwrap().is_none());
        assert_eq!(
            persist_text("tuning", &[("vm.swappiness".into(), "10".into())]),
            "# Written by bootplan (step tuning); changes here are overwritten.\nvm.swappiness = 10\n"
        );
    }
}
