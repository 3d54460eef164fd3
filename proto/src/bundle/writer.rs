//! The deterministic bundle writer (`FORMAT.md` §1).

use std::collections::BTreeMap;
use std::io::Write;

use flate2::{Compression, GzBuilder};

use super::reader::validate_manifest;
use super::{
    BundleError, BundleManifest, FORMAT_VERSION, FileEntry, Limits, MANIFEST_NAME, MANIFESTS_DIR, Source,
};
use crate::Sha256Digest;

/// A bundle as written: the tarball bytes, their digest and the manifest inside.
#[derive(Clone, Debug)]
pub struct BuiltBundle {
    /// The `tar.gz` bytes.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`: the bundle's name.
    pub digest: Sha256Digest,
    /// The `skiff-bundle.json` written first.
    pub manifest: BundleManifest,
}

/// Writes a bundle of `files` (path relative to `manifests/` → content).
///
/// The same arguments give the same bytes on any machine: entries sorted by path, mtime 0,
/// uid/gid 0, mode 0644, regular files only, gzip header without name or time. Refuses what
/// a reader with `limits` would refuse, so a hub never signs a bundle agents cannot take.
pub fn write_bundle(
    channel: &str,
    source: Source,
    default_namespace: Option<String>,
    files: &BTreeMap<String, Vec<u8>>,
    limits: &Limits,
) -> Result<BuiltBundle, BundleError> {
    let entries: Vec<FileEntry> = files
        .iter()
        .map(|(path, bytes)| FileEntry {
            path: path.clone(),
            sha256: Sha256Digest::of(bytes),
            size: bytes.len() as u64,
        })
        .collect();
    let manifest = BundleManifest {
        format_version: FORMAT_VERSION,
        channel: channel.to_owned(),
        source,
        default_namespace,
        total_size: entries.iter().map(|f| f.size).sum(),
        files: entries,
    };
    validate_manifest(&manifest, limits)?;
    let mut manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    manifest_json.push(b'\n');
    if manifest_json.len() as u64 > limits.max_manifest_size {
        return Err(BundleError::ManifestTooLarge {
            size: manifest_json.len() as u64,
            limit: limits.max_manifest_size,
        });
    }

    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    append(&mut tar, MANIFEST_NAME, &manifest_json)?;
    for (path, bytes) in files {
        append(&mut tar, &format!("{MANIFESTS_DIR}{path}"), bytes)?;
    }
    let mut gz = tar.into_inner().map_err(BundleError::Write)?;
    gz.flush().map_err(BundleError::Write)?;
    let bytes = gz.finish().map_err(BundleError::Write)?;
    Ok(BuiltBundle {
        digest: Sha256Digest::of(&bytes),
        bytes,
        manifest,
    })
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    tar.append_data(&mut header, path, bytes)
        .map_err(BundleError::Write)
}
