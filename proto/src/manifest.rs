//! Kubernetes manifests, read the way Kubernetes reads them.
//!
//! `kubectl` and the API machinery turn YAML into JSON with `sigs.k8s.io/yaml`, which resolves
//! plain scalars by YAML 1.1 rules (through go-yaml v2), not YAML 1.2's: unquoted `0755` is
//! the octal 493, `yes`/`no`/`on`/`off`/`y`/`n` are booleans, `1_000` is 1000, `0b101` is 5,
//! while sexagesimal `1:20` stays a string. Applying a manifest read by 1.2 rules would
//! silently change it (a ConfigMap `defaultMode: 0644` turning into 644). This module pins
//! the Kubernetes reading; its tests list every case where the two disagree.
//!
//! One parser for hub and agent alike: the hub validates what it bundles with it, the agent
//! reads what it applies with it.

use std::collections::HashMap;

use granit_parser::{Event, Options, Parser, ScalarStyle, ScanError, Span, StrInput};
use serde_json::{Map, Number, Value};

/// How much reading manifests may build: bytes of scalars and keys and a count of nodes,
/// alias expansions included, checked before each piece is built (so an alias bomb — a
/// large anchor repeated — is refused before it costs memory).
///
/// A file may expand to twice its size plus 64 KiB of scalar text and one node per byte
/// plus 10,000 ([`Budget::for_file`]); a bundle's files together to twice the bundle's
/// content plus 1 MiB ([`Budget::for_bundle`]). Plain manifests come nowhere near either:
/// only aliases can make a document larger than its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of scalar and key text that may still be built.
    pub bytes: u64,
    /// Nodes that may still be built.
    pub nodes: u64,
}

impl Budget {
    /// The budget of one file of `len` bytes.
    pub fn for_file(len: usize) -> Self {
        let len = len as u64;
        Self {
            bytes: len.saturating_mul(2).saturating_add(64 << 10),
            nodes: len.saturating_add(10_000),
        }
    }

    /// The budget of all files of a bundle whose content totals `total` bytes.
    pub fn for_bundle(total: u64) -> Self {
        Self {
            bytes: total.saturating_mul(2).saturating_add(1 << 20),
            nodes: total.saturating_add(100_000),
        }
    }

    fn min(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.min(other.bytes),
            nodes: self.nodes.min(other.nodes),
        }
    }
}

/// One non-empty document of a manifest file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Position in the file, counting from 1 and counting empty documents too.
    pub index: usize,
    /// Line (from 1) where the document's content starts.
    pub line: usize,
    /// The document as JSON.
    pub value: Value,
}

/// A Kubernetes object taken from a document (a `*List` document gives one per item).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Where it came from: `file`, document index and line.
    pub origin: Origin,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, if set.
    pub namespace: Option<String>,
    /// The whole object.
    pub value: Value,
}

/// Where an object was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file, as named by the caller.
    pub file: String,
    /// Document index in the file (from 1).
    pub index: usize,
    /// Line of the document (from 1).
    pub line: usize,
    /// Item index within a `*List` document (from 0).
    pub item: Option<usize>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: document {} (line {})", self.file, self.index, self.line)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

/// A manifest that cannot be read, with the file and line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The file is not UTF-8.
    #[error("{file}: not UTF-8 text")]
    NotUtf8 {
        /// The file.
        file: String,
    },
    /// YAML or JSON syntax error.
    #[error("{file}: line {line}, column {column}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// Line (from 1).
        line: usize,
        /// Column (from 1).
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A mapping repeats a key (Kubernetes refuses these too).
    #[error("{file}: line {line}: mapping key {key:?} already defined")]
    DuplicateKey {
        /// The file.
        file: String,
        /// Line of the second occurrence.
        line: usize,
        /// The key.
        key: String,
    },
    /// The file expands to more than its [`Budget`] (an alias bomb, or a bundle too large).
    #[error(
        "{file}: line {line}: the document expands to more than {limit} bytes or nodes (aliases repeating large anchors?); refused before building it"
    )]
    TooLarge {
        /// The file.
        file: String,
        /// Line where the budget ran out.
        line: usize,
        /// The byte budget that applied.
        limit: u64,
    },
    /// Valid YAML that has no JSON form (NaN, infinities, a mapping as a key).
    #[error("{file}: line {line}: {what}")]
    Unsupported {
        /// The file.
        file: String,
        /// The line.
        line: usize,
        /// What is not supported.
        what: String,
    },
    /// A `${…}` reference with no value for this cluster and no default.
    #[error(
        "{origin}: {path}: variable ${{{variable}}} has no value for this cluster and no default (set it, write ${{{variable}:=default}}, or write $${{{variable}}} to keep it as text)"
    )]
    Unset {
        /// Where.
        origin: Origin,
        /// The variable.
        variable: String,
        /// The JSON path of the string that names it.
        path: String,
    },
    /// A document is not a Kubernetes object.
    #[error("{origin}: {problem}")]
    NotAnObject {
        /// Where.
        origin: Origin,
        /// What is missing or wrong.
        problem: String,
    },
}

