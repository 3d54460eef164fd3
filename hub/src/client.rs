//! A client for a running hub's admin API, used by the admin commands.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// Where the hub is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct HubClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Reads a token from a file, trimmed.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let t =
        std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
    let t = t.trim().to_owned();
    if t.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(t)
}

impl HubClient {
    /// A client for `base` (e.g. `https://hub.example:8443`), trusting `ca` in addition to
    /// the system roots when given.
    pub fn new(base: &str, token: String, ca: Option<&PathBuf>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("skiff-hub/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(60));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
            let cert =
                reqwest::Certificate::from_pem(&pem).with_context(|| format!("CA file {}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: builder.build().context("building the HTTP client")?,
        })
    }

    /// The hub's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns status and body; transport errors name the hub.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: is the hub running and reachable?"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends a request expecting 2xx JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self
            .send(
                method.clone(),
                path,
                body.map(|b| serde_json::to_vec(&b).expect("serializes")),
            )
            .await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            let hint = match status {
                StatusCode::UNAUTHORIZED => " (check the admin token)",
                StatusCode::FORBIDDEN => " (this token is not an admin token)",
                _ => "",
            };
            bail!("{method} {}{path}: {status}: {message}{hint}", self.base);
        }
        let body = if bytes.is_empty() { b"null".to_vec() } else { bytes };
        serde_json::from_slice(&body)
            .with_context(|| format!("{method} {}{path}: unexpected answer", self.base))
    }
}
