//! Behaviours of the Kubernetes API that skiff relies on, asserted as Kubernetes documents
//! them. Runs against the in-process test server, or against a real cluster when
//! `SKIFF_TEST_KUBECONFIG` names a kubeconfig; every test works in namespaces of its own.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use skiff_tests::cluster::{TestCluster, eventually, unique_name};

const WAIT: Duration = Duration::from_secs(30);

/// The HTTP code and reason of a failed call.
fn api_error<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn namespace(c: &TestCluster) -> String {
    let name = unique_name("skiff-conf");
    let api: Api<Namespace> = Api::all(c.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .expect("create namespace");
    name
}

async fn cleanup(c: &TestCluster, ns: &str) {
    let api: Api<Namespace> = Api::all(c.client.clone());
    let _ = api.delete(ns, &DeleteParams::default()).await;
}

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}),
    )
    .unwrap()
}

fn apply(manager: &str) -> PatchParams {
    PatchParams::apply(manager)
}

fn deployment(name: &str, replicas: Option<i64>, image: &str) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image, "ports": [{"containerPort": 8080}]}]}},
        },
    });
    if let Some(r) = replicas {
        d["spec"]["replicas"] = json!(r);
    }
    d
}

#[tokio::test]
async fn discovery_lists_versions_groups_and_resources() {
    let c = TestCluster::start().await;
    let version = c.client.apiserver_version().await.expect("/version");
    assert_eq!(version.major, "1");
    assert!(version.git_version.starts_with("v1."), "{}", version.git_version);

    let core = c.client.list_core_api_versions().await.expect("/api");
    assert!(core.versions.contains(&"v1".to_owned()));
    let groups = c.client.list_api_groups().await.expect("/apis");
    assert!(groups.groups.iter().any(|g| g.name == "apps"));
    assert!(groups.groups.iter().any(|g| g.name == "apiextensions.k8s.io"));

    let v1 = c.client.list_core_api_resources("v1").await.expect("/api/v1");
    let find = |list: &k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList, name: &str| {
        list.resources
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} served"))
    };
    let cms = find(&v1, "configmaps");
    assert!(cms.namespaced);
    assert_eq!(cms.kind, "ConfigMap");
    assert!(cms.verbs.contains(&"patch".to_owned()));
    assert!(cms.short_names.unwrap_or_default().contains(&"cm".to_owned()));
    assert!(!find(&v1, "namespaces").namespaced);

    let apps = c
        .client
        .list_api_group_resources("apps/v1")
        .await
        .expect("/apis/apps/v1");
    assert_eq!(find(&apps, "deployments").kind, "Deployment");
    assert!(apps.resources.iter().any(|r| r.name == "deployments/status"));

    let discovery = kube::Discovery::new(c.client.clone())
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
        ))
        .expect("ClusterRole discovered");
    assert_eq!(ar.plural, "clusterroles");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
}

