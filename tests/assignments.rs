//! Signed per-cluster assignments with real processes: a hub, agents (dir target), a Git
//! repository made with the `git` CLI, import folders, and a hostile hub with a mirror.
//! Every attack is refused with its own error and the last good state stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_tests::agent::{AgentProcess, wait_for, write_config};
use skiff_tests::hub::HubProcess;

const WAIT: Duration = Duration::from_secs(30);

fn cm(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: demo\ndata:\n  v: \"{value}\"\n"
    )
}

/// The `dir` target's file of a ConfigMap.
fn cm_file(out: &Path, channel: &str, ns: &str, name: &str) -> PathBuf {
    out.join(channel).join(ns).join(format!("configmap.{name}.yaml"))
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Exports what the hub would give `cluster` into `dir`.
fn export(hub: &HubProcess, cluster: &str, dir: &Path) {
    hub.admin(&["export", "--cluster", cluster, "--out", dir.to_str().unwrap()])
        .success();
}

/// Copies every file of `from` into `to`.
fn copy_files(from: &Path, to: &Path, keep: impl Fn(&str) -> bool) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if keep(&name) {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

fn wait_log(proc: &AgentProcess, needle: &str) {
    assert!(
        wait_for(WAIT, || proc.log().contains(needle)),
        "waiting for {needle:?} in the agent log:\n{}",
        proc.log()
    );
}

/// A cluster's assignment (the hub's signing key signs crafted ones below: what a stolen
/// or misused hub key could sign is what the agent's own checks must stop).
fn current_assignment(hub: &HubProcess, cluster: &str) -> skiff_proto::assignment::Assignment {
    let tmp = tempfile::tempdir().unwrap();
    export(hub, cluster, tmp.path());
    let env: skiff_proto::dsse::Envelope = serde_json::from_slice(
        &std::fs::read(tmp.path().join(format!("{cluster}.assignment.json"))).unwrap(),
    )
    .unwrap();
    serde_json::from_slice(&env.payload_bytes().unwrap()).unwrap()
}

#[test]
fn assignments_refuse_every_attack_with_its_own_error_and_keep_the_last_good_state() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("fleet"));
    repo.write("shops/web.yaml", cm("web", "1"));
    repo.write("depot/stock.yaml", cm("stock", "1"));
    repo.commit_all("fleet");
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"{}\", poll: 1s}}\nchannels:\n  - {{name: shops, repo: fleet, branch: main, path: shops, targets: {{labels: {{tier: shop}}}}}}\n  - {{name: depot, repo: fleet, branch: main, path: depot, targets: {{labels: {{tier: depot}}}}}}\n",
            repo.path().display()
        ),
    );
    let token = hub.add_cluster("shop-1", &["tier=shop"]);
    hub.add_cluster("shop-2", &["tier=shop"]);
    hub.add_cluster("depot-1", &["tier=depot"]);
    let out = tmp.path().join("out");
    let usb = tmp.path().join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    let config = write_config(
        &tmp.path().join("agent"),
        "shop-1",
        &hub.public_key(),
        &format!("dir:{}", out.display()),
        &format!(
            "hub: {}\ntoken: {token}\nimport_dir: {}\n",
            hub.url(),
            usb.display()
        ),
    );
    let web = cm_file(&out, "shops", "demo", "web");
    // The hub builds on its first fetch; until then there is nothing to apply.
    assert!(
        wait_for(WAIT, || hub.log().contains("Bundle built and signed")),
        "{}",
        hub.log()
    );
    let old = tmp.path().join("old");
    export(&hub, "shop-1", &old);
    let mut proc = AgentProcess::start(&config);
    assert!(wait_for(WAIT, || web.exists()), "{}", proc.log());
    let good = std::fs::read(&web).unwrap();

    // 1. Another cluster's assignment.
    let other = tmp.path().join("shop-2");
    export(&hub, "shop-2", &other);
    copy_files(&other, &usb, |n| n.ends_with(".assignment.json"));
    wait_log(&proc, "assignment is for cluster \"shop-2\", this is \"shop-1\"");

    // 2. An older sequence: a label change signs a newer one, which the agent takes from the
    // hub; the old export is then offered from the import folder.
    hub.admin(&["cluster", "label", "shop-1", "site=a"]).success();
    assert!(
        wait_for(WAIT, || proc.log().matches("Assignment accepted").count() >= 2),
        "{}",
        proc.log()
    );
    copy_files(&old, &usb, |n| n.ends_with(".assignment.json"));
    wait_log(&proc, "older than the accepted sequence");

    // 3. An expired one, signed by the trusted key with a sequence far ahead.
    let key = skiff_proto::keys::SigningKey::load(&hub.dir.join("keys/signing.pem")).unwrap();
    let mut expired = current_assignment(&hub, "shop-1");
    expired.sequence = u64::MAX / 2;
    expired.expires = Some(skiff_proto::statement::Timestamp::from_unix_seconds(1_000));
    std::fs::write(
        usb.join("crafted.assignment.json"),
        expired.sign(&[&key]).to_json(),
    )
    .unwrap();
    wait_log(&proc, "assignment expired at");

    // 4. A genuine bundle of a channel this cluster does not run, in the import folder.
    let depot = tmp.path().join("depot-1");
    export(&hub, "depot-1", &depot);
    copy_files(&depot, &usb, |n| !n.ends_with(".assignment.json"));
    wait_log(&proc, "channel \"depot\" is not assigned to this cluster");
    assert!(!out.join("depot").exists());

    // 5. A generation above the pin: shop-1 is held at 1, the channel moves to 2, and shop-2's
    // (unpinned) export of generation 2 is carried to shop-1.
    hub.admin(&[
        "cluster",
        "pin",
        "shop-1",
        "--channel",
        "shops",
        "--generation",
        "1",
    ])
    .success();
    repo.write("shops/web.yaml", cm("web", "2"));
    repo.commit_all("web 2");
    assert!(
        wait_for(WAIT, || hub.log().matches("Bundle built and signed").count() >= 3),
        "{}",
        hub.log()
    );
    let newer = tmp.path().join("shop-2-newer");
    export(&hub, "shop-2", &newer);
    copy_files(&newer, &usb, |n| !n.ends_with(".assignment.json"));
    wait_log(
        &proc,
        "generation 2 of channel \"shops\" is above this cluster's pin 1",
    );
    let status = hub.admin(&["status", "shop-1"]).success().stdout;
    assert!(
        status.contains("desired generation: 1") && status.contains("pinned at:          1"),
        "{status}"
    );

    // The last good state held through all of it.
    assert_eq!(std::fs::read(&web).unwrap(), good);
    let log = proc.log();
    for applied in log.lines().filter(|l| l.contains("Applied channel")) {
        assert!(
            applied.contains("generation=1"),
            "nothing newer applied: {applied}"
        );
    }
    // Unpinned, the hub offers generation 2 and it is applied.
    hub.admin(&["cluster", "pin", "shop-1", "--channel", "shops", "--clear"])
        .success();
    assert!(
        wait_for(WAIT, || read_json(&web).is_some_and(|v| v["data"]["v"] == "2")),
        "{}",
        proc.log()
    );
    proc.kill();
}

