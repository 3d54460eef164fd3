//! The API server's state and the semantics of every write: validation, server-side apply
//! with field ownership, update and merge-patch ownership, status subresources, defaulting,
//! `resourceVersion`/`generation`/`uid`, namespaces and CRD lifecycles.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::defaults::{self, Allocator};
use super::fields::{self, FieldSet, Pe};
use super::resources::{self, ResourceType};
use super::schema::{self, FieldValidation};

mod events;
pub use events::Change;
mod lifecycle;

/// A failed request, rendered as a `Status` object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `reason` (NotFound, AlreadyExists, Conflict, Invalid, BadRequest, …).
    pub reason: &'static str,
    /// Human message, worded as kube-apiserver words it.
    pub message: String,
    /// `details`, when there are any.
    pub details: Option<Value>,
}

impl ApiError {
    /// The `Status` JSON.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 NotFound for an object.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self {
            details: Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", rt.qualified_plural()),
            )
        }
    }

    /// 404 for a path that names no resource.
    pub fn no_resource(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 422 Invalid with one cause.
    pub fn invalid(rt: &ResourceType, name: &str, field: &str, detail: &str) -> Self {
        Self {
            details: Some(json!({
                "name": name, "group": rt.group, "kind": rt.kind,
                "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}],
            })),
            ..Self::new(
                422,
                "Invalid",
                format!("{} \"{name}\" is invalid: {field}: {detail}", rt.kind),
            )
        }
    }

    /// 405: the method is not served here.
    pub fn method_not_allowed(method: &impl std::fmt::Display, path: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method} {path})"),
        )
    }

    /// 415 for a body (or patch) type the server does not take.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
            ),
        )
    }
}

/// How a manager last wrote its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, update or patch.
    Update,
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Manager {
    /// Field manager name.
    pub name: String,
    /// Apply or Update.
    pub operation: Operation,
    /// API version the fields were written through.
    pub api_version: String,
    /// Last time its fields changed.
    pub time: String,
    /// `status` for writes to the status subresource.
    pub subresource: Option<String>,
    /// What it owns.
    pub fields: FieldSet,
}

/// A stored object and who owns which of its fields.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The object, without `managedFields`.
    pub object: Value,
    /// Its managers.
    pub managers: Vec<Manager>,
}

