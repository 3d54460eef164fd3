//! The real `kubectl` against the test server: if kubectl is happy with it, the server speaks
//! the wire protocol (discovery, OpenAPI v3 for field validation, server-side apply,
//! conflicts, deletes) closely enough to stand in for kube-apiserver.

use std::path::Path;
use std::process::Command;

use skiff_tests::examples_dir;
use skiff_tests::kube::KubeTestServer;

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let out = if let Some(input) = stdin {
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl is installed (Debian: kubernetes-client)");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    } else {
        cmd.output()
            .expect("kubectl is installed (Debian: kubernetes-client)")
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = kubectl(kubeconfig, args, None);
    assert!(success, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn kubectl_applies_gets_lists_resources_deletes_and_reports_conflicts() {
    let server = KubeTestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let apps = examples_dir().join("apps");

    let version = ok(&kc, &["version", "-o", "json"]);
    assert!(version.contains("\"gitVersion\": \"v1.33"), "{version}");

    // The CRD first: kubectl resolves every kind of an invocation before applying any.
    let out = ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "-f",
            apps.join("widgets-crd.yaml").to_str().unwrap(),
        ],
    );
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/widgets.example.skiff.dev serverside-applied"
        ),
        "{out}"
    );
    let out = ok(
        &kc,
        &["apply", "--server-side", "-R", "-f", apps.to_str().unwrap()],
    );
    for applied in [
        "namespace/demo serverside-applied",
        "configmap/web-config serverside-applied",
        "deployment.apps/web serverside-applied",
        "service/web serverside-applied",
        "widget.example.skiff.dev/sample serverside-applied",
    ] {
        assert!(out.contains(applied), "missing {applied:?} in:\n{out}");
    }

    for (kind, name) in [
        ("deployment", "web"),
        ("service", "web"),
        ("configmap", "web-config"),
        ("widget", "sample"),
    ] {
        let got = ok(&kc, &["get", "-n", "demo", kind, name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["metadata"]["name"], name, "{kind}");
    }
    let ns = ok(
        &kc,
        &["get", "namespace", "demo", "-o", "jsonpath={.status.phase}"],
    );
    assert_eq!(ns, "Active");
    // Unquoted octal in the manifest, read as Kubernetes reads it.
    let mode = ok(
        &kc,
        &[
            "get",
            "-n",
            "demo",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.volumes[0].configMap.defaultMode}",
        ],
    );
    assert_eq!(mode, "420");
    let listed = ok(
        &kc,
        &["get", "-n", "demo", "deployments,services,configmaps,widgets"],
    );
    assert!(
        listed.contains("deployment.apps/web") && listed.contains("widget.example.skiff.dev/sample"),
        "{listed}"
    );

    let resources = ok(&kc, &["api-resources"]);
    for line in ["deployments", "customresourcedefinitions", "widgets"] {
        assert!(
            resources.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{resources}"
        );
    }
    let wdg = resources.lines().find(|l| l.starts_with("widgets")).unwrap();
    assert!(
        wdg.contains("wdg") && wdg.contains("example.skiff.dev/v1") && wdg.contains("Widget"),
        "{wdg}"
    );

    // Another manager setting a field kubectl owns, to another value: a conflict.
    let scale = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\nspec: {replicas: 5}\n";
    let (success, stdout, stderr) = kubectl(
        &kc,
        &["apply", "--server-side", "--field-manager=intruder", "-f", "-"],
        Some(scale),
    );
    assert!(!success, "conflict must fail: {stdout}");
    assert!(stderr.contains("Apply failed with 1 conflict"), "{stderr}");
    assert!(
        stderr.contains("conflict with \"kubectl\"") && stderr.contains(".spec.replicas"),
        "{stderr}"
    );
    let (success, _, stderr) = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=intruder",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(scale),
    );
    assert!(success, "{stderr}");
    let replicas = ok(
        &kc,
        &[
            "get",
            "-n",
            "demo",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert_eq!(replicas, "5");

    let out = ok(&kc, &["delete", "-n", "demo", "configmap", "web-config"]);
    assert!(out.contains("configmap \"web-config\" deleted"), "{out}");
    let (success, _, stderr) = kubectl(&kc, &["get", "-n", "demo", "configmap", "web-config"], None);
    assert!(!success && stderr.contains("NotFound"), "{stderr}");
    ok(&kc, &["delete", "namespace", "demo"]);
    let (success, _, stderr) = kubectl(&kc, &["get", "-n", "demo", "deployment", "web"], None);
    assert!(!success && stderr.contains("not found"), "{stderr}");
}

/// `kubectl patch --type=json` and `--type=merge`: the edits people make by hand, so tests
/// can make them.
#[test]
fn kubectl_patch_json_and_merge() {
    let server = KubeTestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let (applied, _, err) = kubectl(
        &kc,
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: patched, namespace: default}\ndata: {a: \"1\", b: \"2\"}\n",
        ),
    );
    assert!(applied, "{err}");
    ok(
        &kc,
        &[
            "patch",
            "configmap",
            "patched",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/data/a","value":"10"},{"op":"remove","path":"/data/b"}]"#,
        ],
    );
    ok(
        &kc,
        &[
            "patch",
            "configmap",
            "patched",
            "--type=merge",
            "-p",
            r#"{"data":{"c":"3"}}"#,
        ],
    );
    let data = ok(&kc, &["get", "configmap", "patched", "-o", "jsonpath={.data}"]);
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data, serde_json::json!({"a": "10", "c": "3"}));
    let (failed, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "configmap",
            "patched",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/data/a","value":"nope"}]"#,
        ],
        None,
    );
    assert!(!failed, "a failing test op refuses the patch");
    assert!(err.contains("test failed"), "{err}");
}