/// A hostile hub lists a channel the cluster's (genuine) assignment does not, and a mirror
/// serves its genuine bundle: the agent refuses it before fetching anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_or_mirror_cannot_slip_in_an_unassigned_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("fleet"));
    repo.write("shops/web.yaml", cm("web", "1"));
    repo.write("depot/stock.yaml", cm("stock", "1"));
    repo.commit_all("fleet");
    let hub_dir = tmp.path().join("hub");
    let repo_path = repo.path().to_owned();
    let hub = tokio::task::spawn_blocking(move || {
        let hub = HubProcess::start(
            &hub_dir,
            &format!(
                "repos:\n  - {{name: fleet, url: \"{}\", poll: 1h}}\nchannels:\n  - {{name: shops, repo: fleet, branch: main, path: shops, targets: {{labels: {{tier: shop}}}}}}\n  - {{name: depot, repo: fleet, branch: main, path: depot, targets: {{labels: {{tier: depot}}}}}}\n",
                repo_path.display()
            ),
        );
        hub.add_cluster("shop-1", &["tier=shop"]);
        hub.add_cluster("depot-1", &["tier=depot"]);
        assert!(wait_for(WAIT, || hub.log().matches("Bundle built and signed").count() >= 2));
        hub
    })
    .await
    .unwrap();
    let shop = tmp.path().join("shop");
    let depot = tmp.path().join("depot");
    export(&hub, "shop-1", &shop);
    export(&hub, "depot-1", &depot);
    // The hostile desired state: shop-1's genuine assignment, plus depot's genuine bundle.
    let assignment: skiff_proto::dsse::Envelope =
        serde_json::from_slice(&std::fs::read(shop.join("shop-1.assignment.json")).unwrap()).unwrap();
    let envelope_file = std::fs::read_dir(&depot)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".dsse.json"))
        .unwrap()
        .path();
    let envelope: skiff_proto::dsse::Envelope =
        serde_json::from_slice(&std::fs::read(&envelope_file).unwrap()).unwrap();
    let statement: skiff_proto::statement::Statement =
        serde_json::from_slice(&envelope.payload_bytes().unwrap()).unwrap();
    let digest = statement.bundle.sha256;
    let desired = skiff_proto::api::Desired {
        cluster: "shop-1".into(),
        channels: vec![skiff_proto::api::DesiredChannel {
            channel: "depot".into(),
            generation: statement.generation,
            sha256: digest,
            size: statement.bundle.size,
            commit: None,
            bundle_url: format!("/v1/bundles/{digest}"),
            envelope,
        }],
        assignment: Some(assignment),
        root: None,
    };
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = serde_json::to_vec(&desired).unwrap();
    let bundle = std::fs::read(depot.join(format!("{digest}.tar.gz"))).unwrap();
    let counter = fetched.clone();
    let app = axum::Router::new()
        .route(
            "/v1/clusters/shop-1/reports",
            axum::routing::post(|| async {
                axum::Json(serde_json::json!({"stored": 0, "duplicates": 0, "refused": 0}))
            }),
        )
        .route(
            "/v1/clusters/shop-1/desired",
            axum::routing::get(move || {
                let body = body.clone();
                async move { ([("etag", "\"hostile\"")], body) }
            }),
        )
        .fallback(move || {
            let bundle = bundle.clone();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { bundle }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let out = tmp.path().join("out");
    let config = write_config(
        &tmp.path().join("agent"),
        "shop-1",
        &hub.public_key(),
        &format!("dir:{}", out.display()),
        &format!("hub: {url}\ntoken: t\nmirrors: [\"{url}/mirror\"]\n"),
    );
    let proc = AgentProcess::start(&config);
    let refused = tokio::task::spawn_blocking(move || {
        let ok = wait_for(WAIT, || {
            proc.log()
                .contains("channel \"depot\" is not assigned to this cluster")
        });
        (ok, proc)
    })
    .await
    .unwrap();
    assert!(refused.0, "{}", refused.1.log());
    assert!(
        refused.1.log().contains("Assignment accepted"),
        "{}",
        refused.1.log()
    );
    assert_eq!(
        fetched.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing fetched"
    );
    assert!(!out.join("depot").exists());
    drop(refused);
    drop(hub);
}

/// A Deployment whose replica count and image registry are per-site values.
fn web_deployment(namespace: &str) -> String {
    format!(
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {namespace}\nspec:\n  replicas: ${{replicas}}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n        - name: web\n          image: \"${{registry}}/web:1.0\"\n"
    )
}

const SITE: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: site-${cluster_name}
  namespace: shop
data:
  registry: ${registry}
  region: ${cluster_label_region}
  site: "${site_id:=unset}"
  script: |
    echo $${HOSTNAME} ${cluster_name}
"#;

/// One repository, three label groups with their own values, nine agents: each site's
/// objects carry its own values; a label change moves a cluster to another group's values
/// within one poll; unassigning a channel prunes it; and the hub refuses to start with a
/// configuration that would unassign a channel from most of its clusters.
#[test]
fn one_repository_serves_nine_sites_each_with_its_own_values() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("fleet"));
    repo.write("shops/site.yaml", format!("{SITE}{}", web_deployment("shop")));
    repo.write("extras/extra.yaml", cm("extra", "x"));
    repo.commit_all("fleet");
    let channels = |tier: &str| {
        format!(
            "repos:\n  - {{name: fleet, url: \"{}\", poll: 1h}}\nchannels:\n  - name: shops\n    repo: fleet\n    branch: main\n    path: shops\n    targets: {{labels: {{tier: {tier}}}}}\n    values: {{registry: registry.example, replicas: 1}}\n    customizations:\n      - {{name: eu, selector: {{region: eu}}, values: {{registry: eu.registry.example, replicas: 2}}}}\n      - {{name: us, selector: {{region: us}}, values: {{registry: us.registry.example, replicas: 3}}}}\n  - {{name: extras, repo: fleet, branch: main, path: extras, targets: {{labels: {{extras: \"yes\"}}}}}}\n",
            repo.path().display()
        )
    };
    let mut hub = HubProcess::start(&tmp.path().join("hub"), &channels("shop"));
    let regions = ["eu", "eu", "eu", "us", "us", "us", "ap", "ap", "ap"];
    let mut agents = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let name = format!("shop-{i}");
        let region_label = format!("region={region}");
        let mut labels = vec!["tier=shop", region_label.as_str()];
        if i == 0 {
            labels.push("extras=yes");
        }
        let token = hub.add_cluster(&name, &labels);
        let out = tmp.path().join(format!("out-{i}"));
        let config = write_config(
            &tmp.path().join(format!("agent-{i}")),
            &name,
            &hub.public_key(),
            &format!("dir:{}", out.display()),
            &format!("hub: {}\ntoken: {token}\n", hub.url()),
        );
        agents.push((name, out, AgentProcess::start(&config)));
    }
    hub.admin(&["cluster", "set-values", "shop-4", "site_id=s-4"])
        .success();
    let site = |i: usize| {
        let (name, out, _) = &agents[i];
        read_json(&cm_file(out, "shops", "shop", &format!("site-{name}")))
    };
    let replicas = |i: usize| {
        read_json(&agents[i].1.join("shops/shop/deployment.web.yaml")).map(|d| d["spec"]["replicas"].clone())
    };
    let expect = |region: &str| match region {
        "eu" => ("eu.registry.example", 2),
        "us" => ("us.registry.example", 3),
        _ => ("registry.example", 1),
    };
    for (i, region) in regions.iter().enumerate() {
        let (registry, n) = expect(region);
        assert!(
            wait_for(WAIT, || site(i)
                .is_some_and(|v| v["data"]["registry"] == registry)
                && replicas(i) == Some(n.into())),
            "{}: {:?}\n{}",
            agents[i].0,
            site(i),
            agents[i].2.log()
        );
        let v = site(i).unwrap();
        assert_eq!(v["data"]["region"], *region);
        assert_eq!(
            v["data"]["script"],
            format!("echo ${{HOSTNAME}} shop-{i}\n"),
            "escape kept, name substituted"
        );
        let image = read_json(&agents[i].1.join("shops/shop/deployment.web.yaml")).unwrap()
            ["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone();
        assert_eq!(image, format!("{registry}/web:1.0"));
    }
    assert!(wait_for(WAIT, || site(4).is_some_and(|v| v["data"]["site"] == "s-4")));
    assert_eq!(site(3).unwrap()["data"]["site"], "unset", "the default");
    // What the hub renders for a site is what it applied.
    let rendered = hub
        .admin(&[
            "cluster",
            "render",
            "shop-4",
            "--channel",
            "shops",
            "--output",
            "json",
        ])
        .success()
        .stdout;
    let rendered: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    let cm = rendered[0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .unwrap()
        .clone();
    assert_eq!(cm, site(4).unwrap());

    // A label change moves shop-6 to the eu group's values within one (long) poll.
    hub.admin(&["cluster", "label", "shop-6", "region=eu"]).success();
    assert!(
        wait_for(WAIT, || site(6)
            .is_some_and(|v| v["data"]["registry"] == "eu.registry.example")
            && replicas(6) == Some(2.into())),
        "{:?}\n{}",
        site(6),
        agents[6].2.log()
    );

    // Unassigning prunes: shop-0 loses the extras channel.
    let extra = cm_file(&agents[0].1, "extras", "demo", "extra");
    assert!(wait_for(WAIT, || extra.exists()), "{}", agents[0].2.log());
    hub.admin(&["cluster", "label", "shop-0", "extras-"]).success();
    assert!(wait_for(WAIT, || !extra.exists()), "{}", agents[0].2.log());
    assert!(agents[0].2.log().contains("its objects were pruned"));
    assert!(site(0).is_some(), "the assigned channel stays");
    // Assigned again: applied afresh from the bundle the agent already holds.
    hub.admin(&["cluster", "label", "shop-0", "extras=yes"]).success();
    assert!(wait_for(WAIT, || extra.exists()), "{}", agents[0].2.log());

    // A selector typo would unassign `shops` from all nine clusters: the hub refuses to start.
    hub.kill();
    let config = hub.dir.join("hub.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("tier: shop}", "tier: shopp}")).unwrap();
    let (code, stderr) = serve_expecting_exit(&config);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("channel \"shops\" from 9 of its 9 clusters") && stderr.contains("--force-unassign"),
        "{stderr}"
    );
    // Nothing changed for the sites meanwhile.
    std::fs::write(&config, text).unwrap();
    hub.spawn();
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..9 {
        assert!(site(i).is_some(), "shop-{i} still runs its site");
    }
    for (_, _, mut p) in agents {
        p.kill();
    }
}

