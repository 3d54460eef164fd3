//! What the agent costs the API server it shares with the workloads, side by side in one
//! run against the Kubernetes API test server: requests and wall time of a drift check of
//! N unchanged objects in 3 kinds, and after 10 of them were edited (the listing check and
//! the old compare-every-object check); and the time to apply the same objects with the
//! agent's applier, with `kubectl apply --server-side`, and as a raw parallel load of the
//! same server-side apply PATCHes (what the server can take): medians of 5 rounds each, on
//! fresh servers, alternating.
//!
//! Usage: skiff-bench-drift [OBJECTS]   (default 1000; run a release build)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use skiff_agent::apply::kube::KubeApplier;
use skiff_proto::bundle::{Bundle, Limits, Source, read_bundle, write_bundle};
use skiff_tests::kube::KubeTestServer;

fn objects(n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(
        "00-ns.yaml".to_owned(),
        b"apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n".to_vec(),
    );
    for i in 0..n {
        let text = match i % 3 {
            0 => format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{i}, namespace: bench}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec:\n      containers:\n      - name: main\n        image: registry.example.com/app-{i}:1.0\n        ports: [{{containerPort: 8080}}]\n"
            ),
            1 => format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: app-{i}, namespace: bench}}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
            ),
            _ => format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg-{i}, namespace: bench}}\ndata: {{a: \"{i}\", b: \"value\"}}\n"
            ),
        };
        files.insert(format!("obj-{i:05}.yaml"), text.into_bytes());
    }
    files
}

fn bundle(files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<Bundle> {
    let built = write_bundle("bench", Source::default(), None, files, &Limits::default())?;
    Ok(read_bundle(built.bytes.as_slice(), &Limits::default())?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    skiff_tests::cluster::install_crypto();
    let n: usize = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;
    let files = objects(n);
    let b = bundle(&files)?;
    println!("{} objects in 3 kinds (+ their namespace)", n);

    // Apply: the agent's applier.
    let server = KubeTestServer::start()?;
    let applier = KubeApplier::new(server.client(), true, "bench".into());
    let started = Instant::now();
    let out = applier.apply("bench", None, &b, &[]).await;
    let agent_apply = started.elapsed();
    anyhow::ensure!(out.errors.is_empty(), "apply failed: {:?}", out.errors.first());
    let inventory = out.applied.clone();
    println!(
        "apply, skiff agent:             {:>8.0} ms  (pace grew to {} requests in flight)",
        ms(agent_apply),
        applier.pace()
    );

    // Drift checks: the listing check (remembering), then the reference.
    let full = KubeApplier::new(server.client(), true, "bench".into()).without_memory();
    let measure = |label: &'static str| {
        let server = &server;
        move |before: usize, took: Duration| {
            println!(
                "drift check, {label:<32} {:>5} requests {:>8.0} ms",
                server.request_count() - before,
                ms(took)
            );
        }
    };
    for (label, applier) in [
        ("listing, first after the apply", &applier),
        ("listing, unchanged", &applier),
    ] {
        let before = server.request_count();
        let started = Instant::now();
        let c = applier
            .check("bench", None, &b, false, &inventory)
            .await
            .map_err(|o| anyhow::anyhow!("{:?}", o.errors.first()))?;
        anyhow::ensure!(c.drift.is_empty(), "drift in an unchanged cluster");
        measure(label)(before, started.elapsed());
    }
    let before = server.request_count();
    let started = Instant::now();
    full.check("bench", None, &b, false, &inventory)
        .await
        .map_err(|o| anyhow::anyhow!("{:?}", o.errors.first()))?;
    measure("compare every object, unchanged")(before, started.elapsed());
    // Ten ConfigMaps edited by hand.
    let maps: Api<DynamicObject> = Api::namespaced_with(
        server.client(),
        "bench",
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "ConfigMap"), "configmaps"),
    );
    for i in (2..n).step_by(3).take(10) {
        maps.patch(
            &format!("cfg-{i}"),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"b": "edited"}})),
        )
        .await?;
    }
    let before = server.request_count();
    let started = Instant::now();
    let c = applier
        .check("bench", None, &b, false, &inventory)
        .await
        .map_err(|o| anyhow::anyhow!("{:?}", o.errors.first()))?;
    measure("listing, 10 edited")(before, started.elapsed());
    anyhow::ensure!(c.drift.len() == 10.min(n / 3), "found {} drifted", c.drift.len());
    let before = server.request_count();
    let started = Instant::now();
    full.check("bench", None, &b, false, &inventory)
        .await
        .map_err(|o| anyhow::anyhow!("{:?}", o.errors.first()))?;
    measure("compare every object, 10 edited")(before, started.elapsed());
    drop(server);

    // Apply: kubectl --server-side, on a fresh server.
    let server = KubeTestServer::start()?;
    let dir = tempfile::tempdir()?;
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text)?;
    }
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let started = Instant::now();
    let run = tokio::process::Command::new("kubectl")
        .args(["apply", "--server-side", "--field-manager", "skiff", "-f"])
        .arg(dir.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .await?;
    let kubectl = started.elapsed();
    if run.status.success() {
        println!("apply, kubectl --server-side:   {:>8.0} ms", ms(kubectl));
    } else {
        println!(
            "apply, kubectl --server-side:   failed: {}",
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        );
    }
    drop(server);

    // Apply: the same PATCHes, 32 at a time, nothing else (the server's capacity); then
    // more rounds of both on fresh servers, alternating, for medians (one apply is ~0.1 s:
    // a single figure is mostly noise on a shared machine).
    let mut agent_runs = vec![agent_apply];
    let (raw, parsed) = raw_apply(&b).await?;
    let (mut raw_runs, mut parse_runs) = (vec![raw], vec![parsed]);
    for _ in 1..ROUNDS {
        let server = KubeTestServer::start()?;
        let applier = KubeApplier::new(server.client(), true, "bench".into());
        let started = Instant::now();
        let out = applier.apply("bench", None, &b, &[]).await;
        agent_runs.push(started.elapsed());
        anyhow::ensure!(out.errors.is_empty(), "apply failed: {:?}", out.errors.first());
        drop(server);
        let (raw, parsed) = raw_apply(&b).await?;
        raw_runs.push(raw);
        parse_runs.push(parsed);
    }
    let (agent, raw) = (median(&mut agent_runs), median(&mut raw_runs));
    println!(
        "apply, median of {ROUNDS} on fresh servers: skiff agent {:.0} ms, raw parallel PATCH (32) {:.0} ms",
        ms(agent),
        ms(raw)
    );
    println!(
        "agent apply at {:.0}% of the raw load's speed (medians); the raw load's objects took {:.0} ms to parse before its clock started (the agent's clock includes its parse)",
        100.0 * raw.as_secs_f64() / agent.as_secs_f64(),
        ms(median(&mut parse_runs))
    );
    Ok(())
}

