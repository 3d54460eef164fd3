//! Substitution of per-cluster values into manifests (`FORMAT.md` §8), done by the agent
//! after verification, so one signed bundle per channel serves every cluster.
//!
//! The syntax, exactly: `${NAME}` and `${NAME:=DEFAULT}`, where `NAME` is a letter or `_`
//! followed by letters, digits and `_`, and `DEFAULT` holds no `}`. `$${` stands for a literal
//! `${` (write `$${HOSTNAME}` to keep a shell variable). Anything else — `$NAME`,
//! `${NAME:-x}`, `${#x}`, `${a.b}` — is not a reference and stays as written. Only string
//! values are substituted (never mapping keys). A YAML scalar written plain (unquoted) that
//! is exactly one reference takes the type the substituted text would have had there
//! (`replicas: ${replicas}` becomes a number); quoted, or with other text around it, it
//! stays a string. An object annotated `skiff.dev/substitute: disabled` is left as written.

use std::collections::BTreeMap;

use serde_json::Value;

/// Annotation that turns substitution off for one object (`disabled`).
pub const SUBSTITUTE_ANNOTATION: &str = "skiff.dev/substitute";

/// Prefix the manifest parser puts on a plain scalar that is exactly one reference (when
/// asked to), so substitution can type it; removed by [`substitute_object`] and [`unmark`].
pub(crate) const PLAIN_MARK: char = '\u{1}';

/// The variable holding the cluster's name.
pub const CLUSTER_NAME: &str = "cluster_name";

/// Prefix of the variables holding the cluster's labels.
pub const LABEL_PREFIX: &str = "cluster_label_";

/// Checks a variable name: a letter or `_`, then letters, digits and `_`; at most 128 bytes.
pub fn check_variable_name(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err("empty"),
        Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
            return Err("must start with a letter or '_'");
        }
        Some(_) => {}
    }
    if name.len() > 128 {
        return Err("longer than 128 characters");
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("only letters, digits and '_' are allowed");
    }
    Ok(())
}

/// The variable a label becomes: `cluster_label_` and the key with every character other
/// than a letter, digit or `_` turned into `_` (`topology.kubernetes.io/region` →
/// `cluster_label_topology_kubernetes_io_region`).
pub fn label_variable(key: &str) -> String {
    let mut out = String::with_capacity(LABEL_PREFIX.len() + key.len());
    out.push_str(LABEL_PREFIX);
    out.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// The variables every cluster has: its name and its labels.
pub fn cluster_variables(cluster: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (label_variable(k), v.clone()))
        .collect();
    out.insert(CLUSTER_NAME.to_owned(), cluster.to_owned());
    out
}

/// A reference with no value and no default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The variable.
    pub variable: String,
    /// Where in the object (a JSON path, `.spec.replicas`).
    pub path: String,
}

/// One reference found in a string.
struct Reference<'a> {
    /// Byte range of the whole `${…}`.
    start: usize,
    end: usize,
    name: &'a str,
    default: Option<&'a str>,
}

/// The next reference or escape at or after `from`: `Ok(reference)`, or `Err(i)` for an
/// escape `$${` at `i`.
fn next_reference(text: &str, from: usize) -> Option<Result<Reference<'_>, usize>> {
    let bytes = text.as_bytes();
    let mut i = from;
    while let Some(off) = text[i..].find("${") {
        let at = i + off;
        if at > 0 && bytes[at - 1] == b'$' && (at < 2 || bytes[at - 2] != b'$') {
            return Some(Err(at - 1));
        }
        let body_start = at + 2;
        if let Some(close) = text[body_start..].find('}') {
            let body = &text[body_start..body_start + close];
            let (name, default) = match body.split_once(":=") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            if check_variable_name(name).is_ok() {
                return Some(Ok(Reference {
                    start: at,
                    end: body_start + close + 1,
                    name,
                    default,
                }));
            }
        }
        i = body_start;
    }
    None
}

/// Substitutes the references in one string; `Ok(None)` when it holds none (unchanged).
/// `Err` names the first variable with no value and no default.
pub fn substitute_str<'v>(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<&'v str>,
) -> Result<Option<String>, String> {
    let mut out = String::new();
    let mut copied = 0;
    let mut pos = 0;
    while let Some(found) = next_reference(text, pos) {
        match found {
            Err(escape) => {
                // `$${` → `${`: keep everything up to the second `$`.
                out.push_str(&text[copied..escape]);
                copied = escape + 1;
                pos = escape + 3;
            }
            Ok(r) => {
                let value = match (lookup(r.name), r.default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d,
                    (None, None) => return Err(r.name.to_owned()),
                };
                out.push_str(&text[copied..r.start]);
                out.push_str(value);
                copied = r.end;
                pos = r.end;
            }
        }
    }
    if copied == 0 {
        return Ok(None);
    }
    out.push_str(&text[copied..]);
    Ok(Some(out))
}

/// Whether a plain scalar's text is exactly one reference (the parser marks these).
pub(crate) fn is_whole_reference(text: &str) -> bool {
    matches!(next_reference(text, 0), Some(Ok(r)) if r.start == 0 && r.end == text.len())
}

/// Whether an object opted out of substitution.
pub fn opted_out(object: &Value) -> bool {
    crate::manifest::annotation(object, SUBSTITUTE_ANNOTATION) == Some("disabled")
}

/// Substitutes every string value of an object (unless it opted out), typing marked plain
/// scalars. Returns the number of strings changed.
pub fn substitute_object<'v>(
    object: &mut Value,
    lookup: &dyn Fn(&str) -> Option<&'v str>,
) -> Result<usize, Missing> {
    if opted_out(object) {
        unmark(object);
        return Ok(0);
    }
    let mut path = String::new();
    walk(object, lookup, &mut path)
}

