//! The admin commands: they talk to a running hub's admin API.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use reqwest::Method;
use skiff_proto::api::{Desired, ReportAck, ReportFile};
use skiff_proto::statement::Timestamp;

use super::{ClusterCommand, HubArgs, Output};
use crate::api::admin::TokenResponse;
use crate::fleet::{ChannelStatus, ClusterStatus};

fn parse_labels(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("label {p:?}: expected key=value"))
        })
        .collect()
}

fn ago(t: Option<Timestamp>) -> String {
    let Some(t) = t else { return "never".to_owned() };
    let secs = Timestamp::now().unix_seconds().saturating_sub(t.unix_seconds());
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// A message on one line, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        flat.chars().take(max).collect::<String>() + "…"
    } else {
        flat
    }
}

/// `skiff-hub status CLUSTER`: one cluster in full.
pub(super) async fn cluster_detail(hub: &HubArgs, name: &str, output: Output) -> anyhow::Result<()> {
    let client = hub.client()?;
    let found: Vec<ClusterStatus> = client
        .json(Method::GET, &format!("/v1/admin/status?name={name}"), None)
        .await?;
    let Some(c) = found.into_iter().next() else {
        anyhow::bail!("cluster {name:?} is not registered (skiff-hub cluster list shows those that are)");
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    println!("Cluster:   {}", c.name);
    println!("Labels:    {}", labels_text(&c.labels));
    let seen = ago(c.last_seen);
    println!(
        "Last seen: {}",
        if c.offline {
            format!("{seen} (OFFLINE)")
        } else {
            seen
        }
    );
    match &c.assignment {
        Some(a) => println!(
            "Assigned:  sequence {}, signed {}{}",
            a.sequence,
            a.issued,
            a.expires.map_or(String::new(), |e| format!(", expires {e}"))
        ),
        None => println!("Assigned:  - (no signed assignment yet)"),
    }
    if !c.values.is_empty() {
        println!("Values:    {}", labels_text(&c.values));
    }
    for ch in &c.channels {
        let g = |v: Option<u64>| v.map_or("-".to_owned(), |g| g.to_string());
        println!();
        println!(
            "Channel {}{}",
            ch.channel,
            if ch.targeted {
                String::new()
            } else {
                format!(" ({})", untargeted(ch))
            }
        );
        println!("  desired generation: {}", g(ch.desired_generation));
        if let Some(pin) = ch.pin {
            println!("  pinned at:          {pin}");
        }
        if let Some(pin) = ch.rollout_pin {
            println!("  rollout gave it:    {pin} (later steps of the channel's rollout bring newer)");
        }
        println!("  applied generation: {}", g(ch.applied_generation));
        println!(
            "  last report:        {} {}",
            ch.result.as_deref().unwrap_or("-"),
            ch.reported
                .map_or(String::new(), |t| format!("({})", ago(Some(t))))
        );
        if let Some(m) = &ch.message {
            println!("  message:            {m}");
        }
        println!("  health:             {}", ch.health.as_deref().unwrap_or("-"));
        for d in &ch.drift {
            println!(
                "  drift: {} {}{}",
                d.object,
                d.kind,
                if d.corrected { " (corrected)" } else { "" }
            );
            if let Some(reason) = &d.reason {
                println!("    why: {reason}");
            }
            for p in &d.paths {
                let v = |v: &Option<serde_json::Value>| {
                    v.as_ref().map_or("(hidden)".to_owned(), ToString::to_string)
                };
                println!("    {}: desired {} live {}", p.path, v(&p.desired), v(&p.live));
            }
        }
    }
    Ok(())
}

/// `key=value` (set) and `key-` (remove) arguments; `trim_values` for labels (values
/// keep their spaces).
fn set_or_remove(changes: &[String], trim_values: bool) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    for c in changes {
        if let Some((k, v)) = c.split_once('=') {
            let v = if trim_values { v.trim() } else { v };
            out.insert(k.trim().to_owned(), Some(v.to_owned()));
        } else if let Some(k) = c.strip_suffix('-') {
            out.insert(k.trim().to_owned(), None);
        } else {
            anyhow::bail!("{c:?}: expected key=value to set or key- to remove");
        }
    }
    Ok(out)
}

