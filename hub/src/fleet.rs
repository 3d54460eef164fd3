//! The fleet in memory: channels with their current bundles, clusters with their tokens,
//! labels and reports. Every change is written through to the [`Store`] before it is visible;
//! desired-state answers are computed once per change and cached per cluster, so an
//! unchanged poll costs a hash lookup and a string compare.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use skiff_proto::Sha256Digest;
use skiff_proto::api::{Desired, DesiredChannel, Report, limits};
use skiff_proto::manifest::check_dns_label;
use skiff_proto::statement::Timestamp;
use tokio::sync::watch;

use crate::config::{AssignmentConfig, ChannelConfig};

mod assigned;
mod rollouts;
use crate::store::{
    AssignmentRecord, ChannelRecord, ClusterRecord, HistoryLimit, ReportMeta, Store, StoreError,
};
use skiff_proto::keys::SigningKey;

/// A fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Storage failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such cluster.
    #[error("cluster {0:?} is not registered")]
    UnknownCluster(String),
    /// The cluster exists already.
    #[error("cluster {0:?} is already registered")]
    ClusterExists(String),
    /// A bad name or label.
    #[error("{0}")]
    Invalid(String),
    /// No randomness for a token.
    #[error("no randomness available for a token: {0}")]
    Random(String),
    /// The configuration would unassign channels from many clusters at once.
    #[error(
        "the configuration would unassign {0} at once (more than assignments.max_unassign_percent); if that is meant, start with --force-unassign (SKIFF_HUB_FORCE_UNASSIGN=1), otherwise check the channels' targets and the clusters' labels"
    )]
    MassUnassign(String),
}

/// A cached desired-state answer.
#[derive(Debug)]
pub struct DesiredAnswer {
    /// The JSON body (shared by every response that sends it).
    pub body: axum::body::Bytes,
    /// Its strong ETag (quoted).
    pub etag: String,
}

/// A cluster as admins see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When registered.
    pub created: Timestamp,
    /// Last request from its agent (for an air-gapped site: the newest imported report).
    pub last_seen: Option<Timestamp>,
    /// Not heard from for longer than the hub's `offline_after`: its rows show what it
    /// last reported, not what it runs now.
    #[serde(default)]
    pub offline: bool,
    /// One entry per channel that targets it or that it reported on.
    pub channels: Vec<ClusterChannelStatus>,
    /// Its signed assignment: sequence, when signed, when it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<AssignmentSummary>,
    /// Values set for it with `cluster set-values` (all channels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

/// A cluster's assignment as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentSummary {
    /// Its sequence.
    pub sequence: u64,
    /// When signed.
    pub issued: Timestamp,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// A cluster's view of one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterChannelStatus {
    /// Channel.
    pub channel: String,
    /// Whether the channel currently targets the cluster.
    pub targeted: bool,
    /// For a channel that no longer targets the cluster: what its agent does with the
    /// channel's objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unassign: Option<skiff_proto::assignment::OnUnassign>,
    /// Generation the hub offers.
    pub desired_generation: Option<u64>,
    /// Highest generation the cluster may run (`cluster pin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<u64>,
    /// Highest generation the channel's rollout has given the cluster so far, when below
    /// the channel's newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_pin: Option<u64>,
    /// Generation the agent last applied successfully (kept when a newer one fails).
    pub applied_generation: Option<u64>,
    /// Outcome of the agent's latest report.
    pub result: Option<String>,
    /// Its message.
    pub message: Option<String>,
    /// Drifted objects in the latest report that self-heal did not correct.
    pub drifted: usize,
    /// Drifted objects in the latest report that self-heal corrected.
    #[serde(default)]
    pub corrected: usize,
    /// Objects the latest check could not compare (neither in sync nor drifted).
    #[serde(default)]
    pub unknown: usize,
    /// Health in the latest report.
    pub health: Option<String>,
    /// The drifted objects of the latest report, with paths and values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<skiff_proto::api::Drift>,
    /// When the agent reported.
    pub reported: Option<Timestamp>,
}

/// A channel as admins see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// Name.
    pub name: String,
    /// Repository.
    pub repo: String,
    /// Branch.
    pub branch: String,
    /// Path.
    pub path: String,
    /// Current state.
    #[serde(flatten)]
    pub record: ChannelRecord,
    /// Clusters it targets.
    pub clusters: Vec<String>,
    /// Its targets select nothing at all (no labels, no cluster names).
    #[serde(default)]
    pub targets_nothing: bool,
    /// Why the last fetch of its repository failed (the hub serves the last good bundles
    /// meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_error: Option<String>,
}

