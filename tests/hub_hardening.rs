//! What a committer of any followed repository, or a stranger on the network, can make the
//! hub do: each test drives the real `skiff-hub` binary.

use std::path::Path;
use std::time::Duration;

use skiff_tests::cluster::{eventually, install_crypto};
use skiff_tests::hub::HubProcess;
use skiff_tests::{GitRepo, run_bin};

const WAIT: Duration = Duration::from_secs(20);

/// A commit whose root tree holds a kustomization and an entry named `..` (a tree holding
/// `escaped.txt`), made with `git mktree` as an attacker would: `git add` cannot.
fn dotdot_commit(repo: &GitRepo) -> String {
    let blob = |content: &str| {
        let path = repo.path().join(".blob");
        std::fs::write(&path, content).unwrap();
        let oid = repo.git(&["hash-object", "-w", ".blob"]);
        std::fs::remove_file(path).unwrap();
        oid
    };
    let evil = blob("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: escaped}\n");
    let kustomization = blob("resources: []\n");
    let mktree = |listing: String| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .arg("mktree")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(listing.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let inner = mktree(format!("100644 blob {evil}\tescaped.yaml\n"));
    let root = mktree(format!(
        "100644 blob {kustomization}\tkustomization.yaml\n040000 tree {inner}\t..\n"
    ));
    let commit = repo.git(&["commit-tree", "-m", "dotdot", &root]);
    repo.git(&["update-ref", "refs/heads/main", &commit]);
    commit
}

#[test]
fn a_dotdot_tree_entry_is_refused_by_bundle_build_and_writes_nothing_outside() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("repo"));
    dotdot_commit(&repo);
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    run_bin(
        "skiff-hub",
        &["keygen", "--out", &dir.path().join("keys").display().to_string()],
    )
    .success();
    for render in ["kustomize", "plain"] {
        let out = std::process::Command::new(skiff_tests::bin("skiff-hub"))
            .args(["bundle", "build", "--repo"])
            .arg(repo.path())
            .args([
                "--rev",
                "main",
                "--channel",
                "low",
                "--generation",
                "1",
                "--render",
                render,
                "--key",
            ])
            .arg(dir.path().join("keys/signing.pem"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .env("TMPDIR", &tmp)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{render}: a `..` entry must fail the build"
        );
        assert!(
            stderr.contains("\"../escaped.yaml\"") && stderr.contains("not a safe path"),
            "{render}: {stderr}"
        );
        assert_no_escape(&tmp);
    }
}

fn assert_no_escape(tmp: &Path) {
    assert!(
        !tmp.join("escaped.yaml").exists(),
        "a file was written outside the render folder"
    );
    assert!(!tmp.parent().unwrap().join("escaped.yaml").exists());
}

