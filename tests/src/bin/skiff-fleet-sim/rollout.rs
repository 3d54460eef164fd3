//! `--mode rollout`: every simulated cluster long-polls its desired state and, when it is
//! given a newer generation, reports it applied and Healthy (a share reports Failed, a share
//! is never online); the driver commits `--rollouts` changes to the hub's repository one
//! after another, each rolling out through the channel's plan. Prints hub CPU and memory
//! while the rollouts run, and for each step change the time from the last report of a
//! step to the first cluster of the next step receiving its new assignment.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use skiff_hub::rollout::{Member, RolloutPlan, steps_of};
use skiff_proto::api::{Health, Outcome, Report};
use skiff_proto::statement::Timestamp;

use super::{Args, percentile, proc_stats};

/// What one cluster saw of one generation: when it received it, when its report was taken.
#[derive(Clone, Copy, Default)]
struct Seen {
    received: Option<Instant>,
    reported: Option<Instant>,
}

/// Clusters in one thousand that are never online, and that report Failed.
fn role(i: usize, offline_permille: usize, failing_permille: usize) -> (bool, bool) {
    let r = (i * 7919) % 1000;
    (
        r < offline_permille,
        (offline_permille..offline_permille + failing_permille).contains(&r),
    )
}

type Log = Arc<Mutex<BTreeMap<(usize, u64), Seen>>>;

async fn agent(
    i: usize,
    name: String,
    token: String,
    failing: bool,
    a: (String, String, u64, Instant),
    http: reqwest::Client,
    log: Log,
) {
    let (hub, channel, wait, stop) = a;
    let url = format!("{hub}/v1/clusters/{name}/desired");
    let mut etag = String::new();
    let mut reported = 0u64;
    let mut seq = 0u64;
    while Instant::now() < stop {
        let mut req = http.get(format!("{url}?wait={wait}")).bearer_auth(&token);
        if !etag.is_empty() {
            req = req.header("If-None-Match", &etag);
        }
        let Ok(r) = req.send().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if r.status() != reqwest::StatusCode::OK {
            continue;
        }
        let received = Instant::now();
        etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let Ok(body) = r.json::<serde_json::Value>().await else {
            continue;
        };
        let generation = body["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["channel"] == channel.as_str())
            .and_then(|c| c["generation"].as_u64());
        let Some(g) = generation.filter(|g| *g > reported) else {
            continue;
        };
        log.lock().expect("log").entry((i, g)).or_default().received = Some(received);
        // An agent takes a moment to verify and apply.
        tokio::time::sleep(Duration::from_millis(20 + (i as u64 * 31) % 80)).await;
        seq += 1;
        let report = Report {
            instance: format!("sim-{i}"),
            seq,
            time: Timestamp::now(),
            agent_version: "sim".to_owned(),
            channel: channel.clone(),
            outcome: if failing {
                Outcome::Failed
            } else {
                Outcome::Applied
            },
            generation: Some(g),
            sha256: None,
            commit: None,
            message: Some(
                if failing {
                    "simulated failure"
                } else {
                    "simulated apply"
                }
                .to_owned(),
            ),
            objects: Some(3),
            errors: Vec::new(),
            duration_ms: Some(20),
            drift: Vec::new(),
            health: (!failing).then(|| Health {
                state: "Healthy".to_owned(),
                reason: None,
                objects: BTreeMap::new(),
            }),
            unknown: Vec::new(),
            deferred: None,
        };
        let sent = http
            .post(format!("{hub}/v1/clusters/{name}/reports"))
            .bearer_auth(&token)
            .json(&vec![report])
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            reported = g;
            log.lock().expect("log").entry((i, g)).or_default().reported = Some(Instant::now());
        }
    }
}

async fn admin_json(a: &Args, http: &reqwest::Client, path: &str) -> anyhow::Result<serde_json::Value> {
    let r = http
        .get(format!("{}{path}", a.hub))
        .bearer_auth(&a.admin_token)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    Ok(r.json().await?)
}