/// What the hub keeps in memory of a channel's latest report: enough to compare and
/// count; the report itself stays in the store.
#[derive(Clone, Debug)]
struct Latest {
    time: Timestamp,
    instance: String,
    seq: u64,
    outcome: skiff_proto::api::Outcome,
    generation: Option<u64>,
    drifted: usize,
    health: Option<String>,
    deferred: Option<(u64, skiff_proto::api::DeferReason)>,
    /// Why it is unhealthy, or its message; cut short (a rollout's halt reason quotes it).
    message: Option<String>,
}

/// Longest report message a [`Latest`] keeps.
const LATEST_MESSAGE_CHARS: usize = 200;

impl Latest {
    fn of(r: &Report) -> Self {
        Self {
            time: r.time,
            instance: r.instance.clone(),
            seq: r.seq,
            outcome: r.outcome,
            generation: r.generation,
            drifted: r.drift.iter().filter(|d| !d.corrected).count(),
            health: r.health.as_ref().map(|h| h.state.clone()),
            deferred: r.deferred.as_ref().map(|d| (d.generation, d.reason)),
            // Why it is not healthy, when it is not; else what happened.
            message: r
                .health
                .as_ref()
                .filter(|h| h.state != "Healthy")
                .and_then(|h| h.reason.as_ref())
                .or(r.message.as_ref())
                .map(|m| m.chars().take(LATEST_MESSAGE_CHARS).collect()),
        }
    }

    fn unhealthy(&self) -> bool {
        self.health.as_ref().is_some_and(|h| h != "Healthy")
    }

    fn view(&self) -> crate::rollout::ReportView {
        crate::rollout::ReportView {
            outcome: Some(self.outcome),
            generation: self.generation,
            health: self.health.clone(),
            deferred: self.deferred,
            message: self.message.clone(),
        }
    }
}

/// A cluster as `/metrics` counts it, from memory.
#[derive(Clone, Debug)]
pub struct ClusterSummary {
    /// Name.
    pub name: String,
    /// `unseen`, `offline`, `synced`, `progressing` or `failed`.
    pub state: &'static str,
    /// Drifted objects in the latest reports.
    pub drifted: usize,
    /// Channels whose latest health is not Healthy.
    pub unhealthy: usize,
    /// Last request from its agent.
    pub last_seen: Option<Timestamp>,
    /// A channel's rollout (or its pin) holds it below the channel's newest generation.
    pub behind: bool,
    /// Its site holds (a newer generation waits: `skiff-agent hold`).
    pub held: bool,
    /// A newer generation waits for its maintenance window.
    pub waiting: bool,
}

/// How a batch of reports was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// New reports stored.
    pub stored: usize,
    /// Reports already stored (retries, re-imports).
    pub duplicates: usize,
    /// Reports refused: too large, or for a channel that does not target the cluster.
    pub refused: usize,
}

/// How reports reached the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// From the cluster's agent, now.
    Agent,
    /// Imported by an admin (carried across an air gap).
    Import,
}

/// Agent store instances whose sequences a cluster's bookkeeping remembers.
const INSTANCES_KEPT: usize = 8;

struct State {
    channels: BTreeMap<String, ChannelRecord>,
    clusters: HashMap<String, ClusterRecord>,
    meta: HashMap<String, ReportMeta>,
    latest: HashMap<String, BTreeMap<String, Latest>>,
    /// token hash → cluster name
    tokens: HashMap<String, String>,
    seen_dirty: HashSet<String>,
    cache: HashMap<String, Arc<DesiredAnswer>>,
    version: u64,
    /// Each cluster's last signed assignment.
    assignments: HashMap<String, AssignmentRecord>,
    /// Each channel's rollout (for channels with a plan).
    rollouts: HashMap<String, crate::rollout::Rollout>,
    /// The trust root chain served, oldest first (empty: no root).
    roots: Vec<skiff_proto::dsse::Envelope>,
    /// The newest of them.
    root: Option<skiff_proto::root::Root>,
}

/// The fleet.
pub struct Fleet {
    state: RwLock<State>,
    store: Store,
    channels: Vec<ChannelConfig>,
    changes: watch::Sender<u64>,
    history: HistoryLimit,
    offline_after: std::time::Duration,
    signer: Option<Arc<SigningKey>>,
    assignment_config: AssignmentConfig,
    maintenance: Vec<crate::config::MaintenanceConfig>,
}