#[tokio::test]
async fn create_get_list_update_delete_with_resource_versions() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);

    let mut one = cm("one", json!({"a": "1"}));
    one.metadata.labels = Some([("tier".to_owned(), "front".to_owned())].into());
    let created = api.create(&PostParams::default(), &one).await.expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| !u.is_empty()));
    assert!(meta.creation_timestamp.is_some());
    let rv1 = meta.resource_version.clone().expect("resourceVersion");
    api.create(&PostParams::default(), &cm("two", json!({"b": "2"})))
        .await
        .expect("create two");

    let (code, reason, _) = api_error(api.create(&PostParams::default(), &cm("one", json!({}))).await);
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let got = api.get("one").await.expect("get");
    assert_eq!(got.data.unwrap()["a"], "1");

    let names = |list: kube::api::ObjectList<ConfigMap>| {
        let mut n: Vec<String> = list.items.into_iter().filter_map(|i| i.metadata.name).collect();
        n.sort();
        n
    };
    let by_label = api
        .list(&ListParams::default().labels("tier=front"))
        .await
        .expect("list");
    assert_eq!(names(by_label), ["one"]);
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=two"))
        .await
        .expect("list");
    assert_eq!(names(by_field), ["two"]);
    // A real cluster's controllers add objects of their own (kube-root-ca.crt): look only
    // for ours.
    let all = names(api.list(&ListParams::default()).await.expect("list"));
    assert!(
        all.contains(&"one".to_owned()) && all.contains(&"two".to_owned()),
        "{all:?}"
    );

    let mut changed = api.get("one").await.unwrap();
    changed.data = Some([("a".to_owned(), "changed".to_owned())].into());
    let updated = api
        .replace("one", &PostParams::default(), &changed)
        .await
        .expect("update");
    let rv2 = updated.metadata.resource_version.clone().unwrap();
    assert_ne!(rv1, rv2, "a write changes resourceVersion");

    // An update based on a stale resourceVersion is refused.
    let (code, reason, _) = api_error(api.replace("one", &PostParams::default(), &changed).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    api.delete("one", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(
        eventually(WAIT, || async {
            matches!(api.get("one").await, Err(kube::Error::Api(s)) if s.code == 404)
        })
        .await,
        "deleted object is gone"
    );
    let (code, reason, _) = api_error(api.get("one").await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    cleanup(&c, &ns).await;
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_skips_no_ops() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &ns);

    let created = deployments
        .patch(
            "web",
            &apply("skiff"),
            &Patch::Apply(deployment("web", Some(2), "nginx:1.27")),
        )
        .await
        .expect("create on apply");
    let rv = created.metadata.resource_version.clone().unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let managed = created.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        managed
            .iter()
            .any(|m| m.manager.as_deref() == Some("skiff") && m.operation.as_deref() == Some("Apply"))
    );

    // The same apply again changes nothing, not even resourceVersion.
    let again = deployments
        .patch(
            "web",
            &apply("skiff"),
            &Patch::Apply(deployment("web", Some(2), "nginx:1.27")),
        )
        .await
        .expect("no-op apply");
    assert_eq!(again.metadata.resource_version.as_deref(), Some(rv.as_str()));

    // A spec change bumps generation; a label change does not.
    let changed = deployments
        .patch(
            "web",
            &apply("skiff"),
            &Patch::Apply(deployment("web", Some(2), "nginx:1.28")),
        )
        .await
        .expect("apply change");
    assert_ne!(changed.metadata.resource_version.as_deref(), Some(rv.as_str()));
    assert_eq!(changed.metadata.generation, Some(2));
    let mut labelled = deployment("web", Some(2), "nginx:1.28");
    labelled["metadata"]["labels"]["extra"] = json!("yes");
    let labelled = deployments
        .patch("web", &apply("skiff"), &Patch::Apply(labelled))
        .await
        .expect("label");
    assert_eq!(labelled.metadata.generation, Some(2));
    cleanup(&c, &ns).await;
}

#[tokio::test]
async fn server_side_apply_conflicts_name_the_field_and_manager_and_force_takes_over() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &ns);
    deployments
        .patch(
            "web",
            &apply("first"),
            &Patch::Apply(deployment("web", Some(2), "nginx:1.27")),
        )
        .await
        .expect("first apply");

    let minimal = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}});
    let (code, reason, message) = api_error(
        deployments
            .patch("web", &apply("second"), &Patch::Apply(minimal.clone()))
            .await,
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains(".spec.replicas"), "{message}");
    assert!(message.contains("\"first\""), "{message}");

    // The same value is no conflict: both managers own the field.
    let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
    deployments
        .patch("web", &apply("third"), &Patch::Apply(same))
        .await
        .expect("co-own");

    let forced = deployments
        .patch("web", &apply("second").force(), &Patch::Apply(minimal))
        .await
        .expect("forced apply");
    assert_eq!(forced.spec.unwrap().replicas, Some(3));
    let owners_of_replicas: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        })
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(owners_of_replicas, ["second"]);
    cleanup(&c, &ns).await;
}

