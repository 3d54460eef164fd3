//! The agent's local store: everything needed to keep working with the hub gone for days.
//!
//! redb (`agent.redb`) holds, per channel, the accepted statement (and so the highest
//! accepted generation: anti-rollback survives restarts) and the last apply with its
//! inventory; plus the outbox of reports and the store's identity. Bundle bytes are files
//! in `bundles/`, written to a temporary file, synced and renamed before any record names
//! them: `kill -9` at any point leaves a store that opens and names only whole bundles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use skiff_proto::Sha256Digest;
use skiff_proto::api::{Drift, Health, ObjectRef, Report};
use skiff_proto::dsse::Envelope;
use skiff_proto::statement::Timestamp;

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("agent store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

/// The bundle a channel accepted last (passed verification).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Generation.
    pub generation: u64,
    /// Bundle digest.
    pub sha256: Sha256Digest,
    /// Source commit.
    pub commit: Option<String>,
    /// The envelope it came with (re-verified before every re-apply).
    pub envelope: Envelope,
    /// When it was accepted.
    pub at: Timestamp,
}

/// The last apply of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Generation applied.
    pub generation: u64,
    /// Bundle applied.
    pub sha256: Sha256Digest,
    /// Source commit.
    pub commit: Option<String>,
    /// When.
    pub at: Timestamp,
    /// Whether every object applied.
    pub ok: bool,
    /// A one-line summary.
    pub message: String,
    /// Objects in the bundle.
    pub objects: u64,
}

/// An accepted assignment, as stored: the envelope (re-checked on read), what it says, and
/// its payload digest (anti-rollback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAssignment {
    /// The signed envelope.
    pub envelope: Envelope,
    /// What it says.
    pub assignment: skiff_proto::assignment::Assignment,
    /// SHA-256 of its payload.
    pub digest: Sha256Digest,
    /// When it was accepted.
    pub at: Timestamp,
}

/// Everything known about one channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    /// Accepted bundle.
    pub accepted: Option<Accepted>,
    /// A newer bundle, verified and stored, not applied yet: the site holds, or it is
    /// outside its maintenance window. It becomes the accepted one when it may apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Accepted>,
    /// Last apply attempt.
    pub applied: Option<Applied>,
    /// What the last successful apply left in the cluster (what a later prune removes).
    #[serde(default)]
    pub inventory: Vec<ObjectRef>,
    /// Drift found by the last check.
    #[serde(default)]
    pub drift: Vec<Drift>,
    /// Health found by the last check.
    #[serde(default)]
    pub health: Option<Health>,
    /// When the last check ran.
    #[serde(default)]
    pub checked: Option<Timestamp>,
    /// Applies of the accepted bundle that started and never finished (the agent died
    /// while applying): a bundle that keeps killing the agent is skipped at start.
    #[serde(default)]
    pub unfinished_applies: u32,
    /// Objects the last check could not compare, with the reason.
    #[serde(default)]
    pub unknown: Vec<skiff_proto::api::ObjectError>,
}

/// Most bytes of reports the outbox holds; the oldest go first beyond it (the newest report
/// of each channel is kept longest).
pub const OUTBOX_MAX_BYTES: u64 = 16 << 20;

/// Memory redb may keep of the store's pages (its default is 1 GiB: a store of a few MB
/// would stay in memory whole, an idle agent's largest part after a large apply). The
/// store is read at start and written after applies and checks; the system's page cache
/// serves the rest.
const CACHE_BYTES: usize = 256 << 10;

