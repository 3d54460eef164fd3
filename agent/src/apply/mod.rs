//! Applying a verified bundle: the objects, their order, and what to prune. Decisions here
//! are plain functions over plain data; the appliers ([`kube`], [`dir`]) do the I/O.

pub mod dir;
pub mod kube;
pub mod pace;

use std::collections::BTreeSet;

use serde_json::Value;
use skiff_proto::api::{Drift, ObjectError, ObjectRef};
use skiff_proto::manifest::{ManifestError, annotation};
pub use skiff_proto::objects::{
    CHANNEL_LABEL, Desired, Values, WAVE_ANNOTATION, builtin_cluster_scoped, file_objects,
    make_cluster_scoped, objects,
};

/// Annotation letting skiff delete and re-create an object whose new state changes an
/// immutable field (`"true"`), as Flux's `force` and Argo CD's `Replace=true` do; never
/// without it.
pub const RECREATE_ANNOTATION: &str = "skiff.dev/recreate";

/// Whether an object opted in to delete-and-recreate.
pub fn recreate_allowed(value: &Value) -> bool {
    annotation(value, RECREATE_ANNOTATION) == Some("true")
}

/// Annotation letting self-heal replace an object whose manifest the server refuses to
/// apply over the live one (`replace`): unreconcilable drift, such as a hand edit that moved
/// a Service port to another key. Without it such drift is reported, not healed. A
/// kustomization's `commonAnnotations` sets it for a whole channel.
pub const HEAL_ANNOTATION: &str = "skiff.dev/heal";

/// Whether an object opted in to being replaced when it cannot be applied over.
pub fn replace_allowed(value: &Value) -> bool {
    annotation(value, HEAL_ANNOTATION) == Some("replace")
}

/// Annotation keeping an object from being pruned (`disabled`).
pub const PRUNE_ANNOTATION: &str = "skiff.dev/prune";

/// The result of applying a bundle.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Objects applied.
    pub applied: Vec<ObjectRef>,
    /// Objects that failed, with the reason.
    pub errors: Vec<ObjectError>,
    /// Objects pruned.
    pub pruned: Vec<ObjectRef>,
    /// Whether trying the same generation again may help (the most hopeful of its
    /// errors'); `None`: as [`Retry::Later`].
    pub retry: Option<Retry>,
}

/// Whether trying again may help, from least to most hopeful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Retry {
    /// The bundle's content is at fault (a field the kind's schema lacks): only a new
    /// generation (or a restart) tries again.
    Never,
    /// The cluster may change (RBAC, a namespace being deleted, another manager's edit, an
    /// immutable field someone may delete): tried again with a growing pause.
    Later,
    /// The server is busy or unreachable (network, 429, 5xx): tried again soon.
    Soon,
}

impl Outcome {
    /// Notes how hopeful one error is.
    pub fn note(&mut self, retry: Retry) {
        self.retry = Some(self.retry.map_or(retry, |r| r.max(retry)));
    }
}

/// One object's health: its identity, state and reason.
pub type Health1 = (ObjectRef, &'static str, Option<String>);

/// What a drift check found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Drifted objects.
    pub drift: Vec<Drift>,
    /// Each object's health.
    pub health: Vec<Health1>,
    /// Objects that could not be checked.
    pub errors: Vec<String>,
    /// Files in a `dir` target's channel folder that skiff did not write.
    pub stray: Vec<String>,
    /// Objects that could not be compared, with the reason (also in `health` as Unknown).
    pub unknown: Vec<ObjectError>,
}

/// Objects defined more than once, by identity, with an error naming where each copy is
/// (from `(identity, origin)` pairs: what a first pass over a bundle keeps of its objects).
pub fn duplicate_errors(ids: &[(ObjectRef, String)]) -> std::collections::BTreeMap<ObjectRef, ObjectError> {
    let mut seen: std::collections::BTreeMap<&ObjectRef, Vec<&str>> = std::collections::BTreeMap::new();
    for (id, origin) in ids {
        seen.entry(id).or_default().push(origin);
    }
    seen.into_iter()
        .filter(|(_, origins)| origins.len() > 1)
        .map(|(id, origins)| {
            (
                id.clone(),
                ObjectError {
                    object: id.clone(),
                    message: format!(
                        "defined {} times in the bundle ({}); none applied",
                        origins.len(),
                        origins.join("; ")
                    ),
                },
            )
        })
        .collect()
}

/// Splits off objects defined more than once in a bundle: which copy should win is not
/// skiff's to guess, so none is applied and each such object is an error naming where its
/// copies are. (Two copies that differ would also be endless drift.)
pub fn split_duplicates(objects: Vec<Desired>) -> (Vec<Desired>, Vec<ObjectError>) {
    let ids: Vec<(ObjectRef, String)> = objects.iter().map(|o| (o.id.clone(), o.origin.clone())).collect();
    let duplicates = duplicate_errors(&ids);
    let unique = objects
        .into_iter()
        .filter(|o| !duplicates.contains_key(&o.id))
        .collect();
    (unique, duplicates.into_values().collect())
}