#[tokio::test]
async fn server_side_apply_removes_fields_it_no_longer_sets_but_not_others_fields() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    let body = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data});
    api.patch(
        "cfg",
        &apply("skiff"),
        &Patch::Apply(body(json!({"a": "1", "b": "2"}))),
    )
    .await
    .expect("apply");
    api.patch("cfg", &apply("other"), &Patch::Apply(body(json!({"c": "3"}))))
        .await
        .expect("other");
    let after = api
        .patch("cfg", &apply("skiff"), &Patch::Apply(body(json!({"a": "1"}))))
        .await
        .expect("apply");
    let data = after.data.unwrap();
    assert_eq!(data.get("a").map(String::as_str), Some("1"));
    assert!(
        !data.contains_key("b"),
        "a field skiff stopped applying is removed: {data:?}"
    );
    assert_eq!(
        data.get("c").map(String::as_str),
        Some("3"),
        "another manager's field stays"
    );
    cleanup(&c, &ns).await;
}

#[tokio::test]
async fn dry_run_returns_the_result_and_stores_nothing() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    let body = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dry"}, "data": {"k": v}});

    let dry = api
        .patch("dry", &apply("skiff").dry_run(), &Patch::Apply(body("1")))
        .await
        .expect("dry create");
    assert_eq!(dry.data.unwrap()["k"], "1");
    let (code, _, _) = api_error(api.get("dry").await);
    assert_eq!(code, 404, "a dry-run create stores nothing");

    let real = api
        .patch("dry", &apply("skiff"), &Patch::Apply(body("1")))
        .await
        .expect("create");
    let dry = api
        .patch("dry", &apply("skiff").dry_run(), &Patch::Apply(body("2")))
        .await
        .expect("dry update");
    assert_eq!(dry.data.unwrap()["k"], "2");
    let live = api.get("dry").await.unwrap();
    assert_eq!(live.data.unwrap()["k"], "1");
    assert_eq!(live.metadata.resource_version, real.metadata.resource_version);
    cleanup(&c, &ns).await;
}

#[tokio::test]
async fn defaults_are_filled_in_by_the_server() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let d: Api<Deployment> = Api::namespaced(c.client.clone(), &ns);
    let web = d
        .patch(
            "web",
            &apply("skiff"),
            &Patch::Apply(deployment("web", None, "nginx:1.27")),
        )
        .await
        .unwrap();
    let spec = web.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
    let container = &spec.template.spec.unwrap().containers[0];
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        container.termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(
        container.ports.as_ref().unwrap()[0].protocol.as_deref(),
        Some("TCP")
    );

    let s: Api<Service> = Api::namespaced(c.client.clone(), &ns);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let svc = s
        .patch("web", &apply("skiff"), &Patch::Apply(svc))
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(svc.session_affinity.as_deref(), Some("None"));
    assert!(svc.cluster_ip.is_some_and(|ip| !ip.is_empty()));
    cleanup(&c, &ns).await;
}

fn widget_crd(group: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]},
    })
}

