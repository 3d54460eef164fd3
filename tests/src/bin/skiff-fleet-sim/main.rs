//! `skiff-fleet-sim`: a fleet of simulated agents against one hub, for load figures.
//!
//! ```text
//! skiff-fleet-sim --hub URL --admin-token TOKEN --clusters N --mode etag|longpoll
//!                 [--duration SECS] [--workers N] [--wait SECS] [--tokens FILE] [--hub-pid PID]
//! ```
//!
//! Registers N clusters (or reuses the tokens in `--tokens`), then:
//! - `etag`: `--workers` loops send unchanged polls (`If-None-Match`, answered 304) as fast
//!   as they can; prints requests/s and latency percentiles.
//! - `longpoll`: every cluster holds a long-poll (`?wait=`) open and re-polls when it ends;
//!   prints how many were held, hub RSS and CPU, and, if the desired state changes during
//!   the run, how long the change took to reach every cluster.
//!
//! - `rollout`: every cluster long-polls and reports each newer generation it is given as
//!   applied and Healthy (`--failing` per mille report Failed, `--offline` per mille are
//!   never online); `--rollouts` commits to `--repo` roll out one after another through the
//!   channel's plan (`--plan`, the same YAML as the hub's `rollout:`); prints hub CPU and
//!   memory meanwhile, and how long a step's end took to reach the next step.
//!
//! Every loop is bounded by `--duration`; only the given hub URL (loopback) is contacted.

mod rollout;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

