//! Benchmark: bundle build and verify+extract of a generated ~2 MiB, 1,000-manifest tree,
//! side by side in the same run with `git archive | gzip` (build) and `sha256sum` + `tar xzf`
//! (verify+extract). Run it from a release build (`tests/bench/bundle.sh` does):
//!
//! ```text
//! skiff-bench-bundle [--files 1000] [--runs 15]
//! ```
//!
//! Prints the median and the fastest of each, and the ratios.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_proto::bundle::{Limits, Source, write_bundle};
use skiff_proto::dsse::Envelope;
use skiff_proto::keys::SigningKey;
use skiff_proto::statement::{BundleRef, Statement};
use skiff_proto::verify::{Policy, TrustSet, verify_bundle};
use skiff_tests::GitRepo;

fn main() -> anyhow::Result<()> {
    let mut files = 1000usize;
    let mut runs = 15usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--files" => files = args.next().unwrap_or_default().parse()?,
            "--runs" => runs = args.next().unwrap_or_default().parse()?,
            other => {
                anyhow::bail!("unknown argument {other}; usage: skiff-bench-bundle [--files N] [--runs N]")
            }
        }
    }
    let bin_dir = std::env::current_exe()?.parent().expect("bin dir").to_owned();
    let hub = bin_dir.join("skiff-hub");
    let agent = bin_dir.join("skiff-agent");
    anyhow::ensure!(
        hub.exists() && agent.exists(),
        "build the binaries first: cargo build --release --workspace"
    );

    let tmp = tempfile::tempdir()?;
    let repo = GitRepo::init(&tmp.path().join("repo"));
    let tree = generate(files);
    let bytes: usize = tree.values().map(Vec::len).sum();
    for (path, content) in &tree {
        repo.write(&format!("apps/{path}"), content);
    }
    repo.commit_all("bench");
    let keys = tmp.path().join("keys");
    run(Command::new(&hub).args(["keygen", "--out"]).arg(&keys))?;
    println!(
        "tree: {files} manifests, {:.2} MiB; {runs} runs each; figures are median (fastest)",
        bytes as f64 / 1048576.0
    );

    // Build: skiff-hub bundle build vs git archive | gzip, both from the same commit.
    let out = tmp.path().join("out");
    let mut build = Command::new(&hub);
    build
        .args(["bundle", "build", "--repo"])
        .arg(repo.path())
        .args([
            "--rev",
            "main",
            "--path",
            "apps",
            "--channel",
            "bench",
            "--generation",
            "1",
            "--key",
        ])
        .arg(keys.join("signing.pem"))
        .arg("--out")
        .arg(&out);
    let skiff_build = time(runs, || run(&mut build).map(drop))?;
    let archive = tmp.path().join("archive.tar.gz");
    let script = format!(
        "git -C '{}' archive main apps | gzip > '{}'",
        repo.path().display(),
        archive.display()
    );
    let git_build = time(runs, || run(Command::new("sh").args(["-c", &script])).map(drop))?;

    // Verify + extract: skiff-agent bundle verify --extract vs sha256sum + tar xzf.
    let digest = String::from_utf8(run(&mut build)?)?.trim().to_owned();
    let bundle = out.join(format!("{digest}.tar.gz"));
    let envelope = out.join(format!("{digest}.dsse.json"));
    let size = std::fs::metadata(&bundle)?.len();
    let extract = tmp.path().join("x");
    let pub_key = keys.join("signing.pub.pem");
    let script = format!(
        "sha256sum '{b}' > /dev/null && mkdir '{x}' && tar xzf '{b}' -C '{x}'",
        b = bundle.display(),
        x = extract.display()
    );
    // Interleaved, so drift in the machine's disk or cache state hits both sides alike.
    let (skiff_verify, tar_verify) = time_pair(
        runs,
        &extract,
        || {
            run(Command::new(&agent)
                .args(["bundle", "verify", "--key"])
                .arg(&pub_key)
                .arg("--extract")
                .arg(&extract)
                .arg(&bundle)
                .arg(&envelope))
            .map(drop)
        },
        || run(Command::new("sh").args(["-c", &script])).map(drop),
    )?;

    // In-process: the library alone, no process start, no git.
    let key = SigningKey::generate()?;
    let trust = TrustSet::new([key.public_key()], 1)?;
    let mut built = None;
    let lib_build = time(runs, || {
        built = Some(write_bundle(
            "bench",
            Source::default(),
            None,
            &tree,
            &Limits::default(),
        )?);
        Ok(())
    })?;
    let built = built.expect("built");
    let statement = Statement::new(
        BundleRef {
            sha256: built.digest,
            size: built.bytes.len() as u64,
        },
        "bench",
        1,
        None,
    );
    let env = Envelope::sign_statement(&statement, &[&key]).to_json();
    let lib_verify = time(runs, || {
        verify_bundle(&trust, &env, &built.bytes, &Policy::default())?;
        Ok(())
    })?;

    println!("bundle: {:.1} KiB compressed", size as f64 / 1024.0);
    println!();
    println!("{:<44} {:>20} {:>20} {:>8}", "", "skiff", "baseline", "ratio");
    row("build (skiff-hub vs git archive | gzip)", skiff_build, git_build);
    row(
        "verify+extract (agent vs sha256sum+tar xzf)",
        skiff_verify,
        tar_verify,
    );
    println!();
    println!(
        "library only, in memory: write_bundle {}, verify_bundle {}",
        fmt(lib_build),
        fmt(lib_verify)
    );
    Ok(())
}

