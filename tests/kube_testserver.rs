//! The test server's own knobs: fault injection, latency, refused connections, request log,
//! many servers side by side.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use skiff_tests::cluster::install_crypto;
use skiff_tests::kube::KubeTestServer;

fn cm(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

#[tokio::test]
async fn injected_faults_fail_the_next_requests_then_clear() {
    install_crypto();
    let server = KubeTestServer::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.fail_next(2, 500, "/configmaps/");
    for _ in 0..2 {
        match api
            .patch("a", &PatchParams::apply("t"), &Patch::Apply(cm("a")))
            .await
        {
            Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
            other => panic!("expected injected 500, got {other:?}"),
        }
    }
    api.patch("a", &PatchParams::apply("t"), &Patch::Apply(cm("a")))
        .await
        .expect("third succeeds");

    // kube's client retries 429 by itself (after Retry-After): two requests, one answer.
    server.fail_next(1, 429, "/configmaps/a");
    let before = server.request_count();
    api.get("a").await.expect("retried after 429");
    let log = server.requests();
    assert_eq!(log.len() - before, 2, "{log:?}");
    assert!(
        log[before..]
            .iter()
            .all(|r| r == "GET /api/v1/namespaces/default/configmaps/a")
    );
    // Faults only hit matching paths.
    server.fail_next(1, 500, "/secrets/");
    api.get("a").await.expect("configmaps unaffected");
}

#[tokio::test]
async fn latency_and_refused_connections() {
    install_crypto();
    let server = KubeTestServer::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.set_latency(Duration::from_millis(200));
    let start = Instant::now();
    api.patch("a", &PatchParams::apply("t"), &Patch::Apply(cm("a")))
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(200));
    server.set_latency(Duration::ZERO);

    server.refuse_connections(true);
    let fresh: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    assert!(fresh.get("a").await.is_err(), "refused while refusing");
    server.refuse_connections(false);
    fresh.get("a").await.expect("served again");
}

#[test]
fn request_log_and_many_servers() {
    install_crypto();
    let servers: Vec<KubeTestServer> = (0..20).map(|_| KubeTestServer::start().unwrap()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for s in &servers {
        runtime.block_on(async {
            let api: Api<ConfigMap> = Api::namespaced(s.client(), "default");
            api.get_opt("x").await.unwrap();
        });
        assert_eq!(s.request_count(), 1);
        assert_eq!(s.requests(), ["GET /api/v1/namespaces/default/configmaps/x"]);
    }
    let ports: std::collections::BTreeSet<u16> = servers.iter().map(|s| s.addr().port()).collect();
    assert_eq!(ports.len(), 20);
}

#[test]
fn the_binary_writes_a_kubeconfig_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc.yaml");
    let mut child = std::process::Command::new(skiff_tests::bin("skiff-kube-testserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kc)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kc.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "namespace", "default", "-o", "name"])
        .output()
        .expect("kubectl");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/default",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Protobuf bodies (what kubectl sends for built-in kinds) are read for the kinds `kubectl
/// create` makes (kubectl.rs); others get the 415 a server that does not read them answers,
/// and a malformed one a 400 that says what it is.
#[tokio::test]
async fn protobuf_bodies_of_other_kinds_are_an_unsupported_media_type() {
    install_crypto();
    let server = KubeTestServer::start().unwrap();
    let post = |path: &str, body: Vec<u8>| {
        reqwest::Client::new()
            .post(format!("{}{path}", server.url()))
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(body)
            .send()
    };
    // A Deployment (typeMeta apps/v1, Deployment): not read here, as a server that does
    // not speak protobuf for it answers.
    let deployment = b"k8s\x00\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment".to_vec();
    let r = post("/apis/apps/v1/namespaces/default/deployments", deployment)
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status["reason"], "UnsupportedMediaType", "{status}");
    // A truncated body is a bad request that says so.
    let r = post("/api/v1/namespaces", b"k8s\x00\x0a\x0f".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let status: serde_json::Value = r.json().await.unwrap();
    assert!(
        status["message"].as_str().unwrap().contains("protobuf"),
        "{status}"
    );
}
