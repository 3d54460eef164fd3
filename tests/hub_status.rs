//! What `skiff-hub status` tells an operator, checked against a real hub.

use std::time::Duration;

use skiff_tests::GitRepo;
use skiff_tests::cluster::{eventually, install_crypto};
use skiff_tests::hub::HubProcess;

fn example_repo(dir: &std::path::Path) -> GitRepo {
    let repo = GitRepo::init(dir);
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.commit_all("example fleet");
    repo
}

fn status_json(hub: &HubProcess) -> serde_json::Value {
    serde_json::from_str(&hub.admin(&["status", "--output", "json"]).success().stdout).unwrap()
}

/// A cluster not heard from for `offline_after` is offline in text, JSON and metrics; an
/// air-gap import dates last-seen by the reports' own times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clusters_are_offline_and_imports_date_last_seen_by_their_reports() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &format!(
            "offline_after: 2s\nrepos:\n  - {{name: fleet, url: \"file://{}\", poll: 1h}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: apps, targets: {{clusters: [edge-1, ship-1]}}}}\n",
            repo.path().display()
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    hub.add_cluster("ship-1", &[]);
    let http = reqwest::Client::new();
    let poll = || {
        http.get(format!("{}/v1/clusters/edge-1/desired", hub.url()))
            .bearer_auth(&token)
            .send()
    };
    poll().await.unwrap();
    let edge = |s: &serde_json::Value| {
        s["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "edge-1")
            .cloned()
            .unwrap()
    };
    assert_eq!(edge(&status_json(&hub))["offline"], false);
    let went_offline = eventually(Duration::from_secs(10), || async {
        edge(&status_json(&hub))["offline"] == true
    })
    .await;
    assert!(went_offline, "{}", status_json(&hub));
    let text = hub.admin(&["status"]).success().stdout;
    let line = text.lines().find(|l| l.starts_with("edge-1")).unwrap();
    assert!(line.contains("OFFLINE"), "{text}");
    let metrics = http
        .get(format!("{}/metrics", hub.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("skiff_hub_clusters{state=\"offline\"} 1"),
        "{metrics}"
    );
    // It polls again: online.
    poll().await.unwrap();
    assert_eq!(edge(&status_json(&hub))["offline"], false);

    // Reports from an air-gapped ship, made an hour ago, imported now.
    let an_hour_ago = skiff_proto::statement::Timestamp::from_unix_seconds(
        skiff_proto::statement::Timestamp::now().unix_seconds() - 3600,
    );
    let file = dir.path().join("reports.json");
    std::fs::write(
        &file,
        serde_json::json!({"cluster": "ship-1", "reports": [{"instance": "i", "seq": 1, "time": an_hour_ago,
            "agentVersion": "t", "channel": "demo", "outcome": "applied", "generation": 1}]})
        .to_string(),
    )
    .unwrap();
    hub.admin(&["report", "import", file.to_str().unwrap()]).success();
    let ship = status_json(&hub)["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ship-1")
        .cloned()
        .unwrap();
    assert_eq!(
        ship["lastSeen"],
        serde_json::to_value(an_hour_ago).unwrap(),
        "{ship}"
    );
    assert_eq!(ship["offline"], true);
}

/// `skiff-hub status | head` ends quietly; an invalid `SKIFF_LOG` is an error on both
/// binaries, not silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_is_not_a_crash_and_a_bad_log_filter_is_an_error() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"file://{}\", poll: 1h}}\nchannels: []\n",
            repo.path().display()
        ),
    );
    // Enough clusters that the table is larger than a pipe's buffer.
    let http = reqwest::Client::new();
    let adds = (0..1500).map(|i| {
        http.post(format!("{}/v1/admin/clusters", hub.url()))
            .bearer_auth(&hub.admin_token)
            .json(&serde_json::json!({"name": format!("shop-{i:04}"), "labels": {"region": "north-east-and-beyond"}}))
            .send()
    });
    for chunk in adds.collect::<Vec<_>>().chunks_mut(100) {
        for r in futures_util::future::join_all(chunk.iter_mut()).await {
            assert_eq!(r.unwrap().status(), 201);
        }
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' status | head -1",
            skiff_tests::bin("skiff-hub").display()
        ))
        .env("SKIFF_HUB_URL", hub.url())
        .env("SKIFF_HUB_ADMIN_TOKEN", &hub.admin_token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("CHANNEL"));

    // The admin token's older variable name still works, with a note.
    let old = std::process::Command::new(skiff_tests::bin("skiff-hub"))
        .args(["cluster", "list"])
        .env("SKIFF_HUB_URL", hub.url())
        .env_remove("SKIFF_HUB_ADMIN_TOKEN")
        .env("SKIFF_ADMIN_TOKEN", &hub.admin_token)
        .output()
        .unwrap();
    assert!(old.status.success(), "{}", String::from_utf8_lossy(&old.stderr));
    assert!(
        String::from_utf8_lossy(&old.stderr)
            .contains("SKIFF_ADMIN_TOKEN is deprecated; use SKIFF_HUB_ADMIN_TOKEN")
    );

    for (bin, args) in [
        ("skiff-hub", ["serve", "--config"]),
        ("skiff-agent", ["run", "--config"]),
    ] {
        let out = std::process::Command::new(skiff_tests::bin(bin))
            .args(args)
            .arg(dir.path().join("none.yaml"))
            .env("SKIFF_LOG", "info,[")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin}");
        assert!(
            stderr.contains("SKIFF_LOG=\"info,[\" is not a log filter"),
            "{bin}: {stderr}"
        );
    }
}