/// A realistic mix: Deployments, Services and ConfigMaps with varied text, ~2 KiB each.
#[allow(clippy::too_many_lines)]
fn generate(n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let words = [
        "alpha", "bravo", "cache", "delta", "edge", "fleet", "gateway", "harbor", "ingress", "job", "kube",
        "ledger", "metrics", "node", "orders", "payments", "queue", "redis", "shop", "tower", "uplink",
    ];
    let mut out = BTreeMap::new();
    for i in 0..n {
        let app = format!(
            "{}-{}-{i}",
            words[next() as usize % words.len()],
            words[next() as usize % words.len()]
        );
        let ns = format!("team-{}", i % 17);
        let doc = match i % 3 {
            0 => {
                let env: String = (0..26)
                    .map(|j| {
                        format!(
                            "            - name: VAR_{j}\n              value: \"{:x}{}\"\n",
                            next(),
                            words[j % words.len()]
                        )
                    })
                    .collect();
                format!(
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  replicas: {}\n  selector:\n    matchLabels:\n      app: {app}\n  template:\n    metadata:\n      labels:\n        app: {app}\n    spec:\n      containers:\n        - name: main\n          image: registry.example.com/{app}:1.{}.{}\n          resources:\n            requests: {{cpu: {}m, memory: {}Mi}}\n          env:\n{env}",
                    1 + next() % 5,
                    next() % 40,
                    next() % 10,
                    50 + next() % 500,
                    32 + next() % 512
                )
            }
            1 => format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {app}\n  namespace: {ns}\n  annotations:\n{}spec:\n  selector:\n    app: {app}\n  ports:\n    - name: http\n      port: {}\n      targetPort: {}\n",
                (0..30)
                    .map(|j| format!(
                        "    example.com/note-{j}: \"{:x} {}\"\n",
                        next(),
                        words[j % words.len()]
                    ))
                    .collect::<String>(),
                80 + next() % 9000,
                1024 + next() % 9000
            ),
            _ => {
                let data: String = (0..88)
                    .map(|j| {
                        format!(
                            "  key{j}: \"{} {:x} {}\"\n",
                            words[next() as usize % words.len()],
                            next(),
                            j
                        )
                    })
                    .collect();
                format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {app}\n  namespace: {ns}\ndata:\n{data}"
                )
            }
        };
        out.insert(format!("{ns}/{app}.yaml"), doc.into_bytes());
    }
    out
}

fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

#[derive(Clone, Copy)]
struct Figures {
    median: Duration,
    fastest: Duration,
}

fn time(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Figures> {
    let mut times = Vec::with_capacity(runs);
    f()?; // warm-up: page cache, lazy binding
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    Ok(figures(times))
}

/// Times `a` and `b` alternately, emptying `dir` (outside the timing) before each run.
fn time_pair(
    runs: usize,
    dir: &Path,
    mut a: impl FnMut() -> anyhow::Result<()>,
    mut b: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Figures, Figures)> {
    let clean = || -> anyhow::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    };
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..=runs {
        for (f, times) in [
            (&mut a as &mut dyn FnMut() -> anyhow::Result<()>, &mut ta),
            (&mut b, &mut tb),
        ] {
            clean()?;
            let start = Instant::now();
            f()?;
            // The first round warms caches and is not counted.
            if i > 0 {
                times.push(start.elapsed());
            }
        }
    }
    clean()?;
    Ok((figures(ta), figures(tb)))
}

fn figures(mut times: Vec<Duration>) -> Figures {
    times.sort();
    Figures {
        median: times[times.len() / 2],
        fastest: times[0],
    }
}

fn fmt(f: Figures) -> String {
    format!("{:.1} ms ({:.1})", ms(f.median), ms(f.fastest))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, skiff: Figures, baseline: Figures) {
    println!(
        "{name:<44} {:>20} {:>20} {:>7.2}x",
        fmt(skiff),
        fmt(baseline),
        ms(skiff.median) / ms(baseline.median)
    );
}
