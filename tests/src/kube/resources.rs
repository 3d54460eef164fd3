//! The resource types the test server serves: the built-in kinds an agent applies, plus
//! those added by CustomResourceDefinitions, and the discovery documents describing them.

use serde_json::{Value, json};

/// One served resource (one group/version/plural).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name (URL segment).
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: Vec<String>,
    /// Whether `/status` is a subresource (status ignored on the main resource).
    pub status: bool,
    /// Name of the CRD that defines it (None for built-ins).
    pub crd: Option<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
}

impl ResourceType {
    /// `apiVersion` as written in objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as Kubernetes names a resource in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether objects of this kind carry `metadata.generation` bumped on spec changes.
    pub fn tracks_generation(&self) -> bool {
        self.crd.is_some()
            || matches!(
                self.kind.as_str(),
                "Deployment"
                    | "StatefulSet"
                    | "DaemonSet"
                    | "ReplicaSet"
                    | "Job"
                    | "CronJob"
                    | "HorizontalPodAutoscaler"
                    | "PodDisruptionBudget"
                    | "Ingress"
                    | "NetworkPolicy"
                    | "CustomResourceDefinition"
                    | "ReplicationController"
            )
    }
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    let all = matches!(
        kind,
        "Pod"
            | "Service"
            | "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "Job"
            | "CronJob"
            | "ReplicationController"
            | "HorizontalPodAutoscaler"
    );
    ResourceType {
        group: group.to_owned(),
        version: version.to_owned(),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        status,
        crd: None,
        categories: if all { vec!["all".to_owned()] } else { Vec::new() },
    }
}

/// The built-in kinds.
pub fn builtins() -> Vec<ResourceType> {
    const NS: bool = true;
    const CLUSTER: bool = false;
    vec![
        builtin("", "v1", "Namespace", "namespaces", CLUSTER, &["ns"], true),
        builtin("", "v1", "ConfigMap", "configmaps", NS, &["cm"], false),
        builtin("", "v1", "Secret", "secrets", NS, &[], false),
        builtin("", "v1", "Service", "services", NS, &["svc"], true),
        builtin("", "v1", "ServiceAccount", "serviceaccounts", NS, &["sa"], false),
        builtin("", "v1", "Pod", "pods", NS, &["po"], true),
        builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            NS,
            &["pvc"],
            true,
        ),
        builtin(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            CLUSTER,
            &["pv"],
            true,
        ),
        builtin(
            "",
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            NS,
            &["rc"],
            true,
        ),
        builtin("", "v1", "Endpoints", "endpoints", NS, &["ep"], false),
        builtin("", "v1", "LimitRange", "limitranges", NS, &["limits"], false),
        builtin("", "v1", "ResourceQuota", "resourcequotas", NS, &["quota"], true),
        builtin("", "v1", "Node", "nodes", CLUSTER, &["no"], true),
        builtin("apps", "v1", "Deployment", "deployments", NS, &["deploy"], true),
        builtin("apps", "v1", "StatefulSet", "statefulsets", NS, &["sts"], true),
        builtin("apps", "v1", "DaemonSet", "daemonsets", NS, &["ds"], true),
        builtin("apps", "v1", "ReplicaSet", "replicasets", NS, &["rs"], true),
        builtin("batch", "v1", "Job", "jobs", NS, &[], true),
        builtin("batch", "v1", "CronJob", "cronjobs", NS, &["cj"], true),
        builtin(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            NS,
            &["ing"],
            true,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "IngressClass",
            "ingressclasses",
            CLUSTER,
            &[],
            false,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            NS,
            &["netpol"],
            false,
        ),
        builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", NS, &[], false),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            NS,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            CLUSTER,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            CLUSTER,
            &[],
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            CLUSTER,
            &["crd", "crds"],
            true,
        ),
        builtin(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            NS,
            &["hpa"],
            true,
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            NS,
            &["pdb"],
            true,
        ),
        builtin(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            CLUSTER,
            &["sc"],
            false,
        ),
        builtin(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            CLUSTER,
            &["pc"],
            false,
        ),
        builtin("coordination.k8s.io", "v1", "Lease", "leases", NS, &[], false),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            CLUSTER,
            &[],
            false,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            CLUSTER,
            &[],
            false,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            CLUSTER,
            &[],
            true,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            CLUSTER,
            &[],
            false,
        ),
        builtin(
            "apiregistration.k8s.io",
            "v1",
            "APIService",
            "apiservices",
            CLUSTER,
            &[],
            true,
        ),
    ]
}

