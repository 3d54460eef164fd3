//! Drift detection, self-heal and health with the kube target against the Kubernetes API
//! test server (or a real cluster): hand edits are drift with their paths, server defaults
//! and other managers' fields are not, deleted objects come back, health follows status.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use skiff_tests::agent::{agent, write_config};
use skiff_tests::cluster::TestCluster;
use skiff_tests::{examples_dir, run_bin};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    /// The namespace of the example apps, and the channel (unique per test).
    ns: String,
    channel: String,
    _tmp: tempfile::TempDir,
    config: PathBuf,
}

fn setup(c: &TestCluster) -> Setup {
    setup_with(c, skiff_tests::example_apps_in)
}

/// An agent (kube target) that has imported generation 1 of a bundle whose folder
/// `write_apps(folder, namespace)` fills, in a namespace and channel of its own.
fn setup_with(c: &TestCluster, write_apps: impl FnOnce(&Path, &str)) -> Setup {
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
    write_apps(&apps, &ns);
    let (b, e) = skiff_tests::build_bundle(
        &apps,
        &tmp.path().join("keys/signing.pem"),
        &tmp.path().join("out"),
        &channel,
        1,
    );
    agent(&["import", "--config", s(&config), s(&b), s(&e)]).success();
    Setup {
        ns,
        channel,
        _tmp: tmp,
        config,
    }
}

fn check(st: &Setup, heal: &str) -> Value {
    let run = agent(&["check", "--config", s(&st.config), heal, "--output", "json"]).success();
    serde_json::from_str(&run.stdout).unwrap()
}

#[tokio::test]
async fn hand_edits_are_drift_defaults_and_other_managers_are_not_and_self_heal_corrects() {
    let c = TestCluster::start().await;
    let st = setup(&c);
    // Server-defaulted fields (strategy, imagePullPolicy, …) are no drift.
    let first = check(&st, "--no-heal");
    assert_eq!(first[&st.channel]["drift"], json!([]), "{first}");

    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &st.ns);
    // Another manager sets a field skiff never set: not drift.
    let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "annotations": {"team": "ops"}}, "spec": {"minReadySeconds": 5}});
    deployments
        .patch("web", &PatchParams::apply("ops-tool"), &Patch::Apply(&other))
        .await
        .unwrap();
    assert_eq!(check(&st, "--no-heal")[&st.channel]["drift"], json!([]));

    // A hand edit of a field skiff set: drift, with path and both values; only reported.
    let edit = json!({"spec": {"replicas": 5}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let found = check(&st, "--no-heal");
    let drift = &found[&st.channel]["drift"];
    assert_eq!(drift.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(drift[0]["object"]["name"], "web");
    assert_eq!(drift[0]["kind"], "modified");
    assert_eq!(drift[0]["corrected"], false);
    assert_eq!(
        drift[0]["paths"],
        json!([{"path": ".spec.replicas", "desired": 2, "live": 5}])
    );
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(5),
        "not healed"
    );

    // Self-heal puts it back.
    let healed = check(&st, "--heal");
    assert_eq!(healed[&st.channel]["drift"][0]["corrected"], true, "{healed}");
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
    assert_eq!(check(&st, "--no-heal")[&st.channel]["drift"], json!([]));

    // A deleted object is drift (missing) and comes back.
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &st.ns);
    cms.delete("web-config", &DeleteParams::default()).await.unwrap();
    let missing = check(&st, "--heal");
    assert_eq!(missing[&st.channel]["drift"][0]["kind"], "missing", "{missing}");
    assert!(cms.get_opt("web-config").await.unwrap().is_some(), "recreated");
}

