//! Fields the API server refuses to change once an object exists ("field is immutable"),
//! for the built-in kinds real manifests use. Checked on every write to an existing object,
//! dry-runs included, as the real server validates them.

use serde_json::Value;

/// The first immutable field `new` changes from `old`, with its new value.
pub fn violation(kind: &str, old: &Value, new: &Value) -> Option<(String, Value)> {
    let changed = |pointer: &str| {
        let before = old.pointer(pointer);
        (before.is_some() && before != new.pointer(pointer)).then(|| {
            (
                dotted(pointer),
                new.pointer(pointer).cloned().unwrap_or(Value::Null),
            )
        })
    };
    match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" => changed("/spec/selector"),
        "Job" => changed("/spec/selector").or_else(|| changed("/spec/template")),
        "Service" => {
            // "" and absent mean "allocate": only a set address that changes is refused.
            let ip = |v: &Value| v.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
            match (ip(old), ip(new)) {
                (Some(a), Some(b)) if a != b => Some(("spec.clusterIP".to_owned(), Value::String(b))),
                _ => None,
            }
        }
        "StatefulSet" => spec_except(
            old,
            new,
            &["replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy", "minReadySeconds"],
        )
        .then(|| ("spec".to_owned(), Value::String("updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".to_owned()))),
        "PersistentVolumeClaim" => {
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(r) = spec.pointer_mut("/resources").and_then(Value::as_object_mut) {
                    r.remove("requests");
                }
                if let Some(m) = spec.as_object_mut() {
                    m.remove("volumeAttributesClassName");
                }
                spec
            };
            (strip(old) != strip(new)).then(|| ("spec".to_owned(), new.get("spec").cloned().unwrap_or(Value::Null)))
        }
        "Pod" => {
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                        if let Some(c) = c.as_object_mut() {
                            c.remove("image");
                        }
                    }
                }
                if let Some(m) = spec.as_object_mut() {
                    for f in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"] {
                        m.remove(f);
                    }
                }
                spec
            };
            (strip(old) != strip(new)).then(|| ("spec".to_owned(), Value::String("Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds`".to_owned())))
        }
        _ => None,
    }
}

fn spec_except(old: &Value, new: &Value, mutable: &[&str]) -> bool {
    let strip = |v: &Value| {
        let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(m) = spec.as_object_mut() {
            for f in mutable {
                m.remove(*f);
            }
        }
        spec
    };
    strip(old) != strip(new)
}

fn dotted(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::violation;

    #[test]
    fn the_kinds_real_manifests_use() {
        let dep = |app: &str, image: &str| json!({"spec": {"selector": {"matchLabels": {"app": app}}, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
        assert_eq!(violation("Deployment", &dep("a", "x"), &dep("a", "y")), None);
        assert_eq!(
            violation("Deployment", &dep("a", "x"), &dep("b", "x")).unwrap().0,
            "spec.selector"
        );
        let svc = |ip: &str| json!({"spec": {"clusterIP": ip}});
        assert!(violation("Service", &svc("10.0.0.1"), &svc("10.0.0.2")).is_some());
        assert!(violation("Service", &svc("10.0.0.1"), &svc("")).is_none());
        let sts = |replicas: i64, svc: &str| json!({"spec": {"replicas": replicas, "serviceName": svc}});
        assert!(violation("StatefulSet", &sts(1, "a"), &sts(3, "a")).is_none());
        assert!(violation("StatefulSet", &sts(1, "a"), &sts(1, "b")).is_some());
        let pvc = |size: &str, class: &str| json!({"spec": {"storageClassName": class, "resources": {"requests": {"storage": size}}}});
        assert!(violation("PersistentVolumeClaim", &pvc("1Gi", "a"), &pvc("2Gi", "a")).is_none());
        assert!(violation("PersistentVolumeClaim", &pvc("1Gi", "a"), &pvc("1Gi", "b")).is_some());
        assert!(
            violation(
                "ConfigMap",
                &json!({"data": {"a": "1"}}),
                &json!({"data": {"a": "2"}})
            )
            .is_none()
        );
    }
}