async fn established(crds: &Api<CustomResourceDefinition>, name: &str) -> bool {
    crds.get(name)
        .await
        .ok()
        .and_then(|crd| crd.status)
        .and_then(|s| s.conditions)
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

#[tokio::test]
async fn custom_resource_definitions_add_and_remove_resources_with_status_subresources() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let group = format!("{}.skiff.test", unique_name("g"));
    let crd_name = format!("widgets.{group}");
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    crds.patch(&crd_name, &apply("skiff"), &Patch::Apply(widget_crd(&group)))
        .await
        .expect("apply CRD");
    assert!(
        eventually(WAIT, || established(&crds, &crd_name)).await,
        "CRD becomes Established"
    );

    let gvk = GroupVersionKind::gvk(&group, "v1", "Widget");
    let discovered = eventually(WAIT, || async {
        kube::Discovery::new(c.client.clone())
            .run()
            .await
            .is_ok_and(|d| d.resolve_gvk(&gvk).is_some())
    })
    .await;
    assert!(discovered, "the new kind appears in discovery");

    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &ns, &ar);
    let w = json!({"apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}});
    let created = widgets
        .patch("w1", &apply("skiff"), &Patch::Apply(w.clone()))
        .await
        .expect("apply CR");
    assert_eq!(created.data["spec"]["size"], 3);
    assert_eq!(created.metadata.generation, Some(1));

    // Status goes through /status only; the object's own endpoint ignores it.
    let status_patch = json!({"status": {"ready": true}});
    let after = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status_patch))
        .await
        .expect("status patch");
    assert_eq!(after.data["status"]["ready"], true);
    let mut with_status = w.clone();
    with_status["status"] = json!({"ready": false});
    with_status["spec"]["size"] = json!(4);
    let main = widgets
        .patch("w1", &apply("skiff"), &Patch::Apply(with_status))
        .await
        .expect("apply");
    assert_eq!(
        main.data["status"]["ready"], true,
        "status ignored on the main resource"
    );
    assert_eq!(main.data["spec"]["size"], 4);
    assert_eq!(main.metadata.generation, Some(2));
    let spec_via_status = json!({"spec": {"size": 9}, "status": {"ready": false}});
    let st = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&spec_via_status))
        .await
        .unwrap();
    assert_eq!(st.data["spec"]["size"], 4, "spec ignored on /status");
    assert_eq!(st.data["status"]["ready"], false);

    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .expect("delete CRD");
    let gone = eventually(WAIT, || async {
        matches!(widgets.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 404)
    })
    .await;
    assert!(gone, "deleting the CRD removes its resource");
    cleanup(&c, &ns).await;
}

#[tokio::test]
async fn namespaces_must_exist_and_take_their_objects_with_them() {
    let c = TestCluster::start().await;
    let missing: Api<ConfigMap> = Api::namespaced(c.client.clone(), &unique_name("skiff-missing"));
    let (code, reason, message) =
        api_error(missing.create(&PostParams::default(), &cm("x", json!({}))).await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert!(message.contains("namespaces"), "{message}");

    let ns = namespace(&c).await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    api.create(&PostParams::default(), &cm("inside", json!({})))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    namespaces
        .delete(&ns, &DeleteParams::foreground())
        .await
        .expect("delete namespace");
    let emptied = eventually(Duration::from_secs(120), || async {
        matches!(api.get("inside").await, Err(kube::Error::Api(s)) if s.code == 404)
    })
    .await;
    assert!(emptied, "objects go with their namespace");
}

#[tokio::test]
async fn cluster_scoped_objects() {
    let c = TestCluster::start().await;
    let api: Api<ClusterRole> = Api::all(c.client.clone());
    let name = format!("{}:reader", unique_name("skiff-conf"));
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
    let created = api
        .patch(&name, &apply("skiff"), &Patch::Apply(role))
        .await
        .expect("apply ClusterRole");
    assert!(created.metadata.namespace.is_none());
    assert_eq!(api.get(&name).await.unwrap().rules.unwrap()[0].verbs, ["get"]);
    api.delete(&name, &DeleteParams::default()).await.expect("delete");
    assert!(
        eventually(WAIT, || async {
            api.get_opt(&name).await.is_ok_and(|o| o.is_none())
        })
        .await
    );
}

#[tokio::test]
async fn invalid_requests_get_status_errors_with_the_right_codes() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);

    let no_name: ConfigMap = serde_json::from_value(json!({"metadata": {}, "data": {}})).unwrap();
    let (code, reason, message) = api_error(api.create(&PostParams::default(), &no_name).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");

    let (code, reason, message) = api_error(
        api.create(&PostParams::default(), &cm("Bad_Name", json!({})))
            .await,
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("metadata.name"), "{message}");

    let bad_label = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "labels": {"a": "not valid!"}}});
    let (code, reason, _) = api_error(api.patch("l", &apply("skiff"), &Patch::Apply(bad_label)).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    let huge = "x".repeat(300 * 1024);
    let big_annotation = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "annotations": {"note": huge}}});
    let (code, reason, message) = api_error(
        api.patch("big", &apply("skiff"), &Patch::Apply(big_annotation))
            .await,
    );
    assert_eq!(
        (code, reason.as_str()),
        (422, "Invalid"),
        "annotations are limited to 256 KiB"
    );
    assert!(message.contains("metadata.annotations"), "{message}");

    let wrong_version = json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "w"}});
    let (code, _, message) = api_error(
        api.patch("w", &apply("skiff"), &Patch::Apply(wrong_version))
            .await,
    );
    assert_eq!(code, 400, "{message}");

    let no_manager = PatchParams::default();
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}});
    let (code, reason, _) = api_error(api.patch("m", &no_manager, &Patch::Apply(body)).await);
    assert_eq!(
        (code, reason.as_str()),
        (422, "Invalid"),
        "apply needs a field manager"
    );

    // Raw requests for what the typed client cannot send.
    let path = format!("/api/v1/namespaces/{ns}/configmaps/m");
    let raw = |content_type: &'static str, body: &'static str| {
        http::Request::patch(path.clone())
            .header("Content-Type", content_type)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    api.create(&PostParams::default(), &cm("m", json!({})))
        .await
        .unwrap();
    let (code, reason, _) = api_error(c.client.request::<Value>(raw("text/plain", "{}")).await);
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
    let (code, reason, _) = api_error(
        c.client
            .request::<Value>(raw("application/merge-patch+json", "{not json"))
            .await,
    );
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    cleanup(&c, &ns).await;
}

