//! Which files of a folder or tree become a bundle, and the check that each of them holds
//! Kubernetes objects as the cluster will read them.
//!
//! Plain rendering takes `*.yaml`, `*.yml` and `*.json` below the path (as `kubectl apply -R`
//! does), skips hidden files and folders (`.github/`, `.gitlab-ci.yml`), and refuses
//! symbolic links rather than follow them out of the tree. Files are bundled byte for byte.
//! A `.skiffignore` at the top of the rendered folder leaves out what is not a manifest
//! (gitignore syntax; see [`crate::ignore`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use skiff_proto::manifest::{ManifestError, parse_objects, parse_objects_substituted};

use std::time::Duration;

use crate::git::{EntryKind, GitError, Repo, TreeEntry};
use crate::ignore::{IGNORE_FILE, Ignore, MAX_IGNORE_FILE};
use crate::process;

/// Name of the one file a kustomize render produces in a bundle.
pub const KUSTOMIZE_OUTPUT: &str = "rendered.yaml";

/// Most files of a commit written out for a kustomize render.
pub const MAX_RENDER_FILES: usize = 50_000;
/// Most bytes of a commit written out for a kustomize render (blobs larger than a bundle
/// file may be are left out: no render could use them whole).
pub const MAX_RENDER_BYTES: u64 = 256 << 20;

/// A file taken from a folder or a tree, path relative to the rendered path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// `/`-separated path relative to the rendered folder.
    pub path: String,
    /// The content.
    pub bytes: Vec<u8>,
}

/// Rendering failed; nothing is bundled.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Reading the folder failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading the Git tree failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A manifest file is a symbolic link.
    #[error("{path}: symbolic links are not followed; commit the file itself")]
    Symlink {
        /// The link.
        path: String,
    },
    /// A file name is not UTF-8.
    #[error("{path}: file name is not UTF-8")]
    NonUtf8Name {
        /// The name, lossily decoded.
        path: String,
    },
    /// The folder is a kustomization, which plain rendering does not expand.
    #[error(
        "{path}: this folder is a kustomization; plain rendering would bundle the kustomization file itself (render it with kustomize instead)"
    )]
    Kustomization {
        /// The kustomization file.
        path: String,
    },
    /// One or more documents are not valid Kubernetes objects.
    #[error("{} invalid manifest(s):\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<ManifestError>),
    /// No manifest files at all.
    #[error("no manifest files (*.yaml, *.yml, *.json) found in {0}")]
    Empty(String),
    /// Neither `kustomize` nor `kubectl` is installed.
    #[error("{0}: rendering a kustomization needs `kustomize` or `kubectl` on PATH; neither was found")]
    KustomizeMissing(String),
    /// kustomize failed.
    #[error("{origin}: kustomize failed: {message}")]
    Kustomize {
        /// What was rendered.
        origin: String,
        /// What kustomize said.
        message: String,
    },
    /// A file, or the files together, are larger than a bundle may hold; nothing was read.
    #[error("{path}: {size} bytes, more than the limit of {limit} ({what})")]
    TooLarge {
        /// The file (or the folder, for a total).
        path: String,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
        /// Which cap.
        what: &'static str,
    },
    /// A helper program could not run.
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
}

/// Whether a path names a manifest file that plain rendering takes.
pub fn is_manifest_name(path: &str) -> bool {
    let hidden = path.split('/').any(|c| c.starts_with('.'));
    !hidden && [".yaml", ".yml", ".json"].iter().any(|ext| path.ends_with(ext))
}

/// Whether a path names a kustomization file.
pub fn is_kustomization(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(name, "kustomization.yaml" | "kustomization.yml" | "Kustomization")
}

