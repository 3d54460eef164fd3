//! The `kube` target: server-side apply (field manager `skiff`), in waves and phases,
//! CRDs waited for until Established, kinds resolved through discovery, concurrency within
//! a group, prune after a fully successful apply, and the inventory kept in a ConfigMap too
//! (so a reinstalled agent with an empty store can still prune).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde_json::{Value, json};
use skiff_proto::api::{Drift, ObjectError, ObjectRef};
use skiff_proto::bundle::BundleFiles;

use super::pace::{self, Observed, Pace};
use super::{Checked, Desired, Health1, Outcome, Retry, Values, duplicate_errors, prunable, prune_set};

/// Field manager of every apply.
pub const FIELD_MANAGER: &str = "skiff";
/// Tries of one request the server throttled (429, 5xx, no answer) before the object
/// counts as failed (and the whole apply is retried later).
const TRIES: u32 = 4;
/// Longest wait for an object being re-created to be gone.
const RECREATE_WAIT: Duration = Duration::from_secs(120);

/// Whether a 422 says the write changes what cannot change in place.
fn is_immutable_change(message: &str) -> bool {
    message.contains("field is immutable")
        || message.contains("updates to statefulset spec for fields other than")
        || message.contains("pod updates may not change fields")
}

/// Longest wait for a CRD to become Established.
const CRD_WAIT: Duration = Duration::from_secs(60);

mod listing;
mod scan;

use listing::{Key, Listed};
use scan::{Scan1, Scanned, unique};

/// The `kube` applier.
pub struct KubeApplier {
    client: kube::Client,
    force: bool,
    namespace: String,
    kinds: Mutex<HashMap<(String, String), (ApiResource, ApiCapabilities)>>,
    /// Per channel, the objects the last drift check found in sync: the resourceVersion
    /// they had and a digest of what skiff wants of them. Unchanged on both sides, an object
    /// is in sync without asking the server again (see [`Self::check`]).
    in_sync: Mutex<InSync>,
    /// Whether drift checks use `in_sync` (off: every object is compared, as a reference).
    remember: bool,
    /// Per channel, the desired state (bundle files and values, [`source_key`]) the
    /// remembered objects were found in sync with, and the bundle's scan for it: a check of
    /// an unchanged channel reads neither the bundle nor any object it remembers.
    sources: Mutex<HashMap<String, (u64, std::sync::Arc<Scanned>)>>,
    /// Requests in flight, adapted to the server.
    pace: Mutex<Pace>,
}

