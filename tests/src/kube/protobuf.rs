//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which client-go's typed
//! clients send for built-in kinds (`kubectl create namespace|configmap|secret|
//! serviceaccount`), read for the kinds those commands create: the `k8s\0` magic, a
//! `runtime.Unknown` envelope (typeMeta 1: apiVersion 1, kind 2; raw 2), and the object's
//! message by the field numbers of the Kubernetes `generated.proto` definitions. Other kinds
//! get the 415 of a server that does not read them. Answers are JSON, which such clients
//! accept too.

use base64::Engine as _;
use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: its number and its value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// The fields of a protobuf message, in order; an error if it is not well-formed.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".to_owned())
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                buf = buf.get(n..).ok_or("truncated fixed field")?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| "length too large")?;
                let (bytes, rest) = buf.split_at_checked(len).ok_or("truncated field")?;
                buf = rest;
                Field::Bytes(bytes)
            }
            wire => return Err(format!("unsupported wire type {wire}")),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".to_owned())
}

/// A `map<string, string>` (or `map<string, bytes>`, base64 as in JSON) entry: key 1, value 2.
fn map_entry(bytes: &[u8], binary: bool) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) if binary => {
                value = json!(base64::engine::general_purpose::STANDARD.encode(b));
            }
            (2, Field::Bytes(b)) => value = json!(text(b)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(map: &mut Map<String, Value>, field: &str, bytes: &[u8], binary: bool) -> Result<(), String> {
    let (k, v) = map_entry(bytes, binary)?;
    map.entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("an object")
        .insert(k, v);
    Ok(())
}

fn push(map: &mut Map<String, Value>, field: &str, value: Value) {
    map.entry(field)
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("a list")
        .push(value);
}

/// ObjectMeta: name 1, generateName 2, namespace 3, labels 11, annotations 12, finalizers 14.
fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    for (n, f) in fields(bytes)? {
        // Kubernetes' proto2 messages write empty strings too: an empty name or namespace is
        // one not set.
        if let Field::Bytes(b) = f
            && !(b.is_empty() && n <= 3)
        {
            match n {
                1 => _ = meta.insert("name".into(), json!(text(b)?)),
                2 => _ = meta.insert("generateName".into(), json!(text(b)?)),
                3 => _ = meta.insert("namespace".into(), json!(text(b)?)),
                11 => insert_entry(&mut meta, "labels", b, false)?,
                12 => insert_entry(&mut meta, "annotations", b, false)?,
                14 => push(&mut meta, "finalizers", json!(text(b)?)),
                _ => {}
            }
        }
    }
    Ok(Value::Object(meta))
}

/// The object in a protobuf body as JSON, or why it cannot be read (`Ok(None)`: a kind this
/// server does not read as protobuf).
pub fn decode(body: &[u8]) -> Result<Option<Value>, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the Kubernetes protobuf magic number")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(envelope)? {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                for (m, g) in fields(type_meta)? {
                    match (m, g) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    let (data_binary, known) = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace" | "ConfigMap" | "ServiceAccount") => (false, true),
        ("v1", "Secret") => (true, true),
        _ => (false, false),
    };
    if !known {
        return Ok(None);
    }
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n, f) {
            (_, 1, Field::Bytes(b)) => _ = object.insert("metadata".into(), object_meta(b)?),
            ("Namespace", 2, Field::Bytes(spec)) => {
                let mut s = Map::new();
                for (m, g) in fields(spec)? {
                    if let (1, Field::Bytes(b)) = (m, g) {
                        push(&mut s, "finalizers", json!(text(b)?));
                    }
                }
                object.insert("spec".into(), Value::Object(s));
            }
            ("ConfigMap" | "Secret", 2, Field::Bytes(b)) => {
                insert_entry(&mut object, "data", b, data_binary)?
            }
            ("ConfigMap", 3, Field::Bytes(b)) => insert_entry(&mut object, "binaryData", b, true)?,
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                _ = object.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", 3, Field::Bytes(b)) => _ = object.insert("type".into(), json!(text(b)?)),
            ("Secret", 4, Field::Bytes(b)) => insert_entry(&mut object, "stringData", b, false)?,
            ("ServiceAccount", 4, Field::Varint(v)) => {
                _ = object.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Some(Value::Object(object)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![
            u8::try_from(n << 3 | 2).unwrap(),
            u8::try_from(bytes.len()).unwrap(),
        ];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_namespace_and_a_secret_read_as_json() {
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let meta = [
            field(1, b"edge"),
            field(11, &[field(1, b"a"), field(2, b"b")].concat()),
        ]
        .concat();
        let raw = [field(1, &meta), field(2, &field(1, b"kubernetes"))].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert_eq!(
            decode(&body).unwrap().unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "edge", "labels": {"a": "b"}}, "spec": {"finalizers": ["kubernetes"]}})
        );

        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let raw = [
            field(1, &field(1, b"s")),
            field(2, &[field(1, b"k"), field(2, b"\x00\x01")].concat()),
            field(3, b"Opaque"),
        ]
        .concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        assert_eq!(
            decode(&body).unwrap().unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "AAE="}, "type": "Opaque"})
        );

        let deployment = [
            MAGIC.to_vec(),
            field(1, &[field(1, b"apps/v1"), field(2, b"Deployment")].concat()),
        ]
        .concat();
        assert_eq!(decode(&deployment).unwrap(), None);
        assert!(decode(b"{}").is_err());
        assert!(decode(&[MAGIC, &[0x0a, 0x7f]].concat()).is_err(), "truncated");
    }
}
