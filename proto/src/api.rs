//! What the hub and agent say to each other over HTTP (JSON).
//!
//! - `GET /v1/clusters/{cluster}/desired` → [`Desired`] (strong `ETag`, `If-None-Match`,
//!   `?wait=SECONDS` long-poll).
//! - `GET /v1/bundles/{sha256}` → the bundle bytes (`Range` supported).
//! - `POST /v1/clusters/{cluster}/reports` ← [`Report`] → [`ReportAck`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;
use crate::dsse::Envelope;
use crate::statement::Timestamp;

/// Longest long-poll the hub honours, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 300;

/// Caps hub and agent both keep to: each side refuses more from the other (and from
/// mirrors) before reading it, and makes nothing larger itself.
pub mod limits {
    /// Largest desired-state body an agent reads.
    pub const MAX_DESIRED_BYTES: usize = 8 << 20;
    /// Most of an error body either side reads (the rest is dropped unread).
    pub const MAX_ERROR_BODY: usize = 4 << 10;
    /// Largest DSSE envelope read from a file, a hub or a mirror.
    pub const MAX_ENVELOPE_BYTES: u64 = 256 << 10;
    /// Largest single report (serialized JSON) the hub stores; agents trim theirs to fit.
    pub const MAX_REPORT_BYTES: usize = 256 << 10;
    /// Most reports in one `POST …/reports`.
    pub const MAX_REPORTS_PER_REQUEST: usize = 100;
    /// Largest report request body the hub reads.
    pub const MAX_REPORTS_BODY: usize = 8 << 20;
    /// Longest report message kept.
    pub const MAX_MESSAGE_CHARS: usize = 4096;
    /// Most drifted objects, object errors, or paths per drifted object in one report.
    pub const MAX_REPORT_ITEMS: usize = 200;
    /// Most trust roots in one `GET /v1/roots?after=N` answer (a longer chain takes several).
    pub const MAX_ROOTS_PER_ANSWER: usize = 64;
}

/// Everything a cluster should run: one entry per channel that targets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The cluster asking.
    pub cluster: String,
    /// Channels, sorted by name.
    pub channels: Vec<DesiredChannel>,
    /// The cluster's signed assignment (`FORMAT.md` §7): which channels it runs, up to which
    /// generation, with which values. Agents check it; the list above is only a hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Envelope>,
    /// The newest trust root (`FORMAT.md` §9), when the hub has one: an agent behind it
    /// fetches the versions in between (`/v1/roots?after=N`) and walks the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Envelope>,
}

/// One channel's current bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredChannel {
    /// Channel name.
    pub channel: String,
    /// Generation of the bundle.
    pub generation: u64,
    /// Bundle digest.
    pub sha256: Sha256Digest,
    /// Bundle size in bytes.
    pub size: u64,
    /// Source commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Path of the bundle on the hub (`/v1/bundles/<sha256>`).
    pub bundle_url: String,
    /// The signed statement.
    pub envelope: Envelope,
}

/// The result of one thing the agent did for a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Applied (or re-applied) successfully.
    Applied,
    /// Applying failed (some object refused, cluster unreachable …).
    Failed,
    /// The bundle did not verify and was not applied.
    Rejected,
    /// A drift check ran (see `drift`).
    Checked,
    /// A newer generation was verified and stored but is not applied yet: the site holds,
    /// or it is outside its maintenance window (see `deferred`). The generation it runs is
    /// unchanged. (Hubs before this outcome refuse such reports: upgrade the hub first.)
    Deferred,
}

/// Why an agent does not apply a verified generation yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeferReason {
    /// `skiff-agent hold` on the site.
    Hold,
    /// Outside the cluster's maintenance window.
    Window,
}

/// A generation the agent holds verified and does not apply yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deferred {
    /// The generation waiting.
    pub generation: u64,
    /// Why.
    pub reason: DeferReason,
    /// When the next window opens (for `window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Timestamp>,
}

/// An object's identity, as reports name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// apiVersion.
    pub api_version: String,
    /// kind.
    pub kind: String,
    /// Namespace, for namespaced objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{} {ns}/{}", self.api_version, self.kind, self.name),
            None => write!(f, "{}/{} {}", self.api_version, self.kind, self.name),
        }
    }
}

/// An object that failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectError {
    /// The object.
    pub object: ObjectRef,
    /// The API server's (or agent's) message.
    pub message: String,
}

/// One drifted object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The object.
    pub object: ObjectRef,
    /// `missing` or `modified`.
    pub kind: String,
    /// JSON paths that differ, with values where they may be shown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<DriftPath>,
    /// Whether the agent re-applied it.
    pub corrected: bool,
    /// Why the desired state cannot be reached as is (for `unreconcilable`: the server's
    /// answer to applying it, e.g. a key two managers now disagree on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One differing path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftPath {
    /// JSON path (`.spec.replicas`).
    pub path: String,
    /// Desired value, if it may be shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<serde_json::Value>,
    /// Live value, if it may be shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<serde_json::Value>,
}