/// Parses a manifest file into its non-empty documents. Files named `*.json` are read as a
/// stream of JSON values; anything else as multi-document YAML. The file's own
/// [`Budget::for_file`] applies.
pub fn parse_file(file: &str, bytes: &[u8]) -> Result<Vec<Document>, ManifestError> {
    parse_file_within(file, bytes, &mut Budget::for_file(bytes.len()))
}

/// [`parse_file`] within the smaller of the file's own budget and `shared` (a bundle's),
/// which is charged with what the file used.
pub fn parse_file_within(
    file: &str,
    bytes: &[u8],
    shared: &mut Budget,
) -> Result<Vec<Document>, ManifestError> {
    parse_documents(file, bytes, shared, false)
}

fn parse_documents(
    file: &str,
    bytes: &[u8],
    shared: &mut Budget,
    mark: bool,
) -> Result<Vec<Document>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotUtf8 {
        file: file.to_owned(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let budget = Budget::for_file(bytes.len()).min(*shared);
    if file.ends_with(".json") {
        // JSON has no aliases: what it builds is bounded by its text.
        let len = bytes.len() as u64;
        if len > budget.bytes {
            return Err(ManifestError::TooLarge {
                file: file.to_owned(),
                line: 1,
                limit: budget.bytes,
            });
        }
        let docs = parse_json(file, text)?;
        shared.bytes -= len;
        shared.nodes = shared.nodes.saturating_sub(len);
        Ok(docs)
    } else {
        let (docs, left) = yaml_documents(file, text, budget, mark)?;
        shared.bytes -= budget.bytes - left.bytes;
        shared.nodes -= budget.nodes - left.nodes;
        Ok(docs)
    }
}

/// Parses the objects of a manifest file: [`parse_file`], then [`objects_of`] each document.
pub fn parse_objects(file: &str, bytes: &[u8]) -> Result<Vec<Object>, ManifestError> {
    parse_objects_within(file, bytes, &mut Budget::for_file(bytes.len()))
}

/// [`parse_objects`] within a shared (bundle) budget, as [`parse_file_within`].
pub fn parse_objects_within(
    file: &str,
    bytes: &[u8],
    shared: &mut Budget,
) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for doc in parse_file_within(file, bytes, shared)? {
        out.extend(objects_of(file, doc)?);
    }
    Ok(out)
}

/// Looks a variable up: its value, if it has one.
pub type Lookup<'v> = dyn Fn(&str) -> Option<&'v str> + 'v;

/// [`parse_objects_within`] with values substituted into every document before it is
/// checked as an object (names may hold references), as [`crate::values`] describes. A
/// reference with no value and no default fails the file, naming document, line, path and
/// variable.
pub fn parse_objects_substituted<'v>(
    file: &str,
    bytes: &[u8],
    shared: &mut Budget,
    lookup: &Lookup<'v>,
) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    for mut doc in parse_documents(file, bytes, shared, true)? {
        let origin = |item: Option<usize>| Origin {
            file: file.to_owned(),
            index: doc.index,
            line: doc.line,
            item,
        };
        let unset = |origin: Origin, m: crate::values::Missing| ManifestError::Unset {
            origin,
            variable: m.variable,
            path: m.path,
        };
        let is_list = doc
            .value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"));
        let list_items = match doc.value.get_mut("items") {
            Some(Value::Array(items)) if is_list => Some(items),
            _ => None,
        };
        match list_items {
            Some(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    crate::values::substitute_object(item, lookup).map_err(|m| unset(origin(Some(i)), m))?;
                }
            }
            None => {
                crate::values::substitute_object(&mut doc.value, lookup)
                    .map_err(|m| unset(origin(None), m))?;
            }
        }
        crate::values::unmark(&mut doc.value);
        out.extend(objects_of(file, doc)?);
    }
    Ok(out)
}

/// Checks that a document is a Kubernetes object (`apiVersion`, `kind`, `metadata.name`) or a
/// `*List` of them, and returns the objects.
pub fn objects_of(file: &str, doc: Document) -> Result<Vec<Object>, ManifestError> {
    let origin = Origin {
        file: file.to_owned(),
        index: doc.index,
        line: doc.line,
        item: None,
    };
    let is_list = doc
        .value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && doc.value.get("items").is_some();
    if !is_list {
        return Ok(vec![object(origin, doc.value)?]);
    }
    check_type_meta(&origin, &doc.value)?;
    let Value::Object(mut map) = doc.value else {
        unreachable!("checked by check_type_meta")
    };
    let Some(Value::Array(items)) = map.remove("items") else {
        return Err(ManifestError::NotAnObject {
            origin,
            problem: "items of a List must be a sequence".to_owned(),
        });
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let origin = Origin {
                item: Some(i),
                ..origin.clone()
            };
            object(origin, item)
        })
        .collect()
}

