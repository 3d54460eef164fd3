//! Where bundles come from: the hub (long-poll for the desired state with its ETag,
//! downloads resumed with `Range`), mirrors serving the same bytes, and an import folder.
//! Trust never comes from the transport: everything goes through verification.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use skiff_proto::Sha256Digest;
use skiff_proto::api::{Desired, Report, ReportAck, limits};
use skiff_proto::dsse::Envelope;

/// A transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The hub could not be reached, or answered 5xx/429: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The hub refused (401/403/404): configuration needs fixing.
    #[error("{0}")]
    Refused(String),
    /// Local I/O failed.
    #[error("{0}")]
    Io(String),
    /// A source served bytes that are not the signed bundle (sha256 or size differ).
    #[error("{0}")]
    Mismatch(String),
}

/// A client for the hub and mirrors.
pub struct HubClient {
    http: reqwest::Client,
    hub: Option<String>,
    mirrors: Vec<String>,
    cluster: String,
    token: Option<String>,
}

/// A transport error with its causes, each said once: "connection refused", a DNS failure,
/// a TLS handshake alert (with a hint when the hub may be plain HTTP).
fn transport(what: &str, e: &reqwest::Error) -> SourceError {
    let mut message = format!("{what}: {}", skiff_proto::error_chain(e));
    let lower = message.to_ascii_lowercase();
    if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version number")
    {
        message.push_str(" (is the hub plain HTTP? use an http:// URL, or give the hub tls: in its config)");
    } else if lower.contains("caused as end entity")
        || lower.contains("causedasendentity")
        || lower.contains("ca used as end entity")
    {
        message.push_str(" (the hub presents its CA certificate as its own: give it a leaf certificate signed by that CA; see deploy/README.md)");
    } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        message.push_str(
            " (the hub's certificate is not signed by a CA the agent trusts: set ca_file to the CA's PEM)",
        );
    }
    SourceError::Unavailable(message)
}