fn commit(repo: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let file = repo.join("apps/rollout-bench.yaml");
    std::fs::create_dir_all(file.parent().expect("parent"))?;
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: rollout-bench, namespace: demo}}\ndata: {{n: \"{n}\"}}\n"
        ),
    )?;
    for args in [
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-qm",
            "rollout bench",
        ],
    ] {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(&args)
            .output()?;
        if !out.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// Runs the rollout mode.
pub async fn run(
    a: &Args,
    http: &reqwest::Client,
    clusters: Arc<Vec<(String, String)>>,
    repo: &std::path::Path,
    plan_file: &std::path::Path,
) -> anyhow::Result<()> {
    let text = std::fs::read(plan_file).with_context(|| format!("reading {}", plan_file.display()))?;
    let doc = skiff_proto::manifest::parse_file("plan", &text)?
        .into_iter()
        .next()
        .context("empty plan")?;
    let plan: RolloutPlan = serde_json::from_value(doc.value)?;
    plan.check().map_err(|e| anyhow::anyhow!("plan: {e}"))?;
    let channel = a.channel.clone();
    let stop = Instant::now() + Duration::from_secs(a.duration);
    let log: Log = Arc::default();
    let mut offline = 0;
    let mut failing_n = 0;
    for (i, (name, token)) in clusters.iter().enumerate() {
        let (off, failing) = role(i, a.offline_permille, a.failing_permille);
        offline += usize::from(off);
        failing_n += usize::from(failing);
        if off {
            continue;
        }
        tokio::spawn(agent(
            i,
            name.clone(),
            token.clone(),
            failing,
            (a.hub.clone(), channel.clone(), a.wait, stop),
            http.clone(),
            log.clone(),
        ));
    }
    eprintln!(
        "{} clusters: {offline} never online, {failing_n} report Failed",
        clusters.len()
    );
    let generation = |v: &serde_json::Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == channel.as_str() || c["channel"] == channel.as_str())
            .map(|c| {
                (
                    c["generation"].as_u64().unwrap_or(0),
                    c["phase"].as_str().unwrap_or("").to_owned(),
                )
            })
    };
    // Every online cluster has the current generation first.
    let online = clusters.len() - offline;
    let settle = Instant::now();
    while log.lock().expect("log").len() < online && Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} clusters reported the current generation in {:.1}s",
        log.lock().expect("log").len(),
        settle.elapsed().as_secs_f64()
    );
    if let Some((rss, _)) = a.hub_pid.and_then(proc_stats) {
        println!(
            "hub before the rollouts (every online cluster long-polling): RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    let cpu0 = a.hub_pid.and_then(proc_stats);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut generations = Vec::new();
    for n in 0..a.rollouts {
        let before = generation(&admin_json(a, http, "/v1/admin/channels").await?).map_or(0, |g| g.0);
        commit(repo, n)?;
        http.post(format!("{}/v1/admin/channels/{channel}/refresh", a.hub))
            .bearer_auth(&a.admin_token)
            .send()
            .await?;
        let t = Instant::now();
        loop {
            if Instant::now() > stop {
                bail!("rollout {n} did not complete within --duration");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(s) = a.hub_pid.and_then(proc_stats) {
                samples.push(s);
            }
            match generation(&admin_json(a, http, "/v1/admin/rollouts").await?) {
                Some((g, phase)) if g > before && phase == "complete" => {
                    println!(
                        "rollout of generation {g}: complete in {:.1}s",
                        t.elapsed().as_secs_f64()
                    );
                    generations.push(g);
                    break;
                }
                Some((g, phase)) if g > before && phase == "halted" => {
                    bail!("rollout of generation {g} halted")
                }
                _ => {}
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let (Some((_, c0)), Some(last)) = (cpu0, samples.last()) {
        let peak = samples.iter().map(|s| s.0).max().unwrap_or(0);
        println!(
            "hub while rolling out: peak RSS {:.1} MiB, CPU {:.0}% of one core on average over {elapsed:.0}s",
            peak as f64 / 1024.0,
            (last.1 - c0) / elapsed * 100.0
        );
    }
    // Which step each cluster is in, as the hub computes it.
    let labels = BTreeMap::from([("fleet".to_owned(), "sim".to_owned())]);
    let members: Vec<Member<'_>> = clusters
        .iter()
        .map(|(n, _)| Member {
            name: n,
            labels: &labels,
        })
        .collect();
    let step_of = steps_of(&plan, &channel, &members);
    let index: BTreeMap<&str, usize> = clusters
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let log = log.lock().expect("log");
    let mut gaps = Vec::new();
    for g in &generations {
        for k in 0..plan.steps.len().saturating_sub(1) {
            let in_step = |s: usize| {
                step_of
                    .iter()
                    .filter(move |(_, x)| **x == s)
                    .filter_map(|(n, _)| log.get(&(index[n.as_str()], *g)))
            };
            let last = in_step(k).filter_map(|s| s.reported).max();
            let first = in_step(k + 1).filter_map(|s| s.received).min();
            if let (Some(last), Some(first)) = (last, first) {
                gaps.push(first.saturating_duration_since(last));
            }
        }
    }
    gaps.sort();
    println!(
        "step changes: {} measured; from the last report of a step to the next step's first assignment: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        gaps.len(),
        percentile(&gaps, 0.5).as_secs_f64() * 1000.0,
        percentile(&gaps, 0.99).as_secs_f64() * 1000.0,
        gaps.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    Ok(())
}