/// A mistyped branch names the branches that exist; a channel without targets is said so
/// at start and in status; a second hub on the same data_dir says why it cannot start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_mistakes_are_named_with_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    repo.git(&["branch", "staging"]);
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"file://{}\", poll: 1h}}\nchannels:\n  - {{name: typo, repo: fleet, branch: mian, path: apps, targets: {{clusters: [a]}}}}\n  - {{name: nowhere, repo: fleet, branch: main, path: apps}}\n",
            repo.path().display()
        ),
    );
    let failed = eventually(Duration::from_secs(20), || async {
        status_json(&hub)["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "typo" && !c["lastError"].is_null())
    })
    .await;
    assert!(failed, "{}", hub.log());
    let status = status_json(&hub);
    let typo = status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "typo")
        .unwrap();
    let message = typo["lastError"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"mian\" does not exist") && message.contains("main, staging"),
        "{message}"
    );
    assert!(hub.log().contains("Channel has no targets"), "{}", hub.log());
    let text = hub.admin(&["status"]).success().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with("nowhere") && l.contains("none (no targets)")),
        "{text}"
    );

    let second = std::process::Command::new(skiff_tests::bin("skiff-hub"))
        .args(["serve", "--config"])
        .arg(hub.dir.join("hub.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains("is another hub running with this data_dir?"),
        "{stderr}"
    );
}

