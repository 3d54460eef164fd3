//! The dashboard, served by the hub itself under `/ui`: server-rendered HTML (maud), one small
//! stylesheet and one small script from the hub (nothing from elsewhere: it works at an
//! air-gapped hub). Sign-in with the admin token or a viewer token; a session cookie
//! (HttpOnly, SameSite=Strict, Secure under TLS); every state-changing form carries the
//! session's CSRF token and needs the admin role, and is logged with who and what.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;

use crate::api::AppState;
use crate::fleet::{constant_time_eq, token_hash};

mod pages;

/// Most sessions kept at once (the oldest go first beyond it).
const MAX_SESSIONS: usize = 1024;

/// Largest form body read.
const MAX_FORM_BYTES: usize = 4096;

/// The cookie's name.
const COOKIE: &str = "skiff_session";

/// Who is signed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May read and act.
    Admin,
    /// May read.
    Viewer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

#[derive(Clone, Debug)]
struct Session {
    role: Role,
    csrf: String,
    expires: Instant,
}

/// Signed-in sessions, in memory (a hub restart signs everyone out).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    fn open(&self, role: Role, ttl: Duration) -> (String, Session) {
        let id = random_token();
        let s = Session {
            role,
            csrf: random_token(),
            expires: Instant::now() + ttl,
        };
        let mut map = self.0.lock().expect("sessions");
        map.retain(|_, s| s.expires > Instant::now());
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.0.lock().expect("sessions");
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn close(&self, id: &str) {
        self.0.lock().expect("sessions").remove(id);
    }
}

/// The `/ui` routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(fleet))
        .route("/ui/", get(fleet))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/clusters/{name}", get(cluster))
        .route("/ui/channels/{name}", get(channel))
        .route("/ui/channels/{name}/rollout/{command}", post(rollout_command))
        .route(
            "/ui/static/app.css",
            get(|| async { asset("text/css", pages::CSS) }),
        )
        .route(
            "/ui/static/live.js",
            get(|| async { asset("text/javascript", pages::LIVE_JS) }),
        )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The session of a request, if signed in.
fn session(state: &AppState, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = cookie_value(headers, COOKIE)?;
    state.ui.get(id).map(|s| (id.to_owned(), s))
}