/// Runs `skiff-hub serve` expecting it to stop by itself (within 20 s; killed otherwise).
fn serve_expecting_exit(config: &Path) -> (Option<i32>, String) {
    let log = config.with_file_name("refused.log");
    let mut child = std::process::Command::new(skiff_tests::bin("skiff-hub"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut code = None;
    let exited = wait_for(Duration::from_secs(20), || match child.try_wait() {
        Ok(Some(status)) => {
            code = status.code();
            true
        }
        _ => false,
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

const KUBE_SITE: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: skiff-assign-kube
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: site
  namespace: skiff-assign-kube
data:
  site: ${cluster_name}
  region: ${cluster_label_region}
  endpoint: "https://${registry}/api?key=${api_key}"
"#;

/// The `kube` target: substituted objects are applied (numbers typed), drift checks compare
/// the cluster with the substituted objects (no false drift), an edit is healed back to the
/// site's values, and a value from the site's local file never reaches the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_sites_apply_their_values_without_false_drift() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    let c = skiff_tests::cluster::TestCluster::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("fleet"));
    repo.write(
        "site/site.yaml",
        format!("{KUBE_SITE}{}", web_deployment("skiff-assign-kube")),
    );
    repo.commit_all("site");
    let hub_dir = tmp.path().join("hub");
    let repo_path = repo.path().to_owned();
    let (hub, token) = tokio::task::spawn_blocking(move || {
        let hub = HubProcess::start(
            &hub_dir,
            &format!(
                "repos:\n  - {{name: fleet, url: \"{}\", poll: 1h}}\nchannels:\n  - name: site\n    repo: fleet\n    branch: main\n    path: site\n    targets: {{labels: {{tier: shop}}}}\n    values: {{registry: registry.example, replicas: 2}}\n",
                repo_path.display()
            ),
        );
        let token = hub.add_cluster("shop-k", &["tier=shop", "region=eu"]);
        (hub, token)
    })
    .await
    .unwrap();
    let local = tmp.path().join("site-values.yaml");
    std::fs::write(&local, "api_key: k-4711-local-only\n").unwrap();
    let config = write_config(
        &tmp.path().join("agent"),
        "shop-k",
        &hub.public_key(),
        "kube",
        &format!(
            "hub: {}\ntoken: {token}\nkubeconfig: {}\nvalues_file: {}\ndrift_interval: 1s\nnamespace: skiff-assign-kube\n",
            hub.url(),
            c.kubeconfig().display(),
            local.display()
        ),
    );
    let proc = AgentProcess::start(&config);
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(c.client.clone(), "skiff-assign-kube");
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(c.client.clone(), "skiff-assign-kube");
    let mut applied = None;
    for _ in 0..300 {
        if let Ok(cm) = maps.get("site").await {
            applied = Some(cm);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cm = applied.unwrap_or_else(|| panic!("not applied:\n{}", proc.log()));
    let data = cm.data.unwrap();
    assert_eq!(data["site"], "shop-k");
    assert_eq!(data["region"], "eu");
    assert_eq!(
        data["endpoint"],
        "https://registry.example/api?key=k-4711-local-only"
    );
    let web = deployments.get("web").await.unwrap();
    assert_eq!(web.spec.unwrap().replicas, Some(2));

    // Several drift checks later: no drift (the cluster holds exactly the substituted objects).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!proc.log().contains(" Drift "), "false drift:\n{}", proc.log());

    // Another manager edits the ConfigMap: found and healed back to this site's values.
    let patch = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"endpoint": "https://evil.example/?key=k-4711-local-only-2"}});
    maps.patch(
        "site",
        &kube::api::PatchParams::apply("someone-else").force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let mut healed = false;
    for _ in 0..300 {
        let now = maps.get("site").await.unwrap().data.unwrap();
        if now["endpoint"] == "https://registry.example/api?key=k-4711-local-only"
            && proc.log().contains(" Drift ")
        {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healed, "{}", proc.log());
    // The drift report reached the hub, and the site's local value did not.
    let (history, status) = tokio::task::spawn_blocking(move || {
        let mut history = String::new();
        let found = wait_for(WAIT, || {
            history = hub
                .admin(&["status", "shop-k", "--output", "json"])
                .success()
                .stdout;
            history.contains("\"corrected\": 1") || history.contains("\"corrected\":1")
        });
        (history, found)
    })
    .await
    .unwrap();
    assert!(status, "{history}");
    assert!(
        !history.contains("k-4711"),
        "a local value reached the hub: {history}"
    );
    drop(proc);
}