/// The manifest files below `dir` on disk, sorted by path, less what `.skiffignore` at
/// its top leaves out.
pub fn from_dir(dir: &Path) -> Result<Vec<SourceFile>, RenderError> {
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    let ignore_path = dir.join(IGNORE_FILE);
    let ignore = match std::fs::symlink_metadata(&ignore_path) {
        Ok(m) if m.is_file() && m.len() <= MAX_IGNORE_FILE as u64 => {
            let text = std::fs::read(&ignore_path).map_err(|source| RenderError::Io {
                path: ignore_path.clone(),
                source,
            })?;
            Ignore::parse(&String::from_utf8_lossy(&text))
        }
        Ok(m) if m.is_file() => return Err(ignore_too_large(m.len())),
        _ => Ignore::default(),
    };
    files.retain(|f| !ignore.ignores(&f.path));
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn ignore_too_large(size: u64) -> RenderError {
    RenderError::TooLarge {
        path: IGNORE_FILE.to_owned(),
        size,
        limit: MAX_IGNORE_FILE as u64,
        what: "size of an ignore file",
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<SourceFile>) -> Result<(), RenderError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RenderError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(RenderError::NonUtf8Name {
                path: entry.path().display().to_string(),
            });
        };
        if name.starts_with('.') {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let file_type = entry.file_type().map_err(io(&entry.path()))?;
        if file_type.is_dir() {
            walk(&entry.path(), &format!("{rel}/"), out)?;
        } else if is_manifest_name(&rel) || is_kustomization(&rel) {
            if file_type.is_symlink() {
                return Err(RenderError::Symlink { path: rel });
            }
            let bytes = std::fs::read(entry.path()).map_err(io(&entry.path()))?;
            out.push(SourceFile { path: rel, bytes });
        }
    }
    Ok(())
}

/// The manifest files among `entries` (a `list_tree` of the rendered path), read from the
/// object database.
pub fn from_git(repo: &Repo, entries: Vec<TreeEntry>) -> Result<Vec<SourceFile>, RenderError> {
    let ignore = match entries
        .iter()
        .find(|e| e.path == IGNORE_FILE && e.kind == EntryKind::File)
    {
        Some(e) => {
            let size = repo.blob_sizes(&[e.oid.as_str()])?[0];
            if size > MAX_IGNORE_FILE as u64 {
                return Err(ignore_too_large(size));
            }
            let text = repo.read_blobs(&[e.oid.as_str()])?.remove(0);
            Ignore::parse(&String::from_utf8_lossy(&text))
        }
        None => Ignore::default(),
    };
    let mut wanted = Vec::new();
    for entry in entries {
        if !(is_manifest_name(&entry.path) || is_kustomization(&entry.path)) || ignore.ignores(&entry.path) {
            continue;
        }
        match entry.kind {
            EntryKind::File => wanted.push(entry),
            EntryKind::Symlink => return Err(RenderError::Symlink { path: entry.path }),
            EntryKind::Submodule => {}
        }
    }
    let oids: Vec<&str> = wanted.iter().map(|e| e.oid.as_str()).collect();
    // Sizes before content: nothing over a bundle's caps is read.
    let limits = skiff_proto::bundle::Limits::default();
    let sizes = repo.blob_sizes(&oids)?;
    let mut total = 0u64;
    for (entry, &size) in wanted.iter().zip(&sizes) {
        if size > limits.max_file_size {
            return Err(RenderError::TooLarge {
                path: entry.path.clone(),
                size,
                limit: limits.max_file_size,
                what: "per-file limit of a bundle",
            });
        }
        total += size;
    }
    if total > limits.max_total_size {
        return Err(RenderError::TooLarge {
            path: "(all manifest files)".to_owned(),
            size: total,
            limit: limits.max_total_size,
            what: "total limit of a bundle",
        });
    }
    let blobs = repo.read_blobs(&oids)?;
    let mut files: Vec<SourceFile> = wanted
        .into_iter()
        .zip(blobs)
        .map(|(entry, bytes)| SourceFile {
            path: entry.path,
            bytes,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Checks every document of every file (all errors, not just the first) and returns the
/// files keyed by path, ready for the bundle writer. `origin` names the source in errors.
pub fn validate_plain(
    files: Vec<SourceFile>,
    origin: &str,
    substitute: bool,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    if let Some(k) = files.iter().find(|f| is_kustomization(&f.path)) {
        return Err(RenderError::Kustomization { path: k.path.clone() });
    }
    if files.is_empty() {
        return Err(RenderError::Empty(origin.to_owned()));
    }
    // Parsing dominates a build; spread it over the cores, keeping errors in file order.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = files.len().div_ceil(threads).max(64);
    let errors: Vec<ManifestError> = std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .filter_map(|f| check_file(f, substitute).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("manifest parsing does not panic"))
            .collect()
    });
    let out: BTreeMap<String, Vec<u8>> = files.into_iter().map(|f| (f.path, f.bytes)).collect();
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(RenderError::Invalid(errors))
    }
}

