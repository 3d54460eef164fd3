//! The agent with the `kube` target against the Kubernetes API test server (or a real
//! cluster with SKIFF_TEST_KUBECONFIG): apply with a CRD and its resource in one bundle,
//! no-op re-applies, prune, failures, retries, and pruning by a fresh agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::Api;
use skiff_tests::agent::{agent, write_config};
use skiff_tests::cluster::TestCluster;
use skiff_tests::run_bin;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    /// The namespace of the example apps, and the channel (unique per test).
    ns: String,
    channel: String,
    tmp: tempfile::TempDir,
    key: PathBuf,
    config: PathBuf,
    apps: PathBuf,
}

fn setup(c: &TestCluster) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let ns = skiff_tests::cluster::unique_name("demo");
    let channel = skiff_tests::cluster::unique_name("demo");
    run_bin("skiff-hub", &["keygen", "--out", s(&tmp.path().join("keys"))]).success();
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &tmp.path().join("keys/signing.pub.pem"),
        "kube",
        &format!(
            "kubeconfig: {}\nchannels: {{{channel}: {{}}}}\n",
            c.kubeconfig().display()
        ),
    );
    let apps = tmp.path().join("apps");
    skiff_tests::example_apps_in(&apps, &ns);
    Setup {
        ns,
        channel,
        key: tmp.path().join("keys/signing.pem"),
        config,
        apps,
        tmp,
    }
}

fn import(st: &Setup, generation: u64) -> skiff_tests::Run {
    let (b, e) = skiff_tests::build_bundle(
        &st.apps,
        &st.key,
        &st.tmp.path().join("out"),
        &st.channel,
        generation,
    );
    agent(&["import", "--config", s(&st.config), s(&b), s(&e)])
}

/// Puts a bundle pair in an import folder (a USB stick) and points the agent's config at it.
fn on_import_medium(st: &Setup, bundle: &Path, envelope: &Path) {
    let usb = st.tmp.path().join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    for file in [bundle, envelope] {
        std::fs::copy(file, usb.join(file.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(&st.config).unwrap() + &format!("import_dir: {}\n", usb.display());
    std::fs::write(&st.config, config).unwrap();
}

#[tokio::test]
async fn applies_crd_and_resource_together_noop_reapply_and_prune() {
    let c = TestCluster::start().await;
    let st = setup(&c);
    let run = import(&st, 1);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);

    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &st.ns);
    let web = deployments.get("web").await.expect("deployment applied");
    assert_eq!(web.metadata.labels.unwrap()["skiff.dev/channel"], st.channel);
    let managers: Vec<String> = web
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"skiff".to_owned()), "{managers:?}");
    let widgets: Api<kube::api::DynamicObject> = Api::namespaced_with(
        c.client.clone(),
        &st.ns,
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("example.skiff.dev", "v1", "Widget"),
            "widgets",
        ),
    );
    assert_eq!(
        widgets.get("sample").await.expect("custom resource applied").data["spec"]["size"],
        3
    );
    let rv = web.metadata.resource_version.clone();

    // The same content as a new generation: applied again, nothing changes.
    std::fs::write(st.apps.join("README.txt"), "not a manifest").unwrap();
    import(&st, 2);
    let same = deployments.get("web").await.unwrap();
    assert_eq!(
        same.metadata.resource_version, rv,
        "a no-op re-apply changes no resourceVersion"
    );

    // Remove the Service from the bundle: pruned.
    std::fs::remove_file(st.apps.join("web/service.yaml")).unwrap();
    import(&st, 3).success();
    let services: Api<Service> = Api::namespaced(c.client.clone(), &st.ns);
    let gone = skiff_tests::cluster::eventually(Duration::from_secs(30), || async {
        services.get_opt("web").await.is_ok_and(|s| s.is_none())
    })
    .await;
    assert!(gone, "pruned");
    let inventory: Api<ConfigMap> = Api::namespaced(c.client.clone(), "skiff-system");
    let inv = inventory
        .get(&format!("skiff-inventory-{}", st.channel))
        .await
        .expect("inventory ConfigMap");
    let objects = &inv.data.unwrap()["objects"];
    assert!(
        objects.contains("\"web-config\"") && !objects.contains("\"Service\""),
        "{objects}"
    );
}

