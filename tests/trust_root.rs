//! The trust root with real processes: root keys kept apart from the hub (`skiff-hub root`
//! works on files), a fleet of agents that start from root version 1 (and one that starts
//! from plain trusted keys), a key rotation and a later revocation, online and across an air
//! gap, without any agent's config being touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_tests::agent::{AgentProcess, agent, wait_for, write_config};
use skiff_tests::hub::HubProcess;
use skiff_tests::run_bin;

const WAIT: Duration = Duration::from_secs(45);

fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    run_bin("skiff-hub", &["keygen", "--out", dir.to_str().unwrap()]).success();
    (dir.join("signing.pem"), dir.join("signing.pub.pem"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn cm(version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app, namespace: demo}}\ndata: {{version: {version}}}\n"
    )
}

fn version(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join("demo/demo/configmap.app.yaml")).ok()?;
    let doc = skiff_proto::manifest::parse_yaml("cm", &text).ok()?;
    doc[0].value["data"]["version"].as_str().map(str::to_owned)
}

fn root_version(data: &Path) -> Option<u64> {
    let out = agent(&["status", "--data-dir", s(data), "--output", "json"]);
    serde_json::from_str::<serde_json::Value>(&out.stdout).ok()?["trustRoot"]["version"].as_u64()
}

