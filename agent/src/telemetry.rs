//! Logs (tracing; `SKIFF_LOG` filters, human or JSON) and a tiny `/metrics` + `/healthz`
//! listener, written against the socket: the agent carries no web framework.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::agent::Agent;

/// Starts logging to stderr.
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

/// One metric family: HELP and TYPE, then its samples (`labels` → value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, value) in samples {
        out.push_str(&format!("{name}{labels} {value}\n"));
    }
}

fn metrics(agent: &Agent) -> String {
    let m = &agent.metrics;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
    let one = |v: String| vec![(String::new(), v)];
    let mut out = String::new();
    family(
        &mut out,
        "skiff_agent_applies_total",
        "counter",
        "Apply attempts by result.",
        &[
            ("{result=\"ok\"}".to_owned(), n(&m.applies_ok)),
            ("{result=\"failed\"}".to_owned(), n(&m.applies_failed)),
        ],
    );
    family(
        &mut out,
        "skiff_agent_bundles_rejected_total",
        "counter",
        "Bundles that failed verification.",
        &one(n(&m.rejected)),
    );
    family(
        &mut out,
        "skiff_agent_reports_sent_total",
        "counter",
        "Reports delivered to the hub.",
        &one(n(&m.reports_sent)),
    );
    family(
        &mut out,
        "skiff_agent_drift_detected_total",
        "counter",
        "Drifted objects found by drift checks.",
        &one(n(&m.drift_detected)),
    );
    family(
        &mut out,
        "skiff_agent_drift_corrected_total",
        "counter",
        "Drifted objects re-applied by self-heal.",
        &one(n(&m.drift_corrected)),
    );
    let stamp = |c: &std::sync::atomic::AtomicU64| match c.load(Ordering::Relaxed) {
        0 => Vec::new(),
        t => one(t.to_string()),
    };
    family(
        &mut out,
        "skiff_agent_last_hub_contact_timestamp_seconds",
        "gauge",
        "Unix time of the last answer from the hub.",
        &stamp(&m.last_hub_contact),
    );
    family(
        &mut out,
        "skiff_agent_last_apply_timestamp_seconds",
        "gauge",
        "Unix time of the last successful apply.",
        &stamp(&m.last_apply),
    );
    family(
        &mut out,
        "skiff_agent_outbox_reports",
        "gauge",
        "Reports waiting for the hub.",
        &one(agent.store().outbox_len().unwrap_or(0).to_string()),
    );
    family(
        &mut out,
        "skiff_agent_outbox_dropped_total",
        "counter",
        "Reports dropped because the outbox was full.",
        &one(agent.store().dropped().unwrap_or(0).to_string()),
    );
    let channels = agent.store().channels().unwrap_or_default();
    let per_channel = |f: &dyn Fn(&crate::store::ChannelState) -> u64| -> Vec<(String, String)> {
        channels
            .iter()
            .map(|(name, state)| (format!("{{channel=\"{name}\"}}"), f(state).to_string()))
            .collect()
    };
    family(
        &mut out,
        "skiff_agent_channel_generation",
        "gauge",
        "Generation applied per channel (0: none).",
        &per_channel(&|s| s.applied.as_ref().map_or(0, |a| a.generation)),
    );
    family(
        &mut out,
        "skiff_agent_channel_ok",
        "gauge",
        "1 when the channel's last apply succeeded.",
        &per_channel(&|s| s.applied.as_ref().map_or(0, |a| u64::from(a.ok))),
    );
    family(
        &mut out,
        "skiff_agent_channel_waiting_generation",
        "gauge",
        "A newer generation verified and waiting for the hold to lift or a maintenance window (0: none).",
        &per_channel(&|s| s.pending.as_ref().map_or(0, |a| a.generation)),
    );
    family(
        &mut out,
        "skiff_agent_held",
        "gauge",
        "1 while the site holds (skiff-agent hold).",
        &one(u8::from(agent.held()).to_string()),
    );
    out
}

/// Serves `GET /metrics` and `GET /healthz` on `addr` (HTTP/1.0-style: one answer, close).
pub async fn serve(addr: std::net::SocketAddr, agent: Arc<Agent>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "Metrics and health listener");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" | "/readyz" => ("200 OK", "ok\n".to_owned()),
                "/metrics" => ("200 OK", metrics(&agent)),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