/// Hex SHA-256 of a token.
pub fn token_hash(token: &str) -> String {
    Sha256Digest::of(token.as_bytes()).to_string()
}

fn new_token() -> Result<String, FleetError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| FleetError::Random(e.to_string()))?;
    Ok(format!(
        "skc_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks label keys and values (Kubernetes' rules, as selectors and variables use them).
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), FleetError> {
    for (k, v) in labels {
        let name = k.rsplit('/').next().unwrap_or(k);
        let ok_part = |s: &str, max: usize| {
            s.len() <= max
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && (s.is_empty()
                    || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
                        && s.ends_with(|c: char| c.is_ascii_alphanumeric())))
        };
        if name.is_empty() || !ok_part(name, 63) || !ok_part(v, 63) {
            return Err(FleetError::Invalid(format!(
                "label {k}={v}: keys and values are up to 63 letters, digits, '-', '_', '.', starting and ending alphanumeric"
            )));
        }
    }
    Ok(())
}

impl Fleet {
    /// Loads the fleet from the store.
    pub fn load(
        store: Store,
        channels: Vec<ChannelConfig>,
        history: HistoryLimit,
    ) -> Result<Self, FleetError> {
        let mut records = store.channels()?;
        for c in &channels {
            records.entry(c.name.clone()).or_default();
        }
        // Channels no longer configured keep their records in the store but are not served.
        records.retain(|name, _| channels.iter().any(|c| c.name == *name));
        let mut clusters: HashMap<String, ClusterRecord> = store.clusters()?.into_iter().collect();
        let mut meta: HashMap<String, ReportMeta> = store.report_meta()?.into_iter().collect();
        let mut all_latest = store.all_latest()?;
        // Records written by older hubs carry their latest reports inside: move them out.
        for c in clusters.values_mut() {
            let legacy = std::mem::take(&mut c.legacy_reports);
            if legacy.is_empty() || all_latest.contains_key(&c.name) {
                continue;
            }
            let encoded: Vec<(String, Vec<u8>)> = legacy
                .iter()
                .map(|(ch, r)| (ch.clone(), serde_json::to_vec(r).expect("serializes")))
                .collect();
            let m = store.add_reports(
                &c.name,
                meta.remove(&c.name).unwrap_or_default(),
                &[],
                &encoded,
                history,
            )?;
            store.put_clusters([&*c])?;
            meta.insert(c.name.clone(), m);
            all_latest.insert(c.name.clone(), legacy);
        }
        let latest = all_latest
            .into_iter()
            .map(|(cluster, reports)| {
                let summaries = reports.into_iter().map(|(ch, r)| (ch, Latest::of(&r))).collect();
                (cluster, summaries)
            })
            .collect();
        let tokens = clusters
            .values()
            .map(|c| (c.token_hash.clone(), c.name.clone()))
            .collect();
        let (changes, _) = watch::channel(0);
        let fleet = Self {
            state: RwLock::new(State {
                channels: records,
                clusters,
                meta,
                latest,
                tokens,
                seen_dirty: HashSet::new(),
                cache: HashMap::new(),
                version: 0,
                assignments: HashMap::new(),
                rollouts: HashMap::new(),
                roots: Vec::new(),
                root: None,
            }),
            store,
            channels,
            changes,
            history,
            offline_after: std::time::Duration::from_secs(300),
            signer: None,
            assignment_config: AssignmentConfig::default(),
            maintenance: Vec::new(),
        };
        {
            let mut state = fleet.state.write().expect("fleet lock");
            fleet.load_rollouts(&mut state)?;
        }
        Ok(fleet)
    }

    /// Sets the maintenance windows carried in assignments (before they are signed).
    pub fn with_maintenance(mut self, windows: Vec<crate::config::MaintenanceConfig>) -> Self {
        self.maintenance = windows;
        self
    }

    /// The maintenance window configs.
    pub fn maintenance_configs(&self) -> &[crate::config::MaintenanceConfig] {
        &self.maintenance
    }

    /// Sets how long a cluster may be silent before it counts as offline.
    pub fn with_offline_after(mut self, after: std::time::Duration) -> Self {
        self.offline_after = after;
        self
    }