/// Points an agent config at a trust root instead of its key list.
fn use_root(config: &Path, root: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("trusted_keys:") {
                format!("trust_root: {}", root.display())
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(config, text.join("\n")).unwrap();
}

/// A repository holding `cm("v1")` under `apps/`, a hub serving `roots` with one channel
/// from it for `tier=shop`, and one site `shop-0` installed with root version 1. Returns
/// the repository, the hub, the site and its `dir` target folder.
fn one_site(
    tmp: &Path,
    roots: &Path,
    channel: &str,
) -> (skiff_tests::GitRepo, HubProcess, AgentProcess, PathBuf) {
    let repo = skiff_tests::GitRepo::init(&tmp.join("fleet"));
    repo.write("apps/app.yaml", cm("v1"));
    repo.commit_all("v1");
    let config = format!(
        "trust_root: {}\nrepos:\n  - {{name: fleet, url: \"{}\", poll: 1s}}\nchannels:\n  - {{name: {channel}, repo: fleet, branch: main, path: apps, namespace: demo, targets: {{labels: {{tier: shop}}}}}}\n",
        roots.display(),
        repo.path().display()
    );
    let hub_dir = tmp.join("hub");
    let hub = HubProcess::start(&hub_dir, &config);
    let token = hub.add_cluster("shop-0", &["tier=shop"]);
    let out = tmp.join("shop-0-out");
    let config = write_config(
        &tmp.join("shop-0"),
        "shop-0",
        &hub_dir.join("keys/signing.pub.pem"),
        &format!("dir:{}", out.display()),
        &format!("hub: {}\ntoken: {token}\n", hub.url()),
    );
    use_root(&config, &roots.join("1.root.json"));
    (repo, hub, AgentProcess::start(&config), out)
}

struct Site {
    name: String,
    out: PathBuf,
    data: PathBuf,
    process: Option<AgentProcess>,
}

fn export(hub: &HubProcess, site: &Site) {
    let import = site.out.with_file_name(format!("{}-import", site.name));
    hub.admin(&["export", "--cluster", &site.name, "--out", s(&import)])
        .success();
}

#[test]
fn a_fleet_rotates_and_revokes_the_hub_key_online_and_across_an_air_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r1_pub) = keygen(&tmp.path().join("root-1"));
    let (r2, r2_pub) = keygen(&tmp.path().join("root-2"));
    let hub_dir = tmp.path().join("hub");
    let (a, a_pub) = keygen(&hub_dir.join("keys"));
    let roots = tmp.path().join("roots");
    // Version 1: two root keys, both needed; the hub's key A signs. A signs the root too, so
    // an agent that trusts only A (before roots) takes it.
    run_bin(
        "skiff-hub",
        &[
            "root",
            "init",
            "--dir",
            s(&roots),
            "--root-key",
            s(&r1_pub),
            "--root-key",
            s(&r2_pub),
            "--root-threshold",
            "2",
            "--signer",
            s(&a_pub),
            "--sign",
            s(&r1),
            "--sign",
            s(&a),
        ],
    )
    .success();
    let shown = run_bin("skiff-hub", &["root", "show", s(&roots)])
        .success()
        .stdout;
    assert!(
        shown.contains("does not verify yet") && shown.contains("waits for 1 more"),
        "{shown}"
    );
    run_bin(
        "skiff-hub",
        &["root", "sign", s(&roots.join("1.root.json")), "--key", s(&r2)],
    )
    .success();
    let shown = run_bin("skiff-hub", &["root", "show", s(&roots)])
        .success()
        .stdout;
    assert!(
        shown.contains("version 1") && shown.contains("verifies"),
        "{shown}"
    );
    let root_v1 = tmp.path().join("root-v1.json");
    std::fs::copy(roots.join("1.root.json"), &root_v1).unwrap();

    let repo = skiff_tests::GitRepo::init(&tmp.path().join("fleet"));
    repo.write("apps/app.yaml", cm("v1"));
    repo.commit_all("v1");
    let config = format!(
        "trust_root: {}\nrepos:\n  - {{name: fleet, url: \"{}\", poll: 1s}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: apps, targets: {{labels: {{tier: shop}}}}}}\n",
        roots.display(),
        repo.path().display()
    );
    let mut hub = HubProcess::start(&hub_dir, &config);
    let mut sites = Vec::new();
    for (i, mode) in ["root", "root", "keys", "airgap"].iter().enumerate() {
        let name = format!("shop-{i}");
        let token = hub.add_cluster(&name, &["tier=shop"]);
        let dir = tmp.path().join(&name);
        let out = tmp.path().join(format!("{name}-out"));
        let import = tmp.path().join(format!("{name}-import"));
        let extra = match *mode {
            "airgap" => format!("import_dir: {}\n", import.display()),
            _ => format!("hub: {}\ntoken: {token}\n", hub.url()),
        };
        let config = write_config(&dir, &name, &a_pub, &format!("dir:{}", out.display()), &extra);
        if *mode != "keys" {
            // Installed with the root only: no key list at all.
            use_root(&config, &root_v1);
        }
        sites.push(Site {
            name,
            out,
            data: dir.join("data"),
            process: Some(AgentProcess::start(&config)),
        });
    }
    export(&hub, &sites[3]);
    for site in &sites {
        assert!(
            wait_for(WAIT, || version(&site.out).as_deref() == Some("v1")),
            "{}: {}",
            site.name,
            site.process.as_ref().unwrap().log()
        );
    }
    // The agent on plain keys took root 1, vouched for by the key it trusted.
    assert!(
        wait_for(WAIT, || root_version(&sites[2].data) == Some(1)),
        "{}",
        sites[2].process.as_ref().unwrap().log()
    );

    // Rotation, step 1: root 2 adds key B beside A (signed by both root keys, offline).
    let (b, b_pub) = keygen(&tmp.path().join("new-hub-key"));
    run_bin(
        "skiff-hub",
        &[
            "root",
            "rotate",
            "--dir",
            s(&roots),
            "--signer",
            s(&a_pub),
            "--signer",
            s(&b_pub),
            "--sign",
            s(&r1),
            "--sign",
            s(&r2),
        ],
    )
    .success();
    for site in &sites[..3] {
        assert!(
            wait_for(WAIT, || root_version(&site.data) == Some(2)),
            "{}: {}",
            site.name,
            site.process.as_ref().unwrap().log()
        );
    }
    // Step 2: the hub moves to key B; its current bundle is signed again (a new generation
    // of the same bytes: nothing is re-applied).
    hub.kill();
    let hub_config = hub.dir.join("hub.yaml");
    let text = std::fs::read_to_string(&hub_config).unwrap();
    std::fs::write(&hub_config, text.replace(s(&a), s(&b))).unwrap();
    hub.spawn();
    assert!(
        hub.log().contains("signed again with the hub's key"),
        "{}",
        hub.log()
    );
    // Step 3: root 3 revokes A.
    run_bin(
        "skiff-hub",
        &[
            "root",
            "rotate",
            "--dir",
            s(&roots),
            "--signer",
            s(&b_pub),
            "--sign",
            s(&r1),
            "--sign",
            s(&r2),
        ],
    )
    .success();
    for site in &sites[..3] {
        assert!(
            wait_for(WAIT, || root_version(&site.data) == Some(3)),
            "{}: {}",
            site.name,
            site.process.as_ref().unwrap().log()
        );
    }
    repo.write("apps/app.yaml", cm("v2"));
    repo.commit_all("v2");
    for site in &sites[..3] {
        assert!(
            wait_for(WAIT, || version(&site.out).as_deref() == Some("v2")),
            "{}: {}",
            site.name,
            site.process.as_ref().unwrap().log()
        );
    }
    // The air-gapped site does the same from one export: roots 1 to 3, then the bundle.
    export(&hub, &sites[3]);
    assert!(
        wait_for(WAIT, || version(&sites[3].out).as_deref() == Some("v2")
            && root_version(&sites[3].data) == Some(3)),
        "{}",
        sites[3].process.as_ref().unwrap().log()
    );
    // A bundle signed by the revoked key A is refused now, whatever its generation; the
    // last good state stays.
    let forged_dir = tmp.path().join("forged");
    std::fs::create_dir_all(&forged_dir).unwrap();
    std::fs::write(forged_dir.join("app.yaml"), cm("forged")).unwrap();
    let import = sites[3].out.with_file_name("shop-3-import");
    let (forged, _) = skiff_tests::build_bundle(&forged_dir, &a, &import, "demo", 99);
    let forged = forged.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        wait_for(WAIT, || sites[3].process.as_ref().unwrap().log().lines().any(
            |l| l.contains("Import refused") && l.contains(&forged) && l.contains("key not trusted")
        )),
        "{}",
        sites[3].process.as_ref().unwrap().log()
    );
    assert!(
        !sites[3]
            .process
            .as_ref()
            .unwrap()
            .log()
            .contains("Assignment refused"),
        "the hub signed the assignment again with its new key"
    );
    assert_eq!(version(&sites[3].out).as_deref(), Some("v2"));
    // A new site is installed with the newest root, not a key list.
    let install = tmp.path().join("install");
    hub.admin(&[
        "cluster",
        "bootstrap",
        "shop-9",
        "--label",
        "tier=shop",
        "--format",
        "systemd",
        "--out",
        s(&install),
    ])
    .success();
    let config = std::fs::read_to_string(install.join("etc/skiff/agent.yaml")).unwrap();
    assert!(
        config.contains("trust_root: /etc/skiff/root.json") && !config.contains("trusted_keys"),
        "{config}"
    );
    let installed = std::fs::read(install.join("etc/skiff/root.json")).unwrap();
    let installed = skiff_proto::root::read_envelope(&installed).unwrap();
    assert_eq!(skiff_proto::root::peek_version(&installed), Some(3));
    // Restarted, an agent keeps root 3 (its store), not the root 1 its config names.
    let mut p = sites[0].process.take().unwrap();
    p.kill();
    p.spawn();
    std::thread::sleep(Duration::from_secs(2));
    p.kill();
    assert_eq!(root_version(&sites[0].data), Some(3));
    assert!(!p.log().contains("Trust root updated to version 1"));
}

