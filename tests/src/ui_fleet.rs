//! A small fleet for the dashboard tests: a Git repository with one ConfigMap, a hub with a
//! viewer token and a channel `demo` whose rollout plan soaks an hour at the canary
//! (`shop-0`), and one agent (dir target, drift checked every second) per region given. The
//! first generation is rolled out to every site (the canary's soak promoted past) before it
//! is returned.

use std::path::PathBuf;
use std::time::Duration;

use crate::GitRepo;
use crate::agent::{AgentProcess, wait_for, write_config};
use crate::hub::HubProcess;

/// The viewer token the hub is given.
pub const VIEWER_TOKEN: &str = "viewer-token-for-tests-0123456789";

/// The channel's manifest at a version.
pub fn configmap(version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app, namespace: demo}}\ndata: {{version: {version}}}\n"
    )
}

/// The fleet (dropping it stops everything).
pub struct UiFleet {
    /// The fleet repository.
    pub repo: GitRepo,
    /// The hub.
    pub hub: HubProcess,
    /// Each site's `dir` target folder and agent, `shop-0` first.
    pub sites: Vec<(PathBuf, AgentProcess)>,
    _tmp: tempfile::TempDir,
}

impl UiFleet {
    /// Starts it: one site per region (`shop-0` …), self-heal as given.
    pub fn start(regions: &[&str], self_heal: bool) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = GitRepo::init(&tmp.path().join("fleet"));
        repo.write("apps/app.yaml", configmap("v1"));
        repo.commit_all("v1");
        std::fs::write(tmp.path().join("viewer.token"), VIEWER_TOKEN).expect("viewer token");
        let config = format!(
            "dashboard: {{viewer_token_file: {}}}\nrepos:\n  - {{name: fleet, url: \"{}\", poll: 1s}}\nchannels:\n  - name: demo\n    repo: fleet\n    branch: main\n    path: apps\n    targets: {{labels: {{tier: shop}}}}\n    rollout: {{steps: [{{name: canary, clusters: [shop-0], soak: 1h}}, {{name: rest}}]}}\n",
            tmp.path().join("viewer.token").display(),
            repo.path().display()
        );
        let hub = HubProcess::start(&tmp.path().join("hub"), &config);
        let mut sites = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            let name = format!("shop-{i}");
            let token = hub.add_cluster(&name, &["tier=shop", &format!("region={region}")]);
            let out = tmp.path().join(format!("{name}-out"));
            let config = write_config(
                &tmp.path().join(&name),
                &name,
                &hub.public_key(),
                &format!("dir:{}", out.display()),
                &format!(
                    "hub: {}\ntoken: {token}\ndrift_interval: 1s\nself_heal: {self_heal}\n",
                    hub.url()
                ),
            );
            sites.push((out, AgentProcess::start(&config)));
        }
        let fleet = Self {
            repo,
            hub,
            sites,
            _tmp: tmp,
        };
        let wait = Duration::from_secs(45);
        // The first generation rolls out through the plan too: the canary, then (promoted
        // past its hour of soak) the rest.
        assert!(
            wait_for(wait, || fleet.file(0).exists()),
            "{}",
            fleet.sites[0].1.log()
        );
        assert!(
            regions.len() < 2 || !fleet.file(1).exists(),
            "the rest waits for the canary's soak"
        );
        assert!(wait_for(wait, || fleet
            .hub
            .admin(&["rollout", "status", "demo"])
            .success()
            .stdout
            .contains("soaking until")));
        fleet.hub.admin(&["rollout", "promote", "demo"]).success();
        assert!(wait_for(wait, || (0..regions.len()).all(|i| fleet.file(i).exists())));
        fleet
    }

    /// The file site `i` holds the channel's ConfigMap in.
    pub fn file(&self, i: usize) -> PathBuf {
        self.sites[i].0.join("demo/demo/configmap.app.yaml")
    }

    /// The rollout's phase, as `skiff-hub rollout status` says it.
    pub fn phase(&self) -> serde_json::Value {
        let out = self
            .hub
            .admin(&["rollout", "status", "demo", "--output", "json"])
            .success()
            .stdout;
        serde_json::from_str::<serde_json::Value>(&out).expect("json")[0]["phase"].clone()
    }
}
