//! The fleet's assignments: signing each cluster's when it changes (and before it
//! expires), the guard against mass unassignment at start, and the admin levers that change
//! an assignment (values, pins). What an assignment says is computed in [`crate::assign`].

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff_proto::keys::SigningKey;
use skiff_proto::statement::Timestamp;

use super::{Fleet, FleetError, State};
use crate::assign;
use crate::config::AssignmentConfig;
use crate::store::AssignmentRecord;

impl Fleet {
    /// Signs assignments from now on with `key`: each cluster's is brought up to date now
    /// (refused when that would unassign more than `max_unassign_percent` of a channel's
    /// clusters, unless `force`), then whenever a cluster, its labels, values or pins change.
    pub fn with_assignments(
        mut self,
        key: Arc<SigningKey>,
        config: AssignmentConfig,
        force: bool,
    ) -> Result<Self, FleetError> {
        self.signer = Some(key);
        self.assignment_config = config;
        let stored = self.store.assignments()?;
        let mut state = self.state.write().expect("fleet lock");
        state.assignments = stored.into_iter().collect();
        let before: BTreeMap<String, Vec<String>> = state
            .assignments
            .iter()
            .filter(|(n, _)| state.clusters.contains_key(*n))
            .map(|(n, r)| (n.clone(), r.channels.clone()))
            .collect();
        let after: BTreeMap<String, Vec<String>> = state
            .clusters
            .values()
            .map(|c| {
                let names = assign::content(c, &self.channels, &c.pins, &[])
                    .channels
                    .into_iter()
                    .map(|a| a.channel)
                    .collect();
                (c.name.clone(), names)
            })
            .collect();
        let mass = assign::mass_unassigns(&before, &after, self.assignment_config.max_unassign_percent);
        if !mass.is_empty() {
            let what = mass
                .iter()
                .map(|m| {
                    format!(
                        "channel {:?} from {} of its {} clusters",
                        m.channel, m.losing, m.had
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            if !force {
                return Err(FleetError::MassUnassign(what));
            }
            tracing::warn!(unassigning = %what, "Unassigning channels from many clusters at once (forced)");
        }
        self.refresh_assignments(&mut state, None)?;
        drop(state);
        Ok(self)
    }

    /// Signs a new assignment for every cluster (or `only` one) whose content changed or
    /// whose assignment is past half its life; one store transaction for all. Returns how
    /// many were signed. A cluster whose assignment would break the format's caps keeps its
    /// last one, and the reason is logged.
    pub(super) fn refresh_assignments(
        &self,
        state: &mut State,
        only: Option<&str>,
    ) -> Result<usize, FleetError> {
        self.refresh_where(state, |name| only.is_none_or(|o| o == name))
    }

    /// [`Self::refresh_assignments`] for the clusters `pick` names.
    pub(super) fn refresh_where(
        &self,
        state: &mut State,
        pick: impl Fn(&str) -> bool,
    ) -> Result<usize, FleetError> {
        let Some(key) = &self.signer else { return Ok(0) };
        let keyid = key.public_key().keyid();
        let now = Timestamp::now();
        let now_millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let expires_after = self.assignment_config.expires_after;
        let mut signed = Vec::new();
        for c in state.clusters.values().filter(|c| pick(&c.name)) {
            let mut a = assign::content(
                c,
                &self.channels,
                &self.effective_pins(state, c),
                &self.maintenance,
            );
            let content = assign::content_digest(&a);
            let previous = state.assignments.get(&c.name);
            let renew = |p: &AssignmentRecord| match (p.expires, expires_after) {
                (Some(e), Some(_)) => {
                    let half = e.unix_seconds().saturating_sub(p.issued.unix_seconds()) / 2;
                    now.unix_seconds() >= p.issued.unix_seconds() + half
                }
                (None, None) => false,
                _ => true, // the expiry setting changed
            };
            // Signed again also when the hub's key changed (a root may revoke the old one).
            let ours = |p: &AssignmentRecord| p.envelope.signatures.iter().any(|s| s.keyid == keyid);
            if previous.is_some_and(|p| p.content == content && !renew(p) && ours(p)) {
                continue;
            }
            a.sequence = assign::next_sequence(previous.map(|p| p.sequence), now_millis);
            a.issued = now;
            a.expires = expires_after.map(|d| now.plus(d));
            if let Err(error) = a.check_shape() {
                tracing::error!(cluster = %c.name, %error, "Assignment not signed: it would break the format's caps; the cluster keeps its last one");
                continue;
            }
            let envelope = a.sign(&[key]);
            if envelope.to_json().len() > skiff_proto::assignment::limits::MAX_ENVELOPE_BYTES {
                tracing::error!(cluster = %c.name, "Assignment not signed: larger than agents accept; the cluster keeps its last one");
                continue;
            }
            signed.push((
                c.name.clone(),
                AssignmentRecord {
                    sequence: a.sequence,
                    content,
                    channels: a.channels.iter().map(|x| x.channel.clone()).collect(),
                    issued: a.issued,
                    expires: a.expires,
                    envelope,
                },
            ));
        }
        if signed.is_empty() {
            return Ok(0);
        }
        self.store.put_assignments(&signed)?;
        let n = signed.len();
        for (name, record) in signed {
            state.assignments.insert(name, record);
        }
        Ok(n)
    }

    /// Signs fresh assignments for those past half their life (when they expire); returns
    /// how many. The hub calls this on a timer.
    pub fn renew_assignments(&self) -> Result<usize, FleetError> {
        if self.assignment_config.expires_after.is_none() {
            return Ok(0);
        }
        let mut state = self.state.write().expect("fleet lock");
        let n = self.refresh_assignments(&mut state, None)?;
        if n > 0 {
            self.changed(&mut state);
        }
        Ok(n)
    }

    /// Re-signs every cluster's assignment whose content changed (a benchmark and test
    /// hook for what a config change costs). Returns how many were signed.
    pub fn resign_all(&self) -> Result<usize, FleetError> {
        let mut state = self.state.write().expect("fleet lock");
        let n = self.refresh_assignments(&mut state, None)?;
        if n > 0 {
            self.changed(&mut state);
        }
        Ok(n)
    }

    /// A cluster's last signed assignment.
    pub fn assignment(&self, cluster: &str) -> Option<AssignmentRecord> {
        self.state
            .read()
            .expect("fleet lock")
            .assignments
            .get(cluster)
            .cloned()
    }

    /// Sets and removes (`None`) a cluster's values, for every channel or for one; returns
    /// the values now set there.
    pub fn set_values(
        &self,
        name: &str,
        channel: Option<&str>,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, FleetError> {
        use skiff_proto::assignment::limits;
        if let Some(c) = channel
            && !self.channels.iter().any(|x| x.name == c)
        {
            return Err(FleetError::Invalid(format!("channel {c:?} is not configured")));
        }
        for (k, v) in changes {
            skiff_proto::values::check_variable_name(k)
                .map_err(|why| FleetError::Invalid(format!("value name {k:?}: {why}")))?;
            if v.as_ref().is_some_and(|v| v.len() > limits::MAX_VALUE_BYTES) {
                return Err(FleetError::Invalid(format!(
                    "value {k:?}: more than {} bytes",
                    limits::MAX_VALUE_BYTES
                )));
            }
        }
        self.update_cluster(name, |record| {
            let values = match channel {
                Some(c) => record.channel_values.entry(c.to_owned()).or_default(),
                None => &mut record.values,
            };
            for (k, v) in changes {
                match v {
                    Some(v) => values.insert(k.clone(), v.clone()),
                    None => values.remove(k),
                };
            }
            if values.len() > limits::MAX_VALUES {
                return Err(FleetError::Invalid(format!(
                    "{} values, more than {}",
                    values.len(),
                    limits::MAX_VALUES
                )));
            }
            let now = values.clone();
            record.channel_values.retain(|_, v| !v.is_empty());
            Ok(now)
        })
    }

    /// Pins a cluster's channel at a generation (`None` unpins): the cluster runs nothing
    /// newer, and is served the newest generation at or below the pin the hub still holds.
    pub fn set_pin(&self, name: &str, channel: &str, pin: Option<u64>) -> Result<(), FleetError> {
        if !self.channels.iter().any(|x| x.name == channel) {
            return Err(FleetError::Invalid(format!(
                "channel {channel:?} is not configured"
            )));
        }
        if pin == Some(0) {
            return Err(FleetError::Invalid("a pin is a generation: 1 or more".to_owned()));
        }
        self.update_cluster(name, |record| {
            match pin {
                Some(p) => record.pins.insert(channel.to_owned(), p),
                None => record.pins.remove(channel),
            };
            Ok(())
        })
    }

    /// Overrides a cluster's maintenance windows until `until` (`None` ends the override):
    /// its agent applies newer generations at once meanwhile.
    pub fn set_apply_now(&self, name: &str, until: Option<Timestamp>) -> Result<(), FleetError> {
        self.update_cluster(name, |record| {
            record.apply_now_until = until;
            Ok(())
        })
    }
}
