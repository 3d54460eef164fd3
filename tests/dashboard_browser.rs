//! The dashboard in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver) against a real hub with real agents (dir target). Signs in, reads the fleet,
//! watches a hand edit appear as drift and be corrected, pauses and resumes a rollout from the
//! channel page, and checks that a viewer cannot act and that no request leaves the hub's
//! origin. Screenshots of each page land in `target/test-artifacts/`; with
//! `SKIFF_UPDATE_SCREENSHOT=1` the fleet page also replaces `docs/dashboard-fleet.png`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use skiff_tests::agent::wait_for;
use skiff_tests::hub::{HubProcess, free_port};
use skiff_tests::ui_fleet::{UiFleet, VIEWER_TOKEN, configmap};

const WAIT: Duration = Duration::from_secs(45);

/// chromedriver, killed on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> PathBuf {
    let dir = skiff_tests::workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls the page source until it holds `needle` (bounded).
async fn wait_text(c: &fantoccini::Client, needle: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if c.source().await.is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

async fn shot(c: &fantoccini::Client, name: &str) -> PathBuf {
    let path = artifacts().join(format!("dashboard-{name}.png"));
    std::fs::write(&path, c.screenshot().await.unwrap()).unwrap();
    path
}

async fn sign_in(c: &fantoccini::Client, hub: &HubProcess, token: &str) {
    c.goto(&format!("{}/ui", hub.url())).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(wait_text(c, "Clusters by state").await);
}

fn start_driver() -> Option<(Driver, u16)> {
    let (Ok(_), Ok(_)) = (which("chromium"), which("chromedriver")) else {
        eprintln!(
            "SKIPPED dashboard browser test: chromium and chromedriver are not installed (.ci/run installs Debian's chromium and chromium-driver)"
        );
        return None;
    };
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    assert!(
        wait_for(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "chromedriver did not listen"
    );
    Some((driver, port))
}

fn which(cmd: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .ok_or(())
}

async fn browser(port: u16, profile: &Path) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync",
                "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_watches_drift_corrected_and_steers_a_rollout() {
    let Some((_driver, port)) = start_driver() else {
        return;
    };
    let fleet = UiFleet::start(&["eu", "eu", "us"], true);
    let (hub, repo) = (&fleet.hub, &fleet.repo);
    let agents = &fleet.sites;
    let file = |i: usize| fleet.file(i);
    let viewer = VIEWER_TOKEN;

    let profile = tempfile::tempdir().unwrap();
    let c = browser(port, profile.path()).await;
    sign_in(&c, hub, &hub.admin_token).await;
    assert!(
        wait_text(&c, "state=synced\"><strong>3</strong>").await,
        "{}",
        c.source().await.unwrap()
    );
    let fleet_png = shot(&c, "fleet").await;
    if std::env::var_os("SKIFF_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(
            &fleet_png,
            skiff_tests::workspace_root().join("docs/dashboard-fleet.png"),
        )
        .unwrap();
    }
    // Every resource the page loaded came from the hub.
    let resources = c
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);",
            vec![],
        )
        .await
        .unwrap();
    let resources: Vec<String> = serde_json::from_value(resources).unwrap();
    assert!(resources.len() >= 3, "{resources:?}");
    for r in &resources {
        assert!(r.starts_with(&hub.url()), "{r} is not from the hub");
    }

    // A hand edit on shop-1: the cluster page shows it drifted and corrected (live updates).
    c.goto(&format!("{}/ui/clusters/shop-1", hub.url()))
        .await
        .unwrap();
    let text = std::fs::read_to_string(file(1)).unwrap();
    std::fs::write(file(1), text.replace("v1", "edited-by-hand")).unwrap();
    assert!(wait_text(&c, "edited-by-hand").await, "{}", agents[1].1.log());
    assert!(wait_text(&c, "corrected").await);
    assert!(
        std::fs::read_to_string(file(1)).unwrap().contains("v1"),
        "corrected on disk"
    );
    shot(&c, "cluster").await;

    // A new commit rolls out; it soaks at the canary; pause and resume from the page.
    repo.write("apps/app.yaml", configmap("v2"));
    repo.commit_all("v2");
    c.goto(&format!("{}/ui/channels/demo", hub.url())).await.unwrap();
    assert!(
        wait_text(&c, "soaking until").await,
        "{}",
        c.source().await.unwrap()
    );
    // The sites the rollout has not reached yet show as behind on the fleet page.
    c.goto(&format!("{}/ui?state=behind", hub.url())).await.unwrap();
    assert!(wait_text(&c, ">shop-2<").await, "{}", c.source().await.unwrap());
    let page = c.source().await.unwrap();
    assert!(page.contains(">shop-1<") && !page.contains(">shop-0<"), "{page}");
    c.goto(&format!("{}/ui/channels/demo", hub.url())).await.unwrap();
    c.find(Locator::Id("rollout-pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        wait_text(&c, "badge warn\">paused").await,
        "{}",
        c.source().await.unwrap()
    );
    assert_eq!(fleet.phase(), "paused");
    shot(&c, "channel").await;
    c.find(Locator::Id("rollout-resume"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(wait_text(&c, "badge ok\">running").await);
    assert_eq!(fleet.phase(), "running");

    // A viewer: the buttons are disabled, and the server refuses the action anyway.
    c.find(Locator::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(wait_text(&c, "Admin or viewer token").await);
    sign_in(&c, hub, viewer).await;
    c.goto(&format!("{}/ui/channels/demo", hub.url())).await.unwrap();
    let pause = c.find(Locator::Id("rollout-pause")).await.unwrap();
    assert!(
        pause.attr("disabled").await.unwrap().is_some(),
        "disabled for a viewer"
    );
    let status = c
        .execute_async(
            "const done = arguments[0]; const csrf = document.querySelector('input[name=csrf]').value; \
             fetch('/ui/channels/demo/rollout/pause', {method: 'POST', body: new URLSearchParams({csrf})}) \
               .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert_eq!(fleet.phase(), "running");
    shot(&c, "viewer").await;
    c.close().await.unwrap();
}
