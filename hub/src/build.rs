//! `bundle build`: render a folder or a commit, write the bundle, sign its statement.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_proto::Sha256Digest;
use skiff_proto::bundle::{BundleError, BundleManifest, Limits, Source, write_bundle};
use skiff_proto::dsse::Envelope;
use skiff_proto::keys::{KeyError, SigningKey};
use skiff_proto::manifest::check_dns_label;
use skiff_proto::statement::{BundleRef, Statement, check_channel_name};

use crate::config::RenderMode;
use crate::git::{GitError, Repo, strip_credentials};
use crate::render::{self, RenderError};

/// Where the manifests come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A folder on disk.
    Dir(PathBuf),
    /// A folder inside a Git repository at a revision.
    Git {
        /// The repository (bare or not).
        repo: PathBuf,
        /// Any commit-ish.
        rev: String,
        /// Folder inside the repository; empty for the root.
        path: String,
    },
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// Where the manifests come from.
    pub input: Input,
    /// Channel name.
    pub channel: String,
    /// Generation to sign (1 or more).
    pub generation: u64,
    /// Default namespace for namespaced objects that name none.
    pub default_namespace: Option<String>,
    /// Branch to record; for Git input, defaults to the revision when it names a branch.
    pub branch: Option<String>,
    /// Repository to record; for Git input, defaults to the `origin` remote (no credentials).
    pub source_repo: Option<String>,
    /// The statement expires this long after it is made.
    pub expires_in: Option<Duration>,
    /// How to render.
    pub render: RenderMode,
    /// Longest a render may take.
    pub timeout: Duration,
    /// The channel substitutes values: `${…}` references are checked as placeholders.
    pub substitute: bool,
}

/// A built and signed bundle.
#[derive(Clone, Debug)]
pub struct Built {
    /// The bundle tarball.
    pub tarball: Vec<u8>,
    /// The signed statement.
    pub statement: Statement,
    /// The envelope carrying it.
    pub envelope: Envelope,
    /// The `skiff-bundle.json` inside the tarball.
    pub manifest: BundleManifest,
}

impl Built {
    /// The bundle's digest.
    pub fn digest(&self) -> Sha256Digest {
        self.statement.bundle.sha256
    }

    /// Writes `<sha256>.tar.gz` and `<sha256>.dsse.json` into `dir` (each to a temporary file,
    /// then renamed, so a reader never sees half a file). Returns both paths.
    pub fn write_to(&self, dir: &Path) -> Result<(PathBuf, PathBuf), BuildError> {
        std::fs::create_dir_all(dir).map_err(|source| BuildError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let tarball = dir.join(format!("{}.tar.gz", self.digest()));
        let envelope = dir.join(format!("{}.dsse.json", self.digest()));
        write_atomic(&tarball, &self.tarball)?;
        write_atomic(&envelope, &self.envelope.to_json())?;
        Ok((tarball, envelope))
    }
}

/// Building failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The request itself is wrong.
    #[error("{0}")]
    Request(String),
    /// The signing key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// Rendering or validation failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The bundle would break a format rule or limit.
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Renders, bundles and signs. Writes nothing; see [`Built::write_to`].
pub fn build(request: &BuildRequest, key: &SigningKey) -> Result<Built, BuildError> {
    check_channel_name(&request.channel)
        .map_err(|reason| BuildError::Request(format!("channel {:?}: {reason}", request.channel)))?;
    if request.generation == 0 {
        return Err(BuildError::Request("generation must be 1 or more".to_owned()));
    }
    if let Some(ns) = &request.default_namespace {
        check_dns_label(ns).map_err(|reason| BuildError::Request(format!("namespace {ns:?}: {reason}")))?;
    }

    let (files, source) = match &request.input {
        Input::Dir(dir) => {
            let origin = dir.display().to_string();
            let kustomize = match request.render {
                RenderMode::Plain => false,
                RenderMode::Kustomize => true,
                RenderMode::Auto => render::dir_is_kustomization(dir),
            };
            let files = if kustomize {
                render::kustomize_dir(dir, &origin, request.timeout, request.substitute)?
            } else {
                render::validate_plain(render::from_dir(dir)?, &origin, request.substitute)?
            };
            let source = Source {
                repo: request.source_repo.clone(),
                branch: request.branch.clone(),
                ..Source::default()
            };
            (files, source)
        }
        Input::Git { repo, rev, path } => {
            let repo = Repo::new(repo);
            let commit = repo.resolve_commit(rev)?;
            let path = crate::config::normalize_repo_path(path)
                .map_err(|reason| BuildError::Request(format!("path {reason}")))?;
            let origin = format!("{} at {commit} path {path:?}", repo.path().display());
            let entries = repo.list_tree(&commit, &path)?;
            let kustomize = match request.render {
                RenderMode::Plain => false,
                RenderMode::Kustomize => true,
                RenderMode::Auto => render::tree_is_kustomization(&entries),
            };
            let files = if kustomize {
                render::kustomize_git(
                    &repo,
                    &commit,
                    &path,
                    &origin,
                    request.timeout,
                    request.substitute,
                )?
            } else {
                render::validate_plain(render::from_git(&repo, entries)?, &origin, request.substitute)?
            };
            let source = Source {
                repo: request
                    .source_repo
                    .clone()
                    .or_else(|| repo.origin_url())
                    .map(|url| strip_credentials(&url)),
                branch: request
                    .branch
                    .clone()
                    .or_else(|| repo.is_branch(rev).then(|| rev.clone())),
                commit: Some(commit),
                path: (!path.is_empty()).then_some(path),
            };
            (files, source)
        }
    };

    let bundle = write_bundle(
        &request.channel,
        source.clone(),
        request.default_namespace.clone(),
        &files,
        &Limits::default(),
    )?;
    let mut statement = Statement::new(
        BundleRef {
            sha256: bundle.digest,
            size: bundle.bytes.len() as u64,
        },
        &request.channel,
        request.generation,
        source.commit,
    );
    statement.expires = request.expires_in.map(|d| statement.created.plus(d));
    let envelope = Envelope::sign_statement(&statement, &[key]);
    Ok(Built {
        tarball: bundle.bytes,
        statement,
        envelope,
        manifest: bundle.manifest,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let err = |source| BuildError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