/// An object's annotation `key`, when it is a string (the switches skiff reads per object).
pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// Checks a DNS-1123 label (namespace names): 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (most object names): at most 253 characters, dot-separated
/// DNS labels of `[a-z0-9-]`.
pub fn check_dns_subdomain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("only lowercase letters, digits, '-' and '.' are allowed");
    }
    if name
        .split('.')
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        return Err("each dot-separated part must start and end with a letter or digit");
    }
    Ok(())
}

/// Checks a name by the rule every Kubernetes resource applies at least (a path segment):
/// not `.` or `..`, no `/` or `%`, no control characters.
pub fn check_path_segment_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    if name == "." || name == ".." {
        return Err("may not be '.' or '..'");
    }
    if name.chars().any(|c| c == '/' || c == '%' || c.is_control()) {
        return Err("may not contain '/', '%' or control characters");
    }
    Ok(())
}

/// Checks `apiVersion`: `VERSION` or `GROUP/VERSION`, the group a DNS subdomain, the version
/// a DNS-1035 label (`v1`, `v1beta2`).
pub fn check_api_version(api_version: &str) -> Result<(), &'static str> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (Some(g), v),
        None => (None, api_version),
    };
    if let Some(group) = group {
        check_dns_subdomain(group).map_err(|_| "the group must be a DNS subdomain (example.com)")?;
    }
    let ok = !version.is_empty()
        && version.len() <= 63
        && version.starts_with(|c: char| c.is_ascii_lowercase())
        && version.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && version
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("the version must be lowercase letters, digits and '-', starting with a letter (v1, v1beta1)")
    }
}

/// Checks `kind`: a letter, then letters and digits (at most 63).
pub fn check_kind(kind: &str) -> Result<(), &'static str> {
    let ok = kind.len() <= 63
        && kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("must be a letter followed by letters and digits")
    }
}

/// Checks `metadata.name` by the rule Kubernetes applies to the kind: RBAC and API priority
/// and fairness objects take path-segment names (`system:controller:x`); every other kind,
/// custom resources included, a DNS subdomain.
pub fn check_object_name(api_version: &str, name: &str) -> Result<(), &'static str> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if matches!(
        group,
        "rbac.authorization.k8s.io" | "flowcontrol.apiserver.k8s.io"
    ) {
        check_path_segment_name(name)
    } else {
        check_dns_subdomain(name)
    }
}

fn check_type_meta(origin: &Origin, value: &Value) -> Result<(), ManifestError> {
    let problem = |p: &str| {
        Err(ManifestError::NotAnObject {
            origin: origin.clone(),
            problem: p.to_owned(),
        })
    };
    if !value.is_object() {
        return problem("not a mapping");
    }
    match value.get("apiVersion") {
        Some(Value::String(s)) if !s.is_empty() => {
            if let Err(why) = check_api_version(s) {
                return problem(&format!("apiVersion {s:?}: {why}"));
            }
        }
        Some(_) => return problem("apiVersion must be a non-empty string"),
        None => return problem("missing apiVersion"),
    }
    match value.get("kind") {
        Some(Value::String(s)) if !s.is_empty() => match check_kind(s) {
            Ok(()) => Ok(()),
            Err(why) => problem(&format!("kind {s:?}: {why}")),
        },
        Some(_) => problem("kind must be a non-empty string"),
        None => problem("missing kind"),
    }
}

fn object(origin: Origin, value: Value) -> Result<Object, ManifestError> {
    check_type_meta(&origin, &value)?;
    let fail = |problem: String| ManifestError::NotAnObject {
        origin: origin.clone(),
        problem,
    };
    let metadata = match value.get("metadata") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(fail("metadata must be a mapping".to_owned())),
        None => return Err(fail("missing metadata.name".to_owned())),
    };
    let name = match metadata.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None if metadata.contains_key("generateName") => {
            return Err(fail(
                "metadata.generateName without metadata.name: skiff applies declaratively \
                 (server-side apply) and needs a fixed name"
                    .to_owned(),
            ));
        }
        Some(Value::String(_)) | None => return Err(fail("missing metadata.name".to_owned())),
        Some(other) => return Err(fail(format!("metadata.name must be a string, found {other}"))),
    };
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    if let Err(why) = check_object_name(api_version, &name) {
        return Err(fail(format!("metadata.name {name:?}: {why}")));
    }
    let namespace = match metadata.get("namespace") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            if let Err(why) = check_dns_label(s) {
                return Err(fail(format!("metadata.namespace {s:?}: {why}")));
            }
            Some(s.clone())
        }
        Some(other) => {
            return Err(fail(format!(
                "metadata.namespace must be a string, found {other}"
            )));
        }
    };
    Ok(Object {
        api_version: value["apiVersion"].as_str().unwrap_or_default().to_owned(),
        kind: value["kind"].as_str().unwrap_or_default().to_owned(),
        name,
        namespace,
        origin,
        value,
    })
}

