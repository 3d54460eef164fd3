//! The bundle round trip through the real binaries: `skiff-hub keygen`, `bundle build`,
//! `bundle inspect`, and `skiff-agent bundle verify`, on real Git repositories.

use std::path::Path;

use skiff_tests::{GitRepo, examples_dir, run_bin};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A repository holding the example fleet under `apps/`, committed on `main`.
fn example_repo(dir: &Path) -> (GitRepo, String) {
    let repo = GitRepo::init(dir);
    repo.copy_dir(&examples_dir().join("apps"), "apps");
    repo.write("README.md", "# fleet\n");
    let commit = repo.commit_all("example fleet");
    (repo, commit)
}

fn keygen(dir: &Path) -> (String, String) {
    run_bin("skiff-hub", &["keygen", "--out", path_str(dir)]).success();
    (
        dir.join("signing.pem").display().to_string(),
        dir.join("signing.pub.pem").display().to_string(),
    )
}

fn build(repo: &Path, rev: &str, key: &str, out: &Path, generation: &str) -> skiff_tests::Run {
    run_bin(
        "skiff-hub",
        &[
            "bundle",
            "build",
            "--repo",
            path_str(repo),
            "--rev",
            rev,
            "--path",
            "apps",
            "--channel",
            "demo",
            "--generation",
            generation,
            "--key",
            key,
            "--out",
            path_str(out),
        ],
    )
}

#[test]
fn keygen_build_inspect_verify_extract_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) = example_repo(&tmp.path().join("fleet"));
    let (key, public) = keygen(&tmp.path().join("keys"));
    let out = tmp.path().join("out");

    let digest = build(repo.path(), "main", &key, &out, "1")
        .success()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(digest.len(), 64, "digest alone on stdout: {digest:?}");
    let bundle = out.join(format!("{digest}.tar.gz"));
    let envelope = out.join(format!("{digest}.dsse.json"));
    assert!(bundle.exists() && envelope.exists());

    let inspect = run_bin("skiff-hub", &["bundle", "inspect", path_str(&bundle)]).success();
    assert!(inspect.stdout.contains("channel    demo"), "{}", inspect.stdout);
    assert!(
        inspect.stdout.contains(&format!("commit     {commit}")),
        "{}",
        inspect.stdout
    );
    assert!(inspect.stdout.contains("branch     main"), "{}", inspect.stdout);
    assert!(
        inspect.stdout.contains("web/deployment.yaml"),
        "{}",
        inspect.stdout
    );
    assert!(
        !inspect.stdout.contains("README"),
        "only manifests are bundled: {}",
        inspect.stdout
    );
    let json = run_bin(
        "skiff-hub",
        &["bundle", "inspect", "--output", "json", path_str(&bundle)],
    )
    .success();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["sha256"], digest.as_str());
    assert_eq!(json["manifest"]["files"].as_array().unwrap().len(), 6);

    let extract = tmp.path().join("extracted");
    let verified = run_bin(
        "skiff-agent",
        &[
            "bundle",
            "verify",
            "--key",
            &public,
            "--extract",
            path_str(&extract),
            path_str(&bundle),
            path_str(&envelope),
        ],
    )
    .success();
    assert!(
        verified
            .stdout
            .contains(&format!("channel=demo generation=1 commit={commit}")),
        "{}",
        verified.stdout
    );
    for file in skiff_tests::files_with_ext(&examples_dir().join("apps"), &[".yaml"]) {
        assert_eq!(
            std::fs::read(extract.join(&file)).unwrap(),
            std::fs::read(examples_dir().join("apps").join(&file)).unwrap(),
            "{file} extracted byte for byte"
        );
    }
}

