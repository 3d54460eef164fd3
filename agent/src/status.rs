//! `skiff-agent status` and `report export`, from the local store alone. While the agent
//! runs, its store is locked; the snapshots it keeps next to it are read instead.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};
use skiff_proto::api::ReportFile;

use crate::config::AgentConfig;
use crate::store::Store;

fn from_store(dir: &Path) -> anyhow::Result<Value> {
    if dir.join("status.json").exists() && Store::in_use(dir) {
        anyhow::bail!("the agent is running");
    }
    let store = Store::open(dir)?;
    let root = store
        .root()?
        .and_then(|b| skiff_proto::root::read_envelope(&b).ok())
        .and_then(|e| serde_json::from_slice::<skiff_proto::root::Root>(&e.payload_bytes().ok()?).ok());
    Ok(json!({
        "trustRoot": root.map(|r| json!({"version": r.version, "expires": r.expires})),
        "assignment": store.assignment()?.map(|a| assignment_summary(&a.assignment)),
        "channels": store.channels()?,
        "outbox": store.outbox_len()?,
        "dropped": store.dropped()?,
    }))
}

/// What `status` shows of the assignment in effect.
pub fn assignment_summary(a: &skiff_proto::assignment::Assignment) -> Value {
    json!({
        "sequence": a.sequence,
        "issued": a.issued,
        "expires": a.expires,
        "channels": a.channels.iter().map(|c| json!({"channel": c.channel, "maxGeneration": c.max_generation})).collect::<Vec<_>>(),
        "maintenance": a.maintenance,
    })
}

fn load(dir: &Path) -> anyhow::Result<(Value, bool)> {
    match from_store(dir) {
        Ok(v) => Ok((v, false)),
        Err(store_error) => {
            let path = dir.join("status.json");
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "no store readable in {} ({store_error}) and no {}",
                    dir.display(),
                    path.display()
                )
            })?;
            Ok((
                serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?,
                true,
            ))
        }
    }
}

/// Prints every channel's accepted and applied state.
pub fn print(dir: &Path, json_output: bool) -> anyhow::Result<()> {
    let (mut status, snapshot) = load(dir)?;
    status["hold"] = serde_json::to_value(crate::hold::read(dir))?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if snapshot {
        println!(
            "(agent running: from its snapshot written {})",
            status["written"].as_str().unwrap_or("-")
        );
    }
    if let Some(h) = crate::hold::read(dir) {
        println!(
            "HELD since {}{} (skiff-agent release lifts it)",
            h.since,
            if h.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", h.reason)
            }
        );
    }
    if let Some(v) = status["trustRoot"]["version"].as_u64() {
        println!(
            "trust root: version {v}, expires {}",
            status["trustRoot"]["expires"].as_str().unwrap_or("-")
        );
    }
    let a = &status["assignment"];
    if let Some(seq) = a["sequence"].as_u64() {
        let pinned = |c: &Value| match c["maxGeneration"].as_u64() {
            Some(p) => format!("{} (pinned at {p})", c["channel"].as_str().unwrap_or("?")),
            None => c["channel"].as_str().unwrap_or("?").to_owned(),
        };
        let channels: Vec<String> = a["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .map(pinned)
            .collect();
        println!(
            "assignment: sequence {seq}, signed {}{}; channels: {}",
            a["issued"].as_str().unwrap_or("-"),
            a["expires"]
                .as_str()
                .map_or(String::new(), |e| format!(", expires {e}")),
            if channels.is_empty() {
                "none".to_owned()
            } else {
                channels.join(", ")
            }
        );
    } else {
        println!("assignment: none yet");
    }
    let channels = status["channels"].as_object().cloned().unwrap_or_default();
    if channels.is_empty() {
        println!("no channel applied yet");
    }
    let mut rows = vec![
        [
            "CHANNEL",
            "GENERATION",
            "COMMIT",
            "APPLIED",
            "RESULT",
            "OBJECTS",
            "DRIFTED",
            "HEALTH",
            "MESSAGE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for (name, c) in &channels {
        let a = &c["applied"];
        let s = |v: &Value| v.as_str().map_or("-".to_owned(), str::to_owned);
        rows.push(vec![
            name.clone(),
            a["generation"].as_u64().map_or("-".to_owned(), |g| g.to_string()),
            a["commit"]
                .as_str()
                .map_or("-".to_owned(), |c| c.chars().take(12).collect()),
            s(&a["at"]),
            match a["ok"].as_bool() {
                Some(true) => "applied".to_owned(),
                Some(false) => "failed".to_owned(),
                None => "-".to_owned(),
            },
            a["objects"].as_u64().map_or("-".to_owned(), |n| n.to_string()),
            c["drift"].as_array().map_or(0, Vec::len).to_string(),
            s(&c["health"]["state"]),
            match c["pending"]["generation"].as_u64() {
                Some(g) => format!("generation {g} verified, waiting (hold or maintenance window)"),
                None => s(&a["message"]),
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!(
        "reports waiting for the hub: {} (dropped: {})",
        status["outbox"], status["dropped"]
    );
    Ok(())
}

/// Writes the pending reports to `out` for `skiff-hub report import`.
pub fn export_reports(config: &AgentConfig, out: &Path) -> anyhow::Result<()> {
    let file = match Store::open(&config.data_dir) {
        Ok(store) => ReportFile {
            cluster: config.cluster.clone(),
            reports: store.outbox(usize::MAX)?,
        },
        Err(_) => {
            let path = config.data_dir.join("outbox.json");
            serde_json::from_slice(
                &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )?
        }
    };
    std::fs::write(out, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{} report(s) written to {}", file.reports.len(), out.display());
    Ok(())
}
