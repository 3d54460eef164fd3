//! Admin routes: clusters (register, label, remove, rotate tokens, history), channels
//! (state, refresh), status, and the air-gap helpers (a cluster's desired state, report
//! import).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::agent::store_reports;
use super::auth::require_admin;
use super::{AppState, error};
use crate::fleet::FleetError;

/// `POST /v1/admin/clusters` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddCluster {
    /// Cluster name (DNS label).
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A new token, shown once.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The cluster.
    pub cluster: String,
    /// Its bearer token.
    pub token: String,
}

/// `PATCH /v1/admin/clusters/{cluster}` body: labels to set (value) or remove (null).
#[derive(Debug, Serialize, Deserialize)]
pub struct LabelCluster {
    /// Label changes.
    pub labels: BTreeMap<String, Option<String>>,
}

/// `POST /v1/admin/clusters/{cluster}/values` body: values to set (string) or remove (null),
/// for every channel or for `channel`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SetValues {
    /// Only this channel's values.
    #[serde(default)]
    pub channel: Option<String>,
    /// Changes.
    pub values: BTreeMap<String, Option<String>>,
}

/// `POST /v1/admin/clusters/{cluster}/pins` body: pin `channel` at `generation`, or unpin
/// (null).
#[derive(Debug, Serialize, Deserialize)]
pub struct SetPin {
    /// The channel.
    pub channel: String,
    /// Highest generation the cluster may run; null unpins.
    pub generation: Option<u64>,
}

/// `POST /v1/admin/clusters/{cluster}/apply-now` body: override the cluster's maintenance
/// windows for `seconds` (null ends the override).
#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyNow {
    /// How long, from now.
    pub seconds: Option<u64>,
}

/// Longest emergency override of a maintenance window.
pub const MAX_APPLY_NOW: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// `GET /v1/admin/clusters/{cluster}/render?channel=C`
#[derive(Debug, Deserialize)]
pub struct RenderQuery {
    /// Only this channel.
    pub channel: Option<String>,
}

/// A request body as JSON of `T`, or why not (for a 400).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("body: {e}"))
}

