//! The fleet in memory: channels with their current bundles, clusters with their tokens,
//! labels and reports. Every change is written through to the [`Store`] before it is visible;
//! desired-state answers are computed once per change and cached per cluster, so an
//! unchanged poll costs a hash lookup and a string compare.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use skiff_proto::Sha256Digest;
use skiff_proto::api::{Desired, DesiredChannel, Report};
use skiff_proto::manifest::check_dns_label;
use skiff_proto::statement::Timestamp;
use tokio::sync::watch;

use crate::config::ChannelConfig;
use crate::store::{ChannelRecord, ClusterRecord, Store, StoreError};

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
    /// Last request from its agent.
    pub last_seen: Option<Timestamp>,
    /// One entry per channel that targets it or that it reported on.
    pub channels: Vec<ClusterChannelStatus>,
}

/// A cluster's view of one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterChannelStatus {
    /// Channel.
    pub channel: String,
    /// Whether the channel currently targets the cluster.
    pub targeted: bool,
    /// Generation the hub offers.
    pub desired_generation: Option<u64>,
    /// Generation the agent last applied successfully.
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
}

struct State {
    channels: BTreeMap<String, ChannelRecord>,
    clusters: HashMap<String, ClusterRecord>,
    /// token hash → cluster name
    tokens: HashMap<String, String>,
    seen_dirty: HashSet<String>,
    cache: HashMap<String, Arc<DesiredAnswer>>,
    version: u64,
}

