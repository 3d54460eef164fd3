//! The bundle reader. It trusts nothing: every rule of `FORMAT.md` §2 is checked, and every
//! cap in [`Limits`] holds before the bytes it guards are read.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::bufread::GzDecoder;

use super::{BundleManifest, FORMAT_VERSION, Limits, MANIFEST_NAME, MANIFESTS_DIR, PathProblem, check_path};
use crate::Sha256Digest;
use crate::manifest::check_dns_label;
use crate::statement::check_channel_name;

/// A bundle whose content matches its `skiff-bundle.json`, read within [`Limits`].
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The parsed `skiff-bundle.json`.
    pub manifest: BundleManifest,
    /// The files, in manifest order.
    pub files: Vec<BundleFile>,
}

/// One manifest file of a bundle.
#[derive(Clone, Debug)]
pub struct BundleFile {
    /// Path relative to `manifests/`.
    pub path: String,
    /// Content, checked against the manifest's digest and size.
    pub bytes: Vec<u8>,
}

/// Why a bundle was refused. Each rule has its own variant, so callers and tests can tell
/// the attacks apart.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The gzip or tar framing is broken.
    #[error("bundle is not a readable tar.gz: {0}")]
    Corrupt(#[source] io::Error),
    /// Writing a bundle failed.
    #[error("writing bundle: {0}")]
    Write(#[source] io::Error),
    /// The uncompressed stream exceeds what the limits allow (a gzip bomb, or limits too low).
    #[error("bundle decompresses to more than {limit} bytes (limit); refusing to read further")]
    DecompressedTooLarge {
        /// The cap on the uncompressed tar stream.
        limit: u64,
    },
    /// The archive is empty or does not start with `skiff-bundle.json`.
    #[error("first entry must be {MANIFEST_NAME}, found {found:?}")]
    ManifestMissing {
        /// What came first instead (empty when the archive had no entries).
        found: String,
    },
    /// `skiff-bundle.json` is larger than allowed.
    #[error("{MANIFEST_NAME} is {size} bytes, more than the limit of {limit}")]
    ManifestTooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// `skiff-bundle.json` is not the expected JSON.
    #[error("{MANIFEST_NAME} is malformed: {0}")]
    ManifestMalformed(String),
    /// The format version is not one this reader knows.
    #[error("bundle format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedFormat {
        /// The version in the manifest.
        found: u32,
    },
    /// A path is absolute, has `..`, or is otherwise unsafe to extract.
    #[error("unsafe path {path:?}: {problem}")]
    UnsafePath {
        /// The path as found.
        path: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// An entry's name is not UTF-8.
    #[error("entry name is not UTF-8: {lossy:?}")]
    NonUtf8Path {
        /// The name with invalid bytes replaced.
        lossy: String,
    },
    /// An entry is a link, device, FIFO, directory or anything but a regular file.
    #[error("entry {path:?} is a {kind}, only regular files are allowed")]
    NotRegularFile {
        /// The entry's path.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// The same path appears twice (in the archive or in the manifest).
    #[error("duplicate path {path:?}")]
    DuplicatePath {
        /// The repeated path.
        path: String,
    },
    /// The manifest's file list is not sorted by path.
    #[error("{MANIFEST_NAME} lists files out of order at {path:?}")]
    UnsortedFiles {
        /// The first path out of order.
        path: String,
    },
    /// An entry is not under `manifests/`, or not listed in the manifest.
    #[error("entry {path:?} is not listed in {MANIFEST_NAME}")]
    UnlistedFile {
        /// The entry's path.
        path: String,
    },
    /// A listed file is absent from the archive.
    #[error("file {path:?} is listed in {MANIFEST_NAME} but missing from the archive")]
    MissingFile {
        /// The listed path.
        path: String,
    },
    /// A file's content does not hash to the listed digest.
    #[error("file {path:?}: sha256 is {actual}, {MANIFEST_NAME} says {expected}")]
    DigestMismatch {
        /// The file.
        path: String,
        /// Listed digest.
        expected: Sha256Digest,
        /// Digest of the content.
        actual: Sha256Digest,
    },
    /// A file's size differs from the listed size.
    #[error("file {path:?}: size is {actual} bytes, {MANIFEST_NAME} says {expected}")]
    SizeMismatch {
        /// The file.
        path: String,
        /// Listed size.
        expected: u64,
        /// Size in the archive.
        actual: u64,
    },
    /// `totalSize` is not the sum of the file sizes.
    #[error("{MANIFEST_NAME} says totalSize {declared}, the files add up to {actual}")]
    TotalSizeMismatch {
        /// Declared total.
        declared: u64,
        /// Sum of listed sizes.
        actual: u64,
    },
    /// More files than the limit.
    #[error("bundle has {count} files, more than the limit of {limit}")]
    TooManyFiles {
        /// Files listed.
        count: usize,
        /// The cap.
        limit: usize,
    },
    /// One file is larger than the limit.
    #[error("file {path:?} is {size} bytes, more than the per-file limit of {limit}")]
    FileTooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The files add up to more than the limit.
    #[error("bundle content is {size} bytes, more than the limit of {limit}")]
    TotalTooLarge {
        /// Sum of sizes.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Bytes follow the archive: data after the end-of-archive blocks, a second gzip
    /// member, or anything after the gzip stream. A reader that stops early and one that
    /// reads on could see different bundles; neither is allowed to.
    #[error("bundle has data after the end of the archive ({0})")]
    TrailingData(&'static str),
    /// The default namespace is not a valid namespace name.
    #[error("bad default namespace {name:?}: {reason}")]
    BadNamespace {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The channel name is not a valid channel name.
    #[error("bad channel name {name:?}: {reason}")]
    BadChannel {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads and checks a bundle from a `tar.gz` stream (`FORMAT.md` §2).
///
/// The stream is read once; nothing beyond the caps is buffered or decompressed.
pub fn read_bundle(tar_gz: impl Read, limits: &Limits) -> Result<Bundle, BundleError> {
    let mut contents: Vec<Option<Vec<u8>>> = Vec::new();
    let manifest = read_bundle_with(tar_gz, limits, &mut |index, _, bytes| {
        if contents.len() <= index {
            contents.resize(index + 1, None);
        }
        contents[index] = Some(bytes);
    })?;
    let files = manifest
        .files
        .iter()
        .zip(contents.into_iter().chain(std::iter::repeat(None)))
        .map(|(entry, bytes)| BundleFile {
            path: entry.path.clone(),
            bytes: bytes.unwrap_or_default(),
        })
        .collect();
    Ok(Bundle { manifest, files })
}

/// Reads and checks a bundle exactly as [`read_bundle`] does, handing each file to `each`
/// (its index in the manifest, its entry, its checked bytes) instead of keeping it: the
/// caller holds what it wants, so a reader that keeps nothing checks a bundle in the
/// memory of one file.
pub fn read_bundle_with(
    tar_gz: impl Read,
    limits: &Limits,
    each: &mut dyn FnMut(usize, &super::FileEntry, Vec<u8>),
) -> Result<BundleManifest, BundleError> {
    let cap = limits.max_tar_stream();
    let exceeded = Rc::new(Cell::new(false));
    let capped = CappedReader {
        inner: GzDecoder::new(BufReader::new(tar_gz)),
        left: cap,
        exceeded: exceeded.clone(),
    };
    let mut archive = tar::Archive::new(capped);
    let result = read_entries(&mut archive, limits, each).and_then(|manifest| {
        check_end(archive.into_inner())?;
        Ok(manifest)
    });
    if exceeded.get() {
        return Err(BundleError::DecompressedTooLarge { limit: cap });
    }
    result
}

/// After the end-of-archive blocks: only zero padding may remain of the tar stream, and
/// nothing of the file after the (one) gzip member.
fn check_end<R: Read>(mut rest: CappedReader<GzDecoder<BufReader<R>>>) -> Result<(), BundleError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = rest.read(&mut buf).map_err(BundleError::Corrupt)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(BundleError::TrailingData("bytes after the end-of-archive blocks"));
        }
    }
    let mut raw = rest.inner.into_inner();
    if !raw.fill_buf().map_err(BundleError::Corrupt)?.is_empty() {
        return Err(BundleError::TrailingData(
            "bytes after the gzip stream (a second gzip member?)",
        ));
    }
    Ok(())
}

/// The manifest of a bundle, read and checked from its first entry; the rest of the stream
/// is not read. For a tarball read in full by [`read_bundle_with`] before and whose digest
/// still matches the signed one: its bytes are those checked then, so only the manifest
/// need be read again (a drift check of a large bundle reads its first kilobytes, not all
/// of it).
pub fn read_manifest(tar_gz: impl Read, limits: &Limits) -> Result<BundleManifest, BundleError> {
    let capped = CappedReader {
        inner: GzDecoder::new(BufReader::new(tar_gz)),
        left: limits.max_tar_stream(),
        exceeded: Rc::new(Cell::new(false)),
    };
    let mut archive = tar::Archive::new(capped);
    let mut entries = archive.entries().map_err(BundleError::Corrupt)?;
    first_manifest(&mut entries, limits)
}

fn read_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    limits: &Limits,
    each: &mut dyn FnMut(usize, &super::FileEntry, Vec<u8>),
) -> Result<BundleManifest, BundleError> {
    let mut entries = archive.entries().map_err(BundleError::Corrupt)?;
    let manifest = first_manifest(&mut entries, limits)?;

    // §2.3: every other entry is a listed regular file whose size and digest match.
    let listed: BTreeMap<&str, usize> = manifest
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.as_str(), i))
        .collect();
    let mut seen = vec![false; manifest.files.len()];
    for entry in entries {
        let mut entry = entry.map_err(BundleError::Corrupt)?;
        let path = entry_path(&entry)?;
        check_regular(&entry, &path)?;
        if path == MANIFEST_NAME {
            // Already read first; a second copy could shadow it for a naive extractor.
            return Err(BundleError::DuplicatePath { path });
        }
        let Some(rel) = path.strip_prefix(MANIFESTS_DIR) else {
            if let Err(problem) = check_path(&path) {
                return Err(BundleError::UnsafePath { path, problem });
            }
            return Err(BundleError::UnlistedFile { path });
        };
        if let Err(problem) = check_path(rel) {
            return Err(BundleError::UnsafePath { path, problem });
        }
        let Some(&index) = listed.get(rel) else {
            return Err(BundleError::UnlistedFile { path });
        };
        if seen[index] {
            return Err(BundleError::DuplicatePath { path });
        }
        let listed = &manifest.files[index];
        let size = entry.header().size().map_err(BundleError::Corrupt)?;
        if size != listed.size {
            return Err(BundleError::SizeMismatch {
                path: listed.path.clone(),
                expected: listed.size,
                actual: size,
            });
        }
        let bytes = read_exact_size(&mut entry, size)?;
        let actual = Sha256Digest::of(&bytes);
        if actual != listed.sha256 {
            return Err(BundleError::DigestMismatch {
                path: listed.path.clone(),
                expected: listed.sha256,
                actual,
            });
        }
        seen[index] = true;
        each(index, &manifest.files[index], bytes);
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(BundleError::MissingFile {
            path: manifest.files[missing].path.clone(),
        });
    }
    Ok(manifest)
}

/// §2.2: the manifest comes first and is read within its own cap.
fn first_manifest<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    limits: &Limits,
) -> Result<BundleManifest, BundleError> {
    let mut first = match entries.next() {
        None => return Err(BundleError::ManifestMissing { found: String::new() }),
        Some(entry) => entry.map_err(BundleError::Corrupt)?,
    };
    let first_path = entry_path(&first)?;
    if first_path != MANIFEST_NAME {
        return Err(BundleError::ManifestMissing { found: first_path });
    }
    check_regular(&first, &first_path)?;
    let size = first.header().size().map_err(BundleError::Corrupt)?;
    if size > limits.max_manifest_size {
        return Err(BundleError::ManifestTooLarge {
            size,
            limit: limits.max_manifest_size,
        });
    }
    let manifest_bytes = read_exact_size(&mut first, size)?;
    let manifest: BundleManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| BundleError::ManifestMalformed(e.to_string()))?;
    validate_manifest(&manifest, limits)?;
    Ok(manifest)
}