/// A new namespace gets the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap
/// from the cluster's controllers (on a real cluster within moments).
#[tokio::test]
async fn new_namespaces_get_their_default_service_account_and_root_ca() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), &ns);
    let there = eventually(Duration::from_secs(30), || async {
        cms.get_opt("kube-root-ca.crt").await.is_ok_and(|o| o.is_some())
            && sas.get_opt("default").await.is_ok_and(|o| o.is_some())
    })
    .await;
    assert!(
        there,
        "namespace {ns} has no kube-root-ca.crt or default ServiceAccount"
    );
    let ca = cms.get("kube-root-ca.crt").await.unwrap();
    assert!(ca.data.unwrap_or_default().contains_key("ca.crt"));
    cleanup(&c, &ns).await;
}

/// Immutable fields: a Deployment's selector cannot change in place (422, "field is
/// immutable", dry-run included); its image can.
#[tokio::test]
async fn a_deployment_selector_is_immutable() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), &ns);
    let first = deployment("sel", Some(1), "nginx:1");
    api.patch("sel", &apply("test"), &Patch::Apply(&first))
        .await
        .expect("create");
    let mut image = first.clone();
    image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
    api.patch("sel", &apply("test"), &Patch::Apply(&image))
        .await
        .expect("an image change is fine");
    let mut selector = image.clone();
    selector["spec"]["selector"]["matchLabels"] = json!({"app": "other"});
    selector["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    for dry_run in [true, false] {
        let mut params = apply("test");
        params.dry_run = dry_run;
        let (code, reason, message) = api_error(api.patch("sel", &params, &Patch::Apply(&selector)).await);
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
        assert!(
            message.contains("spec.selector") && message.contains("field is immutable"),
            "{message}"
        );
    }
    cleanup(&c, &ns).await;
}

