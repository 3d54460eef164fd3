//! A bundle read in two passes: a scan that keeps each object's identity, wave and file
//! (and what the bundle's CRDs define), then batches of objects read again to apply or
//! compare, so a large bundle is never held parsed all at once.

use std::collections::BTreeMap;

use kube::discovery::Scope;
use serde_json::Value;
use skiff_proto::api::ObjectRef;
use skiff_proto::bundle::{BundleFiles, BundleManifest};
use skiff_proto::manifest::Budget;

use super::super::{Desired, Outcome, Values, duplicate_errors, file_objects, unreadable};
use super::KubeApplier;

/// Objects read from a bundle at a time, at most, and the most manifest text a batch's
/// files may hold (a batch's parsed objects are what an apply or check holds at once).
pub(super) const BATCH: usize = 1024;
pub(super) const BATCH_BYTES: usize = 4 << 20;

/// What a scan keeps of one object.
pub(super) struct Scan1 {
    pub(super) id: ObjectRef,
    pub(super) wave: i64,
    pub(super) file: usize,
    pub(super) origin: String,
}

/// What a scan keeps of a bundle.
#[derive(Default)]
pub(super) struct Scanned {
    pub(super) objects: Vec<Scan1>,
    /// Whether each (apiVersion, kind) is namespaced.
    scopes: BTreeMap<(String, String), bool>,
    /// The bundle's CRDs by name: what each defines.
    pub(super) crds: BTreeMap<String, Crd>,
    /// The objects themselves, kept from the scan of a bundle no larger than a batch
    /// ([`BATCH_BYTES`]): it is read once, not twice. Taken out before a scan is kept
    /// between checks ([`Self::take_kept`]).
    kept: Option<Vec<Desired>>,
}

/// What a CRD of the bundle defines.
pub(super) struct Crd {
    /// Group and kind.
    pub(super) group_kind: (String, String),
    /// Plural resource name.
    pub(super) plural: String,
    /// Its first served version.
    pub(super) version: String,
}

impl Scanned {
    fn note_crd(&mut self, o: &Desired) {
        let of = |p: &str| {
            o.value
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (group, kind) = (of("/spec/group"), of("/spec/names/kind"));
        let namespaced = of("/spec/scope") == "Namespaced";
        for v in o
            .value
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = v.get("name").and_then(Value::as_str) {
                self.scopes
                    .insert((format!("{group}/{name}"), kind.clone()), namespaced);
            }
        }
        let version = o
            .value
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|vs| vs.iter().find(|v| v["served"] == true))
            .and_then(|v| v["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        let plural = of("/spec/names/plural");
        self.crds.insert(
            o.id.name.clone(),
            Crd {
                group_kind: (group, kind),
                plural,
                version,
            },
        );
    }

    /// The objects kept from the scan, if it kept them; [`KubeApplier::load`] takes a
    /// batch's objects from them instead of reading the bundle again.
    pub(super) fn take_kept(&mut self) -> Option<Vec<Desired>> {
        self.kept.take()
    }

    pub(super) fn namespaced(&self, id: &ObjectRef) -> bool {
        self.scopes
            .get(&(id.api_version.clone(), id.kind.clone()))
            .copied()
            .unwrap_or(true)
    }

    /// The objects in batches, file by file: at most [`BATCH`] objects, and files of at
    /// most [`BATCH_BYTES`] together (a larger file is a batch of its own).
    pub(super) fn batches<'a>(objects: &[&'a Scan1], manifest: &BundleManifest) -> Vec<Vec<&'a Scan1>> {
        let mut sorted: Vec<&Scan1> = objects.to_vec();
        sorted.sort_by_key(|o| o.file);
        let mut out: Vec<Vec<&Scan1>> = Vec::new();
        let (mut bytes, mut last_file) = (0usize, None);
        for o in sorted {
            let size = manifest.files.get(o.file).map_or(0, |f| f.size as usize);
            let new_file = last_file != Some(o.file);
            let full = out.last().is_none_or(|b| {
                b.len() >= BATCH || (new_file && bytes + size > BATCH_BYTES && !b.is_empty())
            });
            if full {
                out.push(Vec::new());
                bytes = 0;
            }
            if new_file || full {
                bytes += size;
            }
            last_file = Some(o.file);
            out.last_mut().expect("a batch").push(o);
        }
        out
    }
}

/// A scan's objects, those defined more than once left out (their apply reports them).
pub(super) fn unique(scanned: &Scanned) -> Vec<&Scan1> {
    let ids: Vec<(ObjectRef, String)> = scanned
        .objects
        .iter()
        .map(|o| (o.id.clone(), o.origin.clone()))
        .collect();
    let twice = duplicate_errors(&ids);
    scanned
        .objects
        .iter()
        .filter(|o| !twice.contains_key(&o.id))
        .collect()
}