/// A PATCH body, by its media type.
#[derive(Clone, Copy, Debug)]
pub enum PatchBody<'a> {
    /// `application/merge-patch+json` (RFC 7386).
    Merge(&'a Value),
    /// `application/json-patch+json` (RFC 6902).
    Json(&'a Value),
    /// `application/strategic-merge-patch+json` (built-in kinds).
    Strategic(&'a Value),
}

/// Which endpoint a write came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    /// The object itself.
    Main,
    /// `/status`.
    Status,
}

type Key = (String, String);

/// Everything the server holds.
pub struct State {
    types: Vec<ResourceType>,
    objects: HashMap<Key, BTreeMap<Key, Stored>>,
    rv: u64,
    uid_counter: u64,
    hasher: std::collections::hash_map::RandomState,
    alloc: Allocator,
    /// How the request being served treats unknown fields (set per request).
    pub(super) field_validation: FieldValidation,
    /// Warnings for the request being served (`Warning` headers), taken by the handler.
    pub(super) warnings: Vec<String>,
    /// How long a new CRD takes to be Established (zero: at once).
    crd_establish_delay: std::time::Duration,
    /// New CRDs not Established yet: name, resources, when.
    establishing: Vec<(String, Vec<ResourceType>, std::time::Instant)>,
    /// The change log watches read.
    events: std::collections::VecDeque<events::Event>,
    /// Whether the log has dropped its oldest events.
    events_dropped: bool,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Paths no manager owns: identity and bookkeeping.
fn bookkeeping(path: &[Pe]) -> bool {
    let f = |s: &str| Pe::Field(s.to_owned());
    match path {
        [p] => *p == f("apiVersion") || *p == f("kind"),
        [m, p] if *m == f("metadata") => [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ]
        .iter()
        .any(|n| *p == f(n)),
        _ => false,
    }
}

fn is_status(path: &[Pe]) -> bool {
    path.first() == Some(&Pe::Field("status".to_owned()))
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// A fresh cluster: the built-in kinds and the namespaces every cluster has.
    pub fn new() -> Self {
        let mut state = Self {
            types: resources::builtins(),
            objects: HashMap::new(),
            rv: 1000,
            uid_counter: 0,
            hasher: std::collections::hash_map::RandomState::new(),
            alloc: Allocator::default(),
            field_validation: FieldValidation::default(),
            warnings: Vec::new(),
            events: std::collections::VecDeque::new(),
            crd_establish_delay: std::time::Duration::ZERO,
            establishing: Vec::new(),
            events_dropped: false,
        };
        let ns = state.find("", "v1", "namespaces").expect("namespaces");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            state
                .create(&ns, None, body, "kube-apiserver", false)
                .expect("initial namespaces");
        }
        state
    }

    /// All served resource types.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// The type served at group/version/plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    fn uid(&mut self) -> String {
        self.uid_counter += 1;
        let a = self.hasher.hash_one(("uid-a", self.uid_counter));
        let b = self.hasher.hash_one(("uid-b", self.uid_counter));
        let hex = format!("{a:016x}{b:016x}");
        format!(
            "{}-{}-4{}-a{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }

    fn bucket(&self, rt: &ResourceType) -> Option<&BTreeMap<Key, Stored>> {
        self.objects.get(&(rt.group.clone(), rt.plural.clone()))
    }

    fn stored(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Option<&Stored> {
        self.bucket(rt)?
            .get(&(ns.unwrap_or_default().to_owned(), name.to_owned()))
    }

    fn existing(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Stored, ApiError> {
        self.stored(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// An object as a client sees it.
    fn render(rt: &ResourceType, stored: &Stored) -> Value {
        let mut v = stored.object.clone();
        v["apiVersion"] = json!(rt.api_version());
        v["kind"] = json!(rt.kind);
        if !stored.managers.is_empty() {
            let entries: Vec<Value> = stored
                .managers
                .iter()
                .map(|m| {
                    let mut e = json!({
                        "manager": m.name,
                        "operation": match m.operation { Operation::Apply => "Apply", Operation::Update => "Update" },
                        "apiVersion": m.api_version,
                        "time": m.time,
                        "fieldsType": "FieldsV1",
                        "fieldsV1": fields::to_fields_v1(&m.fields),
                    });
                    if let Some(s) = &m.subresource {
                        e["subresource"] = json!(s);
                    }
                    e
                })
                .collect();
            v["metadata"]["managedFields"] = Value::Array(entries);
        }
        v
    }

    /// GET one object.
    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.stored(rt, ns, name)
            .map(|s| Self::render(rt, s))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// LIST, in one namespace or all, filtered by label and field selectors.
    /// Lists objects, filtered by namespace and selectors, in key order; with `limit`, one
    /// page at a time: `metadata.continue` names where the next page starts (as
    /// kube-apiserver's chunked lists, `limit` + `continue`), and `remainingItemCount` how
    /// many are left. A continue token that is not one of ours is a 400.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let labels = label_selector.map(parse_label_selector).transpose()?;
        let fields = field_selector.map(parse_field_selector).transpose()?;
        let start: Option<Key> = match continue_token.filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => Some(
                token
                    .strip_prefix("skiff-continue:")
                    .and_then(|k| k.split_once('/'))
                    .map(|(n, name)| (n.to_owned(), name.to_owned()))
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid: bad token"))?,
            ),
        };
        let matching: Vec<(&Key, &Stored)> = self
            .bucket(rt)
            .into_iter()
            .flat_map(|b| b.iter())
            .filter(|(key, _)| start.as_ref().is_none_or(|s| *key > s))
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .filter(|(_, s)| labels.as_ref().is_none_or(|sel| matches_labels(sel, &s.object)))
            .filter(|(_, s)| fields.as_ref().is_none_or(|sel| matches_fields(sel, &s.object)))
            .collect();
        let take = limit.filter(|l| *l > 0).unwrap_or(usize::MAX).min(matching.len());
        let items: Vec<Value> = matching[..take]
            .iter()
            .map(|(_, s)| Self::render(rt, s))
            .collect();
        let mut metadata = json!({"resourceVersion": self.rv.to_string()});
        if take < matching.len() {
            let (last_ns, last_name) = matching[take - 1].0;
            metadata["continue"] = json!(format!("skiff-continue:{last_ns}/{last_name}"));
            metadata["remainingItemCount"] = json!(matching.len() - take);
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    fn check_identity(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        url_name: Option<&str>,
        body: &Value,
    ) -> Result<String, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON or YAML object",
            ));
        }
        if let Some(v) = body.get("apiVersion")
            && v.as_str() != Some(rt.api_version().as_str())
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                v.as_str().unwrap_or_default(),
                rt.api_version()
            )));
        }
        if let Some(k) = body.get("kind")
            && k.as_str() != Some(rt.kind.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({}) does not match the expected kind ({})",
                k.as_str().unwrap_or_default(),
                rt.kind
            )));
        }
        let body_name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(url_name) = url_name
            && !body_name.is_empty()
            && body_name != url_name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
            )));
        }
        let name = url_name.unwrap_or(body_name).to_owned();
        if name.is_empty() {
            let detail = if body.pointer("/metadata/generateName").is_some() {
                "Required value: name or generateName is required (generateName is not supported here)"
            } else {
                "Required value: name or generateName is required"
            };
            return Err(ApiError::invalid(rt, "", "metadata.name", detail));
        }
        if let Err(why) = check_name(rt, &name) {
            return Err(ApiError::invalid(
                rt,
                &name,
                "metadata.name",
                &format!("Invalid value: \"{name}\": {why}"),
            ));
        }
        if let Some(body_ns) = body.pointer("/metadata/namespace").and_then(Value::as_str)
            && !body_ns.is_empty()
            && rt.namespaced
            && ns.is_some_and(|n| n != body_ns)
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        check_labels(rt, &name, body)?;
        check_annotations(rt, &name, body)?;
        if let Some(ns) = ns
            && rt.namespaced
        {
            let ns_type = self.find("", "v1", "namespaces").expect("namespaces");
            if self.stored(&ns_type, None, ns).is_none() {
                return Err(ApiError::not_found(&ns_type, ns));
            }
        }
        Ok(name)
    }

    /// POST: create an object.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let name = self.check_identity(rt, ns, None, &body)?;
        if self.stored(rt, ns, &name).is_some() {
            return Err(ApiError {
                details: Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
                ..ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", rt.qualified_plural()),
                )
            });
        }
        let owned = fields::field_set(&body, &|p| bookkeeping(p) || (rt.status && is_status(p)));
        let managers = vec![Manager {
            name: manager.to_owned(),
            operation: Operation::Update,
            api_version: rt.api_version(),
            time: now(),
            subresource: None,
            fields: owned,
        }];
        self.commit(rt, ns, &name, None, body, managers, Sub::Main, dry_run)
    }

    /// PUT: replace an object (or its status).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        manager: &str,
        sub: Sub,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.check_identity(rt, ns, Some(name), &body)?;
        let old = self.existing(rt, ns, name)?;
        if let Some(rv) = body.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && Some(rv)
                != old
                    .object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError {
                details: Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
                ..ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        rt.qualified_plural()
                    ),
                )
            });
        }
        self.write_update(rt, ns, name, old, body, manager, sub, dry_run)
    }

    /// PATCH (not server-side apply): the patch is applied to the object as stored, and the
    /// result written as an update.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: PatchBody<'_>,
        manager: &str,
        sub: Sub,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.existing(rt, ns, name)?;
        let mut new = Self::render(rt, &old);
        match patch {
            PatchBody::Merge(p) => json_merge_patch(&mut new, p),
            PatchBody::Json(p) => super::jsonpatch::apply(&mut new, p)
                .map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch does not apply: {e}")))?,
            PatchBody::Strategic(p) => super::strategic::apply(&mut new, p).map_err(ApiError::bad_request)?,
        }
        self.check_identity(rt, ns, Some(name), &new)?;
        self.write_update(rt, ns, name, old, new, manager, sub, dry_run)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        old: Stored,
        new: Value,
        manager: &str,
        sub: Sub,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        // Fields whose value this write changes move to this manager (updates never conflict).
        let scope = |p: &[Pe]| bookkeeping(p) || (rt.status && (is_status(p) != (sub == Sub::Status)));
        let new_set = fields::field_set(&new, &scope);
        let mut changed = FieldSet::default();
        for p in &new_set.leaves {
            if fields::get(&old.object, p) != fields::get(&new, p) {
                changed.leaves.insert(p.clone());
            }
        }
        for p in &new_set.items {
            if fields::get(&old.object, p).is_none() {
                changed.items.insert(p.clone());
            }
        }
        let mut managers = old.managers.clone();
        for m in &mut managers {
            m.fields.subtract(&changed);
        }
        let subresource = (sub == Sub::Status).then(|| "status".to_owned());
        match managers
            .iter_mut()
            .find(|m| m.name == manager && m.operation == Operation::Update && m.subresource == subresource)
        {
            Some(m) => m.fields.extend(&changed),
            None => managers.push(Manager {
                name: manager.to_owned(),
                operation: Operation::Update,
                api_version: rt.api_version(),
                time: now(),
                subresource,
                fields: changed,
            }),
        }
        self.commit(rt, ns, name, Some(&old), new, managers, sub, dry_run)
    }

    /// PATCH with `application/apply-patch+yaml`: server-side apply.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        config: Value,
        manager: &str,
        force: bool,
        sub: Sub,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        self.check_identity(rt, ns, Some(name), &config)?;
        // Server-side apply builds a typed patch from the configuration: a field the schema
        // lacks fails that (kube-apiserver answers with a plain 500), whatever fieldValidation.
        if let Some(path) = self.unknown_fields(rt, &config).first() {
            let gv = if rt.group.is_empty() {
                format!("/{}", rt.version)
            } else {
                rt.api_version()
            };
            return Err(ApiError::new(
                500,
                "",
                format!(
                    "failed to create typed patch object ({gv}, Kind={}): .{}: field not declared in schema",
                    rt.kind,
                    schema::dotted(path)
                ),
            ));
        }
        let scope = |p: &[Pe]| bookkeeping(p) || (rt.status && (is_status(p) != (sub == Sub::Status)));
        let applied = fields::field_set(&config, &scope);
        let subresource = (sub == Sub::Status).then(|| "status".to_owned());
        let entry = Manager {
            name: manager.to_owned(),
            operation: Operation::Apply,
            api_version: rt.api_version(),
            time: now(),
            subresource: subresource.clone(),
            fields: applied.clone(),
        };
        let Some(old) = self.stored(rt, ns, name).cloned() else {
            if sub == Sub::Status {
                return Err(ApiError::not_found(rt, name));
            }
            let created = self.commit(rt, ns, name, None, config, vec![entry], sub, dry_run)?;
            return Ok((created, true));
        };

        // Conflicts: a field another manager owns, set here to a different value.
        let mut conflicts: Vec<(String, String)> = Vec::new();
        for m in old.managers.iter().filter(|m| m.name != manager) {
            for p in applied.leaves.intersection(&m.fields.leaves) {
                if fields::get(&old.object, p) != fields::get(&config, p) {
                    conflicts.push((m.name.clone(), path_string(p)));
                }
            }
        }
        let mut managers = old.managers.clone();
        if !conflicts.is_empty() {
            if !force {
                return Err(conflict_error(rt, name, &conflicts));
            }
            for m in managers.iter_mut().filter(|m| m.name != manager) {
                m.fields.leaves.retain(|p| !applied.leaves.contains(p));
            }
        }

        // Fields this manager applied before and no longer applies: removed, unless another
        // manager also owns them.
        let mut live = old.object.clone();
        let previous = managers
            .iter()
            .find(|m| m.name == manager && m.operation == Operation::Apply && m.subresource == subresource)
            .map(|m| m.fields.clone())
            .unwrap_or_default();
        let others = |p: &[Pe]| {
            managers
                .iter()
                .filter(|m| {
                    !(m.name == manager && m.operation == Operation::Apply && m.subresource == subresource)
                })
                .any(|m| m.fields.touches(p))
        };
        for p in previous.leaves.iter().filter(|p| !applied.leaves.contains(*p)) {
            if !others(p) {
                fields::remove(&mut live, p);
            }
        }
        for p in previous
            .items
            .iter()
            .rev()
            .filter(|p| !applied.items.contains(*p))
        {
            if !others(p) && !applied.touches(p) {
                fields::remove(&mut live, p);
            }
        }
        fields::merge(&mut live, &config);
        managers.retain(|m| {
            !(m.name == manager && m.operation == Operation::Apply && m.subresource == subresource)
        });
        managers.push(entry);
        let out = self.commit(rt, ns, name, Some(&old), live, managers, sub, dry_run)?;
        Ok((out, false))
    }

    /// The common end of every write: identity, status rules, defaults, generation, field
    /// ownership clean-up, no-op detection, resourceVersion, storage, CRD side effects.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        old: Option<&Stored>,
        mut object: Value,
        mut managers: Vec<Manager>,
        sub: Sub,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let map = object.as_object_mut().expect("checked object");
        map.insert("apiVersion".to_owned(), json!(rt.api_version()));
        map.insert("kind".to_owned(), json!(rt.kind));
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        let meta = meta.as_object_mut().expect("object");
        meta.insert("name".to_owned(), json!(name));
        match ns {
            Some(ns) if rt.namespaced => {
                meta.insert("namespace".to_owned(), json!(ns));
            }
            _ => {
                meta.remove("namespace");
            }
        }
        meta.remove("managedFields");
        meta.remove("selfLink");
        for k in [
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(k);
            if let Some(v) = old.and_then(|o| o.object.pointer(&format!("/metadata/{k}"))) {
                meta.insert(k.to_owned(), v.clone());
            }
        }
        if rt.status {
            match (sub, old) {
                // Writes to the object keep the stored status; creates start without one.
                (Sub::Main, Some(o)) => match o.object.get("status") {
                    Some(s) => {
                        map.insert("status".to_owned(), s.clone());
                    }
                    None => {
                        map.remove("status");
                    }
                },
                (Sub::Main, None) => {
                    map.remove("status");
                }
                // Writes to /status change nothing else.
                (Sub::Status, Some(o)) => {
                    let status = map.remove("status");
                    let mut kept = o.object.clone();
                    if let Some(s) = status {
                        kept["status"] = s;
                    } else if let Some(m) = kept.as_object_mut() {
                        m.remove("status");
                    }
                    object = kept;
                }
                (Sub::Status, None) => return Err(ApiError::not_found(rt, name)),
            }
        }
        // As kube-apiserver's patchAllocatedValues: an update that leaves the allocated
        // addresses out (or empty) keeps them.
        if rt.kind == "Service"
            && let Some(o) = old
            && let Some(ip) = o.object.pointer("/spec/clusterIP")
            && object
                .pointer("/spec/clusterIP")
                .is_none_or(|v| v.as_str() == Some(""))
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("clusterIP".to_owned(), ip.clone());
            if let Some(ips) = o.object.pointer("/spec/clusterIPs")
                && spec
                    .get("clusterIPs")
                    .is_none_or(|v| v.as_array().is_some_and(Vec::is_empty))
            {
                spec.insert("clusterIPs".to_owned(), ips.clone());
            }
        }
        match old {
            Some(o) => Self::check_finalizers(rt, name, &o.object, &object)?,
            None => self.check_namespace_open(rt, ns, name)?,
        }
        let crd_types = if rt.kind == "CustomResourceDefinition" && rt.crd.is_none() {
            Some(
                resources::from_crd(&object)
                    .map_err(|(field, msg)| ApiError::invalid(rt, name, &field, &msg))?,
            )
        } else {
            None
        };
        let unknown = self.unknown_fields(rt, &object);
        if !unknown.is_empty() {
            let named: Vec<String> = unknown
                .iter()
                .map(|p| format!("unknown field \"{}\"", schema::dotted(p)))
                .collect();
            match self.field_validation {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        named.join(", ")
                    )));
                }
                FieldValidation::Warn => self.warnings.extend(named),
                FieldValidation::Ignore => {}
            }
            schema::remove_all(&mut object, &unknown);
        }
        defaults::apply(&rt.kind, &mut object, &mut self.alloc);
        if let Some(crd_schema) = self.crd_schema(rt) {
            schema::apply_defaults(&crd_schema, &mut object);
            let problems = schema::crd_problems(&crd_schema, &object);
            if let [(field, detail)] = problems.as_slice() {
                return Err(ApiError::invalid(rt, name, field, detail));
            }
            if !problems.is_empty() {
                let all: Vec<String> = problems.iter().map(|(f, d)| format!("{f}: {d}")).collect();
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{}.{} \"{name}\" is invalid: [{}]",
                        rt.kind,
                        rt.group,
                        all.join(", ")
                    ),
                ));
            }
        }
        if rt.crd.is_none()
            && let Some((field, detail)) = super::validation::problem(&rt.kind, &object)
        {
            return Err(ApiError::invalid(rt, name, &field, &detail));
        }
        if let (Some(o), Sub::Main) = (old, sub)
            && rt.crd.is_none()
            && let Some((field, value)) = super::immutable::violation(&rt.kind, &o.object, &object)
        {
            let detail = match value {
                Value::String(s) if s.starts_with("Forbidden") || s.starts_with("updates") => s,
                v => format!("Invalid value: {v}: field is immutable"),
            };
            return Err(ApiError::invalid(rt, name, &field, &detail));
        }
        // A new CRD's resources are served once it is Established, which a real cluster's
        // controllers take a moment to reach ([`State::set_crd_establish_delay`]).
        let establish_later = crd_types.is_some()
            && !self.crd_establish_delay.is_zero()
            && old.is_none_or(|o| !crd_established(&o.object));
        if let Some(types) = &crd_types {
            crd_status(&mut object, types, !establish_later);
        }

        if rt.tracks_generation() {
            let spec_of = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            let generation = match old {
                None => 1,
                Some(o) => {
                    let g = o
                        .object
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    if spec_of(&o.object) != spec_of(&object) {
                        g + 1
                    } else {
                        g
                    }
                }
            };
            object["metadata"]["generation"] = json!(generation);
        }

        // Ownership only of fields that exist; managers left with nothing are dropped.
        for m in &mut managers {
            m.fields.retain(|p| fields::get(&object, p).is_some());
        }
        managers.retain(|m| !m.fields.is_empty());

        if let Some(o) = old {
            let same_fields = o.managers.len() == managers.len()
                && o.managers.iter().zip(&managers).all(|(a, b)| {
                    a.name == b.name
                        && a.operation == b.operation
                        && a.subresource == b.subresource
                        && a.fields == b.fields
                });
            if same_fields && o.object == object {
                return Ok(Self::render(rt, o));
            }
            // Keep the time of entries whose fields did not change.
            for m in &mut managers {
                if let Some(prev) = o.managers.iter().find(|p| {
                    p.name == m.name
                        && p.operation == m.operation
                        && p.subresource == m.subresource
                        && p.fields == m.fields
                }) {
                    m.time = prev.time.clone();
                }
            }
        } else {
            object["metadata"]["uid"] = json!(self.uid());
            object["metadata"]["creationTimestamp"] = json!(now());
        }
        let rv = if dry_run { self.rv } else { self.rv + 1 };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let stored = Stored { object, managers };
        let out = Self::render(rt, &stored);
        if dry_run {
            return Ok(out);
        }
        self.rv = rv;
        let bucket = (rt.group.clone(), rt.plural.clone());
        self.record(
            &bucket,
            if old.is_some() { "MODIFIED" } else { "ADDED" },
            stored.object.clone(),
        );
        self.objects.entry(bucket).or_default().insert(
            (
                ns.filter(|_| rt.namespaced).unwrap_or_default().to_owned(),
                name.to_owned(),
            ),
            stored,
        );
        if let Some(types) = crd_types {
            if establish_later {
                let due = std::time::Instant::now() + self.crd_establish_delay;
                self.establishing.retain(|(n, _, _)| n != name);
                self.establishing.push((name.to_owned(), types, due));
            } else {
                self.types.retain(|t| t.crd.as_deref() != Some(name));
                self.types.extend(types);
            }
        }
        if old.is_none() && rt.kind == "Namespace" && rt.group.is_empty() {
            self.bootstrap_namespace(name);
        }
        if old.is_some() {
            self.collect_if_finalized(rt, ns, name);
        }
        Ok(out)
    }

    /// How long new CRDs take to become Established and served (as a real cluster's
    /// establishing controller takes a moment); zero, the default, is at once.
    pub fn set_crd_establish_delay(&mut self, delay: std::time::Duration) {
        self.crd_establish_delay = delay;
    }

    /// The controllers' part that time drives: CRDs whose moment came are Established and
    /// their resources served. Run before each request and each look of a watch.
    pub fn tick(&mut self) {
        let now = std::time::Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.establishing)
            .into_iter()
            .partition(|(_, _, at)| *at <= now);
        self.establishing = waiting;
        let Some(crds) = self.find("apiextensions.k8s.io", "v1", "customresourcedefinitions") else {
            return;
        };
        for (name, types, _) in due {
            let Some(stored) = self.stored(&crds, None, &name) else {
                continue;
            };
            let mut stored = stored.clone();
            crd_status(&mut stored.object, &types, true);
            self.rv += 1;
            stored.object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            let bucket = (crds.group.clone(), crds.plural.clone());
            self.record(&bucket, "MODIFIED", stored.object.clone());
            self.objects
                .entry(bucket)
                .or_default()
                .insert((String::new(), name.clone()), stored);
            self.types.retain(|t| t.crd.as_deref() != Some(name.as_str()));
            self.types.extend(types);
        }
    }

    /// The `openAPIV3Schema` of a custom resource's version, from its CRD.
    fn crd_schema(&self, rt: &ResourceType) -> Option<Value> {
        let crd_name = rt.crd.as_deref()?;
        let crds = self.find("apiextensions.k8s.io", "v1", "customresourcedefinitions")?;
        let crd = self.stored(&crds, None, crd_name)?;
        crd.object
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(rt.version.as_str()))?
            .pointer("/schema/openAPIV3Schema")
            .cloned()
    }

    /// Fields of `object` its kind's schema does not declare.
    fn unknown_fields(&self, rt: &ResourceType, object: &Value) -> Vec<Vec<schema::Seg>> {
        match self.crd_schema(rt) {
            Some(s) => schema::crd_unknown_fields(&s, object),
            None if rt.crd.is_none() => {
                schema::builtin_unknown_fields(&rt.group, &rt.api_version(), &rt.kind, object)
            }
            None => Vec::new(),
        }
    }

    /// What a real cluster's controllers put in every new namespace: the `default`
    /// ServiceAccount and the `kube-root-ca.crt` ConfigMap (so no test may assume a
    /// namespace holds only what it created).
    fn bootstrap_namespace(&mut self, ns: &str) {
        let bodies = [
            (
                "serviceaccounts",
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
            ),
            (
                "configmaps",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt",
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                    "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBADAKBggqhkjOPQQDAjAjMSEwHwYDVQQDDBhrM3Mtc2Vy\n-----END CERTIFICATE-----\n"}}),
            ),
        ];
        for (plural, body) in bodies {
            let rt = self.find("", "v1", plural).expect("a built-in kind");
            // A new namespace holds nothing yet, so these cannot collide.
            let _ = self.create(&rt, Some(ns), body, "kube-controller-manager", false);
        }
    }
}