#[tokio::test]
async fn a_rejected_object_fails_the_bundle_with_the_server_message_and_nothing_is_pruned() {
    let c = TestCluster::start().await;
    let st = setup(&c);
    import(&st, 1).success();
    // Drop the Service and break the ConfigMap's label: the apply fails, so no prune.
    std::fs::remove_file(st.apps.join("web/service.yaml")).unwrap();
    let cm = std::fs::read_to_string(st.apps.join("web/configmap.yaml")).unwrap();
    std::fs::write(
        st.apps.join("web/configmap.yaml"),
        cm.replace("app: web", "app: \"not valid!\""),
    )
    .unwrap();
    let run = import(&st, 2);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!("ConfigMap {}/web-config", st.ns)) && run.stderr.contains("422"),
        "{}",
        run.stderr
    );
    let services: Api<Service> = Api::namespaced(c.client.clone(), &st.ns);
    assert!(
        services.get_opt("web").await.unwrap().is_some(),
        "no prune after a partial failure"
    );
}

#[tokio::test]
async fn a_fresh_agent_prunes_from_the_inventory_configmap() {
    let c = TestCluster::start().await;
    let st = setup(&c);
    import(&st, 1).success();
    // A reinstalled agent: empty store, same cluster.
    std::fs::remove_dir_all(st.tmp.path().join("agent/data")).unwrap();
    std::fs::remove_file(st.apps.join("web/service.yaml")).unwrap();
    import(&st, 2).success();
    let services: Api<Service> = Api::namespaced(c.client.clone(), &st.ns);
    assert!(
        services.get_opt("web").await.unwrap().is_none(),
        "pruned using the in-cluster inventory"
    );
}

#[tokio::test]
async fn server_errors_are_retried_needs_fault_injection() {
    let c = TestCluster::start().await;
    let Some(server) = c.test_server_only(
        "server_errors_are_retried_needs_fault_injection",
        "fault injection",
    ) else {
        return;
    };
    let st = setup(&c);
    // 503 and 429 are tried again at the server's pace; the agent retries whole applies too.
    server.fail_next_apply(3, 503, "/deployments/web", "skiff");
    server.fail_next_apply(2, 429, "/services/web", "skiff");
    let run = import(&st, 1);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &st.ns);
    assert!(deployments.get_opt("web").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_agent_retries_a_500_until_the_bundle_applies_needs_fault_injection() {
    let c = TestCluster::start().await;
    let Some(server) = c.test_server_only(
        "the_running_agent_retries_a_500_until_the_bundle_applies_needs_fault_injection",
        "fault injection",
    ) else {
        return;
    };
    let st = setup(&c);
    let (b, e) = skiff_tests::build_bundle(&st.apps, &st.key, &st.tmp.path().join("out"), &st.channel, 1);
    // kube's client does not retry 500s. The applier tries a throttled request 4 times at
    // the server's pace; past that, the agent's retry loop must apply the bundle again.
    server.fail_next_apply(6, 500, "/configmaps/web-config", "skiff");
    on_import_medium(&st, &b, &e);
    let proc = skiff_tests::agent::AgentProcess::start(&st.config);
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &st.ns);
    let applied = skiff_tests::cluster::eventually(Duration::from_secs(30), || async {
        cms.get_opt("web-config").await.is_ok_and(|o| o.is_some())
    })
    .await;
    assert!(applied, "{}", proc.log());
    assert!(
        proc.log().contains("500"),
        "the failure was seen and retried:\n{}",
        proc.log()
    );
}

