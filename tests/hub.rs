//! The hub as a real process, with real Git repositories and real HTTP on 127.0.0.1.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use skiff_proto::Sha256Digest;
use skiff_proto::api::Desired;
use skiff_tests::GitRepo;
use skiff_tests::cluster::{eventually, install_crypto};
use skiff_tests::hub::HubProcess;

const WAIT: Duration = Duration::from_secs(20);

fn fleet_repo(dir: &std::path::Path) -> GitRepo {
    let repo = GitRepo::init(dir);
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.commit_all("example fleet");
    repo
}

fn config(repo: &GitRepo, poll: &str, channels: &str) -> String {
    format!(
        "repos:\n  - {{name: fleet, url: \"file://{}\", poll: {poll}}}\nchannels:\n{channels}",
        repo.path().display()
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(hub: &HubProcess) -> Self {
        install_crypto();
        Self {
            // No pooled connections: tests kill and restart the hub under the client.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            base: hub.url(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    async fn desired(&self, cluster: &str, token: &str) -> Desired {
        let r = self
            .get(&format!("/v1/clusters/{cluster}/desired"), Some(token), &[])
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("desired JSON")
    }

    async fn generation(&self, cluster: &str, token: &str, channel: &str) -> Option<u64> {
        let d = self.desired(cluster, token).await;
        d.channels
            .iter()
            .find(|c| c.channel == channel)
            .map(|c| c.generation)
    }
}

fn status_json(hub: &HubProcess) -> Value {
    let run = hub.admin(&["status", "--output", "json"]).success();
    serde_json::from_str(&run.stdout).expect("status JSON")
}

fn channel_state<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .expect("channel in status")
}

#[tokio::test]
async fn new_commits_become_new_generations_and_broken_ones_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1s",
            "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {labels: {env: dev}}}\n",
        ),
    );
    let token = hub.add_cluster("edge-1", &["env=dev"]);
    let api = Api::new(&hub);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(1)
        })
        .await,
        "{}",
        hub.log()
    );

    // Unchanged: 304 on the ETag.
    let r = api.get("/v1/clusters/edge-1/desired", Some(&token), &[]).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = api
        .get(
            "/v1/clusters/edge-1/desired",
            Some(&token),
            &[("If-None-Match", &etag)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(r.bytes().await.unwrap().is_empty());

    // A commit outside the channel's path renders to the same bundle: no new generation.
    repo.write("README.md", "# fleet\n");
    let readme = repo.commit_all("docs only");
    let seen = eventually(WAIT, || async {
        channel_state(&status_json(&hub), "demo")["lastSeenCommit"] == readme.as_str()
    })
    .await;
    assert!(seen, "{}", hub.log());
    assert_eq!(api.generation("edge-1", &token, "demo").await, Some(1));

    // A new commit in the path: generation 2 within a poll.
    repo.write(
        "apps/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: demo}\n",
    );
    let second = repo.commit_all("add extra");
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(2)
        })
        .await
    );
    let d = api.desired("edge-1", &token).await;
    assert_eq!(d.channels[0].commit.as_deref(), Some(second.as_str()));

    // A broken commit: generation stays, the error shows in status and metrics.
    repo.write(
        "apps/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n",
    );
    let broken = repo.commit_all("broken");
    let failed = eventually(WAIT, || async {
        channel_state(&status_json(&hub), "demo")["lastError"]["commit"] == broken.as_str()
    })
    .await;
    assert!(failed, "{}", hub.log());
    let state = status_json(&hub);
    let message = channel_state(&state, "demo")["lastError"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("broken.yaml: document 1 (line 1): missing metadata.name"),
        "{message}"
    );
    assert_eq!(api.generation("edge-1", &token, "demo").await, Some(2));
    let metrics = api.get("/metrics", None, &[]).await.text().await.unwrap();
    assert!(
        metrics.contains("skiff_hub_channel_build_error{channel=\"demo\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skiff_hub_build_failures_total{channel=\"demo\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skiff_hub_bundles_built_total{channel=\"demo\"} 2"),
        "{metrics}"
    );
    let table = hub.admin(&["status"]).success().stdout;
    assert!(table.contains("broken.yaml"), "{table}");

    // Fixing it clears the error.
    repo.git(&["rm", "-q", "apps/broken.yaml"]);
    repo.commit_all("fix");
    let cleared = eventually(WAIT, || async {
        channel_state(&status_json(&hub), "demo")["lastError"].is_null()
    })
    .await;
    assert!(cleared);
}

