//! Drift and health, decided by plain functions over plain data.
//!
//! Drift for the `kube` target: the server-side dry-run apply of the desired object is what
//! the object would be if skiff applied it now, defaults and other managers' fields
//! included; where it differs from the live object, the live object has drifted. Server
//! defaults and fields skiff never set are equal on both sides, so they are never drift.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use skiff_proto::api::{DriftPath, Health, ObjectRef};

/// Annotation turning self-heal off for one object (`"false"`).
pub const SELF_HEAL_ANNOTATION: &str = "skiff.dev/self-heal";

/// Fields that are bookkeeping, not state: never compared.
fn ignored(path: &[String]) -> bool {
    match path {
        [top] => top == "status",
        [m, f] if m == "metadata" => matches!(
            f.as_str(),
            "resourceVersion" | "managedFields" | "generation" | "uid" | "creationTimestamp" | "selfLink"
        ),
        _ => false,
    }
}

fn render(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if p.starts_with('[') {
            out.push_str(p);
        } else {
            out.push('.');
            out.push_str(p);
        }
    }
    out
}

fn walk(
    path: &mut Vec<String>,
    want: Option<&Value>,
    live: Option<&Value>,
    secret: bool,
    out: &mut Vec<DriftPath>,
) {
    if ignored(path) || want == live {
        return;
    }
    match (want, live) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                path.push(k.clone());
                walk(path, a.get(k), b.get(k), secret, out);
                path.pop();
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                path.push(format!("[{i}]"));
                walk(path, Some(x), Some(y), secret, out);
                path.pop();
            }
        }
        _ => {
            // Secret values are never reported, only that they differ.
            let hide = secret && path.first().is_some_and(|p| p == "data" || p == "stringData");
            out.push(DriftPath {
                path: render(path),
                desired: if hide { None } else { want.cloned() },
                live: if hide { None } else { live.cloned() },
            });
        }
    }
}

/// Where `live` differs from `desired` (the dry-run result), bookkeeping ignored.
pub fn diff(desired: &Value, live: &Value, kind: &str) -> Vec<DriftPath> {
    let mut out = Vec::new();
    walk(
        &mut Vec::new(),
        Some(desired),
        Some(live),
        kind == "Secret",
        &mut out,
    );
    out
}

/// Whether an object opted out of self-heal.
pub fn self_heal_disabled(object: &Value) -> bool {
    skiff_proto::manifest::annotation(object, SELF_HEAL_ANNOTATION) == Some("false")
}

/// One object's health: `Healthy`, `Progressing` or `Degraded` with a reason.
pub fn object_health(live: &Value) -> (&'static str, Option<String>) {
    let kind = live["kind"].as_str().unwrap_or_default();
    let status = &live["status"];
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c["type"] == t).cloned();
    let generation = int(&live["metadata"]["generation"]);
    let observed = int(&status["observedGeneration"]);
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" => {
            if let Some(p) = condition("Progressing")
                && p["status"] == "False"
            {
                let reason = p["reason"].as_str().unwrap_or("ProgressDeadlineExceeded");
                return (
                    "Degraded",
                    Some(format!("{reason}: {}", p["message"].as_str().unwrap_or(""))),
                );
            }
            if observed < generation {
                return (
                    "Progressing",
                    Some(format!("observed generation {observed} of {generation}")),
                );
            }
            let (want, updated, ready) = if kind == "DaemonSet" {
                (
                    int(&status["desiredNumberScheduled"]),
                    int(&status["updatedNumberScheduled"]),
                    int(&status["numberReady"]),
                )
            } else {
                let want = live["spec"]["replicas"].as_i64().unwrap_or(1);
                (
                    want,
                    int(&status["updatedReplicas"]),
                    int(&status["readyReplicas"]),
                )
            };
            if updated < want || ready < want {
                return (
                    "Progressing",
                    Some(format!("{ready}/{want} ready, {updated} updated")),
                );
            }
            ("Healthy", None)
        }
        "Job" => {
            if condition("Failed").is_some_and(|c| c["status"] == "True") {
                let c = condition("Failed").unwrap_or_default();
                return (
                    "Degraded",
                    Some(format!("job failed: {}", c["reason"].as_str().unwrap_or(""))),
                );
            }
            if condition("Complete").is_some_and(|c| c["status"] == "True") {
                return ("Healthy", None);
            }
            ("Progressing", Some("job running".to_owned()))
        }
        // An aggregated API: Available says whether its backend answers.
        "APIService" => match condition("Available") {
            Some(c) if c["status"] == "True" => ("Healthy", None),
            Some(c) => (
                "Degraded",
                Some(
                    format!(
                        "not Available: {} {}",
                        c["reason"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    )
                    .trim_end()
                    .to_owned(),
                ),
            ),
            None => ("Progressing", Some("no Available condition yet".to_owned())),
        },
        _ => match condition("Ready") {
            Some(c) if c["status"] == "True" => ("Healthy", None),
            Some(c) => (
                "Progressing",
                Some(format!("not Ready: {}", c["reason"].as_str().unwrap_or(""))),
            ),
            None => ("Healthy", None),
        },
    }
}

