//! What a stored bundle, an import medium, a hostile hub or mirror can make the agent do:
//! each test drives the real `skiff-agent` binary within budgets.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use axum::routing::get;
use skiff_proto::keys::SigningKey;
use skiff_tests::agent::{
    AgentProcess, agent, agent_with_peak_rss, peak_rss_kib, signed_pair, wait_for, write_config,
};

const WAIT: Duration = Duration::from_secs(20);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write_key(dir: &Path, key: &SigningKey) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("signing.pub.pem");
    std::fs::write(&p, key.public_key().to_spki_pem()).unwrap();
    p
}

/// An agent config with the `dir` target at `target`, running channel `demo`, watching
/// `usb` when given.
fn dir_agent(tmp: &Path, public: &Path, target: &Path, usb: Option<&Path>) -> std::path::PathBuf {
    let import = usb.map_or(String::new(), |u| format!("import_dir: {}\n", u.display()));
    write_config(
        &tmp.join("agent"),
        "edge-1",
        public,
        &format!("dir:{}", target.display()),
        &format!("{import}channels: {{demo: {{}}}}\n"),
    )
}

fn cm(name: &str) -> Vec<u8> {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{a: b}}\n").into_bytes()
}

/// Finding 2: a 1 MiB scalar aliased 1,500 times (a 1 MiB file that expands to 1.5 GB) is
/// refused within the parser's budget, before it costs memory.
#[test]
fn an_alias_bomb_is_refused_within_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let mut bomb = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\ndata:\n  a: &x {}\n  list: [",
        "x".repeat(1 << 20)
    );
    bomb.push_str(&vec!["*x"; 1500].join(", "));
    bomb.push_str("]\n");
    let files = BTreeMap::from([
        ("bomb.yaml".to_owned(), bomb.into_bytes()),
        ("ok.yaml".to_owned(), cm("ok")),
    ]);
    let (b, e) = signed_pair(&tmp.path().join("usb"), "demo", 1, &files, &key);
    let target = tmp.path().join("out");
    let config = dir_agent(tmp.path(), &public, &target, None);
    let (run, peak) = agent_with_peak_rss(&["import", "--config", s(&config), s(&b), s(&e)]);
    println!("alias bomb import: peak RSS {peak} KiB");
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("bomb.yaml") && all.contains("expands to more than"),
        "{all}"
    );
    assert!(
        !target.join("demo/demo/configmap.ok.yaml").exists(),
        "nothing of the channel applied"
    );
    assert!(peak < 96 * 1024, "peak RSS {peak} KiB");
}

/// Finding 2: a stored generation that killed the agent while it applied is skipped at start
/// (reported, not retried forever), and a newer generation is still taken.
#[test]
fn a_stored_generation_that_never_finished_applying_is_skipped_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let target = tmp.path().join("out");
    let usb = tmp.path().join("usb");
    let config = dir_agent(tmp.path(), &public, &target, Some(&usb));
    let (b, e) = signed_pair(
        &tmp.path().join("g1"),
        "demo",
        1,
        &BTreeMap::from([("a.yaml".into(), cm("a"))]),
        &key,
    );
    agent(&["import", "--config", s(&config), s(&b), s(&e)]).success();
    // As if two starts had died mid-apply (an OOM kill leaves exactly this behind).
    {
        let store = skiff_agent::store::Store::open(&tmp.path().join("agent/data")).unwrap();
        let mut state = store.channel("demo").unwrap();
        state.unfinished_applies = 2;
        store.put_channel("demo", &state).unwrap();
    }
    std::fs::remove_file(target.join("demo/demo/configmap.a.yaml")).unwrap();
    let mut proc = AgentProcess::start(&config);
    assert!(
        wait_for(WAIT, || proc.log().contains("Stored bundle skipped at start")),
        "{}",
        proc.log()
    );
    assert!(
        !target.join("demo/demo/configmap.a.yaml").exists(),
        "the poisoned generation is not re-applied"
    );
    signed_pair(
        &usb,
        "demo",
        2,
        &BTreeMap::from([("b.yaml".into(), cm("b"))]),
        &key,
    );
    assert!(
        wait_for(WAIT, || target.join("demo/demo/configmap.b.yaml").exists()),
        "a newer generation is still accepted:\n{}",
        proc.log()
    );
    proc.kill();
}

