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

/// The length and SHA-256 of a file, read as a stream; reading stops past `max` bytes (the
/// length then says so).
pub fn file_sha256(path: &Path, max: u64) -> std::io::Result<(u64, skiff_proto::Sha256Digest)> {
    use std::io::Read as _;
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut hasher = skiff_proto::digest::Hasher::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut len: u64 = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if len > max {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((len, hasher.finish()))
}

/// A bundle in the agent's store, checked once in full and then read again a file at a
/// time whenever it is applied or compared: its content is never held whole. Every read
/// checks each file's digest against the manifest, and the manifest against the one
/// verified, so a file changed on disk since is refused, not applied.
pub struct StoredBundle {
    path: PathBuf,
    manifest: skiff_proto::bundle::BundleManifest,
    limits: skiff_proto::bundle::Limits,
}

impl StoredBundle {
    /// Verifies the stored tarball at `path` against its signed envelope (every step of
    /// `FORMAT.md` §5; the digest and content read as streams, nothing kept).
    pub fn verify(
        trust: &TrustSet,
        envelope_json: &[u8],
        path: &Path,
        policy: &Policy,
    ) -> Result<(skiff_proto::statement::Statement, Self), String> {
        Self::open(trust, envelope_json, path, policy, true)
    }

    /// A stored bundle that [`Self::verify`] accepted before, opened again: the envelope,
    /// the tarball's size and digest are checked as then, but of its content only the
    /// manifest is read: the digest says the bytes are those verified in full, and every
    /// later read of its files checks them again. A drift check of an unchanged channel
    /// then reads a bundle's first kilobytes and its digest, not all of its content.
    pub fn reopen(
        trust: &TrustSet,
        envelope_json: &[u8],
        path: &Path,
        policy: &Policy,
    ) -> Result<(skiff_proto::statement::Statement, Self), String> {
        Self::open(trust, envelope_json, path, policy, false)
    }

    fn open(
        trust: &TrustSet,
        envelope_json: &[u8],
        path: &Path,
        policy: &Policy,
        in_full: bool,
    ) -> Result<(skiff_proto::statement::Statement, Self), String> {
        let envelope = skiff_proto::dsse::Envelope::from_json(envelope_json).map_err(|e| e.to_string())?;
        let statement = trust.verify_envelope(&envelope).map_err(|e| e.to_string())?;
        trust.check_fresh(policy.now).map_err(|e| e.to_string())?;
        skiff_proto::verify::check_size(&statement, &policy.limits).map_err(|e| e.to_string())?;
        let open = || std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()));
        let (len, actual) = file_sha256(path, statement.bundle.size)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if len != statement.bundle.size {
            return Err(VerifyError::SizeMismatch {
                expected: statement.bundle.size,
                actual: len,
            }
            .to_string());
        }
        if actual != statement.bundle.sha256 {
            return Err(VerifyError::DigestMismatch {
                expected: statement.bundle.sha256,
                actual,
            }
            .to_string());
        }
        skiff_proto::verify::check_policy(&statement, policy).map_err(|e| e.to_string())?;
        let reader = std::io::BufReader::new(open()?);
        let manifest = if in_full {
            skiff_proto::bundle::read_bundle_with(reader, &policy.limits, &mut |_, _, _| {})
        } else {
            skiff_proto::bundle::read_manifest(reader, &policy.limits)
        }
        .map_err(|e| VerifyError::Bundle(e).to_string())?;
        if manifest.channel != statement.channel {
            return Err(VerifyError::BundleChannelMismatch {
                statement: statement.channel.clone(),
                bundle: manifest.channel,
            }
            .to_string());
        }
        Ok((
            statement,
            Self {
                path: path.to_owned(),
                manifest,
                limits: policy.limits,
            },
        ))
    }
}

impl skiff_proto::bundle::BundleFiles for StoredBundle {
    fn manifest(&self) -> &skiff_proto::bundle::BundleManifest {
        &self.manifest
    }

    fn each_file(
        &self,
        wanted: &dyn Fn(usize) -> bool,
        each: &mut dyn FnMut(usize, &skiff_proto::bundle::BundleFile),
    ) -> Result<(), skiff_proto::bundle::BundleError> {
        let file = std::fs::File::open(&self.path).map_err(skiff_proto::bundle::BundleError::Corrupt)?;
        // A file is handed out only if its entry (path, digest, size) is the verified
        // manifest's: its bytes were checked against that digest as they were read.
        let mut changed = false;
        let manifest = skiff_proto::bundle::read_bundle_with(
            std::io::BufReader::new(file),
            &self.limits,
            &mut |i, entry, bytes| {
                if self.manifest.files.get(i) != Some(entry) {
                    changed = true;
                } else if wanted(i) && !changed {
                    each(
                        i,
                        &skiff_proto::bundle::BundleFile {
                            path: entry.path.clone(),
                            bytes,
                        },
                    );
                }
            },
        )?;
        if changed || manifest != self.manifest {
            return Err(skiff_proto::bundle::BundleError::ManifestMalformed(
                "the stored bundle changed since it was verified".to_owned(),
            ));
        }
        Ok(())
    }
}