/// `kubectl scale` goes through the `/scale` subresource.
#[test]
fn kubectl_scale_sets_replicas_through_the_scale_subresource() {
    let server = KubeTestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let (applied, _, err) = kubectl(
        &kc,
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n",
        ),
    );
    assert!(applied, "{err}");
    ok(&kc, &["scale", "deployment", "web", "--replicas=4"]);
    let replicas = ok(
        &kc,
        &["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"],
    );
    assert_eq!(replicas.trim(), "4");
}

/// The edits people make by hand: `kubectl patch` (strategic merge, kubectl's default),
/// `kubectl set image` and client-side `kubectl apply` all send strategic merge patches.
#[test]
fn kubectl_patch_strategic_set_image_and_client_side_apply() {
    let server = KubeTestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: web, image: nginx:1, env: [{name: A, value: \"1\"}]}\n      - {name: sidecar, image: envoy:1}\n";
    let (applied, _, err) = kubectl(&kc, &["apply", "-f", "-"], Some(deployment));
    assert!(applied, "client-side apply creates: {err}");
    ok(
        &kc,
        &[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"B","value":"2"}]}]}}}}"#,
        ],
    );
    ok(&kc, &["set", "image", "deployment/web", "sidecar=envoy:2"]);
    let containers = ok(
        &kc,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers}",
        ],
    );
    let containers: serde_json::Value = serde_json::from_str(&containers).unwrap();
    assert_eq!(containers[0]["image"], "nginx:1", "{containers}");
    assert_eq!(
        containers[0]["env"],
        serde_json::json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
        "merged by name: {containers}"
    );
    assert_eq!(containers[1]["image"], "envoy:2", "{containers}");

    // Client-side apply again with the sidecar gone: the three-way patch removes it.
    let without = deployment.replace("      - {name: sidecar, image: envoy:1}\n", "");
    let (applied, _, err) = kubectl(&kc, &["apply", "-f", "-"], Some(&without));
    assert!(applied, "{err}");
    let names = ok(
        &kc,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}",
        ],
    );
    assert_eq!(names.trim(), "web");
}

/// `kubectl create namespace|configmap|secret` send protobuf bodies (client-go's typed
/// clients); the test server reads them for those kinds.
#[test]
fn kubectl_create_namespace_configmap_and_secret() {
    let server = KubeTestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    ok(&kc, &["create", "namespace", "made-by-hand"]);
    ok(
        &kc,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "made-by-hand",
            "--from-literal=mode=edge",
        ],
    );
    ok(
        &kc,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "-n",
            "made-by-hand",
            "--from-literal=token=s3cret",
        ],
    );
    let phase = ok(
        &kc,
        &[
            "get",
            "namespace",
            "made-by-hand",
            "-o",
            "jsonpath={.status.phase}",
        ],
    );
    assert_eq!(phase.trim(), "Active");
    let mode = ok(
        &kc,
        &[
            "get",
            "configmap",
            "settings",
            "-n",
            "made-by-hand",
            "-o",
            "jsonpath={.data.mode}",
        ],
    );
    assert_eq!(mode.trim(), "edge");
    let token = ok(
        &kc,
        &[
            "get",
            "secret",
            "creds",
            "-n",
            "made-by-hand",
            "-o",
            "jsonpath={.data.token}",
        ],
    );
    assert_eq!(token.trim(), "czNjcmV0", "base64 of the value");
}

/// `kubectl apply -f` of a `List` (kubectl validates it against `/openapi/v2`), and
/// `kubectl wait`, which lists and then watches until the condition holds.
#[test]
fn kubectl_applies_a_list_and_waits_through_a_watch() {
    let server = KubeTestServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: one, namespace: default}\n  data: {mode: \"off\"}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: two, namespace: default}\n";
    for how in [
        &["apply", "-f", "-"][..],
        &["apply", "--server-side", "-f", "-"][..],
    ] {
        let (applied, out, err) = kubectl(&kc, how, Some(list));
        assert!(applied, "{how:?}: {err}");
        assert!(
            out.contains("configmap/one") && out.contains("configmap/two"),
            "{out}"
        );
    }

    let wait = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args([
            "wait",
            "--for=jsonpath={.data.mode}=on",
            "configmap/one",
            "--timeout=60s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !server.requests().iter().any(|r| r.contains("watch=")) {
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl wait never watched: {:?}",
            server.requests()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(
        &kc,
        &[
            "patch",
            "configmap",
            "one",
            "--type=merge",
            "-p",
            r#"{"data":{"mode":"on"}}"#,
        ],
    );
    let out = wait.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
}
