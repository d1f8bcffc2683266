//! `--sign-key`: the ECDSA P-256 private key the host signs with for the guest, which holds it
//! only as a handle (`signer` in `wit/ocipush.wit`), and the public keys `ocipush verify`
//! checks with. Errors name the file and what is wrong with it, never its contents.

use std::fmt;
use std::path::{Path, PathBuf};

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use p256::SecretKey;

/// A private key the host holds.
pub struct Key {
    signing: SigningKey,
}

/// Why a key could not be loaded.
#[derive(Debug)]
pub enum KeyError {
    Read {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    /// The file holds no PEM block of a kind ocipush reads.
    NoKey { path: PathBuf, public: bool },
    /// The PEM block is not a P-256 key of its kind (or does not decode).
    NotP256 { path: PathBuf, kind: &'static str },
    /// An encrypted key, and no passphrase file.
    NeedsPassphrase(PathBuf),
    /// An encrypted key the passphrase does not open.
    WrongPassphrase(PathBuf),
    /// A passphrase file for a key that is not encrypted.
    NotEncrypted(PathBuf),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, kind } => write!(f, "reading {}: {kind}", path.display()),
            Self::NoKey { path, public: false } => write!(
                f,
                "{} holds no private key: expected an ECDSA P-256 key in PEM (PRIVATE KEY, EC PRIVATE KEY or ENCRYPTED PRIVATE KEY)",
                path.display()
            ),
            Self::NoKey { path, public: true } => write!(
                f,
                "{} holds no public key: expected an ECDSA P-256 key in PEM (PUBLIC KEY)",
                path.display()
            ),
            Self::NotP256 { path, kind } => {
                write!(f, "{}: its {kind} is not an ECDSA P-256 key", path.display())
            }
            Self::NeedsPassphrase(path) => write!(
                f,
                "{} is encrypted: give its passphrase with --sign-key-passphrase-file",
                path.display()
            ),
            Self::WrongPassphrase(path) => write!(
                f,
                "{}: the passphrase does not decrypt it (or it is not a P-256 key)",
                path.display()
            ),
            Self::NotEncrypted(path) => write!(
                f,
                "{} is not encrypted, but --sign-key-passphrase-file was given",
                path.display()
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// The first PEM block labelled `label` in `text`, whole (what the decoders take).
fn block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|e| KeyError::Read {
            path: path.to_path_buf(),
            kind: e.kind(),
        })
}

impl Key {
    /// Loads a PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`, as `openssl ecparam -genkey`
    /// writes it) or encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`, with the first line of
    /// `passphrase_file`) P-256 key.
    pub fn load(path: &Path, passphrase_file: Option<&Path>) -> Result<Self, KeyError> {
        let text = read(path)?;
        let at = || path.to_path_buf();
        let passphrase = match passphrase_file {
            Some(file) => {
                let text = read(file)?;
                Some(text.lines().next().unwrap_or_default().to_string())
            }
            None => None,
        };
        let secret = if let Some(pem) = block(&text, "ENCRYPTED PRIVATE KEY") {
            let Some(passphrase) = passphrase else {
                return Err(KeyError::NeedsPassphrase(at()));
            };
            SecretKey::from_pkcs8_encrypted_pem(pem, passphrase.as_bytes())
                .map_err(|_| KeyError::WrongPassphrase(at()))?
        } else if passphrase.is_some()
            && (block(&text, "PRIVATE KEY").is_some() || block(&text, "EC PRIVATE KEY").is_some())
        {
            return Err(KeyError::NotEncrypted(at()));
        } else if let Some(pem) = block(&text, "EC PRIVATE KEY") {
            SecretKey::from_sec1_pem(pem).map_err(|_| KeyError::NotP256 {
                path: at(),
                kind: "EC PRIVATE KEY",
            })?
        } else if let Some(pem) = block(&text, "PRIVATE KEY") {
            SecretKey::from_pkcs8_pem(pem).map_err(|_| KeyError::NotP256 {
                path: at(),
                kind: "PRIVATE KEY",
            })?
        } else {
            return Err(KeyError::NoKey {
                path: at(),
                public: false,
            });
        };
        Ok(Self {
            signing: SigningKey::from(&secret),
        })
    }

    /// An ECDSA signature over the SHA-256 of `payload`, ASN.1 DER (RFC 6979: deterministic).
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let signature: Signature = self.signing.sign(payload);
        signature.to_der().as_bytes().to_vec()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.signing.verifying_key())
    }
}

/// Never the key's contents.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(P-256, private)")
    }
}

/// A public key to verify with.
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Loads a P-256 `PUBLIC KEY` (SubjectPublicKeyInfo) PEM, as `openssl ec -pubout` writes it.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read(path)?;
        let Some(pem) = block(&text, "PUBLIC KEY") else {
            return Err(KeyError::NoKey {
                path: path.to_path_buf(),
                public: true,
            });
        };
        VerifyingKey::from_public_key_pem(pem)
            .map(Self)
            .map_err(|_| KeyError::NotP256 {
                path: path.to_path_buf(),
                kind: "PUBLIC KEY",
            })
    }

    /// Whether `signature` (DER) is this key's over `payload`.
    pub fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        DerSignature::try_from(signature)
            .ok()
            .and_then(|der| Signature::try_from(der).ok())
            .is_some_and(|signature| self.0.verify(payload, &signature).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn keys_load_in_each_form_and_sign_what_their_public_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
        let encrypted = secret
            .to_pkcs8_encrypted_pem(&mut rand_core(), "s3cret", LineEnding::LF)
            .unwrap();
        let public = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let public = PublicKey::load(&write(dir.path(), "pub.pem", &public)).unwrap();
        let pass = write(dir.path(), "pass", "s3cret\n");
        let wrong = write(dir.path(), "wrong", "nope\n");
        let keys = [
            Key::load(&write(dir.path(), "a.pem", &pkcs8), None).unwrap(),
            Key::load(&write(dir.path(), "b.pem", &sec1), None).unwrap(),
            Key::load(&write(dir.path(), "c.pem", &encrypted), Some(&pass)).unwrap(),
        ];
        for key in &keys {
            let signature = key.sign(b"payload");
            assert!(public.verifies(b"payload", &signature));
            assert!(!public.verifies(b"payloaD", &signature));
        }
        let c = dir.path().join("c.pem");
        let err = |r: Result<Key, KeyError>| r.unwrap_err().to_string();
        assert!(err(Key::load(&c, None)).contains("is encrypted"));
        let wrong_pass = err(Key::load(&c, Some(&wrong)));
        assert!(wrong_pass.contains("does not decrypt"), "{wrong_pass}");
        assert!(!wrong_pass.contains("nope"));
        let plain = dir.path().join("a.pem");
        assert!(err(Key::load(&plain, Some(&pass))).contains("is not encrypted"));
        let junk = write(dir.path(), "junk", "hello");
        assert!(err(Key::load(&junk, None)).contains("holds no private key"));
        assert!(format!("{:?}", keys[0]) == "Key(P-256, private)");
    }

    /// Randomness for encrypting a test key (salt and IV): not secret here.
    fn rand_core() -> impl p256::elliptic_curve::rand_core::CryptoRngCore {
        Seeded(1)
    }

    struct Seeded(u64);
    impl p256::elliptic_curve::rand_core::RngCore for Seeded {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u64() as u8;
            }
        }
        fn try_fill_bytes(
            &mut self,
            dest: &mut [u8],
        ) -> Result<(), p256::elliptic_curve::rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl p256::elliptic_curve::rand_core::CryptoRng for Seeded {}
}
