//! The HTTP face of the test server: paths, verbs, content types and `Status` errors as
//! kube-apiserver serves them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::resources;
use super::store::{ApiError, PatchBody, State, Sub};

/// The Kubernetes version reported by `/version`.
pub const KUBE_VERSION: (&str, &str, &str) = ("1", "33", "v1.33.4");

fn json_response(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// A parsed resource path.
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), (*version).to_owned(), rest),
        _ => return None,
    };
    let t = |namespace: Option<&str>, plural: &str, name: Option<&str>, sub: Option<&str>| Target {
        group: group.clone(),
        version: version.clone(),
        namespace: namespace.map(str::to_owned),
        plural: plural.to_owned(),
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
    };
    Some(match rest {
        // /api/v1/namespaces/{name}/status is the namespace's own status.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            t(None, "namespaces", Some(name), Some(sub))
        }
        ["namespaces", ns, plural] => t(Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => t(Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => t(Some(ns), plural, Some(name), Some(sub)),
        [plural] => t(None, plural, None, None),
        [plural, name] => t(None, plural, Some(name), None),
        [plural, name, sub] => t(None, plural, Some(name), Some(sub)),
        _ => return None,
    })
}

/// The field manager of a non-apply write: `fieldManager`, or the client's program name
/// from its User-Agent, as kube-apiserver derives it.
/// A list reduced to its items' metadata (`PartialObjectMetadataList`).
fn metadata_only(mut list: Value) -> Value {
    let items: Vec<Value> = list
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default()
        .into_iter()
        .map(|mut item| {
            json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": item.get_mut("metadata").map(Value::take).unwrap_or(Value::Null),
            })
        })
        .collect();
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list.get("metadata").cloned().unwrap_or(Value::Null),
        "items": items,
    })
}

fn manager_of(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    if text.trim_start().starts_with('{') || content_type.contains("json") {
        return serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")));
    }
    let docs = skiff_proto::manifest::parse_yaml("request body", text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML request body: {e}")))?;
    match docs.len() {
        1 => Ok(docs.into_iter().next().expect("one").value),
        n => Err(ApiError::bad_request(format!(
            "expected one YAML document in the request body, found {n}"
        ))),
    }
}

/// The one handler for every request.
pub async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if path == "/debug/requests" {
        // For benchmarks against the process: how many API requests were served so far.
        let n = shared.requests.lock().expect("requests lock").len();
        let bytes = shared.bytes_out.load(std::sync::atomic::Ordering::Relaxed);
        return json_response(200, &json!({"requests": n, "bytes": bytes}));
    }
    shared.log_request(&method, &uri);
    if path == "/openapi/v2" && method == Method::GET {
        return openapi_v2(&headers);
    }
    if let Some(code) = shared.take_fault(&method, &path, query.get("fieldManager").map(String::as_str)) {
        let reason = if code == 429 {
            "TooManyRequests"
        } else {
            "InternalError"
        };
        let mut resp = json_response(
            code,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("injected fault {code}"), "reason": reason, "code": code}),
        );
        if code == 429 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().expect("header"));
        }
        return resp;
    }
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if method == Method::GET && query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return match watched(&shared, &path, &query) {
            Ok(w) => super::watch::serve(shared.clone(), w, &query).unwrap_or_else(|e| error(&e)),
            Err(e) => error(&e),
        };
    }
    let mut content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // Protobuf bodies are read for the kinds `kubectl create` makes; other kinds get the 415
    // of a server that does not read them.
    let mut body = body;
    if content_type.starts_with("application/vnd.kubernetes.protobuf") && !body.is_empty() {
        match super::protobuf::decode(&body) {
            Ok(Some(object)) => {
                body = axum::body::Bytes::from(object.to_string());
                content_type = "application/json".to_owned();
            }
            Ok(None) => return error(&ApiError::unsupported_media_type(&content_type)),
            Err(why) => {
                return error(&ApiError::bad_request(format!(
                    "the protobuf body cannot be read: {why}"
                )));
            }
        }
    }
    let mut state = shared.state.lock().expect("state lock");
    state.tick();
    state.field_validation =
        super::schema::FieldValidation::from_query(query.get("fieldValidation").map(String::as_str));
    state.warnings.clear();
    let mut response = match route(&mut state, &method, &path, &query, &headers, &content_type, &body) {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error(&e),
    };
    if let Some(n) = axum::body::HttpBody::size_hint(response.body()).exact() {
        shared
            .bytes_out
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    for warning in state.warnings.drain(..) {
        // As kube-apiserver writes them: `299 - "text"`.
        let text = format!("299 - {}", Value::String(warning));
        if let Ok(value) = text.parse() {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// What a watch request follows (a URL naming one object watches it by name).
fn watched(
    shared: &Shared,
    path: &str,
    query: &HashMap<String, String>,
) -> Result<super::watch::Watched, ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let target = parse_target(&segments)
        .filter(|t| t.sub.is_none())
        .ok_or_else(|| ApiError::no_resource(path))?;
    let rt = shared
        .state
        .lock()
        .expect("state lock")
        .find(&target.group, &target.version, &target.plural)
        .filter(|rt| rt.namespaced || target.namespace.is_none())
        .ok_or_else(|| ApiError::no_resource(path))?;
    let by_name = target.name.map(|n| format!("metadata.name={n}"));
    let fields = match (query.get("fieldSelector").filter(|f| !f.is_empty()), by_name) {
        (Some(f), Some(n)) => Some(format!("{f},{n}")),
        (Some(f), None) => Some(f.clone()),
        (None, n) => n,
    };
    Ok(super::watch::Watched {
        rt,
        namespace: target.namespace,
        labels: query.get("labelSelector").filter(|l| !l.is_empty()).cloned(),
        fields,
    })
}

/// `/openapi/v2`: a valid OpenAPI v2 document without definitions, in protobuf (what
/// kubectl asks for) or JSON. kubectl reads it to validate kinds the v3 documents do not
/// cover (a `List`'s items); a kind without a definition is left to the server's own
/// validation, which this server does.
fn openapi_v2(headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("protobuf") {
        // openapi_v2.Document { swagger (field 1) = "2.0" }.
        let body: &'static [u8] = b"\x0a\x032.0";
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )],
            body,
        )
            .into_response();
    }
    let (_, _, git) = KUBE_VERSION;
    json_response(
        200,
        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": git}, "paths": {}, "definitions": {}}),
    )
}