/// Every page: HTML, never cached, never framed, no resource from elsewhere.
pub(crate) fn html(status: StatusCode, body: maud::Markup) -> Response {
    let mut r = (status, axum::response::Html(body.into_string())).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The signed-in viewer of a page request.
fn viewer(state: &AppState, headers: &HeaderMap) -> Option<pages::Viewer> {
    let (_, s) = session(state, headers)?;
    Some(pages::Viewer {
        role: s.role,
        csrf: s.csrf,
        fragment: fragment(headers),
    })
}

fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

async fn login_form(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if session(&state, &headers).is_some() {
        return Redirect::to("/ui").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

/// Which role a token signs in as.
fn role_of(state: &AppState, token: &str) -> Option<Role> {
    let hash = token_hash(token.trim());
    if constant_time_eq(&hash, &state.admin_token_hash) {
        return Some(Role::Admin);
    }
    state
        .viewer_token_hash
        .as_ref()
        .filter(|v| constant_time_eq(&hash, v))
        .map(|_| Role::Viewer)
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn login(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    if body.len() > MAX_FORM_BYTES {
        return html(
            StatusCode::PAYLOAD_TOO_LARGE,
            pages::login(Some("The form is too large.")),
        );
    }
    let fields = form(&body);
    let Some(role) = fields.get("token").and_then(|t| role_of(&state, t)) else {
        tracing::warn!("Dashboard sign-in refused: unknown token");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That token is neither the admin token nor a viewer token.")),
        );
    };
    let (id, _) = state.ui.open(role, state.config.dashboard.session_ttl);
    tracing::info!(role = role.name(), "Dashboard sign-in");
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        state.config.dashboard.session_ttl.as_secs()
    );
    let mut r = Redirect::to("/ui").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie"),
    );
    r
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some((id, s)) = session(&state, &headers)
        && form(&body)
            .get("csrf")
            .is_some_and(|c| constant_time_eq(c, &s.csrf))
    {
        state.ui.close(&id);
    }
    let mut r = to_login();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("skiff_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// The fleet page's query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct FleetQuery {
    /// Names containing this.
    #[serde(default)]
    pub q: String,
    /// Only clusters in this state.
    #[serde(default)]
    pub state: String,
    /// Only clusters with this label (`key=value`).
    #[serde(default)]
    pub label: String,
    /// The label the matrix groups clusters by.
    #[serde(default)]
    pub group: String,
    /// The page (0-based).
    #[serde(default)]
    pub page: usize,
}

/// Whether the request asks only for the page's main part (live updates).
fn fragment(headers: &HeaderMap) -> bool {
    headers.get("x-skiff-fragment").is_some()
}

async fn fleet(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<FleetQuery>,
) -> Response {
    let Some(view) = viewer(&state, &headers) else {
        return to_login();
    };
    html(StatusCode::OK, pages::fleet(&state.fleet, &q, &view))
}

async fn cluster(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(view) = viewer(&state, &headers) else {
        return to_login();
    };
    let fleet = state.fleet.clone();
    let n = name.clone();
    let found = tokio::task::spawn_blocking(move || {
        let status = fleet.cluster_statuses(None, Some(&n), 1)?.into_iter().next();
        let history = fleet.store().history(&n, 20)?;
        Ok::<_, crate::fleet::FleetError>((status, history))
    })
    .await;
    match found {
        Ok(Ok((Some(c), history))) => html(StatusCode::OK, pages::cluster(&c, &history, &view)),
        Ok(Ok((None, _))) => html(
            StatusCode::NOT_FOUND,
            pages::not_found(&format!("No cluster {name:?}."), &view),
        ),
        _ => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::not_found("Reading the store failed.", &view),
        ),
    }
}

async fn channel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(view) = viewer(&state, &headers) else {
        return to_login();
    };
    let Some(mut c) = state
        .fleet
        .channel_statuses()
        .into_iter()
        .find(|c| c.name == name)
    else {
        return html(
            StatusCode::NOT_FOUND,
            pages::not_found(&format!("No channel {name:?}."), &view),
        );
    };
    c.fetch_error = state.sources.fetch_error(&c.repo);
    let rollout = state
        .fleet
        .rollout_statuses()
        .into_iter()
        .find(|r| r.channel == name);
    let waiting = crate::trust::waiting(&state.fleet)
        .into_iter()
        .find(|w| w.channel == name);
    html(
        StatusCode::OK,
        pages::channel(&c, rollout.as_ref(), waiting.as_ref(), &view),
    )
}

async fn rollout_command(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, command)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some((_, s)) = session(&state, &headers) else {
        return html(StatusCode::UNAUTHORIZED, pages::login(Some("Sign in first.")));
    };
    let view = pages::Viewer {
        role: s.role,
        csrf: s.csrf.clone(),
        fragment: false,
    };
    if body.len() > MAX_FORM_BYTES
        || !form(&body)
            .get("csrf")
            .is_some_and(|c| constant_time_eq(c, &s.csrf))
    {
        tracing::warn!(role = s.role.name(), channel = %name, command = %command, "Dashboard action refused: missing or wrong CSRF token");
        return html(
            StatusCode::FORBIDDEN,
            pages::not_found(
                "Refused: the form's CSRF token is missing or wrong; reload the page.",
                &view,
            ),
        );
    }
    if s.role != Role::Admin {
        tracing::warn!(role = s.role.name(), channel = %name, command = %command, "Dashboard action refused: viewers cannot act");
        return html(
            StatusCode::FORBIDDEN,
            pages::not_found("Refused: a viewer cannot change a rollout.", &view),
        );
    }
    let Ok(cmd) =
        serde_json::from_value::<crate::rollout::Command>(serde_json::Value::String(command.clone()))
    else {
        return html(
            StatusCode::NOT_FOUND,
            pages::not_found(&format!("No rollout command {command:?}."), &view),
        );
    };
    match state.fleet.rollout_command(&name, cmd) {
        Ok(_) => {
            tracing::info!(who = "dashboard admin", channel = %name, command = %command, "Dashboard action: rollout command");
            Redirect::to(&format!("/ui/channels/{name}")).into_response()
        }
        Err(e) => html(StatusCode::CONFLICT, pages::not_found(&e.to_string(), &view)),
    }
}
