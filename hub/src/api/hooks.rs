//! Git push webhooks (`POST /v1/hooks/git/{repo}`) from GitHub, Gitea and GitLab: the shared
//! secret is checked (HMAC-SHA256 signature, or GitLab's token header) before anything else,
//! then the repository is fetched at once if the push touched a followed branch.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use super::{AppState, error};
use crate::fleet::constant_time_eq;

fn hex_hmac(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    skiff_proto::digest::hex(&mac.finalize().into_bytes())
}

/// Whether the request carries proof of the shared secret.
pub fn authentic(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let expected = hex_hmac(secret.as_bytes(), body);
    if let Some(sig) = header("x-hub-signature-256").and_then(|s| s.strip_prefix("sha256=")) {
        return constant_time_eq(&sig.to_ascii_lowercase(), &expected);
    }
    if let Some(sig) = header("x-gitea-signature") {
        return constant_time_eq(&sig.to_ascii_lowercase(), &expected);
    }
    if let Some(token) = header("x-gitlab-token") {
        return constant_time_eq(token, secret);
    }
    false
}

/// The delivery id GitHub, Gitea and GitLab send with each webhook (the same on a redelivery).
fn delivery_id(headers: &HeaderMap) -> Option<&str> {
    ["x-github-delivery", "x-gitea-delivery", "x-gitlab-event-uuid"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .filter(|id| !id.is_empty() && id.len() <= 128)
}

/// Recent delivery ids remembered to ignore replays.
const DELIVERIES_KEPT: usize = 4096;

/// Whether this delivery is new (and remembers it): a captured, signed webhook replayed
/// does nothing.
fn first_delivery(state: &AppState, repo: &str, id: &str) -> bool {
    let key = format!("{repo}/{id}");
    let mut seen = state.deliveries.lock().expect("deliveries");
    if seen.contains(&key) {
        return false;
    }
    if seen.len() >= DELIVERIES_KEPT {
        seen.pop_front();
    }
    seen.push_back(key);
    true
}

/// `POST /v1/hooks/git/{repo}`
pub async fn git(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(config) = state.sources.repo(&repo) else {
        return error(StatusCode::NOT_FOUND, "no such repository");
    };
    let Some(secret_file) = &config.webhook_secret_file else {
        return error(
            StatusCode::FORBIDDEN,
            "webhooks are not enabled for this repository (no webhook_secret_file)",
        );
    };
    let secret = match std::fs::read_to_string(secret_file) {
        Ok(s) => s.trim().to_owned(),
        Err(e) => {
            tracing::error!(error = %e, repo = %repo, "Webhook secret unreadable");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "webhook secret unavailable");
        }
    };
    if crate::config::check_secret(&secret).is_err() {
        tracing::error!(repo = %repo, "Webhook secret too short; refusing webhooks until it is replaced");
        return error(StatusCode::FORBIDDEN, "webhook secret too short on the hub");
    }
    if !authentic(&secret, &headers, &body) {
        tracing::warn!(repo = %repo, "Webhook with a bad or missing signature refused");
        return error(StatusCode::UNAUTHORIZED, "bad or missing webhook signature");
    }
    if let Some(id) = delivery_id(&headers)
        && !first_delivery(&state, &repo, id)
    {
        tracing::info!(repo = %repo, delivery = id, "Webhook delivery seen before; ignored");
        return (
            StatusCode::OK,
            Json(serde_json::json!({"repo": repo, "fetch": false, "duplicate": true})),
        )
            .into_response();
    }
    // Pings and pushes to branches no channel follows trigger nothing.
    let pushed = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("ref").and_then(|r| r.as_str()).map(str::to_owned));
    let followed = match &pushed {
        None => true,
        Some(r) => state
            .config
            .channels
            .iter()
            .any(|c| c.repo == repo && r.strip_prefix("refs/heads/") == Some(c.branch.as_str())),
    };
    if followed {
        state.sources.trigger(&repo);
        tracing::info!(repo = %repo, git_ref = pushed.as_deref().unwrap_or("-"), "Webhook: fetching now");
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"repo": repo, "fetch": followed})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_gitea_and_gitlab_proofs() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(hex_hmac(b"It's a Secret to Everybody", b"Hello, World!"), sig);
        let mut h = HeaderMap::new();
        h.insert("x-hub-signature-256", format!("sha256={sig}").parse().unwrap());
        assert!(authentic("It's a Secret to Everybody", &h, b"Hello, World!"));
        assert!(!authentic("It's a Secret to Everybody", &h, b"Hello, World?"));
        let mut g = HeaderMap::new();
        g.insert("x-gitea-signature", sig.parse().unwrap());
        assert!(authentic("It's a Secret to Everybody", &g, b"Hello, World!"));
        let mut l = HeaderMap::new();
        l.insert("x-gitlab-token", "s3cret".parse().unwrap());
        assert!(authentic("s3cret", &l, b""));
        assert!(!authentic("other", &l, b""));
        assert!(!authentic("s3cret", &HeaderMap::new(), b""));
    }
}
