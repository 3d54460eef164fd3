//! Checking bundles against the keys this agent trusts.

use std::path::{Path, PathBuf};

use skiff_proto::keys::{KeyError, PublicKey};
use skiff_proto::verify::{Policy, TrustError, TrustSet, Verified, VerifyError, verify_bundle};

/// A bundle could not be checked, or failed the check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A trusted key could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The keys and threshold do not make a trust set.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bundle did not verify.
    #[error("{path} did not verify: {source}")]
    Verify {
        /// The bundle.
        path: PathBuf,
        /// Which step failed.
        source: VerifyError,
    },
}

/// Loads public keys (SPKI PEM files) into a trust set needing `threshold` signatures.
pub fn load_trust(keys: &[PathBuf], threshold: usize) -> Result<TrustSet, CheckError> {
    let keys = keys
        .iter()
        .map(|path| PublicKey::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrustSet::new(keys, threshold)?)
}

/// Verifies a bundle file against its envelope file, every step of the format.
pub fn check_files(
    trust: &TrustSet,
    bundle: &Path,
    envelope: &Path,
    policy: &Policy,
) -> Result<Verified, CheckError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CheckError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let envelope_json = read(envelope)?;
    let tarball = read(bundle)?;
    verify_bundle(trust, &envelope_json, &tarball, policy).map_err(|source| CheckError::Verify {
        path: bundle.to_owned(),
        source,
    })
}
