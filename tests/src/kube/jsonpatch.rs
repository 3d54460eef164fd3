//! RFC 6902 JSON Patch (`kubectl patch --type=json`): add, remove, replace, move, copy and
//! test, each on an RFC 6901 pointer (`~1` for `/`, `~0` for `~`; `-` appends to an array).

use serde_json::Value;

/// Applies `ops` to `doc` in order; on error `doc` may be partly changed (callers patch a
/// copy).
pub fn apply(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch is an array of operations")?;
    for (i, op) in ops.iter().enumerate() {
        let field = |f: &str| {
            op.get(f)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {i}: missing {f:?}"))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => add(doc, path, value(op, i)?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                remove(doc, path)?;
                add(doc, path, value(op, i)?)?;
            }
            "move" => {
                let v = remove(doc, field("from")?)?;
                add(doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(field("from")?)
                    .cloned()
                    .ok_or_else(|| format!("operation {i}: no value at from"))?;
                add(doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value(op, i)?) {
                    return Err(format!("operation {i}: test failed at {path}"));
                }
            }
            other => return Err(format!("operation {i}: unknown op {other:?}")),
        }
    }
    Ok(())
}

fn value(op: &Value, i: usize) -> Result<Value, String> {
    op.get("value")
        .cloned()
        .ok_or_else(|| format!("operation {i}: missing \"value\""))
}

fn split(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("path {path:?} must start with '/'"))?;
    Ok((parent.to_owned(), last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, key) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(key, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let at = if key == "-" {
                a.len()
            } else {
                key.parse().map_err(|_| format!("bad array index in {path}"))?
            };
            if at > a.len() {
                return Err(format!("index out of range in {path}"));
            }
            a.insert(at, v);
            Ok(())
        }
        _ => Err(format!("no object or array at {parent:?} (for {path})")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&key).ok_or_else(|| format!("no value at {path}")),
        Some(Value::Array(a)) => {
            let at: usize = key.parse().map_err(|_| format!("bad array index in {path}"))?;
            (at < a.len())
                .then(|| a.remove(at))
                .ok_or_else(|| format!("index out of range in {path}"))
        }
        _ => Err(format!("no value at {path}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn rfc_6902_operations() {
        let mut doc =
            json!({"spec": {"replicas": 1, "ports": [{"port": 80}]}, "metadata": {"labels": {"a/b": "x"}}});
        super::apply(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/spec/ports/-", "value": {"port": 443}},
                {"op": "remove", "path": "/metadata/labels/a~1b"},
                {"op": "copy", "from": "/spec/replicas", "path": "/spec/copied"},
                {"op": "test", "path": "/spec/copied", "value": 3}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"replicas": 3, "copied": 3, "ports": [{"port": 80}, {"port": 443}]}, "metadata": {"labels": {}}})
        );
        assert!(
            super::apply(
                &mut doc,
                &json!([{"op": "test", "path": "/spec/replicas", "value": 4}])
            )
            .is_err()
        );
        assert!(super::apply(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
