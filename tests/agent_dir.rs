//! The agent with the `dir` target, as a real process: imports, rejections, the hub flow,
//! outages and restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_tests::agent::{AgentProcess, agent, wait_for, write_config};
use skiff_tests::hub::HubProcess;
use skiff_tests::{GitRepo, examples_dir, run_bin};

const WAIT: Duration = Duration::from_secs(30);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    run_bin("skiff-hub", &["keygen", "--out", s(dir)]).success();
    (dir.join("signing.pem"), dir.join("signing.pub.pem"))
}

#[test]
fn import_applies_verifies_prunes_and_refuses_tampered_and_replayed_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keys(&tmp.path().join("keys"));
    let target = tmp.path().join("manifests");
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &public,
        &format!("dir:{}", target.display()),
        "channels: {demo: {}}\n",
    );
    let out = tmp.path().join("out");

    let apps = tmp.path().join("apps");
    skiff_tests::copy_tree(&examples_dir().join("apps"), &apps);
    let (b1, e1) = skiff_tests::build_bundle(&apps, &key, &out, "demo", 1);
    let run = agent(&["import", "--config", s(&config), s(&b1), s(&e1)]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let deploy = target.join("demo/demo/deployment.web.yaml");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&deploy).unwrap()).unwrap();
    assert_eq!(v["metadata"]["labels"]["skiff.dev/channel"], "demo");
    assert_eq!(
        v["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"],
        420
    );
    assert!(target.join("demo/_cluster/namespace.demo.yaml").exists());
    assert!(
        target
            .join("demo/_cluster/customresourcedefinition.widgets.example.skiff.dev.yaml")
            .exists()
    );
    assert!(target.join("demo/demo/widget.sample.yaml").exists());

    let again = agent(&["import", "--config", s(&config), s(&b1), s(&e1)]);
    assert!(again.stdout.contains("already applied"), "{}", again.stdout);

    // Generation 2 without the Service: its file is pruned.
    std::fs::remove_file(apps.join("web/service.yaml")).unwrap();
    let (b2, e2) = skiff_tests::build_bundle(&apps, &key, &out, "demo", 2);
    agent(&["import", "--config", s(&config), s(&b2), s(&e2)]).success();
    assert!(!target.join("demo/demo/service.web.yaml").exists(), "pruned");
    assert!(deploy.exists());

    // Replaying generation 1 is refused; nothing changes.
    let replay = agent(&["import", "--config", s(&config), s(&b1), s(&e1)]);
    assert_eq!(replay.code, Some(1));
    assert!(
        replay.stderr.contains("older than the accepted generation 2"),
        "{}",
        replay.stderr
    );
    assert!(!target.join("demo/demo/service.web.yaml").exists());

    // A tampered bundle is refused.
    let (b3, e3) = skiff_tests::build_bundle(&examples_dir().join("apps"), &key, &out, "demo", 3);
    let mut bytes = std::fs::read(&b3).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x40;
    std::fs::write(&b3, bytes).unwrap();
    let tampered = agent(&["import", "--config", s(&config), s(&b3), s(&e3)]);
    assert_eq!(tampered.code, Some(1));
    assert!(tampered.stderr.contains("sha256"), "{}", tampered.stderr);
    // Signed by someone else: refused.
    let (other_key, _) = keys(&tmp.path().join("other"));
    let (b4, e4) = skiff_tests::build_bundle(&examples_dir().join("apps"), &other_key, &out, "demo", 4);
    let wrong = agent(&["import", "--config", s(&config), s(&b4), s(&e4)]);
    assert!(wrong.stderr.contains("valid signature"), "{}", wrong.stderr);
    assert!(
        !target.join("demo/demo/service.web.yaml").exists(),
        "last good state kept"
    );

    // Status, offline, from the store; and the rejections wait as reports.
    let status = agent(&["status", "--config", s(&config), "--output", "json"]).success();
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(st["channels"]["demo"]["applied"]["generation"], 2);
    assert_eq!(st["channels"]["demo"]["applied"]["ok"], true);
    let export = tmp.path().join("reports.json");
    agent(&["report", "export", "--config", s(&config), "--out", s(&export)]).success();
    let reports: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let outcomes: Vec<&str> = reports["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["applied", "applied", "rejected", "rejected", "rejected"]
    );

    // Drift in a folder: an edited and a deleted file, reported, then healed.
    std::fs::write(&deploy, "{}\n").unwrap();
    std::fs::remove_file(target.join("demo/demo/configmap.web-config.yaml")).unwrap();
    let found = agent(&["check", "--config", s(&config), "--no-heal", "--output", "json"]).success();
    let found: serde_json::Value = serde_json::from_str(&found.stdout).unwrap();
    let kinds: Vec<&str> = found["demo"]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{found}");
    assert!(
        kinds.contains(&"modified") && kinds.contains(&"missing"),
        "{kinds:?}"
    );
    agent(&["check", "--config", s(&config), "--heal"]).success();
    let healed: serde_json::Value = serde_json::from_slice(&std::fs::read(&deploy).unwrap()).unwrap();
    assert_eq!(healed["kind"], "Deployment");
    assert!(target.join("demo/demo/configmap.web-config.yaml").exists());
}

