//! Schemas, as kube-apiserver applies them to what is written:
//!
//! - built-in kinds: a field the kind's Go type lacks is unknown. Found by reading the
//!   object into k8s-openapi's type for the kind (generated from the same OpenAPI
//!   definitions) and writing it back: what does not come back was not in the schema.
//! - custom resources: the CRD's structural `openAPIV3Schema` prunes unknown fields (unless
//!   `x-kubernetes-preserve-unknown-fields`), fills in `default`s and validates types,
//!   enums, bounds, lengths, item counts and required fields.
//!
//! What a write does with unknown fields depends on how it came: server-side apply cannot
//! build its typed patch (a 500 naming the field, whatever `fieldValidation` says); other
//! writes drop them with a warning, or are refused (400) under `fieldValidation=Strict`.

use serde_json::{Map, Value, json};

/// How a write asked for unknown fields to be treated (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Dropped silently.
    Ignore,
    /// Dropped, with a warning to the client (the server's default).
    #[default]
    Warn,
    /// The write is refused.
    Strict,
}

impl FieldValidation {
    /// From the query parameter (anything else is the default, as the server's own).
    pub fn from_query(value: Option<&str>) -> Self {
        match value {
            Some("Ignore") => Self::Ignore,
            Some("Strict") => Self::Strict,
            _ => Self::Warn,
        }
    }
}

/// One segment of a path into an object.
#[derive(Clone, Debug, PartialEq)]
pub enum Seg {
    /// A field of an object.
    Key(String),
    /// An item of a list.
    Index(usize),
}

/// `spec.template.spec.containers[0].imagee`.
pub fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes the field at each path (deepest first, so indexes stay valid).
pub fn remove_all(object: &mut Value, paths: &[Vec<Seg>]) {
    fn remove(at: &mut Value, path: &[Seg]) {
        match path {
            [Seg::Key(k)] => {
                if let Some(map) = at.as_object_mut() {
                    map.remove(k);
                }
            }
            [Seg::Key(k), rest @ ..] => {
                if let Some(v) = at.get_mut(k.as_str()) {
                    remove(v, rest);
                }
            }
            [Seg::Index(i), rest @ ..] => {
                if let Some(v) = at.get_mut(*i) {
                    remove(v, rest);
                }
            }
            [] => {}
        }
    }
    for path in paths.iter().rev() {
        remove(object, path);
    }
}

macro_rules! round_trip {
    ($object:expr, $($group:literal $kind:literal => $ty:ty),* $(,)?) => {
        |group: &str, kind: &str| -> Option<Value> {
            match (group, kind) {
                $(($group, $kind) => serde_json::from_value::<$ty>($object.clone())
                    .ok()
                    .and_then(|typed| serde_json::to_value(typed).ok()),)*
                _ => None,
            }
        }
    };
}

