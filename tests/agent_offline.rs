//! The agent's promises under attack and accident, with real processes: bad bundles from a
//! hub and from the import folder are refused and reported while the last good state
//! stays; half-copied imports are waited for; `kill -9` during applies loses nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use skiff_proto::bundle::{BuiltBundle, Limits, Source, write_bundle};
use skiff_proto::dsse::Envelope;
use skiff_proto::keys::SigningKey;
use skiff_proto::statement::{BundleRef, Statement};
use skiff_tests::agent::{AgentProcess, agent, wait_for, write_config};

const WAIT: Duration = Duration::from_secs(30);

fn cm(name: &str) -> Vec<u8> {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: demo}}\ndata: {{k: v}}\n")
        .into_bytes()
}

fn bundle(names: &[&str]) -> BuiltBundle {
    let files: BTreeMap<String, Vec<u8>> = names.iter().map(|n| (format!("{n}.yaml"), cm(n))).collect();
    write_bundle(
        "demo",
        Source::default(),
        Some("demo".into()),
        &files,
        &Limits::default(),
    )
    .unwrap()
}

fn signed(b: &BuiltBundle, generation: u64, key: &SigningKey, expires_in: Option<Duration>) -> Envelope {
    let mut s = Statement::new(
        BundleRef {
            sha256: b.digest,
            size: b.bytes.len() as u64,
        },
        "demo",
        generation,
        None,
    );
    s.expires = expires_in.map(|d| s.created.plus(d));
    Envelope::sign_statement(&s, &[key])
}

fn write_key(dir: &Path, key: &SigningKey) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("signing.pub.pem");
    std::fs::write(&p, key.public_key().to_spki_pem()).unwrap();
    p
}

/// What a fake hub serves: one channel entry with a bundle's claimed digest and bytes.
#[derive(Default)]
struct FakeHub {
    entry: Option<(serde_json::Value, Vec<u8>)>,
    version: u64,
    reports: Vec<serde_json::Value>,
}

type Shared = Arc<Mutex<FakeHub>>;

async fn desired(State(hub): State<Shared>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let h = hub.lock().unwrap();
    let channels: Vec<serde_json::Value> = h.entry.iter().map(|(e, _)| e.clone()).collect();
    let etag = format!("\"v{}\"", h.version);
    (
        [("etag", etag)],
        axum::Json(serde_json::json!({"cluster": "edge-1", "channels": channels})),
    )
        .into_response()
}

async fn bundle_bytes(State(hub): State<Shared>) -> Vec<u8> {
    hub.lock()
        .unwrap()
        .entry
        .as_ref()
        .map(|(_, b)| b.clone())
        .unwrap_or_default()
}

async fn reports(
    State(hub): State<Shared>,
    axum::Json(body): axum::Json<Vec<serde_json::Value>>,
) -> axum::Json<serde_json::Value> {
    let n = body.len();
    hub.lock().unwrap().reports.extend(body);
    axum::Json(serde_json::json!({"stored": n, "duplicates": 0}))
}

/// Serves `bytes` as the channel's bundle, claiming digest `claimed` for it.
fn serve(hub: &Shared, envelope: &Envelope, generation: u64, bytes: Vec<u8>) {
    let claimed = skiff_proto::Sha256Digest::of(&bytes);
    let mut h = hub.lock().unwrap();
    h.version += 1;
    h.entry = Some((
        serde_json::json!({
            "channel": "demo", "generation": generation, "sha256": claimed, "size": bytes.len(),
            "bundleUrl": format!("/v1/bundles/{claimed}"), "envelope": envelope,
        }),
        bytes,
    ));
}

