//! The `dir` target: each object becomes `PATH/<channel>/<namespace or _cluster>/<kind>.<name>.yaml`
//! (JSON, which every YAML reader reads the same way), written atomically; files of objects
//! the bundle no longer has are removed. Pointed at k3s's auto-deploy folder it deploys on
//! a k3s server without API credentials; anywhere else it is the zero-dependency way to
//! try skiff.

use std::io::Write;
use std::path::{Path, PathBuf};

use skiff_proto::api::{Drift, ObjectError, ObjectRef};

use skiff_proto::bundle::BundleFiles;
use skiff_proto::manifest::Budget;

use super::{
    Checked, Desired, Outcome, Values, builtin_cluster_scoped, duplicate_errors, file_objects, prune_set,
};

/// Prefix of the temporary files writes go through.
const TEMP_PREFIX: &str = ".skiff-";

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

    /// The file an object lives in, `PATH/<channel>/<namespace or _cluster>/<kind>.<name>.yaml`;
    /// an error for any object whose file would not stay beneath `PATH/<channel>/` (the
    /// parser refuses such names already; this holds whatever reaches it).
    pub fn path_of(&self, channel: &str, id: &ObjectRef) -> Result<PathBuf, String> {
        let scope = id.namespace.as_deref().unwrap_or("_cluster");
        let file = format!("{}.{}.yaml", id.kind.to_lowercase(), id.name);
        let rel = format!("{channel}/{scope}/{file}");
        let single = |part: &str| !part.is_empty() && !part.contains('/') && part != "." && part != "..";
        if !(single(channel) && single(scope) && single(&file))
            || skiff_proto::bundle::check_path(&rel).is_err()
        {
            return Err(format!(
                "{id}: its file {rel:?} would not stay beneath {}/{channel}/",
                self.root.display()
            ));
        }
        Ok(self.root.join(rel))
    }

    /// Removes temporary files an interrupted write left beneath the target.
    pub fn remove_temp_files(&self) {
        fn walk(dir: &Path, depth: usize) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(kind) = e.file_type() else { continue };
                if kind.is_dir() && depth < 3 {
                    walk(&e.path(), depth + 1);
                } else if kind.is_file() && e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        walk(&self.root, 0);
    }

    fn text(o: &Desired) -> String {
        let mut text = serde_json::to_string_pretty(&o.value).expect("serializes");
        text.push('\n');
        text
    }

    /// Reads a bundle's objects file by file, calling `each` with one file's objects at a
    /// time (a first pass has found objects defined twice: those are skipped and returned
    /// as errors). Memory: one file's objects, not the bundle's.
    fn each_object(
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
        mut each: impl FnMut(Desired),
    ) -> Result<Vec<ObjectError>, Outcome> {
        let namespaced = |api: &str, kind: &str| !builtin_cluster_scoped(api, kind);
        let manifest = bundle.manifest();
        let mut ids = Vec::new();
        let mut unreadable = Vec::new();
        let mut budget = Budget::for_bundle(manifest.total_size);
        bundle
            .each_file(&|_| true, &mut |_, file| match file_objects(
                manifest,
                file,
                channel,
                values,
                &namespaced,
                &mut budget,
            ) {
                Ok(objs) => ids.extend(objs.into_iter().map(|o| (o.id, o.origin))),
                Err(e) => unreadable.push(e),
            })
            .map_err(|e| super::unreadable_stored(&e))?;
        if !unreadable.is_empty() {
            return Err(super::unreadable(unreadable));
        }
        let duplicates = duplicate_errors(&ids);
        drop(ids);
        let mut budget = Budget::for_bundle(manifest.total_size);
        let mut failed = None;
        bundle
            .each_file(&|_| true, &mut |_, file| {
                if failed.is_some() {
                    return;
                }
                match file_objects(manifest, file, channel, values, &namespaced, &mut budget) {
                    Ok(objs) => {
                        for o in objs {
                            if !duplicates.contains_key(&o.id) {
                                each(o);
                            }
                        }
                    }
                    Err(e) => failed = Some(e),
                }
            })
            .map_err(|e| super::unreadable_stored(&e))?;
        if let Some(e) = failed {
            return Err(super::unreadable(vec![e]));
        }
        Ok(duplicates.into_values().collect())
    }

    /// Compares each object's file with what skiff wrote; rewrites drifted ones when
    /// `heal` allows. Nothing runs a file: an object is judged by the `status` its
    /// manifest carries, as the kube target judges the live one (none: healthy).
    pub fn check(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
        heal: bool,
    ) -> Checked {
        let mut checked = Checked::default();
        let mut expected = std::collections::BTreeSet::new();
        let result = Self::each_object(channel, values, bundle, |o| {
            let Ok(path) = self.path_of(channel, &o.id) else {
                return; // never applied either (see `apply`)
            };
            expected.insert(path.clone());
            let want = Self::text(&o);
            let mut live = None;
            let kind = match std::fs::read(&path) {
                Err(_) => Some("missing"),
                Ok(b) if b != want.as_bytes() => {
                    live = serde_json::from_slice::<serde_json::Value>(&b).ok();
                    Some("modified")
                }
                Ok(_) => None,
            };
            let (state, reason) = if o
                .value
                .get("status")
                .is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()))
            {
                crate::drift::object_health(&o.value)
            } else {
                ("Healthy", None)
            };
            checked.health.push((o.id.clone(), state, reason));
            let Some(kind) = kind else { return };
            let heal = heal && !crate::drift::self_heal_disabled(&o.value);
            let corrected = heal && write_atomic(&path, want.as_bytes()).is_ok();
            // An edited file that still parses: the JSON paths that differ, with their
            // values (Secret values never); else the file itself.
            let paths = match &live {
                Some(l) => crate::drift::diff(&o.value, l, &o.id.kind),
                None => Vec::new(),
            };
            let paths = if paths.is_empty() {
                vec![skiff_proto::api::DriftPath {
                    path: path.display().to_string(),
                    desired: None,
                    live: None,
                }]
            } else {
                paths
            };
            checked.drift.push(Drift {
                object: o.id.clone(),
                kind: kind.to_owned(),
                paths,
                corrected,
                reason: live.is_some().then(|| format!("file {}", path.display())),
            });
        });
        if let Err(outcome) = result {
            checked.errors = outcome.errors.iter().map(|e| e.message.clone()).collect();
        }
        checked.stray = self.stray_files(channel, &expected);
        checked
    }

    /// Files beneath `PATH/<channel>/` that no object of the bundle accounts for (at most
    /// 100 named): someone else writes there.
    fn stray_files(&self, channel: &str, expected: &std::collections::BTreeSet<PathBuf>) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(scopes) = std::fs::read_dir(self.root.join(channel)) else {
            return out;
        };
        for scope in scopes.flatten() {
            let files: Vec<PathBuf> = match std::fs::read_dir(scope.path()) {
                Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
                Err(_) => vec![scope.path()], // a file where a folder belongs
            };
            for f in files {
                let temp = f
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX));
                if !temp && !expected.contains(&f) && out.len() < 100 {
                    out.push(f.display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Writes every object of the bundle, file by file, then removes what `previous` had
    /// and the bundle lacks (only after every object was written).
    pub fn apply(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
        previous: &[ObjectRef],
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let result = Self::each_object(channel, values, bundle, |o| {
            let path = match self.path_of(channel, &o.id) {
                Ok(p) => p,
                Err(message) => {
                    outcome.errors.push(ObjectError {
                        object: o.id.clone(),
                        message,
                    });
                    return;
                }
            };
            match write_atomic(&path, Self::text(&o).as_bytes()) {
                Ok(()) => outcome.applied.push(o.id.clone()),
                Err(e) => outcome.errors.push(ObjectError {
                    object: o.id.clone(),
                    message: format!("writing {}: {e}", path.display()),
                }),
            }
        });
        match result {
            Ok(duplicates) => outcome.errors.extend(duplicates),
            Err(unreadable) => return unreadable,
        }
        if outcome.errors.is_empty() {
            for gone in prune_set(previous, &outcome.applied) {
                // Only files the inventory names beneath this channel's folder.
                let Ok(path) = self.path_of(channel, &gone) else {
                    continue;
                };
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
    let mut tmp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_files_stay_beneath_the_channel_folder() {
        let d = DirApplier::new(PathBuf::from("/srv/out"));
        let id = |ns: Option<&str>, kind: &str, name: &str| ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(str::to_owned),
            name: name.into(),
        };
        assert_eq!(
            d.path_of("demo", &id(Some("web"), "ConfigMap", "a")).unwrap(),
            PathBuf::from("/srv/out/demo/web/configmap.a.yaml")
        );
        for bad in [
            id(Some(".."), "ConfigMap", "a"),
            id(Some("../../etc"), "ConfigMap", "a"),
            id(None, "ConfigMap", "../../../x"),
            id(None, "a/../..", "b"),
        ] {
            assert!(d.path_of("demo", &bad).is_err(), "{bad}");
        }
    }
}
