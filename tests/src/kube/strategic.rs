//! Strategic merge patch (`application/strategic-merge-patch+json`), the patch `kubectl
//! patch`, `kubectl set image`, `kubectl edit` and client-side `kubectl apply` send for
//! built-in kinds. Like a JSON merge patch, except that lists whose field declares a merge
//! key (containers by `name`, container ports by `containerPort`, Service ports by `port`,
//! …) are merged item by item, `finalizers` are merged as a set, and the directives
//! `$patch` (`replace`, `delete`, `merge`), `$retainKeys`, `$setElementOrder/<field>` and
//! `$deleteFromPrimitiveList/<field>` are honoured. Merge keys are those the built-in
//! types declare (`patchMergeKey` in their Go definitions) for the kinds served here.

use serde_json::{Map, Value};

/// How a list field merges: by the key of its items, as a set of values, or (the
/// default) replaced whole.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ListStrategy {
    Key(&'static str),
    Set,
    Replace,
}

/// The merge strategy of list field `field` whose parent is at `parents` (field names from
/// the root, list indexes left out).
fn strategy(parents: &[String], field: &str) -> ListStrategy {
    let in_container = parents.last().is_some_and(|p| {
        matches!(
            p.as_str(),
            "containers" | "initContainers" | "ephemeralContainers"
        )
    });
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::Key("name"),
        "volumeMounts" => ListStrategy::Key("mountPath"),
        "volumeDevices" => ListStrategy::Key("devicePath"),
        "ports" if in_container => ListStrategy::Key("containerPort"),
        "ports" if parents.last().is_some_and(|p| p == "spec") => ListStrategy::Key("port"),
        "ownerReferences" => ListStrategy::Key("uid"),
        "conditions" => ListStrategy::Key("type"),
        "hostAliases" => ListStrategy::Key("ip"),
        "topologySpreadConstraints" => ListStrategy::Key("topologyKey"),
        "finalizers" => ListStrategy::Set,
        _ => ListStrategy::Replace,
    }
}

/// Applies `patch` to `target`. An error names what in the patch is malformed.
pub fn apply(target: &mut Value, patch: &Value) -> Result<(), String> {
    merge_map(target, patch, &mut Vec::new())
}

fn merge_map(target: &mut Value, patch: &Value, at: &mut Vec<String>) -> Result<(), String> {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type {other:?} at {}", at.join("."))),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("an object");
    let mut orders: Vec<(String, &Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let order = value.as_array().ok_or_else(|| format!("{key} must be a list"))?;
            orders.push((field.to_owned(), order));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = value.as_array().ok_or_else(|| format!("{key} must be a list"))?;
            if let Some(list) = map.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if value.is_null() {
            map.remove(key);
            continue;
        }
        match value {
            Value::Object(_) => {
                let child = map.entry(key.clone()).or_insert(Value::Null);
                at.push(key.clone());
                merge_map(child, value, at)?;
                at.pop();
                if child.is_null() {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let merged = merge_list(map.get(key), items, at, key)?;
                map.insert(key.clone(), Value::Array(merged));
            }
            _ => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
    for (field, order) in orders {
        if let Some(list) = map.get_mut(&field).and_then(Value::as_array_mut) {
            reorder(list, order, strategy(at, &field));
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        map.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(
    live: Option<&Value>,
    items: &[Value],
    at: &mut Vec<String>,
    field: &str,
) -> Result<Vec<Value>, String> {
    let live: Vec<Value> = live.and_then(Value::as_array).cloned().unwrap_or_default();
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect());
    }
    match strategy(at, field) {
        ListStrategy::Replace => Ok(items.to_vec()),
        ListStrategy::Set => {
            let mut out = live;
            for item in items {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::Key(key) => {
            let mut out = live;
            at.push(field.to_owned());
            for item in items {
                let id = item
                    .get(key)
                    .ok_or_else(|| format!("map: {item} does not contain declared merge key: {key}"))?;
                let found = out.iter().position(|l| l.get(key) == Some(id));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = found {
                        out.remove(i);
                    }
                    continue;
                }
                match found {
                    Some(i) => merge_map(&mut out[i], item, at)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        merge_map(&mut fresh, item, at)?;
                        out.push(fresh);
                    }
                }
            }
            at.pop();
            Ok(out)
        }
    }
}

/// `$setElementOrder`: the items named come first, in that order; the rest keep theirs.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let id = |v: &Value| -> Value {
        match strategy {
            ListStrategy::Key(k) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let mut rest = std::mem::take(list);
    for wanted in order {
        let wanted_id = id(wanted);
        if let Some(i) = rest.iter().position(|v| id(v) == wanted_id) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "finalizers": ["a"]}, "spec": {"template": {"spec": {
            "containers": [
                {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "name": "http"}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "envoy:1"}],
            "tolerations": [{"key": "x"}]}}}})
    }

    #[test]
    fn containers_merge_by_name_and_other_lists_are_replaced() {
        let mut d = deployment();
        apply(&mut d, &json!({"spec": {"template": {"spec": {
            "containers": [{"name": "web", "image": "nginx:2", "env": [{"name": "B", "$patch": "delete"}, {"name": "C", "value": "3"}]}],
            "tolerations": [{"key": "y"}]}}}}))
        .unwrap();
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["containers"][0]["image"], "nginx:2");
        assert_eq!(
            spec["containers"][0]["ports"][0]["containerPort"], 80,
            "untouched"
        );
        assert_eq!(
            spec["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(spec["containers"][1]["name"], "sidecar", "kept");
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "y"}]),
            "no merge key: replaced"
        );
    }

    #[test]
    fn directives_replace_delete_order_retain_and_primitive_lists() {
        let mut d = deployment();
        apply(&mut d, &json!({
            "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
                "containers": [{"name": "web", "ports": [{"containerPort": 8080}, {"$patch": "replace"}]}]}}}}))
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["b"]));
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "sidecar");
        assert_eq!(containers[1]["ports"], json!([{"containerPort": 8080}]));

        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}], "selector": {"a": "b"}}});
        apply(
            &mut svc,
            &json!({"spec": {"$retainKeys": ["ports", "type"], "type": "ClusterIP",
            "ports": [{"port": 80, "nodePort": null}]}}),
        )
        .unwrap();
        assert_eq!(
            svc,
            json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}})
        );

        let mut cm = json!({"data": {"a": "1"}, "metadata": {"labels": {"x": "y"}}});
        apply(
            &mut cm,
            &json!({"metadata": {"labels": {"$patch": "replace", "z": "w"}}, "data": {"$patch": "delete"}}),
        )
        .unwrap();
        assert_eq!(cm, json!({"metadata": {"labels": {"z": "w"}}}));
        let e = apply(
            &mut deployment(),
            &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        )
        .unwrap_err();
        assert!(e.contains("merge key"), "{e}");
    }
}
