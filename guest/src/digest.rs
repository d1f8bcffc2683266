//! Content digests: `sha256:` and 64 lowercase hex digits.

use std::fmt;

use anyhow::{bail, Result};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest in its canonical text form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; `what` names the value in the error.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        match text.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => Ok(Self(text.to_string())),
            _ => bail!(
                "{what} {text:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)"
            ),
        }
    }

    /// Builds a digest from a bare hex string, if it is one (as in `blobs/sha256/<hex>`).
    pub fn from_hex(hex: &str) -> Option<Self> {
        is_sha256_hex(hex).then(|| Self(format!("sha256:{hex}")))
    }

    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::default();
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Incremental sha256 over streamed bytes.
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        let sum = self.0.finalize();
        let mut hex = String::with_capacity(64);
        for byte in sum {
            hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
        }
        Digest(format!("sha256:{hex}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_input() {
        assert_eq!(
            Digest::of(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_rejects_malformed() {
        assert!(Digest::parse("sha256:abc", "x").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64)), "x").is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64)), "x").is_err());
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&ok, "x").unwrap().hex(), "a".repeat(64));
    }
}
