//! The signed assignment on the agent: taking a new one (signature, cluster, sequence,
//! expiry), what it admits, the values it substitutes, and what becomes of the channels it
//! drops. The decisions are plain functions; [`Agent`] methods do the I/O around them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use skiff_proto::api::Outcome as ReportOutcome;
use skiff_proto::assignment::{AcceptedAssignment, Assignment, OnUnassign, limits};
use skiff_proto::bundle::{Bundle, BundleManifest, FORMAT_VERSION};
use skiff_proto::dsse::Envelope;
use skiff_proto::statement::Timestamp;
use skiff_proto::values::cluster_variables;
use tracing::{info, warn};

use super::{Agent, Applier};
use crate::apply::Values;
use crate::store::StoredAssignment;

/// Whether an assignment lets `generation` of `channel` run here; the refusal says why.
pub fn admit(assignment: &Assignment, channel: &str, generation: u64) -> Result<(), String> {
    let Some(entry) = assignment.channel(channel) else {
        return Err(format!(
            "channel {channel:?} is not assigned to this cluster (assignment sequence {})",
            assignment.sequence
        ));
    };
    if let Some(pin) = entry.max_generation
        && generation > pin
    {
        return Err(format!(
            "generation {generation} of channel {channel:?} is above this cluster's pin {pin} (assignment sequence {})",
            assignment.sequence
        ));
    }
    Ok(())
}

/// The values substituted into `channel`, or `None` when its entry does not ask for
/// substitution. Highest first: the assignment's values for the channel, the site's local
/// values, the cluster's name and labels.
pub fn values_for(assignment: &Assignment, channel: &str, local: &Values) -> Option<Values> {
    let entry = assignment.channel(channel)?;
    if !entry.substitute {
        return None;
    }
    let mut out = cluster_variables(&assignment.cluster, &assignment.labels);
    out.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.extend(entry.values.iter().map(|(k, v)| (k.clone(), v.clone())));
    Some(out)
}

/// Shortest local value scrubbed from report text (shorter ones would mangle messages; a
/// drift value equal to a local value is left out whatever its length).
pub const SCRUB_MIN_LEN: usize = 4;

/// Keeps the site's local values out of a report: drift values equal to (or holding) one
/// are left out, and messages have them replaced by `(local value)`.
pub fn scrub(report: &mut skiff_proto::api::Report, local: &Values) {
    if local.is_empty() {
        return;
    }
    let secrets: Vec<&str> = local
        .values()
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect();
    let holds = |text: &str| {
        secrets
            .iter()
            .any(|s| text == *s || (s.len() >= SCRUB_MIN_LEN && text.contains(s)))
    };
    let clean = |text: &mut String| {
        for s in secrets.iter().filter(|s| s.len() >= SCRUB_MIN_LEN) {
            if text.contains(s) {
                *text = text.replace(s, "(local value)");
            }
        }
    };
    for p in report.drift.iter_mut().flat_map(|d| d.paths.iter_mut()) {
        for v in [&mut p.desired, &mut p.live] {
            let text = match v.as_ref() {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => continue,
            };
            if holds(&text) {
                *v = None;
            }
        }
    }
    if let Some(m) = &mut report.message {
        clean(m);
    }
    for e in report.errors.iter_mut().chain(report.unknown.iter_mut()) {
        clean(&mut e.message);
    }
    for d in &mut report.drift {
        if let Some(r) = &mut d.reason {
            clean(r);
        }
    }
}

/// What a new assignment changes for the channels the agent holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Channels no longer assigned, with what the assignment that had them said to do.
    pub dropped: Vec<(String, OnUnassign)>,
    /// Channels still assigned whose substituted objects may differ (values, labels, name,
    /// or substitution turned on or off), and channels assigned again: re-applied.
    pub revalued: Vec<String>,
}

/// Compares the assignment in effect (`old`; none for the first) with `new`, for the
/// channels the agent `holds`. A channel held before any assignment and not in the first one
/// is kept: no assignment ever said what to do with it.
pub fn changes(old: Option<&Assignment>, new: &Assignment, holds: &[String], local: &Values) -> Changes {
    let mut out = Changes::default();
    for channel in holds {
        match (old.and_then(|o| o.channel(channel)), new.channel(channel)) {
            (Some(was), None) => out.dropped.push((channel.clone(), was.on_unassign)),
            (None, None) if old.is_none() => out.dropped.push((channel.clone(), OnUnassign::Keep)),
            (None, None) => {}
            // Assigned again after an assignment without it: applied afresh (its objects
            // were pruned, or kept and not enforced).
            (None, Some(_)) if old.is_some() => out.revalued.push(channel.clone()),
            (_, Some(_)) => {
                let before = old.and_then(|o| values_for(o, channel, local));
                if before != values_for(new, channel, local) {
                    out.revalued.push(channel.clone());
                }
            }
        }
    }
    out
}

