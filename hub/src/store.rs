//! The hub's durable state: bundle blobs content-addressed on disk
//! (`blobs/sha256/<hex>`, written to a temporary file, synced and renamed) and records in
//! the embedded store (redb, `hub.redb`). A record only ever names a blob that is complete,
//! so a hub killed at any moment restarts serving exactly what it served before.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use skiff_proto::Sha256Digest;
use skiff_proto::api::Report;
use skiff_proto::dsse::Envelope;
use skiff_proto::statement::Timestamp;

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels");
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
const REPORTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("reports");
/// Latest report per (cluster, channel), apart from the cluster record.
const LATEST: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("latest_reports");
/// Report bookkeeping per cluster: sequences per agent instance, history count and bytes.
const REPORT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("report_meta");
/// Last time each cluster's agent was seen (Unix seconds): written often, so kept small.
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// cluster → its last signed assignment (kept when the cluster is removed, so a cluster
/// registered again under the name continues its sequence).
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
/// channel → its rollout (the generation being rolled out, the step, the pins given).
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("store {path}: {message}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A blob could not be written or read.
    #[error("blob {path}: {source}")]
    Blob {
        /// The blob file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record does not decode (written by an incompatible version?).
    #[error("store record {key}: {message}")]
    Corrupt {
        /// Which record.
        key: String,
        /// The decoder's message.
        message: String,
    },
}

/// The last failed build of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildFailure {
    /// The commit that failed.
    pub commit: String,
    /// What failed (file, document, line, message).
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// A channel's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelRecord {
    /// Current generation (0: nothing built yet).
    pub generation: u64,
    /// Current bundle.
    pub sha256: Option<Sha256Digest>,
    /// Its size.
    pub size: u64,
    /// The commit the current bundle was built from.
    pub commit: Option<String>,
    /// The signed statement of the current bundle.
    pub envelope: Option<Envelope>,
    /// What the current bundle was built from (commit and render settings); the same input
    /// never makes a second generation.
    pub built_from: Option<String>,
    /// Digest of the current bundle's rendered content (file list and default namespace):
    /// a newer commit that renders to the same content keeps the current generation.
    #[serde(default)]
    pub content: Option<Sha256Digest>,
    /// The newest commit seen on the branch (may render to the current bundle unchanged).
    pub last_seen_commit: Option<String>,
    /// The last build failure, cleared by the next success.
    pub last_error: Option<BuildFailure>,
    /// When the current bundle was built.
    pub updated: Option<Timestamp>,
    /// Earlier generations still served to clusters pinned below the current one (newest
    /// first, at most [`PREVIOUS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<Served>,
    /// A newer generation built and signed by the hub that the trust root wants more
    /// signatures on (two-person rule): served once `skiff-hub sign` adds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingBuild>,
}

/// A generation waiting for signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingBuild {
    /// Its generation.
    pub generation: u64,
    /// Bundle digest (the blob is stored).
    pub sha256: Sha256Digest,
    /// Bundle size.
    pub size: u64,
    /// Source commit.
    pub commit: Option<String>,
    /// Its statement with the signatures so far.
    pub envelope: Envelope,
    /// Digest of its rendered content.
    pub content: Option<Sha256Digest>,
    /// When it was built.
    pub built: Timestamp,
}

/// Earlier generations a channel keeps serving to pinned clusters.
pub const PREVIOUS_KEPT: usize = 16;

/// One generation of a channel as served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    /// Generation.
    pub generation: u64,
    /// Bundle digest.
    pub sha256: Sha256Digest,
    /// Bundle size.
    pub size: u64,
    /// Source commit.
    pub commit: Option<String>,
    /// Signed statement.
    pub envelope: Envelope,
}

impl ChannelRecord {
    /// The current generation as served, if one was built.
    pub fn served(&self) -> Option<Served> {
        Some(Served {
            generation: self.generation,
            sha256: self.sha256?,
            size: self.size,
            commit: self.commit.clone(),
            envelope: self.envelope.clone()?,
        })
    }

    /// The newest generation at or below `pin` (any, without a pin) the hub still holds.
    pub fn served_at_most(&self, pin: Option<u64>) -> Option<Served> {
        let current = self.served()?;
        match pin {
            Some(p) if current.generation > p => self.previous.iter().find(|s| s.generation <= p).cloned(),
            _ => Some(current),
        }
    }