/// Applies of each kind measured, for medians.
const ROUNDS: usize = 5;

fn median(runs: &mut [Duration]) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// The bundle's objects applied as bare server-side apply PATCHes, 32 at a time, to a fresh
/// server (namespace first): what the server can take.
/// Returns the load's time and, apart, the time its objects took to parse (before its clock).
async fn raw_apply(b: &Bundle) -> anyhow::Result<(Duration, Duration)> {
    let server = KubeTestServer::start()?;
    let client = server.client();
    let parsing = Instant::now();
    let objs = skiff_proto::objects::objects(b, "bench", None, &|api, kind| {
        !skiff_proto::objects::builtin_cluster_scoped(api, kind)
    })
    .map_err(|e| anyhow::anyhow!("{:?}", e.first()))?;
    let parsed = parsing.elapsed();
    let (namespace, rest): (Vec<_>, Vec<_>) = objs.into_iter().partition(|o| o.id.kind == "Namespace");
    let patch = |o: skiff_proto::objects::Desired| {
        let client = client.clone();
        async move {
            let (group, version) =
                o.id.api_version
                    .rsplit_once('/')
                    .unwrap_or(("", &o.id.api_version));
            let plural = format!("{}s", o.id.kind.to_lowercase());
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, &o.id.kind),
                &plural,
            );
            let api: Api<DynamicObject> = match &o.id.namespace {
                Some(ns) => Api::namespaced_with(client, ns, &ar),
                None => Api::all_with(client, &ar),
            };
            api.patch(
                &o.id.name,
                &PatchParams::apply("skiff").force(),
                &Patch::Apply(&o.value),
            )
            .await
            .map(drop)
        }
    };
    let started = Instant::now();
    for o in namespace {
        patch(o).await?;
    }
    let results: Vec<_> = futures_util::stream::iter(rest)
        .map(patch)
        .buffer_unordered(32)
        .collect()
        .await;
    let took = started.elapsed();
    anyhow::ensure!(results.iter().all(Result::is_ok), "raw load failed");
    Ok((took, parsed))
}