/// The fleet.
pub struct Fleet {
    state: RwLock<State>,
    store: Store,
    channels: Vec<ChannelConfig>,
    changes: watch::Sender<u64>,
    history: usize,
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

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), FleetError> {
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
    pub fn load(store: Store, channels: Vec<ChannelConfig>, history: usize) -> Result<Self, FleetError> {
        let mut records = store.channels()?;
        for c in &channels {
            records.entry(c.name.clone()).or_default();
        }
        // Channels no longer configured keep their records in the store but are not served.
        records.retain(|name, _| channels.iter().any(|c| c.name == *name));
        let clusters: HashMap<String, ClusterRecord> = store.clusters()?.into_iter().collect();
        let tokens = clusters
            .values()
            .map(|c| (c.token_hash.clone(), c.name.clone()))
            .collect();
        let (changes, _) = watch::channel(0);
        Ok(Self {
            state: RwLock::new(State {
                channels: records,
                clusters,
                tokens,
                seen_dirty: HashSet::new(),
                cache: HashMap::new(),
                version: 0,
            }),
            store,
            channels,
            changes,
            history,
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

    /// Writes pending `last_seen` times.
    pub fn flush_seen(&self) -> Result<(), FleetError> {
        let records: Vec<ClusterRecord> = {
            let mut state = self.state.write().expect("fleet lock");
            let dirty: Vec<String> = state.seen_dirty.drain().collect();
            dirty
                .iter()
                .filter_map(|n| state.clusters.get(n).cloned())
                .collect()
        };
        if !records.is_empty() {
            self.store.put_clusters(&records)?;
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
                Some(DesiredChannel {
                    channel: name.clone(),
                    generation: r.generation,
                    sha256: r.sha256?,
                    size: r.size,
                    commit: r.commit.clone(),
                    bundle_url: format!("/v1/bundles/{}", r.sha256?),
                    envelope: r.envelope.clone()?,
                })
            })
            .collect();
        let body = serde_json::to_vec(&Desired {
            cluster: cluster.to_owned(),
            channels,
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
        state
            .channels
            .iter()
            .any(|(name, r)| r.sha256.as_ref() == Some(digest) && self.targets(name, record))
    }

    /// Whether any channel currently holds `digest`.
    pub fn holds(&self, digest: &Sha256Digest) -> bool {
        let state = self.state.read().expect("fleet lock");
        state.channels.values().any(|r| r.sha256.as_ref() == Some(digest))
    }

    /// A channel's record.
    pub fn channel(&self, name: &str) -> Option<ChannelRecord> {
        self.state.read().expect("fleet lock").channels.get(name).cloned()
    }

    /// Replaces a channel's record (after a build or a failure), written through.
    pub fn set_channel(&self, name: &str, record: ChannelRecord) -> Result<(), FleetError> {
        self.store.put_channel(name, &record)?;
        let mut state = self.state.write().expect("fleet lock");
        let serves_new = state.channels.get(name).map(|r| (r.generation, r.sha256))
            != Some((record.generation, record.sha256));
        state.channels.insert(name.to_owned(), record);
        if serves_new {
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
            created: Timestamp::now(),
            last_seen: None,
            instance: None,
            last_seq: 0,
            channels: BTreeMap::new(),
            reports_stored: 0,
        };
        self.store.put_clusters([&record])?;
        state.tokens.insert(record.token_hash.clone(), name.to_owned());
        state.clusters.insert(name.to_owned(), record);
        self.changed(&mut state);
        Ok(token)
    }

    /// Sets and removes labels (`None` removes).
    pub fn label_cluster(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, FleetError> {
        let mut state = self.state.write().expect("fleet lock");
        let mut record = state
            .clusters
            .get(name)
            .cloned()
            .ok_or_else(|| FleetError::UnknownCluster(name.to_owned()))?;
        for (k, v) in changes {
            match v {
                Some(v) => record.labels.insert(k.clone(), v.clone()),
                None => record.labels.remove(k),
            };
        }
        check_labels(&record.labels)?;
        self.store.put_clusters([&record])?;
        let labels = record.labels.clone();
        state.clusters.insert(name.to_owned(), record);
        self.changed(&mut state);
        Ok(labels)
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
        Ok(token)
    }

    /// Stores reports from a cluster, in order, each (instance, seq) once. Returns, per
    /// report, whether it was new.
    pub fn add_reports(&self, cluster: &str, reports: Vec<Report>) -> Result<Vec<bool>, FleetError> {
        let mut state = self.state.write().expect("fleet lock");
        let mut record = state
            .clusters
            .get(cluster)
            .cloned()
            .ok_or_else(|| FleetError::UnknownCluster(cluster.to_owned()))?;
        let mut stored = Vec::new();
        let mut flags = Vec::with_capacity(reports.len());
        for report in reports {
            let new_instance = record.instance.as_deref() != Some(report.instance.as_str());
            if !new_instance && report.seq <= record.last_seq {
                flags.push(false);
                continue;
            }
            record.instance = Some(report.instance.clone());
            record.last_seq = report.seq;
            record.channels.insert(report.channel.clone(), report.clone());
            stored.push((record.reports_stored, report));
            record.reports_stored += 1;
            flags.push(true);
        }
        if !stored.is_empty() {
            record.last_seen = Some(Timestamp::now());
            self.store.add_reports(&record, &stored, self.history)?;
            state.clusters.insert(cluster.to_owned(), record);
        }
        Ok(flags)
    }

    /// Every cluster with its per-channel state.
    pub fn cluster_statuses(&self) -> Vec<ClusterStatus> {
        let state = self.state.read().expect("fleet lock");
        let mut out: Vec<ClusterStatus> = state
            .clusters
            .values()
            .map(|c| {
                let mut names: Vec<&String> = state.channels.keys().filter(|n| self.targets(n, c)).collect();
                for reported in c.channels.keys() {
                    if !names.contains(&reported) {
                        names.push(reported);
                    }
                }
                names.sort();
                let channels = names
                    .into_iter()
                    .map(|name| {
                        let targeted = self.targets(name, c);
                        let desired = state.channels.get(name).filter(|r| targeted && r.generation > 0);
                        let report = c.channels.get(name);
                        ClusterChannelStatus {
                            channel: name.clone(),
                            targeted,
                            desired_generation: desired.map(|r| r.generation),
                            applied_generation: report
                                .filter(|r| {
                                    matches!(
                                        r.outcome,
                                        skiff_proto::api::Outcome::Applied
                                            | skiff_proto::api::Outcome::Checked
                                    )
                                })
                                .and_then(|r| r.generation),
                            result: report.map(|r| format!("{:?}", r.outcome).to_lowercase()),
                            message: report.and_then(|r| r.message.clone()),
                            drifted: report.map_or(0, |r| r.drift.iter().filter(|d| !d.corrected).count()),
                            corrected: report.map_or(0, |r| r.drift.iter().filter(|d| d.corrected).count()),
                            health: report.and_then(|r| r.health.as_ref().map(|h| h.state.clone())),
                            drift: report.map(|r| r.drift.clone()).unwrap_or_default(),
                            reported: report.map(|r| r.time),
                        }
                    })
                    .collect();
                ClusterStatus {
                    name: c.name.clone(),
                    labels: c.labels.clone(),
                    created: c.created,
                    last_seen: c.last_seen,
                    channels,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
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
                }
            })
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