    /// The generation [`Self::served_at_most`] serves, without copying it.
    pub fn generation_at_most(&self, pin: Option<u64>) -> Option<u64> {
        self.sha256?;
        match pin {
            Some(p) if self.generation > p => self
                .previous
                .iter()
                .find(|s| s.generation <= p)
                .map(|s| s.generation),
            _ => Some(self.generation),
        }
    }

    /// Moves the current generation into `previous` (before a new one replaces it).
    pub fn keep_current(&mut self) {
        if let Some(s) = self.served() {
            self.previous.insert(0, s);
            self.previous.truncate(PREVIOUS_KEPT);
        }
    }
}

/// A cluster's last signed assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentRecord {
    /// Its sequence.
    pub sequence: u64,
    /// Digest of what it says apart from sequence and times: the same content is never
    /// signed twice.
    pub content: Sha256Digest,
    /// The channels it assigns.
    pub channels: Vec<String>,
    /// When it was signed.
    pub issued: Timestamp,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// The signed envelope.
    pub envelope: Envelope,
}

/// A registered cluster: the small record written when an admin changes it. Reports,
/// report bookkeeping and last-seen times live in tables of their own, so an agent's
/// traffic never rewrites it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    /// Name.
    pub name: String,
    /// Hex SHA-256 of its bearer token (the token itself is never stored).
    pub token_hash: String,
    /// Labels channels select on.
    pub labels: BTreeMap<String, String>,
    /// Values for every channel of this cluster (`cluster set-values`): the most specific.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// Values for one channel of this cluster (`cluster set-values --channel`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channel_values: BTreeMap<String, BTreeMap<String, String>>,
    /// Highest generation per channel this cluster may run (`cluster pin`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, u64>,
    /// An emergency override of the cluster's maintenance windows: until then, newer
    /// generations apply at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_now_until: Option<Timestamp>,
    /// When registered.
    pub created: Timestamp,
    /// Last request from its agent (kept in its own table; read from records written by
    /// older hubs).
    #[serde(default, skip_serializing)]
    pub last_seen: Option<Timestamp>,
    /// Latest report per channel, as older hubs wrote it inside the record (moved to its
    /// own table on load).
    #[serde(default, skip_serializing)]
    pub legacy_reports: BTreeMap<String, Report>,
}

/// Report bookkeeping of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportMeta {
    /// Highest sequence stored per agent store instance, most recent first (a few kept:
    /// an agent whose store was wiped starts a new instance).
    pub instances: Vec<(String, u64)>,
    /// Reports ever stored (the key of the next one in the history).
    pub stored: u64,
    /// Bytes of history kept.
    pub bytes: u64,
    /// The highest generation each channel applied successfully (the last good state,
    /// still shown when a newer generation fails).
    #[serde(default)]
    pub applied: BTreeMap<String, u64>,
}

/// How much report history a cluster keeps.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimit {
    /// Reports.
    pub count: usize,
    /// Bytes.
    pub bytes: u64,
}