#[tokio::test]
async fn health_follows_the_deployment_status_like_a_controller_sets_it_needs_status_writes() {
    let c = TestCluster::start().await;
    if c.test_server_only(
        "health_follows_the_deployment_status_like_a_controller_sets_it_needs_status_writes",
        "to write Deployment status itself (a real cluster's controller owns it)",
    )
    .is_none()
    {
        return;
    }
    let st = setup(&c);
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &st.ns);
    let health = |v: &Value| {
        v[&st.channel]["health"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        health(&check(&st, "--no-heal")),
        "Progressing",
        "no rollout observed yet"
    );

    let generation = deployments.get("web").await.unwrap().metadata.generation.unwrap();
    let rolled_out = json!({"status": {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&rolled_out))
        .await
        .unwrap();
    assert_eq!(health(&check(&st, "--no-heal")), "Healthy");

    let stuck = json!({"status": {"readyReplicas": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet web has timed out progressing"}]}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&stuck))
        .await
        .unwrap();
    let degraded = check(&st, "--no-heal");
    assert_eq!(health(&degraded), "Degraded");
    assert!(
        degraded[&st.channel]["health"]["reason"]
            .as_str()
            .unwrap()
            .contains("ProgressDeadlineExceeded"),
        "{degraded}"
    );
    let status = agent(&["status", "--config", s(&st.config)]).success();
    assert!(status.stdout.contains("Degraded"), "{}", status.stdout);
}

/// Hub and agent as real processes, the API test server as the cluster: a commit is
/// applied, a hand edit is corrected (self-heal on) or only reported (off), health follows
/// status, and `skiff-hub status --output json` shows all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_drift_and_health_visible_in_hub_status_needs_status_writes() {
    use std::time::Duration;

    use skiff_tests::GitRepo;
    use skiff_tests::agent::AgentProcess;
    use skiff_tests::cluster::eventually;
    use skiff_tests::hub::HubProcess;

    let c = TestCluster::start().await;
    if c.test_server_only(
        "end_to_end_drift_and_health_visible_in_hub_status_needs_status_writes",
        "to write Deployment status itself (a real cluster's controller owns it)",
    )
    .is_none()
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    repo.copy_dir(&examples_dir().join("apps"), "apps");
    repo.commit_all("fleet");
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"{}\", poll: 1s}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: apps, namespace: demo, targets: {{clusters: [edge-1]}}}}\nmetrics: {{per_cluster: true}}\n",
            repo.path().display()
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    std::fs::write(tmp.path().join("token"), &token).unwrap();
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &hub.public_key(),
        "kube",
        &format!(
            "hub: {}\ntoken_file: {}\nkubeconfig: {}\ndrift_interval: 1s\n",
            hub.url(),
            tmp.path().join("token").display(),
            c.kubeconfig().display()
        ),
    );
    let agent_proc = AgentProcess::start(&config);
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "demo");
    let applied = eventually(Duration::from_secs(30), || async {
        deployments.get_opt("web").await.is_ok_and(|d| d.is_some())
    })
    .await;
    assert!(applied, "{}", agent_proc.log());

    let status = || -> Value {
        serde_json::from_str(&hub.admin(&["status", "--output", "json"]).success().stdout).unwrap()
    };
    let channel = |v: &Value| v["clusters"][0]["channels"][0].clone();

    // Hand edit: corrected by self-heal, and the hub hears of it.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    let healed = eventually(Duration::from_secs(30), || async {
        deployments
            .get("web")
            .await
            .is_ok_and(|d| d.spec.unwrap().replicas == Some(2))
    })
    .await;
    assert!(healed, "{}", agent_proc.log());
    let heard = eventually(Duration::from_secs(30), || async {
        channel(&status())["corrected"] == 1
    })
    .await;
    assert!(heard, "{}", status());
    let reported = channel(&status())["drift"][0].clone();
    assert_eq!(reported["object"]["name"], "web", "{reported}");
    assert_eq!(
        reported["paths"],
        json!([{"path": ".spec.replicas", "desired": 2, "live": 7}])
    );
    assert_eq!(reported["corrected"], true);

    // Health: the test sets the rollout status like the controller would.
    let generation = deployments.get("web").await.unwrap().metadata.generation.unwrap();
    let done = json!({"status": {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&done))
        .await
        .unwrap();
    let healthy = eventually(Duration::from_secs(30), || async {
        channel(&status())["health"] == "Healthy"
    })
    .await;
    assert!(healthy, "{}", status());
    let metrics = std::process::Command::new("curl")
        .arg("-sf")
        .arg(format!("{}/metrics", hub.url()))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("skiff_hub_cluster_unhealthy_channels{cluster=\"edge-1\"} 0"),
        "{metrics}"
    );

    // A failed rollout: Degraded, on the hub too.
    let stuck = json!({"status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&stuck))
        .await
        .unwrap();
    let degraded = eventually(Duration::from_secs(30), || async {
        channel(&status())["health"] == "Degraded"
    })
    .await;
    assert!(degraded, "{}", status());

    // With the hub gone, drift is still found and healed; its report waits in the outbox.
    let mut hub = hub;
    hub.kill();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    let healed_offline = eventually(Duration::from_secs(30), || async {
        deployments
            .get("web")
            .await
            .is_ok_and(|d| d.spec.unwrap().replicas == Some(2))
    })
    .await;
    assert!(healed_offline, "{}", agent_proc.log());
    let data = tmp.path().join("agent/data");
    let waiting = eventually(Duration::from_secs(30), || async {
        let r = agent(&["status", "--data-dir", s(&data), "--output", "json"]);
        serde_json::from_str::<Value>(&r.stdout).is_ok_and(|v| v["outbox"].as_u64().unwrap_or(0) >= 1)
    })
    .await;
    assert!(waiting, "drift reports wait for the hub");
}

/// Real-world manifests written by others, each set applied through the agent, then ten
/// drift checks in a row: zero drift. What cannot apply as is (kinds without CRDs,
/// namespaces nobody creates, objects defined twice) is an apply error naming the object
/// and why; the rest converges and is not drift.
#[tokio::test]
async fn corpus_sets_show_no_drift_across_ten_checks() {
    let Some(corpus) = skiff_tests::corpus_dir("corpus_sets_show_no_drift_across_ten_checks") else {
        return;
    };
    for set in [
        "podinfo",
        "microservices-demo",
        "gke-samples",
        "kubernetes-examples",
        "gateway-api",
    ] {
        let c = TestCluster::start().await;
        if c.test_server_only(
            "corpus_sets_show_no_drift_across_ten_checks",
            "an empty cluster (a real one has its own CRDs and namespaces, and the expected errors differ)",
        )
        .is_none()
        {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let files: Vec<String> = skiff_tests::files_with_ext(&corpus.join(set), &[".yaml", ".yml", ".json"])
            .into_iter()
            .filter(|f| {
                !f.starts_with("kustomize/")
                    && !f.ends_with("kustomization.yaml")
                    && !f.ends_with("kustomization.yml")
            })
            .collect();
        let copy = |skip: &[&str]| {
            let dir = tmp.path().join("set");
            let _ = std::fs::remove_dir_all(&dir);
            for f in files.iter().filter(|f| !skip.iter().any(|s| f.ends_with(s))) {
                let to = dir.join(f);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(corpus.join(set).join(f), &to).unwrap();
            }
            dir
        };
        run_bin("skiff-hub", &["keygen", "--out", s(&tmp.path().join("keys"))]).success();
        let key = tmp.path().join("keys/signing.pem");
        let build = |dir: &Path| {
            run_bin(
                "skiff-hub",
                &[
                    "bundle",
                    "build",
                    "--dir",
                    s(dir),
                    "--channel",
                    "corpus",
                    "--generation",
                    "1",
                    "--key",
                    s(&key),
                    "--out",
                    s(&tmp.path().join("out")),
                ],
            )
        };
        let mut dir = copy(&[]);
        let mut built = build(&dir);
        if set == "gke-samples" {
            // generateName objects cannot be applied declaratively: refused at build, by file and line.
            assert_eq!(built.code, Some(1));
            assert!(
                built
                    .stderr
                    .contains("kueue-intro/job-team-a.yaml: document 1 (line 16): metadata.generateName"),
                "{}",
                built.stderr
            );
            dir = copy(&["job-team-a.yaml", "job-team-b.yaml"]);
            built = build(&dir);
        }
        let digest = built.success().stdout.trim().to_owned();
        let config = write_config(
            &tmp.path().join("agent"),
            "edge-1",
            &tmp.path().join("keys/signing.pub.pem"),
            "kube",
            &format!(
                "kubeconfig: {}\nchannels: {{corpus: {{}}}}\n",
                c.kubeconfig().display()
            ),
        );
        let out = tmp.path().join("out");
        let import = agent(&[
            "import",
            "--config",
            s(&config),
            s(&out.join(format!("{digest}.tar.gz"))),
            s(&out.join(format!("{digest}.dsse.json"))),
        ]);
        if import.code != Some(0) {
            // Every failure names an object and a reason.
            assert!(
                import.stderr.contains("is not served by this cluster")
                    || import.stderr.contains("not found")
                    || import.stderr.contains("defined "),
                "{set}: {}",
                import.stderr
            );
        }
        let status: Value = serde_json::from_str(
            &agent(&["status", "--config", s(&config), "--output", "json"])
                .success()
                .stdout,
        )
        .unwrap();
        let objects = status["channels"]["corpus"]["applied"]["objects"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            objects > 5,
            "{set}: the rest of the set applied ({objects} objects)"
        );
        for round in 0..10 {
            let checked = check(
                &Setup {
                    ns: String::new(),
                    channel: "corpus".to_owned(),
                    _tmp: tempfile::tempdir().unwrap(),
                    config: config.clone(),
                },
                "--no-heal",
            );
            assert_eq!(
                checked["corpus"]["drift"],
                json!([]),
                "{set}, check {round}: {checked}"
            );
        }
    }
}

/// Healing follows the apply's order: a deleted Namespace comes back before what lives in
/// it, so one check restores all of it (with no errors for objects in a namespace that did
/// not exist yet).
#[tokio::test]
async fn a_deleted_namespace_is_healed_with_its_objects_in_one_check() {
    use k8s_openapi::api::core::v1::Namespace;
    let c = TestCluster::start().await;
    let st = setup(&c);
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    namespaces.delete(&st.ns, &Default::default()).await.unwrap();
    // A real cluster finalizes a namespace asynchronously: wait until it is gone.
    let gone = skiff_tests::cluster::eventually(std::time::Duration::from_secs(120), || async {
        namespaces.get_opt(&st.ns).await.is_ok_and(|n| n.is_none())
    })
    .await;
    assert!(gone, "namespace {} was not deleted", st.ns);
    let healed = check(&st, "--heal");
    assert!(
        healed[&st.channel]["errors"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{healed}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &st.ns);
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), &st.ns);
    assert!(cms.get_opt("web-config").await.unwrap().is_some(), "{healed}");
    assert!(deployments.get_opt("web").await.unwrap().is_some(), "{healed}");
}

/// Discovery asks each group-version once, however many of its kinds a bundle holds.
#[tokio::test]
async fn discovery_asks_each_group_version_once() {
    let c = TestCluster::start().await;
    let Some(server) = c.test_server_only("discovery_asks_each_group_version_once", "the request log") else {
        return;
    };
    let _st = setup(&c);
    let requests = server.requests();
    for gv in ["GET /api/v1", "GET /apis/apps/v1"] {
        let n = requests
            .iter()
            .filter(|r| r.as_str() == gv || r.starts_with(&format!("{gv}?")))
            .count();
        assert!(n <= 1, "{gv} asked {n} times:\n{}", requests.join("\n"));
    }
}

/// An object whose dry-run the server refuses (a failing admission webhook answers 500) is
/// unknown with the server's reason: never counted as in sync.
#[tokio::test]
async fn objects_that_cannot_be_compared_are_unknown_not_in_sync_needs_fault_injection() {
    let c = TestCluster::start().await;
    let Some(server) = c.test_server_only(
        "objects_that_cannot_be_compared_are_unknown_not_in_sync_needs_fault_injection",
        "fault injection (a failing webhook)",
    ) else {
        return;
    };
    let st = setup(&c);
    // Failing every try the applier makes (4) of the dry-run.
    server.fail_next_apply(4, 500, "/configmaps/web-config", "skiff");
    let found = check(&st, "--no-heal");
    let unknown = found[&st.channel]["unknown"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(unknown.len(), 1, "{found}");
    assert_eq!(unknown[0]["object"]["name"], "web-config");
    assert!(unknown[0]["message"].as_str().unwrap().contains("500"), "{found}");
    assert_eq!(found[&st.channel]["drift"], json!([]), "{found}");
    assert_eq!(found[&st.channel]["health"]["state"], "Unknown", "{found}");
    // The next check reaches the server again: in sync.
    let again = check(&st, "--no-heal");
    assert_eq!(again[&st.channel]["unknown"], json!([]), "{again}");
    assert_ne!(again[&st.channel]["health"]["state"], "Unknown", "{again}");
}

/// `kubectl edit` of Service `web`: its first port 80 → 8080 (the port is the key of the
/// ports list, so another manager now owns an item skiff's manifest does not have).
async fn edit_port_by_hand(
    services: &Api<k8s_openapi::api::core::v1::Service>,
    mut svc: k8s_openapi::api::core::v1::Service,
) {
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8080;
    services
        .replace(
            "web",
            &kube::api::PostParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &svc,
        )
        .await
        .unwrap();
}

/// A hand edit that changes a Service port's key (`kubectl edit`: port 80 → 8080) leaves an
/// object skiff's manifest cannot be applied over (two ports named `http`): it is drift,
/// `unreconcilable`, with the server's reason, not "in sync" and not an error.
#[tokio::test]
async fn a_port_edited_by_hand_is_unreconcilable_drift_with_the_servers_reason() {
    use k8s_openapi::api::core::v1::Service;
    let c = TestCluster::start().await;
    let st = setup(&c);
    let services: Api<Service> = Api::namespaced(c.client.clone(), &st.ns);
    edit_port_by_hand(&services, services.get("web").await.unwrap()).await;
    let found = check(&st, "--heal");
    let drift = found[&st.channel]["drift"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let web = drift
        .iter()
        .find(|d| d["object"]["kind"] == "Service")
        .unwrap_or_else(|| panic!("{found}"));
    assert_eq!(web["kind"], "unreconcilable", "{found}");
    assert_eq!(web["corrected"], false);
    let reason = web["reason"].as_str().unwrap();
    assert!(
        reason.contains("422") && reason.contains("Duplicate value"),
        "{reason}"
    );
    assert_eq!(found[&st.channel]["unknown"], json!([]), "{found}");
}

/// The same hand edit on a Service opted in with `skiff.dev/heal: replace`: self-heal
/// replaces it with its manifest (the foreign port goes, the allocated clusterIP stays) and
/// the next check finds it in sync.
#[tokio::test]
async fn unreconcilable_drift_is_healed_by_replace_when_the_object_opts_in() {
    use k8s_openapi::api::core::v1::Service;
    let c = TestCluster::start().await;
    let st = setup_with(&c, |apps, ns| {
        std::fs::create_dir_all(apps).unwrap();
        std::fs::write(
            apps.join("svc.yaml"),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\n  annotations: {{skiff.dev/heal: replace}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
            ),
        )
        .unwrap();
    });
    let services: Api<Service> = Api::namespaced(c.client.clone(), &st.ns);
    let before = services.get("web").await.unwrap();
    let cluster_ip = before.spec.as_ref().unwrap().cluster_ip.clone();
    edit_port_by_hand(&services, before).await;
    let found = check(&st, "--heal");
    let drift = found[&st.channel]["drift"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(drift.len(), 1, "{found}");
    assert_eq!(drift[0]["kind"], "unreconcilable", "{found}");
    assert_eq!(drift[0]["corrected"], true, "{found}");
    let healed = services.get("web").await.unwrap();
    let spec = healed.spec.unwrap();
    let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, [80]);
    assert_eq!(spec.cluster_ip, cluster_ip, "the allocated address stays");
    let again = check(&st, "--no-heal");
    assert_eq!(again[&st.channel]["drift"], json!([]), "{again}");
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(c.client.clone())
        .delete(&st.ns, &DeleteParams::default())
        .await;
}
