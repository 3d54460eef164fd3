//! Signing keys: generating a key pair on disk and loading the signing key.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use skiff_proto::keys::{KeyError, PublicKey, SigningKey};

/// File name of the private key written by [`keygen`].
pub const SIGNING_KEY_FILE: &str = "signing.pem";
/// File name of the public key written by [`keygen`].
pub const PUBLIC_KEY_FILE: &str = "signing.pub.pem";

/// Key generation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// A key file exists already; keys are never overwritten.
    #[error("{0} already exists; refusing to overwrite a key (move it away first)")]
    Exists(PathBuf),
    /// Creating the folder or a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No randomness.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Writes a new key pair into `dir`: `signing.pem` (PKCS#8, mode 0600) and `signing.pub.pem`
/// (SPKI). Refuses to overwrite either file. Returns the public key.
pub fn keygen(dir: &Path) -> Result<PublicKey, KeygenError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| KeygenError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let private = dir.join(SIGNING_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    for path in [&private, &public] {
        if path.exists() {
            return Err(KeygenError::Exists(path.clone()));
        }
    }
    let key = SigningKey::generate()?;
    write_new(&private, key.to_pkcs8_pem().as_bytes(), 0o600).map_err(io(&private))?;
    if let Err(e) = write_new(&public, key.public_key().to_spki_pem().as_bytes(), 0o644) {
        // Leave no private key without its public half.
        let _ = std::fs::remove_file(&private);
        return Err(io(&public)(e));
    }
    Ok(key.public_key())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let public = keygen(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SIGNING_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = SigningKey::load(&dir.path().join(SIGNING_KEY_FILE)).unwrap();
        assert_eq!(loaded.public_key(), public);
        assert_eq!(
            PublicKey::load(&dir.path().join(PUBLIC_KEY_FILE)).unwrap(),
            public
        );

        let before = std::fs::read(dir.path().join(SIGNING_KEY_FILE)).unwrap();
        assert!(matches!(keygen(dir.path()), Err(KeygenError::Exists(_))));
        assert_eq!(std::fs::read(dir.path().join(SIGNING_KEY_FILE)).unwrap(), before);
    }
}