/// A chunked list (`limit` + `continue`) returns every object once, in pages, with the
/// count of what remains; a metadata-only list gives names and versions and no content;
/// and an update that leaves a Service's allocated clusterIP empty
/// keeps the address (kube-apiserver's patchAllocatedValues).
#[tokio::test]
async fn lists_page_with_limit_and_continue_and_updates_keep_allocated_addresses() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    for i in 0..7 {
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": format!("page-{i}"), "labels": {"paged": "yes"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().labels("paged=yes").limit(3);
    let mut pages = 0;
    loop {
        let page = maps.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        names.extend(page.items.iter().filter_map(|m| m.metadata.name.clone()));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => {
                assert!(page.metadata.remaining_item_count.is_some_and(|n| n > 0));
                params = params.continue_token(&token);
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    names.sort();
    assert_eq!(names, (0..7).map(|i| format!("page-{i}")).collect::<Vec<_>>());
    assert_eq!(pages, 3);
    // Metadata only (`as=PartialObjectMetadataList`): names and versions, no data.
    let meta = maps
        .list_metadata(&ListParams::default().labels("paged=yes"))
        .await
        .unwrap();
    assert_eq!(meta.items.len(), 7);
    assert!(
        meta.items
            .iter()
            .all(|m| m.metadata.resource_version.is_some() && m.metadata.name.is_some())
    );
    let raw: Value = c
        .client
        .request(
            http::Request::get(format!(
                "/api/v1/namespaces/{ns}/configmaps?labelSelector=paged%3Dyes"
            ))
            .header(
                "Accept",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            )
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(raw["kind"], "PartialObjectMetadataList", "{raw}");
    assert_eq!(raw["items"][0]["kind"], "PartialObjectMetadata", "{raw}");
    assert!(raw["items"][0].get("data").is_none(), "{raw}");

    let services: Api<Service> = Api::namespaced(c.client.clone(), &ns);
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap(),
        )
        .await
        .unwrap();
    let ip = svc.spec.as_ref().unwrap().cluster_ip.clone();
    assert!(ip.as_deref().is_some_and(|ip| !ip.is_empty()));
    let mut replacement: Service = serde_json::from_value(
        json!({"metadata": {"name": "web", "resourceVersion": svc.metadata.resource_version}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 81}], "clusterIP": ""}}),
    )
    .unwrap();
    replacement.metadata.namespace = Some(ns.clone());
    let replaced = services
        .replace("web", &PostParams::default(), &replacement)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().cluster_ip, ip);
    cleanup(&c, &ns).await;
}