#[test]
fn a_prod_generation_waits_for_the_second_signature_and_is_applied_only_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r1_pub) = keygen(&tmp.path().join("root-1"));
    let hub_dir = tmp.path().join("hub");
    let (_, a_pub) = keygen(&hub_dir.join("keys"));
    let (rm, rm_pub) = keygen(&tmp.path().join("release-manager"));
    let (stranger, _) = keygen(&tmp.path().join("stranger"));
    let roots = tmp.path().join("roots");
    let prod = format!("prod={},{}:2", s(&a_pub), s(&rm_pub));
    run_bin(
        "skiff-hub",
        &[
            "root",
            "init",
            "--dir",
            s(&roots),
            "--root-key",
            s(&r1_pub),
            "--signer",
            s(&a_pub),
            "--channel",
            &prod,
            "--sign",
            s(&r1),
        ],
    )
    .success();
    let (_repo, hub, site, out) = one_site(tmp.path(), &roots, "prod");
    let prod_file = || out.join("prod/demo/configmap.app.yaml");
    // Built and signed by the hub, it waits: status says for whom; nothing reaches the site.
    assert!(
        wait_for(WAIT, || hub
            .admin(&["status"])
            .success()
            .stdout
            .contains("waits for 1 more signature")),
        "{}",
        hub.log()
    );
    let status = hub.admin(&["status"]).success().stdout;
    let rm_id = skiff_proto::keys::PublicKey::load(&rm_pub).unwrap().keyid();
    assert!(status.contains(&rm_id[..16]), "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!prod_file().exists(), "{}", site.log());
    // A key that is not a prod signer is refused, and changes nothing.
    let refused = hub.admin(&["sign", "--channel", "prod", "--key", s(&stranger)]);
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("not a signer"), "{}", refused.stderr);
    // The release manager signs: generation 1 is served and applied.
    let signed = hub
        .admin(&["sign", "--channel", "prod", "--key", s(&rm), "--generation", "1"])
        .success();
    assert!(signed.stdout.contains("is served"), "{}", signed.stdout);
    assert!(wait_for(WAIT, || prod_file().exists()), "{}", site.log());
    let text = std::fs::read_to_string(prod_file()).unwrap();
    assert!(text.contains("v1"), "{text}");
}

