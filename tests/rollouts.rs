//! Staged rollouts with real processes: a hub following a Git repository made with the `git`
//! CLI, nine agents (dir target), a site hold, a maintenance window judged by an agent's own
//! (test-set) clock and lifted by an emergency override, and an agent offline for a whole
//! rollout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_tests::agent::{AgentProcess, agent, wait_for, write_config};
use skiff_tests::hub::HubProcess;

const WAIT: Duration = Duration::from_secs(45);

/// The channel's manifests at a version; with a migration Job whose status comes from the
/// site's `job_state` value (default Complete), or a fixed one.
fn manifests(version: &str, job: Option<&str>) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app, namespace: shop}}\ndata: {{version: {version}}}\n"
    );
    if let Some(state) = job {
        out.push_str(&format!(
            "---\napiVersion: batch/v1\nkind: Job\nmetadata: {{name: migrate, namespace: shop}}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: m, image: busybox}}]\nstatus:\n  conditions:\n    - {{type: \"{state}\", status: \"True\"}}\n"
        ));
    }
    out
}

fn version(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join("shops/shop/configmap.app.yaml")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok().or_else(|| {
        skiff_proto::manifest::parse_yaml("cm", &text)
            .ok()
            .map(|d| d[0].value.clone())
    })?;
    v["data"]["version"].as_str().map(str::to_owned)
}