/// Namespace lifecycle: deleting a namespace marks it `Terminating` and its content is
/// deleted; an object with a finalizer is only marked and holds the namespace (its
/// conditions say which finalizer) until the finalizer goes; meanwhile nothing new may be
/// created in it (403), no finalizer may be added to what is being deleted (422), and a
/// second delete is a 409.
#[tokio::test]
async fn a_terminating_namespace_refuses_new_content_until_its_finalizers_are_gone() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    let mut held = cm("held", json!({"a": "1"}));
    held.metadata.finalizers = Some(vec!["skiff.dev/test-hold".to_owned()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.create(&PostParams::default(), &cm("plain", json!({})))
        .await
        .unwrap();

    let answer = namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    let marked = answer.left().expect("the namespace, marked, not a Status");
    assert!(marked.metadata.deletion_timestamp.is_some());

    let terminating = eventually(Duration::from_secs(60), || async {
        let phase = namespaces
            .get(&ns)
            .await
            .ok()
            .and_then(|n| n.status)
            .and_then(|s| s.phase);
        let plain_gone = matches!(cms.get("plain").await, Err(kube::Error::Api(s)) if s.code == 404);
        phase.as_deref() == Some("Terminating") && plain_gone
    })
    .await;
    assert!(
        terminating,
        "namespace {ns} is Terminating and its plain content gone"
    );
    let kept = cms.get("held").await.expect("the object with a finalizer stays");
    assert!(
        kept.metadata.deletion_timestamp.is_some(),
        "and is marked for deletion"
    );

    let (code, reason, message) = api_error(cms.create(&PostParams::default(), &cm("late", json!({}))).await);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"), "{message}");
    assert!(message.contains("because it is being terminated"), "{message}");
    let (code, _, message) = api_error(
        cms.patch("late", &apply("test"), &Patch::Apply(&cm("late", json!({}))))
            .await,
    );
    assert_eq!(code, 403, "an apply that would create is refused too: {message}");

    let more = json!({"metadata": {"finalizers": ["skiff.dev/test-hold", "skiff.dev/another"]}});
    let (code, _, message) = api_error(
        cms.patch("held", &PatchParams::default(), &Patch::Merge(&more))
            .await,
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("no new finalizers"), "{message}");

    let (code, reason, message) = api_error(namespaces.delete(&ns, &DeleteParams::default()).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"), "{message}");

    let reported = eventually(Duration::from_secs(60), || async {
        namespaces
            .get(&ns)
            .await
            .ok()
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "NamespaceFinalizersRemaining"
                        && c.status == "True"
                        && c.message
                            .as_deref()
                            .is_some_and(|m| m.contains("skiff.dev/test-hold"))
                })
            })
    })
    .await;
    assert!(
        reported,
        "the namespace's conditions name the finalizer it waits for"
    );

    let release = json!({"metadata": {"finalizers": null}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("remove the finalizer");
    let gone = eventually(Duration::from_secs(120), || async {
        matches!(namespaces.get(&ns).await, Err(kube::Error::Api(s)) if s.code == 404)
    })
    .await;
    assert!(gone, "namespace {ns} goes once its last finalizer is removed");
}

/// Unknown fields of built-in kinds: server-side apply cannot build its typed patch (a 500
/// naming the field, whatever fieldValidation says); other writes drop them (the default)
/// or are refused under `fieldValidation=Strict` (400).
#[tokio::test]
async fn unknown_fields_of_built_in_kinds_fail_an_apply_and_are_dropped_or_refused_otherwise() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &ns);
    let mut typo = deployment("typo", Some(1), "nginx:1");
    typo["spec"]["replica"] = json!(2);
    let (code, _, message) = api_error(
        deployments
            .patch("typo", &apply("test"), &Patch::Apply(&typo))
            .await,
    );
    assert_eq!(code, 500, "{message}");
    assert!(message.contains("field not declared in schema"), "{message}");
    assert!(message.contains("replica"), "names the field: {message}");
    assert!(
        deployments.get_opt("typo").await.unwrap().is_none(),
        "nothing created"
    );

    let ar = ApiResource::erase::<ConfigMap>(&());
    let cms: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &ns, &ar);
    let body: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extra"}, "data": {"a": "1"}, "spec": {"nope": true}}))
    .unwrap();
    let created = cms
        .create(&PostParams::default(), &body)
        .await
        .expect("an unknown field is dropped by default");
    assert!(created.data.get("spec").is_none(), "{:?}", created.data);
    assert_eq!(created.data["data"]["a"], "1");

    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::default()
    };
    let (code, reason, message) = api_error(
        cms.patch("extra", &strict, &Patch::Merge(json!({"spec": {"nope": true}})))
            .await,
    );
    assert_eq!((code, reason.as_str()), (400, "BadRequest"), "{message}");
    assert!(message.contains("unknown field \"spec\""), "{message}");
    cleanup(&c, &ns).await;
}