#[tokio::test]
async fn webhooks_trigger_an_immediate_fetch_and_need_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    let secret = tmp.path().join("webhook.secret");
    std::fs::write(&secret, "hook-secret-0123456789").unwrap();
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1h",
            "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {clusters: [edge-1]}}\n",
        )
        .replace(
            "poll: 1h}",
            &format!("poll: 1h, webhook_secret_file: {}}}", secret.display()),
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    let api = Api::new(&hub);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(1)
        })
        .await
    );

    repo.write(
        "apps/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: demo}\n",
    );
    repo.commit_all("add extra");
    let body = br#"{"ref": "refs/heads/main", "after": "x"}"#;
    let post = |sig: String| {
        let http = api.http.clone();
        let url = format!("{}/v1/hooks/git/fleet", api.base);
        async move {
            http.post(url)
                .header("X-Hub-Signature-256", sig)
                .header("Content-Type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(post("sha256=0000".into()).await, StatusCode::UNAUTHORIZED);
    let start = Instant::now();
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"hook-secret-0123456789").unwrap();
    mac.update(body);
    let sig = format!(
        "sha256={}",
        skiff_proto::digest::hex(&mac.finalize().into_bytes())
    );
    assert_eq!(post(sig).await, StatusCode::ACCEPTED);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(2)
        })
        .await
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "webhook, not the 1h poll"
    );
}

#[tokio::test]
async fn branches_map_to_channels_and_clusters_get_only_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    repo.git(&["checkout", "-q", "-b", "staging"]);
    repo.write(
        "apps/staging-only.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: staging-only, namespace: demo}\n",
    );
    repo.commit_all("staging change");
    repo.git(&["checkout", "-q", "main"]);
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1s",
            "  - {name: prod, repo: fleet, branch: main, path: apps, targets: {labels: {env: prod}}}\n  - {name: staging, repo: fleet, branch: staging, path: apps, targets: {labels: {env: staging}}}\n",
        ),
    );
    let prod = hub.add_cluster("shop-1", &["env=prod"]);
    let staging = hub.add_cluster("lab-1", &["env=staging"]);
    let api = Api::new(&hub);
    let both_built = eventually(WAIT, || async {
        api.generation("shop-1", &prod, "prod").await == Some(1)
            && api.generation("lab-1", &staging, "staging").await == Some(1)
    })
    .await;
    assert!(both_built, "{}", hub.log());
    let p = api.desired("shop-1", &prod).await;
    let s = api.desired("lab-1", &staging).await;
    assert_eq!(
        p.channels.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>(),
        ["prod"]
    );
    assert_eq!(
        s.channels.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>(),
        ["staging"]
    );
    assert_ne!(p.channels[0].sha256, s.channels[0].sha256);

    // A cluster may not fetch another channel's bundle.
    let r = api
        .get(&format!("/v1/bundles/{}", s.channels[0].sha256), Some(&prod), &[])
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Relabelling moves a cluster between channels.
    hub.admin(&["cluster", "label", "lab-1", "env=prod"]).success();
    let moved = api.desired("lab-1", &staging).await;
    assert_eq!(
        moved
            .channels
            .iter()
            .map(|c| c.channel.as_str())
            .collect::<Vec<_>>(),
        ["prod"]
    );
}

