//! The bundle: a deterministic `tar.gz` of manifests with `skiff-bundle.json` first.
//!
//! See `FORMAT.md` §1–§2. [`write_bundle`] produces the same bytes for the same input on
//! any machine; [`read_bundle`] trusts nothing it reads and stops at [`Limits`].

mod reader;
mod writer;

pub use reader::{Bundle, BundleError, BundleFile, read_bundle, read_bundle_with, read_manifest};

/// A checked bundle's files, read in manifest order: held in memory ([`Bundle`]), or read
/// again from a stored tarball a file at a time (the agent's stored bundles), so what
/// reads them holds one file, not the bundle.
pub trait BundleFiles: Sync {
    /// The bundle's `skiff-bundle.json`.
    fn manifest(&self) -> &BundleManifest;
    /// Hands every file whose index `wanted` accepts to `each`, in manifest order.
    fn each_file(
        &self,
        wanted: &dyn Fn(usize) -> bool,
        each: &mut dyn FnMut(usize, &BundleFile),
    ) -> Result<(), BundleError>;
}

impl BundleFiles for Bundle {
    fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    fn each_file(
        &self,
        wanted: &dyn Fn(usize) -> bool,
        each: &mut dyn FnMut(usize, &BundleFile),
    ) -> Result<(), BundleError> {
        for (i, f) in self.files.iter().enumerate() {
            if wanted(i) {
                each(i, f);
            }
        }
        Ok(())
    }
}
pub use writer::{BuiltBundle, write_bundle};

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;

/// Name of the first entry of every bundle.
pub const MANIFEST_NAME: &str = "skiff-bundle.json";
/// Folder inside the tarball that holds the manifest files.
pub const MANIFESTS_DIR: &str = "manifests/";
/// The bundle format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The content of `skiff-bundle.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleManifest {
    /// Always [`FORMAT_VERSION`] for bundles this crate writes.
    pub format_version: u32,
    /// The channel the bundle was built for.
    pub channel: String,
    /// Where the manifests came from.
    pub source: Source,
    /// Namespace for namespaced objects that name none (as `kubectl -n` would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_namespace: Option<String>,
    /// Every file under `manifests/`, sorted by path.
    pub files: Vec<FileEntry>,
    /// Sum of the files' sizes.
    pub total_size: u64,
}

/// Where a bundle's manifests came from. Fields are absent when unknown (a plain folder).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Repository URL or name, with no credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Branch the commit was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Full commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Folder inside the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One file of the bundle, relative to `manifests/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to `manifests/`, `/`-separated.
    pub path: String,
    /// SHA-256 of the content.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
}

/// Caps that protect a reader from hostile bundles. Writers check them too, so that a hub
/// never signs a bundle that agents with default limits would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most files under `manifests/`.
    pub max_files: usize,
    /// Largest single file, bytes.
    pub max_file_size: u64,
    /// Largest sum of file sizes, bytes.
    pub max_total_size: u64,
    /// Largest `skiff-bundle.json`, bytes.
    pub max_manifest_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_files: 10_000,
            max_file_size: 8 << 20,
            max_total_size: 64 << 20,
            max_manifest_size: 4 << 20,
        }
    }
}

impl Limits {
    /// The most bytes an uncompressed tar stream within these limits can have: content,
    /// one header plus padding per file, GNU long-name records, and the end-of-archive blocks.
    pub fn max_tar_stream(&self) -> u64 {
        let per_file = 512 * 3 + 511 + 4096;
        self.max_total_size
            .saturating_add(self.max_manifest_size)
            .saturating_add((self.max_files as u64 + 1).saturating_mul(per_file))
            .saturating_add(10_240)
    }

    /// The largest compressed bundle (`.tar.gz`) within these limits: the tar stream plus
    /// deflate's worst-case growth on incompressible data. Readers refuse larger files (and
    /// statements naming a larger size) before reading them.
    pub fn max_bundle_size(&self) -> u64 {
        let stream = self.max_tar_stream();
        stream.saturating_add(stream / 500).saturating_add(1024)
    }
}

/// Why a path is not acceptable inside a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// The path is empty.
    Empty,
    /// The path starts with `/`.
    Absolute,
    /// A component is `..`.
    ParentDir,
    /// A component is `.` or empty (`a//b`, trailing `/`).
    EmptyOrDotComponent,
    /// Backslashes, NUL or other control characters.
    ForbiddenCharacter,
    /// Longer than 4096 bytes.
    TooLong,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty path",
            Self::Absolute => "absolute path",
            Self::ParentDir => "contains a '..' component",
            Self::EmptyOrDotComponent => "contains an empty or '.' component",
            Self::ForbiddenCharacter => "contains a backslash or control character",
            Self::TooLong => "longer than 4096 bytes",
        })
    }
}

/// Checks a bundle-relative path (`FORMAT.md` §1: relative, `/`-separated, no `.`/`..`).
pub fn check_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Empty);
    }
    if path.len() > 4096 {
        return Err(PathProblem::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(PathProblem::ForbiddenCharacter);
    }
    for component in path.split('/') {
        match component {
            ".." => return Err(PathProblem::ParentDir),
            "" | "." => return Err(PathProblem::EmptyOrDotComponent),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        assert_eq!(check_path("apps/web.yaml"), Ok(()));
        assert_eq!(check_path(""), Err(PathProblem::Empty));
        assert_eq!(check_path("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(check_path("a/../../x"), Err(PathProblem::ParentDir));
        assert_eq!(check_path(".."), Err(PathProblem::ParentDir));
        assert_eq!(check_path("a//b"), Err(PathProblem::EmptyOrDotComponent));
        assert_eq!(check_path("a/./b"), Err(PathProblem::EmptyOrDotComponent));
        assert_eq!(check_path("a/"), Err(PathProblem::EmptyOrDotComponent));
        assert_eq!(check_path("a\\..\\b"), Err(PathProblem::ForbiddenCharacter));
        assert_eq!(check_path("a\0b"), Err(PathProblem::ForbiddenCharacter));
        assert_eq!(check_path(&"a".repeat(5000)), Err(PathProblem::TooLong));
    }
}
