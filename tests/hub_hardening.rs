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
