//! The install kits: every kustomize base and overlay renders with the real kubectl and
//! applies to the Kubernetes API test server; the bootstrap manifest of a new cluster
//! applies too and holds its token only in the Secret; the systemd units verify.

use std::path::Path;
use std::process::{Command, Stdio};

use skiff_tests::hub::HubProcess;
use skiff_tests::kube::KubeTestServer;
use skiff_tests::{GitRepo, bin, workspace_root};

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(workspace_root().join(dir))
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_base_and_overlay_renders_and_applies_server_side() {
    for dir in [
        "deploy/kubernetes/agent",
        "deploy/kubernetes/agent/overlays/restricted",
        "deploy/kubernetes/agent/overlays/hostpath",
        "deploy/kubernetes/hub",
    ] {
        let rendered = render(dir);
        let docs = skiff_proto::manifest::parse_yaml(dir, &rendered).unwrap();
        assert!(docs.len() >= 7, "{dir}: {} documents", docs.len());
        for d in &docs {
            if d.value["kind"] == "Deployment" {
                let pod = &d.value["spec"]["template"]["spec"];
                let c = &pod["containers"][0]["securityContext"];
                assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{dir}");
                assert_eq!(
                    pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                    "{dir}"
                );
                assert_eq!(c["readOnlyRootFilesystem"], true, "{dir}");
                assert_eq!(c["allowPrivilegeEscalation"], false, "{dir}");
                assert_eq!(c["capabilities"]["drop"][0], "ALL", "{dir}");
                assert_eq!(d.value["spec"]["strategy"]["type"], "Recreate", "{dir}");
                assert!(
                    pod["containers"][0]["resources"]["limits"]["memory"].is_string(),
                    "{dir}"
                );
            }
        }
        // A fresh API server per kit: each must apply on its own.
        let server = KubeTestServer::start().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let kc = tmp.path().join("kubeconfig");
        server.write_kubeconfig(&kc).unwrap();
        let (ok, out) = kubectl(&kc, &["apply", "--server-side", "-f", "-"], &rendered);
        assert!(ok, "{dir} does not apply:\n{out}");
    }
    let restricted = render("deploy/kubernetes/agent/overlays/restricted");
    assert!(
        !restricted.contains("kind: ClusterRoleBinding"),
        "restricted has no cluster-wide binding"
    );
    let hostpath = render("deploy/kubernetes/agent/overlays/hostpath");
    assert!(hostpath.contains("hostPath:") && !hostpath.contains("kind: PersistentVolumeClaim"));
}

