//! The agent's work, in the order of the flow: fetch desired → download → verify → store →
//! apply → prune → report; and at start, re-apply from the store without waiting for a hub.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use skiff_proto::Sha256Digest;
use skiff_proto::api::{ObjectRef, Outcome as ReportOutcome, Report, limits};
use skiff_proto::dsse::Envelope;
use skiff_proto::statement::Timestamp;
use skiff_proto::verify::{Accepted as AcceptedGen, Policy, TrustSet, VerifyError};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::apply::dir::DirApplier;
use crate::apply::kube::KubeApplier;
use crate::apply::{Checked, Outcome, Retry};
use crate::config::{AgentConfig, Target};
use crate::source::{HubClient, ImportStamp, SourceError, scan_import_dir};
use crate::store::{Accepted, Applied, ChannelState, Store};
use crate::verify::StoredBundle;

mod assigned;
mod gate;
mod trust;
pub use assigned::{TakenAssignment, admit, changes, values_for};
pub use gate::{Deferral, WINDOW_CLOCK_ENV, deferral, report_only};

/// Where objects go.
pub enum Applier {
    /// The Kubernetes API.
    Kube(Box<KubeApplier>),
    /// A folder.
    Dir(DirApplier),
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Successful applies.
    pub applies_ok: AtomicU64,
    /// Failed applies.
    pub applies_failed: AtomicU64,
    /// Rejected bundles.
    pub rejected: AtomicU64,
    /// Reports delivered.
    pub reports_sent: AtomicU64,
    /// Drifted objects found.
    pub drift_detected: AtomicU64,
    /// Drifted objects re-applied.
    pub drift_corrected: AtomicU64,
    /// Unix seconds of the last answer from the hub (0: none yet).
    pub last_hub_contact: AtomicU64,
    /// Unix seconds of the last successful apply (0: none yet).
    pub last_apply: AtomicU64,
}

/// Which channel a bundle offered to the agent may be for.
#[derive(Clone, Copy, Debug)]
pub enum ChannelPolicy<'a> {
    /// Exactly this one (the hub named the channel in its desired state).
    Expected(&'a str),
    /// Any channel assigned to this cluster (imports).
    Assigned,
}

/// What became of a bundle offered to the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Verified, stored and applied.
    Applied,
    /// Verified and stored; applying failed (it is retried).
    Failed(String),
    /// Already the accepted and applied bundle.
    Unchanged,
    /// Verified and stored, not applied yet: the site holds, or it is outside its
    /// maintenance window (why). Applied when it may.
    Deferred(String),
    /// Did not verify; nothing changed.
    Rejected(String),
    /// Verified, but not for this cluster now: the channel is not assigned, or the
    /// generation is above the pin. Looked at again when the assignment changes.
    NotAssigned(String),
    /// An older generation than the one accepted (left on an import medium): nothing to do,
    /// and nothing to report.
    Older {
        /// The generation offered.
        offered: u64,
        /// The generation accepted.
        accepted: u64,
    },
}

/// The agent.
pub struct Agent {
    config: AgentConfig,
    store: Store,
    trust: std::sync::RwLock<Arc<TrustSet>>,
    applier: Applier,
    hub: Option<HubClient>,
    /// Counters.
    pub metrics: Metrics,
    reports: Notify,
    rejected: std::sync::Mutex<HashSet<Sha256Digest>>,
    /// Import pairs already looked at, by path and (sizes, mtimes): looked at again only
    /// when the files change (or the assignment does).
    seen_imports: std::sync::Mutex<HashMap<PathBuf, ImportStamp>>,
    /// Channels the hub stopped assigning (kept, not enforced), said once each.
    unenforced: std::sync::Mutex<HashSet<String>>,
    /// Stray files last said per channel (said again only when they change).
    stray: std::sync::Mutex<HashMap<String, Vec<String>>>,
    retries: std::sync::Mutex<HashMap<String, (u32, Instant)>>,
    /// When `status.json`/`outbox.json` were last written, and whether they are stale.
    snapshot: std::sync::Mutex<(Instant, bool)>,
    /// Serializes applies (one bundle at a time touches the cluster).
    apply_lock: tokio::sync::Mutex<()>,
    /// The import folder's root files as last read (read again only when they change).
    root_files: std::sync::Mutex<Vec<(PathBuf, ImportStamp)>>,
    /// Whether a channel may hold a deferred generation (the store is looked at only then).
    maybe_pending: std::sync::atomic::AtomicBool,
}

/// A snapshot for `skiff-agent status` while the agent runs (the store is locked then).
#[derive(Serialize)]
struct Snapshot<'a> {
    cluster: &'a str,
    #[serde(rename = "trustRoot")]
    trust_root: Option<serde_json::Value>,
    assignment: Option<serde_json::Value>,
    channels: &'a std::collections::BTreeMap<String, ChannelState>,
    outbox: u64,
    dropped: u64,
    written: Timestamp,
}

/// `status.json` and `outbox.json` are rewritten at most this often.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// Starts of an apply that never finished after which a stored bundle is skipped at start.
const UNFINISHED_LIMIT: u32 = 2;

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX); // 0..1
    d.mul_f64(0.5 + frac / 2.0)
}

/// Exponential backoff from 1 s, at most `max`, with jitter so a fleet does not retry in step.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let exp = Duration::from_secs(1u64 << failures.clamp(1, 12).saturating_sub(1));
    jitter(exp.min(max))
}

