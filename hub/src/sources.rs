//! Following Git: each repository is mirrored into the data dir and fetched on its poll
//! interval or when a webhook says so; every channel on it is then built from its branch.
//! A fetch that fails backs off and retries; a commit that fails to build is recorded on its
//! channel; in both cases the last good bundles go on being served.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use skiff_proto::keys::SigningKey;
use skiff_proto::statement::Timestamp;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::build::{BuildError, BuildRequest, Input, build};
use crate::config::{ChannelConfig, HubConfig, RepoConfig};
use crate::fleet::Fleet;
use crate::git::{Repo, strip_credentials};
use crate::process;
use crate::store::{BuildFailure, ChannelRecord};
use crate::telemetry::Metrics;

/// The Git side of the hub.
pub struct Sources {
    config: Arc<HubConfig>,
    fleet: Arc<Fleet>,
    key: Arc<SigningKey>,
    metrics: Arc<Metrics>,
    triggers: HashMap<String, Arc<Notify>>,
    /// The last fetch error per repository, cleared by the next good fetch.
    fetch_errors: std::sync::Mutex<HashMap<String, String>>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// git failed or timed out.
    #[error("{0}")]
    Git(String),
    /// A credential file could not be read.
    #[error("reading {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Sources {
    /// The sources of a configuration.
    pub fn new(
        config: Arc<HubConfig>,
        fleet: Arc<Fleet>,
        key: Arc<SigningKey>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let triggers = config
            .repos
            .iter()
            .map(|r| (r.name.clone(), Arc::new(Notify::new())))
            .collect();
        Self {
            config,
            fleet,
            key,
            metrics,
            triggers,
            fetch_errors: Default::default(),
        }
    }

    /// Asks for an immediate fetch of `repo`; false if there is no such repository.
    pub fn trigger(&self, repo: &str) -> bool {
        match self.triggers.get(repo) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Asks for an immediate fetch of the repository behind `channel`.
    pub fn trigger_channel(&self, channel: &str) -> bool {
        self.config
            .channels
            .iter()
            .find(|c| c.name == channel)
            .is_some_and(|c| self.trigger(&c.repo))
    }

    /// Why the last fetch of `repo` failed, if it did (cleared by the next good one).
    pub fn fetch_error(&self, repo: &str) -> Option<String> {
        self.fetch_errors.lock().expect("fetch errors").get(repo).cloned()
    }

    /// The repository config named `name`.
    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.config.repos.iter().find(|r| r.name == name)
    }

    /// Starts one follow loop per repository.
    pub fn spawn(self: &Arc<Self>) {
        for repo in &self.config.repos {
            let this = self.clone();
            let repo = repo.clone();
            tokio::spawn(async move { this.follow(repo).await });
        }
    }