fn parse_json(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut index = 0;
    loop {
        let start = stream.byte_offset();
        match stream.next() {
            None => break,
            Some(Ok(value)) => {
                index += 1;
                let skipped = text[start..].len() - text[start..].trim_start().len();
                let line = line_of(text, start + skipped);
                if !value.is_null() {
                    docs.push(Document { index, line, value });
                }
            }
            Some(Err(e)) => {
                return Err(ManifestError::Syntax {
                    file: file.to_owned(),
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(docs)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Parses multi-document YAML; empty documents are skipped but counted. The text's own
/// [`Budget::for_file`] applies.
pub fn parse_yaml(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    yaml_documents(file, text, Budget::for_file(text.len()), false).map(|(docs, _)| docs)
}

fn yaml_documents(
    file: &str,
    text: &str,
    budget: Budget,
    mark: bool,
) -> Result<(Vec<Document>, Budget), ManifestError> {
    let mut options = Options::default();
    // libyaml (and so go-yaml) adds no line feed to a block scalar that ends the input.
    options.block_scalar_eof_without_line_feed = true;
    // kube's serde-saphyr turns on the parser's `comments` feature through feature
    // unification; comments are no data, so ask for none.
    options.set_emit_comments(false);
    let mut builder = Builder {
        file,
        events: Parser::new_from_str_with_options(text, options),
        anchors: HashMap::new(),
        limit: budget.bytes,
        left: budget,
        mark,
    };
    let mut docs = Vec::new();
    let mut index = 0;
    loop {
        let (event, _) = builder.next()?;
        match event {
            Event::StreamStart => {}
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                index += 1;
                builder.anchors.clear();
                let (event, span) = builder.next()?;
                let line = span.start.line();
                let value = if matches!(event, Event::DocumentEnd) {
                    Value::Null
                } else {
                    let value = builder.node(event, span)?;
                    match builder.next()? {
                        (Event::DocumentEnd, _) => {}
                        (_, span) => {
                            return Err(builder.unsupported(&span, "more than one node in a document"));
                        }
                    }
                    value
                };
                if !value.is_null() {
                    docs.push(Document { index, line, value });
                }
            }
            _ => {
                return Err(ManifestError::Syntax {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    message: "unexpected YAML event outside a document".to_owned(),
                });
            }
        }
    }
    Ok((docs, builder.left))
}

/// An anchored value with what it cost to build, so each alias is charged before the copy.
struct Anchored {
    value: Value,
    cost: Budget,
}

struct Builder<'a> {
    file: &'a str,
    events: Parser<'a, StrInput<'a>>,
    anchors: HashMap<usize, Anchored>,
    limit: u64,
    left: Budget,
    /// Mark plain scalars that are exactly one `${…}` reference (see [`crate::values`]).
    mark: bool,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), ManifestError> {
        loop {
            match self.events.next_event() {
                // Presentation-only events (comments, anchor names) carry no data.
                Some(Ok((event, _))) if !is_data(&event) => continue,
                other => return self.data_event(other),
            }
        }
    }

    fn data_event(
        &self,
        event: Option<Result<(Event<'a>, Span), ScanError>>,
    ) -> Result<(Event<'a>, Span), ManifestError> {
        match event {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => Err(self.syntax(&e)),
            None => Err(ManifestError::Syntax {
                file: self.file.to_owned(),
                line: 0,
                column: 0,
                message: "unexpected end of YAML stream".to_owned(),
            }),
        }
    }

    fn syntax(&self, e: &ScanError) -> ManifestError {
        ManifestError::Syntax {
            file: self.file.to_owned(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.to_string(),
        }
    }

    fn unsupported(&self, span: &Span, what: impl Into<String>) -> ManifestError {
        ManifestError::Unsupported {
            file: self.file.to_owned(),
            line: span.start.line(),
            what: what.into(),
        }
    }

    /// Charges `cost` to the budget, or refuses before anything is built.
    fn charge(&mut self, cost: Budget, span: &Span) -> Result<(), ManifestError> {
        if cost.bytes > self.left.bytes || cost.nodes > self.left.nodes {
            return Err(ManifestError::TooLarge {
                file: self.file.to_owned(),
                line: span.start.line(),
                limit: self.limit,
            });
        }
        self.left.bytes -= cost.bytes;
        self.left.nodes -= cost.nodes;
        Ok(())
    }

    fn spent_since(&self, before: Budget) -> Budget {
        Budget {
            bytes: before.bytes - self.left.bytes,
            nodes: before.nodes - self.left.nodes,
        }
    }

    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Value, ManifestError> {
        let before = self.left;
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let cost = Budget {
                    bytes: text.len() as u64,
                    nodes: 1,
                };
                self.charge(cost, &span)?;
                let tag = tag.map(|t| (t.handle().to_owned(), t.suffix().to_owned()));
                let value = if self.mark
                    && style == ScalarStyle::Plain
                    && tag.is_none()
                    && crate::values::is_whole_reference(&text)
                {
                    Value::String(format!("{}{text}", crate::values::PLAIN_MARK))
                } else {
                    resolve_scalar(&text, style, tag.as_ref().map(|(h, s)| (h.as_str(), s.as_str())))
                        .map_err(|what| self.unsupported(&span, what))?
                };
                (value, anchor)
            }
            Event::Alias(id) => {
                let Some(cost) = self.anchors.get(&id).map(|a| a.cost) else {
                    return Err(self.unsupported(&span, "alias to an unknown anchor"));
                };
                self.charge(cost, &span)?;
                return Ok(self.anchors[&id].value.clone());
            }
            Event::SequenceStart(_, anchor, _) => {
                self.charge(Budget { bytes: 0, nodes: 1 }, &span)?;
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, span)?);
                }
                (Value::Array(items), anchor)
            }
            Event::MappingStart(_, anchor, _) => {
                self.charge(Budget { bytes: 0, nodes: 1 }, &span)?;
                (Value::Object(self.mapping()?), anchor)
            }
            _ => return Err(self.unsupported(&span, "unexpected YAML event")),
        };
        if anchor != 0 {
            let cost = self.spent_since(before);
            self.anchors.insert(
                anchor,
                Anchored {
                    value: value.clone(),
                    cost,
                },
            );
        }
        Ok(value)
    }

    fn mapping(&mut self) -> Result<Map<String, Value>, ManifestError> {
        let mut map = Map::new();
        let mut merged: Vec<Map<String, Value>> = Vec::new();
        loop {
            let (event, span) = self.next()?;
            if matches!(event, Event::MappingEnd) {
                break;
            }
            let is_merge = matches!(&event, Event::Scalar(text, ScalarStyle::Plain, _, None) if text == "<<");
            let key = self.node(event, span)?;
            let (event, value_span) = self.next()?;
            let value = self.node(event, value_span)?;
            if is_merge {
                // YAML merge key: a mapping, or a sequence of mappings (earlier ones win).
                match value {
                    Value::Object(m) => merged.push(m),
                    Value::Array(items) => {
                        for item in items {
                            match item {
                                Value::Object(m) => merged.push(m),
                                _ => return Err(self.unsupported(&span, "merge key (<<) needs mappings")),
                            }
                        }
                    }
                    _ => return Err(self.unsupported(&span, "merge key (<<) needs a mapping")),
                }
                continue;
            }
            let key = key_string(key).map_err(|what| self.unsupported(&span, what))?;
            if map.contains_key(&key) {
                return Err(ManifestError::DuplicateKey {
                    file: self.file.to_owned(),
                    line: span.start.line(),
                    key,
                });
            }
            map.insert(key, value);
        }
        // Keys written in the mapping itself win over merged ones.
        for source in merged {
            for (k, v) in source {
                map.entry(k).or_insert(v);
            }
        }
        Ok(map)
    }
}