fn rejected_messages(hub: &Shared) -> Vec<String> {
    hub.lock()
        .unwrap()
        .reports
        .iter()
        .filter(|r| r["outcome"] == "rejected")
        .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundles_from_the_hub_are_rejected_reported_and_the_last_good_state_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let mallory = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let hub: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/v1/clusters/edge-1/desired", get(desired))
        .route("/v1/bundles/{sha}", get(bundle_bytes))
        .route("/v1/clusters/edge-1/reports", post(reports))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let good = bundle(&["a", "b"]);
    serve(&hub, &signed(&good, 2, &key, None), 2, good.bytes.clone());
    let target = tmp.path().join("out");
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &public,
        &format!("dir:{}", target.display()),
        &format!("hub: {url}\ntoken: t0k3n\n"),
    );
    let proc = AgentProcess::start(&config);
    let b = target.join("demo/demo/configmap.b.yaml");
    assert!(wait_for(WAIT, || b.exists()), "{}", proc.log());

    let attacks: Vec<(&str, Envelope, u64, Vec<u8>, &str)> = {
        let older = bundle(&["a"]);
        let tampered = bundle(&["a", "c"]);
        let mut evil = tampered.bytes.clone();
        let n = evil.len() / 2;
        evil[n] ^= 1;
        let unsigned = bundle(&["a", "d"]);
        let expired = bundle(&["a", "e"]);
        vec![
            (
                "replayed older generation",
                signed(&older, 1, &key, None),
                1,
                older.bytes.clone(),
                "older than the accepted generation 2",
            ),
            (
                "tampered bytes",
                signed(&tampered, 3, &key, None),
                3,
                evil,
                "sha256",
            ),
            (
                "wrong signer",
                signed(&unsigned, 4, &mallory, None),
                4,
                unsigned.bytes.clone(),
                "valid signature",
            ),
            (
                "expired",
                signed(&expired, 5, &key, Some(Duration::ZERO)),
                5,
                expired.bytes.clone(),
                "expired",
            ),
        ]
    };
    for (i, (name, env, generation, bytes, reason)) in attacks.into_iter().enumerate() {
        serve(&hub, &env, generation, bytes);
        let reported = wait_for(WAIT, || rejected_messages(&hub).len() > i);
        assert!(reported, "{name}: no rejection reported\n{}", proc.log());
        let msg = rejected_messages(&hub)[i].clone();
        assert!(msg.contains(reason), "{name}: {msg}");
        assert!(b.exists(), "{name}: last good state kept");
        for extra in ["c", "d", "e"] {
            assert!(
                !target.join(format!("demo/demo/configmap.{extra}.yaml")).exists(),
                "{name}"
            );
        }
    }
    let applied = hub
        .lock()
        .unwrap()
        .reports
        .iter()
        .filter(|r| r["outcome"] == "applied")
        .count();
    assert_eq!(applied, 1);
}

#[test]
fn the_import_folder_waits_for_whole_pairs_and_refuses_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let import = tmp.path().join("usb");
    std::fs::create_dir_all(&import).unwrap();
    let target = tmp.path().join("out");
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &public,
        &format!("dir:{}", target.display()),
        &format!("import_dir: {}\nchannels: {{demo: {{}}}}\n", import.display()),
    );
    let proc = AgentProcess::start(&config);

    // Half a copy: the bundle is short of what the envelope names. Not applied, not refused.
    let good = bundle(&["a", "b"]);
    let env = signed(&good, 1, &key, None);
    let half = good.bytes.len() / 2;
    std::fs::write(
        import.join(format!("{}.tar.gz", good.digest)),
        &good.bytes[..half],
    )
    .unwrap();
    std::fs::write(import.join(format!("{}.dsse.json", good.digest)), env.to_json()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!target.join("demo/demo/configmap.a.yaml").exists());
    // The copy completes: applied.
    std::fs::write(import.join(format!("{}.tar.gz", good.digest)), &good.bytes).unwrap();
    assert!(
        wait_for(WAIT, || target.join("demo/demo/configmap.b.yaml").exists()),
        "{}",
        proc.log()
    );

    // An expired and an unsigned pair: refused, the state stays.
    let expired = bundle(&["a", "x"]);
    std::fs::write(import.join(format!("{}.tar.gz", expired.digest)), &expired.bytes).unwrap();
    std::fs::write(
        import.join(format!("{}.dsse.json", expired.digest)),
        signed(&expired, 2, &key, Some(Duration::ZERO)).to_json(),
    )
    .unwrap();
    let status = || {
        let r = agent(&[
            "status",
            "--data-dir",
            tmp.path().join("agent/data").to_str().unwrap(),
            "--output",
            "json",
        ]);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap_or_default()
    };
    assert!(
        wait_for(WAIT, || status()["outbox"].as_u64() == Some(2)),
        "{:?}\n{}",
        status(),
        proc.log()
    );
    assert!(!target.join("demo/demo/configmap.x.yaml").exists());
    assert!(proc.log().contains("expired"), "{}", proc.log());
    assert_eq!(status()["channels"]["demo"]["applied"]["generation"], 1);
}

