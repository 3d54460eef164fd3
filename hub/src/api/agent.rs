//! Agents' routes: desired state (ETag, long-poll), bundle downloads (Range), reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_proto::Sha256Digest;
use skiff_proto::api::{MAX_WAIT_SECONDS, Report, ReportAck, limits};

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
                // A token rotated (or a cluster removed) while the poll waited ends it.
                if !token.is_some_and(|t| state.fleet.token_is_for(cluster, t)) {
                    return DesiredReply::Denied(Denied::Unauthorized);
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

/// What a `Range` header asks of a body of `len` bytes (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// No usable range (absent, another unit, bad syntax, several ranges): the whole body.
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// A well-formed range that lies outside the body: 416.
    Unsatisfiable,
}

fn parse_range(value: Option<&str>, len: u64) -> RangeAsk {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole; // other units are ignored (§14.2)
    };
    if spec.contains(',') {
        return RangeAsk::Whole; // a server may ignore multiple ranges
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) if digits(b) => match b.parse::<u64>() {
            Ok(0) => RangeAsk::Unsatisfiable,
            Ok(n) if len > 0 => RangeAsk::Part(len.saturating_sub(n), len - 1),
            Ok(_) => RangeAsk::Unsatisfiable,
            Err(_) => RangeAsk::Whole,
        },
        // bytes=A- and bytes=A-B
        (false, _) if digits(a) && (b.is_empty() || digits(b)) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeAsk::Whole;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                b.parse::<u64>().unwrap_or(u64::MAX)
            };
            if end < start {
                RangeAsk::Whole // invalid syntax: ignored
            } else if start >= len {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(start, end.min(len - 1))
            }
        }
        _ => RangeAsk::Whole,
    }
}

/// A download's place in its cluster's share; given back when the body is done or dropped.
struct DownloadSlot {
    state: Arc<AppState>,
    cluster: String,
}

impl DownloadSlot {
    fn take(state: &Arc<AppState>, cluster: &str) -> Option<Self> {
        let mut running = state.downloads.lock().expect("downloads");
        let n = running.entry(cluster.to_owned()).or_insert(0);
        if *n >= state.config.limits.downloads_per_cluster.max(1) {
            return None;
        }
        *n += 1;
        Some(Self {
            state: state.clone(),
            cluster: cluster.to_owned(),
        })
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        let mut running = self.state.downloads.lock().expect("downloads");
        if let Some(n) = running.get_mut(&self.cluster) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.cluster);
            }
        }
    }
}

/// A file read that holds its download slot until the body ends.
struct SlotReader<R> {
    inner: R,
    _slot: Option<DownloadSlot>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SlotReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// `GET /v1/roots?after=N`: the trust roots after version N, oldest first (a page).
pub async fn roots(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<RootsQuery>,
) -> Response {
    if let Err(r) = caller(&state, &headers) {
        return r.into_response();
    }
    axum::Json(
        state
            .fleet
            .roots_after(q.after, skiff_proto::api::limits::MAX_ROOTS_PER_ANSWER),
    )
    .into_response()
}

/// `GET /v1/roots` query.
#[derive(Debug, serde::Deserialize)]
pub struct RootsQuery {
    /// Roots after this version.
    #[serde(default)]
    pub after: u64,
}

/// `GET /v1/bundles/{sha256}`: streamed from the blob file (never held whole in memory),
/// honouring `Range`; each cluster runs at most `limits.downloads_per_cluster` at once.
pub async fn bundle(
    State(state): State<Arc<AppState>>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
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
    let slot = match &who {
        Caller::Cluster(c) => {
            state.fleet.touch(c);
            match DownloadSlot::take(&state, c) {
                Some(slot) => Some(slot),
                None => {
                    let mut r = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "this cluster is already downloading as many bundles as it may",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    return r;
                }
            }
        }
        Caller::Admin => None,
    };
    let path = state.fleet.store().blob_path(&digest);
    let opened = async {
        let file = tokio::fs::File::open(&path).await?;
        let len = file.metadata().await?.len();
        Ok::<_, std::io::Error>((file, len))
    };
    let (mut file, len) = match opened.await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, digest = %digest, "Bundle blob unreadable");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "bundle unavailable");
        }
    };
    let etag = format!("\"{digest}\"");
    let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), len);
    let (status, start, count) = match range {
        RangeAsk::Whole => (StatusCode::OK, 0, len),
        RangeAsk::Part(start, end) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeAsk::Unsatisfiable => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("header"),
            );
            return r;
        }
    };
    if start > 0
        && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await
    {
        tracing::error!(error = %e, digest = %digest, "Bundle blob unreadable");
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bundle unavailable");
    }
    let reader = SlotReader {
        inner: file.take(count),
        _slot: slot,
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, 64 << 10));
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1)).expect("header"),
        );
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
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
    store_reports(&state, &cluster, &body, crate::fleet::Via::Agent).await
}

pub(crate) async fn store_reports(
    state: &Arc<AppState>,
    cluster: &str,
    body: &[u8],
    via: crate::fleet::Via,
) -> Response {
    if body.len() > limits::MAX_REPORTS_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("report body over {} bytes", limits::MAX_REPORTS_BODY),
        );
    }
    let reports = match parse_reports(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if reports.len() > limits::MAX_REPORTS_PER_REQUEST {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} reports in one request, more than {}; send them in batches",
                reports.len(),
                limits::MAX_REPORTS_PER_REQUEST
            ),
        );
    }
    let fleet = state.fleet.clone();
    let name = cluster.to_owned();
    match tokio::task::spawn_blocking(move || fleet.add_reports(&name, reports, via)).await {
        Ok(Ok(taken)) => {
            if taken.refused > 0 {
                tracing::warn!(cluster = %cluster, refused = taken.refused, "Reports refused (too large, or for a channel that does not target the cluster)");
            }
            axum::Json(ReportAck {
                stored: taken.stored,
                duplicates: taken.duplicates,
                refused: taken.refused,
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
    use super::{RangeAsk, parse_range};

    #[test]
    fn ranges_follow_rfc_9110() {
        let r = |v: &str| parse_range(Some(v), 100);
        assert_eq!(r("bytes=0-9"), RangeAsk::Part(0, 9));
        assert_eq!(r("bytes=90-"), RangeAsk::Part(90, 99));
        assert_eq!(r("bytes=-10"), RangeAsk::Part(90, 99));
        assert_eq!(r("bytes=-500"), RangeAsk::Part(0, 99));
        assert_eq!(r("bytes=95-200"), RangeAsk::Part(95, 99));
        // Unsatisfiable: well-formed, outside the body.
        assert_eq!(r("bytes=100-"), RangeAsk::Unsatisfiable);
        assert_eq!(r("bytes=-0"), RangeAsk::Unsatisfiable);
        // Ignored: other units, bad syntax, several ranges.
        for ignored in [
            "items=0-1",
            "bytes=5-1",
            "bytes=0-1,5-6",
            "bytes=x-",
            "bytes=1",
            "bytes=--1",
            "bytes=+1-2",
        ] {
            assert_eq!(r(ignored), RangeAsk::Whole, "{ignored}");
        }
        assert_eq!(parse_range(None, 100), RangeAsk::Whole);
    }
}