/// What became of a channel that no longer targets a cluster.
fn untargeted(ch: &crate::fleet::ClusterChannelStatus) -> &'static str {
    match ch.on_unassign {
        Some(skiff_proto::assignment::OnUnassign::Keep) => "untargeted (kept, not enforced)",
        _ => "untargeted (pruned by its agent)",
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub(super) async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Add { hub, name, labels } => {
            let labels = parse_labels(&labels)?;
            let r: TokenResponse = hub
                .client()?
                .json(
                    Method::POST,
                    "/v1/admin/clusters",
                    Some(serde_json::json!({"name": name, "labels": labels})),
                )
                .await?;
            // The token goes to stdout (alone, for `> file`); say so without promising
            // it is "below" when stdout is redirected.
            use std::io::IsTerminal as _;
            if std::io::stdout().is_terminal() {
                eprintln!(
                    "registered cluster {} (its token, below, is shown only once)",
                    r.cluster
                );
            } else {
                eprintln!(
                    "registered cluster {} (its token went to standard output; it is shown only once)",
                    r.cluster
                );
            }
            println!("{}", r.token);
        }
        ClusterCommand::List { hub, output } => {
            let clusters: Vec<ClusterStatus> = hub
                .client()?
                .json(Method::GET, "/v1/admin/clusters", None)
                .await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&clusters)?);
                return Ok(());
            }
            let mut rows = vec![vec![
                "NAME".to_owned(),
                "LABELS".to_owned(),
                "LAST SEEN".to_owned(),
                "CHANNELS".to_owned(),
            ]];
            for c in &clusters {
                let channels: Vec<&str> = c
                    .channels
                    .iter()
                    .filter(|ch| ch.targeted)
                    .map(|ch| ch.channel.as_str())
                    .collect();
                rows.push(vec![
                    c.name.clone(),
                    labels_text(&c.labels),
                    ago(c.last_seen),
                    if channels.is_empty() {
                        "-".to_owned()
                    } else {
                        channels.join(",")
                    },
                ]);
            }
            table(&rows);
        }
        ClusterCommand::Label { hub, name, changes } => {
            let labels = set_or_remove(&changes, true)?;
            let r: serde_json::Value = hub
                .client()?
                .json(
                    Method::PATCH,
                    &format!("/v1/admin/clusters/{name}"),
                    Some(serde_json::json!({"labels": labels})),
                )
                .await?;
            let now: BTreeMap<String, String> =
                serde_json::from_value(r["labels"].clone()).unwrap_or_default();
            println!("{name}: {}", labels_text(&now));
        }
        ClusterCommand::SetValues {
            hub,
            name,
            channel,
            changes,
        } => {
            let values = set_or_remove(&changes, false)?;
            let r: serde_json::Value = hub
                .client()?
                .json(
                    Method::POST,
                    &format!("/v1/admin/clusters/{name}/values"),
                    Some(serde_json::json!({"channel": channel, "values": values})),
                )
                .await?;
            let now: BTreeMap<String, String> =
                serde_json::from_value(r["values"].clone()).unwrap_or_default();
            let scope = channel.map_or_else(|| "every channel".to_owned(), |c| format!("channel {c}"));
            println!("{name} ({scope}): {}", labels_text(&now));
        }
        ClusterCommand::ApplyNow {
            hub,
            name,
            duration,
            clear: _,
        } => {
            let r: serde_json::Value = hub
                .client()?
                .json(
                    Method::POST,
                    &format!("/v1/admin/clusters/{name}/apply-now"),
                    Some(serde_json::json!({"seconds": duration.map(|d| d.as_secs())})),
                )
                .await?;
            match r["until"].as_str() {
                Some(until) => println!(
                    "{name}: maintenance windows overridden until {until}; its agent applies newer generations as soon as it gets its new assignment"
                ),
                None => println!("{name}: maintenance windows apply again"),
            }
        }
        ClusterCommand::Pin {
            hub,
            name,
            channel,
            generation,
            clear: _,
        } => {
            let _: serde_json::Value = hub
                .client()?
                .json(
                    Method::POST,
                    &format!("/v1/admin/clusters/{name}/pins"),
                    Some(serde_json::json!({"channel": channel, "generation": generation})),
                )
                .await?;
            match generation {
                Some(g) => println!("{name}: channel {channel} pinned at generation {g}"),
                None => println!("{name}: channel {channel} unpinned"),
            }
        }
        ClusterCommand::Render {
            hub,
            name,
            channel,
            output,
        } => {
            let path = match &channel {
                Some(c) => format!("/v1/admin/clusters/{name}/render?channel={c}"),
                None => format!("/v1/admin/clusters/{name}/render"),
            };
            let channels: Vec<crate::preview::RenderedChannel> =
                hub.client()?.json(Method::GET, &path, None).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&channels)?);
            } else {
                for c in &channels {
                    let generation = c
                        .generation
                        .map_or_else(|| "none built".to_owned(), |g| g.to_string());
                    println!(
                        "# channel {}, generation {generation}{}",
                        c.channel,
                        if c.substitute { ", values substituted" } else { "" }
                    );
                    print!("{}", crate::yaml::documents(&c.objects));
                }
            }
            let failed: Vec<String> = channels
                .iter()
                .flat_map(|c| {
                    c.errors
                        .iter()
                        .map(move |e| format!("channel {}: {e}", c.channel))
                })
                .collect();
            if !failed.is_empty() {
                anyhow::bail!(
                    "this cluster could not apply {} file(s):\n  {}",
                    failed.len(),
                    failed.join("\n  ")
                );
            }
        }
        ClusterCommand::Remove { hub, name } => {
            let _: serde_json::Value = hub
                .client()?
                .json(Method::DELETE, &format!("/v1/admin/clusters/{name}"), None)
                .await?;
            eprintln!("removed cluster {name}");
        }
        ClusterCommand::Bootstrap {
            hub,
            name,
            labels,
            hub_url,
            format,
            out,
        } => {
            super::bootstrap::bootstrap(
                &hub,
                &name,
                &parse_labels(&labels)?,
                hub_url,
                format,
                out.as_deref(),
            )
            .await?;
        }
        ClusterCommand::RotateToken { hub, name } => {
            let r: TokenResponse = hub
                .client()?
                .json(Method::POST, &format!("/v1/admin/clusters/{name}/token"), None)
                .await?;
            eprintln!("new token for {} (the old one no longer works)", r.cluster);
            println!("{}", r.token);
        }
    }
    Ok(())
}