#[tokio::test]
async fn tokens_open_only_their_own_cluster_and_leak_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1s",
            "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {labels: {env: dev}}}\n",
        ),
    );
    let a = hub.add_cluster("edge-a", &["env=dev"]);
    let b = hub.add_cluster("edge-b", &["env=dev"]);
    let api = Api::new(&hub);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-a", &a, "demo").await == Some(1)
        })
        .await
    );

    let none = api.get("/v1/clusters/edge-a/desired", None, &[]).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let wrong = api
        .get("/v1/clusters/edge-a/desired", Some("skc_not-a-token"), &[])
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let other = api.get("/v1/clusters/edge-a/desired", Some(&b), &[]).await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let body = other.text().await.unwrap();
    assert!(!body.contains("edge-a") && !body.contains("sha256"), "{body}");
    let unknown = api.get("/v1/clusters/nope/desired", Some(&b), &[]).await;
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);
    let admin_only = api.get("/v1/admin/clusters", Some(&a), &[]).await;
    assert_eq!(admin_only.status(), StatusCode::FORBIDDEN);
    let bundle = api.desired("edge-a", &a).await.channels[0].sha256;
    let r = api.get(&format!("/v1/bundles/{bundle}"), None, &[]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Rotating a token retires the old one at once.
    let new = hub
        .admin(&["cluster", "rotate-token", "edge-a"])
        .success()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(
        api.get("/v1/clusters/edge-a/desired", Some(&a), &[])
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get("/v1/clusters/edge-a/desired", Some(&new), &[])
            .await
            .status(),
        StatusCode::OK
    );
    // Removing a cluster retires its token.
    hub.admin(&["cluster", "remove", "edge-b"]).success();
    assert_eq!(
        api.get("/v1/clusters/edge-b/desired", Some(&b), &[])
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let list = hub
        .admin(&["cluster", "list", "--output", "json"])
        .success()
        .stdout;
    let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&list)
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["edge-a"]);
}