impl Agent {
    /// Builds the agent from its configuration (kube client, trust set, store).
    pub async fn new(config: AgentConfig) -> anyhow::Result<Self> {
        let store = Store::open(&config.data_dir)?;
        let trust = std::sync::RwLock::new(Arc::new(trust::initial(&config, &store)?));
        let applier = match &config.target {
            Target::Dir(path) => Applier::Dir(DirApplier::new(path.clone())),
            Target::Kube => {
                let kube_config = match &config.kubeconfig {
                    Some(path) => {
                        let kc = kube::config::Kubeconfig::read_from(path)
                            .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?;
                        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
                    }
                    None => kube::Config::infer().await.map_err(|e| {
                        anyhow::anyhow!("no Kubernetes access (not in a cluster, no kubeconfig): {e}; set kubeconfig or use target: dir:PATH")
                    })?,
                };
                let client = kube::Client::try_from(kube_config)?;
                Applier::Kube(Box::new(KubeApplier::new(
                    client,
                    config.force_conflicts,
                    config.namespace.clone(),
                )))
            }
        };
        let hub = match &config.hub {
            Some(_) => Some(HubClient::new(
                config.hub.clone(),
                config.mirrors.clone(),
                config.cluster.clone(),
                config.token()?,
                config.ca_file.as_deref(),
                config.long_poll_wait + Duration::from_secs(30),
            )?),
            None => None,
        };
        Ok(Self {
            config,
            store,
            trust,
            applier,
            hub,
            metrics: Metrics::default(),
            reports: Notify::new(),
            rejected: std::sync::Mutex::new(HashSet::new()),
            seen_imports: std::sync::Mutex::new(HashMap::new()),
            unenforced: std::sync::Mutex::new(HashSet::new()),
            stray: std::sync::Mutex::new(HashMap::new()),
            retries: std::sync::Mutex::new(HashMap::new()),
            snapshot: std::sync::Mutex::new((
                Instant::now()
                    .checked_sub(SNAPSHOT_EVERY)
                    .unwrap_or_else(Instant::now),
                false,
            )),
            apply_lock: tokio::sync::Mutex::new(()),
            root_files: std::sync::Mutex::new(Vec::new()),
            maybe_pending: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Marks the snapshots stale and writes them if the last write is old enough; a task
    /// writes what is left stale (so a burst of reports costs one write, not one each).
    fn snapshot_soon(&self) {
        let due = {
            let mut s = self.snapshot.lock().expect("snapshot");
            s.1 = true;
            s.0.elapsed() >= SNAPSHOT_EVERY
        };
        if due {
            self.write_snapshot();
        }
    }

    async fn flush_snapshots(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SNAPSHOT_EVERY).await;
            if self.snapshot.lock().expect("snapshot").1 {
                self.write_snapshot();
            }
        }
    }

    fn write_snapshot(&self) {
        *self.snapshot.lock().expect("snapshot") = (Instant::now(), false);
        let Ok(channels) = self.store.channels() else {
            return;
        };
        let snapshot = Snapshot {
            cluster: &self.config.cluster,
            trust_root: self
                .trust()
                .root()
                .map(|r| serde_json::json!({"version": r.version, "expires": r.expires})),
            assignment: self.assignment().map(|a| crate::status::assignment_summary(&a)),
            channels: &channels,
            outbox: self.store.outbox_len().unwrap_or(0),
            dropped: self.store.dropped().unwrap_or(0),
            written: Timestamp::now(),
        };
        let path = self.config.data_dir.join("status.json");
        let tmp = self.config.data_dir.join(".status.json.tmp");
        if std::fs::write(&tmp, serde_json::to_vec_pretty(&snapshot).expect("serializes")).is_ok() {
            let _ = std::fs::rename(tmp, path);
        }
        if let Ok(pending) = self.store.outbox(self.config.outbox_limit) {
            let file = skiff_proto::api::ReportFile {
                cluster: self.config.cluster.clone(),
                reports: pending,
            };
            let tmp = self.config.data_dir.join(".outbox.json.tmp");
            if std::fs::write(&tmp, serde_json::to_vec(&file).expect("serializes")).is_ok() {
                let _ = std::fs::rename(tmp, self.config.data_dir.join("outbox.json"));
            }
        }
    }

    fn report(&self, mut report: Report) {
        report.agent_version = env!("CARGO_PKG_VERSION").to_owned();
        assigned::scrub(&mut report, &self.config.local_values);
        match self.store.push_report(report, self.config.outbox_limit) {
            Ok(_) => self.reports.notify_one(),
            Err(error) => warn!(%error, "Could not queue a report"),
        }
        self.snapshot_soon();
    }

    fn base_report(channel: &str, outcome: ReportOutcome) -> Report {
        Report {
            instance: String::new(),
            seq: 0,
            time: Timestamp::now(),
            agent_version: String::new(),
            channel: channel.to_owned(),
            outcome,
            generation: None,
            sha256: None,
            commit: None,
            message: None,
            objects: None,
            errors: Vec::new(),
            duration_ms: None,
            drift: Vec::new(),
            health: None,
            unknown: Vec::new(),
            deferred: None,
        }
    }

    /// Verifies a bundle file and, if it is new, stores and applies it. `source` names where
    /// it came from in logs and reports. The file is read as a stream, never whole; a file
    /// in the store's folder (a finished download) is moved in, any other copied.
    pub async fn offer(
        &self,
        source: &str,
        envelope_json: &[u8],
        tarball: &std::path::Path,
        channel_policy: ChannelPolicy<'_>,
    ) -> anyhow::Result<Offered> {
        // Under an expired trust root nothing new is taken (not remembered as bad: a newer
        // root admits it again).
        if let Err(error) = self.trust().check_fresh(Timestamp::now()) {
            return Ok(self.refuse_expired(source, error.to_string()));
        }
        // The channel is known only from a verified statement; find it, then run every step.
        let envelope = Envelope::from_json(envelope_json).map_err(VerifyError::from);
        let statement = envelope.and_then(|e| self.trust().verify_envelope(&e));
        let (channel, state) = match &statement {
            Ok(s) => (s.channel.clone(), self.store.channel(&s.channel)?),
            Err(_) => ("unknown".to_owned(), ChannelState::default()),
        };
        let policy = Policy {
            channel: match channel_policy {
                ChannelPolicy::Expected(c) => Some(c.to_owned()),
                ChannelPolicy::Assigned => None,
            },
            highest: state
                .accepted
                .iter()
                .chain(state.pending.iter())
                .max_by_key(|a| a.generation)
                .map(|a| AcceptedGen {
                    generation: a.generation,
                    digest: a.sha256,
                }),
            ..Policy::default()
        };
        // An unassigned channel, or a generation above the pin, is refused before the
        // bundle is read, and is not remembered as bad: a new assignment may admit it.
        if let Ok(s) = &statement
            && let Err(error) = self.admit(
                &s.channel,
                s.generation,
                matches!(channel_policy, ChannelPolicy::Expected(_)),
            )
        {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(%error, channel = %s.channel, generation = s.generation, source, "Bundle not admitted by this cluster's assignment; keeping the last good state");
            let mut r = Self::base_report(&s.channel, ReportOutcome::Rejected);
            r.generation = Some(s.generation);
            r.sha256 = Some(s.bundle.sha256);
            r.message = Some(format!("bundle from {source} not admitted: {error}"));
            self.report(r);
            return Ok(Offered::NotAssigned(error));
        }
        let verified = match statement
            .map_err(|e| e.to_string())
            .and_then(|_| StoredBundle::verify(&self.trust(), envelope_json, tarball, &policy))
        {
            Ok(v) => v,
            Err(error) => {
                let digest = crate::verify::file_sha256(tarball, u64::MAX)
                    .map_or_else(|_| Sha256Digest::of(b""), |(_, d)| d);
                self.rejected.lock().expect("rejected").insert(digest);
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(%error, channel = %channel, digest = %digest, source, "Bundle rejected; keeping the last good state");
                let mut r = Self::base_report(&channel, ReportOutcome::Rejected);
                r.sha256 = Some(digest);
                r.message = Some(format!("bundle from {source} rejected: {error}"));
                self.report(r);
                return Ok(Offered::Rejected(error));
            }
        };
        // Checked file by file and nothing kept: the bundle is read again from the store,
        // a file at a time, to apply it.
        let (statement, _checked) = verified;
        let s = &statement;
        let same = state
            .accepted
            .as_ref()
            .is_some_and(|a| a.sha256 == s.bundle.sha256);
        if same
            && state
                .applied
                .as_ref()
                .is_some_and(|a| a.ok && a.sha256 == s.bundle.sha256)
        {
            // The same bundle under a newer generation (the hub signed it again, e.g. with
            // a rotated key): its statement replaces the stored one; nothing is re-applied.
            if state
                .accepted
                .as_ref()
                .is_some_and(|a| a.generation < s.generation)
            {
                let mut state = state;
                if let Some(a) = state.accepted.as_mut() {
                    a.generation = s.generation;
                    a.envelope = Envelope::from_json(envelope_json)?;
                    a.commit.clone_from(&s.commit);
                    a.at = Timestamp::now();
                }
                if let Some(a) = state.applied.as_mut() {
                    a.generation = s.generation;
                }
                self.store.put_channel(&s.channel, &state)?;
                info!(channel = %s.channel, generation = s.generation, source, "Same bundle under a newer signed statement: kept, nothing to apply");
                let mut r = Self::base_report(&s.channel, ReportOutcome::Applied);
                r.generation = Some(s.generation);
                r.sha256 = Some(s.bundle.sha256);
                r.commit.clone_from(&s.commit);
                r.health = state.health.clone();
                r.message = Some("same bundle under a newer signed statement; nothing re-applied".to_owned());
                self.report(r);
            }
            return Ok(Offered::Unchanged);
        }
        if !same {
            let new = Accepted {
                generation: s.generation,
                sha256: s.bundle.sha256,
                commit: s.commit.clone(),
                envelope: Envelope::from_json(envelope_json)?,
                at: Timestamp::now(),
            };
            let mut state = state;
            if let Some(d) = self.deferral() {
                if state.pending.as_ref().is_some_and(|p| p.sha256 == new.sha256) {
                    return Ok(Offered::Deferred(d.message));
                }
                self.store.put_bundle_file(&s.bundle.sha256, tarball)?;
                state.pending = Some(new);
                self.store.put_channel(&s.channel, &state)?;
                self.maybe_pending.store(true, Ordering::Relaxed);
                self.report_deferred(&s.channel, &state, s.generation, &d);
                return Ok(Offered::Deferred(d.message));
            }
            self.store.put_bundle_file(&s.bundle.sha256, tarball)?;
            state.unfinished_applies = 0;
            state.pending = None;
            state.accepted = Some(new);
            self.store.put_channel(&s.channel, &state)?;
            info!(channel = %s.channel, generation = s.generation, digest = %s.bundle.sha256, source, "Bundle verified and accepted");
        }
        let outcome = self.apply_channel(&s.channel).await?;
        let _ = self.store.gc_bundles();
        Ok(if outcome.errors.is_empty() {
            Offered::Applied
        } else {
            Offered::Failed(
                outcome
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.object, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }

    /// The channels the hub's last desired state listed (`None` before it answered once).
    fn hub_assigned(&self) -> Option<std::collections::BTreeSet<String>> {
        self.store.assigned().ok().flatten()
    }

    /// Whether a channel may be taken from an import: the agent config lists it, or the hub
    /// last said this cluster runs it. (A signed per-cluster assignment is the complete
    /// answer; until then an air-gapped site lists its channels in its config.)
    fn check_assigned(&self, channel: &str) -> Result<(), String> {
        let offered = self.hub_assigned().is_some_and(|a| a.contains(channel));
        if self.config.channels.contains_key(channel) || offered {
            Ok(())
        } else {
            Err(format!(
                "channel {channel:?} is not assigned to this cluster: the hub has not offered it, and the agent config does not list it under channels"
            ))
        }
    }

    /// Whether the agent still enforces a channel (re-applies, checks drift, heals): the
    /// assignment in effect lists it. Before any assignment: not once the hub's desired state
    /// has stopped listing it (its objects stay; logged once).
    fn enforced(&self, channel: &str) -> bool {
        if let Some(a) = self.assignment() {
            return a.channel(channel).is_some();
        }
        let dropped = self.hub_assigned().is_some_and(|a| !a.contains(channel));
        if dropped
            && self
                .unenforced
                .lock()
                .expect("unenforced")
                .insert(channel.to_owned())
        {
            // No report: the hub takes reports only for channels that target the cluster,
            // and its status shows the channel as untargeted already.
            warn!(
                channel,
                "Channel no longer assigned by the hub: its objects are kept and no longer enforced"
            );
        } else if !dropped {
            self.unenforced.lock().expect("unenforced").remove(channel);
        }
        !dropped
    }

    /// Applies a channel's accepted bundle from the store (re-verified first: the store is
    /// disk, and disks lie), prunes, records and reports the result.
    pub async fn apply_channel(&self, channel: &str) -> anyhow::Result<Outcome> {
        let _guard = self.apply_lock.lock().await;
        let mut state = self.store.channel(channel)?;
        let Some(accepted) = state.accepted.clone() else {
            return Ok(Outcome::default());
        };
        let started = Instant::now();
        // Counted before the work and cleared after it: a bundle that kills the agent while
        // it applies (a memory limit) is skipped at start after a few tries.
        state.unfinished_applies += 1;
        self.store.put_channel(channel, &state)?;
        let verified = match self.stored_bundle(channel, &accepted) {
            Ok(v) => v,
            Err(e) => {
                state.unfinished_applies = 0;
                self.store.put_channel(channel, &state)?;
                return Err(e);
            }
        };
        let previous = match (&self.applier, state.inventory.is_empty()) {
            (Applier::Kube(k), true) => k.load_inventory(channel).await.unwrap_or_default(),
            _ => state.inventory.clone(),
        };
        let values = self.values(channel);
        let outcome = match &self.applier {
            Applier::Kube(k) => k.apply(channel, values.as_ref(), &verified, &previous).await,
            Applier::Dir(d) => d.apply(channel, values.as_ref(), &verified, &previous),
        };
        let ok = outcome.errors.is_empty();
        // What is in the cluster now: all of it on success; on failure nothing was pruned,
        // so the previous objects are still there too.
        let mut inventory: Vec<ObjectRef> = outcome.applied.clone();
        if !ok {
            inventory.extend(previous.iter().cloned());
        }
        inventory.sort();
        inventory.dedup();
        let message = if ok {
            format!(
                "{} objects applied, {} pruned",
                outcome.applied.len(),
                outcome.pruned.len()
            )
        } else {
            format!(
                "{} of {} objects failed: {}",
                outcome.errors.len(),
                outcome.errors.len() + outcome.applied.len(),
                outcome
                    .errors
                    .first()
                    .map(|e| format!("{} {}", e.object, e.message))
                    .unwrap_or_default()
            )
        };
        if let (Applier::Kube(k), true) = (&self.applier, ok)
            && let Err(e) = k.save_inventory(channel, accepted.generation, &inventory).await
        {
            warn!(error = %e, channel, "Saving the inventory ConfigMap failed (the store has it)");
        }
        state.inventory = inventory;
        state.unfinished_applies = 0;
        state.applied = Some(Applied {
            generation: accepted.generation,
            sha256: accepted.sha256,
            commit: accepted.commit.clone(),
            at: Timestamp::now(),
            ok,
            message: message.clone(),
            objects: outcome.applied.len() as u64 + outcome.errors.len() as u64,
        });
        self.store.put_channel(channel, &state)?;
        let elapsed = started.elapsed();
        if ok {
            self.metrics.applies_ok.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .last_apply
                .store(Timestamp::now().unix_seconds(), Ordering::Relaxed);
            self.retries.lock().expect("retries").remove(channel);
            info!(
                channel,
                generation = accepted.generation,
                applied = outcome.applied.len(),
                pruned = outcome.pruned.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "Applied"
            );
        } else {
            self.metrics.applies_failed.fetch_add(1, Ordering::Relaxed);
            let mut retries = self.retries.lock().expect("retries");
            let failures = retries.get(channel).map_or(1, |(n, _)| n + 1);
            let wait = match outcome.retry.unwrap_or(Retry::Later) {
                Retry::Soon => Some(backoff(failures, Duration::from_secs(60))),
                Retry::Later => Some(backoff(failures, self.config.max_backoff)),
                Retry::Never => None,
            };
            if let Some(wait) = wait {
                retries.insert(channel.to_owned(), (failures, Instant::now() + wait));
                warn!(channel, generation = accepted.generation, error = %message, retry_in = ?wait, "Apply failed; retrying");
            } else {
                retries.remove(channel);
                warn!(channel, generation = accepted.generation, error = %message, "Apply failed; the bundle's content is at fault, so this generation is not tried again (a new one, or a restart, is)");
            }
        }
        if ok {
            // Right after applying: the objects' health (no drift yet: skiff just wrote them).
            let checked = match &self.applier {
                Applier::Kube(k) => k
                    .health(channel, values.as_ref(), &verified)
                    .await
                    .unwrap_or_default(),
                Applier::Dir(_) => self.inspect(channel, &verified, false, &state.inventory).await,
            };
            let applied: std::collections::BTreeSet<&ObjectRef> = state.inventory.iter().collect();
            let health: Vec<_> = checked
                .health
                .into_iter()
                .filter(|h| applied.contains(&h.0))
                .collect();
            state.health = Some(crate::drift::roll_up(&health));
            state.drift = Vec::new();
            state.checked = Some(Timestamp::now());
            self.store.put_channel(channel, &state)?;
        }
        let mut r = Self::base_report(
            channel,
            if ok {
                ReportOutcome::Applied
            } else {
                ReportOutcome::Failed
            },
        );
        r.health = state.health.clone().filter(|_| ok);
        r.drift = if ok { state.drift.clone() } else { Vec::new() };
        r.generation = Some(accepted.generation);
        r.sha256 = Some(accepted.sha256);
        r.commit = accepted.commit.clone();
        r.message = Some(message);
        r.objects = Some(outcome.applied.len() as u64 + outcome.errors.len() as u64);
        r.errors = outcome.errors.clone();
        r.duration_ms = Some(elapsed.as_millis() as u64);
        self.report(r);
        Ok(outcome)
    }

    /// The accepted bundle of a channel, read from the store and verified again (the store
    /// is a disk, and disks lie: envelope, size and digest; its files are checked as they
    /// are read). Expiry is about accepting: the last good state stays applicable offline.
    fn stored_bundle(&self, channel: &str, accepted: &Accepted) -> anyhow::Result<StoredBundle> {
        let policy = Policy {
            channel: Some(channel.to_owned()),
            now: accepted.at,
            ..Policy::default()
        };
        StoredBundle::reopen(
            &self.trust(),
            &accepted.envelope.to_json(),
            &self.store.bundle_path(&accepted.sha256),
            &policy,
        )
        .map(|(_, bundle)| bundle)
        .map_err(|e| anyhow::anyhow!("stored bundle of channel {channel} no longer verifies: {e}"))
    }

    /// Compares the cluster with a channel's applied bundle; re-applies drifted objects if
    /// `heal`.
    async fn inspect(
        &self,
        channel: &str,
        bundle: &dyn skiff_proto::bundle::BundleFiles,
        heal: bool,
        inventory: &[ObjectRef],
    ) -> Checked {
        let mut checked = self.inspect_all(channel, bundle, heal, inventory).await;
        // Objects that never applied (their apply failed, and was reported) are not drift.
        let applied: std::collections::BTreeSet<&ObjectRef> = inventory.iter().collect();
        checked.drift.retain(|d| applied.contains(&d.object));
        checked.health.retain(|h| applied.contains(&h.0));
        checked
    }

    async fn inspect_all(
        &self,
        channel: &str,
        bundle: &dyn skiff_proto::bundle::BundleFiles,
        heal: bool,
        inventory: &[ObjectRef],
    ) -> Checked {
        let values = self.values(channel);
        match &self.applier {
            Applier::Kube(k) => k
                .check(channel, values.as_ref(), bundle, heal, inventory)
                .await
                .unwrap_or_else(|o| Checked {
                    errors: o.errors.iter().map(|e| e.message.clone()).collect(),
                    ..Checked::default()
                }),
            Applier::Dir(d) => d.check(channel, values.as_ref(), bundle, heal),
        }
    }

    /// A drift check of one channel; re-applies drifted objects when `heal`, and reports
    /// when it finds drift or the health changed. Returns what it found.
    pub async fn check_channel(&self, channel: &str, heal: bool) -> anyhow::Result<Checked> {
        let _guard = self.apply_lock.lock().await;
        let mut state = self.store.channel(channel)?;
        let Some(accepted) = state.accepted.clone() else {
            return Ok(Checked::default());
        };
        if state.applied.as_ref().is_none_or(|a| a.sha256 != accepted.sha256) {
            return Ok(Checked::default()); // not applied yet: the apply path owns it
        }
        let verified = self.stored_bundle(channel, &accepted)?;
        let checked = self.inspect(channel, &verified, heal, &state.inventory).await;
        let health = crate::drift::roll_up(&checked.health);
        let health_changed = state.health.as_ref().map(|h| &h.state) != Some(&health.state);
        let corrected = checked.drift.iter().filter(|d| d.corrected).count() as u64;
        self.metrics
            .drift_detected
            .fetch_add(checked.drift.len() as u64, Ordering::Relaxed);
        self.metrics
            .drift_corrected
            .fetch_add(corrected, Ordering::Relaxed);
        for d in &checked.drift {
            let paths: Vec<&str> = d.paths.iter().map(|p| p.path.as_str()).collect();
            warn!(channel, object = %d.object, drift = %d.kind, corrected = d.corrected, ?paths, "Drift");
        }
        for e in &checked.errors {
            warn!(channel, error = %e, "Drift check of an object failed");
        }
        for u in &checked.unknown {
            warn!(channel, object = %u.object, error = %u.message, "Object could not be compared: unknown");
        }
        let unknown_changed = state.unknown != checked.unknown;
        if !checked.stray.is_empty() {
            let mut seen = self.stray.lock().expect("stray");
            if seen.get(channel) != Some(&checked.stray) {
                warn!(channel, files = ?checked.stray, "Files in the channel's folder that skiff did not write (left alone)");
                seen.insert(channel.to_owned(), checked.stray.clone());
            }
        }
        if !checked.drift.is_empty() || health_changed || unknown_changed {
            let mut r = Self::base_report(channel, ReportOutcome::Checked);
            r.generation = Some(accepted.generation);
            r.sha256 = Some(accepted.sha256);
            r.commit = accepted.commit.clone();
            let corrected = checked.drift.iter().filter(|d| d.corrected).count();
            r.message = Some(format!(
                "{} drifted object(s), {corrected} corrected, {} unknown; health {}",
                checked.drift.len(),
                checked.unknown.len(),
                health.state
            ));
            r.drift = checked.drift.clone();
            r.unknown = checked.unknown.clone();
            r.health = Some(health.clone());
            self.report(r);
        }
        state.unknown = checked.unknown.clone();
        state.drift = checked.drift.iter().filter(|d| !d.corrected).cloned().collect();
        state.health = Some(health);
        state.checked = Some(Timestamp::now());
        self.store.put_channel(channel, &state)?;
        self.write_snapshot();
        Ok(checked)
    }

    /// Every channel, one drift check each, self-heal as configured.
    pub async fn check_all(&self, heal: Option<bool>) -> Vec<(String, anyhow::Result<Checked>)> {
        let channels: Vec<String> = self
            .store
            .channels()
            .map(|c| c.into_keys().collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for channel in channels {
            if !self.enforced(&channel) {
                continue;
            }
            // Outside the maintenance windows, drift is only reported when they say so.
            let heal =
                heal.unwrap_or_else(|| self.config.self_heal_for(&channel) && !self.drift_report_only());
            let r = self.check_channel(&channel, heal).await;
            out.push((channel, r));
        }
        out
    }

    async fn check_drift(self: Arc<Self>) {
        if self.config.drift_interval.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(jitter(self.config.drift_interval)).await;
            for (channel, r) in self.check_all(None).await {
                if let Err(error) = r {
                    warn!(%error, channel = %channel, "Drift check failed");
                }
            }
        }
    }

    /// At start: re-apply every channel from the store, hub or no hub.
    pub async fn reapply_stored(&self) {
        let channels = match self.store.channels() {
            Ok(c) => c,
            Err(error) => {
                warn!(%error, "Reading the store failed");
                return;
            }
        };
        for (name, state) in channels {
            let Some(accepted) = &state.accepted else { continue };
            if !self.enforced(&name) {
                continue;
            }
            if state.unfinished_applies >= UNFINISHED_LIMIT {
                let message = format!(
                    "generation {} did not finish applying in the last {} starts (was the agent killed while applying it? a memory limit?); skipped until a newer generation arrives",
                    accepted.generation, state.unfinished_applies
                );
                warn!(channel = %name, generation = accepted.generation, "Stored bundle skipped at start");
                let mut r = Self::base_report(&name, ReportOutcome::Failed);
                r.generation = Some(accepted.generation);
                r.sha256 = Some(accepted.sha256);
                r.message = Some(message);
                self.report(r);
                continue;
            }
            if let Err(error) = self.apply_channel(&name).await {
                warn!(%error, channel = %name, "Re-applying from the store failed");
            }
        }
        self.write_snapshot();
    }

    /// Imports one bundle/envelope pair from files. The envelope is read (within its cap)
    /// and its signature checked first; the bundle is read only if it is exactly as large as
    /// the signed statement says, and within the format's caps.
    /// `from_folder`: the pair sits in the import folder, where an older generation is
    /// history left on the medium (skipped quietly) rather than a rollback someone asked for
    /// (refused and reported).
    pub async fn import_files(
        &self,
        bundle: &PathBuf,
        envelope: &PathBuf,
        from_folder: bool,
    ) -> anyhow::Result<Offered> {
        let env_len = std::fs::metadata(envelope)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", envelope.display()))?
            .len();
        if env_len > limits::MAX_ENVELOPE_BYTES {
            return self.refuse_import(
                bundle,
                format!(
                    "{} is {env_len} bytes, more than an envelope may be ({})",
                    envelope.display(),
                    limits::MAX_ENVELOPE_BYTES
                ),
            );
        }
        let env =
            std::fs::read(envelope).map_err(|e| anyhow::anyhow!("reading {}: {e}", envelope.display()))?;
        let statement = match Envelope::from_json(&env)
            .map_err(VerifyError::from)
            .and_then(|e| self.trust().verify_envelope(&e))
            .and_then(|s| skiff_proto::verify::check_size(&s, &Default::default()).map(|()| s))
        {
            Ok(s) => s,
            Err(error) => return self.refuse_import(bundle, format!("{}: {error}", envelope.display())),
        };
        // Media keep older bundles around: below the accepted generation they are history,
        // not an attack; skipped quietly, the bundle never read.
        let accepted = self
            .store
            .channel(&statement.channel)?
            .accepted
            .map(|a| a.generation);
        if let Some(accepted) = accepted.filter(|a| from_folder && statement.generation < *a) {
            tracing::debug!(channel = %statement.channel, offered = statement.generation, accepted, file = %bundle.display(), "Older generation on the import medium; skipped");
            return Ok(Offered::Older {
                offered: statement.generation,
                accepted,
            });
        }
        let on_disk = std::fs::metadata(bundle)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", bundle.display()))?
            .len();
        if on_disk != statement.bundle.size {
            return self.refuse_import(
                bundle,
                format!(
                    "{} is {on_disk} bytes, the signed statement says {}",
                    bundle.display(),
                    statement.bundle.size
                ),
            );
        }
        // Copied into the store's folder first (at most the signed size), then verified and
        // moved in: what is verified is what is kept, whatever happens on the medium meanwhile.
        let copy = self
            .config
            .data_dir
            .join("bundles")
            .join(format!("{}.import", statement.bundle.sha256));
        let copied = std::fs::File::open(bundle).and_then(|f| {
            use std::io::Read as _;
            let mut out = std::fs::File::create(&copy)?;
            std::io::copy(&mut f.take(statement.bundle.size + 1), &mut out)
        });
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&copy);
            anyhow::bail!("reading {}: {e}", bundle.display());
        }
        let offered = self
            .offer(
                &format!("import {}", bundle.display()),
                &env,
                &copy,
                ChannelPolicy::Assigned,
            )
            .await;
        let _ = std::fs::remove_file(&copy);
        offered
    }

    /// Reports that nothing new is taken under an expired trust root (once per source and
    /// reason in the log; the report goes to the hub).
    fn refuse_expired(&self, source: &str, error: String) -> Offered {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        warn!(%error, source, "Nothing new is accepted under an expired trust root; keeping the last good state");
        let mut r = Self::base_report("unknown", ReportOutcome::Rejected);
        r.message = Some(format!("bundle from {source} not taken: {error}"));
        self.report(r);
        Offered::NotAssigned(error)
    }

    /// Reports an import refused before its bundle was read.
    fn refuse_import(&self, bundle: &std::path::Path, error: String) -> anyhow::Result<Offered> {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        warn!(%error, file = %bundle.display(), "Import refused; keeping the last good state");
        let mut r = Self::base_report("unknown", ReportOutcome::Rejected);
        r.message = Some(format!("import {} refused: {error}", bundle.display()));
        self.report(r);
        Ok(Offered::Rejected(error))
    }

    /// Marks an import pair as looked at while its file stays as it is (bounded: at worst a
    /// pair is looked at again).
    fn remember_import(&self, pair: &crate::source::ImportPair) {
        let mut seen = self.seen_imports.lock().expect("imports");
        if seen.len() >= 10_000 {
            seen.clear();
        }
        seen.insert(pair.bundle.clone(), pair.stamp);
    }

    /// Moves a refused import pair into `rejected/` beside it (when the medium allows), so
    /// an operator sees what was refused and it is not looked at again.
    fn set_aside(&self, pair: &crate::source::ImportPair) {
        let Some(dir) = pair.bundle.parent() else { return };
        let aside = dir.join("rejected");
        if std::fs::create_dir_all(&aside).is_err() {
            return;
        }
        for file in [&pair.bundle, &pair.envelope] {
            if let Some(name) = file.file_name() {
                let _ = std::fs::rename(file, aside.join(name));
            }
        }
    }

    async fn poll_hub(self: Arc<Self>) {
        let Some(hub) = &self.hub else { return };
        let mut etag: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let wait = if etag.is_some() {
                self.config.long_poll_wait
            } else {
                Duration::ZERO
            };
            let answer = hub.desired(etag.as_deref(), wait).await;
            if answer.is_ok() {
                self.metrics
                    .last_hub_contact
                    .store(Timestamp::now().unix_seconds(), Ordering::Relaxed);
            }
            match answer {
                Ok(None) => {
                    failures = 0;
                    if self.config.long_poll_wait.is_zero() {
                        tokio::time::sleep(jitter(self.config.poll_interval)).await;
                    }
                }
                Ok(Some((desired, tag))) => {
                    failures = 0;
                    let mut complete = true;
                    // A newer trust root first: it decides whose signatures count below.
                    if let Some(root) = &desired.root {
                        self.follow_hub_roots(root).await;
                    }
                    // The assignment next: it decides which of the channels below may run.
                    if let Some(envelope) = &desired.assignment
                        && let Err(error) = self.take_assignment("hub", envelope).await
                    {
                        warn!(%error, "Taking the hub's assignment failed");
                        complete = false;
                    }
                    // Under an expired root nothing is fetched (the offer would refuse it).
                    if let Err(error) = self.trust().check_fresh(Timestamp::now()) {
                        warn!(%error, "Nothing new is fetched under an expired trust root; keeping the last good state");
                        for ch in &desired.channels {
                            let mut r = Self::base_report(&ch.channel, ReportOutcome::Rejected);
                            r.generation = Some(ch.generation);
                            r.message = Some(format!("generation {} not taken: {error}", ch.generation));
                            self.report(r);
                        }
                        etag = Some(tag);
                        continue;
                    }
                    let assigned = desired.channels.iter().map(|c| c.channel.clone()).collect();
                    if let Err(error) = self.store.set_assigned(&assigned) {
                        warn!(%error, "Recording the hub's channels failed");
                    }
                    for ch in &desired.channels {
                        let held = self.store.channel(&ch.channel).unwrap_or_default();
                        // The same bundle under a newer generation is offered (a statement
                        // signed again), though nothing is downloaded for it.
                        let current = held.accepted.map(|a| (a.sha256, a.generation));
                        let pending = held.pending.map(|a| a.sha256);
                        if current.is_some_and(|(d, g)| d == ch.sha256 && g >= ch.generation)
                            || pending == Some(ch.sha256)
                            || self.rejected.lock().expect("rejected").contains(&ch.sha256)
                        {
                            continue;
                        }
                        // What to fetch, and how much, comes from the signed statement, not
                        // from the unsigned answer around it.
                        let statement = match self.trust().verify_envelope(&ch.envelope).and_then(|s| {
                            skiff_proto::verify::check_size(&s, &Default::default())?;
                            skiff_proto::verify::check_policy(
                                &s,
                                &Policy {
                                    channel: Some(ch.channel.clone()),
                                    ..Policy::default()
                                },
                            )?;
                            Ok(s)
                        }) {
                            Ok(s) => s,
                            Err(error) => {
                                self.rejected.lock().expect("rejected").insert(ch.sha256);
                                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                                warn!(%error, channel = %ch.channel, "Desired bundle's statement rejected; keeping the last good state");
                                let mut r = Self::base_report(&ch.channel, ReportOutcome::Rejected);
                                r.sha256 = Some(ch.sha256);
                                r.message = Some(format!("statement from hub rejected: {error}"));
                                self.report(r);
                                continue;
                            }
                        };
                        // Not for this cluster now (unassigned, or above its pin): nothing is
                        // fetched; a newer assignment comes with a new desired state.
                        if let Err(error) = self.admit(&statement.channel, statement.generation, true) {
                            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                            warn!(%error, channel = %ch.channel, generation = statement.generation, "Desired bundle not admitted by this cluster's assignment; not fetched");
                            let mut r = Self::base_report(&ch.channel, ReportOutcome::Rejected);
                            r.generation = Some(statement.generation);
                            r.sha256 = Some(statement.bundle.sha256);
                            r.message = Some(format!("bundle from hub not admitted: {error}"));
                            self.report(r);
                            continue;
                        }
                        let (digest, size) = (statement.bundle.sha256, statement.bundle.size);
                        if current.is_some_and(|(d, _)| d == digest) {
                            // Signed again: the stored bundle is checked under the new statement.
                            let stored = self.store.bundle_path(&digest);
                            if let Err(error) = self
                                .offer(
                                    "hub",
                                    &ch.envelope.to_json(),
                                    &stored,
                                    ChannelPolicy::Expected(&ch.channel),
                                )
                                .await
                            {
                                warn!(%error, channel = %ch.channel, "Taking a new statement for the stored bundle failed");
                                complete = false;
                            }
                            continue;
                        }
                        let partial = self
                            .config
                            .data_dir
                            .join("bundles")
                            .join(format!("{digest}.part"));
                        match hub.download(&ch.bundle_url, &digest, size, &partial).await {
                            Ok(()) => {
                                if let Err(error) = self
                                    .offer(
                                        "hub",
                                        &ch.envelope.to_json(),
                                        &partial,
                                        ChannelPolicy::Expected(&ch.channel),
                                    )
                                    .await
                                {
                                    warn!(%error, channel = %ch.channel, "Storing a bundle failed");
                                    complete = false;
                                }
                                // Moved into the store when accepted; what is left was refused.
                                let _ = std::fs::remove_file(&partial);
                            }
                            Err(SourceError::Mismatch(error)) => {
                                // Every source served other bytes than the signature names.
                                self.rejected
                                    .lock()
                                    .expect("rejected")
                                    .extend([digest, ch.sha256]);
                                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                                warn!(%error, channel = %ch.channel, "Bundle rejected; keeping the last good state");
                                let mut r = Self::base_report(&ch.channel, ReportOutcome::Rejected);
                                r.sha256 = Some(digest);
                                r.message = Some(format!("bundle from hub rejected: {error}"));
                                self.report(r);
                            }
                            Err(error) => {
                                warn!(%error, channel = %ch.channel, "Bundle download failed; will resume");
                                complete = false;
                            }
                        }
                    }
                    if complete {
                        etag = Some(tag);
                    } else {
                        tokio::time::sleep(backoff(2, self.config.max_backoff)).await;
                    }
                }
                Err(error) => {
                    failures += 1;
                    let wait = backoff(failures, self.config.max_backoff);
                    let has_state = self
                        .store
                        .channels()
                        .is_ok_and(|c| c.values().any(|s| s.accepted.is_some()));
                    match (&error, has_state) {
                        (SourceError::Refused(_), _) => {
                            warn!(%error, retry_in = ?wait, "Hub refused the agent")
                        }
                        (_, true) => {
                            warn!(%error, retry_in = ?wait, "Hub unreachable; keeping the last good state")
                        }
                        (_, false) => warn!(%error, retry_in = ?wait, "Hub unreachable; nothing applied yet"),
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn send_reports(self: Arc<Self>) {
        let Some(hub) = &self.hub else { return };
        let mut failures = 0u32;
        loop {
            let batch = self.store.outbox(50).unwrap_or_default();
            if batch.is_empty() {
                tokio::select! {
                    () = self.reports.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                continue;
            }
            match hub.send_reports(&batch).await {
                Ok(_) => {
                    failures = 0;
                    let seqs: Vec<u64> = batch.iter().map(|r| r.seq).collect();
                    if let Err(error) = self.store.remove_reports(&seqs) {
                        warn!(%error, "Removing delivered reports failed");
                    }
                    self.metrics
                        .reports_sent
                        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                    self.write_snapshot();
                }
                Err(error) => {
                    failures += 1;
                    let wait = backoff(failures, self.config.max_backoff);
                    info!(%error, pending = batch.len(), retry_in = ?wait, "Reports wait in the outbox");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn watch_imports(self: Arc<Self>) {
        let Some(dir) = self.config.import_dir.clone() else {
            return;
        };
        loop {
            // Trust roots first: they decide whose signatures count.
            self.import_roots(&dir);
            // Assignments next: they decide which of the bundles may run.
            for (file, stamp) in crate::source::scan_assignment_files(&dir) {
                if self.seen_imports.lock().expect("imports").get(&file) == Some(&stamp) {
                    continue;
                }
                match self.import_assignment(&file).await {
                    Ok(TakenAssignment::Refused(_)) => {
                        // Said once; looked at again only when the file changes.
                        self.seen_imports.lock().expect("imports").insert(file, stamp);
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, file = %file.display(), "Assignment import failed"),
                }
            }
            for pair in scan_import_dir(&dir) {
                let seen = self.seen_imports.lock().expect("imports").get(&pair.bundle) == Some(&pair.stamp);
                let digest = pair
                    .bundle
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".tar.gz"))
                    .and_then(|d| d.parse::<Sha256Digest>().ok());
                if seen || digest.is_some_and(|d| self.rejected.lock().expect("rejected").contains(&d)) {
                    continue;
                }
                match self.import_files(&pair.bundle, &pair.envelope, true).await {
                    Ok(Offered::Rejected(_)) => {
                        // Reported once; set aside and not read again while unchanged.
                        self.remember_import(&pair);
                        self.set_aside(&pair);
                    }
                    Ok(_) => {
                        // Taken, unchanged, failed (tried again from the store on its own
                        // schedule), waiting, older or not assigned: looked at again only when
                        // the file changes (or the assignment does), never verified anew every
                        // scan.
                        self.remember_import(&pair);
                    }
                    Err(error) => warn!(%error, file = %pair.bundle.display(), "Import failed"),
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Applies the generations that wait for the hold to lift or a window to open, once
    /// they may (looked at every second: a file's presence and a clock).
    async fn apply_pending(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The store is read only while something may wait (set when a generation is
            // deferred; true at start, for what an earlier run left waiting).
            if !self.maybe_pending.load(Ordering::Relaxed) {
                continue;
            }
            let waiting: Vec<String> = self
                .store
                .channels()
                .map(|c| {
                    c.into_iter()
                        .filter(|(_, s)| s.pending.is_some())
                        .map(|(n, _)| n)
                        .collect()
                })
                .unwrap_or_default();
            if waiting.is_empty() {
                self.maybe_pending.store(false, Ordering::Relaxed);
                continue;
            }
            if self.deferral().is_some() {
                continue;
            }
            for channel in waiting {
                if let Err(error) = self.take_pending(&channel).await {
                    warn!(%error, channel = %channel, "Applying the waiting generation failed");
                }
            }
        }
    }

    /// Makes a channel's waiting generation the accepted one and applies it (unless the
    /// assignment in effect no longer admits it: then it is dropped).
    async fn take_pending(&self, channel: &str) -> anyhow::Result<()> {
        let mut state = self.store.channel(channel)?;
        let Some(pending) = state.pending.take() else {
            return Ok(());
        };
        if !self.enforced(channel) {
            return Ok(());
        }
        if let Err(why) = self.admit(channel, pending.generation, true) {
            warn!(channel, generation = pending.generation, %why, "Waiting generation no longer admitted; dropped");
            self.store.put_channel(channel, &state)?;
            return Ok(());
        }
        info!(
            channel,
            generation = pending.generation,
            "The hold is lifted or the window is open: applying the waiting generation"
        );
        state.accepted = Some(pending);
        state.unfinished_applies = 0;
        self.store.put_channel(channel, &state)?;
        self.apply_channel(channel).await?;
        let _ = self.store.gc_bundles();
        Ok(())
    }

    /// Reports a generation that waits, and why.
    fn report_deferred(&self, channel: &str, state: &ChannelState, generation: u64, d: &gate::Deferral) {
        info!(channel, generation, reason = %d.message, "Newer generation verified and stored; not applied yet");
        let mut r = Self::base_report(channel, ReportOutcome::Deferred);
        // The generation that runs; the one waiting is in `deferred`.
        r.generation = state.applied.as_ref().filter(|a| a.ok).map(|a| a.generation);
        r.message = Some(format!("generation {generation} {}", d.message));
        r.deferred = Some(skiff_proto::api::Deferred {
            generation,
            reason: d.reason,
            next: d.next,
        });
        self.report(r);
    }

    async fn retry_failed(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let due: Vec<String> = self
                .retries
                .lock()
                .expect("retries")
                .iter()
                .filter(|(_, (_, at))| *at <= Instant::now())
                .map(|(c, _)| c.clone())
                .collect();
            for channel in due {
                if !self.enforced(&channel) {
                    self.retries.lock().expect("retries").remove(&channel);
                    continue;
                }
                if let Err(error) = self.apply_channel(&channel).await {
                    warn!(%error, channel = %channel, "Retry failed");
                }
            }
        }
    }

    /// At start: removes what an earlier run left half-done (temporary files of the `dir`
    /// target, stale partial downloads) and bundles no channel names any more.
    fn clean_leftovers(&self) {
        if let Applier::Dir(d) = &self.applier {
            d.remove_temp_files();
        }
        if let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("bundles")) {
            let week = Duration::from_secs(7 * 24 * 3600);
            for e in entries.flatten() {
                let stale = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > week));
                let name = e.file_name().to_string_lossy().into_owned();
                // A download resumes within a week; an import copy never outlives its run.
                if (name.ends_with(".part") && stale) || name.ends_with(".import") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Err(error) = self.store.gc_bundles() {
            warn!(%error, "Collecting stale bundles failed");
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        self.clean_leftovers();
        // Polling starts first and never waits for the stored state: nothing a stored
        // bundle does (a slow cluster, a bundle that fails) may keep a newer generation out.
        let tasks = vec![
            tokio::spawn({
                let this = self.clone();
                async move { this.reapply_stored().await }
            }),
            tokio::spawn(self.clone().flush_snapshots()),
            tokio::spawn(self.clone().poll_hub()),
            tokio::spawn(self.clone().send_reports()),
            tokio::spawn(self.clone().watch_imports()),
            tokio::spawn(self.clone().retry_failed()),
            tokio::spawn(self.clone().apply_pending()),
            tokio::spawn(self.clone().check_drift()),
        ];
        shutdown.await;
        for t in tasks {
            t.abort();
        }
        self.write_snapshot();
    }
}