    /// Whether a cluster last seen at `last_seen` is offline now (never seen: not offline,
    /// but `unseen`).
    pub fn is_offline(&self, last_seen: Option<Timestamp>) -> bool {
        last_seen.is_some_and(|t| {
            Timestamp::now().unix_seconds().saturating_sub(t.unix_seconds()) > self.offline_after.as_secs()
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The channel configs.
    pub fn channel_configs(&self) -> &[ChannelConfig] {
        &self.channels
    }

    fn changed(&self, state: &mut State) {
        state.version += 1;
        state.cache.clear();
        self.changes.send_replace(state.version);
    }

    /// Notified on every change that may alter a desired-state answer.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The cluster a bearer token belongs to.
    pub fn cluster_of_token(&self, token: &str) -> Option<String> {
        let hash = token_hash(token);
        let state = self.state.read().expect("fleet lock");
        let name = state.tokens.get(&hash)?;
        // The map lookup found it by hash; compare again in constant time for good measure.
        let record = state.clusters.get(name)?;
        constant_time_eq(&record.token_hash, &hash).then(|| name.clone())
    }

    /// Notes that a cluster's agent was seen (flushed to the store by [`Self::flush_seen`]).
    pub fn touch(&self, cluster: &str) {
        let mut state = self.state.write().expect("fleet lock");
        if let Some(c) = state.clusters.get_mut(cluster) {
            c.last_seen = Some(Timestamp::now());
            state.seen_dirty.insert(cluster.to_owned());
        }
    }

    /// Writes pending `last_seen` times (one small entry per cluster seen).
    pub fn flush_seen(&self) -> Result<(), FleetError> {
        let seen: Vec<(String, Timestamp)> = {
            let mut state = self.state.write().expect("fleet lock");
            let dirty: Vec<String> = state.seen_dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|n| {
                    let at = state.clusters.get(&n)?.last_seen?;
                    Some((n, at))
                })
                .collect()
        };
        if !seen.is_empty() {
            self.store.put_seen(&seen)?;
        }
        Ok(())
    }

    fn targets(&self, channel: &str, cluster: &ClusterRecord) -> bool {
        self.channels
            .iter()
            .find(|c| c.name == channel)
            .is_some_and(|c| c.targets.matches(&cluster.name, &cluster.labels))
    }

    /// The desired state of a cluster (None if unknown), cached until the next change.
    pub fn desired(&self, cluster: &str) -> Option<Arc<DesiredAnswer>> {
        if let Some(hit) = self.state.read().expect("fleet lock").cache.get(cluster) {
            return Some(hit.clone());
        }
        let mut state = self.state.write().expect("fleet lock");
        let record = state.clusters.get(cluster)?;
        let channels: Vec<DesiredChannel> = state
            .channels
            .iter()
            .filter(|(name, _)| self.targets(name, record))
            .filter_map(|(name, r)| {
                let served = r.served_at_most(self.pin_of(&state, name, record))?;
                Some(DesiredChannel {
                    channel: name.clone(),
                    generation: served.generation,
                    sha256: served.sha256,
                    size: served.size,
                    commit: served.commit,
                    bundle_url: format!("/v1/bundles/{}", served.sha256),
                    envelope: served.envelope,
                })
            })
            .collect();
        let body = serde_json::to_vec(&Desired {
            cluster: cluster.to_owned(),
            channels,
            assignment: state.assignments.get(cluster).map(|a| a.envelope.clone()),
            root: state.roots.last().cloned(),
        })
        .expect("serializes");
        let etag = format!("\"{}\"", &Sha256Digest::of(&body).to_string()[..32]);
        let answer = Arc::new(DesiredAnswer {
            body: body.into(),
            etag,
        });
        state.cache.insert(cluster.to_owned(), answer.clone());
        Some(answer)
    }

    /// Whether `cluster` may download `digest`: a channel targeting it currently holds it.
    pub fn may_download(&self, cluster: &str, digest: &Sha256Digest) -> bool {
        let state = self.state.read().expect("fleet lock");
        let Some(record) = state.clusters.get(cluster) else {
            return false;
        };
        state.channels.iter().any(|(name, r)| {
            self.targets(name, record)
                && r.served_at_most(self.pin_of(&state, name, record))
                    .is_some_and(|s| s.sha256 == *digest)
        })
    }

    /// Whether any channel currently serves `digest` (as its current or a kept generation).
    pub fn holds(&self, digest: &Sha256Digest) -> bool {
        let state = self.state.read().expect("fleet lock");
        state
            .channels
            .values()
            .any(|r| r.sha256.as_ref() == Some(digest) || r.previous.iter().any(|p| p.sha256 == *digest))
    }

    /// A cluster's record.
    pub fn cluster_record(&self, name: &str) -> Option<ClusterRecord> {
        self.state.read().expect("fleet lock").clusters.get(name).cloned()
    }

    /// A channel's record.
    pub fn channel(&self, name: &str) -> Option<ChannelRecord> {
        self.state.read().expect("fleet lock").channels.get(name).cloned()
    }

    /// Replaces a channel's record (after a build or a failure), written through.
    pub fn set_channel(&self, name: &str, record: ChannelRecord) -> Result<(), FleetError> {
        self.store.put_channel(name, &record)?;
        let mut state = self.state.write().expect("fleet lock");
        let before = state.channels.get(name).map_or(0, |r| r.generation);
        let serves_new = state.channels.get(name).map(|r| (r.generation, r.sha256))
            != Some((record.generation, record.sha256));
        let generation = record.generation;
        state.channels.insert(name.to_owned(), record);
        if serves_new {
            if generation > before {
                self.start_rollout(&mut state, name, before, generation)?;
            }
            self.changed(&mut state);
        }
        Ok(())
    }

    /// Registers a cluster; returns its token (shown once, stored only as a hash).
    pub fn add_cluster(&self, name: &str, labels: BTreeMap<String, String>) -> Result<String, FleetError> {
        check_dns_label(name).map_err(|why| FleetError::Invalid(format!("cluster name {name:?}: {why}")))?;
        check_labels(&labels)?;
        let token = new_token()?;
        let mut state = self.state.write().expect("fleet lock");
        if state.clusters.contains_key(name) {
            return Err(FleetError::ClusterExists(name.to_owned()));
        }
        let record = ClusterRecord {
            name: name.to_owned(),
            token_hash: token_hash(&token),
            labels,
            values: BTreeMap::new(),
            channel_values: BTreeMap::new(),
            pins: BTreeMap::new(),
            apply_now_until: None,
            created: Timestamp::now(),
            last_seen: None,
            legacy_reports: BTreeMap::new(),
        };
        self.store.put_clusters([&record])?;
        state.tokens.insert(record.token_hash.clone(), name.to_owned());
        state.clusters.insert(name.to_owned(), record);
        self.refresh_assignments(&mut state, Some(name))?;
        self.changed(&mut state);
        Ok(token)
    }

    /// Sets and removes labels (`None` removes).
    pub fn label_cluster(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, FleetError> {
        self.update_cluster(name, |record| {
            for (k, v) in changes {
                match v {
                    Some(v) => record.labels.insert(k.clone(), v.clone()),
                    None => record.labels.remove(k),
                };
            }
            check_labels(&record.labels)?;
            Ok(record.labels.clone())
        })
    }

    /// Changes a cluster's record through `f`, writes it, signs its new assignment.
    fn update_cluster<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut ClusterRecord) -> Result<T, FleetError>,
    ) -> Result<T, FleetError> {
        let mut state = self.state.write().expect("fleet lock");
        let mut record = state
            .clusters
            .get(name)
            .cloned()
            .ok_or_else(|| FleetError::UnknownCluster(name.to_owned()))?;
        let out = f(&mut record)?;
        self.store.put_clusters([&record])?;
        state.clusters.insert(name.to_owned(), record);
        self.refresh_assignments(&mut state, Some(name))?;
        self.changed(&mut state);
        Ok(out)
    }

    /// Removes a cluster and its history.
    pub fn remove_cluster(&self, name: &str) -> Result<(), FleetError> {
        let mut state = self.state.write().expect("fleet lock");
        if !state.clusters.contains_key(name) {
            return Err(FleetError::UnknownCluster(name.to_owned()));
        }
        self.store.remove_cluster(name)?;
        if let Some(r) = state.clusters.remove(name) {
            state.tokens.remove(&r.token_hash);
        }
        state.meta.remove(name);
        state.latest.remove(name);
        self.changed(&mut state);
        Ok(())
    }

    /// Gives a cluster a new token; the old one stops working at once.
    pub fn rotate_token(&self, name: &str) -> Result<String, FleetError> {
        let token = new_token()?;
        let mut state = self.state.write().expect("fleet lock");
        let mut record = state
            .clusters
            .get(name)
            .cloned()
            .ok_or_else(|| FleetError::UnknownCluster(name.to_owned()))?;
        let old = std::mem::replace(&mut record.token_hash, token_hash(&token));
        self.store.put_clusters([&record])?;
        state.tokens.remove(&old);
        state.tokens.insert(record.token_hash.clone(), name.to_owned());
        state.clusters.insert(name.to_owned(), record);
        // Wakes held long-polls, which check their token again: the old one gets 401.
        self.changed(&mut state);
        Ok(token)
    }

    /// Stores reports from a cluster, in order, each (instance, seq) once. A report is
    /// refused when it is larger than [`limits::MAX_REPORT_BYTES`] or names a channel that
    /// does not target the cluster; a channel's latest report is replaced only by a newer
    /// one, so a re-import of old reports never reverts the status.
    pub fn add_reports(&self, cluster: &str, reports: Vec<Report>, via: Via) -> Result<Taken, FleetError> {
        let mut state = self.state.write().expect("fleet lock");
        let record = state
            .clusters
            .get(cluster)
            .cloned()
            .ok_or_else(|| FleetError::UnknownCluster(cluster.to_owned()))?;
        let mut meta = state.meta.get(cluster).cloned().unwrap_or_default();
        let mut latest = state.latest.get(cluster).cloned().unwrap_or_default();
        let mut taken = Taken::default();
        let mut newest: Option<Timestamp> = None;
        let mut encoded = Vec::new();
        let mut changed_latest: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for report in reports {
            let bytes = serde_json::to_vec(&report).expect("serializes");
            if bytes.len() > limits::MAX_REPORT_BYTES || !self.targets(&report.channel, &record) {
                taken.refused += 1;
                continue;
            }
            let known = meta.instances.iter().position(|(i, _)| *i == report.instance);
            if let Some(i) = known {
                if report.seq <= meta.instances[i].1 {
                    taken.duplicates += 1;
                    continue;
                }
                meta.instances.remove(i);
            }
            meta.instances.insert(0, (report.instance.clone(), report.seq));
            meta.instances.truncate(INSTANCES_KEPT);
            if matches!(
                report.outcome,
                skiff_proto::api::Outcome::Applied | skiff_proto::api::Outcome::Checked
            ) && let Some(g) = report.generation
            {
                let last = meta.applied.entry(report.channel.clone()).or_insert(g);
                *last = (*last).max(g);
            }
            let newer = latest.get(&report.channel).is_none_or(|l| {
                (report.time, report.seq) >= (l.time, l.seq)
                    || report.instance == l.instance && report.seq > l.seq
            });
            if newer {
                latest.insert(report.channel.clone(), Latest::of(&report));
                changed_latest.insert(report.channel.clone(), bytes.clone());
            }
            newest = newest.max(Some(report.time));
            encoded.push(bytes);
            taken.stored += 1;
        }
        if !encoded.is_empty() {
            let latest_rows: Vec<(String, Vec<u8>)> = changed_latest.into_iter().collect();
            let meta = self
                .store
                .add_reports(cluster, meta, &encoded, &latest_rows, self.history)?;
            state.meta.insert(cluster.to_owned(), meta);
            state.latest.insert(cluster.to_owned(), latest);
            // An agent that sends reports is here now; reports carried across an air gap
            // say when the site was last heard of (never later than now, never backwards).
            let seen = match via {
                Via::Agent => Some(Timestamp::now()),
                Via::Import => newest.map(|t| t.min(Timestamp::now())),
            };
            if let Some(c) = state.clusters.get_mut(cluster) {
                c.last_seen = c.last_seen.max(seen);
            }
            state.seen_dirty.insert(cluster.to_owned());
        }
        Ok(taken)
    }

    /// A page of clusters with their per-channel state, by name: at most `limit` clusters
    /// whose names sort after `after`. Latest reports are read from the store for the page.
    pub fn cluster_statuses(
        &self,
        after: Option<&str>,
        only: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ClusterStatus>, FleetError> {
        let page: Vec<(ClusterRecord, Vec<String>)> = {
            let state = self.state.read().expect("fleet lock");
            let mut names: Vec<&String> = state
                .clusters
                .keys()
                .filter(|n| after.is_none_or(|a| n.as_str() > a) && only.is_none_or(|o| n.as_str() == o))
                .collect();
            names.sort();
            names.truncate(limit);
            names
                .into_iter()
                .map(|n| {
                    let c = state.clusters[n].clone();
                    let targeted: Vec<String> = state
                        .channels
                        .keys()
                        .filter(|ch| self.targets(ch, &c))
                        .cloned()
                        .collect();
                    (c, targeted)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(page.len());
        for (c, targeted) in page {
            let reports = self.store.latest(&c.name)?;
            let applied = self
                .state
                .read()
                .expect("fleet lock")
                .meta
                .get(&c.name)
                .map(|m| m.applied.clone())
                .unwrap_or_default();
            let mut names: Vec<&String> = targeted.iter().collect();
            for reported in reports.keys() {
                if !names.contains(&reported) {
                    names.push(reported);
                }
            }
            names.sort();
            let state = self.state.read().expect("fleet lock");
            let channels = names
                .into_iter()
                .map(|name| {
                    let is_targeted = targeted.contains(name);
                    let pin = c.pins.get(name).copied();
                    let rollout_pin = self
                        .rollout_pin(&state, name, &c.name)
                        .filter(|p| state.channels.get(name).is_some_and(|r| r.generation > *p));
                    let desired = state
                        .channels
                        .get(name)
                        .filter(|_| is_targeted)
                        .and_then(|r| r.served_at_most(self.pin_of(&state, name, &c)));
                    let report = reports.get(name);
                    ClusterChannelStatus {
                        channel: name.clone(),
                        targeted: is_targeted,
                        on_unassign: self
                            .channels
                            .iter()
                            .find(|x| x.name == **name)
                            .filter(|_| !is_targeted)
                            .map(|x| x.on_unassign),
                        desired_generation: desired.map(|r| r.generation),
                        pin,
                        rollout_pin,
                        applied_generation: report
                            .filter(|r| {
                                matches!(
                                    r.outcome,
                                    skiff_proto::api::Outcome::Applied | skiff_proto::api::Outcome::Checked
                                )
                            })
                            .and_then(|r| r.generation)
                            .or_else(|| applied.get(name).copied()),
                        result: report.map(|r| format!("{:?}", r.outcome).to_lowercase()),
                        message: report.and_then(|r| r.message.clone()),
                        drifted: report.map_or(0, |r| r.drift.iter().filter(|d| !d.corrected).count()),
                        corrected: report.map_or(0, |r| r.drift.iter().filter(|d| d.corrected).count()),
                        unknown: report.map_or(0, |r| r.unknown.len()),
                        health: report.and_then(|r| r.health.as_ref().map(|h| h.state.clone())),
                        drift: report.map(|r| r.drift.clone()).unwrap_or_default(),
                        reported: report.map(|r| r.time),
                    }
                })
                .collect();
            let last_seen = state.clusters.get(&c.name).and_then(|r| r.last_seen);
            out.push(ClusterStatus {
                name: c.name.clone(),
                labels: c.labels.clone(),
                created: c.created,
                last_seen,
                offline: self.is_offline(last_seen),
                channels,
                assignment: state.assignments.get(&c.name).map(|a| AssignmentSummary {
                    sequence: a.sequence,
                    issued: a.issued,
                    expires: a.expires,
                }),
                values: c.values.clone(),
            });
        }
        Ok(out)
    }

    /// Every cluster's state for `/metrics`, from memory.
    pub fn summaries(&self) -> Vec<ClusterSummary> {
        use skiff_proto::api::Outcome;
        let state = self.state.read().expect("fleet lock");
        let none = BTreeMap::new();
        let mut out: Vec<ClusterSummary> = state
            .clusters
            .values()
            .map(|c| {
                let latest = state.latest.get(&c.name).unwrap_or(&none);
                let failed = latest
                    .values()
                    .any(|l| matches!(l.outcome, Outcome::Failed | Outcome::Rejected));
                // Synced: running what it is served (its pins and the rollouts allow).
                let synced = state
                    .channels
                    .iter()
                    .filter(|(name, r)| r.generation > 0 && self.targets(name, c))
                    .all(|(name, r)| {
                        let served = r.generation_at_most(self.pin_of(&state, name, c));
                        latest.get(name).is_some_and(|l| {
                            matches!(l.outcome, Outcome::Applied | Outcome::Checked) && l.generation >= served
                        }) || served.is_none()
                    });
                let behind = state
                    .channels
                    .iter()
                    .filter(|(name, r)| r.generation > 0 && self.targets(name, c))
                    .any(|(name, r)| r.generation_at_most(self.pin_of(&state, name, c)) < Some(r.generation));
                let deferred = |why| {
                    latest
                        .values()
                        .any(|l| l.outcome == Outcome::Deferred && l.deferred.is_some_and(|(_, r)| r == why))
                };
                let (held, waiting) = (
                    deferred(skiff_proto::api::DeferReason::Hold),
                    deferred(skiff_proto::api::DeferReason::Window),
                );
                let state = if c.last_seen.is_none() {
                    "unseen"
                } else if self.is_offline(c.last_seen) {
                    "offline"
                } else if failed {
                    "failed"
                } else if synced {
                    "synced"
                } else {
                    "progressing"
                };
                ClusterSummary {
                    name: c.name.clone(),
                    state,
                    drifted: latest.values().map(|l| l.drifted).sum(),
                    unhealthy: latest.values().filter(|l| l.unhealthy()).count(),
                    last_seen: c.last_seen,
                    behind,
                    held,
                    waiting,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether a token is (still) the token of `cluster`.
    pub fn token_is_for(&self, cluster: &str, token: &str) -> bool {
        self.cluster_of_token(token).as_deref() == Some(cluster)
    }

    /// Every configured channel with its state and targeted clusters.
    pub fn channel_statuses(&self) -> Vec<ChannelStatus> {
        let state = self.state.read().expect("fleet lock");
        self.channels
            .iter()
            .map(|c| {
                let mut clusters: Vec<String> = state
                    .clusters
                    .values()
                    .filter(|r| c.targets.matches(&r.name, &r.labels))
                    .map(|r| r.name.clone())
                    .collect();
                clusters.sort();
                ChannelStatus {
                    name: c.name.clone(),
                    repo: c.repo.clone(),
                    branch: c.branch.clone(),
                    path: c.path.clone(),
                    record: state.channels.get(&c.name).cloned().unwrap_or_default(),
                    clusters,
                    targets_nothing: c.targets.is_empty(),
                    fetch_error: None,
                }
            })
            .collect()
    }

    /// Serves a trust root chain (oldest first, checked by the caller); agents are told at
    /// once when its newest version changed.
    pub fn set_roots(&self, chain: Vec<(skiff_proto::root::Root, skiff_proto::dsse::Envelope)>) {
        let mut state = self.state.write().expect("fleet lock");
        let newer = state.roots.last() != chain.last().map(|(_, e)| e);
        state.root = chain.last().map(|(r, _)| r.clone());
        state.roots = chain.into_iter().map(|(_, e)| e).collect();
        if newer {
            self.changed(&mut state);
        }
    }

    /// Under the newest trust root, the signers `channel`'s bundles need when `key` alone
    /// does not meet their threshold (two-person rule); None when it does, or without a root.
    pub fn more_signers_needed(
        &self,
        channel: &str,
        key: &skiff_proto::keys::PublicKey,
    ) -> Option<skiff_proto::root::Role> {
        let state = self.state.read().expect("fleet lock");
        let role = state.root.as_ref()?.bundle_role(channel);
        (usize::from(role.keys.contains(&key.keyid())) < role.threshold).then(|| role.clone())
    }

    /// The newest trust root served, if any.
    pub fn newest_root(&self) -> Option<skiff_proto::root::Root> {
        self.state.read().expect("fleet lock").root.clone()
    }

    /// The roots after `version`, oldest first, at most `limit`.
    pub fn roots_after(&self, version: u64, limit: usize) -> Vec<skiff_proto::dsse::Envelope> {
        let state = self.state.read().expect("fleet lock");
        state
            .roots
            .iter()
            .filter(|e| skiff_proto::root::peek_version(e).is_some_and(|v| v > version))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every cluster's labels, by name.
    pub fn cluster_labels(&self) -> std::collections::HashMap<String, BTreeMap<String, String>> {
        let state = self.state.read().expect("fleet lock");
        state
            .clusters
            .values()
            .map(|c| (c.name.clone(), c.labels.clone()))
            .collect()
    }

    /// Whether a cluster is registered.
    pub fn has_cluster(&self, name: &str) -> bool {
        self.state.read().expect("fleet lock").clusters.contains_key(name)
    }

    /// Number of registered clusters.
    pub fn cluster_count(&self) -> usize {
        self.state.read().expect("fleet lock").clusters.len()
    }
}
