//! Content digests: `sha256` and `sha512`, written as lowercase hex, and a
//! hasher that computes either while bytes stream past. A digest names what
//! a download must be (`download.sha256`), a pinned plan (`URL#sha256=…`)
//! and a blob in the download cache.

use std::fmt;

use sha2::Digest as _;

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Hex digits in a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Box::default()),
            Algorithm::Sha512 => Hasher::Sha512(Box::default()),
        }
    }
}

/// An expected or computed digest: an algorithm and its value in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub algorithm: Algorithm,
    hex: String,
}

/// Why a digest as written is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("a {} digest has {} hex digits, this has {found}", algorithm.name(), algorithm.hex_len())]
    Length { algorithm: Algorithm, found: usize },
    #[error("a digest is written in hex digits (0-9, a-f) only")]
    NotHex,
    #[error("unknown digest algorithm `{0}` (use sha256 or sha512)")]
    Algorithm(String),
}

impl Digest {
    /// Parses hex digits (either case) as a digest of `algorithm`.
    pub fn parse(algorithm: Algorithm, hex: &str) -> Result<Digest, DigestError> {
        let hex = hex.trim();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestError::NotHex);
        }
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::Length {
                algorithm,
                found: hex.len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// Parses `ALGORITHM=HEX` or `ALGORITHM:HEX` (`sha256=…`, as in a URL pin).
    pub fn parse_tagged(text: &str) -> Result<Digest, DigestError> {
        let (name, hex) = text
            .split_once(['=', ':'])
            .ok_or_else(|| DigestError::Algorithm(text.to_string()))?;
        let algorithm =
            Algorithm::from_name(name).ok_or_else(|| DigestError::Algorithm(name.to_string()))?;
        Digest::parse(algorithm, hex)
    }

    /// The digest of `bytes`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = algorithm.hasher();
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// A running hash of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Box<sha2::Sha256>),
    Sha512(Box<sha2::Sha512>),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_of_the_right_length_in_either_case() {
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let d = Digest::parse(Algorithm::Sha256, upper).unwrap();
        assert_eq!(d, Digest::of(Algorithm::Sha256, b""));
        assert_eq!(d.to_string(), format!("sha256:{}", upper.to_lowercase()));
        assert!(matches!(
            Digest::parse(Algorithm::Sha512, upper),
            Err(DigestError::Length { found: 64, .. })
        ));
        assert_eq!(
            Digest::parse(Algorithm::Sha256, &"g".repeat(64)),
            Err(DigestError::NotHex)
        );
        let tagged = Digest::parse_tagged(&format!("sha256={upper}")).unwrap();
        assert_eq!(tagged, d);
        assert!(Digest::parse_tagged("md5=abc").is_err());
    }

    #[test]
    fn hashing_in_pieces_is_hashing_at_once() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut hasher = algorithm.hasher();
            hasher.update(b"hello ");
            hasher.update(b"world");
            assert_eq!(hasher.finish(), Digest::of(algorithm, b"hello world"));
        }
    }
}