fn route(
    state: &mut State,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let ok = |v: Value| Ok((200, v));
    if *method == Method::GET {
        match segments.as_slice() {
            ["version"] => {
                let (major, minor, git) = KUBE_VERSION;
                return ok(json!({
                    "major": major, "minor": minor, "gitVersion": git, "gitCommit": "skiff-kube-testserver",
                    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                    "compiler": "gc", "platform": "linux/amd64"
                }));
            }
            ["healthz"] | ["readyz"] | ["livez"] => return ok(json!("ok")),
            ["openapi", "v3"] => return ok(resources::openapi_root(state.types())),
            ["openapi", "v3", rest @ ..] => {
                let (group, version) = match rest {
                    ["api", version] => ("", *version),
                    ["apis", group, version] => (*group, *version),
                    _ => return Err(ApiError::no_resource(path)),
                };
                return resources::openapi_group_version(state.types(), group, version)
                    .map_or_else(|| Err(ApiError::no_resource(path)), ok);
            }
            ["api"] => return ok(resources::core_versions()),
            ["apis"] => return ok(resources::group_list(state.types())),
            ["api", version] => {
                return resources::resource_list(state.types(), "", version)
                    .map_or_else(|| Err(ApiError::no_resource(path)), ok);
            }
            ["apis", group] => {
                return resources::group(state.types(), group)
                    .map_or_else(|| Err(ApiError::no_resource(path)), ok);
            }
            ["apis", group, version] => {
                return resources::resource_list(state.types(), group, version)
                    .map_or_else(|| Err(ApiError::no_resource(path)), ok);
            }
            _ => {}
        }
    }
    let target = parse_target(&segments).ok_or_else(|| ApiError::no_resource(path))?;
    let rt = state
        .find(&target.group, &target.version, &target.plural)
        .ok_or_else(|| ApiError::no_resource(path))?;
    if target.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::no_resource(path));
    }
    let ns = target.namespace.as_deref();
    if target.sub.as_deref() == Some("scale") && resources::has_scale(&rt) {
        let name = target
            .name
            .as_deref()
            .ok_or_else(|| ApiError::no_resource(path))?;
        return scale(state, &rt, ns, name, method, query, headers, content_type, body);
    }
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    if target.sub.as_deref() == Some("finalize") {
        let name = target.name.as_deref().unwrap_or_default();
        if *method != Method::PUT {
            return Err(ApiError::method_not_allowed(method, path));
        }
        let body = parse_body(content_type, body)?;
        return ok(state.finalize_namespace(name, &body, dry_run)?);
    }
    let sub = match target.sub.as_deref() {
        None => Sub::Main,
        Some("status") if rt.status => Sub::Status,
        Some(_) => return Err(ApiError::no_resource(path)),
    };
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) => {
            let limit = match query.get("limit") {
                None => None,
                Some(l) => Some(l.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!("limit: invalid value {l:?}: not a non-negative integer"))
                })?),
            };
            let list = state.list(
                &rt,
                ns,
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
                limit,
                query.get("continue").map(String::as_str),
            )?;
            // `Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`:
            // only each item's metadata, as kube-apiserver answers it.
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if accept.contains("as=PartialObjectMetadataList") {
                ok(metadata_only(list))
            } else {
                ok(list)
            }
        }
        (Method::GET, Some(name)) => ok(state.get(&rt, ns, name)?),
        (Method::POST, None) => {
            let body = parse_body(content_type, body)?;
            let created = state.create(&rt, ns, body, &manager_of(query, headers), dry_run)?;
            Ok((201, created))
        }
        (Method::PUT, Some(name)) => {
            let body = parse_body(content_type, body)?;
            ok(state.update(&rt, ns, name, body, &manager_of(query, headers), sub, dry_run)?)
        }
        (Method::PATCH, Some(name)) => {
            let media = content_type.split(';').next().unwrap_or("").trim();
            match media {
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                    let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                        // kube-apiserver: ValidatePatchOptions, reported as PatchOptions Invalid.
                        return Err(ApiError {
                            code: 422,
                            reason: "Invalid",
                            message: "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".to_owned(),
                            details: Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions",
                                "causes": [{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]})),
                        });
                    };
                    let config = parse_body(media, body)?;
                    let force = query.get("force").is_some_and(|f| f == "true");
                    let (v, created) = state.apply(&rt, ns, name, config, manager, force, sub, dry_run)?;
                    Ok((if created { 201 } else { 200 }, v))
                }
                "application/merge-patch+json"
                | "application/json-patch+json"
                | "application/strategic-merge-patch+json" => {
                    let patch = parse_body("application/json", body)?;
                    let patch = match media {
                        "application/merge-patch+json" => PatchBody::Merge(&patch),
                        "application/json-patch+json" => PatchBody::Json(&patch),
                        // Custom resources take no strategic merge patch (415, as the server).
                        _ if rt.crd.is_some() => return Err(ApiError::unsupported_media_type(media)),
                        _ => PatchBody::Strategic(&patch),
                    };
                    let manager = manager_of(query, headers);
                    ok(state.patch(&rt, ns, name, patch, &manager, sub, dry_run)?)
                }
                other => Err(ApiError::unsupported_media_type(other)),
            }
        }
        (Method::DELETE, Some(name)) => {
            if !body.is_empty() {
                // DeleteOptions (propagationPolicy, …) are accepted; the body must still parse.
                parse_body("application/json", body)?;
            }
            ok(state.delete(&rt, ns, name, dry_run)?)
        }
        _ => Err(ApiError::method_not_allowed(&method, path)),
    }
}

