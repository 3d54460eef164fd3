//! Helpers for skiff's cross-crate tests: the real binaries, real Git repositories made with
//! the `git` CLI, and the shared corpus of real-world manifests.

pub mod agent;
pub mod cluster;
pub mod hub;
pub mod kube;
pub mod ui_fleet;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `deploy/examples/`: the example fleet repository.
pub fn examples_dir() -> PathBuf {
    workspace_root().join("deploy/examples")
}

/// Environment variable naming the shared corpus of real-world manifests.
pub const CORPUS_VAR: &str = "SKIFF_CORPUS";

/// The shared corpus of real-world manifests: `$SKIFF_CORPUS`, else `../shared/corpus`
/// beside the checkout. `None` (after saying loudly on stderr which test is skipped and
/// how to run it) when it is not there: a fresh clone has no corpus.
pub fn corpus_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(CORPUS_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/corpus"));
    if dir.is_dir() {
        return Some(dir);
    }
    // Written to stderr directly, not with eprintln!: the test harness captures that for
    // passing tests, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: no corpus of real-world manifests at {} (set {CORPUS_VAR}=/path/to/corpus to run it)",
        dir.display()
    );
    None
}

/// Path of a workspace binary (`skiff-hub`, `skiff-agent`) built next to the test executable.
///
/// The README's test command builds every binary before it runs the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A finished command: exit status, stdout and stderr as text.
#[derive(Debug)]
pub struct Run {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Panics with both streams unless the command exited 0.
    pub fn success(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the command exited with `code`.
    pub fn code(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs a workspace binary with arguments.
pub fn run_bin(name: &str, args: &[&str]) -> Run {
    Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
        .into()
}

/// A Git repository made with the real `git` CLI in a folder of its own.
pub struct GitRepo {
    dir: PathBuf,
}

impl GitRepo {
    /// `git init` in `dir` (created if missing), with a branch `main` and a committer set.
    pub fn init(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create repo dir");
        let repo = Self { dir: dir.to_owned() };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.git(&["config", "user.name", "skiff tests"]);
        repo.git(&["config", "user.email", "tests@skiff.invalid"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo
    }

    /// The repository folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Runs git in the repository and returns trimmed stdout; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Writes a file (creating folders) relative to the repository.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write file");
    }

    /// Copies a folder's files into the repository under `rel`.
    pub fn copy_dir(&self, from: &Path, rel: &str) {
        copy_tree(from, &self.dir.join(rel));
    }

    /// Stages everything and commits; returns the commit id.
    pub fn commit_all(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// Copies the example apps (`deploy/examples/apps`) into `dest` with their namespace `demo`
/// renamed to `namespace`: tests that run against a real cluster must not share objects
/// (a fresh agent in one test would prune another's).
pub fn example_apps_in(dest: &Path, namespace: &str) {
    copy_tree(&examples_dir().join("apps"), dest);
    for file in files_with_ext(dest, &[".yaml", ".yml"]) {
        let path = dest.join(file);
        let text = std::fs::read_to_string(&path).expect("example file");
        let text = text
            .replace("namespace: demo", &format!("namespace: {namespace}"))
            .replace(
                "kind: Namespace\nmetadata:\n  name: demo\n",
                &format!("kind: Namespace\nmetadata:\n  name: {namespace}\n"),
            );
        std::fs::write(&path, text).expect("example file");
    }
}

/// Copies every file below `from` to `to`, creating folders.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Every file below `dir` whose name ends in one of `exts`, as paths relative to `dir`, sorted.
pub fn files_with_ext(dir: &Path, exts: &[&str]) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, exts: &[&str], out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            if entry.file_type().expect("type").is_dir() {
                walk(&entry.path(), &format!("{rel}/"), exts, out);
            } else if exts.iter().any(|e| name.ends_with(e)) {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", exts, &mut out);
    out.sort();
    out
}

/// Makes a private CA and a server certificate for 127.0.0.1/localhost signed by it (with
/// the real `openssl`): returns (ca.crt, tls.crt, tls.key).
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::create_dir_all(dir).expect("tls dir");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=skiff test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=skiff-hub",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ]);
    (p("ca.crt"), p("tls.crt"), p("tls.key"))
}

/// Builds a signed bundle of the folder `dir` for `channel` with `skiff-hub bundle build`
/// (default namespace `demo`) into `out`; returns (bundle, envelope).
pub fn build_bundle(
    dir: &Path,
    key: &Path,
    out: &Path,
    channel: &str,
    generation: u64,
) -> (PathBuf, PathBuf) {
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let digest = run_bin(
        "skiff-hub",
        &[
            "bundle",
            "build",
            "--dir",
            &s(dir),
            "--channel",
            channel,
            "--generation",
            &generation.to_string(),
            "--namespace",
            "demo",
            "--key",
            &s(key),
            "--out",
            &s(out),
        ],
    )
    .success()
    .stdout
    .trim()
    .to_owned();
    (
        out.join(format!("{digest}.tar.gz")),
        out.join(format!("{digest}.dsse.json")),
    )
}

/// Each metric family's HELP and TYPE stand right before its samples, and no family is
/// split (what Prometheus' parser expects).
pub fn assert_exposition_is_grouped(text: &str) {
    let mut seen = std::collections::BTreeSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split_whitespace().next().unwrap().to_owned();
            assert!(
                seen.insert(current.clone()),
                "family {current} appears twice:\n{text}"
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
                .unwrap_or(name);
            assert_eq!(family, current, "sample {line:?} outside its family:\n{text}");
        }
    }
}