/// Fields of a built-in object its kind does not have (empty for kinds not known here, or
/// objects whose values do not even read as the kind: their type errors are another check).
pub fn builtin_unknown_fields(group: &str, api_version: &str, kind: &str, object: &Value) -> Vec<Vec<Seg>> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admission, apps::v1 as apps, autoscaling::v2 as autoscaling,
        batch::v1 as batch, core::v1 as core, networking::v1 as networking, policy::v1 as policy,
        rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;
    let mut whole = object.clone();
    if let Some(map) = whole.as_object_mut() {
        map.insert("apiVersion".to_owned(), json!(api_version));
        map.insert("kind".to_owned(), json!(kind));
    }
    let typed = round_trip!(whole,
        "" "Namespace" => core::Namespace,
        "" "ConfigMap" => core::ConfigMap,
        "" "Secret" => core::Secret,
        "" "Service" => core::Service,
        "" "ServiceAccount" => core::ServiceAccount,
        "" "Pod" => core::Pod,
        "" "PersistentVolumeClaim" => core::PersistentVolumeClaim,
        "" "PersistentVolume" => core::PersistentVolume,
        "" "ReplicationController" => core::ReplicationController,
        "" "Endpoints" => core::Endpoints,
        "" "LimitRange" => core::LimitRange,
        "" "ResourceQuota" => core::ResourceQuota,
        "" "Node" => core::Node,
        "apps" "Deployment" => apps::Deployment,
        "apps" "StatefulSet" => apps::StatefulSet,
        "apps" "DaemonSet" => apps::DaemonSet,
        "apps" "ReplicaSet" => apps::ReplicaSet,
        "batch" "Job" => batch::Job,
        "batch" "CronJob" => batch::CronJob,
        "networking.k8s.io" "Ingress" => networking::Ingress,
        "networking.k8s.io" "IngressClass" => networking::IngressClass,
        "networking.k8s.io" "NetworkPolicy" => networking::NetworkPolicy,
        "rbac.authorization.k8s.io" "Role" => rbac::Role,
        "rbac.authorization.k8s.io" "RoleBinding" => rbac::RoleBinding,
        "rbac.authorization.k8s.io" "ClusterRole" => rbac::ClusterRole,
        "rbac.authorization.k8s.io" "ClusterRoleBinding" => rbac::ClusterRoleBinding,
        "apiextensions.k8s.io" "CustomResourceDefinition" => apiextensions::CustomResourceDefinition,
        "autoscaling" "HorizontalPodAutoscaler" => autoscaling::HorizontalPodAutoscaler,
        "policy" "PodDisruptionBudget" => policy::PodDisruptionBudget,
        "storage.k8s.io" "StorageClass" => storage::StorageClass,
        "scheduling.k8s.io" "PriorityClass" => scheduling::PriorityClass,
        "admissionregistration.k8s.io" "ValidatingWebhookConfiguration" => admission::ValidatingWebhookConfiguration,
        "admissionregistration.k8s.io" "MutatingWebhookConfiguration" => admission::MutatingWebhookConfiguration,
        "admissionregistration.k8s.io" "ValidatingAdmissionPolicy" => admission::ValidatingAdmissionPolicy,
        "admissionregistration.k8s.io" "ValidatingAdmissionPolicyBinding" => admission::ValidatingAdmissionPolicyBinding,
        "apiregistration.k8s.io" "APIService" => apiregistration::APIService,
    );
    let Some(back) = typed(group, kind) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    missing(&whole, &back, &mut Vec::new(), &mut out);
    out
}