#[test]
fn builds_from_two_clones_at_different_times_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (origin, first) = example_repo(&tmp.path().join("origin"));
    let (key, _) = keygen(&tmp.path().join("keys"));
    let clone = |name: &str| {
        let dir = tmp.path().join(name);
        let out = std::process::Command::new("git")
            .args(["clone", "--quiet", "--bare"])
            .arg(origin.path())
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    };
    let (a, b) = (clone("clone-a"), clone("clone-b"));
    let digest_a = build(&a, &first, &key, &tmp.path().join("out-a"), "1")
        .success()
        .stdout;
    // Cross a second boundary so the statements' creation times differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let digest_b = build(&b, &first, &key, &tmp.path().join("out-b"), "1")
        .success()
        .stdout;
    assert_eq!(digest_a, digest_b);
    let name = format!("{}.tar.gz", digest_a.trim());
    assert_eq!(
        std::fs::read(tmp.path().join("out-a").join(&name)).unwrap(),
        std::fs::read(tmp.path().join("out-b").join(&name)).unwrap()
    );

    origin.write(
        "apps/web/configmap.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-config, namespace: demo}\ndata: {a: b}\n",
    );
    let second = origin.commit_all("change config");
    let digest_c = build(origin.path(), &second, &key, &tmp.path().join("out-c"), "2")
        .success()
        .stdout;
    assert_ne!(digest_a, digest_c, "a different commit gives a different bundle");
}

#[test]
fn uncommitted_and_untracked_changes_never_leak_in() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = example_repo(&tmp.path().join("fleet"));
    let (key, public) = keygen(&tmp.path().join("keys"));
    repo.write(
        "apps/web/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: edited}\n",
    );
    repo.write(
        "apps/untracked.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: untracked}\n",
    );
    let out = tmp.path().join("out");
    let digest = build(repo.path(), "HEAD", &key, &out, "1")
        .success()
        .stdout
        .trim()
        .to_owned();
    let extract = tmp.path().join("x");
    run_bin(
        "skiff-agent",
        &[
            "bundle",
            "verify",
            "--key",
            &public,
            "--extract",
            path_str(&extract),
            path_str(&out.join(format!("{digest}.tar.gz"))),
            path_str(&out.join(format!("{digest}.dsse.json"))),
        ],
    )
    .success();
    assert!(!extract.join("untracked.yaml").exists());
    assert_eq!(
        std::fs::read(extract.join("web/service.yaml")).unwrap(),
        std::fs::read(examples_dir().join("apps/web/service.yaml")).unwrap()
    );
}

#[test]
fn a_commit_with_an_invalid_document_is_refused_naming_file_document_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = example_repo(&tmp.path().join("fleet"));
    let (key, _) = keygen(&tmp.path().join("keys"));
    repo.write(
        "apps/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n",
    );
    repo.write("apps/syntax.yaml", "apiVersion: v1\nkind: [\n");
    repo.commit_all("break it");
    let out = tmp.path().join("out");
    let run = build(repo.path(), "main", &key, &out, "2").code(1);
    assert!(
        run.stderr
            .contains("broken.yaml: document 2 (line 5): missing metadata.name"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("syntax.yaml: line "), "{}", run.stderr);
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn revisions_tags_and_bad_input_give_clear_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, first) = example_repo(&tmp.path().join("fleet"));
    repo.git(&["tag", "v1"]);
    repo.write(
        "apps/extra.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n",
    );
    repo.commit_all("more");
    let (key, _) = keygen(&tmp.path().join("keys"));
    let out = tmp.path().join("out");
    let by_tag = build(repo.path(), "v1", &key, &out, "1").success().stdout;
    let by_parent = build(repo.path(), "main~1", &key, &out, "1").success().stdout;
    let by_sha = build(repo.path(), &first, &key, &out, "1").success().stdout;
    assert_eq!(by_tag, by_parent);
    assert_eq!(by_tag, by_sha);

    let bad_rev = build(repo.path(), "no-such-branch", &key, &out, "1").code(1);
    assert!(
        bad_rev.stderr.contains("\"no-such-branch\" is not a commit"),
        "{}",
        bad_rev.stderr
    );
    let bad_path = run_bin(
        "skiff-hub",
        &[
            "bundle",
            "build",
            "--repo",
            path_str(repo.path()),
            "--rev",
            "main",
            "--path",
            "nope",
            "--channel",
            "demo",
            "--generation",
            "1",
            "--key",
            &key,
            "--out",
            path_str(&out),
        ],
    )
    .code(1);
    assert!(
        bad_path.stderr.contains("path \"nope\" is not a folder"),
        "{}",
        bad_path.stderr
    );
    let bad_key = build(repo.path(), "main", "/nonexistent/key.pem", &out, "1").code(1);
    assert!(
        bad_key.stderr.contains("/nonexistent/key.pem"),
        "{}",
        bad_key.stderr
    );
    let zero = build(repo.path(), "main", &key, &out, "0").code(2);
    assert!(zero.stderr.contains("generation"), "{}", zero.stderr);
    let bad_channel = run_bin(
        "skiff-hub",
        &[
            "bundle",
            "build",
            "--dir",
            path_str(&examples_dir().join("apps")),
            "--channel",
            "Prod/EU",
            "--generation",
            "1",
            "--key",
            &key,
            "--out",
            path_str(&out),
        ],
    )
    .code(1);
    assert!(
        bad_channel.stderr.contains("channel \"Prod/EU\""),
        "{}",
        bad_channel.stderr
    );
}