/// The store.
pub struct Store {
    db: Database,
    path: PathBuf,
    bundles: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let bundles = data_dir.join("bundles");
        let path = data_dir.join("agent.redb");
        let err = |m: String| StoreError {
            path: path.clone(),
            message: m,
        };
        std::fs::create_dir_all(&bundles).map_err(|e| err(format!("creating {}: {e}", bundles.display())))?;
        // `skiff-agent status` may hold the store for a moment: wait for it (briefly).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match Database::builder().set_cache_size(CACHE_BYTES).create(&path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(err(
                        "in use by another process (is an agent running with this data_dir?)".to_owned(),
                    ));
                }
                Err(e) => return Err(err(e.to_string())),
            }
        };
        let store = Self { db, path, bundles };
        store.write(|t| {
            t.open_table(CHANNELS)?;
            t.open_table(OUTBOX)?;
            t.open_table(META)?;
            Ok(())
        })?;
        if store.meta("instance")?.is_none() {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).map_err(|e| store.err(e))?;
            store.set_meta("instance", skiff_proto::digest::hex(&id).as_bytes())?;
        }
        Ok(store)
    }

    /// Whether another process (a running agent) holds the store in `data_dir`.
    pub fn in_use(data_dir: &Path) -> bool {
        matches!(
            Database::create(data_dir.join("agent.redb")),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        )
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        f(&txn).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(META).map_err(|e| self.err(e))?;
        Ok(t.get(key).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|t| {
            t.open_table(META)?.insert(key, value)?;
            Ok(())
        })
    }

    /// This store's random identity (report sequence numbers count within it).
    pub fn instance(&self) -> Result<String, StoreError> {
        Ok(String::from_utf8_lossy(&self.meta("instance")?.unwrap_or_default()).into_owned())
    }

    /// Reports dropped because the outbox was full.
    pub fn dropped(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta("dropped")?
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// Every channel's state.
    pub fn channels(&self) -> Result<BTreeMap<String, ChannelState>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(CHANNELS).map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for e in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = e.map_err(|e| self.err(e))?;
            let state = serde_json::from_slice(v.value())
                .map_err(|e| self.err(format!("channel {}: {e}", k.value())))?;
            out.insert(k.value().to_owned(), state);
        }
        Ok(out)
    }

    /// One channel's state (default when unknown).
    pub fn channel(&self, name: &str) -> Result<ChannelState, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(CHANNELS).map_err(|e| self.err(e))?;
        match t.get(name).map_err(|e| self.err(e))? {
            Some(v) => {
                serde_json::from_slice(v.value()).map_err(|e| self.err(format!("channel {name}: {e}")))
            }
            None => Ok(ChannelState::default()),
        }
    }

    /// Writes one channel's state.
    pub fn put_channel(&self, name: &str, state: &ChannelState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).expect("serializes");
        self.write(|t| {
            t.open_table(CHANNELS)?.insert(name, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Path of a stored bundle.
    pub fn bundle_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.bundles.join(format!("{digest}.tar.gz"))
    }

    /// Stores a verified bundle file: moved in when it sits in the store's folder already (a
    /// finished download), copied otherwise (an import medium); fsynced either way.
    pub fn put_bundle_file(&self, digest: &Sha256Digest, from: &Path) -> Result<(), StoreError> {
        let path = self.bundle_path(digest);
        if from.parent() == Some(self.bundles.as_path()) {
            std::fs::File::open(from)
                .and_then(|f| f.sync_all())
                .map_err(|e| self.err(format!("{}: {e}", from.display())))?;
            std::fs::rename(from, &path).map_err(|e| self.err(format!("{}: {e}", from.display())))?;
        } else {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.bundles).map_err(|e| self.err(e))?;
            let mut source =
                std::fs::File::open(from).map_err(|e| self.err(format!("{}: {e}", from.display())))?;
            std::io::copy(&mut source, &mut tmp).map_err(|e| self.err(format!("{}: {e}", from.display())))?;
            tmp.as_file().sync_all().map_err(|e| self.err(e))?;
            tmp.persist(&path).map_err(|e| self.err(e.error))?;
        }
        std::fs::File::open(&self.bundles)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes bundles no channel names any more.
    pub fn gc_bundles(&self) -> Result<(), StoreError> {
        let keep: Vec<String> = self
            .channels()?
            .values()
            .flat_map(|c| c.accepted.iter().chain(c.pending.iter()))
            .map(|a| format!("{}.tar.gz", a.sha256))
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.bundles) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Downloads and import copies in progress stay.
                if !keep.contains(&name) && !name.ends_with(".part") && !name.ends_with(".import") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Queues a report (trimmed to the hub's size limit), giving it the next sequence
    /// number: read and bumped in the same write transaction, so two reports never share one.
    /// Beyond `limit` reports or [`OUTBOX_MAX_BYTES`], the oldest go first, keeping each
    /// channel's newest report longest; what was dropped is counted.
    pub fn push_report(&self, report: Report, limit: usize) -> Result<Report, StoreError> {
        let mut report = report.fit();
        report.instance = self.instance()?;
        let mut dropped = 0u64;
        self.write(|t| {
            let mut meta = t.open_table(META)?;
            let next: u64 = meta
                .get("next_seq")?
                .and_then(|v| String::from_utf8(v.value().to_vec()).ok()?.parse().ok())
                .unwrap_or(1);
            meta.insert("next_seq", (next + 1).to_string().as_bytes())?;
            drop(meta);
            report.seq = next;
            let bytes = serde_json::to_vec(&report).expect("serializes");
            let mut outbox = t.open_table(OUTBOX)?;
            outbox.insert(next, bytes.as_slice())?;
            let all: Vec<(u64, String, u64)> = outbox
                .iter()?
                .map(|e| {
                    e.map(|(k, v)| {
                        let channel = serde_json::from_slice::<Report>(v.value())
                            .map(|r| r.channel)
                            .unwrap_or_default();
                        (k.value(), channel, v.value().len() as u64)
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut count = all.len();
            let mut total: u64 = all.iter().map(|(_, _, n)| n).sum();
            if count > limit || total > OUTBOX_MAX_BYTES {
                let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
                for (k, c, _) in &all {
                    newest.insert(c, *k);
                }
                // Older reports of a channel first, then the rest, oldest first.
                let order = all
                    .iter()
                    .filter(|(k, c, _)| newest[c.as_str()] != *k)
                    .chain(all.iter().filter(|(k, c, _)| newest[c.as_str()] == *k));
                for (k, _, n) in order {
                    if count <= limit && total <= OUTBOX_MAX_BYTES || *k == next {
                        break;
                    }
                    outbox.remove(*k)?;
                    count -= 1;
                    total -= n;
                    dropped += 1;
                }
            }
            Ok(())
        })?;
        if dropped > 0 {
            let total = self.dropped()? + dropped;
            self.set_meta("dropped", total.to_string().as_bytes())?;
        }
        Ok(report)
    }

    /// The assignment in effect (the newest accepted), if any.
    pub fn assignment(&self) -> Result<Option<StoredAssignment>, StoreError> {
        match self.meta("assignment")? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.err(format!("assignment: {e}"))),
            None => Ok(None),
        }
    }

    /// The newest trust root taken (its envelope JSON), if any.
    pub fn root(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta("root")
    }

    /// Records a newly taken trust root.
    pub fn put_root(&self, envelope_json: &[u8]) -> Result<(), StoreError> {
        self.set_meta("root", envelope_json)
    }

    /// Records a newly accepted assignment.
    pub fn put_assignment(&self, a: &StoredAssignment) -> Result<(), StoreError> {
        self.set_meta("assignment", &serde_json::to_vec(a).expect("serializes"))
    }

    /// Channels the hub last said this cluster runs (from its desired state); `None` until
    /// the hub has answered once.
    pub fn assigned(&self) -> Result<Option<std::collections::BTreeSet<String>>, StoreError> {
        Ok(self
            .meta("assigned")?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Records the channels the hub says this cluster runs.
    pub fn set_assigned(&self, channels: &std::collections::BTreeSet<String>) -> Result<(), StoreError> {
        if self.assigned()?.as_ref() == Some(channels) {
            return Ok(());
        }
        self.set_meta("assigned", &serde_json::to_vec(channels).expect("serializes"))
    }

    /// The oldest `max` reports in the outbox.
    pub fn outbox(&self, max: usize) -> Result<Vec<Report>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for e in t.iter().map_err(|e| self.err(e))?.take(max) {
            let (_, v) = e.map_err(|e| self.err(e))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// Removes delivered reports.
    pub fn remove_reports(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(|t| {
            let mut outbox = t.open_table(OUTBOX)?;
            for s in seqs {
                outbox.remove(*s)?;
            }
            Ok(())
        })
    }

    /// Reports waiting.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }
}