/// The `/scale` subresource (`kubectl scale`): an `autoscaling/v1` Scale read from and
/// written to the workload's `spec.replicas`.
#[allow(clippy::too_many_arguments)]
fn scale(
    state: &mut State,
    rt: &crate::kube::ResourceType,
    ns: Option<&str>,
    name: &str,
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let scale_of = |object: &Value| {
        let selector = object
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {
                "name": object.pointer("/metadata/name"), "namespace": object.pointer("/metadata/namespace"),
                "uid": object.pointer("/metadata/uid"), "resourceVersion": object.pointer("/metadata/resourceVersion"),
                "creationTimestamp": object.pointer("/metadata/creationTimestamp"),
            },
            "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
            "status": {"replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
        })
    };
    let current = scale_of(&state.get(rt, ns, name)?);
    if *method == Method::GET {
        return Ok((200, current));
    }
    let media = content_type.split(';').next().unwrap_or("").trim();
    let wanted = match (method.clone(), media) {
        (Method::PUT, _) => parse_body(content_type, body)?,
        (Method::PATCH, "application/merge-patch+json") => {
            let mut doc = current.clone();
            crate::kube::store::json_merge_patch(&mut doc, &parse_body(media, body)?);
            doc
        }
        (Method::PATCH, "application/json-patch+json") => {
            let mut doc = current.clone();
            super::jsonpatch::apply(&mut doc, &parse_body("application/json", body)?)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch does not apply: {e}")))?;
            doc
        }
        (Method::PATCH, other) => return Err(ApiError::unsupported_media_type(other)),
        _ => {
            return Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: format!("the server does not allow this method on the scale subresource ({method})"),
                details: None,
            });
        }
    };
    let replicas = wanted
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request("Scale.spec.replicas must be a whole number, 0 or more"))?;
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    let updated = state.patch(
        rt,
        ns,
        name,
        PatchBody::Merge(&json!({"spec": {"replicas": replicas}})),
        &manager_of(query, headers),
        Sub::Main,
        dry_run,
    )?;
    Ok((200, scale_of(&updated)))
}