/// Paths of `given` (not null) that `kept` lacks.
fn missing(given: &Value, kept: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match (given, kept) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                at.push(Seg::Key(key.clone()));
                match k.get(key) {
                    None if !value.is_null() => out.push(at.clone()),
                    None => {}
                    Some(kv) => missing(value, kv, at, out),
                }
                at.pop();
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                at.push(Seg::Index(i));
                missing(gv, kv, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// Fields a custom resource has that its structural schema does not declare (below
/// `x-kubernetes-preserve-unknown-fields` everything is declared; at the root,
/// `apiVersion`, `kind` and `metadata` always are).
pub fn crd_unknown_fields(schema: &Value, object: &Value) -> Vec<Vec<Seg>> {
    let mut out = Vec::new();
    if let Some(map) = object.as_object() {
        for (key, value) in map {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let mut at = vec![Seg::Key(key.clone())];
            match property(schema, key) {
                Some(s) => unknown_below(s, value, &mut at, &mut out),
                None if preserves(schema) => {}
                None => out.push(at),
            }
        }
    }
    out
}

fn preserves(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The schema of field `key` of an object: a declared property, or the map's
/// `additionalProperties`.
fn property<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    schema
        .get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

fn unknown_below(schema: &Value, value: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    let embedded = schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match value {
        Value::Object(map) => {
            if preserves(schema) && schema.get("properties").is_none() {
                return;
            }
            for (key, v) in map {
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                at.push(Seg::Key(key.clone()));
                match property(schema, key) {
                    Some(s) => unknown_below(s, v, at, out),
                    None if preserves(schema) => {}
                    None => out.push(at.clone()),
                }
                at.pop();
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    at.push(Seg::Index(i));
                    unknown_below(s, v, at, out);
                    at.pop();
                }
            }
        }
        _ => {}
    }
}

/// Fills in the schema's `default`s for fields an object leaves out (as the API server does
/// when it reads a request and when it reads from storage).
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (key, s) in props {
                    if !map.contains_key(key)
                        && let Some(d) = s.get("default")
                    {
                        map.insert(key.clone(), d.clone());
                    }
                }
                for (key, v) in map.iter_mut() {
                    if let Some(s) = props.get(key) {
                        apply_defaults(s, v);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in map.values_mut() {
                    apply_defaults(s, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for v in items {
                    apply_defaults(s, v);
                }
            }
        }
        _ => {}
    }
}

/// What the schema refuses in a custom resource, as `(field, detail)` in the API server's
/// words; at most the first 32.
pub fn crd_problems(schema: &Value, object: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(map) = object.as_object() {
        check_required(schema, map, &[], &mut out);
        for (key, value) in map {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(s) = property(schema, key) {
                check(s, value, &mut vec![Seg::Key(key.clone())], &mut out);
            }
        }
    }
    out.truncate(32);
    out
}

fn check_required(schema: &Value, map: &Map<String, Value>, at: &[Seg], out: &mut Vec<(String, String)>) {
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if map.get(name).is_none_or(Value::is_null) {
            let mut path = at.to_vec();
            path.push(Seg::Key(name.to_owned()));
            out.push((dotted(&path), "Required value".to_owned()));
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, at: &mut Vec<Seg>, out: &mut Vec<(String, String)>) {
    let field = dotted(at);
    if value.is_null() {
        if !schema.get("nullable").and_then(Value::as_bool).unwrap_or(false) && schema.get("type").is_some() {
            let t = schema["type"].as_str().unwrap_or_default();
            out.push((
                field.clone(),
                format!("Invalid value: \"null\": {field} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let actual = type_name(value);
    if let Some(wanted) = schema.get("type").and_then(Value::as_str) {
        let fits = wanted == actual
            || (wanted == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !fits {
            out.push((
                field.clone(),
                format!(
                    "Invalid value: \"{actual}\": {field} in body must be of type {wanted}: \"{actual}\""
                ),
            ));
            return;
        }
    } else if int_or_string && !matches!(actual, "integer" | "string") {
        out.push((
            field.clone(),
            format!(
                "Invalid value: \"{actual}\": {field} in body must be of type integer,string: \"{actual}\""
            ),
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let supported: Vec<String> = options.iter().map(Value::to_string).collect();
        out.push((
            field.clone(),
            format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
        ));
    }
    if let Some(n) = value.as_f64() {
        let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
        let exclusive = |k: &str| schema.get(k).and_then(Value::as_bool).unwrap_or(false);
        if let Some(min) = bound("minimum") {
            if exclusive("exclusiveMinimum") && n <= min {
                out.push((
                    field.clone(),
                    format!("Invalid value: {value}: {field} in body should be greater than {min}"),
                ));
            } else if n < min {
                out.push((
                    field.clone(),
                    format!(
                        "Invalid value: {value}: {field} in body should be greater than or equal to {min}"
                    ),
                ));
            }
        }
        if let Some(max) = bound("maximum") {
            if exclusive("exclusiveMaximum") && n >= max {
                out.push((
                    field.clone(),
                    format!("Invalid value: {value}: {field} in body should be less than {max}"),
                ));
            } else if n > max {
                out.push((
                    field.clone(),
                    format!("Invalid value: {value}: {field} in body should be less than or equal to {max}"),
                ));
            }
        }
    }
    let limit = |k: &str| schema.get(k).and_then(Value::as_u64);
    match value {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(max) = limit("maxLength").filter(|m| chars > *m) {
                out.push((
                    field.clone(),
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = limit("minLength").filter(|m| chars < *m) {
                out.push((
                    field.clone(),
                    format!("Invalid value: \"{s}\": {field} in body should be at least {min} chars long"),
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = limit("maxItems").filter(|m| n > *m) {
                out.push((
                    field.clone(),
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(min) = limit("minItems").filter(|m| n < *m) {
                out.push((
                    field.clone(),
                    format!("Invalid value: {n}: {field} in body should have at least {min} items"),
                ));
            }
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    at.push(Seg::Index(i));
                    check(s, v, at, out);
                    at.pop();
                }
            }
        }
        Value::Object(map) => {
            check_required(schema, map, at, out);
            if let Some(max) = limit("maxProperties").filter(|m| map.len() as u64 > *m) {
                out.push((
                    field.clone(),
                    format!("Too many: {}: must have at most {max} items", map.len()),
                ));
            }
            for (key, v) in map {
                if let Some(s) = property(schema, key) {
                    at.push(Seg::Key(key.clone()));
                    check(s, v, at, out);
                    at.pop();
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_in_a_deployment_is_found_and_known_fields_are_not() {
        let d = json!({"metadata": {"name": "a", "creationTimestamp": null}, "spec": {
            "replica": 2, "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [
                {"name": "a", "image": "x", "imagePullPolicyy": "Always", "resources": {}, "ports": [{"containerPort": 80}]}]}}}});
        let found: Vec<String> = builtin_unknown_fields("apps", "apps/v1", "Deployment", &d)
            .iter()
            .map(|p| dotted(p))
            .collect();
        assert_eq!(
            found,
            [
                "spec.replica",
                "spec.template.spec.containers[0].imagePullPolicyy"
            ]
        );
        assert!(builtin_unknown_fields("example.com", "example.com/v1", "Widget", &d).is_empty());
        let mut pruned = d.clone();
        remove_all(
            &mut pruned,
            &builtin_unknown_fields("apps", "apps/v1", "Deployment", &d),
        );
        assert!(builtin_unknown_fields("apps", "apps/v1", "Deployment", &pruned).is_empty());
        assert!(pruned.pointer("/spec/template/spec/containers/0/image").is_some());
    }

    #[test]
    fn custom_resources_are_pruned_defaulted_and_validated_by_their_schema() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 5}},
                "port": {"x-kubernetes-int-or-string": true},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}});
        let cr = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 3, "sizee": 1, "port": "http", "extra": {"anything": {"goes": 1}}, "labels": {"a": "b"}},
            "other": true});
        let unknown: Vec<String> = crd_unknown_fields(&schema, &cr)
            .iter()
            .map(|p| dotted(p))
            .collect();
        assert_eq!(unknown, ["other", "spec.sizee"]);
        let mut defaulted = cr.clone();
        apply_defaults(&schema, &mut defaulted);
        assert_eq!(defaulted["spec"]["color"], "red");
        assert!(crd_problems(&schema, &defaulted).is_empty());

        let bad = json!({"spec": {"size": "3", "color": "pink", "tags": ["a", "b", "toolong"], "port": 1.5}});
        let problems: Vec<String> = crd_problems(&schema, &bad)
            .into_iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("spec.size: Invalid value: \"string\"")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("spec.color: Unsupported value: \"pink\"")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("spec.tags: Too many: 3")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("spec.tags[2]: Too long")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("spec.port: Invalid value: \"number\"")),
            "{problems:?}"
        );
        let missing = crd_problems(&schema, &json!({"spec": {"size": 0}}));
        assert_eq!(missing[0].0, "spec.size");
        assert!(missing[0].1.contains("greater than or equal to 1"), "{missing:?}");
        let required = crd_problems(&schema, &json!({"spec": {}}));
        assert_eq!(required, [("spec.size".to_owned(), "Required value".to_owned())]);
    }
}
