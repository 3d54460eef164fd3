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
}

/// A registered cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    /// Name.
    pub name: String,
    /// Hex SHA-256 of its bearer token (the token itself is never stored).
    pub token_hash: String,
    /// Labels channels select on.
    pub labels: BTreeMap<String, String>,
    /// When registered.
    pub created: Timestamp,
    /// Last request from its agent.
    pub last_seen: Option<Timestamp>,
    /// The agent store instance whose sequence numbers `last_seq` counts.
    pub instance: Option<String>,
    /// Highest report sequence stored for `instance`.
    pub last_seq: u64,
    /// Latest report per channel.
    pub channels: BTreeMap<String, Report>,
    /// Number of reports ever stored (the key of the next one in the history).
    pub reports_stored: u64,
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
            message: e.to_string(),
        })?;
        let store = Self { db, path, blobs };
        store.write(|txn| {
            txn.open_table(CHANNELS)?;
            txn.open_table(CLUSTERS)?;
            txn.open_table(REPORTS)?;
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

    /// Every cluster record.
    pub fn clusters(&self) -> Result<BTreeMap<String, ClusterRecord>, StoreError> {
        self.load(CLUSTERS)
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

    /// Stores new reports of a cluster together with its updated record, keeping at most
    /// `keep` reports of history.
    pub fn add_reports(
        &self,
        cluster: &ClusterRecord,
        reports: &[(u64, Report)],
        keep: usize,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_vec(cluster).expect("serializes");
        let encoded: Vec<(u64, Vec<u8>)> = reports
            .iter()
            .map(|(k, r)| (*k, serde_json::to_vec(r).expect("serializes")))
            .collect();
        let name = cluster.name.as_str();
        let oldest_kept = cluster.reports_stored.saturating_sub(keep as u64);
        self.write(|txn| {
            txn.open_table(CLUSTERS)?.insert(name, record.as_slice())?;
            let mut t = txn.open_table(REPORTS)?;
            for (k, bytes) in &encoded {
                t.insert((name, *k), bytes.as_slice())?;
            }
            if oldest_kept > 0 {
                let old: Vec<u64> = t
                    .range((name, 0)..(name, oldest_kept))?
                    .map(|e| e.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()?;
                for k in old {
                    t.remove((name, k))?;
                }
            }
            Ok(())
        })
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
