//! Whom the agent trusts: the newest trust root it has walked to (`FORMAT.md` §9), from the
//! root it was installed with, the hub, or its import folder; or, before roots, the keys
//! in its config (which may vouch for the first root: the migration path). The newest root
//! is kept in the store, so it is never lost or rolled back across restarts.

use std::sync::Arc;

use skiff_proto::dsse::Envelope;
use skiff_proto::root::{self, Root, RootError};
use skiff_proto::verify::TrustSet;
use tracing::{info, warn};

use super::Agent;
use crate::config::AgentConfig;
use crate::store::Store;

/// Reads a root envelope file within its cap.
pub fn read_root_file(path: &std::path::Path) -> anyhow::Result<Envelope> {
    let len = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        .len();
    if len > root::limits::MAX_ENVELOPE_BYTES as u64 {
        anyhow::bail!(
            "{}: {len} bytes, more than a root may be ({})",
            path.display(),
            root::limits::MAX_ENVELOPE_BYTES
        );
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    root::read_envelope(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The trust the agent starts with: the newer of the configured root and the stored one,
/// else the configured keys.
pub fn initial(config: &AgentConfig, store: &Store) -> anyhow::Result<TrustSet> {
    let configured = match &config.trust_root {
        Some(path) => {
            let e = read_root_file(path)?;
            Some(
                root::verify_initial(&e)
                    .map_err(|err| anyhow::anyhow!("trust_root {}: {err}", path.display()))?,
            )
        }
        None => None,
    };
    let stored = match store.root()? {
        Some(bytes) => {
            let e = root::read_envelope(&bytes).map_err(|err| anyhow::anyhow!("stored trust root: {err}"))?;
            Some(root::verify_initial(&e).map_err(|err| anyhow::anyhow!("stored trust root: {err}"))?)
        }
        None => None,
    };
    let newest = match (configured, stored) {
        (Some(c), Some(s)) if s.version >= c.version => Some(s),
        (Some(c), _) => {
            if let Some(path) = &config.trust_root {
                store.put_root(&read_root_file(path)?.to_json())?;
            }
            Some(c)
        }
        (None, s) => s,
    };
    if let Some(r) = newest {
        return Ok(TrustSet::from_root(r));
    }
    legacy(config)
}

fn legacy(config: &AgentConfig) -> anyhow::Result<TrustSet> {
    let keys = config
        .trusted_keys
        .iter()
        .map(|p| skiff_proto::keys::PublicKey::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrustSet::new(keys, config.threshold)?)
}

/// The first root an agent without one takes: well-formed, signed by a threshold of its
/// own root keys, and by a threshold of the keys the agent trusted so far (they vouch for
/// it). Of several, the newest such.
pub fn first_root(keys: &TrustSet, chain: &[Envelope]) -> Option<(Root, Envelope)> {
    chain
        .iter()
        .filter_map(|e| {
            let r = root::verify_initial(e).ok()?;
            keys.vouches_for(e).then(|| (r, e.clone()))
        })
        .max_by_key(|(r, _)| r.version)
}

impl Agent {
    /// The trust in effect.
    pub fn trust(&self) -> Arc<TrustSet> {
        self.trust.read().expect("trust").clone()
    }

    /// The version of the trust root in effect (None: configured keys).
    pub fn root_version(&self) -> Option<u64> {
        self.trust().root().map(|r| r.version)
    }

    /// Walks to the newest root `chain` allows from the one in effect (or, on configured
    /// keys, takes the first root they vouch for, then walks); keeps it. Returns the new
    /// version, or None when nothing newer was there. A root that fails stops the walk: the
    /// trust in effect stays.
    pub fn take_roots(&self, source: &str, chain: &[Envelope]) -> Result<Option<u64>, RootError> {
        let trust = self.trust();
        let (start, mut newest) = match trust.root() {
            Some(r) => (r.clone(), None),
            None => match first_root(&trust, chain) {
                Some((r, e)) => {
                    info!(
                        version = r.version,
                        source,
                        "First trust root, vouched for by the configured keys: from now on the root decides whom to trust"
                    );
                    (r.clone(), Some((r, e)))
                }
                None => return Ok(None),
            },
        };
        let walked = root::walk(&start, chain);
        if let Some(taken) = walked.as_ref().ok().and_then(|t| t.last().cloned()) {
            newest = Some(taken);
        }
        if let Some((r, e)) = newest {
            if let Err(error) = self.store.put_root(&e.to_json()) {
                warn!(%error, "Keeping the new trust root failed; it is taken for this run");
            }
            info!(version = r.version, expires = %r.expires, source, "Trust root updated");
            let version = r.version;
            *self.trust.write().expect("trust") = Arc::new(TrustSet::from_root(r));
            self.snapshot_soon();
            walked?;
            return Ok(Some(version));
        }
        walked.map(|_| None)
    }

    /// Fetches and walks the roots the hub has beyond the one in effect, when the newest it
    /// names is newer.
    pub(super) async fn follow_hub_roots(&self, newest: &Envelope) {
        let Some(hub) = &self.hub else { return };
        let offered = root::peek_version(newest).unwrap_or(0);
        let current = self.root_version();
        if current.is_some_and(|c| offered <= c) {
            return;
        }
        let mut after = current.unwrap_or(0);
        // Bounded: each answer carries up to a page; a chain longer than the walk's cap is
        // finished on the next poll.
        for _ in 0..(root::limits::MAX_WALK / skiff_proto::api::limits::MAX_ROOTS_PER_ANSWER + 1) {
            let chain = match hub.roots_after(after).await {
                Ok(c) => c,
                Err(error) => {
                    warn!(%error, "Fetching the hub's trust roots failed; keeping the root in effect");
                    return;
                }
            };
            if chain.is_empty() {
                return;
            }
            match self.take_roots("hub", &chain) {
                Ok(Some(v)) if v < offered => after = v,
                Ok(_) => return,
                Err(error) => {
                    warn!(%error, "Trust root from the hub refused; keeping the root in effect");
                    return;
                }
            }
        }
    }

    /// Walks the roots in the import folder (`*.root.json`, e.g. from `skiff-hub export`),
    /// when they changed since the last look.
    pub(super) fn import_roots(&self, dir: &std::path::Path) {
        let files = crate::source::scan_root_files(dir);
        {
            let mut seen = self.root_files.lock().expect("root files");
            if *seen == files {
                return;
            }
            seen.clone_from(&files);
        }
        let chain: Vec<Envelope> = files
            .iter()
            .filter_map(|(path, _)| match read_root_file(path) {
                Ok(e) => Some(e),
                Err(error) => {
                    warn!(%error, "Trust root file skipped");
                    None
                }
            })
            .collect();
        if let Err(error) = self.take_roots("import folder", &chain) {
            warn!(%error, "Trust root from the import folder refused; keeping the root in effect");
        }
    }
}