#[tokio::test]
async fn long_polls_answer_on_change_and_bundles_resume_with_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1h",
            "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {clusters: [edge-1]}}\n",
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    let api = Api::new(&hub);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(1)
        })
        .await
    );
    let r = api.get("/v1/clusters/edge-1/desired", Some(&token), &[]).await;
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();

    // A long-poll with nothing changing ends with 304 after its wait.
    let start = Instant::now();
    let r = api
        .get(
            "/v1/clusters/edge-1/desired?wait=1",
            Some(&token),
            &[("If-None-Match", &etag)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(start.elapsed() >= Duration::from_millis(900));

    // A long-poll answers as soon as a new generation lands.
    let poll = {
        let http = api.http.clone();
        let url = format!("{}/v1/clusters/edge-1/desired?wait=60", api.base);
        let (token, etag) = (token.clone(), etag.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let r = http
                .get(url)
                .bearer_auth(token)
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap();
            (r.status(), start.elapsed(), r.json::<Desired>().await.ok())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    repo.write(
        "apps/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: demo}\n",
    );
    repo.commit_all("add extra");
    let refresh = api
        .http
        .post(format!("{}/v1/admin/channels/demo/refresh", api.base))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), StatusCode::ACCEPTED);
    let (status, elapsed, desired) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        elapsed < Duration::from_secs(30),
        "answered on change, not at the end of the wait"
    );
    let ch = &desired.unwrap().channels[0];
    assert_eq!(ch.generation, 2);

    // Range downloads put together the same bytes.
    let url = ch.bundle_url.clone();
    let full = api.get(&url, Some(&token), &[]).await;
    assert_eq!(
        full.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let full = full.bytes().await.unwrap();
    assert_eq!(Sha256Digest::of(&full), ch.sha256);
    let head = api.get(&url, Some(&token), &[("Range", "bytes=0-99")]).await;
    assert_eq!(head.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        head.headers()["content-range"],
        format!("bytes 0-99/{}", full.len())
    );
    let head = head.bytes().await.unwrap();
    let tail = api
        .get(&url, Some(&token), &[("Range", "bytes=100-")])
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!([head.to_vec(), tail.to_vec()].concat(), full.to_vec());
    let bad = api
        .get(
            &url,
            Some(&token),
            &[("Range", &format!("bytes={}-", full.len() + 10))],
        )
        .await;
    assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn reports_are_stored_once_and_show_in_status_export_and_import_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1s",
            "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {clusters: [edge-1]}}\n",
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    let api = Api::new(&hub);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(1)
        })
        .await
    );
    let d = api.desired("edge-1", &token).await;
    let report = serde_json::json!({
        "instance": "i-1", "seq": 1, "time": "2026-11-29T10:00:00Z", "agentVersion": "0.1.0",
        "channel": "demo", "outcome": "applied", "generation": 1, "sha256": d.channels[0].sha256,
        "message": "6 objects applied", "objects": 6
    });
    let post = |body: Value, bearer: String| {
        let http = api.http.clone();
        let url = format!("{}/v1/clusters/edge-1/reports", api.base);
        async move {
            http.post(url)
                .bearer_auth(bearer)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first: Value = post(serde_json::json!([report]), token.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first,
        serde_json::json!({"stored": 1, "duplicates": 0, "refused": 0})
    );
    let again: Value = post(serde_json::json!([report]), token.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        again,
        serde_json::json!({"stored": 0, "duplicates": 1, "refused": 0})
    );
    let bad = post(serde_json::json!([{"seq": "x"}]), token.clone()).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let state = status_json(&hub);
    let ch = &state["clusters"][0]["channels"][0];
    assert_eq!(ch["appliedGeneration"], 1);
    assert_eq!(ch["result"], "applied");

    // Air gap: export the desired bundles; import reports from a file, idempotently.
    let out = tmp.path().join("export");
    let exported = hub
        .admin(&["export", "--cluster", "edge-1", "--out", out.to_str().unwrap()])
        .success();
    let sha = d.channels[0].sha256.to_string();
    assert!(
        exported.stdout.contains(&format!("{sha}.tar.gz")),
        "{}",
        exported.stdout
    );
    let verify = skiff_tests::run_bin(
        "skiff-agent",
        &[
            "bundle",
            "verify",
            "--key",
            hub.public_key().to_str().unwrap(),
            out.join(format!("{sha}.tar.gz")).to_str().unwrap(),
            out.join(format!("{sha}.dsse.json")).to_str().unwrap(),
        ],
    );
    assert_eq!(verify.code, Some(0), "{}", verify.stderr);
    let mut second = report.clone();
    second["seq"] = 2.into();
    second["outcome"] = "failed".into();
    second["message"] = "ConfigMap demo/web-config: forbidden".into();
    let file = tmp.path().join("reports.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&serde_json::json!({"cluster": "edge-1", "reports": [report, second]})).unwrap(),
    )
    .unwrap();
    let imported = hub.admin(&["report", "import", file.to_str().unwrap()]).success();
    assert!(
        imported.stdout.contains("1 report(s) stored, 1 already known"),
        "{}",
        imported.stdout
    );
    let again = hub.admin(&["report", "import", file.to_str().unwrap()]).success();
    assert!(
        again.stdout.contains("0 report(s) stored, 2 already known"),
        "{}",
        again.stdout
    );
    let state = status_json(&hub);
    assert_eq!(state["clusters"][0]["channels"][0]["result"], "failed");
}

#[test]
fn a_bad_config_is_refused_naming_file_key_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("hub.yaml");
    std::fs::write(&cfg, "signing_key: /x\nadmin_token: 0123456789abcdef0123\nrepos: []\nchannels:\n  - {name: demo, repo: nope, branch: main}\n").unwrap();
    let run = skiff_tests::run_bin("skiff-hub", &["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("hub.yaml: channels[0].repo: \"nope\" is not one of the configured repos"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_hub_killed_mid_build_restarts_serving_the_same_state_with_no_corrupt_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    // Enough manifests that a build takes a moment, so kills land inside builds.
    for i in 0..300 {
        repo.write(&format!("apps/bulk/cm-{i}.yaml"), format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: demo}}\ndata: {{n: \"{i}\"}}\n"));
    }
    repo.commit_all("bulk");
    let mut hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1s",
            "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {clusters: [edge-1]}}\n",
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    let api = Api::new(&hub);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(1)
        })
        .await
    );

    for round in 0..6u64 {
        repo.write("apps/bulk/round.yaml", format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: round, namespace: demo}}\ndata: {{r: \"{round}\"}}\n"));
        repo.commit_all(&format!("round {round}"));
        // Kill somewhere between "nothing started" and "build done".
        tokio::time::sleep(Duration::from_millis(200 + 250 * round)).await;
        let before = api.desired("edge-1", &token).await;
        hub.kill();
        hub.spawn();
        let after = api.desired("edge-1", &token).await;
        assert!(
            after.channels[0].generation >= before.channels[0].generation,
            "never goes back"
        );
        // Every blob is whole: its name is the digest of its content.
        for entry in std::fs::read_dir(hub.dir.join("data/blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(d) = name.parse::<Sha256Digest>() {
                assert_eq!(
                    Sha256Digest::of(&std::fs::read(entry.path()).unwrap()),
                    d,
                    "blob {name} is corrupt"
                );
            }
        }
        // What it serves is downloadable and matches.
        let ch = &after.channels[0];
        let bytes = api
            .get(&ch.bundle_url, Some(&token), &[])
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(Sha256Digest::of(&bytes), ch.sha256);
    }
    // It converges on the last commit.
    let last = repo.git(&["rev-parse", "HEAD"]);
    assert!(
        eventually(WAIT, || async {
            api.desired("edge-1", &token).await.channels[0].commit.as_deref() == Some(last.as_str())
        })
        .await,
        "{}",
        hub.log()
    );

    // A restart with nothing new serves exactly the same answer.
    let r = api.get("/v1/clusters/edge-1/desired", Some(&token), &[]).await;
    let (etag, body) = (
        r.headers()["etag"].to_str().unwrap().to_owned(),
        r.bytes().await.unwrap(),
    );
    hub.kill();
    hub.spawn();
    let r = api.get("/v1/clusters/edge-1/desired", Some(&token), &[]).await;
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap(), body);
}