#[test]
fn keygen_never_overwrites_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    keygen(&dir);
    let before = std::fs::read(dir.join("signing.pem")).unwrap();
    let again = run_bin("skiff-hub", &["keygen", "--out", path_str(&dir)]).code(1);
    assert!(again.stderr.contains("refusing to overwrite"), "{}", again.stderr);
    assert_eq!(std::fs::read(dir.join("signing.pem")).unwrap(), before);
}

#[test]
fn verify_names_the_failed_step_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("keys"));
    let (_, other_public) = keygen(&tmp.path().join("other"));
    let out = tmp.path().join("out");
    let digest = run_bin(
        "skiff-hub",
        &[
            "bundle",
            "build",
            "--dir",
            path_str(&examples_dir().join("apps")),
            "--channel",
            "demo",
            "--generation",
            "3",
            "--namespace",
            "demo",
            "--key",
            &key,
            "--out",
            path_str(&out),
        ],
    )
    .success()
    .stdout
    .trim()
    .to_owned();
    let bundle = out.join(format!("{digest}.tar.gz"));
    let envelope = out.join(format!("{digest}.dsse.json"));
    let verify = |keys: &[&str], extra: &[&str], bundle: &Path| {
        let mut args = vec!["bundle", "verify"];
        for k in keys {
            args.extend(["--key", k]);
        }
        args.extend(extra);
        args.extend([path_str(bundle), path_str(&envelope)]);
        run_bin("skiff-agent", &args)
    };
    let ok = verify(&[&public], &[], &bundle).success();
    assert!(
        ok.stdout.contains("channel=demo generation=3 commit=-"),
        "{}",
        ok.stdout
    );

    let wrong_key = verify(&[&other_public], &[], &bundle).code(1);
    assert!(
        wrong_key
            .stderr
            .contains("0 valid signature(s) from trusted keys, 1 required"),
        "{}",
        wrong_key.stderr
    );

    let threshold = verify(&[&public, &other_public], &["--threshold", "2"], &bundle).code(1);
    assert!(
        threshold
            .stderr
            .contains("1 valid signature(s) from trusted keys, 2 required"),
        "{}",
        threshold.stderr
    );

    let channel = verify(&[&public], &["--channel", "prod"], &bundle).code(1);
    assert!(channel.stderr.contains("expected \"prod\""), "{}", channel.stderr);

    let mut bytes = std::fs::read(&bundle).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    let tampered = tmp.path().join("tampered.tar.gz");
    std::fs::write(&tampered, bytes).unwrap();
    let bad = verify(&[&public], &[], &tampered).code(1);
    assert!(bad.stderr.contains("bundle sha256 is"), "{}", bad.stderr);

    let missing = verify(&[&public], &[], &tmp.path().join("nope.tar.gz")).code(1);
    assert!(missing.stderr.contains("nope.tar.gz"), "{}", missing.stderr);
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["keygen", "--help"],
        &["bundle", "build", "--help"],
        &["bundle", "inspect", "--help"],
    ] {
        let run = run_bin("skiff-hub", args).success();
        assert!(
            run.stdout.contains("Usage: skiff-hub"),
            "{args:?}: {}",
            run.stdout
        );
    }
    let run = run_bin("skiff-agent", &["bundle", "verify", "--help"]).success();
    assert!(run.stdout.contains("--threshold"), "{}", run.stdout);
}