#[test]
fn hub_to_agent_with_outage_restart_and_reports_delivered_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    repo.copy_dir(&examples_dir().join("apps"), "apps");
    repo.commit_all("fleet");
    let mut hub = HubProcess::start(
        &tmp.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"{}\", poll: 1s}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: apps, namespace: demo, targets: {{labels: {{env: dev}}}}}}\n",
            repo.path().display()
        ),
    );
    let token = hub.add_cluster("edge-1", &["env=dev"]);
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let target = tmp.path().join("manifests");
    let metrics_port = skiff_tests::hub::free_port();
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &hub.public_key(),
        &format!("dir:{}", target.display()),
        &format!(
            "hub: {}\ntoken_file: {}\nlisten: 127.0.0.1:{metrics_port}\n",
            hub.url(),
            token_file.display()
        ),
    );
    let mut agent_proc = AgentProcess::start(&config);
    let cm = target.join("demo/demo/configmap.web-config.yaml");
    assert!(
        wait_for(WAIT, || cm.exists()),
        "agent log:\n{}\nhub log:\n{}",
        agent_proc.log(),
        hub.log()
    );

    // A commit rolls out.
    repo.write(
        "apps/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n",
    );
    repo.commit_all("extra");
    let extra = target.join("demo/demo/configmap.extra.yaml");
    assert!(wait_for(WAIT, || extra.exists()), "{}", agent_proc.log());
    // The hub's own history is the truth (status.json is rewritten at most every 2 s).
    let history = |hub: &HubProcess| {
        let hist = std::process::Command::new("curl")
            .args(["-sf", "-H", &format!("Authorization: Bearer {}", hub.admin_token)])
            .arg(format!("{}/v1/admin/clusters/edge-1/reports", hub.url()))
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&hist.stdout).unwrap_or_default()
    };
    // The file shows up while the apply is still writing: wait for the apply to finish (its
    // report reaches the hub) before pulling the plug, or the restart re-applies it instead.
    assert!(
        wait_for(WAIT, || history(&hub).len() >= 2),
        "{:?}\n{}",
        history(&hub),
        agent_proc.log()
    );

    // Hub down: the agent keeps its state; a restart re-applies from the store.
    hub.kill();
    std::fs::remove_file(&extra).unwrap();
    agent_proc.kill();
    agent_proc.spawn();
    assert!(
        wait_for(WAIT, || extra.exists()),
        "re-applied from the store without a hub:\n{}",
        agent_proc.log()
    );
    // Reports queue meanwhile (at least the re-apply's).
    let status = || {
        let r = agent(&[
            "status",
            "--data-dir",
            s(&tmp.path().join("agent/data")),
            "--output",
            "json",
        ]);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap_or_default()
    };
    assert!(
        wait_for(WAIT, || status()["outbox"].as_u64().unwrap_or(0) >= 1),
        "{:?}",
        status()
    );

    // Hub back: every queued report arrives, once, in order.
    hub.spawn();
    assert!(
        wait_for(WAIT, || history(&hub).len() >= 3 && status()["outbox"] == 0),
        "{:?}\n{}",
        history(&hub),
        agent_proc.log()
    );
    let reports = history(&hub);
    let seqs: Vec<u64> = reports.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order, each once: {seqs:?}");
    assert!(seqs.len() >= 3, "{seqs:?}");
    let state = hub.admin(&["status", "--output", "json"]).success().stdout;
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(
        state["clusters"][0]["channels"][0]["appliedGeneration"], 2,
        "{state}"
    );
    assert!(agent_proc.running());

    // The agent's own listener: health and metrics.
    let get = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{metrics_port}{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("/healthz").trim(), "ok");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("skiff_agent_channel_generation{channel=\"demo\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("skiff_agent_outbox_reports 0"), "{metrics}");
    skiff_tests::assert_exposition_is_grouped(&metrics);
    assert!(
        metrics.contains("skiff_agent_last_hub_contact_timestamp_seconds "),
        "{metrics}"
    );
    assert!(metrics.contains("skiff_agent_drift_detected_total "), "{metrics}");
}