    async fn follow(self: Arc<Self>, repo: RepoConfig) {
        let trigger = self.triggers[&repo.name].clone();
        let mut failures = 0u32;
        loop {
            let this = self.clone();
            let r = repo.clone();
            let result = tokio::task::spawn_blocking(move || this.sync(&r)).await;
            let wait = match result {
                Ok(Ok(())) => {
                    failures = 0;
                    self.fetch_errors.lock().expect("fetch errors").remove(&repo.name);
                    repo.poll
                }
                Ok(Err(error)) => {
                    failures += 1;
                    self.fetch_errors
                        .lock()
                        .expect("fetch errors")
                        .insert(repo.name.clone(), error.to_string());
                    let backoff = backoff(failures, repo.poll);
                    warn!(%error, repo = %repo.name, retry_in = ?backoff, "Fetch failed; serving the last good bundles");
                    backoff
                }
                Err(join) => {
                    warn!(error = %join, repo = %repo.name, "Sync task failed");
                    repo.poll
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = trigger.notified() => {}
            }
        }
    }

    /// Fetches a repository and builds its channels (blocking).
    pub fn sync(&self, repo: &RepoConfig) -> Result<(), FetchError> {
        let started = std::time::Instant::now();
        let mirror = self.fetch(repo)?;
        tracing::debug!(repo = %repo.name, elapsed_ms = started.elapsed().as_millis() as u64, "Fetched");
        for channel in self.config.channels.iter().filter(|c| c.repo == repo.name) {
            self.build_channel(&mirror, channel);
        }
        Ok(())
    }

    fn mirror_path(&self, repo: &RepoConfig) -> PathBuf {
        self.config
            .data_dir
            .join("git")
            .join(format!("{}.git", repo.name))
    }

    fn git(&self, repo: &RepoConfig, mirror: &std::path::Path, args: &[&str]) -> Result<Vec<u8>, FetchError> {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(mirror)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0");
        let creds = &repo.credentials;
        if let Some(path) = &creds.token_file {
            let token = std::fs::read_to_string(path).map_err(|source| FetchError::Credentials {
                path: path.clone(),
                source,
            })?;
            let user = creds.username.as_deref().unwrap_or("git");
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", token.trim()));
            // In the environment, not on the command line, where `ps` would show it.
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", format!("Authorization: Basic {basic}"));
        }
        if let Some(key) = &creds.ssh_key_file {
            let mut ssh = format!(
                "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
                key.display()
            );
            if let Some(known) = &creds.known_hosts_file {
                ssh.push_str(&format!(" -o UserKnownHostsFile='{}'", known.display()));
            }
            cmd.env("GIT_SSH_COMMAND", ssh);
        }
        let out =
            // git's own output here is a line or two; 1 MiB is plenty.
            process::run(cmd, self.config.command_timeout, 1 << 20).map_err(|e| FetchError::Git(e.to_string()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(FetchError::Git(format!(
                "git {} ({}): {}",
                args.iter()
                    .find(|a| !a.starts_with('-') && !a.contains('='))
                    .copied()
                    .unwrap_or_default(),
                strip_credentials(&repo.url),
                stderr.replace(&repo.url, &strip_credentials(&repo.url))
            )));
        }
        Ok(out.stdout)
    }

    fn fetch(&self, repo: &RepoConfig) -> Result<PathBuf, FetchError> {
        let mirror = self.mirror_path(repo);
        if !mirror.join("HEAD").exists() {
            std::fs::create_dir_all(&mirror).map_err(|source| FetchError::Credentials {
                path: mirror.clone(),
                source,
            })?;
            self.git(repo, &mirror, &["init", "--quiet", "--bare"])?;
        }
        // The URL is set on every fetch so a changed config takes effect.
        let url = local_url(&repo.url);
        let _ = self.git(repo, &mirror, &["remote", "remove", "origin"]);
        self.git(repo, &mirror, &["remote", "add", "origin", &url])?;
        // Objects are checked as they arrive: a tree entry named `..` or `.` (or a path git
        // itself could never check out) fails the fetch, whatever the remote accepted.
        let result = self.git(
            repo,
            &mirror,
            &[
                "-c",
                "fetch.fsckObjects=true",
                "-c",
                "fetch.fsck.hasDotdot=error",
                "-c",
                "fetch.fsck.hasDot=error",
                "-c",
                "fetch.fsck.fullPathname=error",
                "-c",
                "fetch.fsck.hasDotgit=error",
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                "origin",
                "+refs/heads/*:refs/heads/*",
            ],
        );
        self.metrics.fetched(&repo.name, result.is_ok());
        result?;
        Ok(mirror)
    }

    /// Builds one channel from the mirror's branch; records success or failure on it.
    fn build_channel(&self, mirror: &std::path::Path, channel: &ChannelConfig) {
        let repo = Repo::new(mirror);
        let mut record = self.fleet.channel(&channel.name).unwrap_or_default();
        let commit = match repo.resolve_commit(&format!("refs/heads/{}", channel.branch)) {
            Ok(c) => c,
            Err(_) => {
                let branches = repo.branches(20);
                let message = if branches.is_empty() {
                    format!(
                        "branch {:?} does not exist: the repository has no branches",
                        channel.branch
                    )
                } else {
                    format!(
                        "branch {:?} does not exist in repository {:?}; its branches: {}",
                        channel.branch,
                        channel.repo,
                        branches.join(", ")
                    )
                };
                self.fail(channel, record, String::new(), message);
                return;
            }
        };
        // Everything the bundle depends on; the same input never makes a new generation.
        let input_key = format!(
            "{commit}|{}|{:?}|{}",
            channel.path,
            channel.render,
            channel.namespace.as_deref().unwrap_or("")
        );
        if record.built_from.as_deref() == Some(input_key.as_str()) {
            tracing::debug!(channel = %channel.name, commit = %commit, generation = record.generation, "Commit already built with these settings; nothing to do");
            if record.last_seen_commit.as_deref() != Some(commit.as_str()) {
                record.last_seen_commit = Some(commit);
                let _ = self.fleet.set_channel(&channel.name, record);
            }
            return;
        }
        tracing::debug!(channel = %channel.name, commit = %commit, "New commit or settings: building");
        let request = BuildRequest {
            input: Input::Git {
                repo: mirror.to_owned(),
                rev: commit.clone(),
                path: channel.path.clone(),
            },
            channel: channel.name.clone(),
            generation: record.generation + 1,
            default_namespace: channel.namespace.clone(),
            branch: Some(channel.branch.clone()),
            source_repo: Some(strip_credentials(
                &self
                    .repo(&channel.repo)
                    .map(|r| r.url.clone())
                    .unwrap_or_default(),
            )),
            expires_in: channel.expires_after,
            render: channel.render,
            timeout: self.config.command_timeout,
            substitute: channel.substitutes(),
        };
        let built = match build(&request, &self.key) {
            Ok(b) => b,
            Err(e) => {
                let message = match &e {
                    BuildError::Render(r) => r.to_string(),
                    other => other.to_string(),
                };
                self.fail(channel, record, commit, message);
                return;
            }
        };
        record.last_seen_commit = Some(commit.clone());
        record.last_error = None;
        record.built_from = Some(input_key);
        let content = content_digest(&built.manifest);
        if record.content == Some(content) && record.sha256.is_some() {
            // New commit, same rendered bytes: nothing new to serve.
            info!(channel = %channel.name, commit = %commit, generation = record.generation, "Commit renders to the current bundle");
            let _ = self.fleet.set_channel(&channel.name, record);
            return;
        }
        let digest = built.digest();
        if let Err(error) = self.fleet.store().put_blob(&digest, &built.tarball) {
            self.fail(channel, record, commit, format!("storing bundle: {error}"));
            return;
        }
        // Two-person rule: the root wants more signers for this channel than the hub's key.
        if let Some(role) = self
            .fleet
            .more_signers_needed(&channel.name, &self.key.public_key())
        {
            let generation = built.statement.generation;
            record.pending = Some(crate::store::PendingBuild {
                generation,
                sha256: digest,
                size: built.tarball.len() as u64,
                commit: Some(commit.clone()),
                envelope: built.envelope,
                content: Some(content),
                built: Timestamp::now(),
            });
            warn!(channel = %channel.name, generation, commit = %commit, threshold = role.threshold, "Bundle built and signed by the hub; the trust root wants more signatures for this channel: it waits for `skiff-hub sign --channel {}`", channel.name);
            if let Err(error) = self.fleet.set_channel(&channel.name, record) {
                warn!(%error, channel = %channel.name, "Recording the waiting bundle failed");
            }
            return;
        }
        record.pending = None;
        record.keep_current();
        record.generation = built.statement.generation;
        record.sha256 = Some(digest);
        record.size = built.tarball.len() as u64;
        record.commit = Some(commit.clone());
        record.envelope = Some(built.envelope);
        record.content = Some(content);
        record.updated = Some(Timestamp::now());
        let generation = record.generation;
        match self.fleet.set_channel(&channel.name, record) {
            Ok(()) => {
                self.metrics.bundle_built(&channel.name);
                info!(channel = %channel.name, generation, commit = %commit, digest = %digest, "Bundle built and signed");
            }
            Err(error) => warn!(%error, channel = %channel.name, "Recording the new bundle failed"),
        }
    }

    fn fail(&self, channel: &ChannelConfig, mut record: ChannelRecord, commit: String, message: String) {
        warn!(channel = %channel.name, commit = %commit, error = %message, generation = record.generation, "Build failed; keeping the last good generation");
        // Counted once per failing commit, not once per retry of the same one.
        if record.last_error.as_ref().is_none_or(|e| e.commit != commit) {
            self.metrics.build_failed(&channel.name);
        }
        if !commit.is_empty() {
            record.last_seen_commit = Some(commit.clone());
        }
        record.last_error = Some(BuildFailure {
            commit,
            message,
            at: Timestamp::now(),
        });
        if let Err(error) = self.fleet.set_channel(&channel.name, record) {
            warn!(%error, channel = %channel.name, "Recording the build failure failed");
        }
    }
}

/// What a bundle holds, regardless of the commit it was built from.
fn content_digest(manifest: &skiff_proto::bundle::BundleManifest) -> skiff_proto::Sha256Digest {
    let key = serde_json::json!({"files": manifest.files, "defaultNamespace": manifest.default_namespace});
    skiff_proto::Sha256Digest::of(key.to_string().as_bytes())
}

/// Exponential backoff from 1 s, doubling per failure, at most `max` (and 5 minutes).
fn backoff(failures: u32, max: Duration) -> Duration {
    let exp = Duration::from_secs(1u64 << failures.min(9).saturating_sub(1));
    exp.min(max.max(Duration::from_secs(1)))
        .min(Duration::from_secs(300))
}

/// Plain paths become absolute, so the mirror (another working directory) finds them.
fn local_url(url: &str) -> String {
    if url.contains("://") || url.contains('@') {
        return url.to_owned();
    }
    std::fs::canonicalize(url).map_or_else(|_| url.to_owned(), |p| p.display().to_string())
}