fn crd_established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
}

fn crd_status(crd: &mut Value, types: &[ResourceType], established: bool) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let time = crd
        .pointer("/status/conditions/0/lastTransitionTime")
        .cloned()
        .unwrap_or_else(|| json!(now()));
    let mut accepted = names.clone();
    if let Some(m) = accepted.as_object_mut()
        && !m.contains_key("singular")
        && let Some(t) = types.first()
    {
        m.insert("singular".to_owned(), json!(t.singular));
    }
    crd["status"] = json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": time},
            if established {
                json!({"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": time})
            } else {
                json!({"type": "Established", "status": "False", "reason": "Installing", "message": "the initial names have been accepted", "lastTransitionTime": time})
            },
        ],
        "storedVersions": storage,
    });
}

fn conflict_error(rt: &ResourceType, name: &str, conflicts: &[(String, String)]) -> ApiError {
    let api_version = rt.api_version();
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, field)| {
            json!({"type": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {api_version}"), "field": field})
        })
        .collect();
    let list: Vec<String> = conflicts
        .iter()
        .map(|(m, field)| format!("conflict with \"{m}\" using {api_version}: {field}"))
        .collect();
    let message = if list.len() == 1 {
        format!("Apply failed with 1 conflict: {}", list[0])
    } else {
        format!("Apply failed with {} conflicts: {}", list.len(), list.join("\n"))
    };
    ApiError {
        details: Some(json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": causes})),
        ..ApiError::new(409, "Conflict", message)
    }
}

/// `.spec.template.spec.containers[name="web"].image`, as conflict messages write paths.
fn path_string(path: &[Pe]) -> String {
    let mut out = String::new();
    for pe in path {
        match pe {
            Pe::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Pe::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    out
}

/// RFC 7386 JSON merge patch.
pub fn json_merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn check_name(rt: &ResourceType, name: &str) -> Result<(), &'static str> {
    if rt.group == "rbac.authorization.k8s.io" {
        return if name == "." || name == ".." || name.contains('/') || name.contains('%') {
            Err("may not be '.' or '..' and may not contain '/' or '%'")
        } else {
            Ok(())
        };
    }
    let label = rt.group.is_empty() && matches!(rt.kind.as_str(), "Namespace" | "Service");
    let max = if label { 63 } else { 253 };
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > max
        || !name.chars().all(ok_char)
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        return Err(if label {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        });
    }
    Ok(())
}

/// kube-apiserver's limit on the total size of an object's annotations.
const MAX_ANNOTATIONS: usize = 256 * 1024;

fn check_annotations(rt: &ResourceType, name: &str, body: &Value) -> Result<(), ApiError> {
    let Some(annotations) = body.pointer("/metadata/annotations").and_then(Value::as_object) else {
        return Ok(());
    };
    let total: usize = annotations
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if total > MAX_ANNOTATIONS {
        return Err(ApiError::invalid(
            rt,
            name,
            "metadata.annotations",
            &format!("Too long: must have at most {MAX_ANNOTATIONS} bytes"),
        ));
    }
    Ok(())
}

fn check_labels(rt: &ResourceType, name: &str, body: &Value) -> Result<(), ApiError> {
    let Some(labels) = body.pointer("/metadata/labels") else {
        return Ok(());
    };
    let Some(labels) = labels.as_object() else {
        return Err(ApiError::bad_request("metadata.labels must be a map of strings"));
    };
    for (k, v) in labels {
        let Some(v) = v.as_str() else {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.labels of type string",
                if v.is_number() {
                    "number"
                } else {
                    "non-string value"
                }
            )));
        };
        let ok = v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && (v.is_empty()
                || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && v.ends_with(|c: char| c.is_ascii_alphanumeric())));
        if !ok {
            return Err(ApiError::invalid(
                rt,
                name,
                "metadata.labels",
                &format!(
                    "Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (label {k})"
                ),
            ));
        }
    }
    Ok(())
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn parse_label_selector(s: &str) -> Result<Vec<Requirement>, ApiError> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        // split at the next top-level comma (not inside parentheses)
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let part = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("").trim();
        let bad = || ApiError::bad_request(format!("unable to parse requirement: {part:?}"));
        let req = if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, vs)) = part.split_once(" notin ") {
            Requirement::NotIn(k.trim().to_owned(), set_values(vs).ok_or_else(bad)?)
        } else if let Some((k, vs)) = part.split_once(" in ") {
            Requirement::In(k.trim().to_owned(), set_values(vs).ok_or_else(bad)?)
        } else if !part.is_empty() && !part.contains(' ') {
            Requirement::Exists(part.to_owned())
        } else {
            return Err(bad());
        };
        out.push(req);
    }
    Ok(out)
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