/// `./apps`, `apps/` and `apps` name one folder and build one bundle; `.` is the root.
#[test]
fn path_spellings_build_the_same_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("repo"));
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.commit_all("fleet");
    let keys = tmp.path().join("keys");
    skiff_tests::run_bin("skiff-hub", &["keygen", "--out", keys.to_str().unwrap()]).success();
    let build = |path: &str| {
        skiff_tests::run_bin(
            "skiff-hub",
            &[
                "bundle",
                "build",
                "--repo",
                repo.path().to_str().unwrap(),
                "--rev",
                "main",
                "--path",
                path,
                "--channel",
                "demo",
                "--generation",
                "1",
                "--key",
                keys.join("signing.pem").to_str().unwrap(),
                "--out",
                tmp.path().join("out").to_str().unwrap(),
            ],
        )
    };
    let digests: Vec<String> = ["apps", "./apps", "apps/", "./apps/"]
        .iter()
        .map(|p| build(p).success().stdout.trim().to_owned())
        .collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let err = build("../apps");
    assert_ne!(err.code, Some(0));
    assert!(err.stderr.contains("leaves the repository"), "{}", err.stderr);
}

/// Files that are not manifests (Fleet's `fleet.yaml`, Helm values, docs) are refused until
/// `.skiffignore` leaves them out; from a commit and from a folder alike.
#[test]
fn skiffignore_leaves_out_files_that_are_not_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("repo"));
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.write(
        "apps/fleet.yaml",
        "defaultNamespace: web\nhelm: {values: {a: 1}}\n",
    );
    repo.write("apps/docs/notes.yaml", "title: how we deploy\n");
    repo.commit_all("fleet with non-manifests");
    let keys = tmp.path().join("keys");
    skiff_tests::run_bin("skiff-hub", &["keygen", "--out", keys.to_str().unwrap()]).success();
    let key = keys.join("signing.pem");
    let out = tmp.path().join("out");
    let from_repo = || {
        skiff_tests::run_bin(
            "skiff-hub",
            &[
                "bundle",
                "build",
                "--repo",
                repo.path().to_str().unwrap(),
                "--rev",
                "main",
                "--path",
                "apps",
                "--channel",
                "demo",
                "--generation",
                "1",
                "--key",
                key.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let from_dir = || {
        skiff_tests::run_bin(
            "skiff-hub",
            &[
                "bundle",
                "build",
                "--dir",
                repo.path().join("apps").to_str().unwrap(),
                "--channel",
                "demo",
                "--generation",
                "1",
                "--key",
                key.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let refused = from_repo();
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("fleet.yaml") && refused.stderr.contains("missing apiVersion"),
        "{}",
        refused.stderr
    );
    repo.write("apps/.skiffignore", "# not manifests\nfleet.yaml\ndocs/\n");
    repo.commit_all("ignore them");
    for built in [from_repo(), from_dir()] {
        let digest = built.success().stdout.trim().to_owned();
        let listed = skiff_tests::run_bin(
            "skiff-hub",
            &[
                "bundle",
                "inspect",
                out.join(format!("{digest}.tar.gz")).to_str().unwrap(),
            ],
        )
        .success()
        .stdout;
        assert!(listed.contains("web/"), "{listed}");
        assert!(
            !listed.contains("fleet.yaml") && !listed.contains("notes.yaml"),
            "{listed}"
        );
    }
}