#[test]
fn bootstrap_prints_a_manifest_that_applies_with_the_token_only_in_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&tmp.path().join("fleet"));
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.commit_all("fleet");
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"{}\", poll: 1h}}\nchannels: []\n",
            repo.path().display()
        ),
    );
    let run = hub
        .admin(&[
            "cluster",
            "bootstrap",
            "edge-7",
            "--label",
            "env=prod",
            "--hub-url",
            "https://hub.example:8443",
        ])
        .success();
    let manifest = run.stdout;
    let tokens = hub
        .admin(&["cluster", "list", "--output", "json"])
        .success()
        .stdout;
    assert!(tokens.contains("edge-7"), "registered: {tokens}");

    let docs = skiff_proto::manifest::parse_yaml("bootstrap", &manifest).unwrap();
    let secret = docs
        .iter()
        .find(|d| d.value["kind"] == "Secret")
        .expect("a Secret");
    let token = secret.value["stringData"]["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("skc_"), "{token}");
    assert_eq!(
        manifest.matches(&token).count(),
        1,
        "the token appears once, in the Secret"
    );
    let cm = docs
        .iter()
        .find(|d| d.value["kind"] == "ConfigMap")
        .expect("the ConfigMap");
    let agent_yaml = cm.value["data"]["agent.yaml"].as_str().unwrap();
    assert!(
        agent_yaml.contains("hub: https://hub.example:8443") && agent_yaml.contains("cluster: edge-7"),
        "{agent_yaml}"
    );
    let key = cm.value["data"]["signing.pub.pem"].as_str().unwrap();
    assert_eq!(key, std::fs::read_to_string(hub.public_key()).unwrap());
    // The agent config it carries is one the agent accepts.
    let out = Command::new(bin("skiff-agent"))
        .args(["status", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    skiff_agent_config_parses(agent_yaml);

    let server = KubeTestServer::start().unwrap();
    let kc = tmp.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let (ok, out) = kubectl(&kc, &["apply", "--server-side", "-f", "-"], &manifest);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &kc,
        &[
            "get",
            "-n",
            "skiff-system",
            "secret",
            "skiff-agent-token",
            "-o",
            "jsonpath={.data.token}",
        ],
        "",
    );
    assert!(ok && !out.is_empty(), "{out}");

    // A loopback hub URL cannot serve an in-cluster agent: refused, and nothing changes.
    let loopback = hub.admin(&["cluster", "bootstrap", "edge-9"]);
    assert_ne!(loopback.code, Some(0));
    assert!(
        loopback.stderr.contains("loopback") && loopback.stderr.contains("public_url"),
        "{}",
        loopback.stderr
    );
    let listed = hub
        .admin(&["cluster", "list", "--output", "json"])
        .success()
        .stdout;
    assert!(!listed.contains("edge-9"), "nothing registered: {listed}");

    // Again: the cluster exists, so it gets a new token; the old one stops working.
    let again = hub.admin(&[
        "cluster",
        "bootstrap",
        "edge-7",
        "--hub-url",
        "https://hub.example:8443",
    ]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again.stderr.contains("note: the manifest runs the image"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("new token"), "{}", again.stderr);
    assert!(!again.stdout.contains(&token));

    // Host install: config, token, key and unit.
    let host = hub
        .admin(&["cluster", "bootstrap", "edge-8", "--format", "systemd"])
        .success()
        .stdout;
    for path in [
        "/etc/skiff/agent.yaml",
        "/etc/skiff/token",
        "/etc/skiff/signing.pub.pem",
        "/etc/systemd/system/skiff-agent.service",
    ] {
        assert!(host.contains(&format!("# ==> {path}")), "{path} missing:\n{host}");
    }
    assert!(host.contains("kubeconfig: /etc/rancher/k3s/k3s.yaml"), "{host}");

    // Or written as files, with their modes.
    let root = tmp.path().join("root");
    hub.admin(&[
        "cluster",
        "bootstrap",
        "edge-10",
        "--format",
        "systemd",
        "--out",
        root.to_str().unwrap(),
    ])
    .success();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("etc/skiff/token"), 0o600);
    assert_eq!(mode("etc/skiff/agent.yaml"), 0o644);
    assert!(root.join("etc/systemd/system/skiff-agent.service").exists());
    let refused = hub.admin(&["cluster", "bootstrap", "edge-11", "--out", root.to_str().unwrap()]);
    assert!(refused.stderr.contains("--format systemd"), "{}", refused.stderr);
}

fn skiff_agent_config_parses(text: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.yaml");
    std::fs::write(&cfg, text).unwrap();
    // `skiff-agent status` reads the config to find its data_dir: a config error would fail it.
    let out = Command::new(bin("skiff-agent"))
        .args(["status", "--config"])
        .arg(&cfg)
        .env("SKIFF_AGENT_DATA_DIR", tmp.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("config"),
        "the bootstrap config is refused: {stderr}"
    );
}

#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed here: skipping the unit check");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (unit, binary) in [
        ("skiff-agent.service", "skiff-agent"),
        ("skiff-hub.service", "skiff-hub"),
    ] {
        let text = std::fs::read_to_string(workspace_root().join("deploy/systemd").join(unit)).unwrap();
        // Point ExecStart at the binaries just built, so verify checks them too.
        let text = text.replace(&format!("/usr/local/bin/{binary}"), bin(binary).to_str().unwrap());
        std::fs::write(tmp.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(tmp.path().join("skiff-agent.service"))
        .arg(tmp.path().join("skiff-hub.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("skiff-")).collect();
    assert!(out.status.success() && problems.is_empty(), "{stderr}");
}