#[tokio::test]
async fn kill_9_during_applies_leaves_a_store_that_opens_and_converges_without_losing_reports_needs_latency_injection()
 {
    use k8s_openapi::api::core::v1::ConfigMap;
    let c = skiff_tests::cluster::TestCluster::start().await;
    let Some(server) = c.test_server_only(
        "kill_9_during_applies_leaves_a_store_that_opens_and_converges_without_losing_reports_needs_latency_injection",
        "latency injection (so kills land mid-apply)",
    ) else {
        return;
    };
    // Slow enough that kills land mid-apply.
    server.set_latency(Duration::from_millis(2));
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let import = tmp.path().join("usb");
    std::fs::create_dir_all(&import).unwrap();
    let names: Vec<String> = (0..200).map(|i| format!("cm-{i}")).collect();
    let mut files: BTreeMap<String, Vec<u8>> = names.iter().map(|n| (format!("{n}.yaml"), cm(n))).collect();
    files.insert(
        "ns.yaml".into(),
        b"apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n".to_vec(),
    );
    let big = write_bundle(
        "demo",
        Source::default(),
        Some("demo".into()),
        &files,
        &Limits::default(),
    )
    .unwrap();
    std::fs::write(import.join(format!("{}.tar.gz", big.digest)), &big.bytes).unwrap();
    std::fs::write(
        import.join(format!("{}.dsse.json", big.digest)),
        signed(&big, 1, &key, None).to_json(),
    )
    .unwrap();
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &public,
        "kube",
        &format!(
            "kubeconfig: {}\nimport_dir: {}\nchannels: {{demo: {{}}}}\n",
            c.kubeconfig().display(),
            import.display()
        ),
    );
    let mut proc = AgentProcess::start(&config);
    let mut seed: u64 = 0x5eed;
    for _ in 0..20 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis(50 + (seed >> 33) % 400));
        proc.kill();
        proc.spawn();
    }
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(c.client.clone(), "demo");
    let converged = skiff_tests::cluster::eventually(Duration::from_secs(60), || async {
        api.list(&Default::default()).await.is_ok_and(|l| {
            l.items
                .iter()
                .filter(|i| i.metadata.name.as_deref().is_some_and(|n| n.starts_with("cm-")))
                .count()
                == 200
        })
    })
    .await;
    assert!(converged, "{}", proc.log());
    assert!(wait_for(WAIT, || std::fs::read_to_string(
        tmp.path().join("agent/data/status.json")
    )
    .is_ok_and(|s| s.contains("\"ok\": true"))));
    proc.kill();
    // The store opens; every report ever queued is there, numbered without gaps.
    let out = tmp.path().join("reports.json");
    agent(&[
        "report",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .success();
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let seqs: Vec<u64> = file["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(!seqs.is_empty());
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no report lost");
    let status = agent(&["status", "--config", config.to_str().unwrap()]).success();
    assert!(
        status.stdout.contains("demo") && status.stdout.contains("applied"),
        "{}",
        status.stdout
    );
}