/// The demonstrated attack: one push to a low-privilege repository must not reach another
/// repository's mirror (or anything outside the render folder). The fetch itself refuses
/// the objects (fsck), and the prod channel goes on building.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_dotdot_tree_never_leaves_the_render_folder() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let prod = GitRepo::init(&dir.path().join("prod"));
    prod.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    prod.commit_all("prod");
    let low = GitRepo::init(&dir.path().join("low"));
    dotdot_commit(&low);
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let hub = HubProcess::start_with_env(
        &dir.path().join("hub"),
        &format!(
            "repos:\n  - {{name: prod, url: \"file://{}\", poll: 1s}}\n  - {{name: low, url: \"file://{}\", poll: 1s}}\nchannels:\n  - {{name: prod, repo: prod, branch: main, path: apps, targets: {{clusters: [a]}}}}\n  - {{name: low, repo: low, branch: main, path: \"\", targets: {{clusters: [a]}}}}\n",
            prod.path().display(),
            low.path().display()
        ),
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let prod_config = hub.dir.join("data/git/prod.git/config");
    let refused = eventually(WAIT, || async { hub.log().contains("hasDotdot") }).await;
    assert!(
        refused,
        "the fetch of the low repository must be refused:\n{}",
        hub.log()
    );
    let http = reqwest::Client::new();
    let generation = |name: &'static str| {
        let (http, url, token) = (http.clone(), hub.url(), hub.admin_token.clone());
        async move {
            let list: serde_json::Value = http
                .get(format!("{url}/v1/admin/channels"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list.as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .and_then(|c| c["generation"].as_u64())
                .unwrap_or(0)
        }
    };
    assert!(
        eventually(WAIT, || async { generation("prod").await == 1 }).await,
        "prod builds on:\n{}",
        hub.log()
    );
    assert_eq!(
        generation("low").await,
        0,
        "nothing of the crafted commit is signed"
    );
    let prod_mirror = std::fs::read_to_string(&prod_config).unwrap();
    assert!(!prod_mirror.contains("insteadOf"), "{prod_mirror}");
    assert_no_escape(&tmp);
    assert!(!hub.dir.join("data/escaped.yaml").exists());
}

fn example_repo(dir: &Path) -> GitRepo {
    let repo = GitRepo::init(dir);
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.commit_all("example fleet");
    repo
}

fn channels(repo: &GitRepo, extra: &str) -> String {
    format!(
        "repos:\n  - {{name: fleet, url: \"file://{}\", poll: 1h}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: apps, targets: {{clusters: [edge-1]}}}}\n  - {{name: other, repo: fleet, branch: main, path: apps, targets: {{clusters: [nobody]}}}}\n{extra}",
        repo.path().display()
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads from a raw socket until EOF or `limit`; true when the hub closed it.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read as _;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Finding 4: idle sockets, dripping heads and one address's many connections cannot lock
/// agents out.
#[test]
fn connections_are_capped_per_address_and_in_time() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &channels(
            &repo,
            "limits: {max_connections_per_address: 20, first_byte_timeout: 1s, head_timeout: 2s}\n",
        ),
    );
    let addr = ("127.0.0.1", hub.port);
    // Twenty idle sockets from one address hold its share; the next is closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut extra = std::net::TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_millis(500)),
        "over the per-address cap"
    );
    // Another address is served meanwhile (127.0.0.2 is loopback too).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let other = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket
            .connect(format!("127.0.0.1:{}", hub.port).parse().unwrap())
            .await
    });
    let mut other = other.expect("another address connects").into_std().unwrap();
    other.set_nonblocking(false).unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    use std::io::Read as _;
    other.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    other.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Idle sockets are closed after the first-byte wait.
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(5)),
        "an idle socket is closed"
    );
    drop(idle);
    // A head dripped a byte at a time is cut at the head deadline, not per read.
    let mut drip = std::net::TcpStream::connect(addr).unwrap();
    let started = std::time::Instant::now();
    let request = b"GET /v1/clusters/edge-1/desired HTTP/1.1\r\nhost: x\r\n";
    let mut cut = false;
    for b in request.iter().cycle().take(200) {
        if drip.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let cut = cut || closed_within(&mut drip, Duration::from_secs(3));
    assert!(
        cut && started.elapsed() < Duration::from_secs(9),
        "a dripping head is cut"
    );
}