/// The last good generation stays visible next to a failed newer one, with the failure's
/// message in the table and the whole story in `status CLUSTER`; a repository that cannot
/// be fetched shows why; metrics are grouped by family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_a_cluster_or_channel_failed_is_in_the_text_status() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"file://{}\", poll: 1h}}\n  - {{name: gone, url: \"file://{}\", poll: 1h}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: apps, targets: {{clusters: [edge-1]}}}}\n  - {{name: lost, repo: gone, branch: main, path: apps, targets: {{clusters: [edge-1]}}}}\n",
            repo.path().display(),
            dir.path().join("no-such-repo").display()
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    let http = reqwest::Client::new();
    let report = |seq: u64, outcome: &str, generation: u64, message: &str| {
        serde_json::json!({"instance": "i", "seq": seq, "time": skiff_proto::statement::Timestamp::now(),
            "agentVersion": "t", "channel": "demo", "outcome": outcome, "generation": generation, "message": message})
    };
    let body = serde_json::json!([
        report(1, "applied", 1, "6 objects applied"),
        report(
            2,
            "failed",
            2,
            "1 of 6 objects failed: apps/v1/Deployment demo/web spec.replicas: Invalid value"
        )
    ]);
    let r = http
        .post(format!("{}/v1/clusters/edge-1/reports", hub.url()))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = status_json(&hub);
    let demo = status["clusters"][0]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "demo")
        .unwrap()
        .clone();
    assert_eq!(
        (demo["result"].as_str(), demo["appliedGeneration"].as_u64()),
        (Some("failed"), Some(1)),
        "{demo}"
    );
    let text = hub.admin(&["status"]).success().stdout;
    assert!(
        text.contains("MESSAGE") && text.contains("spec.replicas: Invalid value"),
        "{text}"
    );
    let detail = hub.admin(&["status", "edge-1"]).success().stdout;
    assert!(
        detail.contains("applied generation: 1") && detail.contains("Invalid value"),
        "{detail}"
    );
    let fetch_failed = eventually(Duration::from_secs(20), || async {
        hub.admin(&["status"]).success().stdout.contains("fetch: ")
    })
    .await;
    assert!(fetch_failed, "{}", hub.admin(&["status"]).stdout);
    let lost = status_json(&hub)["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lost")
        .unwrap()
        .clone();
    assert!(
        lost["fetchError"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-repo")),
        "{lost}"
    );
    let metrics = http
        .get(format!("{}/metrics", hub.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    skiff_tests::assert_exposition_is_grouped(&metrics);

    // A check that could not compare an object: counted as unknown, not in sync.
    let mut checked = report(3, "checked", 1, "0 drifted, 1 unknown; health Unknown");
    checked["unknown"] = serde_json::json!([{"object": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "demo", "name": "web-config"},
        "message": "500 InternalError: admission webhook \"policy.example\" failed"}]);
    http.post(format!("{}/v1/clusters/edge-1/reports", hub.url()))
        .bearer_auth(&token)
        .json(&serde_json::json!([checked]))
        .send()
        .await
        .unwrap();
    let text = hub.admin(&["status"]).success().stdout;
    assert!(text.contains("(1 unknown)"), "{text}");
}

/// `export --channel` fetches a channel's current bundle; anyone with the commit rebuilds
/// the same bytes (repository URL, branch, path and default namespace as the channel has).
#[test]
fn a_channels_bundle_can_be_fetched_and_rebuilt_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let url = format!("file://{}", repo.path().display());
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"{url}\", poll: 1h}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: ./apps, namespace: demo, targets: {{clusters: [a]}}}}\n"
        ),
    );
    let out = dir.path().join("fetched");
    let fetched = (0..200)
        .find_map(|_| {
            let run = hub.admin(&["export", "--channel", "demo", "--out", out.to_str().unwrap()]);
            if run.code == Some(0) {
                return Some(run.stdout);
            }
            std::thread::sleep(Duration::from_millis(100));
            None
        })
        .expect("the channel builds");
    let bundle = fetched.lines().next().unwrap();
    let digest = std::path::Path::new(bundle)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".tar.gz")
        .to_owned();
    let keys = dir.path().join("keys");
    skiff_tests::run_bin("skiff-hub", &["keygen", "--out", keys.to_str().unwrap()]).success();
    let commit = repo.git(&["rev-parse", "HEAD"]);
    let rebuilt = skiff_tests::run_bin(
        "skiff-hub",
        &[
            "bundle",
            "build",
            "--repo",
            repo.path().to_str().unwrap(),
            "--rev",
            &commit,
            "--path",
            "apps",
            "--branch",
            "main",
            "--source-repo",
            &url,
            "--namespace",
            "demo",
            "--channel",
            "demo",
            "--generation",
            "1",
            "--key",
            keys.join("signing.pem").to_str().unwrap(),
            "--out",
            dir.path().join("rebuilt").to_str().unwrap(),
        ],
    )
    .success()
    .stdout;
    assert_eq!(rebuilt.trim(), digest, "same commit, same settings, same bytes");
    assert_eq!(
        std::fs::read(bundle).unwrap(),
        std::fs::read(dir.path().join("rebuilt").join(format!("{digest}.tar.gz"))).unwrap()
    );
}