/// Checks a manifest on its own: version, channel, paths, order, caps, total (§2.2).
pub(super) fn validate_manifest(manifest: &BundleManifest, limits: &Limits) -> Result<(), BundleError> {
    if manifest.format_version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat {
            found: manifest.format_version,
        });
    }
    check_channel_name(&manifest.channel).map_err(|reason| BundleError::BadChannel {
        name: manifest.channel.clone(),
        reason,
    })?;
    if let Some(ns) = &manifest.default_namespace {
        check_dns_label(ns).map_err(|reason| BundleError::BadNamespace {
            name: ns.clone(),
            reason,
        })?;
    }
    if manifest.files.len() > limits.max_files {
        return Err(BundleError::TooManyFiles {
            count: manifest.files.len(),
            limit: limits.max_files,
        });
    }
    let mut seen = BTreeSet::new();
    let mut previous: Option<&str> = None;
    let mut total: u64 = 0;
    for file in &manifest.files {
        if let Err(problem) = check_path(&file.path) {
            return Err(BundleError::UnsafePath {
                path: file.path.clone(),
                problem,
            });
        }
        if !seen.insert(file.path.as_str()) {
            return Err(BundleError::DuplicatePath {
                path: file.path.clone(),
            });
        }
        if previous.is_some_and(|p| p > file.path.as_str()) {
            return Err(BundleError::UnsortedFiles {
                path: file.path.clone(),
            });
        }
        previous = Some(&file.path);
        if file.size > limits.max_file_size {
            return Err(BundleError::FileTooLarge {
                path: file.path.clone(),
                size: file.size,
                limit: limits.max_file_size,
            });
        }
        total = total.saturating_add(file.size);
    }
    if total > limits.max_total_size {
        return Err(BundleError::TotalTooLarge {
            size: total,
            limit: limits.max_total_size,
        });
    }
    if total != manifest.total_size {
        return Err(BundleError::TotalSizeMismatch {
            declared: manifest.total_size,
            actual: total,
        });
    }
    Ok(())
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, BundleError> {
    let raw = entry.path_bytes();
    match std::str::from_utf8(&raw) {
        Ok(path) => Ok(path.to_owned()),
        Err(_) => Err(BundleError::NonUtf8Path {
            lossy: String::from_utf8_lossy(&raw).into_owned(),
        }),
    }
}