/// What became of an assignment offered to the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum TakenAssignment {
    /// Newer, accepted.
    Accepted(u64),
    /// The one in effect already.
    Unchanged,
    /// Refused; the one in effect stays.
    Refused(String),
}

impl Agent {
    /// The assignment in effect, if any.
    pub fn assignment(&self) -> Option<Assignment> {
        self.store.assignment().ok().flatten().map(|s| s.assignment)
    }

    /// The values substituted into a channel (`None`: substitution off or no assignment).
    pub(super) fn values(&self, channel: &str) -> Option<Values> {
        values_for(&self.assignment()?, channel, &self.config.local_values)
    }

    /// Whether a verified statement's channel and generation may run here: the assignment in
    /// effect lists the channel, at or below its pin. Without one: refused when
    /// `require_assignment` is set; otherwise the older rule (the hub offered it, or for
    /// imports, the config lists it or the hub offered it).
    pub(super) fn admit(&self, channel: &str, generation: u64, from_hub: bool) -> Result<(), String> {
        match self.assignment() {
            // Expired: what runs keeps running (re-applies, drift checks), nothing new is
            // taken until a fresh assignment arrives.
            Some(a) if a.expires.is_some_and(|e| Timestamp::now() >= e) => Err(format!(
                "the assignment in effect (sequence {}) expired at {}; nothing new is taken until a fresh one arrives",
                a.sequence,
                a.expires.map(|e| e.to_string()).unwrap_or_default()
            )),
            Some(a) => admit(&a, channel, generation),
            None if self.config.require_assignment => Err(format!(
                "no signed assignment for cluster {:?} has arrived yet, and require_assignment is set",
                self.config.cluster
            )),
            None if from_hub => Ok(()),
            None => self.check_assigned(channel),
        }
    }