/// Whether an event is part of the data model (not a comment or anchor-name annotation).
fn is_data(event: &Event<'_>) -> bool {
    matches!(
        event,
        Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(..)
            | Event::DocumentEnd
            | Event::Alias(_)
            | Event::Scalar(..)
            | Event::SequenceStart(..)
            | Event::SequenceEnd
            | Event::MappingStart(..)
            | Event::MappingEnd
    )
}

/// Keys become strings as `sigs.k8s.io/yaml` makes them: `on:` is the key `"true"`.
fn key_string(key: Value) -> Result<String, String> {
    match key {
        Value::String(s) => Ok(s),
        Value::Null => Ok("null".to_owned()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(_) | Value::Object(_) => Err("a sequence or mapping used as a mapping key".to_owned()),
    }
}

const CORE: &str = "tag:yaml.org,2002:";

/// Resolves a scalar as go-yaml v2 does (YAML 1.1 rules), then as `sigs.k8s.io/yaml` turns
/// it into JSON.
fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<(&str, &str)>) -> Result<Value, String> {
    match tag {
        Some((CORE, "str")) | Some((CORE, "binary")) => return Ok(Value::String(text.to_owned())),
        Some((CORE, wanted @ ("int" | "float" | "bool" | "null"))) => {
            let value = resolve_plain(text)?;
            let ok = match wanted {
                "int" => value.is_i64() || value.is_u64(),
                "float" => value.is_number(),
                "bool" => value.is_boolean(),
                _ => value.is_null(),
            };
            return if ok {
                Ok(value)
            } else {
                Err(format!("{text:?} is not a valid !!{wanted}"))
            };
        }
        _ => {}
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::String(text.to_owned()));
    }
    resolve_plain(text)
}