/// Finding 5: reports only for the cluster's channels, within size and count caps, stored
/// apart from the cluster record; a re-import never reverts the latest status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_bounded_and_only_for_the_clusters_channels() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let hub = HubProcess::start(&dir.path().join("hub"), &channels(&repo, ""));
    let token = hub.add_cluster("edge-1", &[]);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let (http, url, token) = (
            http.clone(),
            format!("{}/v1/clusters/edge-1/reports", hub.url()),
            token.clone(),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let report = |seq: u64, channel: &str, time: &str, message: String| {
        serde_json::json!({"instance": "i-1", "seq": seq, "time": time, "agentVersion": "t",
            "channel": channel, "outcome": "applied", "generation": 1, "message": message})
    };
    let (code, ack) = post(serde_json::json!([
        report(1, "demo", "2026-11-29T10:00:00Z", "ok".into()),
        report(2, "other", "2026-11-29T10:00:01Z", "not mine".into()),
        report(3, "made-up", "2026-11-29T10:00:02Z", "not a channel".into()),
        report(4, "demo", "2026-11-29T10:00:03Z", "x".repeat(300 << 10)),
    ]))
    .await;
    assert_eq!(
        (code, ack),
        (
            200,
            serde_json::json!({"stored": 1, "duplicates": 0, "refused": 3})
        )
    );
    let many: Vec<_> = (10..111)
        .map(|i| report(i, "demo", "2026-11-29T11:00:00Z", "m".into()))
        .collect();
    let (code, _) = post(serde_json::Value::Array(many)).await;
    assert_eq!(code, 413, "more than 100 reports in one request");
    // A newer report, then an old one from another (wiped) agent store: status keeps the newer.
    post(serde_json::json!([report(
        5,
        "demo",
        "2026-11-29T12:00:00Z",
        "newest".into()
    )]))
    .await;
    let mut old = report(1, "demo", "2026-11-29T09:00:00Z", "older".into());
    old["instance"] = "i-0".into();
    let (_, ack) = post(serde_json::json!([old])).await;
    assert_eq!(ack["stored"], 1);
    let status = hub.admin(&["status", "--output", "json"]).success().stdout;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let demo = status["clusters"][0]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "demo")
        .unwrap()
        .clone();
    assert_eq!(demo["message"], "newest", "{status}");
    let channels: Vec<&str> = status["clusters"][0]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(
        channels,
        ["demo"],
        "nothing stored for channels the cluster does not run"
    );
}