/// Health of a channel's objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `Healthy`, `Progressing` or `Degraded`.
    pub state: String,
    /// Why, when not healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Objects not healthy, with their state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objects: BTreeMap<String, String>,
}

/// What an agent tells the hub after each apply attempt, rejection or drift check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Random id of the agent's store; sequence numbers count within it.
    pub instance: String,
    /// Strictly increasing per instance; the hub stores each (instance, seq) once.
    pub seq: u64,
    /// When the agent made the report.
    pub time: Timestamp,
    /// Agent version.
    pub agent_version: String,
    /// The channel.
    pub channel: String,
    /// What happened.
    pub outcome: Outcome,
    /// Generation concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Bundle concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256Digest>,
    /// Source commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A one-line summary (for failures: what failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Objects in the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    /// Per-object errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ObjectError>,
    /// How long it took, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Drifted objects found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// Health after the apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Objects a drift check could not compare (the server refused the dry-run, a webhook
    /// is down …), with the reason: neither in sync nor drifted, but unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<ObjectError>,
    /// For a `deferred` outcome: the generation waiting and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferred>,
}

impl Report {
    /// Trims a report to [`limits::MAX_REPORT_BYTES`]: long messages are cut, lists kept to
    /// their first [`limits::MAX_REPORT_ITEMS`] entries, and drift values dropped (paths
    /// stay) if it is still too large. What was cut is said in the message.
    pub fn fit(mut self) -> Self {
        use limits::{MAX_MESSAGE_CHARS, MAX_REPORT_BYTES, MAX_REPORT_ITEMS};
        let cut = |s: &mut String| {
            if s.chars().count() > MAX_MESSAGE_CHARS {
                *s = s.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + " …(cut)";
            }
        };
        let mut notes = Vec::new();
        if let Some(m) = &mut self.message {
            cut(m);
        }
        if self.errors.len() > MAX_REPORT_ITEMS {
            notes.push(format!(
                "{} object errors, first {MAX_REPORT_ITEMS} kept",
                self.errors.len()
            ));
            self.errors.truncate(MAX_REPORT_ITEMS);
        }
        for e in &mut self.errors {
            cut(&mut e.message);
        }
        if self.unknown.len() > MAX_REPORT_ITEMS {
            notes.push(format!(
                "{} unknown objects, first {MAX_REPORT_ITEMS} kept",
                self.unknown.len()
            ));
            self.unknown.truncate(MAX_REPORT_ITEMS);
        }
        for e in &mut self.unknown {
            cut(&mut e.message);
        }
        if self.drift.len() > MAX_REPORT_ITEMS {
            notes.push(format!(
                "{} drifted objects, first {MAX_REPORT_ITEMS} kept",
                self.drift.len()
            ));
            self.drift.truncate(MAX_REPORT_ITEMS);
        }
        for d in &mut self.drift {
            d.paths.truncate(MAX_REPORT_ITEMS);
        }
        if let Some(h) = &mut self.health {
            if let Some(r) = &mut h.reason {
                cut(r);
            }
            while h.objects.len() > MAX_REPORT_ITEMS {
                h.objects.pop_last();
            }
            for v in h.objects.values_mut() {
                cut(v);
            }
        }
        let size = |r: &Self| serde_json::to_vec(r).map_or(usize::MAX, |b| b.len());
        if size(&self) > MAX_REPORT_BYTES {
            notes.push("drift values left out to fit the report size limit".to_owned());
            for p in self.drift.iter_mut().flat_map(|d| d.paths.iter_mut()) {
                p.desired = None;
                p.live = None;
            }
        }
        while size(&self) > MAX_REPORT_BYTES && (!self.drift.is_empty() || !self.errors.is_empty()) {
            let half = self.drift.len() / 2;
            self.drift.truncate(half);
            let half = self.errors.len() / 2;
            self.errors.truncate(half);
            notes.push("lists halved to fit the report size limit".to_owned());
        }
        if !notes.is_empty() {
            notes.dedup();
            let m = self.message.get_or_insert_with(String::new);
            m.push_str(&format!(" [trimmed: {}]", notes.join("; ")));
        }
        self
    }
}

/// The hub's answer to a batch of reports (`POST …/reports` takes a JSON array of
/// [`Report`]s, oldest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// Reports that were new.
    pub stored: usize,
    /// Reports already stored before (retries), ignored.
    pub duplicates: usize,
    /// Reports the hub refused and will never store (too large, or for a channel that does
    /// not target the cluster); the agent drops them like delivered ones.
    #[serde(default)]
    pub refused: usize,
}

/// Reports carried across an air gap: `skiff-agent report export` writes it,
/// `skiff-hub report import` reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportFile {
    /// The cluster that made them.
    pub cluster: String,
    /// In order.
    pub reports: Vec<Report>,
}
