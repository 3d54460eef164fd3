//! Ed25519 keys: private keys as PKCS#8 PEM, public keys as SPKI PEM (both what
//! `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write), and key ids.

use std::fmt;
use std::path::Path;

use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};

use crate::Sha256Digest;

/// A key could not be read, parsed or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM is not an Ed25519 key of the expected kind.
    #[error("{what}: not an Ed25519 {expected} in PEM form: {reason}")]
    Parse {
        /// Where the PEM came from (a path, or a description).
        what: String,
        /// "private key (PKCS#8)" or "public key (SPKI)".
        expected: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The operating system's random source failed.
    #[error("no randomness available to generate a key: {0}")]
    Random(String),
}

/// An Ed25519 signing key.
pub struct SigningKey(ed25519_dalek::SigningKey);

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl SigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Self(key))
    }

    /// Parses a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). `what` names the source in errors.
    pub fn from_pkcs8_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|e| KeyError::Parse {
                what: what.to_owned(),
                expected: "private key (PKCS#8)",
                reason: e.to_string(),
            })
    }

    /// Reads a PKCS#8 PEM file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_pkcs8_pem(&read(path)?, &path.display().to_string())
    }

    /// The key as PKCS#8 v1 PEM (RFC 8410, the form `openssl genpkey` writes; OpenSSL 3.0
    /// cannot read the v2 form that also embeds the public key). The returned string holds
    /// the secret: do not log it.
    pub fn to_pkcs8_pem(&self) -> String {
        let v1 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        v1.to_pkcs8_pem(LineEnding::LF)
            .expect("Ed25519 keys always encode")
            .to_string()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message` (for DSSE, the PAE bytes).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(keyid {})", self.public_key().keyid())
    }
}

impl PublicKey {
    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`). `what` names the source in errors.
    pub fn from_spki_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(Self)
            .map_err(|e| KeyError::Parse {
                what: what.to_owned(),
                expected: "public key (SPKI)",
                reason: e.to_string(),
            })
    }

    /// From the raw 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let parse = |reason: String| KeyError::Parse {
            what: "raw key".to_owned(),
            expected: "32-byte Ed25519 public key",
            reason,
        };
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| parse(format!("{} bytes", bytes.len())))?;
        ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map(Self)
            .map_err(|e| parse(e.to_string()))
    }

    /// Reads an SPKI PEM file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_spki_pem(&read(path)?, &path.display().to_string())
    }

    /// The key as SPKI PEM.
    pub fn to_spki_pem(&self) -> String {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .expect("Ed25519 keys always encode")
    }

    /// The key id: lowercase hex SHA-256 of the raw 32-byte public key.
    pub fn keyid(&self) -> String {
        Sha256Digest::of(self.0.as_bytes()).to_string()
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Checks a 64-byte Ed25519 signature over `message`, rejecting malleable
    /// (non-canonical) signatures and weak keys.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(keyid {})", self.keyid())
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_keyid() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = SigningKey::from_pkcs8_pem(&pem, "test").unwrap();
        assert_eq!(again.public_key(), key.public_key());

        let public = key.public_key();
        let spki = public.to_spki_pem();
        assert!(spki.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(PublicKey::from_spki_pem(&spki, "test").unwrap(), public);
        assert_eq!(public.keyid(), Sha256Digest::of(public.as_bytes()).to_string());
        assert_eq!(public.keyid().len(), 64);
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let sig = key.sign(b"hello");
        assert!(key.public_key().verify(b"hello", &sig));
        assert!(!key.public_key().verify(b"hellO", &sig));
        assert!(!other.public_key().verify(b"hello", &sig));
        assert!(!key.public_key().verify(b"hello", &sig[..63]));
    }

    #[test]
    fn wrong_pem_kinds_are_refused_with_the_source_named() {
        let key = SigningKey::generate().unwrap();
        let err = PublicKey::from_spki_pem(&key.to_pkcs8_pem(), "keys/x.pem").unwrap_err();
        assert!(err.to_string().contains("keys/x.pem"), "{err}");
        assert!(SigningKey::from_pkcs8_pem(&key.public_key().to_spki_pem(), "y").is_err());
        assert!(SigningKey::from_pkcs8_pem("garbage", "y").is_err());
    }
}
