//! The `dir` target: each object becomes `PATH/<channel>/<namespace or _cluster>/<kind>.<name>.yaml`
//! (JSON, which every YAML reader reads the same way), written atomically; files of objects
//! the bundle no longer has are removed. Pointed at k3s's auto-deploy folder it deploys on
//! a k3s server without API credentials; anywhere else it is the zero-dependency way to
//! try skiff.

use std::io::Write;
use std::path::{Path, PathBuf};

use skiff_proto::api::{Drift, ObjectError, ObjectRef};

use super::{Checked, Desired, Outcome, prune_set, split_duplicates};

/// The `dir` applier.
#[derive(Clone, Debug)]
pub struct DirApplier {
    root: PathBuf,
}

impl DirApplier {
    /// Writes under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The file an object lives in.
    pub fn path_of(&self, channel: &str, id: &ObjectRef) -> PathBuf {
        let scope = id.namespace.as_deref().unwrap_or("_cluster");
        self.root
            .join(channel)
            .join(scope)
            .join(format!("{}.{}.yaml", id.kind.to_lowercase(), id.name))
    }

    fn text(o: &Desired) -> String {
        let mut text = serde_json::to_string_pretty(&o.value).expect("serializes");
        text.push('\n');
        text
    }

    /// Compares each object's file with what skiff wrote; rewrites drifted ones when
    /// `heal` allows. Files carry no status, so every object counts as healthy.
    pub fn check(&self, channel: &str, objects: &[Desired], heal: bool) -> Checked {
        let mut checked = Checked::default();
        let (objects, _duplicates) = split_duplicates(objects.to_vec());
        for o in &objects {
            let path = self.path_of(channel, &o.id);
            let want = Self::text(o);
            let kind = match std::fs::read(&path) {
                Err(_) => Some("missing"),
                Ok(b) if b != want.as_bytes() => Some("modified"),
                Ok(_) => None,
            };
            checked.health.push((o.id.clone(), "Healthy", None));
            let Some(kind) = kind else { continue };
            let heal = heal && !crate::drift::self_heal_disabled(&o.value);
            let corrected = heal && write_atomic(&path, want.as_bytes()).is_ok();
            checked.drift.push(Drift {
                object: o.id.clone(),
                kind: kind.to_owned(),
                paths: vec![skiff_proto::api::DriftPath {
                    path: path.display().to_string(),
                    desired: None,
                    live: None,
                }],
                corrected,
            });
        }
        checked
    }

    /// Writes every object, then removes what `previous` had and `objects` lack.
    pub fn apply(&self, channel: &str, objects: &[Desired], previous: &[ObjectRef]) -> Outcome {
        let mut outcome = Outcome::default();
        let (objects, duplicates) = split_duplicates(objects.to_vec());
        for o in &objects {
            let path = self.path_of(channel, &o.id);
            match write_atomic(&path, Self::text(o).as_bytes()) {
                Ok(()) => outcome.applied.push(o.id.clone()),
                Err(e) => outcome.errors.push(ObjectError {
                    object: o.id.clone(),
                    message: format!("writing {}: {e}", path.display()),
                }),
            }
        }
        outcome.errors.extend(duplicates);
        if outcome.errors.is_empty() {
            for gone in prune_set(previous, &outcome.applied) {
                let path = self.path_of(channel, &gone);
                let keep = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|v| !super::prunable(&v));
                if !keep && std::fs::remove_file(&path).is_ok() {
                    outcome.pruned.push(gone);
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::remove_dir(dir); // only if empty
                    }
                }
            }
        }
        outcome
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("object files live in a folder");
    std::fs::create_dir_all(dir)?;
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(()); // unchanged: no write, no mtime bump for watchers like k3s
    }
    let mut tmp = tempfile::Builder::new().prefix(".skiff-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