#[tokio::test]
async fn crds_larger_than_the_annotation_limit_apply() {
    let Some(corpus) = skiff_tests::corpus_dir("crds_larger_than_the_annotation_limit_apply") else {
        return;
    };
    let c = TestCluster::start().await;
    let st = setup(&c);
    let crds = corpus.join("gateway-api/config/crd/standard");
    // httproutes is 429 KB of YAML: a client-side apply's last-applied annotation of it
    // comes close to the 256 KiB annotation limit; server-side apply keeps none.
    let biggest = std::fs::read_dir(&crds)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(
        biggest > 256 * 1024,
        "the corpus holds a CRD over 256 KiB of YAML ({biggest} bytes)"
    );
    let dir = st.tmp.path().join("crds");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&crds).unwrap() {
        let e = e.unwrap();
        // The ValidatingAdmissionPolicy in this folder guards CRD upgrades; CRDs only here.
        if e.file_name().to_string_lossy().contains("vap") {
            continue;
        }
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let (b, e) = skiff_tests::build_bundle(&dir, &st.key, &st.tmp.path().join("out"), &st.channel, 1);
    let run = agent(&["import", "--config", s(&st.config), s(&b), s(&e)]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let api: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(c.client.clone());
    let httproutes = api
        .get("httproutes.gateway.networking.k8s.io")
        .await
        .expect("CRD applied");
    let annotations = httproutes.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
}

/// A CRD is waited for (until the server serves its resources, as it does once the CRD is
/// Established, which takes a real cluster a moment) only when an object of the bundle uses
/// it, and the wait asks discovery, not for the whole CRD again and again.
#[tokio::test]
async fn only_crds_the_bundle_uses_are_waited_for() {
    let c = TestCluster::start().await;
    let Some(server) = c.test_server_only("only_crds_the_bundle_uses_are_waited_for", "the request log")
    else {
        return;
    };
    server.with_state(|s| s.set_crd_establish_delay(Duration::from_millis(700)));
    let st = setup(&c);
    std::fs::write(
        st.apps.join("unused-crd.yaml"),
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.unused.skiff.dev}\nspec:\n  group: unused.skiff.dev\n  scope: Namespaced\n  names: {plural: gadgets, singular: gadget, kind: Gadget}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
    )
    .unwrap();
    let run = import(&st, 1);
    assert_eq!(
        run.code,
        Some(0),
        "the widget applies once its CRD is served: {}",
        run.stderr
    );
    let requests = server.requests();
    let count = |prefix: &str| requests.iter().filter(|r| r.starts_with(prefix)).count();
    assert_eq!(
        count("GET /apis/unused.skiff.dev/"),
        0,
        "nothing waits for the unused CRD: {requests:?}"
    );
    assert!(
        count("GET /apis/example.skiff.dev/v1") >= 2,
        "the wait asked discovery until the widgets were served: {requests:?}"
    );
    assert!(
        count("GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/") <= 2,
        "CRDs are read for health only, not polled: {requests:?}"
    );
}

/// A new generation that changes an immutable field (a Deployment's selector) fails with a
/// pointer to the opt-in, and is deleted and re-created once the object carries it.
#[tokio::test]
async fn an_immutable_change_needs_the_recreate_opt_in() {
    let c = TestCluster::start().await;
    let st = setup(&c);
    import(&st, 1).success();
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &st.ns);
    let before = deployments.get("web").await.unwrap().metadata.uid;
    let path = st.apps.join("web/deployment.yaml");
    let changed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("app: web", "app: web-v2");
    std::fs::write(&path, &changed).unwrap();
    let refused = import(&st, 2);
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("field is immutable") && refused.stderr.contains("skiff.dev/recreate"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        deployments.get("web").await.unwrap().metadata.uid,
        before,
        "nothing recreated without the opt-in"
    );
    let opted_in = changed.replacen(
        "metadata:\n  name: web\n",
        "metadata:\n  name: web\n  annotations: {skiff.dev/recreate: \"true\"}\n",
        1,
    );
    assert_ne!(opted_in, changed);
    std::fs::write(&path, opted_in).unwrap();
    import(&st, 3).success();
    let after = deployments.get("web").await.unwrap();
    assert_ne!(after.metadata.uid, before, "deleted and re-created");
    assert_eq!(
        after.spec.unwrap().selector.match_labels.unwrap()["app"],
        "web-v2"
    );
}

