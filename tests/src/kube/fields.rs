//! Field ownership for server-side apply, as structured-merge-diff does it, without schemas.
//!
//! A [`FieldSet`] holds the leaf paths a manager set (scalars, atomic lists, empty maps) and
//! the items it set in associative lists. Lists of objects are associative when their items
//! carry a merge key Kubernetes uses (`name`; `containerPort`/`port` with `protocol` for
//! ports; `mountPath` for volume mounts; `type` for conditions; `ip` for host aliases);
//! other lists are atomic and owned whole. That matches the built-in types' schemas for the
//! lists manifests use; custom resources get the same heuristic instead of their schema.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// One step of a path: a map field, or an associative-list item named by its key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pe {
    /// `f:<name>`
    Field(String),
    /// `k:<canonical JSON of the key fields>`
    Key(String),
}

/// A path from the object root.
pub type Path = Vec<Pe>;

/// The fields one manager owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// Leaves: scalars, atomic lists, empty maps.
    pub leaves: BTreeSet<Path>,
    /// Associative-list items (the `.` of `k:{…}` in fieldsV1).
    pub items: BTreeSet<Path>,
}

impl FieldSet {
    /// No fields.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.items.is_empty()
    }

    /// Whether `path` or anything below it is in the set.
    pub fn touches(&self, path: &[Pe]) -> bool {
        self.leaves.iter().chain(&self.items).any(|p| p.starts_with(path))
    }

    /// Keeps only the paths for which `keep` holds.
    pub fn retain(&mut self, keep: impl Fn(&Path) -> bool) {
        self.leaves.retain(&keep);
        self.items.retain(&keep);
    }

    /// Adds every path of `other`.
    pub fn extend(&mut self, other: &FieldSet) {
        self.leaves.extend(other.leaves.iter().cloned());
        self.items.extend(other.items.iter().cloned());
    }

    /// Removes every path of `other`.
    pub fn subtract(&mut self, other: &FieldSet) {
        self.leaves.retain(|p| !other.leaves.contains(p));
        self.items.retain(|p| !other.items.contains(p));
    }
}

/// The merge-key field names of a list of objects at field `field`, if it is associative.
fn list_keys(field: &str, items: &[Value]) -> Option<&'static [&'static str]> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    let all_have = |k: &str| items.iter().all(|i| i.get(k).is_some_and(|v| !v.is_null()));
    let keys: &'static [&'static str] = match field {
        "ports" if all_have("containerPort") => &["containerPort", "protocol"],
        "ports" if all_have("port") => &["port", "protocol"],
        "volumeMounts" | "volumeDevices" if all_have("mountPath") || all_have("devicePath") => {
            if all_have("mountPath") {
                &["mountPath"]
            } else {
                &["devicePath"]
            }
        }
        "conditions" if all_have("type") => &["type"],
        "hostAliases" if all_have("ip") => &["ip"],
        _ if items.iter().all(|i| i.get("name").is_some_and(Value::is_string)) => &["name"],
        _ => return None,
    };
    // Keys must be unique, or the list cannot be merged item by item.
    let mut seen = BTreeSet::new();
    items
        .iter()
        .all(|i| seen.insert(item_key(i, keys)))
        .then_some(keys)
}

/// Canonical JSON of an item's key fields (`protocol` defaults to TCP, as the server would).
fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut map = Map::new();
    for k in keys {
        let v = match item.get(*k) {
            Some(v) if !v.is_null() => v.clone(),
            _ if *k == "protocol" => Value::String("TCP".to_owned()),
            _ => continue,
        };
        map.insert((*k).to_owned(), v);
    }
    Value::Object(map).to_string()
}

/// The fields a value sets, skipping the paths `ignore` names (and everything below them).
pub fn field_set(value: &Value, ignore: &dyn Fn(&[Pe]) -> bool) -> FieldSet {
    let mut set = FieldSet::default();
    if let Value::Object(map) = value {
        walk_map(map, &mut Vec::new(), ignore, &mut set);
    }
    set
}

fn walk_map(map: &Map<String, Value>, path: &mut Path, ignore: &dyn Fn(&[Pe]) -> bool, set: &mut FieldSet) {
    for (name, child) in map {
        path.push(Pe::Field(name.clone()));
        if !ignore(path) {
            walk_value(name, child, path, ignore, set);
        }
        path.pop();
    }
}

fn walk_value(
    name: &str,
    value: &Value,
    path: &mut Path,
    ignore: &dyn Fn(&[Pe]) -> bool,
    set: &mut FieldSet,
) {
    match value {
        Value::Object(m) if !m.is_empty() => walk_map(m, path, ignore, set),
        Value::Array(items) => match list_keys(name, items) {
            Some(keys) => {
                for item in items {
                    path.push(Pe::Key(item_key(item, keys)));
                    set.items.insert(path.clone());
                    if let Value::Object(m) = item {
                        walk_map(m, path, ignore, set);
                    }
                    path.pop();
                }
            }
            None => {
                set.leaves.insert(path.clone());
            }
        },
        _ => {
            set.leaves.insert(path.clone());
        }
    }
}

/// The value at `path`, if present.
pub fn get<'a>(value: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut current = value;
    let mut parent_field = "";
    for pe in path {
        match pe {
            Pe::Field(name) => {
                current = current.as_object()?.get(name)?;
                parent_field = name;
            }
            Pe::Key(key) => {
                let items = current.as_array()?;
                let keys = list_keys(parent_field, items)?;
                current = items.iter().find(|i| item_key(i, keys) == *key)?;
            }
        }
    }
    Some(current)
}