/// What the last check found of an object in sync: its resourceVersion, the digest of
/// what skiff wants of it, and its health then (unchanged while the version is).
type Seen = (String, u64, (&'static str, Option<String>));

/// Per channel, per object ([`id_key`]): what the last check found of the objects in sync.
type InSync = HashMap<String, HashMap<u64, Seen>>;

/// An object's key in [`InSync`]: a hash of its identity, not a copy of it (a few bytes an
/// object, not a hundred). Two objects sharing a key only cost a comparison: each finds
/// the other's resourceVersion remembered, which is never its own, and is compared again.
fn id_key(id: &ObjectRef) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// A digest of what skiff wants of an object: its manifest as sent (compact JSON).
fn desired_digest(json: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(json);
    h.finish()
}

/// What identifies a channel's desired state: its bundle's files and its values.
fn source_key(bundle: &dyn BundleFiles, values: Option<&Values>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let m = bundle.manifest();
    m.channel.hash(&mut h);
    m.default_namespace.hash(&mut h);
    for f in &m.files {
        f.path.hash(&mut h);
        f.sha256.hash(&mut h);
    }
    values.hash(&mut h);
    h.finish()
}

fn gvk_of(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

/// Why a call failed, and whether retrying may help ([`Retry::Soon`]: the server is busy,
/// so the paced loop tries it again at once).
type Failure = (String, Retry);

/// What comparing one object found: its drift, if any, and its health.
type Compared = (Option<Drift>, Health1);

/// A short message for a failed call, and whether retrying may help.
pub fn describe(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => {
            // Server-side apply answers 500 for a field the kind's schema lacks: no retry
            // will change that, only a new bundle.
            let unknown_field = s.message.contains("field not declared in schema")
                || s.message.contains("failed to create typed patch object");
            if unknown_field {
                let reason = if s.reason.is_empty() {
                    "Invalid"
                } else {
                    s.reason.as_str()
                };
                return (
                    format!(
                        "{} {reason}: a field is not in the kind's schema (a typo, or a CRD version that lacks it; not tried again until a new generation): {}",
                        s.code, s.message
                    ),
                    Retry::Never,
                );
            }
            let retry = if s.code == 429 || s.code >= 500 {
                Retry::Soon
            } else {
                Retry::Later
            };
            let message = if s.message.is_empty() {
                format!("{} {}: the server gave no message", s.code, s.reason)
            } else {
                format!("{} {}: {}", s.code, s.reason, s.message)
            };
            (message, retry)
        }
        other => (other.to_string(), Retry::Soon),
    }
}

impl KubeApplier {
    /// An applier using `client`; `namespace` holds the inventory ConfigMaps.
    pub fn new(client: kube::Client, force: bool, namespace: String) -> Self {
        Self {
            client,
            force,
            namespace,
            kinds: Mutex::new(HashMap::new()),
            in_sync: Mutex::new(HashMap::new()),
            remember: true,
            sources: Mutex::new(HashMap::new()),
            pace: Mutex::new(Pace::default()),
        }
    }

    /// Requests the applier keeps in flight now.
    pub fn pace(&self) -> usize {
        self.pace.lock().expect("pace").limit()
    }

    /// Runs `f` on every item with as many in flight as the server's pace allows
    /// ([`super::pace`]); an item whose request the server throttled (429, 5xx, no answer)
    /// waits and is tried again, [`TRIES`] times in all. `f` hands its item back with the
    /// result; `keep` says what of a finished item to keep (its identity, not the object).
    /// Results in completion order.
    async fn paced<T, K, R, F, Fut>(
        &self,
        items: Vec<T>,
        f: F,
        keep: impl Fn(T) -> K,
    ) -> Vec<(K, Result<R, Failure>)>
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = (T, Result<R, Failure>)>,
    {
        use futures_util::stream::FuturesUnordered;
        let mut pending: std::collections::VecDeque<(T, u32)> = items.into_iter().map(|t| (t, 0)).collect();
        let mut running = FuturesUnordered::new();
        let mut out = Vec::with_capacity(pending.len());
        loop {
            while running.len() < self.pace() {
                let Some((item, attempt)) = pending.pop_front() else {
                    break;
                };
                let f = &f;
                running.push(async move {
                    if attempt > 0 {
                        tokio::time::sleep(pace::retry_after(None, attempt - 1)).await;
                    }
                    let started = Instant::now();
                    let (item, r) = f(item).await;
                    (item, attempt, r, started.elapsed())
                });
            }
            let Some((item, attempt, r, took)) = running.next().await else {
                break;
            };
            let throttled = matches!(&r, Err((_, Retry::Soon)));
            self.pace.lock().expect("pace").observe(if throttled {
                Observed::Throttled
            } else {
                Observed::Answered(took)
            });
            if throttled && attempt + 1 < TRIES {
                if let Err((message, _)) = &r {
                    tracing::debug!(%message, attempt = attempt + 1, in_flight = self.pace(), "Server throttled or failed a request; trying again at a slower pace");
                }
                pending.push_back((item, attempt + 1));
            } else {
                out.push((keep(item), r));
            }
        }
        out
    }

    /// Compares every object on every check, remembering nothing (the reference the
    /// remembering check is tested against).
    pub fn without_memory(mut self) -> Self {
        self.remember = false;
        self
    }

    fn remembered(&self, channel: &str, id: &ObjectRef) -> Option<Seen> {
        self.in_sync
            .lock()
            .expect("in_sync")
            .get(channel)
            .and_then(|m| m.get(&id_key(id)))
            .cloned()
    }

    fn remember(&self, channel: &str, id: &ObjectRef, seen: Option<Seen>) {
        if !self.remember {
            return;
        }
        let mut all = self.in_sync.lock().expect("in_sync");
        let m = all.entry(channel.to_owned()).or_default();
        match seen {
            Some(s) => m.insert(id_key(id), s),
            None => m.remove(&id_key(id)),
        };
    }

    async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, ApiCapabilities), kube::Error> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(hit) = self.kinds.lock().expect("kinds").get(&key) {
            return Ok(hit.clone());
        }
        // One discovery request per group-version: every kind it serves is remembered.
        let gvk = gvk_of(api_version, kind);
        let gv = kube::core::GroupVersion::gv(&gvk.group, &gvk.version);
        let group = kube::discovery::pinned_group(&self.client, &gv).await?;
        let mut kinds = self.kinds.lock().expect("kinds");
        for (ar, caps) in group.versioned_resources(&gvk.version) {
            kinds.insert((api_version.to_owned(), ar.kind.clone()), (ar, caps));
        }
        kinds.get(&key).cloned().ok_or_else(|| {
            kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(format!(
                "{api_version} {kind}"
            )))
        })
    }

    fn api(&self, ar: &ApiResource, caps: &ApiCapabilities, namespace: Option<&str>) -> Api<DynamicObject> {
        match (caps.scope == Scope::Namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            _ => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Applies one object; what the server answers is remembered as in sync for the next
    /// drift check of `channel` (its version, the desired digest, its health), so the first
    /// check after an apply lists instead of comparing every object again.
    async fn apply_one(&self, channel: &str, o: &Desired) -> Result<(), Failure> {
        let (ar, caps) = self.resolve(&o.id.api_version, &o.id.kind).await.map_err(|e| {
            let (m, t) = describe(&e);
            (
                format!(
                    "kind {} {} is not served by this cluster ({m})",
                    o.id.api_version, o.id.kind
                ),
                t,
            )
        })?;
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = self.force;
        let api = self.api(&ar, &caps, o.id.namespace.as_deref());
        // The manifest is serialized once, for the body and its digest; of the answer only
        // its version and what its health needs are read (the rest is skipped, not built).
        let body = serde_json::to_vec(&o.value).map_err(|e| (e.to_string(), Retry::Never))?;
        let digest = desired_digest(&body);
        let mut request = kube::core::Request::new(api.resource_url())
            .patch(&o.id.name, &params, &Patch::Apply(()))
            .map_err(|e| describe(&kube::Error::BuildRequest(e)))?;
        *request.body_mut() = body;
        match self.client.request::<crate::drift::Vitals>(request).await {
            Ok(live) => {
                if let Some(version) = &live.metadata.resource_version {
                    self.remember(channel, &o.id, Some((version.clone(), digest, live.health())));
                }
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 422 && is_immutable_change(&s.message) => {
                if super::recreate_allowed(&o.value) {
                    self.recreate(&api, o, &params).await
                } else {
                    Err((
                        format!(
                            "{} {}: {} (this field cannot change in place: annotate the object {}: \"true\" to let skiff delete and re-create it)",
                            s.code,
                            s.reason,
                            s.message,
                            super::RECREATE_ANNOTATION
                        ),
                        Retry::Later,
                    ))
                }
            }
            Err(e) => {
                // Where the object comes from, for errors only its content can mend.
                let (message, retry) = describe(&e);
                match retry {
                    Retry::Never => Err((format!("{message} (in {})", o.origin), retry)),
                    _ => Err((message, retry)),
                }
            }
        }
    }

    /// Replaces an object the manifest cannot be applied over (an update with the live
    /// object's resourceVersion: fields other managers set go, values the server allocated
    /// such as a Service's clusterIP stay), then applies it so skiff owns its fields again.
    async fn replace_one(
        &self,
        channel: &str,
        api: &Api<DynamicObject>,
        o: &Desired,
        live: &Value,
    ) -> Result<(), Failure> {
        tracing::warn!(object = %o.id, "Unreconcilable drift: replacing the object with its manifest (opted in with {})", super::HEAL_ANNOTATION);
        let mut body = o.value.clone();
        if let (Some(meta), Some(version)) = (
            body.get_mut("metadata").and_then(Value::as_object_mut),
            live.pointer("/metadata/resourceVersion"),
        ) {
            meta.insert("resourceVersion".into(), version.clone());
        }
        let object: DynamicObject =
            serde_json::from_value(body).map_err(|e| (format!("{}: {e}", o.id), Retry::Never))?;
        let params = kube::api::PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        api.replace(&o.id.name, &params, &object)
            .await
            .map_err(|e| describe(&e))?;
        self.apply_one(channel, o).await
    }

    /// Deletes an object whose new state changes an immutable field, waits until it is
    /// gone, and applies it anew (only with the object's opt-in annotation).
    async fn recreate(
        &self,
        api: &Api<DynamicObject>,
        o: &Desired,
        params: &PatchParams,
    ) -> Result<(), Failure> {
        tracing::warn!(object = %o.id, "Immutable field changed: deleting and re-creating (opted in with {})", super::RECREATE_ANNOTATION);
        match api
            .delete(&o.id.name, &kube::api::DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(describe(&e)),
        }
        let deadline = Instant::now() + RECREATE_WAIT;
        let mut pause = Duration::from_millis(100);
        while api.get_opt(&o.id.name).await.map_err(|e| describe(&e))?.is_some() {
            if Instant::now() >= deadline {
                return Err((
                    format!("{}: still being deleted after {RECREATE_WAIT:?}", o.id),
                    Retry::Soon,
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        api.patch(&o.id.name, params, &Patch::Apply(&o.value))
            .await
            .map(drop)
            .map_err(|e| describe(&e))
    }

    async fn wait_established(&self, name: &str, crd: &scan::Crd) -> Result<(), String> {
        // Established is when the API server serves the CRD's resources, which its discovery
        // document for the group and version says: a few kilobytes, where the CRD itself
        // (what the Established condition is read from) can be megabytes.
        let (group, plural, version) = (&crd.group_kind.0, &crd.plural, &crd.version);
        let group_version = format!("{group}/{version}");
        let started = Instant::now();
        let deadline = started + CRD_WAIT;
        loop {
            if let Ok(list) = self.client.list_api_group_resources(&group_version).await
                && list.resources.iter().any(|r| r.name == *plural)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "CustomResourceDefinition {name} not Established after {CRD_WAIT:?} ({plural} is not served in {group_version})"
                ));
            }
            // Cheap to ask: often at first (a cluster establishes a CRD within a second or
            // two), then once a second.
            let pause = if started.elapsed() < Duration::from_secs(5) {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Applies a bundle's objects for `channel`, then prunes what `previous` had and the
    /// bundle lacks (only when everything applied).
    pub async fn apply(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
        previous: &[ObjectRef],
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let mut scanned = match self.scan(channel, values, bundle).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        let mut kept = scanned.take_kept();
        // What is remembered of the channel is what this apply leaves (objects of earlier
        // generations are not kept).
        self.in_sync.lock().expect("in_sync").remove(channel);
        // Objects defined twice are errors, reported after the rest is applied (no prune).
        let ids: Vec<(ObjectRef, String)> = scanned
            .objects
            .iter()
            .map(|o| (o.id.clone(), o.origin.clone()))
            .collect();
        let duplicates: Vec<ObjectError> = duplicate_errors(&ids).into_values().collect();
        drop(ids);
        let twice: std::collections::BTreeSet<&ObjectRef> = duplicates.iter().map(|e| &e.object).collect();
        // Kinds the bundle's objects use: a CRD is waited for only when one of them is its.
        let used: std::collections::BTreeSet<(String, String)> = scanned
            .objects
            .iter()
            .map(|o| {
                let group = o.id.api_version.rsplit_once('/').map_or("", |(g, _)| g);
                (group.to_owned(), o.id.kind.clone())
            })
            .collect();
        // In waves, and within a wave in phases (CRDs and Namespaces, cluster-scoped, the rest).
        let mut order: Vec<&Scan1> = scanned
            .objects
            .iter()
            .filter(|o| !twice.contains(&o.id))
            .collect();
        order.sort_by(|a, b| (a.wave, super::phase(&a.id), &a.id).cmp(&(b.wave, super::phase(&b.id), &b.id)));
        let groups = order.chunk_by(|a, b| (a.wave, super::phase(&a.id)) == (b.wave, super::phase(&b.id)));
        for group in groups {
            for batch in Scanned::batches(group, bundle.manifest()) {
                let objects = match self.load(channel, values, bundle, (&scanned, &mut kept), &batch) {
                    Ok(o) => o,
                    Err(o) => return o,
                };
                let results = self
                    .paced(
                        objects,
                        |o| async move {
                            let r = self.apply_one(channel, &o).await;
                            (o, r)
                        },
                        |o| o.id,
                    )
                    .await;
                for (id, r) in results {
                    match r {
                        Ok(()) => outcome.applied.push(id),
                        Err((message, retry)) => {
                            outcome.note(retry);
                            outcome.errors.push(ObjectError { object: id, message });
                        }
                    }
                }
            }
            if !outcome.errors.is_empty() {
                // Later waves and phases depend on this one.
                return outcome;
            }
            for crd in group.iter().filter(|o| o.id.kind == "CustomResourceDefinition") {
                let Some(defined) = scanned.crds.get(&crd.id.name) else {
                    continue;
                };
                if used.contains(&defined.group_kind)
                    && let Err(message) = self.wait_established(&crd.id.name, defined).await
                {
                    outcome.note(Retry::Soon);
                    outcome.errors.push(ObjectError {
                        object: crd.id.clone(),
                        message,
                    });
                }
            }
            if !outcome.errors.is_empty() {
                return outcome;
            }
        }

        if !duplicates.is_empty() {
            outcome.errors.extend(duplicates);
            return outcome;
        }
        if self.remember {
            // Every object applied and remembered with what the server answered: the next
            // check need not read the bundle again.
            let source = source_key(bundle, values);
            self.sources
                .lock()
                .expect("sources")
                .insert(channel.to_owned(), (source, std::sync::Arc::new(scanned)));
        }
        for gone in prune_set(previous, &outcome.applied) {
            match self.prune_one(channel, &gone).await {
                Ok(true) => outcome.pruned.push(gone),
                Ok(false) => {}
                Err((message, retry)) => {
                    outcome.note(retry);
                    outcome.errors.push(ObjectError {
                        object: gone,
                        message: format!("prune: {message}"),
                    });
                }
            }
        }
        outcome
    }

    /// Compares every object of the bundle with the cluster (server-side dry-run apply vs
    /// live), re-applies drifted ones when `heal` allows, and reads their health.
    /// Only objects in `inventory` (what applied) are looked at: one that never applied
    /// was reported by its apply, and is no drift.
    pub async fn check(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
        heal: bool,
        inventory: &[ObjectRef],
    ) -> Result<Checked, Outcome> {
        self.check_with(channel, values, bundle, heal, true, Some(inventory))
            .await
    }

    /// Reads health only, no dry-run (right after an apply, the live objects are what
    /// skiff just wrote): from full lists of each kind, one page at a time; an object not
    /// listed is asked for by name.
    pub async fn health(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
    ) -> Result<Checked, Outcome> {
        let mut scanned = self.scan(channel, values, bundle).await?;
        drop(scanned.take_kept()); // health is read from lists, not from the manifests
        let all = unique(&scanned);
        let mut kinds: BTreeMap<(String, String), std::collections::BTreeSet<Key>> = BTreeMap::new();
        for o in &all {
            kinds
                .entry((o.id.api_version.clone(), o.id.kind.clone()))
                .or_default()
                .insert((o.id.namespace.clone(), o.id.name.clone()));
        }
        let mut found = BTreeMap::new();
        for ((api_version, kind), wanted) in &kinds {
            if let Ok(h) = self.list_health(channel, api_version, kind, wanted).await {
                found.insert((api_version.clone(), kind.clone()), h);
            }
        }
        let ids: Vec<ObjectRef> = all.into_iter().map(|o| o.id.clone()).collect();
        let mut checked = Checked::default();
        let mut unlisted = Vec::new();
        for id in ids {
            let listed = found
                .get_mut(&(id.api_version.clone(), id.kind.clone()))
                .and_then(|h| h.remove(&(id.namespace.clone(), id.name.clone())));
            match listed {
                Some((state, reason)) => checked.health.push((id, state, reason)),
                None => unlisted.push(id),
            }
        }
        let asked = self
            .paced(
                unlisted,
                |id| async move {
                    let r = self.get_health(&id).await;
                    (id, r)
                },
                |id| id,
            )
            .await;
        for (id, r) in asked {
            match r {
                Ok((state, reason)) => checked.health.push((id, state, reason)),
                Err((message, _)) => {
                    checked
                        .health
                        .push((id.clone(), "Unknown", Some(message.clone())));
                    checked.unknown.push(ObjectError { object: id, message });
                }
            }
        }
        Ok(checked)
    }

    /// One object's health, read by name (missing: Progressing).
    async fn get_health(&self, id: &ObjectRef) -> Result<(&'static str, Option<String>), Failure> {
        let (ar, caps) = self
            .resolve(&id.api_version, &id.kind)
            .await
            .map_err(|e| describe(&e))?;
        let api = self.api(&ar, &caps, id.namespace.as_deref());
        Ok(match api.get_opt(&id.name).await.map_err(|e| describe(&e))? {
            Some(live) => crate::drift::object_health(&serde_json::to_value(&live).unwrap_or(Value::Null)),
            None => ("Progressing", Some("missing".to_owned())),
        })
    }

    async fn check_with(
        &self,
        channel: &str,
        values: Option<&Values>,
        bundle: &dyn BundleFiles,
        heal: bool,
        compare: bool,
        only: Option<&[ObjectRef]>,
    ) -> Result<Checked, Outcome> {
        let source = source_key(bundle, values);
        let known = self
            .sources
            .lock()
            .expect("sources")
            .get(channel)
            .filter(|(key, _)| *key == source)
            .map(|(_, scan)| scan.clone());
        let same_source = known.is_some();
        let (scanned, mut kept) = match known {
            Some(scan) => (scan, None),
            None => {
                let mut scan = self.scan(channel, values, bundle).await?;
                let kept = scan.take_kept();
                (std::sync::Arc::new(scan), kept)
            }
        };
        let mut all = unique(&scanned);
        if let Some(only) = only {
            let only: std::collections::BTreeSet<&ObjectRef> = only.iter().collect();
            all.retain(|o| only.contains(&o.id));
        }
        // One list per kind (and page), by the channel label: O(kinds) requests for an
        // unchanged cluster, not one per object.
        let mut kinds: BTreeMap<(String, String), Vec<Option<String>>> = BTreeMap::new();
        for o in &all {
            let namespaces = kinds
                .entry((o.id.api_version.clone(), o.id.kind.clone()))
                .or_default();
            if !namespaces.contains(&o.id.namespace) {
                namespaces.push(o.id.namespace.clone());
            }
        }
        let mut lists = BTreeMap::new();
        for ((api_version, kind), namespaces) in &kinds {
            let listed = self
                .list_versions(channel, api_version, kind, namespaces)
                .await
                .ok();
            lists.insert((api_version.clone(), kind.clone()), listed);
        }
        // The desired state unchanged since the remembered objects were found in sync: one
        // listed at the version remembered is in sync, with its health then, unread.
        let mut results: Vec<(ObjectRef, Result<Compared, Failure>)> = Vec::new();
        if same_source && compare && self.remember {
            all.retain(|o| {
                let listed = lists
                    .get(&(o.id.api_version.clone(), o.id.kind.clone()))
                    .and_then(|l| l.as_ref())
                    .and_then(|l| l.get(&(o.id.namespace.clone(), o.id.name.clone())));
                match (listed, self.remembered(channel, &o.id)) {
                    (Some(version), Some((seen, _, (state, reason))))
                        if !version.is_empty() && *version == seen =>
                    {
                        results.push((o.id.clone(), Ok((None, (o.id.clone(), state, reason)))));
                        false
                    }
                    _ => true,
                }
            });
        }
        let mut take = |id: &ObjectRef| match lists.get_mut(&(id.api_version.clone(), id.kind.clone())) {
            Some(Some(items)) => match items.remove(&(id.namespace.clone(), id.name.clone())) {
                Some(version) => Listed::Version(version),
                None => Listed::Absent,
            },
            _ => Listed::Unknown,
        };
        // In the apply's phase order: a healed Namespace (or CRD) exists before what lives
        // in it is healed, in the same round. Objects are read a batch at a time.
        for phase in 0..=2u8 {
            let now: Vec<&Scan1> = all
                .iter()
                .copied()
                .filter(|o| super::phase(&o.id) == phase)
                .collect();
            for batch in Scanned::batches(&now, bundle.manifest()) {
                let loaded: Vec<(Desired, Listed)> = self
                    .load(channel, values, bundle, (&scanned, &mut kept), &batch)?
                    .into_iter()
                    .map(|o| {
                        let live = take(&o.id);
                        (o, live)
                    })
                    .collect();
                let done = self
                    .paced(
                        loaded,
                        |(o, live)| async move {
                            let r = self.check_one(channel, &o, &live, heal, compare).await;
                            ((o, live), r)
                        },
                        |(o, _)| o.id,
                    )
                    .await;
                results.extend(done);
            }
        }
        let mut checked = Checked::default();
        for (id, r) in results {
            match r {
                Ok((drift, health)) => {
                    checked.drift.extend(drift);
                    checked.health.push(health);
                }
                // Neither in sync nor drifted: unknown, with the server's reason.
                Err((message, _)) => {
                    checked
                        .health
                        .push((id.clone(), "Unknown", Some(message.clone())));
                    checked.unknown.push(ObjectError { object: id, message });
                }
            }
        }
        checked.drift.sort_by(|a, b| a.object.cmp(&b.object));
        checked.unknown.sort_by(|a, b| a.object.cmp(&b.object));
        checked.health.sort_by(|a, b| a.0.cmp(&b.0));
        if compare && self.remember {
            self.sources
                .lock()
                .expect("sources")
                .insert(channel.to_owned(), (source, scanned));
        }
        Ok(checked)
    }

    /// Compares one object with the cluster. `listed` is what the check's list found: the
    /// live object (no GET), or nothing (asked for by name: deleted, or its label removed).
    /// An object whose resourceVersion and desired state are what they were when the last
    /// check found it in sync is in sync: no dry-run.
    async fn check_one(
        &self,
        channel: &str,
        o: &Desired,
        listed: &Listed,
        heal: bool,
        compare: bool,
    ) -> Result<(Option<Drift>, Health1), Failure> {
        let (ar, caps) = self
            .resolve(&o.id.api_version, &o.id.kind)
            .await
            .map_err(|e| describe(&e))?;
        let api = self.api(&ar, &caps, o.id.namespace.as_deref());
        let heal = heal && !crate::drift::self_heal_disabled(&o.value);
        let digest = desired_digest(&serde_json::to_vec(&o.value).unwrap_or_default());
        // Unchanged on both sides since the last check found it in sync: in sync, with the
        // health it had (a status change would have changed the version).
        if let (Listed::Version(version), true) = (listed, compare && self.remember)
            && let Some((seen_version, seen_digest, (state, reason))) = self.remembered(channel, &o.id)
            && !version.is_empty()
            && *version == seen_version
            && digest == seen_digest
        {
            return Ok((None, (o.id.clone(), state, reason)));
        }
        let live = api
            .get_opt(&o.id.name)
            .await
            .map_err(|e| describe(&e))?
            .map(|live| serde_json::to_value(&live).unwrap_or(Value::Null));
        let Some(live) = live.as_ref() else {
            self.remember(channel, &o.id, None);
            if heal {
                self.apply_one(channel, o).await?;
            }
            let health = (o.id.clone(), "Progressing", Some("missing".to_owned()));
            return Ok((
                Some(Drift {
                    object: o.id.clone(),
                    kind: "missing".into(),
                    paths: Vec::new(),
                    corrected: heal,
                    reason: None,
                }),
                health,
            ));
        };
        if !compare {
            let (state, reason) = crate::drift::object_health(live);
            return Ok((None, (o.id.clone(), state, reason)));
        }
        let version = live
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.remember(channel, &o.id, None);
        let mut params = PatchParams::apply(FIELD_MANAGER).dry_run();
        params.force = self.force;
        let dry = match api.patch(&o.id.name, &params, &Patch::Apply(&o.value)).await {
            Ok(dry) => dry,
            // The server refuses what skiff would apply: the live object has moved where
            // the manifest cannot follow (another manager changed an item's key, an
            // immutable field …). That is drift, with the server's reason; an apply cannot
            // heal it, so none is attempted.
            // With the object's opt-in (`skiff.dev/heal: replace`), it is replaced by the
            // manifest and applied again: the foreign list items go, skiff owns its fields.
            Err(kube::Error::Api(s)) if s.code == 422 => {
                let (state, reason) = crate::drift::object_health(live);
                let corrected = heal && super::replace_allowed(&o.value);
                if corrected {
                    self.replace_one(channel, &api, o, live).await?;
                }
                let hint = if super::replace_allowed(&o.value) {
                    String::new()
                } else {
                    format!(
                        " (annotate the object {}: replace to let self-heal replace it)",
                        super::HEAL_ANNOTATION
                    )
                };
                return Ok((
                    Some(Drift {
                        object: o.id.clone(),
                        kind: "unreconcilable".into(),
                        paths: Vec::new(),
                        corrected,
                        reason: Some(format!("{} {}: {}{hint}", s.code, s.reason, s.message)),
                    }),
                    (o.id.clone(), state, reason),
                ));
            }
            Err(e) => return Err(describe(&e)),
        };
        let dry = serde_json::to_value(&dry).unwrap_or(Value::Null);
        let paths = crate::drift::diff(&dry, live, &o.id.kind);
        let (state, reason) = crate::drift::object_health(live);
        let health = (o.id.clone(), state, reason);
        if paths.is_empty() {
            self.remember(
                channel,
                &o.id,
                Some((version, digest, (health.1, health.2.clone()))),
            );
            return Ok((None, health));
        }
        if heal {
            self.apply_one(channel, o).await?;
        }
        Ok((
            Some(Drift {
                object: o.id.clone(),
                kind: "modified".into(),
                paths,
                corrected: heal,
                reason: None,
            }),
            health,
        ))
    }

    /// Deletes one object if it still carries this channel's label and is not protected.
    async fn prune_one(&self, channel: &str, id: &ObjectRef) -> Result<bool, Failure> {
        let Ok((ar, caps)) = self.resolve(&id.api_version, &id.kind).await else {
            return Ok(false); // its kind is gone (CRD removed): nothing left to delete
        };
        let api = self.api(&ar, &caps, id.namespace.as_deref());
        let live = match api.get_opt(&id.name).await {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(false),
            Err(e) => return Err(describe(&e)),
        };
        let value = serde_json::to_value(&live).unwrap_or(Value::Null);
        let ours = live
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(super::CHANNEL_LABEL))
            .map(String::as_str)
            == Some(channel);
        if !ours || !prunable(&value) {
            return Ok(false);
        }
        match api.delete(&id.name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(describe(&e)),
        }
    }

    fn inventory_api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &ApiResource::from_gvk_with_plural(&gvk_of("v1", "ConfigMap"), "configmaps"),
        )
    }

    /// Stores a channel's inventory in `skiff-inventory-<channel>` (creating the agent's
    /// namespace if it is missing).
    pub async fn save_inventory(
        &self,
        channel: &str,
        generation: u64,
        inventory: &[ObjectRef],
    ) -> Result<(), String> {
        let ns_api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk_of("v1", "Namespace"), "namespaces"),
        );
        if matches!(ns_api.get_opt(&self.namespace).await, Ok(None)) {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}});
            ns_api
                .patch(
                    &self.namespace,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Apply(&ns),
                )
                .await
                .map_err(|e| describe(&e).0)?;
        }
        let name = format!("skiff-inventory-{channel}");
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "skiff", super::CHANNEL_LABEL: channel}},
            "data": {"channel": channel, "generation": generation.to_string(),
                "objects": serde_json::to_string(inventory).expect("serializes")},
        });
        self.inventory_api()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map(drop)
            .map_err(|e| describe(&e).0)
    }

    /// The inventory last saved in the cluster for `channel`, if any.
    pub async fn load_inventory(&self, channel: &str) -> Option<Vec<ObjectRef>> {
        let cm = self
            .inventory_api()
            .get_opt(&format!("skiff-inventory-{channel}"))
            .await
            .ok()??;
        let text = cm.data.pointer("/data/objects")?.as_str()?.to_owned();
        serde_json::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{Retry, describe};

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.to_owned(),
            message: message.to_owned(),
            ..Default::default()
        }))
    }

    #[test]
    fn unknown_fields_are_permanent_and_said_so() {
        let (message, retry) = describe(&api_error(
            500,
            "",
            ".spec.template.spec.containers[name=\"web\"].imagePullPolicyy: field not declared in schema",
        ));
        assert_eq!(retry, Retry::Never);
        assert!(
            message.contains("not in the kind's schema") && message.contains("imagePullPolicyy"),
            "{message}"
        );
        let (message, retry) = describe(&api_error(503, "ServiceUnavailable", ""));
        assert_eq!(retry, Retry::Soon);
        assert!(message.contains("no message"), "{message}");
        assert_eq!(
            describe(&api_error(429, "TooManyRequests", "slow down")).1,
            Retry::Soon
        );
        assert_eq!(
            describe(&api_error(422, "Invalid", "spec.selector: immutable")).1,
            Retry::Later
        );
    }
}