fn rollout(hub: &HubProcess) -> serde_json::Value {
    let out = hub
        .admin(&["rollout", "status", "shops", "--output", "json"])
        .success()
        .stdout;
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

struct Site {
    name: String,
    out: PathBuf,
    data: PathBuf,
    process: AgentProcess,
}

#[test]
fn a_three_step_rollout_halts_on_a_degraded_site_and_completes_after_a_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("fleet"));
    repo.write("shops/app.yaml", manifests("v1", None));
    repo.commit_all("v1");
    let clock = tmp.path().join("shop-7.clock");
    // Inside shop-7's window (03:00–04:00 UTC) for the first generation.
    std::fs::write(&clock, "2026-11-30T03:30:00Z").unwrap();
    let config = format!(
        "offline_after: 3s
repos:
  - {{name: fleet, url: \"{}\", poll: 1s}}
channels:
  - name: shops
    repo: fleet
    branch: main
    path: shops
    substitute: true
    targets: {{labels: {{tier: shop}}}}
    rollout:
      steps:
        - {{name: canary, selector: {{wave: \"1\"}}, soak: 1s}}
        - {{name: wave-2, selector: {{wave: \"2\"}}, soak: 1s}}
        - {{name: rest, soak: 1s, max_offline: 3}}
maintenance_windows:
  - {{name: shop-7-night, clusters: [shop-7], time_zone: UTC, windows: [{{start: \"03:00\", duration: 1h}}]}}
",
        repo.path().display()
    );
    let hub = HubProcess::start(&tmp.path().join("hub"), &config);
    let mut sites: Vec<Site> = Vec::new();
    for i in 0..9 {
        let name = format!("shop-{i}");
        let wave = match i {
            0 => "wave=1",
            1..=4 => "wave=2",
            _ => "wave=3",
        };
        let token = hub.add_cluster(&name, &["tier=shop", wave]);
        let dir = tmp.path().join(&name);
        let out = tmp.path().join(format!("{name}-out"));
        let config = write_config(
            &dir,
            &name,
            &hub.public_key(),
            &format!("dir:{}", out.display()),
            &format!("hub: {}\ntoken: {token}\n", hub.url()),
        );
        let clock_env = clock.display().to_string();
        let env: Vec<(&str, &str)> = if i == 7 {
            vec![("SKIFF_AGENT_WINDOW_CLOCK_FILE", clock_env.as_str())]
        } else {
            vec![]
        };
        sites.push(Site {
            name,
            out,
            data: dir.join("data"),
            process: AgentProcess::start_with_env(&config, &env),
        });
    }
    // shop-4's migration fails (its own value makes its Job report Failed).
    hub.admin(&["cluster", "set-values", "shop-4", "job_state=Failed"])
        .success();
    let all_at = |v: &str, sites: &[Site]| sites.iter().all(|s| version(&s.out).as_deref() == Some(v));
    assert!(
        wait_for(WAIT, || all_at("v1", &sites)
            && rollout(&hub)["phase"] == "complete"),
        "{}\n{}",
        rollout(&hub),
        hub.log()
    );

    // Before the next commit: shop-8 goes away, shop-6 holds, shop-7's clock leaves its window.
    sites[8].process.kill();
    agent(&[
        "hold",
        "--data-dir",
        sites[6].data.to_str().unwrap(),
        "--reason",
        "stocktaking",
    ])
    .success();
    std::fs::write(&clock, "2026-11-30T12:00:00Z").unwrap();
    assert!(wait_for(WAIT, || {
        let s = hub
            .admin(&["status", "shop-8", "--output", "json"])
            .success()
            .stdout;
        serde_json::from_str::<serde_json::Value>(&s).unwrap()["offline"] == true
    }));

    // Generation 2 adds the migration: the canary is fine, shop-4 in step 2 is Degraded.
    repo.write("shops/app.yaml", manifests("v2", Some("${job_state:=Complete}")));
    repo.commit_all("v2 with a migration");
    assert!(
        wait_for(WAIT, || rollout(&hub)["phase"] == "halted"),
        "{}\n{}",
        rollout(&hub),
        hub.log()
    );
    let r = rollout(&hub);
    assert_eq!(
        (r["generation"].as_u64(), r["step"].as_u64()),
        (Some(2), Some(2)),
        "{r}"
    );
    let failed = r["failed"].to_string();
    assert!(
        failed.contains("shop-4: Degraded") && failed.contains("job failed"),
        "{r}"
    );
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("1 of 4 clusters of wave-2 failed"),
        "{r}"
    );
    for s in &sites[..4] {
        assert!(
            wait_for(WAIT, || version(&s.out).as_deref() == Some("v2")),
            "{}",
            s.name
        );
    }
    let metrics = curl_get(&format!("{}/metrics", hub.url()));
    assert!(
        metrics.contains("skiff_hub_rollout_step{channel=\"shops\",generation=\"2\",phase=\"halted\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("skiff_hub_rollout_clusters{channel=\"shops\",state=\"failed\"} 1"));
    // Halted: step 3 never moves, however long it waits.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(version(&sites[5].out).as_deref(), Some("v1"));
    assert_eq!(rollout(&hub)["phase"], "halted");

    // Abort; promote and resume are refused now; publish a fix.
    let text = hub.admin(&["rollout", "abort", "shops"]).success().stdout;
    assert!(text.contains("aborted"), "{text}");
    let refused = hub.admin(&["rollout", "promote", "shops"]);
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("newer generation"), "{}", refused.stderr);
    repo.write("shops/app.yaml", manifests("v3", Some("Complete")));
    repo.commit_all("v3: the migration fixed");
    assert!(
        wait_for(WAIT, || {
            let r = rollout(&hub);
            r["generation"] == 3 && r["phase"] == "complete"
        }),
        "{}\n{}",
        rollout(&hub),
        hub.log()
    );
    for s in &sites[..6] {
        assert!(
            wait_for(WAIT, || version(&s.out).as_deref() == Some("v3")),
            "{}\n{}",
            s.name,
            s.process.log()
        );
    }
    // Completed within max_offline: held, waiting and offline sites are left behind, named.
    let r = rollout(&hub);
    assert_eq!(
        (
            r["counts"]["held"].as_u64(),
            r["counts"]["waiting"].as_u64(),
            r["counts"]["offline"].as_u64(),
            r["behind"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(3)),
        "{r}"
    );
    assert_eq!(
        r["behindClusters"],
        serde_json::json!(["shop-6", "shop-7", "shop-8"])
    );
    assert_eq!(version(&sites[6].out).as_deref(), Some("v1"), "held");
    assert_eq!(
        version(&sites[7].out).as_deref(),
        Some("v1"),
        "outside its window"
    );
    let status = hub.admin(&["status"]).success().stdout;
    assert!(
        status.contains("waiting for window (next: 2026-12-01T03:00:00Z"),
        "{status}"
    );
    assert!(
        status.contains("held on the site since") && status.contains("stocktaking"),
        "{status}"
    );
    assert!(
        status.contains("rollout shops: generation 3 complete"),
        "{status}"
    );
    let local = agent(&["status", "--data-dir", sites[6].data.to_str().unwrap()])
        .success()
        .stdout;
    assert!(
        local.contains("HELD since") && local.contains("generation 3 verified, waiting"),
        "{local}"
    );

    // They catch up: the hold is lifted, an emergency override opens shop-7's window (signed
    // into its assignment; its clock still says noon), the offline site returns.
    agent(&["release", "--data-dir", sites[6].data.to_str().unwrap()]).success();
    let text = hub
        .admin(&["cluster", "apply-now", "shop-7", "--for", "1h"])
        .success()
        .stdout;
    assert!(text.contains("overridden until"), "{text}");
    sites[8].process.spawn();
    for s in &sites[6..] {
        assert!(
            wait_for(WAIT, || version(&s.out).as_deref() == Some("v3")),
            "{}\n{}",
            s.name,
            s.process.log()
        );
    }
    assert!(
        wait_for(WAIT, || {
            let r = rollout(&hub);
            r["behind"] == 0 && r["counts"]["done"] == 9
        }),
        "{}",
        rollout(&hub)
    );
}

fn curl_get(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
