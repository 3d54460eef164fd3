//! A bundle's objects as they are applied: read (values substituted when asked), scoped,
//! given the default namespace and labelled with their channel. The agent applies them; the
//! hub shows them (`cluster render`) — both read them through here, so what an operator
//! checks is what a site applies.

use serde_json::Value;

use crate::api::ObjectRef;
use crate::bundle::{Bundle, BundleFile, BundleManifest};
use crate::manifest::{Budget, ManifestError, parse_objects_substituted, parse_objects_within};

/// Values substituted into a channel's manifests (its assignment asked for it), by name.
pub type Values = std::collections::BTreeMap<String, String>;

/// Label put on every applied object.
pub const CHANNEL_LABEL: &str = "skiff.dev/channel";
/// Annotation ordering objects in waves (an integer; default 0; lower first).
pub const WAVE_ANNOTATION: &str = "skiff.dev/wave";

/// One object to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Its identity (namespace filled in for namespaced kinds).
    pub id: ObjectRef,
    /// The object, labelled with its channel.
    pub value: Value,
    /// Its wave.
    pub wave: i64,
    /// Where it was read (file, document, line).
    pub origin: String,
}

/// Kinds that are cluster-scoped among the built-in ones (used where no discovery is at
/// hand: the `dir` target).
pub fn builtin_cluster_scoped(api_version: &str, kind: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    matches!(
        (group, kind),
        ("", "Namespace" | "Node" | "PersistentVolume")
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding")
            | (
                "storage.k8s.io",
                "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment"
            )
            | ("scheduling.k8s.io", "PriorityClass")
            | ("networking.k8s.io", "IngressClass")
            | ("node.k8s.io", "RuntimeClass")
            | ("apiregistration.k8s.io", "APIService")
            | (
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration"
                    | "MutatingWebhookConfiguration"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
            | ("certificates.k8s.io", "CertificateSigningRequest")
    )
}

/// Reads a bundle's objects, gives namespaced ones without a namespace the default (as
/// `kubectl -n` would), labels them with the channel. `namespaced` decides scope. Every
/// unreadable document is reported, not just the first. The bundle's parse budget
/// ([`Budget::for_bundle`]) holds across its files.
pub fn objects(
    bundle: &Bundle,
    channel: &str,
    values: Option<&Values>,
    namespaced: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<Desired>, Vec<ManifestError>> {
    let mut budget = Budget::for_bundle(bundle.manifest.total_size);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for file in &bundle.files {
        match file_objects(&bundle.manifest, file, channel, values, namespaced, &mut budget) {
            Ok(objs) => out.extend(objs),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The objects of one file of a bundle, as [`objects`] reads them (so a caller can work
/// file by file, holding one file's objects at a time). With `values`, references are
/// substituted first ([`crate::values`]).
pub fn file_objects(
    manifest: &BundleManifest,
    file: &BundleFile,
    channel: &str,
    values: Option<&Values>,
    namespaced: &dyn Fn(&str, &str) -> bool,
    budget: &mut Budget,
) -> Result<Vec<Desired>, ManifestError> {
    let default_ns = manifest.default_namespace.as_deref().unwrap_or("default");
    let objs = match values {
        Some(v) => {
            parse_objects_substituted(&file.path, &file.bytes, budget, &|n| v.get(n).map(String::as_str))?
        }
        None => parse_objects_within(&file.path, &file.bytes, budget)?,
    };
    Ok(objs
        .into_iter()
        .map(|o| {
            let mut value = o.value;
            let namespace = if namespaced(&o.api_version, &o.kind) {
                Some(o.namespace.unwrap_or_else(|| default_ns.to_owned()))
            } else {
                None
            };
            let meta = value["metadata"].as_object_mut().expect("checked by the parser");
            match &namespace {
                Some(ns) => {
                    meta.insert("namespace".into(), Value::String(ns.clone()));
                }
                None => {
                    meta.remove("namespace");
                }
            }
            let labels = meta.entry("labels").or_insert_with(|| serde_json::json!({}));
            if !labels.is_object() {
                *labels = serde_json::json!({});
            }
            labels[CHANNEL_LABEL] = Value::String(channel.to_owned());
            let wave = meta
                .get("annotations")
                .and_then(|a| a.get(WAVE_ANNOTATION))
                .and_then(|w| {
                    w.as_str()
                        .and_then(|s| s.trim().parse().ok())
                        .or_else(|| w.as_i64())
                })
                .unwrap_or(0);
            Desired {
                id: ObjectRef {
                    api_version: o.api_version,
                    kind: o.kind,
                    namespace,
                    name: o.name,
                },
                value,
                wave,
                origin: o.origin.to_string(),
            }
        })
        .collect())
}

/// Drops the namespace of an object found to be cluster-scoped.
pub fn make_cluster_scoped(o: &mut Desired) {
    o.id.namespace = None;
    if let Some(meta) = o.value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("namespace");
    }
}