    /// Verifies an assignment and, if it is newer than the one in effect, takes it: prunes
    /// or keeps the channels it drops, re-applies those whose values changed.
    pub async fn take_assignment(
        &self,
        source: &str,
        envelope: &Envelope,
    ) -> anyhow::Result<TakenAssignment> {
        let stored = self.store.assignment()?;
        let checked = self.trust().verify_assignment(envelope).and_then(|(a, digest)| {
            if stored.as_ref().is_some_and(|s| s.digest == digest) {
                return Ok(None);
            }
            self.trust().check_fresh(Timestamp::now())?;
            a.check_for(
                &self.config.cluster,
                &digest,
                stored.as_ref().map(|s| AcceptedAssignment {
                    sequence: s.assignment.sequence,
                    digest: s.digest,
                }),
                Timestamp::now(),
            )?;
            Ok(Some((a, digest)))
        });
        let (assignment, digest) = match checked {
            Ok(Some(pair)) => pair,
            Ok(None) => return Ok(TakenAssignment::Unchanged),
            Err(error) => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(%error, source, "Assignment refused; keeping the one in effect");
                let mut r = Self::base_report("unknown", ReportOutcome::Rejected);
                r.message = Some(format!("assignment from {source} refused: {error}"));
                self.report(r);
                return Ok(TakenAssignment::Refused(error.to_string()));
            }
        };
        let holds: Vec<String> = self.store.channels()?.into_keys().collect();
        let old = stored.map(|s| s.assignment);
        let changes = changes(old.as_ref(), &assignment, &holds, &self.config.local_values);
        let sequence = assignment.sequence;
        let channels: Vec<&str> = assignment.channels.iter().map(|c| c.channel.as_str()).collect();
        info!(sequence, ?channels, source, "Assignment accepted");
        self.store.put_assignment(&StoredAssignment {
            envelope: envelope.clone(),
            assignment,
            digest,
            at: Timestamp::now(),
        })?;
        // Imports refused as unassigned or above the pin may be admitted now.
        self.seen_imports.lock().expect("imports").clear();
        for (channel, policy) in changes.dropped {
            if let Err(error) = self.unassign(&channel, policy).await {
                warn!(%error, channel, "Handling an unassigned channel failed");
            }
        }
        for channel in changes.revalued {
            let has_bundle = self.store.channel(&channel)?.accepted.is_some();
            if has_bundle && let Err(error) = self.apply_channel(&channel).await {
                warn!(%error, channel, "Re-applying with the new values failed");
            }
        }
        self.write_snapshot();
        Ok(TakenAssignment::Accepted(sequence))
    }

    /// Takes an assignment from a file (an import medium): read within its cap, then as
    /// [`Self::take_assignment`].
    pub async fn import_assignment(&self, path: &std::path::Path) -> anyhow::Result<TakenAssignment> {
        let source = format!("import {}", path.display());
        let refuse = |error: String| {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(%error, file = %path.display(), "Assignment refused; keeping the one in effect");
            let mut r = Self::base_report("unknown", ReportOutcome::Rejected);
            r.message = Some(format!("{source} refused: {error}"));
            self.report(r);
            Ok(TakenAssignment::Refused(error))
        };
        let len = std::fs::symlink_metadata(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
            .len();
        if len > limits::MAX_ENVELOPE_BYTES as u64 {
            return refuse(format!(
                "{len} bytes, more than an assignment envelope may be ({})",
                limits::MAX_ENVELOPE_BYTES
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        match Envelope::from_json(&bytes) {
            Ok(envelope) => self.take_assignment(&source, &envelope).await,
            Err(error) => refuse(error.to_string()),
        }
    }

    /// A channel is no longer assigned: delete what it applied (`prune`) or leave it
    /// (`keep`); either way it is no longer enforced. The accepted generation stays
    /// recorded, so an older bundle cannot come back if the channel is assigned again.
    async fn unassign(&self, channel: &str, policy: OnUnassign) -> anyhow::Result<()> {
        let _guard = self.apply_lock.lock().await;
        let mut state = self.store.channel(channel)?;
        self.retries.lock().expect("retries").remove(channel);
        if policy == OnUnassign::Keep {
            warn!(
                channel,
                "Channel no longer assigned: its objects are kept and no longer enforced"
            );
            state.drift.clear();
            self.store.put_channel(channel, &state)?;
            return Ok(());
        }
        let previous = match (&self.applier, state.inventory.is_empty()) {
            (Applier::Kube(k), true) => k.load_inventory(channel).await.unwrap_or_default(),
            _ => state.inventory.clone(),
        };
        let empty = Bundle {
            manifest: BundleManifest {
                format_version: FORMAT_VERSION,
                channel: channel.to_owned(),
                source: Default::default(),
                default_namespace: None,
                files: Vec::new(),
                total_size: 0,
            },
            files: Vec::new(),
        };
        let outcome = match &self.applier {
            Applier::Kube(k) => k.apply(channel, None, &empty, &previous).await,
            Applier::Dir(d) => d.apply(channel, None, &empty, &previous),
        };
        let failed: BTreeMap<_, _> = outcome.errors.iter().map(|e| (&e.object, &e.message)).collect();
        state.inventory.retain(|o| failed.contains_key(o));
        if let Applier::Kube(k) = &self.applier
            && let Err(e) = k.save_inventory(channel, 0, &state.inventory).await
        {
            warn!(error = %e, channel, "Saving the inventory ConfigMap failed (the store has it)");
        }
        state.applied = None;
        state.drift.clear();
        state.health = None;
        state.unknown.clear();
        self.store.put_channel(channel, &state)?;
        if outcome.errors.is_empty() {
            info!(
                channel,
                pruned = outcome.pruned.len(),
                "Channel no longer assigned: its objects were pruned"
            );
        } else {
            warn!(channel, pruned = outcome.pruned.len(), failed = outcome.errors.len(), first = %outcome.errors[0].message, "Channel no longer assigned: some of its objects could not be pruned");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use skiff_proto::assignment::{ASSIGNMENT_TYPE, AssignedChannel};

    use super::*;

    fn entry(
        channel: &str,
        pin: Option<u64>,
        on_unassign: OnUnassign,
        values: &[(&str, &str)],
    ) -> AssignedChannel {
        AssignedChannel {
            channel: channel.to_owned(),
            max_generation: pin,
            on_unassign,
            substitute: !values.is_empty(),
            values: values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn assignment(sequence: u64, channels: Vec<AssignedChannel>) -> Assignment {
        Assignment {
            assignment_type: ASSIGNMENT_TYPE.to_owned(),
            cluster: "shop-1".to_owned(),
            sequence,
            issued: Timestamp::from_unix_seconds(1),
            expires: None,
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            channels,
            maintenance: None,
        }
    }

    #[test]
    fn admission_follows_channels_and_pins() {
        let a = assignment(
            1,
            vec![
                entry("app", Some(4), OnUnassign::Prune, &[]),
                entry("base", None, OnUnassign::Keep, &[]),
            ],
        );
        assert!(admit(&a, "app", 4).is_ok());
        assert!(
            admit(&a, "app", 5)
                .unwrap_err()
                .contains("above this cluster's pin 4")
        );
        assert!(admit(&a, "base", 99).is_ok());
        assert!(admit(&a, "other", 1).unwrap_err().contains("not assigned"));
    }

    #[test]
    fn values_rank_assignment_then_local_then_cluster() {
        let a = assignment(1, vec![entry("app", None, OnUnassign::Prune, &[("site", "hub")])]);
        let local: Values = [
            ("site".to_owned(), "local".to_owned()),
            ("secret".to_owned(), "s".to_owned()),
        ]
        .into();
        let v = values_for(&a, "app", &local).unwrap();
        assert_eq!(v["site"], "hub");
        assert_eq!(v["secret"], "s");
        assert_eq!(v["cluster_name"], "shop-1");
        assert_eq!(v["cluster_label_region"], "eu");
        let off = assignment(1, vec![entry("app", None, OnUnassign::Prune, &[])]);
        assert_eq!(values_for(&off, "app", &local), None, "substitution off");
        assert_eq!(values_for(&a, "other", &local), None, "not assigned");
    }

    #[test]
    fn local_values_never_leave_in_reports() {
        use skiff_proto::api::{Drift, DriftPath, ObjectError, ObjectRef, Outcome, Report};
        let local: Values = [
            ("token".to_owned(), "s3cret-value".to_owned()),
            ("n".to_owned(), "7".to_owned()),
        ]
        .into();
        let object = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("demo".into()),
            name: "a".into(),
        };
        let mut r = Report {
            instance: String::new(),
            seq: 0,
            time: Timestamp::from_unix_seconds(1),
            agent_version: String::new(),
            channel: "app".into(),
            outcome: Outcome::Checked,
            generation: None,
            sha256: None,
            commit: None,
            message: Some("failed: field is s3cret-value".into()),
            objects: None,
            errors: vec![ObjectError {
                object: object.clone(),
                message: "bad s3cret-value".into(),
            }],
            duration_ms: None,
            drift: vec![Drift {
                object,
                kind: "modified".into(),
                paths: vec![
                    DriftPath {
                        path: ".data.t".into(),
                        desired: Some("url=s3cret-value".into()),
                        live: Some("x".into()),
                    },
                    DriftPath {
                        path: ".data.n".into(),
                        desired: Some("7".into()),
                        live: Some("8".into()),
                    },
                ],
                corrected: false,
                reason: None,
            }],
            health: None,
            unknown: Vec::new(),
            deferred: None,
        };
        scrub(&mut r, &local);
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(r.drift[0].paths[0].desired, None);
        assert_eq!(r.drift[0].paths[0].live, Some("x".into()));
        assert_eq!(r.drift[0].paths[1].desired, None, "equal to a short local value");
        assert_eq!(r.message.as_deref(), Some("failed: field is (local value)"));
    }

    #[test]
    fn changes_name_dropped_and_revalued_channels() {
        let local = Values::new();
        let holds = vec!["app".to_owned(), "base".to_owned(), "legacy".to_owned()];
        let old = assignment(
            1,
            vec![
                entry("app", None, OnUnassign::Prune, &[("site", "a")]),
                entry("base", None, OnUnassign::Keep, &[]),
            ],
        );
        let new = assignment(2, vec![entry("app", None, OnUnassign::Prune, &[("site", "b")])]);
        let c = changes(Some(&old), &new, &holds, &local);
        assert_eq!(c.dropped, vec![("base".to_owned(), OnUnassign::Keep)]);
        assert_eq!(c.revalued, vec!["app".to_owned()]);
        // The first assignment keeps what it does not list.
        let c = changes(None, &new, &holds, &local);
        assert!(c.dropped.contains(&("legacy".to_owned(), OnUnassign::Keep)));
        // A channel assigned again is applied afresh.
        let c = changes(Some(&new), &old, &holds, &local);
        assert!(c.revalued.contains(&"base".to_owned()), "{c:?}");
        // A pin move alone changes no objects.
        let mut pinned = old.clone();
        pinned.channels[0].max_generation = Some(3);
        let c = changes(Some(&old), &pinned, &holds, &local);
        assert_eq!(c, Changes::default());
    }
}