#[tokio::test]
async fn sigterm_ends_long_polls_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fleet_repo(&tmp.path().join("fleet"));
    let mut hub = HubProcess::start(
        &tmp.path().join("hub"),
        &config(
            &repo,
            "1h",
            "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {clusters: [edge-1]}}\n",
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    let api = Api::new(&hub);
    assert!(
        eventually(WAIT, || async {
            api.generation("edge-1", &token, "demo").await == Some(1)
        })
        .await
    );
    let etag = api
        .get("/v1/clusters/edge-1/desired", Some(&token), &[])
        .await
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let poll = {
        let http = api.http.clone();
        let url = format!("{}/v1/clusters/edge-1/desired?wait=120", api.base);
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(token)
                .header("If-None-Match", etag)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = hub.terminate(Duration::from_secs(20));
        (s, hub)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "exit status {:?}\n{}",
        status.0,
        status.1.log()
    );
    assert_eq!(
        poll.await.unwrap().unwrap(),
        StatusCode::NOT_MODIFIED,
        "the long-poll was answered, not cut"
    );
}

#[test]
fn https_with_a_self_signed_certificate_and_the_admin_cli_trusting_its_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = skiff_tests::make_tls(&tmp.path().join("tls"));
    let repo = fleet_repo(&tmp.path().join("fleet"));
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &format!(
            "tls: {{cert: {}, key: {}}}\n{}",
            cert.display(),
            key.display(),
            config(
                &repo,
                "1h",
                "  - {name: demo, repo: fleet, branch: main, path: apps, targets: {clusters: [edge-1]}}\n"
            )
        ),
    );
    let https = format!("https://127.0.0.1:{}", hub.port);
    let run = |args: &[&str]| -> skiff_tests::Run {
        std::process::Command::new(skiff_tests::bin("skiff-hub"))
            .args(args)
            .env("SKIFF_HUB_URL", &https)
            .env("SKIFF_HUB_ADMIN_TOKEN", &hub.admin_token)
            .output()
            .unwrap()
            .into()
    };
    let untrusted = run(&["cluster", "list"]);
    assert_eq!(untrusted.code, Some(1), "an unknown CA is refused");
    let added = run(&["cluster", "add", "edge-1", "--ca-file", ca.to_str().unwrap()]).success();
    assert!(added.stdout.trim().starts_with("skc_"), "{}", added.stdout);
    let listed = run(&["cluster", "list", "--ca-file", ca.to_str().unwrap()]).success();
    assert!(listed.stdout.contains("edge-1"), "{}", listed.stdout);
    // Plain HTTP to the TLS port gets nothing useful.
    let plain = std::process::Command::new(skiff_tests::bin("skiff-hub"))
        .args(["cluster", "list"])
        .env("SKIFF_HUB_URL", hub.url())
        .env("SKIFF_HUB_ADMIN_TOKEN", &hub.admin_token)
        .output()
        .unwrap();
    assert!(!plain.status.success());
}