/// Finding 3: names that would walk out of the `dir` target are refused (by the parser the
/// hub also uses, and by the dir applier itself); nothing outside is written or pruned.
#[test]
fn object_names_cannot_escape_the_dir_target() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let target = tmp.path().join("out");
    let outside = tmp.path().join("victim.yaml");
    std::fs::write(&outside, "keep me").unwrap();
    let config = dir_agent(tmp.path(), &public, &target, None);
    let evil = BTreeMap::from([
        (
            "a.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: ../../..}\n".to_vec(),
        ),
        (
            "b.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ../../../victim}\n".to_vec(),
        ),
    ]);
    let (b, e) = signed_pair(&tmp.path().join("g1"), "demo", 1, &evil, &key);
    let run = agent(&["import", "--config", s(&config), s(&b), s(&e)]);
    assert_ne!(run.code, Some(0));
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("metadata.namespace") && all.contains("metadata.name"),
        "{all}"
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
    let escaped: Vec<_> = walk(tmp.path())
        .into_iter()
        .filter(|p| p.ends_with("configmap.x.yaml"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Findings 6 and 8: the import folder is read within budgets (a 2 GiB sparse "bundle" beside
/// an envelope that does not verify is never read), each refused pair is reported once and
/// set aside, and a genuine bundle of a channel this cluster does not run is refused once
/// and left in place (a later assignment may admit it).
#[test]
fn the_import_folder_reads_nothing_it_has_not_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let mallory = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let target = tmp.path().join("out");
    let usb = tmp.path().join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    // An envelope signed by an unknown key, claiming a 2 GiB bundle; the bundle is sparse.
    let (b, e) = signed_pair(
        &tmp.path().join("m"),
        "demo",
        1,
        &BTreeMap::from([("a.yaml".into(), cm("a"))]),
        &mallory,
    );
    let claimed: u64 = 2 << 30;
    let env = std::fs::read_to_string(&e).unwrap();
    let mut statement: serde_json::Value = {
        let v: serde_json::Value = serde_json::from_str(&env).unwrap();
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(v["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&payload).unwrap()
    };
    statement["bundle"]["size"] = claimed.into();
    let statement: skiff_proto::statement::Statement = serde_json::from_value(statement).unwrap();
    let forged = skiff_proto::dsse::Envelope::sign_statement(&statement, &[&mallory]);
    let name = b.file_name().unwrap().to_str().unwrap().to_owned();
    let digest = name.strip_suffix(".tar.gz").unwrap();
    std::fs::write(usb.join(format!("{digest}.dsse.json")), forged.to_json()).unwrap();
    let sparse = std::fs::File::create(usb.join(&name)).unwrap();
    sparse.set_len(claimed).unwrap();
    drop(sparse);
    // A genuine bundle of a channel this cluster was never given.
    let (ob, _) = signed_pair(
        &usb,
        "other",
        1,
        &BTreeMap::from([("o.yaml".into(), cm("o"))]),
        &key,
    );
    let config = dir_agent(tmp.path(), &public, &target, Some(&usb));
    let mut proc = AgentProcess::start(&config);
    let aside = usb.join("rejected");
    assert!(
        wait_for(WAIT, || aside.join(&name).exists()
            && proc.log().contains("Bundle not admitted")),
        "{}",
        proc.log()
    );
    std::thread::sleep(Duration::from_secs(5)); // two more scans
    let log = proc.log();
    assert_eq!(
        log.matches("Import refused").count() + log.matches("Bundle not admitted").count(),
        2,
        "one report each:\n{log}"
    );
    assert!(ob.exists(), "left in place for a later assignment");
    assert!(log.contains("not assigned to this cluster"), "{log}");
    assert!(!target.join("other").exists());
    let peak = peak_rss_kib(proc.pid());
    println!("import folder with a 2 GiB sparse bundle: agent peak RSS {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    proc.kill();
}

/// Finding 7: a hostile hub's endless desired-state body and error bodies are cut at their
/// caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_hub_cannot_make_the_agent_read_without_bound() {
    async fn endless() -> axum::response::Response {
        let chunk = axum::body::Bytes::from(vec![b' '; 1 << 20]);
        let stream = futures_stream(chunk);
        axum::response::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("etag", "\"e\"")
            .body(axum::body::Body::from_stream(stream))
            .unwrap()
    }
    fn futures_stream(
        chunk: axum::body::Bytes,
    ) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send {
        futures_util::stream::iter((0..4096).map(move |_| Ok(chunk.clone())))
    }
    let app = axum::Router::new().route("/v1/clusters/edge-1/desired", get(endless));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &public,
        &format!("dir:{}", tmp.path().join("out").display()),
        &format!("hub: {url}\ntoken: t0k3n\n"),
    );
    let mut proc = AgentProcess::start(&config);
    let cut = tokio::task::spawn_blocking({
        let log = tmp.path().join("agent/agent.log");
        move || {
            wait_for(WAIT, || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("longer than the limit")
            })
        }
    })
    .await
    .unwrap();
    assert!(cut, "{}", proc.log());
    let peak = peak_rss_kib(proc.pid());
    println!("endless desired body: agent peak RSS {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    proc.kill();
}

/// The shipped memory limit (the systemd unit's `MemoryMax`), in KiB.
fn shipped_memory_limit_kib() -> u64 {
    let unit =
        std::fs::read_to_string(skiff_tests::workspace_root().join("deploy/systemd/skiff-agent.service"))
            .unwrap();
    let value = unit
        .lines()
        .find_map(|l| l.strip_prefix("MemoryMax="))
        .expect("the agent unit sets MemoryMax");
    let (n, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = n.parse().unwrap();
    match unit {
        "M" => n * 1024,
        "G" => n * 1024 * 1024,
        other => panic!("unit {other:?}"),
    }
}

/// Finding 10: a bundle at the format's caps (64 MiB of manifests, 8,000 files of small
/// objects: the costliest shape to parse) applies under the shipped memory limit.
#[test]
fn a_bundle_at_the_caps_applies_under_the_shipped_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let limits = skiff_proto::bundle::Limits::default();
    let files_n = 8_000usize;
    let per_file = (limits.max_total_size as usize - 4096) / files_n;
    let mut files = BTreeMap::new();
    for i in 0..files_n {
        let head =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: demo}}\ndata:\n");
        let mut body = head;
        let mut k = 0;
        while body.len() + 40 < per_file {
            body.push_str(&format!("  key-{k:05}: value-{i:05}-{k:05}-abcdefgh\n"));
            k += 1;
        }
        files.insert(format!("cm-{i:05}.yaml"), body.into_bytes());
    }
    let total: usize = files.values().map(Vec::len).sum();
    assert!(total as u64 > limits.max_total_size - (1 << 20), "{total}");
    let (b, e) = signed_pair(&tmp.path().join("usb"), "demo", 1, &files, &key);
    drop(files);
    let target = tmp.path().join("out");
    let config = dir_agent(tmp.path(), &public, &target, None);
    let (run, peak) = agent_with_peak_rss(&["import", "--config", s(&config), s(&b), s(&e)]);
    let limit = shipped_memory_limit_kib();
    println!(
        "bundle at the caps ({total} bytes in {files_n} files): agent peak RSS {peak} KiB (limit {limit} KiB)"
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(target.join("demo/demo/configmap.cm-7999.yaml").exists());
    assert!(
        peak < limit,
        "peak RSS {peak} KiB over the shipped limit of {limit} KiB"
    );
}

/// Older generations left on an import medium are skipped quietly at every start: not
/// rejected, not reported, not moved.
#[test]
fn older_generations_on_the_medium_are_skipped_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let public = write_key(&tmp.path().join("keys"), &key);
    let target = tmp.path().join("out");
    let usb = tmp.path().join("usb");
    let (old, _) = signed_pair(
        &usb,
        "demo",
        1,
        &BTreeMap::from([("a.yaml".into(), cm("a"))]),
        &key,
    );
    let config = dir_agent(tmp.path(), &public, &target, Some(&usb));
    let mut proc = AgentProcess::start(&config);
    assert!(
        wait_for(WAIT, || target.join("demo/demo/configmap.a.yaml").exists()),
        "{}",
        proc.log()
    );
    signed_pair(
        &usb,
        "demo",
        2,
        &BTreeMap::from([("b.yaml".into(), cm("b"))]),
        &key,
    );
    assert!(
        wait_for(WAIT, || target.join("demo/demo/configmap.b.yaml").exists()),
        "{}",
        proc.log()
    );
    proc.kill();
    let before = proc.log().len();
    proc.spawn();
    std::thread::sleep(Duration::from_secs(5)); // two scans after the restart
    let log = proc.log()[before..].to_owned();
    proc.kill();
    assert!(!log.contains("rejected") && !log.contains("refused"), "{log}");
    assert!(old.exists(), "left where it is");
    assert!(target.join("demo/demo/configmap.b.yaml").exists());
}