fn fleet_error(e: FleetError) -> Response {
    match e {
        FleetError::UnknownCluster(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        FleetError::ClusterExists(_) => error(StatusCode::CONFLICT, e.to_string()),
        FleetError::Invalid(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

macro_rules! admin {
    ($state:expr, $headers:expr) => {
        if let Err(r) = require_admin(&$state, &$headers) {
            return r.into_response();
        }
    };
}

/// `GET /v1/admin/clusters` and `/v1/admin/status`.
pub async fn list_clusters(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(page): axum::extract::Query<Page>,
) -> Response {
    admin!(state, headers);
    let limit = page.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let fleet = state.fleet.clone();
    match tokio::task::spawn_blocking(move || {
        fleet.cluster_statuses(page.after.as_deref(), page.name.as_deref(), limit)
    })
    .await
    {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => fleet_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Most clusters in one status page.
pub const MAX_PAGE: usize = 1000;

/// `?limit=N&after=NAME`: a page of clusters by name.
#[derive(Debug, serde::Deserialize)]
pub struct Page {
    /// Most clusters (at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// Clusters whose names sort after this one.
    pub after: Option<String>,
    /// Only this cluster.
    pub name: Option<String>,
}

/// `POST /v1/admin/clusters`
pub async fn add_cluster(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    admin!(state, headers);
    let req: AddCluster = match json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.fleet.add_cluster(&req.name, req.labels) {
        Ok(token) => {
            tracing::info!(cluster = %req.name, "Cluster registered");
            (
                StatusCode::CREATED,
                Json(TokenResponse {
                    cluster: req.name,
                    token,
                }),
            )
                .into_response()
        }
        Err(e) => fleet_error(e),
    }
}

/// `PATCH /v1/admin/clusters/{cluster}`
pub async fn label_cluster(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin!(state, headers);
    let req: LabelCluster = match json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.fleet.label_cluster(&cluster, &req.labels) {
        Ok(labels) => Json(serde_json::json!({"cluster": cluster, "labels": labels})).into_response(),
        Err(e) => fleet_error(e),
    }
}

/// `POST /v1/admin/clusters/{cluster}/values`
pub async fn set_values(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin!(state, headers);
    let req: SetValues = match json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state
        .fleet
        .set_values(&cluster, req.channel.as_deref(), &req.values)
    {
        Ok(values) => {
            tracing::info!(cluster = %cluster, channel = req.channel.as_deref().unwrap_or("*"), "Cluster values changed");
            Json(serde_json::json!({"cluster": cluster, "channel": req.channel, "values": values}))
                .into_response()
        }
        Err(e) => fleet_error(e),
    }
}

/// `POST /v1/admin/clusters/{cluster}/pins`
pub async fn set_pin(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin!(state, headers);
    let req: SetPin = match json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.fleet.set_pin(&cluster, &req.channel, req.generation) {
        Ok(()) => {
            tracing::info!(cluster = %cluster, channel = %req.channel, pin = ?req.generation, "Cluster pin changed");
            Json(serde_json::json!({"cluster": cluster, "channel": req.channel, "pin": req.generation}))
                .into_response()
        }
        Err(e) => fleet_error(e),
    }
}

/// `POST /v1/admin/clusters/{cluster}/apply-now`
pub async fn apply_now(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin!(state, headers);
    let req: ApplyNow = match json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let d = req.seconds.map(std::time::Duration::from_secs);
    if d.is_some_and(|d| d.is_zero() || d > MAX_APPLY_NOW) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "seconds: an override lasts 1 second to 7 days",
        );
    }
    let until = d.map(|d| skiff_proto::statement::Timestamp::now().plus(d));
    match state.fleet.set_apply_now(&cluster, until) {
        Ok(()) => {
            tracing::info!(cluster = %cluster, until = ?until.map(|t| t.to_string()), "Maintenance window override");
            Json(serde_json::json!({"cluster": cluster, "until": until})).into_response()
        }
        Err(e) => fleet_error(e),
    }
}

/// `GET /v1/admin/clusters/{cluster}/render[?channel=C]`: the objects the cluster would
/// apply, values substituted.
pub async fn render(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<RenderQuery>,
) -> Response {
    admin!(state, headers);
    let fleet = state.fleet.clone();
    match tokio::task::spawn_blocking(move || crate::preview::render(&fleet, &cluster, q.channel.as_deref()))
        .await
    {
        Ok(Ok(channels)) => Json(channels).into_response(),
        Ok(Err(e)) => fleet_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `DELETE /v1/admin/clusters/{cluster}`
pub async fn remove_cluster(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin!(state, headers);
    match state.fleet.remove_cluster(&cluster) {
        Ok(()) => {
            tracing::info!(cluster = %cluster, "Cluster removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => fleet_error(e),
    }
}

/// `POST /v1/admin/clusters/{cluster}/token`
pub async fn rotate_token(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin!(state, headers);
    match state.fleet.rotate_token(&cluster) {
        Ok(token) => Json(TokenResponse { cluster, token }).into_response(),
        Err(e) => fleet_error(e),
    }
}

/// `GET /v1/admin/clusters/{cluster}/reports`: the report history, oldest first.
pub async fn history(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin!(state, headers);
    if !state.fleet.has_cluster(&cluster) {
        return error(
            StatusCode::NOT_FOUND,
            format!("cluster {cluster:?} is not registered"),
        );
    }
    match state.fleet.store().history(&cluster, state.config.report_history) {
        Ok(h) => Json(h).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /v1/admin/clusters/{cluster}/reports`: reports carried across an air gap.
pub async fn import_reports(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin!(state, headers);
    store_reports(&state, &cluster, &body, crate::fleet::Via::Import).await
}

/// `GET /v1/admin/clusters/{cluster}/desired`: what the cluster's agent would be given.
pub async fn desired(
    State(state): State<Arc<AppState>>,
    Path(cluster): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin!(state, headers);
    match state.fleet.desired(&cluster) {
        Some(a) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            a.body.clone(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("cluster {cluster:?} is not registered"),
        ),
    }
}

/// `GET /v1/admin/channels`
pub async fn list_channels(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    admin!(state, headers);
    let mut channels = state.fleet.channel_statuses();
    for c in &mut channels {
        c.fetch_error = state.sources.fetch_error(&c.repo);
    }
    Json(channels).into_response()
}

/// `GET /v1/admin/pending`: generations waiting for more signatures (two-person rule).
pub async fn list_pending(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    admin!(state, headers);
    Json(crate::trust::waiting(&state.fleet)).into_response()
}

/// `POST /v1/admin/channels/{channel}/signatures` body.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddSignature {
    /// The waiting generation signed.
    pub generation: u64,
    /// The signature over its statement (DSSE: keyid and base64 sig).
    pub signature: skiff_proto::dsse::Signature,
}

/// `POST /v1/admin/channels/{channel}/signatures`: adds a signer's signature to the
/// channel's waiting generation; served once the trust root's threshold is met.
pub async fn add_signature(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin!(state, headers);
    let req: AddSignature = match json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let keyid = req.signature.keyid.clone();
    match crate::trust::add_signature(&state.fleet, &channel, req.generation, req.signature) {
        Ok(w) => {
            tracing::info!(channel = %channel, generation = req.generation, signer = %keyid, served = w.served, "Signature added by an admin");
            Json(w).into_response()
        }
        Err(e) => fleet_error(e),
    }
}

/// `GET /v1/admin/rollouts`: every channel's rollout (channels with a plan).
pub async fn list_rollouts(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    admin!(state, headers);
    Json(state.fleet.rollout_statuses()).into_response()
}

/// `POST /v1/admin/rollouts/{channel}/{command}`: `pause`, `resume`, `promote` or `abort`.
pub async fn rollout_command(
    State(state): State<Arc<AppState>>,
    Path((channel, command)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    admin!(state, headers);
    let cmd = match serde_json::from_value(serde_json::Value::String(command.clone())) {
        Ok(c) => c,
        Err(_) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no rollout command {command:?}: pause, resume, promote or abort"),
            );
        }
    };
    match state.fleet.rollout_command(&channel, cmd) {
        Ok(status) => Json(status).into_response(),
        Err(e) => fleet_error(e),
    }
}

/// `POST /v1/admin/channels/{channel}/refresh`: fetch its repository and rebuild now.
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Response {
    admin!(state, headers);
    if state.sources.trigger_channel(&channel) {
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"channel": channel, "refresh": "queued"})),
        )
            .into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("channel {channel:?} is not configured"),
        )
    }
}

/// `GET /v1/admin/trust`: what an agent needs to trust this hub (for `cluster bootstrap`).
pub async fn trust(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    admin!(state, headers);
    let ca = match state.config.tls.as_ref().and_then(|t| t.ca.as_ref()) {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading CA {}: {e}", path.display()),
                );
            }
        },
        None => None,
    };
    Json(TrustResponse {
        public_keys: state.public_keys.clone(),
        ca,
        public_url: state.config.public_url(),
    })
    .into_response()
}

/// `GET /v1/admin/trust` answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustResponse {
    /// Public keys (SPKI PEM) agents should trust.
    pub public_keys: Vec<String>,
    /// The hub's private CA (PEM), if it has one.
    pub ca: Option<String>,
    /// The URL agents reach the hub at.
    pub public_url: String,
}
