//! What signing assignments costs the hub: a store with N clusters in three label groups,
//! the first signing of all of them, then a label-selector change (a customization moves
//! to another group, so a third of the fleet gets new values) re-signed, with time and
//! memory of each step, and an assignment's size on the wire.
//!
//! Usage: skiff-bench-assign [CLUSTERS]   (default 10000; run a release build)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use skiff_hub::config::ChannelConfig;
use skiff_hub::fleet::Fleet;
use skiff_hub::store::{ClusterRecord, HistoryLimit, Store};
use skiff_proto::keys::SigningKey;
use skiff_proto::statement::Timestamp;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn channels(eu_selector: &str) -> Vec<ChannelConfig> {
    let yaml = format!(
        "- name: shops\n  repo: fleet\n  branch: main\n  targets: {{labels: {{tier: shop}}}}\n  values: {{registry: registry.example, replicas: 1}}\n  customizations:\n    - {{selector: {{region: {eu_selector}}}, values: {{registry: eu.registry.example, replicas: 2}}}}\n    - {{selector: {{region: us}}, values: {{registry: us.registry.example, replicas: 3}}}}\n- name: base\n  repo: fleet\n  branch: main\n  targets: {{labels: {{tier: shop}}}}\n"
    );
    let doc = skiff_proto::manifest::parse_yaml("channels", &yaml).expect("yaml")[0]
        .value
        .clone();
    serde_json::from_value(doc).expect("channels")
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(10_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let regions = ["eu", "us", "ap"];
    let records: Vec<ClusterRecord> = (0..n)
        .map(|i| ClusterRecord {
            name: format!("shop-{i:05}"),
            token_hash: format!("{i:064x}"),
            labels: BTreeMap::from([
                ("tier".to_owned(), "shop".to_owned()),
                ("region".to_owned(), regions[i % 3].to_owned()),
            ]),
            values: BTreeMap::from([("site_id".to_owned(), format!("s-{i}"))]),
            channel_values: BTreeMap::new(),
            pins: BTreeMap::new(),
            apply_now_until: None,
            created: Timestamp::now(),
            last_seen: None,
            legacy_reports: BTreeMap::new(),
        })
        .collect();
    store.put_clusters(records.iter())?;
    drop(records);
    drop(store);
    let key = Arc::new(SigningKey::generate()?);
    let history = HistoryLimit {
        count: 200,
        bytes: 2 << 20,
    };

    let before = rss_kib("VmRSS:");
    let started = Instant::now();
    let fleet = Fleet::load(Store::open(dir.path())?, channels("eu"), history)?.with_assignments(
        key.clone(),
        Default::default(),
        false,
    )?;
    let first = started.elapsed();
    let after_first = rss_kib("VmRSS:");
    let sample = fleet.assignment("shop-00000").expect("signed");
    let envelope = sample.envelope.to_json();
    let compact = serde_json::to_vec(&sample.envelope)?;
    drop(fleet);

    // The change: the eu customization now selects region=ap (a third of the fleet moves
    // from default values to eu's, a third from eu's to the defaults).
    let started = Instant::now();
    let fleet = Fleet::load(Store::open(dir.path())?, channels("ap"), history)?.with_assignments(
        key,
        Default::default(),
        false,
    )?;
    let change = started.elapsed();
    let after_change = rss_kib("VmRSS:");
    let moved = (0..n)
        .filter(|i| {
            fleet
                .assignment(&format!("shop-{i:05}"))
                .is_some_and(|a| a.issued >= sample.issued && a.sequence > sample.sequence)
        })
        .count();
    // Unchanged: nothing is signed.
    let started = Instant::now();
    let again = fleet.resign_all()?;
    let unchanged = started.elapsed();

    println!("assignments for {n} clusters (2 channels, 3 label groups, per-cluster value)");
    println!(
        "  first signing of all:          {:>8.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  label-selector change:         {:>8.1} ms  (load + guard + re-sign; {moved} re-signed)",
        change.as_secs_f64() * 1e3
    );
    println!(
        "  unchanged fleet, re-checked:   {:>8.1} ms  ({again} signed)",
        unchanged.as_secs_f64() * 1e3
    );
    println!(
        "  hub RSS: {before} KiB before, {after_first} KiB after first signing, {after_change} KiB after the change (peak {} KiB)",
        rss_kib("VmHWM:")
    );
    println!(
        "  one assignment on the wire: {} bytes in the desired-state answer (compact JSON), {} bytes as an exported file; payload {} bytes",
        compact.len(),
        envelope.len(),
        sample.envelope.payload_bytes()?.len()
    );
    Ok(())
}
