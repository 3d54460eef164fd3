//! Validation of built-in objects that server-side apply users run into: duplicate keys in
//! keyed lists (a port, container, env var or volume defined twice — what a hand edit that
//! changed an item's key plus an apply produces) and the 1 MiB limit of ConfigMap and
//! Secret data. Messages as the real API server words them.

use serde_json::Value;

/// The first problem found: (field path, detail).
pub fn problem(kind: &str, object: &Value) -> Option<(String, String)> {
    match kind {
        "Service" => duplicates(object, "/spec/ports", &["port", "protocol"], "spec.ports")
            .or_else(|| duplicates(object, "/spec/ports", &["name"], "spec.ports")),
        "Pod" => pod_spec(object.get("spec")?, "spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            pod_spec(object.pointer("/spec/template/spec")?, "spec.template.spec")
        }
        "ConfigMap" | "Secret" => {
            let size: usize = ["data", "binaryData", "stringData"]
                .iter()
                .filter_map(|f| object.get(*f)?.as_object())
                .flat_map(|m| m.iter())
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum();
            (size > 1 << 20).then(|| {
                (
                    "data".to_owned(),
                    "Too long: must have at most 1048576 bytes".to_owned(),
                )
            })
        }
        _ => None,
    }
}

fn pod_spec(spec: &Value, at: &str) -> Option<(String, String)> {
    for list in ["initContainers", "containers"] {
        let pointer = format!("/{list}");
        if let Some(p) = duplicates(spec, &pointer, &["name"], &format!("{at}.{list}")) {
            return Some(p);
        }
        for (i, c) in spec
            .pointer(&pointer)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(p) = duplicates(
                c,
                "/ports",
                &["containerPort", "protocol"],
                &format!("{at}.{list}[{i}].ports"),
            ) {
                return Some(p);
            }
        }
    }
    duplicates(spec, "/volumes", &["name"], &format!("{at}.volumes"))
}

/// Items of the list at `pointer` that repeat the same values of `keys` (absent keys count
/// as empty; items with no key at all are skipped).
fn duplicates(object: &Value, pointer: &str, keys: &[&str], field: &str) -> Option<(String, String)> {
    let items = object.pointer(pointer)?.as_array()?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let key: Vec<String> = keys
            .iter()
            .map(|k| match item.get(*k) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None if *k == "protocol" => "TCP".to_owned(),
                None => String::new(),
            })
            .collect();
        if key.iter().all(String::is_empty) {
            continue;
        }
        if !seen.insert(key.clone()) {
            let sub = keys.first().copied().unwrap_or_default();
            let value = item
                .get(sub)
                .map_or_else(|| "\"\"".to_owned(), ToString::to_string);
            return Some((format!("{field}[{i}].{sub}"), format!("Duplicate value: {value}")));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::problem;

    #[test]
    fn duplicate_keys_and_oversized_data() {
        let svc = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 8080}]}});
        assert_eq!(problem("Service", &svc).unwrap().0, "spec.ports[1].name");
        let ok = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}});
        assert!(problem("Service", &ok).is_none());
        let dep = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        assert!(problem("Deployment", &dep).unwrap().1.contains("Duplicate value"));
        let big = json!({"data": {"k": "x".repeat((1 << 20) + 1)}});
        assert!(problem("ConfigMap", &big).unwrap().1.contains("1048576"));
    }
}
