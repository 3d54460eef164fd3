//! A minimal watch (`?watch=true`), enough for `kubectl wait`, `kubectl delete --wait`
//! and kube's watchers: a stream of `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": …}`
//! lines for the objects of one resource (in a namespace or all, by label and field
//! selector). Without a `resourceVersion` the objects there are come first as ADDED; with
//! one, every change after it, from the store's change log (410 `Expired` when the log no
//! longer reaches back that far). Then each change as it is made (the log is read every
//! 100 ms), until `timeoutSeconds` (at most 10 minutes) or the client goes. Objects in
//! events carry no `managedFields`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::resources::ResourceType;
use super::store::{ApiError, Change, State};

/// What one watch follows.
pub struct Watched {
    /// The resource.
    pub rt: ResourceType,
    /// Its namespace, or all.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: Option<String>,
    /// `fieldSelector` (with the object's name when the URL names one).
    pub fields: Option<String>,
}

impl Watched {
    fn changes(&self, state: &State, from: u64) -> Result<(Vec<Change>, u64), ApiError> {
        state.changes_since(
            &self.rt,
            self.namespace.as_deref(),
            self.labels.as_deref(),
            self.fields.as_deref(),
            from,
        )
    }
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Serves one watch request.
pub fn serve(shared: Arc<Shared>, w: Watched, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64)
        .min(600);
    let (first, cursor) = {
        let state = shared.state.lock().expect("state lock");
        if from == 0 {
            let list = state.list(
                &w.rt,
                w.namespace.as_deref(),
                w.labels.as_deref(),
                w.fields.as_deref(),
                None,
                None,
            )?;
            let added: Vec<Bytes> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| event("ADDED", o))
                .collect();
            let rv = list
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            (added, rv)
        } else {
            let (changes, rv) = w.changes(&state, from)?;
            (changes.iter().map(|(kind, o)| event(kind, o)).collect(), rv)
        }
    };
    let pending: VecDeque<Bytes> = first.into();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let stream = futures_util::stream::unfold(
        (shared, w, cursor, pending),
        move |(shared, w, mut cursor, mut pending)| async move {
            loop {
                if let Some(line) = pending.pop_front() {
                    return Some((Ok::<_, std::io::Error>(line), (shared, w, cursor, pending)));
                }
                if tokio::time::Instant::now() >= deadline
                    || shared.closing.load(std::sync::atomic::Ordering::Relaxed)
                {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut state = shared.state.lock().expect("state lock");
                state.tick();
                let changes = w.changes(&state, cursor);
                drop(state);
                let Ok((changes, rv)) = changes else { return None };
                pending.extend(changes.iter().map(|(kind, o)| event(kind, o)));
                cursor = rv;
            }
        },
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}