/// The hub's store.
pub struct Store {
    db: Database,
    path: PathBuf,
    blobs: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let blobs = data_dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|source| StoreError::Blob {
            path: blobs.clone(),
            source,
        })?;
        let path = data_dir.join("hub.redb");
        let db = Database::create(&path).map_err(|e| StoreError::Db {
            path: path.clone(),
            message: match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    "already open by another process: is another hub running with this data_dir?".to_owned()
                }
                other => other.to_string(),
            },
        })?;
        let store = Self { db, path, blobs };
        store.write(|txn| {
            txn.open_table(CHANNELS)?;
            txn.open_table(CLUSTERS)?;
            txn.open_table(REPORTS)?;
            txn.open_table(LATEST)?;
            txn.open_table(REPORT_META)?;
            txn.open_table(SEEN)?;
            txn.open_table(ASSIGNMENTS)?;
            txn.open_table(ROLLOUTS)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        f(&txn).map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))
    }

    fn load<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<BTreeMap<String, T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(table).map_err(|e| self.db_err(e))?;
        let mut out = BTreeMap::new();
        for entry in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let value = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                key: format!("{}/{}", table.name(), k.value()),
                message: e.to_string(),
            })?;
            out.insert(k.value().to_owned(), value);
        }
        Ok(out)
    }

    /// Every channel record.
    pub fn channels(&self) -> Result<BTreeMap<String, ChannelRecord>, StoreError> {
        self.load(CHANNELS)
    }

    /// Every cluster record, with its last-seen time.
    pub fn clusters(&self) -> Result<BTreeMap<String, ClusterRecord>, StoreError> {
        let mut clusters: BTreeMap<String, ClusterRecord> = self.load(CLUSTERS)?;
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let seen = txn.open_table(SEEN).map_err(|e| self.db_err(e))?;
        for entry in seen.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            if let Some(c) = clusters.get_mut(k.value()) {
                c.last_seen = Some(Timestamp::from_unix_seconds(v.value()));
            }
        }
        Ok(clusters)
    }

    /// Every cluster's report bookkeeping.
    pub fn report_meta(&self) -> Result<BTreeMap<String, ReportMeta>, StoreError> {
        self.load(REPORT_META)
    }

    /// The latest report per channel of every cluster.
    pub fn all_latest(&self) -> Result<BTreeMap<String, BTreeMap<String, Report>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(LATEST).map_err(|e| self.db_err(e))?;
        let mut out: BTreeMap<String, BTreeMap<String, Report>> = BTreeMap::new();
        for entry in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let (cluster, channel) = k.value();
            let report = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                key: format!("latest_reports/{cluster}/{channel}"),
                message: e.to_string(),
            })?;
            out.entry(cluster.to_owned())
                .or_default()
                .insert(channel.to_owned(), report);
        }
        Ok(out)
    }

    /// The latest report per channel of one cluster.
    pub fn latest(&self, cluster: &str) -> Result<BTreeMap<String, Report>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(LATEST).map_err(|e| self.db_err(e))?;
        let mut out = BTreeMap::new();
        for entry in t.range((cluster, "")..).map_err(|e| self.db_err(e))? {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let (c, channel) = k.value();
            if c != cluster {
                break;
            }
            let report = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                key: format!("latest_reports/{cluster}/{channel}"),
                message: e.to_string(),
            })?;
            out.insert(channel.to_owned(), report);
        }
        Ok(out)
    }

    /// Records when clusters were last seen: one small entry each.
    pub fn put_seen(&self, seen: &[(String, Timestamp)]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(SEEN)?;
            for (name, at) in seen {
                t.insert(name.as_str(), at.unix_seconds())?;
            }
            Ok(())
        })
    }

    /// Every cluster's last signed assignment.
    pub fn assignments(&self) -> Result<BTreeMap<String, AssignmentRecord>, StoreError> {
        self.load(ASSIGNMENTS)
    }

    /// Writes signed assignments in one transaction.
    pub fn put_assignments(&self, records: &[(String, AssignmentRecord)]) -> Result<(), StoreError> {
        let encoded: Vec<(&str, Vec<u8>)> = records
            .iter()
            .map(|(name, r)| (name.as_str(), serde_json::to_vec(r).expect("serializes")))
            .collect();
        self.write(|txn| {
            let mut t = txn.open_table(ASSIGNMENTS)?;
            for (name, bytes) in &encoded {
                t.insert(*name, bytes.as_slice())?;
            }
            Ok(())
        })
    }

    /// Every channel's rollout.
    pub fn rollouts(&self) -> Result<BTreeMap<String, crate::rollout::Rollout>, StoreError> {
        self.load(ROLLOUTS)
    }

    /// Writes a channel's rollout.
    pub fn put_rollout(&self, channel: &str, rollout: &crate::rollout::Rollout) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rollout).expect("serializes");
        self.write(|txn| {
            txn.open_table(ROLLOUTS)?.insert(channel, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Writes a channel record.
    pub fn put_channel(&self, name: &str, record: &ChannelRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("serializes");
        self.write(|txn| {
            txn.open_table(CHANNELS)?.insert(name, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Writes cluster records in one transaction.
    pub fn put_clusters<'a>(
        &self,
        records: impl IntoIterator<Item = &'a ClusterRecord>,
    ) -> Result<(), StoreError> {
        let encoded: Vec<(String, Vec<u8>)> = records
            .into_iter()
            .map(|r| (r.name.clone(), serde_json::to_vec(r).expect("serializes")))
            .collect();
        self.write(|txn| {
            let mut t = txn.open_table(CLUSTERS)?;
            for (name, bytes) in &encoded {
                t.insert(name.as_str(), bytes.as_slice())?;
            }
            Ok(())
        })
    }

    /// Removes a cluster and its report history.
    pub fn remove_cluster(&self, name: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(CLUSTERS)?.remove(name)?;
            txn.open_table(SEEN)?.remove(name)?;
            txn.open_table(REPORT_META)?.remove(name)?;
            let mut latest = txn.open_table(LATEST)?;
            let channels: Vec<String> = latest
                .range((name, "")..)?
                .map(|e| e.map(|(k, _)| (k.value().0.to_owned(), k.value().1.to_owned())))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .take_while(|(c, _)| c == name)
                .map(|(_, ch)| ch)
                .collect();
            for ch in channels {
                latest.remove((name, ch.as_str()))?;
            }
            let mut reports = txn.open_table(REPORTS)?;
            let keys: Vec<u64> = reports
                .range((name, 0)..=(name, u64::MAX))?
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for k in keys {
                reports.remove((name, k))?;
            }
            Ok(())
        })
    }

    /// Stores new reports of a cluster (already encoded, keyed from `meta.stored` on), the
    /// channels' latest reports that changed, and the bookkeeping, in one transaction; old
    /// history goes until both caps of `keep` hold. Returns the bookkeeping as stored.
    pub fn add_reports(
        &self,
        cluster: &str,
        mut meta: ReportMeta,
        reports: &[Vec<u8>],
        latest: &[(String, Vec<u8>)],
        keep: HistoryLimit,
    ) -> Result<ReportMeta, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(REPORTS)?;
            for bytes in reports {
                t.insert((cluster, meta.stored), bytes.as_slice())?;
                meta.stored += 1;
                meta.bytes += bytes.len() as u64;
            }
            // Oldest first, until the count and the bytes are within the caps.
            let mut count = t.range((cluster, 0)..=(cluster, u64::MAX))?.count() as u64;
            let mut victims = Vec::new();
            if count > keep.count as u64 || meta.bytes > keep.bytes {
                for entry in t.range((cluster, 0)..=(cluster, u64::MAX))? {
                    if count <= keep.count as u64 && meta.bytes <= keep.bytes {
                        break;
                    }
                    let (k, v) = entry?;
                    victims.push(k.value().1);
                    meta.bytes = meta.bytes.saturating_sub(v.value().len() as u64);
                    count -= 1;
                }
            }
            for k in victims {
                t.remove((cluster, k))?;
            }
            let mut l = txn.open_table(LATEST)?;
            for (channel, bytes) in latest {
                l.insert((cluster, channel.as_str()), bytes.as_slice())?;
            }
            let encoded = serde_json::to_vec(&meta).expect("serializes");
            txn.open_table(REPORT_META)?.insert(cluster, encoded.as_slice())?;
            Ok(())
        })?;
        Ok(meta)
    }

    /// The newest `limit` reports of a cluster, oldest first.
    pub fn history(&self, cluster: &str, limit: usize) -> Result<Vec<Report>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(REPORTS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in t
            .range((cluster, 0)..=(cluster, u64::MAX))
            .map_err(|e| self.db_err(e))?
            .rev()
            .take(limit)
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    key: format!("reports/{cluster}/{}", k.value().1),
                    message: e.to_string(),
                })?,
            );
        }
        out.reverse();
        Ok(out)
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.blobs.join(digest.to_string())
    }

    /// Writes a blob (temporary file, fsync, rename, fsync of the folder). Idempotent.
    pub fn put_blob(&self, digest: &Sha256Digest, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(digest);
        let err = |source| StoreError::Blob {
            path: path.clone(),
            source,
        };
        if path.exists()
            && std::fs::metadata(&path)
                .map(|m| m.len() == bytes.len() as u64)
                .unwrap_or(false)
        {
            return Ok(path);
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&self.blobs).map_err(err)?;
        tmp.write_all(bytes).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        std::fs::File::open(&self.blobs)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(path)
    }

    /// Reads a whole blob.
    pub fn read_blob(&self, digest: &Sha256Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        std::fs::read(&path).map_err(|source| StoreError::Blob { path, source })
    }
}