#[test]
fn under_an_expired_root_a_site_takes_nothing_new_and_keeps_its_state_until_a_newer_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r1_pub) = keygen(&tmp.path().join("root-1"));
    let hub_dir = tmp.path().join("hub");
    let (_, a_pub) = keygen(&hub_dir.join("keys"));
    let roots = tmp.path().join("roots");
    run_bin(
        "skiff-hub",
        &[
            "root",
            "init",
            "--dir",
            s(&roots),
            "--root-key",
            s(&r1_pub),
            "--signer",
            s(&a_pub),
            "--expires",
            "6s",
            "--sign",
            s(&r1),
        ],
    )
    .success();
    let (repo, hub, site, out) = one_site(tmp.path(), &roots, "demo");
    assert!(
        wait_for(WAIT, || version(&out).as_deref() == Some("v1")),
        "{}",
        site.log()
    );
    // The root expires; a new commit is not taken, and the reason reaches the hub.
    std::thread::sleep(Duration::from_secs(6));
    repo.write("apps/app.yaml", cm("v2"));
    repo.commit_all("v2");
    assert!(
        wait_for(WAIT, || hub
            .admin(&["status", "shop-0"])
            .success()
            .stdout
            .contains("expired")),
        "{}\n{}",
        site.log(),
        hub.admin(&["status", "shop-0"]).stdout
    );
    assert_eq!(version(&out).as_deref(), Some("v1"), "the last good state stays");
    // A newer root (valid a year) lets it move on.
    run_bin(
        "skiff-hub",
        &[
            "root",
            "rotate",
            "--dir",
            s(&roots),
            "--expires",
            "365d",
            "--sign",
            s(&r1),
        ],
    )
    .success();
    assert!(
        wait_for(WAIT, || version(&out).as_deref() == Some("v2")),
        "{}",
        site.log()
    );
}