/// Removes the value at `path` (a map field or a list item); returns whether it was there.
pub fn remove(value: &mut Value, path: &[Pe]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = value;
    let mut parent_field = String::new();
    for pe in parents {
        match pe {
            Pe::Field(name) => {
                let Some(next) = current.as_object_mut().and_then(|m| m.get_mut(name)) else {
                    return false;
                };
                current = next;
                parent_field = name.clone();
            }
            Pe::Key(key) => {
                let Some(items) = current.as_array_mut() else {
                    return false;
                };
                let Some(keys) = list_keys(&parent_field, items) else {
                    return false;
                };
                let Some(next) = items.iter_mut().find(|i| item_key(i, keys) == *key) else {
                    return false;
                };
                current = next;
            }
        }
    }
    match last {
        Pe::Field(name) => current.as_object_mut().is_some_and(|m| m.remove(name).is_some()),
        Pe::Key(key) => {
            let Some(items) = current.as_array_mut() else {
                return false;
            };
            let Some(keys) = list_keys(&parent_field, items) else {
                return false;
            };
            let before = items.len();
            items.retain(|i| item_key(i, keys) != *key);
            items.len() != before
        }
    }
}

/// Merges `config` into `live`: maps field by field, associative lists item by item (the
/// config's items in its order, then live items it does not name), everything else replaced.
pub fn merge(live: &mut Value, config: &Value) {
    merge_named("", live, config);
}

fn merge_named(name: &str, live: &mut Value, config: &Value) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                match l.get_mut(k) {
                    Some(lv) => merge_named(k, lv, cv),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) => {
            let keys = list_keys(name, c).filter(|k| list_keys(name, l).is_some_and(|lk| lk == *k));
            match keys {
                Some(keys) => {
                    let mut rest: Vec<Value> = std::mem::take(l);
                    let mut out = Vec::with_capacity(c.len() + rest.len());
                    for item in c {
                        let key = item_key(item, keys);
                        match rest.iter().position(|i| item_key(i, keys) == key) {
                            Some(pos) => {
                                let mut merged = rest.remove(pos);
                                merge_named("", &mut merged, item);
                                out.push(merged);
                            }
                            None => out.push(item.clone()),
                        }
                    }
                    out.extend(rest);
                    *l = out;
                }
                None => *l = c.clone(),
            }
        }
        (live, config) => *live = config.clone(),
    }
}

/// The set as `fieldsV1` JSON (`{"f:spec": {"f:replicas": {}}, …}`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    fn node<'a>(mut current: &'a mut Map<String, Value>, path: &Path) -> &'a mut Map<String, Value> {
        for pe in path {
            let key = match pe {
                Pe::Field(n) => format!("f:{n}"),
                Pe::Key(k) => format!("k:{k}"),
            };
            current = current
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("fieldsV1 nodes are maps");
        }
        current
    }
    let mut root = Map::new();
    for path in &set.leaves {
        node(&mut root, path);
    }
    for path in &set.items {
        node(&mut root, path).insert(".".to_owned(), Value::Object(Map::new()));
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn f(n: &str) -> Pe {
        Pe::Field(n.to_owned())
    }

    #[test]
    fn containers_are_keyed_by_name_and_ports_by_port_and_protocol() {
        let v = json!({"spec": {"containers": [{"name": "web", "image": "a", "ports": [{"containerPort": 80}]}], "args": ["x"]}});
        let set = field_set(&v, &|_| false);
        let web = Pe::Key(r#"{"name":"web"}"#.to_owned());
        let port = Pe::Key(r#"{"containerPort":80,"protocol":"TCP"}"#.to_owned());
        assert!(set.items.contains(&vec![f("spec"), f("containers"), web.clone()]));
        assert!(
            set.leaves
                .contains(&vec![f("spec"), f("containers"), web.clone(), f("image")])
        );
        assert!(set.items.contains(&vec![
            f("spec"),
            f("containers"),
            web.clone(),
            f("ports"),
            port.clone()
        ]));
        assert!(
            set.leaves.contains(&vec![f("spec"), f("args")]),
            "scalar lists are atomic"
        );
        let image = vec![f("spec"), f("containers"), web, f("image")];
        assert_eq!(get(&v, &image), Some(&json!("a")));
        let fv1 = to_fields_v1(&set);
        assert!(
            fv1["f:spec"]["f:containers"][r#"k:{"name":"web"}"#]["."].is_object(),
            "{fv1}"
        );
    }

    #[test]
    fn merge_keeps_other_items_and_replaces_atomic_lists() {
        let mut live =
            json!({"c": [{"name": "a", "x": 1}, {"name": "b", "x": 2}], "l": [1, 2], "m": {"k": 1}});
        merge(
            &mut live,
            &json!({"c": [{"name": "b", "x": 3}], "l": [3], "m": {"j": 2}}),
        );
        assert_eq!(
            live,
            json!({"c": [{"name": "b", "x": 3}, {"name": "a", "x": 1}], "l": [3], "m": {"k": 1, "j": 2}})
        );
    }

    #[test]
    fn remove_fields_and_items() {
        let mut v = json!({"c": [{"name": "a"}, {"name": "b"}], "m": {"k": 1}});
        assert!(remove(&mut v, &[f("c"), Pe::Key(r#"{"name":"a"}"#.into())]));
        assert!(remove(&mut v, &[f("m"), f("k")]));
        assert!(!remove(&mut v, &[f("m"), f("nope")]));
        assert_eq!(v, json!({"c": [{"name": "b"}], "m": {}}));
    }
}
