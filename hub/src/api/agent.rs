//! Agents' routes: desired state (ETag, long-poll), bundle downloads (Range), reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_proto::Sha256Digest;
use skiff_proto::api::{MAX_WAIT_SECONDS, Report, ReportAck};

use super::auth::{Caller, Denied, caller, require_cluster, require_cluster_token};
use super::{AppState, error};
use crate::fleet::DesiredAnswer;

fn desired_response(answer: &DesiredAnswer) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                header::ETAG,
                HeaderValue::from_str(&answer.etag).expect("etag header"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        answer.body.clone(),
    )
        .into_response()
}

fn not_modified(etag: &str) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(header::ETAG, HeaderValue::from_str(etag).expect("etag header"))],
    )
        .into_response()
}

fn matching_etag(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn etag_listed(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .any(|t| t.trim() == etag || t.trim() == "*")
}

/// The answer to a desired-state request, whichever server path received it.
pub(crate) enum DesiredReply {
    /// 200 with this body.
    Body(Arc<DesiredAnswer>),
    /// 304 with this ETag.
    NotModified(String),
    /// Refused.
    Denied(Denied),
    /// 400.
    BadRequest(&'static str),
}

/// Answers `GET /v1/clusters/{cluster}/desired`: authentication, ETag, and the long-poll
/// (`wait`). Holds nothing of the request while it waits: for ten thousand agents that is
/// the difference between a few and a few hundred MiB.
pub(crate) async fn desired_reply(
    state: &AppState,
    cluster: &str,
    token: Option<&str>,
    if_none_match: Option<String>,
    wait: Option<&str>,
) -> DesiredReply {
    if let Err(d) = require_cluster_token(state, token, cluster) {
        return DesiredReply::Denied(d);
    }
    let wait = match wait.map(str::parse::<u64>) {
        None => 0,
        Some(Ok(w)) => w.min(MAX_WAIT_SECONDS),
        Some(Err(_)) => return DesiredReply::BadRequest("wait must be a whole number of seconds"),
    };
    state.fleet.touch(cluster);
    // Subscribe before computing, so no change between the two is missed.
    let mut changes = state.fleet.subscribe();
    let forbidden = || {
        DesiredReply::Denied(Denied::Forbidden(
            "this token is not allowed on this cluster's routes",
        ))
    };
    let Some(answer) = state.fleet.desired(cluster) else {
        return forbidden();
    };
    if !if_none_match
        .as_deref()
        .is_some_and(|tags| etag_listed(tags, &answer.etag))
    {
        return DesiredReply::Body(answer);
    }
    drop(if_none_match);
    if wait == 0 {
        return DesiredReply::NotModified(answer.etag.clone());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                match state.fleet.desired(cluster) {
                    Some(now) if now.etag != answer.etag => return DesiredReply::Body(now),
                    Some(_) => {}
                    None => return forbidden(),
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            _ = shutdown.changed() => break,
        }
    }
    DesiredReply::NotModified(answer.etag.clone())
}

/// `GET /v1/clusters/{cluster}/desired[?wait=SECONDS]` (through the router; most agents'
/// requests take the direct path in [`super::fastpath`]).
pub async fn desired(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::auth::bearer_value)
        .map(str::to_owned);
    let if_none_match = matching_etag(&headers);
    let wait = query.get("wait").cloned();
    drop(headers);
    drop(query);
    match desired_reply(&state, &cluster, token.as_deref(), if_none_match, wait.as_deref()).await {
        DesiredReply::Body(a) => desired_response(&a),
        DesiredReply::NotModified(etag) => not_modified(&etag),
        DesiredReply::Denied(d) => d.into_response(),
        DesiredReply::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
    }
}

/// A byte range of a body of `len` bytes: `bytes=a-b`, `bytes=a-`, `bytes=-n`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, len.checked_sub(1)?),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(len.checked_sub(1)?)),
    };
    (start <= end && start < len).then_some((start, end))
}

/// `GET /v1/bundles/{sha256}`
pub async fn bundle(
    State(state): State<Arc<AppState>>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match caller(&state, &headers) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let not_found = || error(StatusCode::NOT_FOUND, "no such bundle for this token");
    let Ok(digest) = sha256.parse::<Sha256Digest>() else {
        return not_found();
    };
    let allowed = match &who {
        Caller::Admin => state.fleet.holds(&digest),
        Caller::Cluster(c) => state.fleet.may_download(c, &digest),
    };
    if !allowed {
        return not_found();
    }
    if let Caller::Cluster(c) = &who {
        state.fleet.touch(c);
    }
    let path = state.fleet.store().blob_path(&digest);
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            tracing::error!(error = %e, digest = %digest, "Bundle blob unreadable");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "bundle unavailable");
        }
    };
    let len = bytes.len() as u64;
    let etag = format!("\"{digest}\"");
    let mut response = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, bytes).into_response(),
        Some(range) => match parse_range(range, len) {
            Some((start, end)) => {
                let mut r = (
                    StatusCode::PARTIAL_CONTENT,
                    bytes.slice(start as usize..=end as usize),
                )
                    .into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("header"),
                );
                r
            }
            None => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("header"),
                );
                return r.into_response();
            }
        },
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("header"));
    response
}

/// Parses a report body: a JSON array of reports (or one report).
pub(crate) fn parse_reports(body: &[u8]) -> Result<Vec<Report>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let list = if value.is_array() {
        value
    } else {
        serde_json::Value::Array(vec![value])
    };
    serde_path_to_error::deserialize(list).map_err(|e| format!("report {}: {}", e.path(), e.inner()))
}

/// `POST /v1/clusters/{cluster}/reports`
pub async fn reports(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = require_cluster(&state, &headers, &cluster) {
        return r.into_response();
    }
    store_reports(&state, &cluster, &body).await
}

pub(crate) async fn store_reports(state: &Arc<AppState>, cluster: &str, body: &[u8]) -> Response {
    let reports = match parse_reports(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let fleet = state.fleet.clone();
    let name = cluster.to_owned();
    match tokio::task::spawn_blocking(move || fleet.add_reports(&name, reports)).await {
        Ok(Ok(flags)) => {
            let stored = flags.iter().filter(|f| **f).count();
            axum::Json(ReportAck {
                stored,
                duplicates: flags.len() - stored,
            })
            .into_response()
        }
        Ok(Err(crate::fleet::FleetError::UnknownCluster(_))) => {
            error(StatusCode::NOT_FOUND, "no such cluster")
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
    }
}