/// What [`object_health`] reads of a live object, read straight from a server's answer:
/// the rest of the object (a ConfigMap's data, managedFields) is skipped, never built.
#[derive(Debug, Default, Deserialize)]
pub struct Vitals {
    #[serde(default)]
    kind: String,
    /// The object's metadata, as far as health and drift need it.
    #[serde(default)]
    pub metadata: VitalMetadata,
    #[serde(default)]
    spec: VitalSpec,
    #[serde(default)]
    status: Value,
}

/// [`Vitals`]' part of the metadata.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VitalMetadata {
    /// The object's version.
    pub resource_version: Option<String>,
    generation: Option<i64>,
}

/// `spec.replicas` when it is an integer; any other `spec` (a custom resource's may be
/// anything) reads as none, skipped without being built.
#[derive(Debug, Default)]
struct VitalSpec {
    replicas: Option<i64>,
}

impl<'de> Deserialize<'de> for VitalSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = VitalSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object's spec")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VitalSpec, A::Error> {
                let mut spec = VitalSpec::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "replicas" {
                        spec.replicas = map.next_value::<Value>()?.as_i64();
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(spec)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<VitalSpec, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(VitalSpec::default())
            }
            fn visit_unit<E>(self) -> Result<VitalSpec, E> {
                Ok(VitalSpec::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<VitalSpec, E> {
                Ok(VitalSpec::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<VitalSpec, E> {
                Ok(VitalSpec::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<VitalSpec, E> {
                Ok(VitalSpec::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<VitalSpec, E> {
                Ok(VitalSpec::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<VitalSpec, E> {
                Ok(VitalSpec::default())
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Vitals {
    /// The object's health, as [`object_health`] finds it.
    pub fn health(&self) -> (&'static str, Option<String>) {
        let mut spec = serde_json::Map::new();
        if let Some(r) = self.spec.replicas {
            spec.insert("replicas".into(), r.into());
        }
        let live = serde_json::json!({
            "kind": self.kind,
            "metadata": {"generation": self.metadata.generation},
            "spec": spec,
            "status": self.status,
        });
        object_health(&live)
    }
}

/// Rolls objects' health up: Degraded if any is, else Progressing if any is, else Healthy.
pub fn roll_up(objects: &[(ObjectRef, &'static str, Option<String>)]) -> Health {
    let worst = if objects.iter().any(|o| o.1 == "Degraded") {
        "Degraded"
    } else if objects.iter().any(|o| o.1 == "Unknown") {
        "Unknown"
    } else if objects.iter().any(|o| o.1 == "Progressing") {
        "Progressing"
    } else {
        "Healthy"
    };
    let unhealthy: BTreeMap<String, String> = objects
        .iter()
        .filter(|o| o.1 != "Healthy")
        .map(|o| {
            (
                o.0.to_string(),
                o.2.clone().map_or(o.1.to_owned(), |r| format!("{}: {r}", o.1)),
            )
        })
        .collect();
    Health {
        state: worst.to_owned(),
        reason: unhealthy.iter().next().map(|(k, v)| format!("{k} {v}")),
        objects: unhealthy,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_and_bookkeeping_are_not_drift_hand_edits_are() {
        let want = json!({"metadata": {"name": "w", "resourceVersion": "5", "managedFields": [1]}, "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"}}, "status": {"x": 1}});
        let same = json!({"metadata": {"name": "w", "resourceVersion": "9"}, "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"}}, "status": {"x": 2}});
        assert!(diff(&want, &same, "Deployment").is_empty());
        let edited = json!({"metadata": {"name": "w"}, "spec": {"replicas": 5, "strategy": {"type": "RollingUpdate"}}});
        let d = diff(&want, &edited, "Deployment");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, ".spec.replicas");
        assert_eq!(
            (d[0].desired.clone(), d[0].live.clone()),
            (Some(json!(2)), Some(json!(5)))
        );
    }

    #[test]
    fn secret_values_are_never_reported() {
        let d = diff(
            &json!({"data": {"k": "c2VjcmV0"}}),
            &json!({"data": {"k": "b3RoZXI="}}),
            "Secret",
        );
        assert_eq!(d[0].path, ".data.k");
        assert!(d[0].desired.is_none() && d[0].live.is_none());
    }

    #[test]
    fn an_answers_vitals_give_the_health_of_the_whole_object() {
        let objects = [
            json!({"kind": "Deployment", "metadata": {"name": "w", "generation": 3, "resourceVersion": "7",
                   "managedFields": [{"manager": "skiff"}]},
                   "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c"}]}}},
                   "status": {"observedGeneration": 3, "updatedReplicas": 3, "readyReplicas": 2}}),
            json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {},
                   "status": {"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 1}}),
            json!({"kind": "StatefulSet", "metadata": {"generation": 2}, "spec": {"replicas": 1},
                   "status": {"observedGeneration": 1}}),
            json!({"kind": "Job", "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}),
            json!({"kind": "ConfigMap", "metadata": {"resourceVersion": "9"}, "data": {"a": "b"}}),
            // A custom resource's spec may be anything.
            json!({"kind": "Widget", "spec": "plain", "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Waiting"}]}}),
            json!({"kind": "Widget", "spec": {"replicas": "two", "x": [1, {"y": null}]}}),
            json!({"kind": "Widget", "spec": null}),
            json!({"kind": "Widget", "spec": [1, 2]}),
        ];
        for o in objects {
            let vitals: Vitals = serde_json::from_slice(&serde_json::to_vec(&o).unwrap()).unwrap();
            assert_eq!(vitals.health(), object_health(&o), "{o}");
            assert_eq!(
                vitals.metadata.resource_version.as_deref(),
                o.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            );
        }
    }

    #[test]
    fn an_apiservice_is_healthy_only_when_available() {
        let svc = |status: &str| {
            json!({"kind": "APIService", "status": {"conditions": [
                {"type": "Available", "status": status, "reason": "MissingEndpoints", "message": "no endpoints"}]}})
        };
        assert_eq!(object_health(&svc("True")).0, "Healthy");
        let (state, reason) = object_health(&svc("False"));
        assert_eq!(state, "Degraded");
        assert!(reason.unwrap().contains("MissingEndpoints"));
        assert_eq!(object_health(&json!({"kind": "APIService"})).0, "Progressing");
    }

    #[test]
    fn health_of_workloads_jobs_and_ready_conditions() {
        let dep = |observed: i64, ready: i64, cond: Value| {
            json!({"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
                   "status": {"observedGeneration": observed, "updatedReplicas": ready, "readyReplicas": ready, "conditions": cond}})
        };
        assert_eq!(object_health(&dep(2, 2, json!([]))).0, "Healthy");
        assert_eq!(object_health(&dep(1, 2, json!([]))).0, "Progressing");
        assert_eq!(object_health(&dep(2, 1, json!([]))).0, "Progressing");
        let stuck = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]);
        assert_eq!(object_health(&dep(2, 1, stuck)).0, "Degraded");
        let job = |t: &str| json!({"kind": "Job", "status": {"conditions": [{"type": t, "status": "True"}]}});
        assert_eq!(object_health(&job("Complete")).0, "Healthy");
        assert_eq!(object_health(&job("Failed")).0, "Degraded");
        assert_eq!(object_health(&json!({"kind": "ConfigMap"})).0, "Healthy");
        assert_eq!(
            object_health(
                &json!({"kind": "X", "status": {"conditions": [{"type": "Ready", "status": "False"}]}})
            )
            .0,
            "Progressing"
        );
    }
}