fn check_regular<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<(), BundleError> {
    use tar::EntryType as T;
    let kind = match entry.header().entry_type() {
        T::Regular => return Ok(()),
        T::Link => "hard link",
        T::Symlink => "symbolic link",
        T::Char => "character device",
        T::Block => "block device",
        T::Directory => "directory",
        T::Fifo => "FIFO",
        T::Continuous => "contiguous file",
        T::XGlobalHeader | T::XHeader => "pax header",
        T::GNULongName | T::GNULongLink => "GNU long-name record",
        T::GNUSparse => "sparse file",
        _ => "special entry",
    };
    Err(BundleError::NotRegularFile {
        path: path.to_owned(),
        kind,
    })
}

fn read_exact_size(reader: &mut impl Read, size: u64) -> Result<Vec<u8>, BundleError> {
    // The size was checked against the limits before this call, so the allocation is bounded.
    let mut bytes = Vec::with_capacity(size as usize);
    reader
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(BundleError::Corrupt)?;
    if bytes.len() as u64 != size {
        return Err(BundleError::Corrupt(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "archive ends inside an entry",
        )));
    }
    Ok(bytes)
}

/// Fails the read, and raises a flag, once more than `left` bytes have come through.
struct CappedReader<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Probe for one more byte: only a stream that really goes on is over the cap.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(io::Error::other("decompressed size limit exceeded"))
                }
            };
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl Bundle {
    /// Writes the manifest files under `dir` (which must not exist yet or be empty), creating
    /// folders as needed. Paths were checked when the bundle was read; files are created new,
    /// never through an existing file or link.
    pub fn extract_to(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for file in &self.files {
            let target: PathBuf = dir.join(&file.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)?;
            std::io::Write::write_all(&mut out, &file.bytes)?;
        }
        Ok(())
    }
}