struct Args {
    hub: String,
    admin_token: String,
    clusters: usize,
    mode: String,
    duration: u64,
    workers: usize,
    wait: u64,
    tokens: Option<std::path::PathBuf>,
    hub_pid: Option<u32>,
    prefix: String,
    channel: String,
    rollouts: usize,
    offline_permille: usize,
    failing_permille: usize,
    repo: Option<std::path::PathBuf>,
    plan: Option<std::path::PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        hub: "http://127.0.0.1:8080".into(),
        admin_token: std::env::var("SKIFF_ADMIN_TOKEN").unwrap_or_default(),
        clusters: 1000,
        mode: "etag".into(),
        duration: 20,
        workers: 64,
        wait: 30,
        tokens: None,
        hub_pid: None,
        prefix: "sim".into(),
        channel: "demo".into(),
        rollouts: 3,
        offline_permille: 20,
        failing_permille: 5,
        repo: None,
        plan: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--hub" => a.hub = val()?,
            "--admin-token" => a.admin_token = val()?,
            "--clusters" => a.clusters = val()?.parse()?,
            "--mode" => a.mode = val()?,
            "--duration" => a.duration = val()?.parse()?,
            "--workers" => a.workers = val()?.parse()?,
            "--wait" => a.wait = val()?.parse()?,
            "--tokens" => a.tokens = Some(val()?.into()),
            "--hub-pid" => a.hub_pid = Some(val()?.parse()?),
            "--prefix" => a.prefix = val()?,
            "--channel" => a.channel = val()?,
            "--rollouts" => a.rollouts = val()?.parse()?,
            "--offline" => a.offline_permille = val()?.parse()?,
            "--failing" => a.failing_permille = val()?.parse()?,
            "--repo" => a.repo = Some(val()?.into()),
            "--plan" => a.plan = Some(val()?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: skiff-fleet-sim --hub URL --admin-token TOKEN --clusters N --mode etag|longpoll|rollout [--duration SECS] [--workers N] [--wait SECS] [--tokens FILE] [--hub-pid PID] [--prefix NAME]\n       rollout: --repo DIR --plan FILE [--channel demo] [--rollouts 3] [--offline PERMILLE (20)] [--failing PERMILLE (5)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    let host = a
        .hub
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("--hub must be a loopback address, got {}", a.hub);
    }
    if a.admin_token.is_empty() {
        bail!("--admin-token (or SKIFF_ADMIN_TOKEN) is required");
    }
    Ok(a)
}

async fn register(a: &Args, http: &reqwest::Client) -> anyhow::Result<Vec<(String, String)>> {
    let mut known: BTreeMap<String, String> = match &a.tokens {
        Some(p) if p.exists() => serde_json::from_slice(&std::fs::read(p)?)?,
        _ => BTreeMap::new(),
    };
    let names: Vec<String> = (0..a.clusters).map(|i| format!("{}-{i}", a.prefix)).collect();
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !known.contains_key(*n))
        .cloned()
        .collect();
    let start = Instant::now();
    let results = futures_lite(
        missing.iter().map(|name| {
            let http = http.clone();
            let url = format!("{}/v1/admin/clusters", a.hub);
            let token = a.admin_token.clone();
            let name = name.clone();
            async move {
                let r = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&serde_json::json!({"name": name, "labels": {"fleet": "sim"}}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!(
                        "registering {name}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                let v: serde_json::Value = r.json().await?;
                Ok((name, v["token"].as_str().unwrap_or_default().to_owned()))
            }
        }),
        16,
    )
    .await;
    for r in results {
        let (n, t) = r?;
        known.insert(n, t);
    }
    if !missing.is_empty() {
        eprintln!(
            "registered {} clusters in {:.1}s",
            missing.len(),
            start.elapsed().as_secs_f64()
        );
    }
    if let Some(p) = &a.tokens {
        std::fs::write(p, serde_json::to_vec(&known)?)?;
    }
    Ok(names
        .into_iter()
        .map(|n| {
            let t = known[&n].clone();
            (n, t)
        })
        .collect())
}

/// Runs futures with at most `limit` in flight, returning results in order.
async fn futures_lite<F, T>(futs: impl Iterator<Item = F>, limit: usize) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit));
    let handles: Vec<_> = futs
        .map(|f| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                f.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

fn proc_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss_kb, ticks / 100.0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn etag_mode(
    a: &Args,
    http: &reqwest::Client,
    clusters: Arc<Vec<(String, String)>>,
) -> anyhow::Result<()> {
    // First poll of each cluster gets its ETag.
    let etags = futures_lite(
        clusters.iter().cloned().map(|(name, token)| {
            let http = http.clone();
            let url = format!("{}/v1/clusters/{name}/desired", a.hub);
            async move {
                let r = http.get(url).bearer_auth(token).send().await?;
                anyhow::ensure!(r.status().is_success(), "first poll: {}", r.status());
                Ok::<_, anyhow::Error>(r.headers()["etag"].to_str()?.to_owned())
            }
        }),
        64,
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let etags = Arc::new(etags);
    let stop = Instant::now() + Duration::from_secs(a.duration);
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let before = a.hub_pid.and_then(proc_stats);
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..a.workers {
        let (http, clusters, etags, count, errors, hub) = (
            http.clone(),
            clusters.clone(),
            etags.clone(),
            count.clone(),
            errors.clone(),
            a.hub.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            // ETags this worker was given since (the desired state changed, e.g. the hub's
            // first build landed after the first polls): used from then on, as an agent would.
            let mut newer: std::collections::HashMap<usize, String> = Default::default();
            while Instant::now() < stop {
                let k = i % clusters.len();
                let (name, token) = &clusters[k];
                let t = Instant::now();
                let r = http
                    .get(format!("{hub}/v1/clusters/{name}/desired"))
                    .bearer_auth(token)
                    .header("If-None-Match", newer.get(&k).unwrap_or(&etags[k]))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {
                        lat.push(t.elapsed());
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        if let Some(e) = r.headers().get("etag").and_then(|v| v.to_str().ok()) {
                            newer.insert(k, e.to_owned());
                        }
                        let _ = r.bytes().await;
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += STRIDE;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let n = count.load(Ordering::Relaxed);
    println!(
        "etag: {} clusters, {} workers, {:.0}s: {n} unchanged polls (304), {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        clusters.len(),
        a.workers,
        elapsed,
        n as f64 / elapsed,
        percentile(&all, 0.5).as_secs_f64() * 1000.0,
        percentile(&all, 0.99).as_secs_f64() * 1000.0,
        errors.load(Ordering::Relaxed)
    );
    if let (Some((_, cpu0)), Some((rss, cpu1))) = (before, a.hub_pid.and_then(proc_stats)) {
        println!(
            "hub: RSS {:.1} MiB, CPU {:.0}% of one core",
            rss as f64 / 1024.0,
            (cpu1 - cpu0) / elapsed * 100.0
        );
    }
    Ok(())
}

/// A prime step, so workers walk the clusters in different orders.
const STRIDE: usize = 7919;

async fn longpoll_mode(
    a: &Args,
    http: &reqwest::Client,
    clusters: Arc<Vec<(String, String)>>,
) -> anyhow::Result<()> {
    let stop = Instant::now() + Duration::from_secs(a.duration);
    let held = Arc::new(AtomicU64::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for (name, token) in clusters.iter() {
        let (name, token) = (name.clone(), token.clone());
        let (http, held, polls, errors, hub, wait) = (
            http.clone(),
            held.clone(),
            polls.clone(),
            errors.clone(),
            a.hub.clone(),
            a.wait,
        );
        handles.push(tokio::spawn(async move {
            let url = format!("{hub}/v1/clusters/{name}/desired");
            let mut etag = String::new();
            let mut changes = Vec::new();
            let mut first = true;
            while Instant::now() < stop {
                let left = stop
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    .clamp(1, wait);
                let mut req = http.get(format!("{url}?wait={left}")).bearer_auth(&token);
                if !etag.is_empty() {
                    req = req.header("If-None-Match", &etag);
                }
                held.fetch_add(1, Ordering::Relaxed);
                let r = req.send().await;
                held.fetch_sub(1, Ordering::Relaxed);
                polls.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        etag = r
                            .headers()
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        if !first {
                            changes.push(start.elapsed());
                        }
                        first = false;
                        let _ = r.bytes().await;
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {}
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            changes
        }));
    }
    // Sample the hub while the polls are held.
    let mut peak_held = 0;
    let mut samples = Vec::new();
    let cpu0 = a.hub_pid.and_then(proc_stats).map(|s| s.1);
    while Instant::now() + Duration::from_secs(1) < stop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_held = peak_held.max(held.load(Ordering::Relaxed));
        if let Some(s) = a.hub_pid.and_then(proc_stats) {
            samples.push(s);
        }
    }
    let mut deliveries = Vec::new();
    for h in handles {
        deliveries.extend(h.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "longpoll: {} clusters, {:.0}s: peak {peak_held} long-polls held at once, {} polls answered, errors {}",
        clusters.len(),
        elapsed,
        polls.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    if let (Some(c0), Some(last)) = (cpu0, samples.last()) {
        let peak_rss = samples.iter().map(|s| s.0).max().unwrap_or(0);
        println!(
            "hub: peak RSS {:.1} MiB while holding them, CPU {:.1}% of one core on average",
            peak_rss as f64 / 1024.0,
            (last.1 - c0) / elapsed * 100.0
        );
    }
    if !deliveries.is_empty() {
        deliveries.sort();
        let spread = deliveries[deliveries.len() - 1] - deliveries[0];
        println!(
            "change delivered to {} of {} clusters over {:.0} ms (first to last)",
            deliveries.len(),
            clusters.len(),
            spread.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(a.wait + 30))
            .build()?;
        let clusters = Arc::new(register(&a, &http).await?);
        match a.mode.as_str() {
            "etag" => etag_mode(&a, &http, clusters).await,
            "longpoll" => longpoll_mode(&a, &http, clusters).await,
            "rollout" => match (&a.repo, &a.plan) {
                (Some(repo), Some(plan)) => rollout::run(&a, &http, clusters, repo, plan).await,
                _ => bail!("--mode rollout needs --repo DIR and --plan FILE"),
            },
            other => bail!("--mode {other}: use etag, longpoll or rollout"),
        }
    })
}