impl KubeApplier {
    /// A first pass over a bundle: every file parsed (values substituted), every object's
    /// identity, wave and file kept, its content dropped; kinds scoped through the bundle's
    /// own CRDs or discovery. What an apply or check then needs of the objects is read
    /// again a batch of files at a time ([`Self::load`]), so a large bundle is never held
    /// parsed all at once.
    pub(super) async fn scan(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
    ) -> Result<Scanned, Outcome> {
        let manifest = bundle.manifest();
        let mut budget = Budget::for_bundle(manifest.total_size);
        let mut scanned = Scanned::default();
        let keep = manifest.total_size <= BATCH_BYTES as u64;
        let mut kept = Vec::new();
        let mut errors = Vec::new();
        bundle
            .each_file(&|_| true, &mut |file, f| match file_objects(
                manifest,
                f,
                channel,
                values,
                &|_, _| true,
                &mut budget,
            ) {
                Ok(objs) => {
                    for o in objs {
                        if o.id.kind == "CustomResourceDefinition" {
                            scanned.note_crd(&o);
                        }
                        scanned.objects.push(Scan1 {
                            id: o.id.clone(),
                            wave: o.wave,
                            file,
                            origin: o.origin.clone(),
                        });
                        if keep {
                            kept.push(o);
                        }
                    }
                }
                Err(e) => errors.push(e),
            })
            .map_err(|e| super::super::unreadable_stored(&e))?;
        if !errors.is_empty() {
            return Err(unreadable(errors));
        }
        let kinds: std::collections::BTreeSet<(String, String)> = scanned
            .objects
            .iter()
            .map(|o| (o.id.api_version.clone(), o.id.kind.clone()))
            .collect();
        for key in kinds {
            if scanned.scopes.contains_key(&key) {
                continue;
            }
            if let Ok((_, caps)) = self.resolve(&key.0, &key.1).await {
                scanned.scopes.insert(key, caps.scope == Scope::Namespaced);
            }
        }
        // Parsed as if every kind were namespaced; cluster-scoped ones lose the namespace
        // now that discovery has said which they are.
        let mut objects = std::mem::take(&mut scanned.objects);
        for o in &mut objects {
            if !scanned.namespaced(&o.id) {
                o.id.namespace = None;
            }
        }
        scanned.objects = objects;
        if keep {
            for o in &mut kept {
                if !scanned.namespaced(&o.id) {
                    super::super::make_cluster_scoped(o);
                }
            }
            scanned.kept = Some(kept);
        }
        Ok(scanned)
    }

    /// The objects of `batch` (from a scan of the same bundle): taken from those the scan
    /// `kept` ([`Scanned::take_kept`]), else read again from their files.
    pub(super) fn load(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
        (scanned, kept): (&Scanned, &mut Option<Vec<Desired>>),
        batch: &[&Scan1],
    ) -> Result<Vec<Desired>, Outcome> {
        let wanted: std::collections::BTreeSet<&ObjectRef> = batch.iter().map(|o| &o.id).collect();
        if let Some(kept) = kept {
            return Ok(kept.extract_if(.., |o| wanted.contains(&o.id)).collect());
        }
        let files: std::collections::BTreeSet<usize> = batch.iter().map(|o| o.file).collect();
        let manifest = bundle.manifest();
        let mut budget = Budget::for_bundle(manifest.total_size);
        let mut out = Vec::with_capacity(batch.len());
        bundle
            .each_file(&|i| files.contains(&i), &mut |_, f| {
                // The scan read this file: it reads the same way again.
                let Ok(objs) = file_objects(manifest, f, channel, values, &|_, _| true, &mut budget) else {
                    return;
                };
                for mut o in objs {
                    if !scanned.namespaced(&o.id) {
                        super::super::make_cluster_scoped(&mut o);
                    }
                    if wanted.contains(&o.id) {
                        out.push(o);
                    }
                }
            })
            .map_err(|e| super::super::unreadable_stored(&e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn batches_keep_to_their_object_and_byte_budgets() {
        use super::{BATCH, BATCH_BYTES, BundleManifest, ObjectRef, Scan1, Scanned};
        use skiff_proto::bundle::{FORMAT_VERSION, FileEntry, Source};
        let sizes = [3 << 20, 3 << 20, 100, 100, 5 << 20];
        let manifest = BundleManifest {
            format_version: FORMAT_VERSION,
            channel: "c".into(),
            source: Source::default(),
            default_namespace: None,
            files: sizes
                .iter()
                .enumerate()
                .map(|(i, n)| FileEntry {
                    path: format!("f{i}.yaml"),
                    sha256: skiff_proto::Sha256Digest::of(b""),
                    size: *n as u64,
                })
                .collect(),
            total_size: sizes.iter().sum::<usize>() as u64,
        };
        let scan = |file: usize, n: usize| Scan1 {
            id: ObjectRef {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some("ns".into()),
                name: format!("o-{file}-{n}"),
            },
            wave: 0,
            file,
            origin: String::new(),
        };
        // Two objects in each of the first two files, 1,500 small ones, one in the largest.
        let mut objects = vec![scan(0, 0), scan(0, 1), scan(1, 0), scan(1, 1), scan(4, 0)];
        objects.extend((0..1_500).map(|n| scan(2 + n % 2, n)));
        let refs: Vec<&Scan1> = objects.iter().collect();
        let batches = Scanned::batches(&refs, &manifest);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), objects.len());
        assert!(batches.iter().all(|b| b.len() <= BATCH));
        for b in &batches {
            let files: std::collections::BTreeSet<usize> = b.iter().map(|o| o.file).collect();
            let bytes: usize = files.iter().map(|f| sizes[*f]).sum();
            assert!(bytes <= BATCH_BYTES || files.len() == 1, "{files:?}: {bytes}");
        }
        // A file's objects are never split from the file they share a batch with badly:
        // file 0's two objects are together.
        assert!(
            batches
                .iter()
                .any(|b| b.iter().filter(|o| o.file == 0).count() == 2)
        );
    }
}