fn walk<'v>(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<&'v str>,
    path: &mut String,
) -> Result<usize, Missing> {
    match value {
        Value::String(s) => {
            let (plain, text) = match s.strip_prefix(PLAIN_MARK) {
                Some(rest) => (true, rest),
                None => (false, s.as_str()),
            };
            let replaced = substitute_str(text, lookup).map_err(|variable| Missing {
                variable,
                path: if path.is_empty() {
                    ".".to_owned()
                } else {
                    path.clone()
                },
            })?;
            match (replaced, plain) {
                (Some(new), true) => {
                    *value = crate::manifest::resolve_plain_text(&new);
                    Ok(1)
                }
                (Some(new), false) => {
                    *s = new;
                    Ok(1)
                }
                (None, true) => {
                    *s = text.to_owned();
                    Ok(0)
                }
                (None, false) => Ok(0),
            }
        }
        Value::Array(items) => {
            let mut n = 0;
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                n += walk(item, lookup, path)?;
                path.truncate(len);
            }
            Ok(n)
        }
        Value::Object(map) => {
            let mut n = 0;
            for (k, v) in map.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                n += walk(v, lookup, path)?;
                path.truncate(len);
            }
            Ok(n)
        }
        _ => Ok(0),
    }
}

/// Removes the parser's marks (substitution off, or the object opted out).
pub fn unmark(value: &mut Value) {
    match value {
        Value::String(s) if s.starts_with(PLAIN_MARK) => {
            s.remove(0);
        }
        Value::Array(items) => items.iter_mut().for_each(unmark),
        Value::Object(map) => map.values_mut().for_each(unmark),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sub(text: &str, v: &BTreeMap<String, String>) -> Result<Option<String>, String> {
        substitute_str(text, &|n| v.get(n).map(String::as_str))
    }

    #[test]
    fn only_the_documented_syntax_is_substituted() {
        let v = vars(&[("site", "s-17"), ("region", "eu")]);
        assert_eq!(sub("shop-${site}", &v).unwrap().as_deref(), Some("shop-s-17"));
        assert_eq!(sub("${site}.${region}", &v).unwrap().as_deref(), Some("s-17.eu"));
        assert_eq!(sub("${missing:=dflt}", &v).unwrap().as_deref(), Some("dflt"));
        assert_eq!(sub("${missing:=}", &v).unwrap().as_deref(), Some(""));
        assert_eq!(sub("${site:=other}", &v).unwrap().as_deref(), Some("s-17"));
        // Not references: left exactly as written.
        for same in [
            "$site",
            "${site:-x}",
            "${#site}",
            "${a.b}",
            "${1}",
            "${",
            "${site",
            "$ {site}",
            "cost: $5",
        ] {
            assert_eq!(sub(same, &v).unwrap(), None, "{same}");
        }
        // Escapes.
        assert_eq!(sub("$${HOSTNAME}", &v).unwrap().as_deref(), Some("${HOSTNAME}"));
        assert_eq!(
            sub("echo $${A} ${site}", &v).unwrap().as_deref(),
            Some("echo ${A} s-17")
        );
        assert_eq!(sub("$$", &v).unwrap(), None);
        // A value is not substituted again.
        let tricky = vars(&[("a", "${b}"), ("b", "no")]);
        assert_eq!(sub("${a}", &tricky).unwrap().as_deref(), Some("${b}"));
        // Missing, without default.
        assert_eq!(sub("x ${HOSTNAME} y", &v), Err("HOSTNAME".to_owned()));
    }

    #[test]
    fn labels_become_variables() {
        let labels = vars(&[("topology.kubernetes.io/region", "eu-1"), ("tier", "edge")]);
        let v = cluster_variables("shop-1", &labels);
        assert_eq!(v["cluster_name"], "shop-1");
        assert_eq!(v["cluster_label_topology_kubernetes_io_region"], "eu-1");
        assert_eq!(v["cluster_label_tier"], "edge");
    }

    #[test]
    fn objects_are_walked_typed_and_can_opt_out() {
        let v = vars(&[("replicas", "3"), ("site", "s1")]);
        let mut o = serde_json::json!({
            "metadata": {"name": "web-${site}"},
            "spec": {"replicas": format!("{PLAIN_MARK}${{replicas}}"), "quoted": "${replicas}",
                     "args": ["--site=${site}", "$${KEEP}"]}
        });
        let n = substitute_object(&mut o, &|k| v.get(k).map(String::as_str)).unwrap();
        assert_eq!(n, 5, "four references and one escape");
        assert_eq!(o["spec"]["replicas"], 3);
        assert_eq!(o["spec"]["quoted"], "3");
        assert_eq!(o["metadata"]["name"], "web-s1");
        assert_eq!(o["spec"]["args"][1], "${KEEP}");

        let mut missing = serde_json::json!({"spec": {"x": [{"y": "${nope}"}]}});
        let e = substitute_object(&mut missing, &|k| v.get(k).map(String::as_str)).unwrap_err();
        assert_eq!(
            e,
            Missing {
                variable: "nope".to_owned(),
                path: ".spec.x[0].y".to_owned()
            }
        );

        let mut out = serde_json::json!({
            "metadata": {"annotations": {SUBSTITUTE_ANNOTATION: "disabled"}},
            "data": {"run.sh": "echo ${HOSTNAME}", "n": format!("{PLAIN_MARK}${{x}}")}
        });
        let before = out.clone();
        assert_eq!(substitute_object(&mut out, &|_| None).unwrap(), 0);
        assert_eq!(out["data"]["run.sh"], before["data"]["run.sh"]);
        assert_eq!(out["data"]["n"], "${x}");
    }
}