/// The apply phase of an object within its wave: Namespaces and CRDs, then other
/// cluster-scoped kinds, then namespaced kinds.
pub fn phase(id: &ObjectRef) -> u8 {
    let crd = id.kind == "CustomResourceDefinition" && id.api_version.starts_with("apiextensions.k8s.io/");
    if crd || (id.kind == "Namespace" && id.api_version == "v1") {
        0
    } else if id.namespace.is_none() {
        1
    } else {
        2
    }
}

/// Objects in apply order, grouped: each group may be applied concurrently, groups one
/// after the other (by wave, then phase, then a stable order).
pub fn plan(mut objects: Vec<Desired>) -> Vec<Vec<Desired>> {
    objects.sort_by(|a, b| (a.wave, phase(&a.id), &a.id).cmp(&(b.wave, phase(&b.id), &b.id)));
    let mut groups: Vec<Vec<Desired>> = Vec::new();
    for o in objects {
        match groups.last_mut() {
            Some(g) if (g[0].wave, phase(&g[0].id)) == (o.wave, phase(&o.id)) => g.push(o),
            _ => groups.push(vec![o]),
        }
    }
    groups
}

/// What the previous inventory had and the new one lacks, in delete order: the reverse of
/// apply order (namespaced objects first, Namespaces and CRDs last).
pub fn prune_set(previous: &[ObjectRef], current: &[ObjectRef]) -> Vec<ObjectRef> {
    let keep: BTreeSet<&ObjectRef> = current.iter().collect();
    let mut gone: Vec<ObjectRef> = previous.iter().filter(|o| !keep.contains(o)).cloned().collect();
    gone.sort_by(|a, b| (phase(b), b).cmp(&(phase(a), a)));
    gone.dedup();
    gone
}

/// Whether an object may be pruned (not annotated `skiff.dev/prune: disabled`).
pub fn prunable(live: &Value) -> bool {
    annotation(live, PRUNE_ANNOTATION) != Some("disabled")
}

/// An outcome for a stored bundle that can no longer be read as it was verified (changed on
/// disk since): nothing applied.
pub fn unreadable_stored(e: &skiff_proto::bundle::BundleError) -> Outcome {
    Outcome {
        errors: vec![ObjectError {
            object: ObjectRef {
                api_version: String::new(),
                kind: String::new(),
                namespace: None,
                name: String::new(),
            },
            message: format!("stored bundle: {e}"),
        }],
        ..Outcome::default()
    }
}

/// An outcome for a bundle whose documents could not be read: every error, none applied.
pub fn unreadable(errors: Vec<ManifestError>) -> Outcome {
    Outcome {
        errors: errors
            .into_iter()
            .map(|e| ObjectError {
                object: ObjectRef {
                    api_version: String::new(),
                    kind: String::new(),
                    namespace: None,
                    name: String::new(),
                },
                message: e.to_string(),
            })
            .collect(),
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(api: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
            api_version: api.into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    fn d(id: ObjectRef, wave: i64) -> Desired {
        Desired {
            id,
            value: Value::Null,
            wave,
            origin: "test".into(),
        }
    }

    #[test]
    fn objects_defined_twice_are_errors_and_the_rest_goes_on() {
        let a = r("v1", "ConfigMap", Some("x"), "a");
        let b = r("v1", "ConfigMap", Some("x"), "b");
        let mut twice = d(a.clone(), 0);
        twice.origin = "other.yaml: document 2 (line 9)".into();
        let (unique, errors) = split_duplicates(vec![d(a.clone(), 0), d(b.clone(), 0), twice]);
        assert_eq!(unique.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), vec![b]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, a);
        assert!(
            errors[0].message.contains("defined 2 times") && errors[0].message.contains("other.yaml"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn plan_orders_waves_then_namespaces_and_crds_then_cluster_then_namespaced() {
        let objs = vec![
            d(r("apps/v1", "Deployment", Some("a"), "web"), 0),
            d(r("v1", "Namespace", None, "a"), 0),
            d(r("rbac.authorization.k8s.io/v1", "ClusterRole", None, "r"), 0),
            d(
                r("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "w.x"),
                0,
            ),
            d(r("v1", "ConfigMap", Some("a"), "first"), -1),
        ];
        let groups: Vec<Vec<String>> = plan(objs)
            .iter()
            .map(|g| g.iter().map(|o| o.id.name.clone()).collect())
            .collect();
        assert_eq!(
            groups,
            vec![vec!["first"], vec!["w.x", "a"], vec!["r"], vec!["web"]]
        );
    }

    #[test]
    fn prune_removes_what_is_gone_in_reverse_order() {
        let ns = r("v1", "Namespace", None, "old");
        let cm = r("v1", "ConfigMap", Some("old"), "c");
        let crd = r("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "w.x");
        let cr = r("rbac.authorization.k8s.io/v1", "ClusterRole", None, "r");
        let keep = r("v1", "ConfigMap", Some("a"), "keep");
        let gone = prune_set(
            &[ns.clone(), crd.clone(), cm.clone(), cr.clone(), keep.clone()],
            &[keep],
        );
        assert_eq!(gone, vec![cm, cr, ns, crd]);
    }

    #[test]
    fn prune_disabled_annotation() {
        assert!(prunable(&serde_json::json!({"metadata": {}})));
        assert!(!prunable(
            &serde_json::json!({"metadata": {"annotations": {"skiff.dev/prune": "disabled"}}})
        ));
    }
}