/// Reads at most `cap` bytes of a body; `Err` with what was wrong when it is longer (the
/// rest is never read). The hub and mirrors are answered within budgets, not trusted.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    if let Some(len) = resp.content_length()
        && len > cap as u64
    {
        return Err(format!("answer of {len} bytes, more than the limit of {cap}"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > cap {
            return Err(format!("answer longer than the limit of {cap} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The start of an error body (never more than [`limits::MAX_ERROR_BODY`] bytes read).
async fn error_body(mut resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    while out.len() < limits::MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                out.extend_from_slice(&chunk[..chunk.len().min(limits::MAX_ERROR_BODY - out.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_error(what: &str, status: StatusCode, body: &str) -> SourceError {
    let message = format!("{what}: {status}: {}", body.chars().take(300).collect::<String>());
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        SourceError::Unavailable(message)
    } else if status == StatusCode::NOT_FOUND {
        SourceError::Refused(format!(
            "{message} (no such route: is `hub` the hub's URL, without a path, and is the cluster name right?)"
        ))
    } else if status == StatusCode::UNAUTHORIZED {
        SourceError::Refused(format!(
            "{message} (the hub does not know this token: check token_file, or rotate the cluster's token)"
        ))
    } else {
        SourceError::Refused(message)
    }
}

impl HubClient {
    /// A client; `ca` is trusted in addition to the system roots.
    pub fn new(
        hub: Option<String>,
        mirrors: Vec<String>,
        cluster: String,
        token: Option<String>,
        ca: Option<&Path>,
        read_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("skiff-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(read_timeout);
        if let Some(ca) = ca {
            let pem =
                std::fs::read(ca).map_err(|e| anyhow::anyhow!("reading CA file {}: {e}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Self {
            http: b.build()?,
            hub: hub.map(|h| h.trim_end_matches('/').to_owned()),
            mirrors: mirrors
                .into_iter()
                .map(|m| m.trim_end_matches('/').to_owned())
                .collect(),
            cluster,
            token,
        })
    }

    fn hub(&self) -> Result<&str, SourceError> {
        self.hub
            .as_deref()
            .ok_or_else(|| SourceError::Refused("no hub configured".into()))
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// The desired state; `Ok(None)` when unchanged since `etag` (after waiting up to `wait`).
    pub async fn desired(
        &self,
        etag: Option<&str>,
        wait: Duration,
    ) -> Result<Option<(Desired, String)>, SourceError> {
        let url = format!(
            "{}/v1/clusters/{}/desired?wait={}",
            self.hub()?,
            self.cluster,
            wait.as_secs()
        );
        let mut req = self.auth(self.http.get(&url));
        if let Some(e) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let what = format!("GET {}", url.split('?').next().unwrap_or(&url));
        let resp = req.send().await.map_err(|e| transport(&what, &e))?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(None),
            StatusCode::OK => {
                let etag = resp
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = read_capped(resp, limits::MAX_DESIRED_BYTES)
                    .await
                    .map_err(|e| SourceError::Unavailable(format!("{what}: {e}")))?;
                let d = serde_json::from_slice::<Desired>(&body)
                    .map_err(|e| SourceError::Unavailable(format!("{what}: unreadable answer: {e}")))?;
                Ok(Some((d, etag)))
            }
            s => Err(status_error(&what, s, &error_body(resp).await)),
        }
    }

    /// Downloads a bundle into `partial` (resuming what is there), from the mirrors first,
    /// then the hub; returns the bytes once they have the expected size and digest. `digest`
    /// and `size` come from a statement whose signature verified: never more is read.
    pub async fn download(
        &self,
        bundle_url: &str,
        digest: &Sha256Digest,
        size: u64,
        partial: &Path,
    ) -> Result<(), SourceError> {
        let mut urls: Vec<(String, bool)> = self
            .mirrors
            .iter()
            .map(|m| (format!("{m}/{digest}.tar.gz"), false))
            .collect();
        if let Some(hub) = &self.hub {
            urls.push((format!("{hub}{bundle_url}"), true));
        }
        let mut last = SourceError::Refused("no hub or mirror to download from".into());
        for (url, authed) in urls {
            match self.download_from(&url, authed, digest, size, partial).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, url = %url, "Download failed; trying the next source");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn download_from(
        &self,
        url: &str,
        authed: bool,
        digest: &Sha256Digest,
        size: u64,
        partial: &Path,
    ) -> Result<(), SourceError> {
        use tokio::io::AsyncWriteExt as _;
        let have = tokio::fs::metadata(partial).await.map(|m| m.len()).unwrap_or(0);
        let have = if have > size { 0 } else { have };
        let mut req = self.http.get(url);
        if authed {
            req = self.auth(req);
        }
        if have > 0 && have < size {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let what = format!("GET {url}");
        let mut resp = req.send().await.map_err(|e| transport(&what, &e))?;
        let append = match resp.status() {
            StatusCode::PARTIAL_CONTENT => true,
            StatusCode::OK => false,
            s => return Err(status_error(&what, s, &error_body(resp).await)),
        };
        let io = |e: std::io::Error| SourceError::Io(format!("{}: {e}", partial.display()));
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .await
            .map_err(io)?;
        let mut written = if append { have } else { 0 };
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    written += chunk.len() as u64;
                    if written > size {
                        drop(file);
                        let _ = tokio::fs::remove_file(partial).await;
                        return Err(SourceError::Unavailable(format!(
                            "{what}: more bytes than the statement's {size}"
                        )));
                    }
                    file.write_all(&chunk).await.map_err(io)?;
                }
                Ok(None) => break,
                Err(e) => {
                    // Keep what arrived: the next attempt resumes from there.
                    let _ = file.flush().await;
                    return Err(SourceError::Unavailable(format!(
                        "{what}: interrupted after {written} bytes: {e}"
                    )));
                }
            }
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        // A source serving other bytes (a stale or tampered mirror) must not stand in for
        // the next source: check the file against what the hub named before handing it on
        // (read as a stream; the signed statement is checked by verification afterwards).
        let path = partial.to_owned();
        let (len, actual) = tokio::task::spawn_blocking(move || crate::verify::file_sha256(&path, size))
            .await
            .map_err(|e| SourceError::Io(e.to_string()))?
            .map_err(io)?;
        if len != size || actual != *digest {
            let _ = tokio::fs::remove_file(partial).await;
            return Err(SourceError::Mismatch(format!(
                "{what}: got {len} bytes whose sha256 is not the signed {digest}"
            )));
        }
        tracing::debug!(digest = %digest, bytes = len, "Bundle downloaded");
        Ok(())
    }

    /// The trust roots after `version`, oldest first (at most what one answer carries).
    pub async fn roots_after(&self, version: u64) -> Result<Vec<Envelope>, SourceError> {
        let url = format!("{}/v1/roots?after={version}", self.hub()?);
        let what = format!("GET {url}");
        let cap =
            skiff_proto::api::limits::MAX_ROOTS_PER_ANSWER * skiff_proto::root::limits::MAX_ENVELOPE_BYTES;
        let roots: Vec<Envelope> = self.short_json(self.http.get(&url), &what, cap).await?;
        if roots.len() > skiff_proto::api::limits::MAX_ROOTS_PER_ANSWER {
            return Err(SourceError::Unavailable(format!(
                "{what}: {} roots in one answer, more than {}",
                roots.len(),
                skiff_proto::api::limits::MAX_ROOTS_PER_ANSWER
            )));
        }
        Ok(roots)
    }

    /// Sends reports (oldest first); Ok once the hub stored them.
    pub async fn send_reports(&self, reports: &[Report]) -> Result<ReportAck, SourceError> {
        let url = format!("{}/v1/clusters/{}/reports", self.hub()?, self.cluster);
        let what = format!("POST {url}");
        // A report batch is small: a hub that has not answered in 20 s is treated as down
        // (the batch waits in the outbox and goes again), not waited on for a long-poll's
        // time.
        self.short_json(self.http.post(&url).json(reports), &what, limits::MAX_ERROR_BODY)
            .await
    }

    /// A request the hub answers at once (not a long-poll): sent with the token, at most
    /// [`REPORT_TIMEOUT`], its JSON answer read within `cap` bytes.
    async fn short_json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        cap: usize,
    ) -> Result<T, SourceError> {
        let resp = self
            .auth(req.timeout(REPORT_TIMEOUT))
            .send()
            .await
            .map_err(|e| transport(what, &e))?;
        if !resp.status().is_success() {
            let s = resp.status();
            return Err(status_error(what, s, &error_body(resp).await));
        }
        let body = read_capped(resp, cap)
            .await
            .map_err(|e| SourceError::Unavailable(format!("{what}: {e}")))?;
        serde_json::from_slice(&body).map_err(|e| SourceError::Unavailable(format!("{what}: {e}")))
    }
}

/// Longest a report delivery may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// A complete `<sha256>.tar.gz` + `<sha256>.dsse.json` pair found in the import folder.
#[derive(Debug)]
pub struct ImportPair {
    /// The bundle file.
    pub bundle: PathBuf,
    /// The envelope file.
    pub envelope: PathBuf,
    /// The envelope's bytes (read within [`limits::MAX_ENVELOPE_BYTES`]).
    pub envelope_bytes: Vec<u8>,
    /// What identifies this version of the files: (bundle size, bundle mtime, envelope
    /// size, envelope mtime). A rejected pair is not looked at again until it changes.
    pub stamp: ImportStamp,
}

/// What identifies a version of import files: sizes and modification times.
pub type ImportStamp = (u64, std::time::SystemTime, u64, std::time::SystemTime);

/// Files named `*.assignment.json` in the import folder (regular files within the
/// assignment envelope cap), with their (size, mtime) stamp, sorted by name.
pub fn scan_assignment_files(dir: &Path) -> Vec<(PathBuf, ImportStamp)> {
    scan_files(
        dir,
        ".assignment.json",
        skiff_proto::assignment::limits::MAX_ENVELOPE_BYTES as u64,
    )
}

/// Files named `*.root.json` in the import folder (regular files within the root cap),
/// with their stamp, sorted by name (at most the longest walk of them).
pub fn scan_root_files(dir: &Path) -> Vec<(PathBuf, ImportStamp)> {
    let mut files = scan_files(
        dir,
        ".root.json",
        skiff_proto::root::limits::MAX_ENVELOPE_BYTES as u64,
    );
    files.truncate(skiff_proto::root::limits::MAX_WALK);
    files
}

fn scan_files(dir: &Path, suffix: &str, cap: u64) -> Vec<(PathBuf, ImportStamp)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, ImportStamp)> = entries
        .flatten()
        .take(10_000)
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| {
            let meta = std::fs::symlink_metadata(e.path()).ok()?;
            let small = meta.len() <= cap;
            let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            (meta.is_file() && small).then(|| (e.path(), (meta.len(), mtime, 0, std::time::UNIX_EPOCH)))
        })
        .collect();
    out.sort();
    out
}

/// The pairs in `dir` worth offering: the envelope is a regular file within the envelope
/// cap, and the bundle a regular file as large as its statement says (a half-copied pair is
/// left for a later scan). Nothing larger than the caps is read; bundles are not read here.
pub fn scan_import_dir(dir: &Path) -> Vec<ImportPair> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten().take(10_000) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(digest) = name.strip_suffix(".dsse.json") else {
            continue;
        };
        if digest.parse::<Sha256Digest>().is_err() {
            continue;
        }
        let bundle = dir.join(format!("{digest}.tar.gz"));
        let (Ok(env_meta), Ok(bundle_meta)) = (
            std::fs::symlink_metadata(e.path()),
            std::fs::symlink_metadata(&bundle),
        ) else {
            continue;
        };
        if !env_meta.is_file() || !bundle_meta.is_file() || env_meta.len() > limits::MAX_ENVELOPE_BYTES {
            continue;
        }
        let Ok(env_bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let Ok(envelope) = Envelope::from_json(&env_bytes) else {
            continue;
        };
        let size = envelope
            .payload_bytes()
            .ok()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .and_then(|s| s.pointer("/bundle/size").and_then(serde_json::Value::as_u64));
        if size == Some(bundle_meta.len()) {
            let mtime = |m: &std::fs::Metadata| m.modified().unwrap_or(std::time::UNIX_EPOCH);
            out.push(ImportPair {
                stamp: (
                    bundle_meta.len(),
                    mtime(&bundle_meta),
                    env_meta.len(),
                    mtime(&env_meta),
                ),
                bundle,
                envelope: e.path(),
                envelope_bytes: env_bytes,
            });
        }
    }
    out.sort_by(|a, b| a.envelope.cmp(&b.envelope));
    out
}