fn matches_labels(reqs: &[Requirement], object: &Value) -> bool {
    let label = |k: &str| {
        object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
    };
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => label(k) == Some(v.as_str()),
        Requirement::NotEq(k, v) => label(k) != Some(v.as_str()),
        Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        Requirement::Exists(k) => label(k).is_some(),
        Requirement::NotExists(k) => label(k).is_none(),
    })
}

fn parse_field_selector(s: &str) -> Result<Vec<(String, bool, String)>, ApiError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: {part:?}")));
            };
            let k = k.trim();
            if !matches!(k, "metadata.name" | "metadata.namespace") {
                return Err(ApiError::bad_request(format!("field label not supported: {k}")));
            }
            Ok((k.to_owned(), eq, v.trim().to_owned()))
        })
        .collect()
}

fn matches_fields(reqs: &[(String, bool, String)], object: &Value) -> bool {
    reqs.iter().all(|(k, eq, v)| {
        let pointer = format!("/{}", k.replace('.', "/"));
        let actual = object
            .pointer(&pointer)
            .and_then(Value::as_str)
            .unwrap_or_default();
        (actual == v) == *eq
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let m = |s: &str| matches_labels(&parse_label_selector(s).unwrap(), &obj);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("tier in (front, back)"));
        assert!(!m("tier notin (front)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
    }
}