/// A plain scalar's value as YAML 1.1 reads it; text that has no JSON form (NaN) stays a
/// string.
pub(crate) fn resolve_plain_text(text: &str) -> Value {
    resolve_plain(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn resolve_plain(text: &str) -> Result<Value, String> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok(Value::Bool(true));
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok(Value::Bool(false));
        }
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf"
        | "-.Inf" | "-.INF" => return Err(format!("{text} has no JSON representation")),
        _ => {}
    }
    // Only scalars that start like a number can be one.
    if !text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) {
        return Ok(Value::String(text.to_owned()));
    }
    let plain: String = text.chars().filter(|&c| c != '_').collect();
    if let Some(n) = parse_go_int(&plain) {
        return Ok(Value::Number(n));
    }
    if is_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
    {
        return Ok(float_value(f));
    }
    Ok(Value::String(text.to_owned()))
}

/// Go's `strconv.ParseInt(s, 0, 64)`, falling back to `ParseUint`: optional sign, then
/// `0x`/`0o`/`0b` prefixes or a leading `0` for octal.
fn parse_go_int(s: &str) -> Option<Number> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        if magnitude <= i64::MAX as u64 + 1 {
            Some(Number::from((magnitude as i128).wrapping_neg() as i64))
        } else {
            None
        }
    } else if magnitude <= i64::MAX as u64 {
        Some(Number::from(magnitude as i64))
    } else {
        Some(Number::from(magnitude))
    }
}