/// The verbs every served resource supports here.
const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api` (the core group's versions).
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
    })
}

/// The groups (other than core) and their versions, in first-seen order.
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) => {
                if !versions.contains(&t.version) {
                    versions.push(t.version.clone());
                }
            }
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    groups
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0].clone()})
}

/// `/apis`.
pub fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types).iter().map(|(g, vs)| group_json(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, if the group is served.
pub fn group(types: &[ResourceType], name: &str) -> Option<Value> {
    let (g, vs) = groups(types).into_iter().find(|(g, _)| g == name)?;
    let mut v = group_json(&g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// `/api/v1` or `/apis/{group}/{version}`, if served.
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for t in types.iter().filter(|t| t.group == group && t.version == version) {
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if has_scale(t) {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// The resource types a CustomResourceDefinition defines, one per served version; or why
/// the CRD is invalid (as `(field, message)`).
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, (String, String)> {
    let spec = crd
        .get("spec")
        .ok_or(("spec".to_owned(), "Required value".to_owned()))?;
    let s = |v: Option<&Value>, field: &str| -> Result<String, (String, String)> {
        match v.and_then(Value::as_str) {
            Some(x) if !x.is_empty() => Ok(x.to_owned()),
            _ => Err((field.to_owned(), "Required value".to_owned())),
        }
    };
    let group = s(spec.get("group"), "spec.group")?;
    let names = spec.get("names");
    let plural = s(names.and_then(|n| n.get("plural")), "spec.names.plural")?;
    let kind = s(names.and_then(|n| n.get("kind")), "spec.names.kind")?;
    let singular = names
        .and_then(|n| n.get("singular"))
        .and_then(Value::as_str)
        .map_or_else(|| kind.to_lowercase(), str::to_owned);
    let scope = s(spec.get("scope"), "spec.scope")?;
    let namespaced = match scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err((
                "spec.scope".to_owned(),
                format!("Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""),
            ));
        }
    };
    let expected = format!("{plural}.{group}");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != expected {
        return Err((
            "metadata.name".to_owned(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let short_names = strings(names.and_then(|n| n.get("shortNames")));
    let categories = strings(names.and_then(|n| n.get("categories")));
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or(("spec.versions".to_owned(), "Required value".to_owned()))?;
    if versions
        .iter()
        .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
        .count()
        != 1
    {
        return Err((
            "spec.versions".to_owned(),
            "Invalid value: must have exactly one version marked as storage version".to_owned(),
        ));
    }
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let version = s(v.get("name"), &format!("spec.versions[{i}].name"))?;
        if v.get("served") != Some(&Value::Bool(true)) {
            continue;
        }
        out.push(ResourceType {
            group: group.clone(),
            version,
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: short_names.clone(),
            status: v.pointer("/subresources/status").is_some(),
            crd: Some(expected.clone()),
            categories: categories.clone(),
        });
    }
    Ok(out)
}

/// `/openapi/v3`: where each group version's document is. Only what `kubectl` reads to learn
/// that the server validates fields itself (`fieldValidation`), so it needs no schemas.
pub fn openapi_root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for t in types {
        let gv = if t.group.is_empty() {
            format!("api/{}", t.version)
        } else {
            format!("apis/{}/{}", t.group, t.version)
        };
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api/v1 | apis/group/version}`: the PATCH operations with the query
/// parameters the server takes, tagged with each kind.
pub fn openapi_group_version(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
        .iter()
        .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    for t in types.iter().filter(|t| t.group == group && t.version == version) {
        let path = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.4"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// Whether a kind serves the `/scale` subresource (the built-in workloads with replicas).
pub fn has_scale(t: &ResourceType) -> bool {
    t.group == "apps" && matches!(t.kind.as_str(), "Deployment" | "StatefulSet" | "ReplicaSet")
}