/// Reads one file as an agent will. For a channel that substitutes values, every reference
/// stands for a placeholder (`x`, or its default), so names and namespaces built from values
/// are checked in shape; agents check them again with each cluster's values.
fn check_file(f: &SourceFile, substitute: bool) -> Result<(), ManifestError> {
    if substitute {
        let placeholder = |_: &str| Some("x");
        let mut budget = skiff_proto::manifest::Budget::for_file(f.bytes.len());
        parse_objects_substituted(&f.path, &f.bytes, &mut budget, &placeholder).map(drop)
    } else {
        parse_objects(&f.path, &f.bytes).map(drop)
    }
}

/// Whether `dir` holds a kustomization file at its top.
pub fn dir_is_kustomization(dir: &Path) -> bool {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .any(|n| dir.join(n).is_file())
}

/// Whether a listed tree holds a kustomization file at its top.
pub fn tree_is_kustomization(entries: &[TreeEntry]) -> bool {
    entries
        .iter()
        .any(|e| !e.path.contains('/') && is_kustomization(&e.path))
}

/// Renders the kustomization in `dir` with `kustomize build` (or `kubectl kustomize`) and
/// checks the output; the bundle holds it as one file, [`KUSTOMIZE_OUTPUT`].
pub fn kustomize_dir(
    dir: &Path,
    origin: &str,
    timeout: Duration,
    substitute: bool,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let home = tempfile::tempdir().map_err(|source| RenderError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    kustomize_in(dir, home.path(), origin, timeout, substitute)
}

/// Runs the renderer in `dir` with nothing of the hub's environment (no tokens, no
/// `$HOME`): its home, caches and working folder are `home`, a fresh temporary folder, so
/// whatever it writes lands there.
fn kustomize_in(
    dir: &Path,
    home: &Path,
    origin: &str,
    timeout: Duration,
    substitute: bool,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let mut cmd = if process::on_path("kustomize") {
        let mut c = std::process::Command::new("kustomize");
        c.arg("build");
        c
    } else if process::on_path("kubectl") {
        let mut c = std::process::Command::new("kubectl");
        c.arg("kustomize");
        c
    } else {
        return Err(RenderError::KustomizeMissing(origin.to_owned()));
    };
    cmd.arg(dir)
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("KUBECONFIG", home.join(".kube/config"));
    // The render becomes one bundle file: more than a file may hold is refused unread.
    let max = skiff_proto::bundle::Limits::default().max_file_size;
    let out = process::run(cmd, timeout, max)?;
    if !out.status.success() {
        return Err(RenderError::Kustomize {
            origin: origin.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let files = vec![SourceFile {
        path: KUSTOMIZE_OUTPUT.to_owned(),
        bytes: out.stdout,
    }];
    validate_plain(files, origin, substitute)
}

/// Renders the kustomization at `path` of `commit`: the commit's regular files are written
/// beneath a fresh temporary folder and rendered there. Every path was checked by
/// [`Repo::list_tree`] (no `..`, no absolute paths); symbolic links, submodules, `.git`
/// folders and blobs larger than a bundle file are left out, so nothing is written outside
/// that folder and nothing outside the tree can be read; files are created new, never
/// through something already there. Sizes are checked before any blob is read.
pub fn kustomize_git(
    repo: &Repo,
    commit: &str,
    path: &str,
    origin: &str,
    timeout: Duration,
    substitute: bool,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let tmp = tempfile::tempdir().map_err(|source| RenderError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let root = tmp.path().join("tree");
    let home = tmp.path().join("home");
    let entries = repo.list_tree(commit, "")?;
    let limits = skiff_proto::bundle::Limits::default();
    let candidates: Vec<&TreeEntry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter(|e| !e.path.split('/').any(|c| c.eq_ignore_ascii_case(".git")))
        .collect();
    let oids: Vec<&str> = candidates.iter().map(|e| e.oid.as_str()).collect();
    let sizes = repo.blob_sizes(&oids)?;
    let files: Vec<&TreeEntry> = candidates
        .into_iter()
        .zip(&sizes)
        .filter(|(_, size)| **size <= limits.max_file_size)
        .map(|(e, _)| e)
        .collect();
    let total: u64 = sizes.iter().filter(|s| **s <= limits.max_file_size).sum();
    if files.len() > MAX_RENDER_FILES {
        return Err(RenderError::TooLarge {
            path: origin.to_owned(),
            size: files.len() as u64,
            limit: MAX_RENDER_FILES as u64,
            what: "files a kustomize render may write out",
        });
    }
    if total > MAX_RENDER_BYTES {
        return Err(RenderError::TooLarge {
            path: origin.to_owned(),
            size: total,
            limit: MAX_RENDER_BYTES,
            what: "bytes a kustomize render may write out",
        });
    }
    let oids: Vec<&str> = files.iter().map(|e| e.oid.as_str()).collect();
    let blobs = repo.read_blobs(&oids)?;
    for dir in [&root, &home] {
        std::fs::create_dir(dir).map_err(|source| RenderError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    for (entry, bytes) in files.iter().zip(blobs) {
        let target = root.join(&entry.path);
        debug_assert!(target.starts_with(&root));
        let io = |source| RenderError::Io {
            path: target.clone(),
            source,
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io)?;
        std::io::Write::write_all(&mut file, &bytes).map_err(io)?;
    }
    kustomize_in(&root.join(path), &home, origin, timeout, substitute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names() {
        assert!(is_manifest_name("apps/web.yaml"));
        assert!(is_manifest_name("a.yml"));
        assert!(is_manifest_name("crd.json"));
        assert!(!is_manifest_name("README.md"));
        assert!(!is_manifest_name(".github/workflows/ci.yml"));
        assert!(!is_manifest_name("apps/.hidden.yaml"));
    }

    #[test]
    fn dir_walk_skips_hidden_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("apps/.git")).unwrap();
        std::fs::write(root.join("apps/b.yaml"), "b").unwrap();
        std::fs::write(root.join("a.yml"), "a").unwrap();
        std::fs::write(root.join("notes.txt"), "x").unwrap();
        std::fs::write(root.join("apps/.git/config.yaml"), "x").unwrap();
        let files = from_dir(root).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.yml", "apps/b.yaml"]);

        std::os::unix::fs::symlink("/etc/hostname", root.join("apps/link.yaml")).unwrap();
        assert!(matches!(from_dir(root), Err(RenderError::Symlink { path }) if path == "apps/link.yaml"));
    }

    #[test]
    fn validation_reports_every_bad_document() {
        let files = vec![
            SourceFile {
                path: "ok.yaml".into(),
                bytes: b"apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n".to_vec(),
            },
            SourceFile {
                path: "bad1.yaml".into(),
                bytes: b"kind: Namespace\nmetadata: {name: a}\n".to_vec(),
            },
            SourceFile {
                path: "bad2.yaml".into(),
                bytes: b"a: [\n".to_vec(),
            },
        ];
        let err = validate_plain(files, "x", false).unwrap_err().to_string();
        assert!(err.starts_with("2 invalid manifest(s)"), "{err}");
        assert!(
            err.contains("bad1.yaml: document 1 (line 1): missing apiVersion"),
            "{err}"
        );
        assert!(err.contains("bad2.yaml: line"), "{err}");
    }
}
