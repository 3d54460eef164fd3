//! Bearer-token authentication: a cluster's token opens only that cluster's routes (and the
//! bundles its channels hold); the admin token opens the admin routes.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, error};
use crate::fleet::{constant_time_eq, token_hash};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_value(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer_value(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Why a request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401: no token, or one nobody has.
    Unauthorized,
    /// 403: a valid token, for something else.
    Forbidden(&'static str),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized => {
                let mut r = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"skiff\"".parse().expect("header"),
                );
                r
            }
            Self::Forbidden(why) => error(StatusCode::FORBIDDEN, why),
        }
    }
}

/// Whoever a request's token belongs to.
pub enum Caller {
    /// A cluster's agent.
    Cluster(String),
    /// An administrator.
    Admin,
}

/// Identifies the caller: 401 when the token is missing or unknown.
pub fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, Denied> {
    caller_of_token(state, bearer(headers))
}

/// Identifies the caller from a bearer token.
pub fn caller_of_token(state: &AppState, token: Option<&str>) -> Result<Caller, Denied> {
    let token = token.ok_or(Denied::Unauthorized)?;
    if constant_time_eq(&token_hash(token), &state.admin_token_hash) {
        return Ok(Caller::Admin);
    }
    let caller = state.fleet.cluster_of_token(token).map(Caller::Cluster);
    if caller.is_none() {
        note_unknown_token();
    }
    caller.ok_or(Denied::Unauthorized)
}

/// Logs requests with a token nobody has, at most once per 10 s with the count since: an
/// agent with a stale token shows up in the hub's log without a flood from a scanner.
fn note_unknown_token() {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    // (when last said, refused since): None until the first is said.
    static SEEN: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let mut seen = SEEN.lock().expect("auth log");
    seen.1 += 1;
    if seen.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
        tracing::warn!(
            refused = seen.1,
            "Requests with an unknown bearer token refused (stale agent token? rotated?)"
        );
        *seen = (Some(Instant::now()), 0);
    }
}

/// Requires the token of `cluster`: 401 without a valid token, 403 with another cluster's
/// (or the admin) token. Nothing about `cluster` is revealed either way.
pub fn require_cluster(state: &AppState, headers: &HeaderMap, cluster: &str) -> Result<(), Denied> {
    require_cluster_token(state, bearer(headers), cluster)
}

/// [`require_cluster`] for a bearer token already taken out of its header.
pub fn require_cluster_token(state: &AppState, token: Option<&str>, cluster: &str) -> Result<(), Denied> {
    match caller_of_token(state, token)? {
        Caller::Cluster(c) if c == cluster => Ok(()),
        _ => Err(Denied::Forbidden(
            "this token is not allowed on this cluster's routes",
        )),
    }
}

/// Requires the admin token.
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), Denied> {
    match caller(state, headers)? {
        Caller::Admin => Ok(()),
        Caller::Cluster(_) => Err(Denied::Forbidden("admin token required")),
    }
}
