//! Logs (tracing, filtered by `SKIFF_LOG`, human or JSON) and Prometheus metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use skiff_proto::statement::Timestamp;

use crate::fleet::Fleet;

/// Starts logging to stderr. `SKIFF_LOG` filters (default `info`); `json` switches format.
pub fn init_logging(json: bool) -> Result<(), String> {
    use std::io::IsTerminal as _;
    // An unset SKIFF_LOG means `info`; a set one that does not parse is an error, not
    // silence.
    let filter = match std::env::var("SKIFF_LOG") {
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| {
            format!("SKIFF_LOG={spec:?} is not a log filter ({e}); use a level (error, warn, info, debug, trace) or e.g. info,skiff_hub=debug")
        })?,
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // JSON: message and fields at the top level beside level and target.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0];

#[derive(Default)]
struct Histogram {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// The hub's counters.
#[derive(Default)]
pub struct Metrics {
    built: Mutex<BTreeMap<String, u64>>,
    failed: Mutex<BTreeMap<String, u64>>,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    fetches: Mutex<BTreeMap<String, (Option<Timestamp>, u64)>>,
}

impl Metrics {
    /// A bundle was built for `channel`.
    pub fn bundle_built(&self, channel: &str) {
        *self
            .built
            .lock()
            .expect("metrics")
            .entry(channel.to_owned())
            .or_default() += 1;
    }

    /// A build of `channel` failed.
    pub fn build_failed(&self, channel: &str) {
        *self
            .failed
            .lock()
            .expect("metrics")
            .entry(channel.to_owned())
            .or_default() += 1;
    }

    /// A fetch of `repo` finished.
    pub fn fetched(&self, repo: &str, ok: bool) {
        let mut f = self.fetches.lock().expect("metrics");
        let e = f.entry(repo.to_owned()).or_default();
        if ok {
            e.0 = Some(Timestamp::now());
        } else {
            e.1 += 1;
        }
    }

    /// A request to `route` was answered with `code` after `elapsed`.
    pub fn request(&self, route: &'static str, code: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .expect("metrics")
            .entry((route, code))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut l = self.latency.lock().expect("metrics");
        let h = l.entry(route).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i] += 1;
            }
        }
    }

    /// Prometheus text exposition.
    pub fn render(
        &self,
        fleet: &Fleet,
        connections: &crate::api::conns::Tracker,
        per_cluster: bool,
    ) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "skiff_hub_bundles_built_total",
            "counter",
            "Bundles built and signed, per channel.",
        );
        for (c, n) in self.built.lock().expect("metrics").iter() {
            let _ = writeln!(out, "skiff_hub_bundles_built_total{{channel=\"{c}\"}} {n}");
        }
        family(
            &mut out,
            "skiff_hub_build_failures_total",
            "counter",
            "Commits that failed to render or validate, per channel.",
        );
        for (c, n) in self.failed.lock().expect("metrics").iter() {
            let _ = writeln!(out, "skiff_hub_build_failures_total{{channel=\"{c}\"}} {n}");
        }
        family(
            &mut out,
            "skiff_hub_channel_generation",
            "gauge",
            "Current generation per channel.",
        );
        let channels = fleet.channel_statuses();
        for c in &channels {
            let _ = writeln!(
                out,
                "skiff_hub_channel_generation{{channel=\"{}\"}} {}",
                c.name, c.record.generation
            );
        }
        family(
            &mut out,
            "skiff_hub_channel_build_error",
            "gauge",
            "1 when the channel's newest commit failed to build.",
        );
        for c in &channels {
            let _ = writeln!(
                out,
                "skiff_hub_channel_build_error{{channel=\"{}\"}} {}",
                c.name,
                u8::from(c.record.last_error.is_some())
            );
        }
        let rollouts = fleet.rollout_statuses();
        family(
            &mut out,
            "skiff_hub_rollout_step",
            "gauge",
            "Current step (1-based) of each channel's rollout, with its generation and phase (running, paused, halted, aborted, complete).",
        );
        for r in &rollouts {
            let _ = writeln!(
                out,
                "skiff_hub_rollout_step{{channel=\"{}\",generation=\"{}\",phase=\"{}\"}} {}",
                r.channel, r.generation, r.phase, r.step
            );
        }
        family(
            &mut out,
            "skiff_hub_rollout_clusters",
            "gauge",
            "Clusters of each channel's rollout by standing: total, reached, done, progressing, behind, failed, held, waiting (for their window), offline.",
        );
        for r in &rollouts {
            let c = &r.counts;
            for (state, n) in [
                ("total", r.total),
                ("reached", r.reached),
                ("done", c.done),
                ("progressing", c.progressing),
                ("behind", r.behind),
                ("failed", c.failed),
                ("held", c.held),
                ("waiting", c.waiting),
                ("offline", c.offline),
            ] {
                let _ = writeln!(
                    out,
                    "skiff_hub_rollout_clusters{{channel=\"{}\",state=\"{state}\"}} {n}",
                    r.channel
                );
            }
        }
        let fetches: Vec<(String, (Option<Timestamp>, u64))> = self
            .fetches
            .lock()
            .expect("metrics")
            .iter()
            .map(|(r, f)| (r.clone(), *f))
            .collect();
        family(
            &mut out,
            "skiff_hub_repo_last_fetch_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful fetch per repository.",
        );
        for (r, (ok, _)) in &fetches {
            if let Some(t) = ok {
                let _ = writeln!(
                    out,
                    "skiff_hub_repo_last_fetch_success_timestamp_seconds{{repo=\"{r}\"}} {}",
                    t.unix_seconds()
                );
            }
        }
        family(
            &mut out,
            "skiff_hub_repo_fetch_failures_total",
            "counter",
            "Failed fetches per repository.",
        );
        for (r, (_, failures)) in &fetches {
            let _ = writeln!(
                out,
                "skiff_hub_repo_fetch_failures_total{{repo=\"{r}\"}} {failures}"
            );
        }
        family(
            &mut out,
            "skiff_hub_http_requests_total",
            "counter",
            "HTTP requests by route and status code.",
        );
        for ((route, code), n) in self.requests.lock().expect("metrics").iter() {
            let _ = writeln!(
                out,
                "skiff_hub_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        family(
            &mut out,
            "skiff_hub_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route (long-polls include their wait).",
        );
        for (route, h) in self.latency.lock().expect("metrics").iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "skiff_hub_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "skiff_hub_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "skiff_hub_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "skiff_hub_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }

        let clusters = fleet.summaries();
        let mut by_state: BTreeMap<&str, u64> = ["unseen", "offline", "synced", "progressing", "failed"]
            .iter()
            .map(|s| (*s, 0))
            .collect();
        for c in &clusters {
            *by_state.entry(c.state).or_default() += 1;
        }
        if per_cluster {
            // One series per cluster: opt-in, since a fleet of thousands makes thousands.
            family(
                &mut out,
                "skiff_hub_cluster_drifted_objects",
                "gauge",
                "Drifted objects in each cluster's latest reports.",
            );
            for c in &clusters {
                let _ = writeln!(
                    out,
                    "skiff_hub_cluster_drifted_objects{{cluster=\"{}\"}} {}",
                    c.name, c.drifted
                );
            }
            family(
                &mut out,
                "skiff_hub_cluster_unhealthy_channels",
                "gauge",
                "Channels whose latest health is not Healthy, per cluster.",
            );
            for c in &clusters {
                let _ = writeln!(
                    out,
                    "skiff_hub_cluster_unhealthy_channels{{cluster=\"{}\"}} {}",
                    c.name, c.unhealthy
                );
            }
            family(
                &mut out,
                "skiff_hub_cluster_last_seen_timestamp_seconds",
                "gauge",
                "Unix time each cluster's agent was last heard from.",
            );
            for c in &clusters {
                if let Some(t) = c.last_seen {
                    let _ = writeln!(
                        out,
                        "skiff_hub_cluster_last_seen_timestamp_seconds{{cluster=\"{}\"}} {}",
                        c.name,
                        t.unix_seconds()
                    );
                }
            }
        }
        family(
            &mut out,
            "skiff_hub_drifted_objects",
            "gauge",
            "Drifted objects in all clusters' latest reports.",
        );
        let _ = writeln!(
            out,
            "skiff_hub_drifted_objects {}",
            clusters.iter().map(|c| c.drifted).sum::<usize>()
        );
        family(
            &mut out,
            "skiff_hub_connections_open",
            "gauge",
            "Open connections to the hub.",
        );
        let _ = writeln!(out, "skiff_hub_connections_open {}", connections.open());
        family(
            &mut out,
            "skiff_hub_connections_refused_total",
            "counter",
            "Connections closed at once at the connection limits.",
        );
        let _ = writeln!(
            out,
            "skiff_hub_connections_refused_total {}",
            connections.refused.load(std::sync::atomic::Ordering::Relaxed)
        );
        family(
            &mut out,
            "skiff_hub_clusters",
            "gauge",
            "Registered clusters by state (unseen, offline, synced, progressing, failed).",
        );
        for (state, n) in by_state {
            let _ = writeln!(out, "skiff_hub_clusters{{state=\"{state}\"}} {n}");
        }
        out
    }
}