pub(super) async fn status(hub: &HubArgs, output: Output) -> anyhow::Result<()> {
    let client = hub.client()?;
    // Page by page: a fleet of thousands is never one answer.
    let mut clusters: Vec<ClusterStatus> = Vec::new();
    loop {
        let mut path = format!("/v1/admin/status?limit={}", crate::api::admin::MAX_PAGE);
        if let Some(last) = clusters.last() {
            path.push_str(&format!("&after={}", last.name));
        }
        let page: Vec<ClusterStatus> = client.json(Method::GET, &path, None).await?;
        let done = page.len() < crate::api::admin::MAX_PAGE;
        clusters.extend(page);
        if done {
            break;
        }
    }
    let channels: Vec<ChannelStatus> = client.json(Method::GET, "/v1/admin/channels", None).await?;
    let rollouts: Vec<crate::rollout::RolloutStatus> =
        client.json(Method::GET, "/v1/admin/rollouts", None).await?;
    let waiting: Vec<crate::trust::Waiting> = client.json(Method::GET, "/v1/admin/pending", None).await?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "clusters": clusters,
                "channels": channels,
                "rollouts": rollouts,
                "waitingForSignatures": waiting
            }))?
        );
        return Ok(());
    }
    let mut rows = vec![
        [
            "CHANNEL",
            "REPO",
            "BRANCH",
            "PATH",
            "GENERATION",
            "COMMIT",
            "CLUSTERS",
            "LAST ERROR",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for c in &channels {
        let r = &c.record;
        rows.push(vec![
            c.name.clone(),
            c.repo.clone(),
            c.branch.clone(),
            if c.path.is_empty() {
                "/".to_owned()
            } else {
                c.path.clone()
            },
            r.generation.to_string(),
            r.commit
                .as_deref()
                .map_or("-".to_owned(), |c| c.chars().take(12).collect()),
            if c.targets_nothing {
                "none (no targets)".to_owned()
            } else {
                c.clusters.len().to_string()
            },
            match (&c.fetch_error, &r.last_error) {
                (Some(fetch), _) => format!("fetch: {}", one_line(fetch, 160)),
                (None, Some(e)) => format!(
                    "{}: {}",
                    e.commit.chars().take(12).collect::<String>(),
                    one_line(&e.message, 160)
                ),
                (None, None) => "-".to_owned(),
            },
        ]);
    }
    table(&rows);
    if !rollouts.is_empty() {
        println!();
        super::rollout::print(&rollouts);
    }
    for w in &waiting {
        println!(
            "channel {} generation {} waits for {} more signature(s) from {} (skiff-hub sign --channel {} --key …)",
            w.channel,
            w.generation,
            w.threshold.saturating_sub(w.signed.len()),
            w.missing
                .iter()
                .map(|k| &k[..16])
                .collect::<Vec<_>>()
                .join(" or "),
            w.channel
        );
    }
    println!();
    let mut rows = vec![
        [
            "CLUSTER",
            "LABELS",
            "LAST SEEN",
            "CHANNEL",
            "DESIRED",
            "APPLIED",
            "RESULT",
            "DRIFTED",
            "HEALTH",
            "MESSAGE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for c in &clusters {
        let first = |ch: Option<&crate::fleet::ClusterChannelStatus>| {
            let opt = |v: Option<u64>| v.map_or("-".to_owned(), |g| g.to_string());
            match ch {
                None => vec!["-".to_owned(); 7],
                Some(ch) => vec![
                    ch.channel.clone(),
                    opt(ch.desired_generation),
                    opt(ch.applied_generation),
                    if ch.targeted {
                        ch.result.clone().unwrap_or_else(|| "-".to_owned())
                    } else {
                        untargeted(ch).to_owned()
                    },
                    match (ch.corrected, ch.unknown) {
                        (0, 0) => ch.drifted.to_string(),
                        (c, 0) => format!("{} ({c} healed)", ch.drifted),
                        (0, u) => format!("{} ({u} unknown)", ch.drifted),
                        (c, u) => format!("{} ({c} healed, {u} unknown)", ch.drifted),
                    },
                    ch.health.clone().unwrap_or_else(|| "-".to_owned()),
                    match ch.result.as_deref() {
                        Some("applied" | "checked") | None => "-".to_owned(),
                        _ => ch.message.as_deref().map_or("-".to_owned(), |m| one_line(m, 80)),
                    },
                ],
            }
        };
        let seen = if c.offline {
            format!("OFFLINE {}", ago(c.last_seen))
        } else {
            ago(c.last_seen)
        };
        let mut row = vec![c.name.clone(), labels_text(&c.labels), seen];
        row.extend(first(c.channels.first()));
        rows.push(row);
        for ch in c.channels.iter().skip(1) {
            let mut row = vec![String::new(), String::new(), String::new()];
            row.extend(first(Some(ch)));
            rows.push(row);
        }
    }
    table(&rows);
    Ok(())
}

pub(super) async fn export(hub: &HubArgs, cluster: &str, out: &Path) -> anyhow::Result<()> {
    let client = hub.client()?;
    let desired: Desired = client
        .json(
            Method::GET,
            &format!("/v1/admin/clusters/{cluster}/desired"),
            None,
        )
        .await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if desired.channels.is_empty() {
        eprintln!("no channel targets cluster {cluster}; nothing to export");
    }
    // The trust roots first (they decide whose signatures count), every version: an
    // air-gapped agent walks them one at a time from whichever it has.
    if desired.root.is_some() {
        let mut after = 0u64;
        loop {
            let page: Vec<skiff_proto::dsse::Envelope> = client
                .json(Method::GET, &format!("/v1/roots?after={after}"), None)
                .await?;
            let Some(last) = page.last().and_then(skiff_proto::root::peek_version) else {
                break;
            };
            for e in &page {
                let v = skiff_proto::root::peek_version(e).unwrap_or_default();
                write_atomic(&out.join(format!("{v}.root.json")), &e.to_json())?;
            }
            eprintln!("wrote trust roots up to version {last}");
            if page.len() < skiff_proto::api::limits::MAX_ROOTS_PER_ANSWER {
                break;
            }
            after = last;
        }
    }
    // The assignment next: an agent reading the folder takes it before the bundles.
    if let Some(assignment) = &desired.assignment {
        let path = out.join(format!("{cluster}.assignment.json"));
        write_atomic(&path, &assignment.to_json())?;
        eprintln!("wrote {} (the cluster's signed assignment)", path.display());
    }
    for ch in &desired.channels {
        write_pair(&client, out, &ch.channel, ch.generation, &ch.sha256, &ch.envelope).await?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing into {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `export --channel`: a channel's current bundle and envelope, as the hub serves them.
pub(super) async fn export_channel(hub: &HubArgs, channel: &str, out: &Path) -> anyhow::Result<()> {
    let client = hub.client()?;
    let channels: Vec<ChannelStatus> = client.json(Method::GET, "/v1/admin/channels", None).await?;
    let Some(c) = channels.iter().find(|c| c.name == channel) else {
        anyhow::bail!(
            "no channel {channel:?}; the hub has: {}",
            channels
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let (Some(sha256), Some(envelope)) = (&c.record.sha256, &c.record.envelope) else {
        anyhow::bail!("channel {channel:?} has no bundle yet (nothing built: see `skiff-hub status`)");
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_pair(&client, out, channel, c.record.generation, sha256, envelope).await
}

/// Downloads a bundle, checks its digest, and writes it and its envelope into `out`
/// (bundle first, envelope last: an importer waits for the pair).
async fn write_pair(
    client: &crate::client::HubClient,
    out: &Path,
    channel: &str,
    generation: u64,
    sha256: &skiff_proto::Sha256Digest,
    envelope: &skiff_proto::dsse::Envelope,
) -> anyhow::Result<()> {
    let url = format!("/v1/bundles/{sha256}");
    let (status, bytes) = client.send(Method::GET, &url, None).await?;
    anyhow::ensure!(status.is_success(), "downloading {url}: {status}");
    anyhow::ensure!(
        skiff_proto::Sha256Digest::of(&bytes) == *sha256,
        "downloaded bundle {sha256} does not match its digest"
    );
    let bundle_path = out.join(format!("{sha256}.tar.gz"));
    let envelope_path = out.join(format!("{sha256}.dsse.json"));
    write_atomic(&bundle_path, &bytes)?;
    write_atomic(&envelope_path, &envelope.to_json())?;
    println!("{}", bundle_path.display());
    println!("{}", envelope_path.display());
    eprintln!(
        "channel {channel} generation {generation} ({} bytes)",
        bytes.len()
    );
    Ok(())
}

pub(super) async fn import(hub: &HubArgs, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let reports: ReportFile = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a report file from skiff-agent report export",
            file.display()
        )
    })?;
    let client = hub.client()?;
    let (mut stored, mut known, mut refused) = (0, 0, 0);
    for batch in reports
        .reports
        .chunks(skiff_proto::api::limits::MAX_REPORTS_PER_REQUEST)
    {
        let ack: ReportAck = client
            .json(
                Method::POST,
                &format!("/v1/admin/clusters/{}/reports", reports.cluster),
                Some(serde_json::to_value(batch)?),
            )
            .await?;
        stored += ack.stored;
        known += ack.duplicates;
        refused += ack.refused;
    }
    println!(
        "cluster {}: {stored} report(s) stored, {known} already known, {refused} refused",
        reports.cluster
    );
    Ok(())
}

/// `skiff-hub sign`: signs a channel's waiting generation with a local key.
pub(super) async fn sign(
    hub: &HubArgs,
    channel: &str,
    key: &Path,
    generation: Option<u64>,
) -> anyhow::Result<()> {
    let client = hub.client()?;
    let all: Vec<crate::trust::Waiting> = client.json(Method::GET, "/v1/admin/pending", None).await?;
    let Some(w) = all.into_iter().find(|w| w.channel == channel) else {
        anyhow::bail!("channel {channel:?} has no generation waiting for signatures");
    };
    if let Some(g) = generation
        && g != w.generation
    {
        anyhow::bail!("channel {channel:?}: generation {} waits, not {g}", w.generation);
    }
    let k =
        skiff_proto::keys::SigningKey::load(key).with_context(|| format!("signing key {}", key.display()))?;
    let keyid = k.public_key().keyid();
    if !w.missing.contains(&keyid) && !w.signed.contains(&keyid) {
        anyhow::bail!(
            "your key {} is not a signer of channel {channel:?} (its signers: {})",
            &keyid[..16],
            w.signed
                .iter()
                .chain(&w.missing)
                .map(|k| &k[..16])
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // What is signed, said before signing.
    let payload = w.envelope.payload_bytes()?;
    let statement: skiff_proto::statement::Statement = serde_json::from_slice(&payload)?;
    eprintln!(
        "signing channel {} generation {} (bundle {}, {} bytes, commit {})",
        statement.channel,
        statement.generation,
        statement.bundle.sha256,
        statement.bundle.size,
        statement.commit.as_deref().unwrap_or("-")
    );
    if statement.channel != channel
        || statement.generation != w.generation
        || statement.bundle.sha256 != w.sha256
    {
        anyhow::bail!("the hub's waiting statement does not match what it says waits; not signed");
    }
    let signature = skiff_proto::dsse::Envelope::sign(&w.envelope.payload_type, &payload, &[&k])
        .signatures
        .remove(0);
    let r: crate::trust::Waiting = client
        .json(
            Method::POST,
            &format!("/v1/admin/channels/{channel}/signatures"),
            Some(serde_json::json!({"generation": w.generation, "signature": signature})),
        )
        .await?;
    if r.served {
        println!(
            "signed; generation {} of {channel} has all its signatures and is served",
            r.generation
        );
    } else {
        println!(
            "signed; generation {} of {channel} still waits for {} more signature(s)",
            r.generation,
            r.threshold - r.signed.len()
        );
    }
    Ok(())
}