/// A bundle for a namespace that is still being deleted (a finalizer holds it in
/// `Terminating`, as a down aggregated API or a stuck controller does): the server refuses
/// new content with 403 until it is gone, so the agent tries again, saying why, and applies
/// everything once the namespace has gone and can be created afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_for_a_terminating_namespace_applies_once_the_namespace_is_gone() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    let c = TestCluster::start().await;
    let st = setup(&c);
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &st.ns);
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": st.ns}})).unwrap(),
        )
        .await
        .unwrap();
    let hold: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hold", "finalizers": ["skiff.dev/test-hold"]}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &hold).await.unwrap();
    namespaces.delete(&st.ns, &DeleteParams::default()).await.unwrap();

    let (b, e) = skiff_tests::build_bundle(&st.apps, &st.key, &st.tmp.path().join("out"), &st.channel, 1);
    on_import_medium(&st, &b, &e);
    let proc = skiff_tests::agent::AgentProcess::start(&st.config);
    let refused = skiff_tests::cluster::eventually(Duration::from_secs(60), || async {
        proc.log().contains("being terminated")
    })
    .await;
    assert!(refused, "the agent says why it waits:\n{}", proc.log());
    assert!(
        cms.get_opt("web-config").await.unwrap().is_none(),
        "nothing new lands in a terminating namespace"
    );

    let release = serde_json::json!({"metadata": {"finalizers": null}});
    cms.patch("hold", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    let applied = skiff_tests::cluster::eventually(Duration::from_secs(120), || async {
        cms.get_opt("web-config").await.is_ok_and(|o| o.is_some())
    })
    .await;
    assert!(applied, "applied once the namespace had gone:\n{}", proc.log());
    let ns = namespaces.get(&st.ns).await.unwrap();
    assert!(
        ns.metadata.deletion_timestamp.is_none(),
        "a namespace created afresh"
    );
}

/// A field the kind's schema lacks (a typo) is not a server hiccup: the generation fails
/// once, with a message naming the object, its file and the field, and is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_fails_the_generation_once_naming_object_file_and_field() {
    let c = TestCluster::start().await;
    let st = setup(&c);
    let deployment = st.apps.join("web/deployment.yaml");
    let text = std::fs::read_to_string(&deployment).unwrap();
    assert!(text.contains("  replicas:"), "the example sets replicas");
    std::fs::write(&deployment, text.replacen("  replicas:", "  replica:", 1)).unwrap();

    let run = import(&st, 1);
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    for words in [
        "Deployment",
        "web",
        "deployment.yaml",
        "replica",
        "not in the kind's schema",
    ] {
        assert!(run.stderr.contains(words), "names {words:?}:\n{}", run.stderr);
    }

    // A running agent (a fresh store) does not try it again: not from the store on a
    // schedule, not from the file left on the medium (a transient failure is retried
    // within 1-2 s, and the folder is scanned every 2 s).
    std::fs::remove_dir_all(st.tmp.path().join("agent/data")).unwrap();
    let (b, e) = skiff_tests::build_bundle(&st.apps, &st.key, &st.tmp.path().join("out2"), &st.channel, 2);
    on_import_medium(&st, &b, &e);
    let proc = skiff_tests::agent::AgentProcess::start(&st.config);
    let failed = skiff_tests::cluster::eventually(Duration::from_secs(60), || async {
        proc.log().contains("not in the kind's schema")
    })
    .await;
    assert!(failed, "{}", proc.log());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = proc.log().matches("not in the kind's schema").count();
    assert_eq!(attempts, 1, "tried once:\n{}", proc.log());
}
