//! SSH: host key files, their fingerprints (`SHA256:…`, as `ssh-keygen -l`
//! prints them), the record of which instance they were made for, and the
//! block of `authorized_keys` lines bootplan manages.

use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::OsError;
use super::tool::{self, Tool};
use crate::plan::os::HostKeyType;

pub const SSH_DIR: &str = "/etc/ssh";

/// Every host key type sshd may load (also ones bootplan no longer makes:
/// a cloned `dsa` key is as shared as any other).
const ALL_HOST_KEY_NAMES: [&str; 4] = ["ed25519", "ecdsa", "rsa", "dsa"];

/// `/etc/ssh/ssh_host_TYPE_key`.
pub fn host_key_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{SSH_DIR}/ssh_host_{name}_key"))
}

/// The private and public key files of every known type that exist.
pub fn existing_host_key_files() -> Vec<PathBuf> {
    ALL_HOST_KEY_NAMES
        .iter()
        .flat_map(|name| {
            let key = host_key_path(name);
            let public = PathBuf::from(format!("{}.pub", key.display()));
            [key, public]
        })
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// `ssh-keygen` making a key of `kind` at `path` (and `path.pub`), no
/// passphrase.
pub fn keygen(kind: HostKeyType, path: &std::path::Path, comment: &str) -> Result<Tool, OsError> {
    let mut tool = Tool::new(tool::require(
        "ssh-keygen",
        "it makes SSH host keys (package openssh-client)",
    )?)
    .args(["-q", "-t", kind.as_str(), "-N", "", "-C", comment]);
    if kind == HostKeyType::Rsa {
        tool = tool.args(["-b", "3072"]);
    }
    Ok(tool.arg("-f").arg(path))
}

/// `SHA256:…` of a key blob, as OpenSSH prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Reads one SSH wire-format string (u32 length, bytes) at `at`.
fn wire_string(blob: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let len = blob.get(*at..*at + 4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let start = *at + 4;
    let bytes = blob.get(start..start.checked_add(len)?)?.to_vec();
    *at = start + len;
    Some(bytes)
}

/// The key's size in bits, as `ssh-keygen -l` shows it.
pub fn key_bits(key_type: &str, blob: &[u8]) -> Option<u32> {
    match key_type {
        "ssh-ed25519" | "sk-ssh-ed25519@openssh.com" => Some(256),
        "ecdsa-sha2-nistp256" | "sk-ecdsa-sha2-nistp256@openssh.com" => Some(256),
        "ecdsa-sha2-nistp384" => Some(384),
        "ecdsa-sha2-nistp521" => Some(521),
        "ssh-rsa" => {
            let mut at = 0;
            wire_string(blob, &mut at)?;
            wire_string(blob, &mut at)?; // e
            let n = wire_string(blob, &mut at)?;
            let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
            let first = *n.first()?;
            Some((n.len() as u32 - 1) * 8 + (8 - first.leading_zeros()))
        }
        _ => None,
    }
}

/// A public key line as `ssh-keygen -l` shows it:
/// `256 SHA256:… root@web-1 (ED25519)`.
pub fn describe_public_key(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let key_type = words.next()?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(words.next()?)
        .ok()?;
    let comment: Vec<&str> = words.collect();
    let label = match key_type {
        "ssh-ed25519" => "ED25519",
        "ssh-rsa" => "RSA",
        t if t.starts_with("ecdsa-") => "ECDSA",
        "ssh-dss" => "DSA",
        _ => key_type,
    };
    let bits = key_bits(key_type, &blob).map_or_else(String::new, |b| format!("{b} "));
    let comment = if comment.is_empty() {
        "no comment".to_string()
    } else {
        comment.join(" ")
    };
    Some(format!("{bits}{} {comment} ({label})", fingerprint(&blob)))
}

/// The record, beside the keys, of the instance they were made for. It
/// travels with the disk, so a clone carries the record of the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub instance_id: String,
    pub machine_id: String,
    pub made_at: String,
}

pub fn made_path() -> PathBuf {
    PathBuf::from(format!("{SSH_DIR}/bootplan-host-keys.json"))
}

/// The first line of the block bootplan keeps in `authorized_keys`.
pub const BLOCK_BEGIN: &str =
    "# BEGIN keys managed by bootplan: the lines up to END are rewritten on every run";
/// Its last line.
pub const BLOCK_END: &str = "# END keys managed by bootplan";

/// The keys now in bootplan's block of `text`.
pub fn managed_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        match line.trim_end() {
            BLOCK_BEGIN => inside = true,
            BLOCK_END => inside = false,
            key if inside && !key.trim().is_empty() => keys.push(key.to_string()),
            _ => {}
        }
    }
    keys
}

