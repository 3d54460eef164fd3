//! Drift and health, decided by plain functions over plain data.
//!
//! Drift for the `kube` target: the server-side dry-run apply of the desired object is what
//! the object would be if skiff applied it now, defaults and other managers' fields
//! included; where it differs from the live object, the live object has drifted. Server
//! defaults and fields skiff never set are equal on both sides, so they are never drift.

use std::collections::BTreeMap;

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
