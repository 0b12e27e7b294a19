//! Minisign signatures over plans fetched from elsewhere.
//!
//! A signed plan at `URL` has its signature at `URL.minisig` (what
//! `minisign -S -m plan.yaml` writes beside it). The bytes are checked
//! against every trusted public key — the `*.pub` files in
//! `/etc/bootplan/keys/` (or `BOOTPLAN_KEYS_DIR`) and any `--trusted-key`
//! file — before a single byte is parsed: an untrusted plan never reaches
//! the YAML parser. Only prehashed (current minisign) signatures are
//! accepted.

use std::path::{Path, PathBuf};

/// Where trusted keys live unless `BOOTPLAN_KEYS_DIR` says otherwise.
pub const DEFAULT_KEYS_DIR: &str = "/etc/bootplan/keys";

/// Largest key or signature file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// A signature's file name beside what it signs.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// The public keys a signed plan may be signed with.
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<(PathBuf, minisign_verify::PublicKey)>,
    /// Where keys were looked for (for messages when none verified).
    looked_in: Vec<PathBuf>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKeys")
            .field(
                "keys",
                &self.keys.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a signature did not verify, or keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read trusted key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error(
        "no trusted minisign public key (looked in {looked_in}; add one there or pass --trusted-key FILE)"
    )]
    NoKeys { looked_in: String },
    #[error("the signature is not a minisign signature: {0}")]
    Malformed(String),
    #[error(
        "the signature does not verify with any trusted key ({tried} tried): the content was changed, or signed by a key that is not trusted"
    )]
    Invalid { tried: usize },
}

impl TrustedKeys {
    /// The keys in `dir` (every `*.pub` file; a missing directory has none)
    /// and the files in `extra`. A key file that does not parse is an error:
    /// a typo must not silently shrink the set of trusted keys.
    pub fn load(dir: &Path, extra: &[PathBuf]) -> Result<TrustedKeys, SignatureError> {
        let mut keys = TrustedKeys {
            keys: Vec::new(),
            looked_in: vec![dir.to_path_buf()],
        };
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "pub"))
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                return Err(SignatureError::Key {
                    path: dir.to_path_buf(),
                    message: err.to_string(),
                });
            }
        };
        files.sort();
        files.extend(extra.iter().cloned());
        keys.looked_in.extend(extra.iter().cloned());
        for path in files {
            let key = read_key(&path)?;
            keys.keys.push((path, key));
        }
        Ok(keys)
    }

    /// The directory keys are read from: `BOOTPLAN_KEYS_DIR`, else the default.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("BOOTPLAN_KEYS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYS_DIR))
    }

    /// Checks `signature` (a `.minisig` file's text) over `content`; returns
    /// the path of the key that verified it.
    pub fn verify(&self, content: &[u8], signature: &str) -> Result<&Path, SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::NoKeys {
                looked_in: self
                    .looked_in
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let signature = minisign_verify::Signature::decode(signature)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        self.keys
            .iter()
            .find(|(_, key)| key.verify(content, &signature, false).is_ok())
            .map(|(path, _)| path.as_path())
            .ok_or(SignatureError::Invalid {
                tried: self.keys.len(),
            })
    }
}

fn read_key(path: &Path) -> Result<minisign_verify::PublicKey, SignatureError> {
    let err = |message: String| SignatureError::Key {
        path: path.to_path_buf(),
        message,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| {
            use std::io::Read;
            file.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes)
        })
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(err(format!("larger than {MAX_KEY_FILE} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let text = text.trim();
    // A bare base64 key (one line) or a minisign.pub file (comment, then key).
    let parsed = if text.lines().count() == 1 {
        minisign_verify::PublicKey::from_base64(text)
    } else {
        minisign_verify::PublicKey::decode(text)
    };
    parsed.map_err(|e| err(format!("not a minisign public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway key and its signature over b"test", made with
    // `minisign -G -W` and `minisign -S -m test`.
    const KEY: &str = "RWSpU3bu4RdrRsfIY7PZkv/kk4kZghVvQfBJ+YRXOYBGeb2QbuXX/5av";
    const SIG: &str = "untrusted comment: signature from minisign secret key
RUSpU3bu4RdrRmcxXetBzDv4NMVqZ26M0jgZB7rv0I3MBnpfCe0zjfvDajfm6DBhkttJ6aaNy3Ap6NibVZU8gEJLV1ts/Uk+NgM=
trusted comment: file:test
xVpNVqrMJMUMYYmgCGakPqpEbuX0KT1H3sk9hb5e5gnu7MbCBQmfzLZyA+FPsN6tSLl96yODGO9Rxg0IuoPJDw==";

    #[test]
    fn verifies_with_a_trusted_key_and_refuses_changed_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("release.pub"),
            format!("untrusted comment: minisign public key\n{KEY}\n"),
        )
        .unwrap();
        let keys = TrustedKeys::load(dir.path(), &[]).unwrap();
        assert_eq!(
            keys.verify(b"test", SIG).unwrap(),
            dir.path().join("release.pub")
        );
        assert!(matches!(
            keys.verify(b"tesT", SIG),
            Err(SignatureError::Invalid { tried: 1 })
        ));
        assert!(matches!(
            keys.verify(b"test", "not a signature"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn no_keys_and_bad_key_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TrustedKeys::load(&dir.path().join("missing"), &[]).unwrap();
        assert!(matches!(
            keys.verify(b"test", SIG),
            Err(SignatureError::NoKeys { .. })
        ));
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "garbage\n").unwrap();
        assert!(matches!(
            TrustedKeys::load(dir.path(), &[]),
            Err(SignatureError::Key { .. })
        ));
    }
}