/// go-yaml v2's float pattern: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'-' | b'+')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Go's JSON encoder writes an integral float64 without a fraction (`1.0` → `1`); so do we.
fn float_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        Value::Number(Number::from(f as i64))
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(yaml: &str) -> Value {
        let docs = parse_yaml("t.yaml", yaml).unwrap();
        assert_eq!(docs.len(), 1, "{yaml}");
        docs.into_iter().next().unwrap().value
    }

    fn scalar(text: &str) -> Value {
        one(&format!("v: {text}\n"))["v"].clone()
    }

    /// Each case where YAML 1.1 (as Kubernetes reads it) and YAML 1.2's core schema disagree,
    /// with the Kubernetes reading.
    #[test]
    fn yaml_1_1_scalars_as_kubernetes_reads_them() {
        let cases: &[(&str, Value)] = &[
            ("0755", json!(493)),    // 1.2: 755
            ("0644", json!(420)),    // 1.2: 644
            ("0o755", json!(493)),   // 1.1 spec: string; go-yaml v2 via Go's ParseInt: 493
            ("yes", json!(true)),    // 1.2: "yes"
            ("Yes", json!(true)),    // 1.2: "Yes"
            ("no", json!(false)),    // 1.2: "no"
            ("NO", json!(false)),    // 1.2: "NO"
            ("on", json!(true)),     // 1.2: "on"
            ("off", json!(false)),   // 1.2: "off"
            ("y", json!(true)),      // 1.2: "y"
            ("n", json!(false)),     // 1.2: "n"
            ("1_000", json!(1000)),  // 1.2: "1_000"
            ("0b101", json!(5)),     // 1.2: "0b101"
            ("+12", json!(12)),      // both, but 1.2 JSON schema: string
            ("08", json!(8)),        // not octal: go-yaml falls back to the float 8
            ("1:20", json!("1:20")), // 1.1 spec: sexagesimal 80; go-yaml v2: string
        ];
        for (text, expected) in cases {
            assert_eq!(&scalar(text), expected, "plain scalar {text}");
        }
    }

    #[test]
    fn scalars_both_versions_agree_on() {
        let cases: &[(&str, Value)] = &[
            ("true", json!(true)),
            ("False", json!(false)),
            ("~", Value::Null),
            ("null", Value::Null),
            ("", Value::Null),
            ("42", json!(42)),
            ("-7", json!(-7)),
            ("0x1F", json!(31)),
            ("1.5", json!(1.5)),
            (".5", json!(0.5)),
            ("1e3", json!(1000)),
            ("1.0", json!(1)),
            ("18446744073709551615", json!(18_446_744_073_709_551_615u64)),
            ("hello", json!("hello")),
            ("1.2.3", json!("1.2.3")),
            ("2026-11-29", json!("2026-11-29")),
            ("'0755'", json!("0755")),
            ("\"yes\"", json!("yes")),
            ("!!str 0755", json!("0755")),
            ("!!int 0755", json!(493)),
        ];
        for (text, expected) in cases {
            assert_eq!(&scalar(text), expected, "scalar {text}");
        }
    }

    #[test]
    fn nan_and_infinity_are_refused() {
        for text in [".nan", ".inf", "-.Inf"] {
            let err = parse_yaml("x.yaml", &format!("a: 1\nv: {text}\n")).unwrap_err();
            assert!(matches!(err, ManifestError::Unsupported { line: 2, .. }), "{err}");
        }
    }

    #[test]
    fn keys_are_stringified_like_sigs_k8s_io_yaml() {
        assert_eq!(
            one("on: push\n1: one\nnull: x\n"),
            json!({"true": "push", "1": "one", "null": "x"})
        );
        // The classic trap: a key `y` is the boolean true in YAML 1.1.
        assert_eq!(one("x: 1\ny: 2\n"), json!({"x": 1, "true": 2}));
    }

    #[test]
    fn block_scalars_and_quotes_stay_strings() {
        let v = one("a: |\n  line1\n  0755\nb: >-\n  folded\n  text\nc: 'it''s'\n");
        assert_eq!(v, json!({"a": "line1\n0755\n", "b": "folded text", "c": "it's"}));
        // A literal block that ends the file gets no extra line feed (libyaml behaviour).
        assert_eq!(one("a: |\n  last")["a"], json!("last"));
    }

    #[test]
    fn multi_document_with_empty_documents_counted_and_skipped() {
        let yaml = "# comment only\n---\n---\na: 1\n---\n\n---\nb: 2\n...\n";
        let docs = parse_yaml("m.yaml", yaml).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].index, docs[0].line, &docs[0].value),
            (2, 4, &json!({"a": 1}))
        );
        assert_eq!(
            (docs[1].index, docs[1].line, &docs[1].value),
            (4, 8, &json!({"b": 2}))
        );
        assert!(parse_yaml("e.yaml", "").unwrap().is_empty());
        assert!(parse_yaml("e.yaml", "# nothing\n").unwrap().is_empty());
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let v = one("base: &b {a: 1, b: 2}\nuse: *b\nmerged:\n  b: 3\n  <<: *b\n");
        assert_eq!(v["use"], json!({"a": 1, "b": 2}));
        assert_eq!(v["merged"], json!({"a": 1, "b": 3}));
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        let obj = |api: &str, kind: &str, meta: &str| {
            parse_objects(
                "n.yaml",
                format!("apiVersion: {api}\nkind: {kind}\nmetadata: {meta}\n").as_bytes(),
            )
        };
        assert!(obj("v1", "ConfigMap", "{name: a.b-c, namespace: ns-1}").is_ok());
        assert!(
            obj(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "{name: \"system:controller:x\"}"
            )
            .is_ok()
        );
        assert!(obj("apps/v1", "Deployment", "{name: web}").is_ok());
        for (api, kind, meta, why) in [
            ("v1", "ConfigMap", "{name: ../../x}", "metadata.name"),
            ("v1", "ConfigMap", "{name: Web}", "metadata.name"),
            (
                "rbac.authorization.k8s.io/v1",
                "Role",
                "{name: ..}",
                "metadata.name",
            ),
            (
                "rbac.authorization.k8s.io/v1",
                "Role",
                "{name: a/b}",
                "metadata.name",
            ),
            (
                "v1",
                "ConfigMap",
                "{name: a, namespace: ../etc}",
                "metadata.namespace",
            ),
            (
                "v1",
                "ConfigMap",
                "{name: a, namespace: a.b}",
                "metadata.namespace",
            ),
            ("v1", "../ConfigMap", "{name: a}", "kind"),
            ("v1", "Config.Map", "{name: a}", "kind"),
            ("apps/V1", "Deployment", "{name: a}", "apiVersion"),
            ("Apps/v1", "Deployment", "{name: a}", "apiVersion"),
            ("../v1", "Deployment", "{name: a}", "apiVersion"),
        ] {
            let err = obj(api, kind, meta).unwrap_err().to_string();
            assert!(err.contains(why), "{api} {kind} {meta}: {err}");
        }
    }

    #[test]
    fn an_alias_of_a_large_scalar_is_refused_before_it_is_copied() {
        // 64 KiB scalar, aliased 1,500 times: a small file that would expand to 96 MiB.
        let mut yaml = format!("a: &big {}\nlist:\n", "x".repeat(64 << 10));
        for _ in 0..1500 {
            yaml.push_str("- *big\n");
        }
        let err = parse_yaml("bomb.yaml", &yaml).unwrap_err();
        assert!(
            matches!(err, ManifestError::TooLarge { line, .. } if line > 2),
            "{err}"
        );
        // A few aliases of a small anchor are fine.
        assert!(parse_yaml("ok.yaml", "a: &x {k: v}\nb: *x\nc: *x\n").is_ok());
    }

    #[test]
    fn a_bundle_budget_is_shared_by_its_files() {
        let file = format!("a: &x {}\nb: *x\n", "y".repeat(1000));
        let mut shared = Budget {
            bytes: 5_000,
            nodes: 1_000,
        };
        assert!(parse_file_within("1.yaml", file.as_bytes(), &mut shared).is_ok());
        assert!(parse_file_within("2.yaml", file.as_bytes(), &mut shared).is_ok());
        let err = parse_file_within("3.yaml", file.as_bytes(), &mut shared).unwrap_err();
        assert!(
            matches!(err, ManifestError::TooLarge { ref file, .. } if file == "3.yaml"),
            "{err}"
        );
    }

    #[test]
    fn alias_bombs_stop_at_the_node_cap() {
        let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            yaml.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let err = parse_yaml("bomb.yaml", &yaml).unwrap_err();
        assert!(matches!(err, ManifestError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_name_file_and_line() {
        let err = parse_yaml("d.yaml", "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(
            err,
            ManifestError::DuplicateKey {
                file: "d.yaml".into(),
                line: 3,
                key: "a".into()
            }
        );
        let err = parse_yaml("s.yaml", "a: 1\nb: [1, 2\n").unwrap_err();
        assert!(
            matches!(err, ManifestError::Syntax { ref file, .. } if file == "s.yaml"),
            "{err}"
        );
        assert!(err.to_string().starts_with("s.yaml: line "), "{err}");
    }

    #[test]
    fn json_files_are_read_as_json_streams() {
        let docs = parse_file(
            "x.json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"mode":"0755"}}
{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"b"}}"#,
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["data"]["mode"], json!("0755"));
        assert_eq!((docs[1].index, docs[1].line), (2, 2));
        let err = parse_file("bad.json", b"{\"a\": }").unwrap_err();
        assert!(matches!(err, ManifestError::Syntax { line: 1, .. }), "{err}");
    }

    #[test]
    fn objects_need_api_version_kind_and_name() {
        let objs = parse_objects(
            "ok.yaml",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: ns}\n",
        )
        .unwrap();
        assert_eq!(
            (
                objs[0].kind.as_str(),
                objs[0].name.as_str(),
                objs[0].namespace.as_deref()
            ),
            ("ConfigMap", "a", Some("ns"))
        );

        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# second\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n";
        let err = parse_objects("apps/cm.yaml", yaml).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apps/cm.yaml: document 2 (line 6): missing metadata.name"
        );

        let err = parse_objects("k.yaml", b"apiVersion: v1\nmetadata: {name: a}\n").unwrap_err();
        assert!(err.to_string().ends_with("missing kind"), "{err}");
        let err = parse_objects("k.yaml", b"kind: Pod\nmetadata: {name: a}\n").unwrap_err();
        assert!(err.to_string().ends_with("missing apiVersion"), "{err}");
        let err = parse_objects("k.yaml", b"- a\n- b\n").unwrap_err();
        assert!(err.to_string().ends_with("not a mapping"), "{err}");
        let err = parse_objects(
            "g.yaml",
            b"apiVersion: v1\nkind: Pod\nmetadata: {generateName: web-}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("generateName"), "{err}");
    }

    #[test]
    fn lists_give_one_object_per_item() {
        let yaml = b"apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: b}\n";
        let objs = parse_objects("list.yaml", yaml).unwrap();
        assert_eq!(
            objs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(objs[1].origin.item, Some(1));

        let bad = b"apiVersion: v1\nkind: ConfigMapList\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {}\n";
        let err = parse_objects("list.yaml", bad).unwrap_err();
        assert!(err.to_string().contains("items[0]"), "{err}");
    }

    #[test]
    fn substitution_types_plain_references_and_names_what_is_unset() {
        let text = b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-${site}\n  labels: {version: \"${v}\"}\nspec:\n  replicas: ${replicas}\n  paused: ${paused:=false}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: script}\ndata:\n  run.sh: echo $${HOSTNAME} ${site}\n";
        let vars: std::collections::BTreeMap<&str, &str> =
            [("site", "s1"), ("v", "2"), ("replicas", "3")].into();
        let lookup = |n: &str| vars.get(n).copied();
        let objs =
            parse_objects_substituted("app.yaml", text, &mut Budget::for_file(text.len()), &lookup).unwrap();
        assert_eq!(objs[0].name, "web-s1");
        assert_eq!(objs[0].value["metadata"]["labels"]["version"], "2");
        assert_eq!(objs[0].value["spec"]["replicas"], 3);
        assert_eq!(objs[0].value["spec"]["paused"], false);
        assert_eq!(objs[1].value["data"]["run.sh"], "echo ${HOSTNAME} s1");

        let no_site = |n: &str| if n == "site" { None } else { vars.get(n).copied() };
        let err = parse_objects_substituted("app.yaml", text, &mut Budget::for_file(text.len()), &no_site)
            .unwrap_err();
        let m = err.to_string();
        assert!(
            m.contains("app.yaml: document 1 (line 1)")
                && m.contains(".metadata.name")
                && m.contains("${site}"),
            "{m}"
        );

        // Without substitution, nothing is marked and nothing changes.
        let plain = parse_objects(
            "app.yaml",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  x: ${y}\n",
        )
        .unwrap();
        assert_eq!(plain[0].value["data"]["x"], "${y}");
    }
}
