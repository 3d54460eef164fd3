//! A small YAML writer for JSON values, for manifests people read (`cluster bootstrap`).
//! Strings are always double-quoted JSON strings (valid YAML with no YAML 1.1 surprises),
//! except multi-line text, which becomes a literal block.

use serde_json::Value;

/// Writes `docs` as a multi-document YAML stream.
pub fn documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        write_value(&mut out, d, 0);
    }
    out
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !k.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        && !matches!(
            k,
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "Y" | "N"
        );
    if plain {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn scalar(v: &Value) -> String {
    v.to_string()
}

fn block(out: &mut String, text: &str, indent: usize) {
    let chomp = if text.ends_with('\n') { "" } else { "-" };
    out.push_str(&format!("|{chomp}\n"));
    for line in text.trim_end_matches('\n').split('\n') {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&" ".repeat(indent));
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn multiline(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| {
        s.contains('\n')
            && !s.starts_with([' ', '\n'])
            && !s.lines().any(|l| l.ends_with(' ') || l.contains('\t'))
    })
}

fn write_value(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                out.push_str(&format!("{pad}{}:", key(k)));
                write_child(out, child, indent);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                out.push_str(&format!("{pad}-"));
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // First key on the dash line, the rest aligned under it.
                        let mut first = true;
                        for (k, child) in m {
                            if first {
                                out.push_str(&format!(" {}:", key(k)));
                                first = false;
                            } else {
                                out.push_str(&format!("{pad}  {}:", key(k)));
                            }
                            write_child(out, child, indent + 2);
                        }
                    }
                    other => write_child(out, other, indent),
                }
            }
        }
        Value::Object(_) => out.push_str(&format!("{pad}{{}}\n")),
        Value::Array(_) => out.push_str(&format!("{pad}[]\n")),
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn write_child(out: &mut String, child: &Value, indent: usize) {
    match child {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_value(out, child, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_value(out, child, indent + 2);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        other => match multiline(other) {
            Some(text) => {
                out.push(' ');
                block(out, text, indent + 2);
            }
            None => out.push_str(&format!(" {}\n", scalar(other))),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips_through_the_manifest_parser() {
        let v = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "a", "on": "yes"}},
            "data": {"agent.yaml": "hub: https://h\ncluster: c\n", "n": "0755", "pem": "-----BEGIN-----\nabc\n-----END-----"},
            "list": [{"name": "a", "value": "1"}, "plain", 3, [], {}],
            "empty": {},
        });
        let text = documents(std::slice::from_ref(&v));
        let back = skiff_proto::manifest::parse_yaml("t.yaml", &text).unwrap();
        assert_eq!(back[0].value, v, "\n{text}");
    }
}