/// Finding 9: a download streams from the blob file; ten stalled downloads of a 16 MB bundle
/// do not hold ten copies.
#[test]
fn stalled_downloads_do_not_hold_copies_of_the_bundle() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("fleet"));
    // Nearly incompressible content: three ConfigMaps of 7.8 MB of base64 each.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..3 {
        let mut raw = Vec::with_capacity(5_850_000);
        while raw.len() < 5_850_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            raw.extend_from_slice(&seed.to_le_bytes());
        }
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(raw);
        repo.write(
            &format!("apps/big-{i}.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big-{i}, namespace: demo}}\ndata:\n  blob: \"{data}\"\n"),
        );
    }
    repo.commit_all("big");
    let hub = HubProcess::start(&dir.path().join("hub"), &channels(&repo, ""));
    let token = hub.add_cluster("edge-1", &[]);
    let url = hub.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let desired = rt.block_on(async {
        install_crypto();
        let http = reqwest::Client::new();
        let mut tries = 0;
        loop {
            let d: serde_json::Value = http
                .get(format!("{url}/v1/clusters/edge-1/desired"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !d["channels"].as_array().unwrap().is_empty() || tries > 200 {
                return d;
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let bundle_url = desired["channels"][0]["bundleUrl"]
        .as_str()
        .expect("built")
        .to_owned();
    let size = desired["channels"][0]["size"].as_u64().unwrap();
    assert!(size > 15_000_000, "bundle of {size} bytes");
    let pid = hub.pid();
    let before = rss_kib(pid);
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
        s.write_all(
            format!(
                "GET {bundle_url} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
                hub.admin_token
            )
            .as_bytes(),
        )
        .unwrap();
        let mut first = [0u8; 1];
        s.read_exact(&mut first).unwrap();
        stalled.push(s); // never read further
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    println!("hub RSS {before} KiB -> {after} KiB with 10 stalled downloads of {size} bytes");
    assert!(
        grown_mib < 40,
        "hub grew {grown_mib} MiB holding 10 stalled downloads"
    );
}

/// Finding 11: the small holes, each against the real hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_secrets_metrics_and_headers_are_checked_everywhere() {
    use hmac::{KeyInit, Mac};
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let secret = dir.path().join("hook.secret");
    let metrics_token = dir.path().join("metrics.token");
    std::fs::write(&metrics_token, "metrics-token-0123456789").unwrap();

    // A short webhook secret is refused at start, naming the key.
    std::fs::write(&secret, "short").unwrap();
    let short = std::panic::catch_unwind(|| {
        HubProcess::start(
            &dir.path().join("bad"),
            &channels(&repo, "").replace(
                "poll: 1h}",
                &format!("poll: 1h, webhook_secret_file: {}}}", secret.display()),
            ),
        )
    });
    let message = short
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .map(|m| *m)
        .unwrap_or_default();
    assert!(
        message.contains("webhook_secret_file") && message.contains("at least 16"),
        "{message}"
    );

    std::fs::write(&secret, "hook-secret-0123456789").unwrap();
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &channels(
            &repo,
            &format!("metrics: {{token_file: {}}}\n", metrics_token.display()),
        )
        .replace(
            "poll: 1h}",
            &format!("poll: 1h, webhook_secret_file: {}}}", secret.display()),
        ),
    );
    let token = hub.add_cluster("edge-1", &[]);
    let http = reqwest::Client::new();
    let url = hub.url();

    // /metrics needs its token (or the admin token); per-cluster series are off by default.
    let metrics = |bearer: Option<&str>| {
        let mut r = http.get(format!("{url}/metrics"));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        r.send()
    };
    assert_eq!(metrics(None).await.unwrap().status(), 401);
    let m = metrics(Some("metrics-token-0123456789")).await.unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(
        text.contains("skiff_hub_connections_open") && !text.contains("cluster=\""),
        "{text}"
    );
    assert_eq!(metrics(Some(&hub.admin_token)).await.unwrap().status(), 200);

    // More than one Authorization header: 400 on the direct path and through the router.
    for path in ["/v1/clusters/edge-1/desired", "/v1/admin/status"] {
        let r = http
            .get(format!("{url}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .header("authorization", format!("Bearer {}", hub.admin_token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }

    // A replayed webhook delivery does nothing.
    let body = br#"{"ref": "refs/heads/main"}"#;
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"hook-secret-0123456789").unwrap();
    mac.update(body);
    let sig = format!(
        "sha256={}",
        skiff_proto::digest::hex(&mac.finalize().into_bytes())
    );
    let hook = || {
        http.post(format!("{url}/v1/hooks/git/fleet"))
            .header("x-hub-signature-256", &sig)
            .header("x-github-delivery", "d-1")
            .body(body.to_vec())
            .send()
    };
    assert_eq!(hook().await.unwrap().status(), 202);
    let replay: serde_json::Value = hook().await.unwrap().json().await.unwrap();
    assert_eq!(replay["duplicate"], true, "{replay}");

    // A token rotated while its long-poll waits: the poll ends with 401.
    // Once the channel is built (nothing else changes the answer after that) …
    let built = eventually(WAIT, || async {
        let d: serde_json::Value = http
            .get(format!("{url}/v1/clusters/edge-1/desired"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        !d["channels"].as_array().unwrap().is_empty()
    })
    .await;
    assert!(built, "{}", hub.log());
    let etag = {
        let r = http
            .get(format!("{url}/v1/clusters/edge-1/desired"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        r.headers()["etag"].to_str().unwrap().to_owned()
    };
    let poll = tokio::spawn({
        let (http, url, token, etag) = (http.clone(), url.clone(), token.clone(), etag.clone());
        async move {
            http.get(format!("{url}/v1/clusters/edge-1/desired?wait=60"))
                .bearer_auth(token)
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.admin(&["cluster", "rotate-token", "edge-1"]).success();
    let status = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 401);
}

/// Finding 11: the admin token has the same minimum length from every source.
#[test]
fn a_short_admin_token_is_refused_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let repo = example_repo(&dir.path().join("fleet"));
    let hub = std::panic::catch_unwind(|| {
        HubProcess::start_with_env(
            &dir.path().join("hub"),
            &channels(&repo, ""),
            &[("SKIFF_HUB_ADMIN_TOKEN", "short")],
        )
    });
    let message = hub
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .map(|m| *m)
        .unwrap_or_default();
    assert!(
        message.contains("admin_token") && message.contains("at least 16"),
        "{message}"
    );
}
