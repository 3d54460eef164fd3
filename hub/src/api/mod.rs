//! The hub's HTTP API: agents' routes (desired state, bundles, reports), admin routes,
//! Git webhooks, health and metrics; served over HTTPS (rustls) or, on loopback or when
//! asked, plain HTTP. SIGTERM stops accepting and drains in-flight requests.

pub mod admin;
mod agent;
mod auth;
pub mod conns;
#[doc(hidden)]
pub mod fastpath;
mod hooks;
mod listener;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::json;

pub use listener::{ServeError, serve, tls_config};

use crate::config::HubConfig;
use crate::fleet::Fleet;
use crate::sources::Sources;
use crate::telemetry::Metrics;

/// What every handler can reach.
pub struct AppState {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// Git sources (for refresh and webhooks).
    pub sources: Arc<Sources>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// SHA-256 of the admin token.
    pub admin_token_hash: String,
    /// The configuration.
    pub config: Arc<HubConfig>,
    /// Flips to true when the hub is shutting down (ends long-polls early).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The signing key's public half (SPKI PEM), for agents to trust.
    pub public_keys: Vec<String>,
    /// Open connections.
    pub connections: Arc<conns::Tracker>,
    /// SHA-256 of the token `/metrics` requires, if any.
    pub metrics_token_hash: Option<String>,
    /// Bundle downloads running, per cluster.
    pub downloads: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Recent webhook delivery ids (replays are ignored).
    pub deliveries: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// Dashboard sessions.
    pub ui: crate::ui::Sessions,
    /// SHA-256 of the dashboard's viewer token, if one is configured.
    pub viewer_token_hash: Option<String>,
}

/// A JSON error body with a status code.
pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({"error": message.into()}))).into_response()
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics))
        .route("/v1/clusters/{cluster}/desired", get(agent::desired))
        .route("/v1/clusters/{cluster}/reports", post(agent::reports))
        .route("/v1/bundles/{sha256}", get(agent::bundle))
        .route("/v1/roots", get(agent::roots))
        .route("/v1/hooks/git/{repo}", post(hooks::git))
        .route(
            "/v1/admin/clusters",
            get(admin::list_clusters).post(admin::add_cluster),
        )
        .route(
            "/v1/admin/clusters/{cluster}",
            patch(admin::label_cluster).delete(admin::remove_cluster),
        )
        .route("/v1/admin/clusters/{cluster}/token", post(admin::rotate_token))
        .route(
            "/v1/admin/clusters/{cluster}/reports",
            get(admin::history).post(admin::import_reports),
        )
        .route("/v1/admin/clusters/{cluster}/desired", get(admin::desired))
        .route("/v1/admin/clusters/{cluster}/values", post(admin::set_values))
        .route("/v1/admin/clusters/{cluster}/pins", post(admin::set_pin))
        .route("/v1/admin/clusters/{cluster}/apply-now", post(admin::apply_now))
        .route("/v1/admin/clusters/{cluster}/render", get(admin::render))
        .route("/v1/admin/channels", get(admin::list_channels))
        .route("/v1/admin/channels/{channel}/refresh", post(admin::refresh))
        .route("/v1/admin/status", get(admin::list_clusters))
        .route("/v1/admin/rollouts", get(admin::list_rollouts))
        .route("/v1/admin/pending", get(admin::list_pending))
        .route(
            "/v1/admin/channels/{channel}/signatures",
            post(admin::add_signature),
        )
        .route(
            "/v1/admin/rollouts/{channel}/{command}",
            post(admin::rollout_command),
        )
        .route("/v1/admin/trust", get(admin::trust))
        .merge(crate::ui::router())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .route_layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
}

async fn metrics(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(hash) = &state.metrics_token_hash {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::bearer_value);
        let ok = token.is_some_and(|t| {
            let h = crate::fleet::token_hash(t);
            crate::fleet::constant_time_eq(&h, hash)
                || crate::fleet::constant_time_eq(&h, &state.admin_token_hash)
        });
        if !ok {
            return auth::Denied::Unauthorized.into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state
            .metrics
            .render(&state.fleet, &state.connections, state.config.metrics.per_cluster),
    )
        .into_response()
}

/// Refuses what no route should see (more than one `Authorization` header, as the direct
/// path does) and bounds how long reading a request and answering may take; long-polls
/// (bounded by their own `wait`) are the exception.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if req.headers().get_all(header::AUTHORIZATION).iter().count() > 1 {
        return error(StatusCode::BAD_REQUEST, "more than one Authorization header");
    }
    let long_poll = req.method() == axum::http::Method::GET && req.uri().path().ends_with("/desired");
    if long_poll {
        return next.run(req).await;
    }
    match tokio::time::timeout(state.config.limits.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

/// Counts and times every request by route.
async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some("/v1/clusters/{cluster}/desired") => "desired",
        Some("/v1/clusters/{cluster}/reports") => "reports",
        Some("/v1/bundles/{sha256}") => "bundle",
        Some("/v1/hooks/git/{repo}") => "webhook",
        Some("/metrics") => "metrics",
        Some("/healthz" | "/readyz") => "health",
        Some(p) if p.starts_with("/v1/admin") => "admin",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .request(route, response.status().as_u16(), start.elapsed());
    response
}