/// `text` with bootplan's block holding exactly `keys`: the block replaced
/// where it is (appended when there is none, removed when `keys` is
/// empty). Every line outside it stays as it was; a BEGIN or END line
/// without its partner is dropped, the lines around it kept.
pub fn with_managed_keys(text: &str, keys: &[String]) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let begin = lines.iter().position(|l| l.trim_end() == BLOCK_BEGIN);
    let end = begin.and_then(|b| {
        lines[b + 1..]
            .iter()
            .position(|l| l.trim_end() == BLOCK_END)
            .map(|e| b + 1 + e)
    });
    let block = || {
        let mut block = vec![BLOCK_BEGIN.to_string()];
        block.extend(keys.iter().cloned());
        block.push(BLOCK_END.to_string());
        block
    };
    let mut out: Vec<String> = Vec::new();
    let mut placed = keys.is_empty();
    for (i, line) in lines.iter().enumerate() {
        let in_block = matches!((begin, end), (Some(b), Some(e)) if i >= b && i <= e);
        if in_block {
            if Some(i) == begin && !placed {
                out.extend(block());
                placed = true;
            }
            continue;
        }
        let marker = matches!(line.trim_end(), BLOCK_BEGIN | BLOCK_END);
        if !marker {
            out.push(line.to_string());
        }
    }
    if !placed {
        out.extend(block());
    }
    let mut result = out.join("\n");
    if !result.is_empty() {
        result.push('\n');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2hIK1UdQ5ufYQSpO9URbTuIQZFwdMq0RRhc+FJ9f5 ops@example";

    #[test]
    fn fingerprints_match_ssh_keygen() {
        let Some(keygen) = tool::find("ssh-keygen") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        for kind in ["ed25519", "rsa", "ecdsa"] {
            let path = dir.path().join(kind);
            let made = std::process::Command::new(&keygen)
                .args(["-q", "-t", kind, "-N", "", "-C", "root@test", "-f"])
                .arg(&path)
                .status()
                .unwrap();
            assert!(made.success());
            let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            let listed = std::process::Command::new(&keygen)
                .arg("-l")
                .arg("-f")
                .arg(path.with_extension("pub"))
                .output()
                .unwrap();
            let expected = String::from_utf8(listed.stdout).unwrap();
            assert_eq!(
                describe_public_key(&public).unwrap(),
                expected.trim(),
                "{kind}"
            );
        }
    }

    #[test]
    fn the_block_is_replaced_and_the_rest_kept() {
        let by_hand = "ssh-rsa AAAAhand me@laptop\n# my note\n";
        let first = with_managed_keys(by_hand, &[ED.to_string()]);
        assert!(first.starts_with(by_hand), "{first}");
        assert_eq!(managed_keys(&first), [ED]);
        // The user adds a key after the block: it stays when the block changes.
        let edited = format!("{first}ssh-ed25519 AAAAlater me@phone\n");
        let second = with_managed_keys(&edited, &["ssh-ed25519 AAAAnew ops@example".to_string()]);
        assert!(
            second.contains("ssh-rsa AAAAhand me@laptop\n# my note\n"),
            "{second}"
        );
        assert!(
            second.ends_with("ssh-ed25519 AAAAlater me@phone\n"),
            "{second}"
        );
        assert!(!second.contains(ED), "{second}");
        assert_eq!(managed_keys(&second), ["ssh-ed25519 AAAAnew ops@example"]);
        // Unchanged keys: unchanged text.
        assert_eq!(with_managed_keys(&second, &managed_keys(&second)), second);
        // No keys: the block goes, the rest stays.
        assert_eq!(
            with_managed_keys(&second, &[]),
            "ssh-rsa AAAAhand me@laptop\n# my note\nssh-ed25519 AAAAlater me@phone\n"
        );
        // A lone BEGIN line (a hand edit) is dropped; the keys after it stay.
        let broken = format!("{BLOCK_BEGIN}\nssh-rsa AAAAx y\n");
        let fixed = with_managed_keys(&broken, &[ED.to_string()]);
        assert_eq!(
            fixed,
            format!("ssh-rsa AAAAx y\n{BLOCK_BEGIN}\n{ED}\n{BLOCK_END}\n")
        );
        assert_eq!(with_managed_keys("", &[]), "");
    }
}