/// Custom resources follow their CRD's structural schema: unknown fields are pruned (and
/// fail an apply), defaults are filled in, and types, enums, bounds and required fields
/// are validated (422 naming the field).
#[tokio::test]
async fn custom_resources_are_pruned_defaulted_and_validated_by_the_crd_schema() {
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let group = format!("{}.skiff.test", unique_name("schema"));
    let crd_name = format!("gadgets.{group}");
    let crds: Api<CustomResourceDefinition> = Api::all(c.client.clone());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}}]},
    });
    crds.patch(&crd_name, &apply("skiff"), &Patch::Apply(crd))
        .await
        .expect("apply CRD");
    assert!(eventually(WAIT, || established(&crds, &crd_name)).await);
    let gvk = GroupVersionKind::gvk(&group, "v1", "Gadget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "gadgets");
    let gadgets: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), &ns, &ar);
    let gadget = |spec: Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": format!("{group}/v1"), "kind": "Gadget",
            "metadata": {"name": "g1"}, "spec": spec}))
        .unwrap()
    };
    // The CRD's resource may take a moment to be served after Established.
    let served = eventually(WAIT, || async {
        gadgets.list(&ListParams::default()).await.is_ok()
    })
    .await;
    assert!(served, "the new resource is served");

    let created = gadgets
        .create(
            &PostParams::default(),
            &gadget(json!({"size": 3, "sizee": 4, "extra": {"free": {"form": 1}}})),
        )
        .await
        .expect("create with an unknown field");
    assert!(
        created.data["spec"].get("sizee").is_none(),
        "pruned: {:?}",
        created.data
    );
    assert_eq!(created.data["spec"]["color"], "red", "defaulted");
    assert_eq!(created.data["spec"]["extra"]["free"]["form"], 1, "preserved");

    let (code, _, message) = api_error(
        gadgets
            .patch(
                "g1",
                &apply("test"),
                &Patch::Apply(gadget(json!({"size": 3, "sizee": 4}))),
            )
            .await,
    );
    assert_eq!(code, 500, "{message}");
    assert!(message.contains("field not declared in schema"), "{message}");

    for (spec, field, words) in [
        (
            json!({"size": 3, "color": "pink"}),
            "spec.color",
            "Unsupported value",
        ),
        (json!({"size": 11}), "spec.size", "less than or equal to 10"),
        (json!({"size": "three"}), "spec.size", "must be of type integer"),
        (json!({"color": "red"}), "spec.size", "Required value"),
    ] {
        let mut refused = gadget(spec.clone());
        refused.metadata.name = Some("g2".to_owned());
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let (code, reason, message) = api_error(gadgets.create(&dry_run, &refused).await);
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{spec}: {message}");
        assert!(
            message.contains(field) && message.contains(words),
            "{spec}: {message}"
        );
    }
    let _ = crds.delete(&crd_name, &DeleteParams::default()).await;
    cleanup(&c, &ns).await;
}

/// A watch from a list's resourceVersion sends what changes after it: a modification and a
/// deletion of the object watched by name.
#[tokio::test]
async fn a_watch_from_a_list_sends_the_changes_that_follow() {
    use futures_util::StreamExt as _;
    use kube::api::{WatchEvent, WatchParams};
    let c = TestCluster::start().await;
    let ns = namespace(&c).await;
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    api.create(&PostParams::default(), &cm("watched", json!({"mode": "off"})))
        .await
        .unwrap();
    let list = api
        .list(&ListParams::default().fields("metadata.name=watched"))
        .await
        .unwrap();
    let from = list.metadata.resource_version.unwrap();
    let params = WatchParams::default().fields("metadata.name=watched").timeout(60);
    let mut events = api.watch(&params, &from).await.unwrap().boxed();
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"mode": "on"}})),
    )
    .await
    .unwrap();
    api.delete("watched", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    let followed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.next().await {
            match event.unwrap() {
                WatchEvent::Modified(o) => {
                    seen.push(format!("MODIFIED {:?}", o.data.unwrap_or_default().get("mode")))
                }
                WatchEvent::Deleted(_) => {
                    seen.push("DELETED".to_owned());
                    return;
                }
                WatchEvent::Added(_) => seen.push("ADDED".to_owned()),
                WatchEvent::Bookmark(_) | WatchEvent::Error(_) => {}
            }
        }
    })
    .await;
    assert!(followed.is_ok(), "no deletion seen within a minute: {seen:?}");
    assert!(
        !seen.contains(&"ADDED".to_owned()),
        "nothing from before the list: {seen:?}"
    );
    assert!(
        seen.iter().any(|e| e.starts_with("MODIFIED")),
        "the change is seen: {seen:?}"
    );
    cleanup(&c, &ns).await;
}
