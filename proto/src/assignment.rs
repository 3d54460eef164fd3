//! The assignment: what the hub vouches one cluster runs (`FORMAT.md` §7): its channels, the
//! highest generation of each it may run, the values substituted into them, and what to do
//! with a channel once it is no longer assigned. Signed by the same trust set as bundles, in
//! a DSSE envelope of its own payload type, so a bundle's signature can never pass for one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Sha256Digest;
use crate::dsse::Envelope;
use crate::keys::SigningKey;
use crate::manifest::check_dns_label;
use crate::statement::{Timestamp, check_channel_name};
use crate::values::check_variable_name;

/// The `_type` of every v1 assignment.
pub const ASSIGNMENT_TYPE: &str = "https://skiff.dev/assignment/v1";

/// The DSSE payload type of an assignment.
pub const ASSIGNMENT_PAYLOAD_TYPE: &str = "application/vnd.skiff.assignment.v1+json";

/// Caps on an assignment, checked by hub (before signing) and agent (before use).
pub mod limits {
    /// Largest assignment envelope read from a hub, a mirror or a file.
    pub const MAX_ENVELOPE_BYTES: usize = 256 << 10;
    /// Most channels in one assignment.
    pub const MAX_CHANNELS: usize = 256;
    /// Most values per channel (the cluster's labels count separately).
    pub const MAX_VALUES: usize = 256;
    /// Longest value, in bytes.
    pub const MAX_VALUE_BYTES: usize = 4096;
    /// Most labels.
    pub const MAX_LABELS: usize = 64;
}

/// What becomes of a channel's objects when the channel is no longer assigned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnassign {
    /// Delete what the channel applied (what Flux, Argo CD and Fleet do).
    #[default]
    Prune,
    /// Leave the objects as they are, no longer enforced.
    Keep,
}

/// One assigned channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignedChannel {
    /// The channel.
    pub channel: String,
    /// The highest generation this cluster may run (0: none yet, while a rollout has not
    /// reached it); absent: whatever the channel's newest is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_generation: Option<u64>,
    /// What to do with the channel's objects once it is no longer assigned.
    #[serde(default)]
    pub on_unassign: OnUnassign,
    /// Whether `${name}` references in the channel's manifests are substituted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub substitute: bool,
    /// Values for substitution (the cluster's name and labels are added by the agent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

/// A signed assignment of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Assignment {
    /// Always [`ASSIGNMENT_TYPE`].
    #[serde(rename = "_type")]
    pub assignment_type: String,
    /// The cluster it is for.
    pub cluster: String,
    /// Only grows per cluster: an agent refuses any lower one (anti-rollback).
    pub sequence: u64,
    /// When it was signed.
    pub issued: Timestamp,
    /// From this instant on, agents refuse it (they keep running what they run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// The cluster's labels (variables `${cluster_label_<key>}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The channels it runs, sorted by name.
    pub channels: Vec<AssignedChannel>,
    /// When newer generations may be applied (§7.3); absent: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<crate::window::Maintenance>,
}

/// An assignment that breaks a rule of §7.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignmentError {
    /// Not the shape §7 describes.
    #[error("assignment is malformed: {0}")]
    Malformed(String),
    /// Signed for another cluster.
    #[error("assignment is for cluster {found:?}, this is {expected:?}")]
    WrongCluster {
        /// This cluster.
        expected: String,
        /// The cluster named.
        found: String,
    },
    /// Older than the one accepted.
    #[error(
        "assignment sequence {offered} is older than the accepted sequence {accepted} (a replayed assignment)"
    )]
    Rollback {
        /// Offered.
        offered: u64,
        /// Accepted.
        accepted: u64,
    },
    /// Same sequence, other content.
    #[error("assignment sequence {sequence} was accepted with other content")]
    SequenceReused {
        /// The sequence.
        sequence: u64,
    },
    /// Past its expiry.
    #[error("assignment expired at {expires} (now {now})")]
    Expired {
        /// When.
        expires: Timestamp,
        /// Now.
        now: Timestamp,
    },
}

/// The assignment an agent accepted last: its sequence and payload digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedAssignment {
    /// Its sequence.
    pub sequence: u64,
    /// SHA-256 of its payload bytes.
    pub digest: Sha256Digest,
}

impl Assignment {
    /// Canonical JSON bytes (field order fixed by this struct): the DSSE payload.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("assignment serializes")
    }

    /// Signs it.
    pub fn sign(&self, keys: &[&SigningKey]) -> Envelope {
        Envelope::sign(ASSIGNMENT_PAYLOAD_TYPE, &self.to_payload(), keys)
    }

    /// The entry of `channel`, if assigned.
    pub fn channel(&self, channel: &str) -> Option<&AssignedChannel> {
        self.channels
            .binary_search_by(|c| c.channel.as_str().cmp(channel))
            .ok()
            .map(|i| &self.channels[i])
    }

    /// Checks the shape: type, names, sorted unique channels, and the caps of [`limits`].
    pub fn check_shape(&self) -> Result<(), AssignmentError> {
        let bad = |m: String| Err(AssignmentError::Malformed(m));
        if self.assignment_type != ASSIGNMENT_TYPE {
            return bad(format!(
                "_type is {:?}, expected {ASSIGNMENT_TYPE:?}",
                self.assignment_type
            ));
        }
        if let Err(why) = check_dns_label(&self.cluster) {
            return bad(format!("cluster {:?}: {why}", self.cluster));
        }
        if self.sequence == 0 {
            return bad("sequence must be 1 or more".to_owned());
        }
        if self.labels.len() > limits::MAX_LABELS {
            return bad(format!(
                "{} labels, more than {}",
                self.labels.len(),
                limits::MAX_LABELS
            ));
        }
        if self.channels.len() > limits::MAX_CHANNELS {
            return bad(format!(
                "{} channels, more than {}",
                self.channels.len(),
                limits::MAX_CHANNELS
            ));
        }
        if let Some(m) = &self.maintenance
            && let Err(why) = m.check()
        {
            return bad(format!("maintenance: {why}"));
        }
        for pair in self.channels.windows(2) {
            if pair[0].channel >= pair[1].channel {
                return bad(format!(
                    "channels must be sorted and unique ({:?} then {:?})",
                    pair[0].channel, pair[1].channel
                ));
            }
        }
        for c in &self.channels {
            if let Err(why) = check_channel_name(&c.channel) {
                return bad(format!("channel {:?}: {why}", c.channel));
            }
            if c.values.len() > limits::MAX_VALUES {
                return bad(format!(
                    "channel {:?}: {} values, more than {}",
                    c.channel,
                    c.values.len(),
                    limits::MAX_VALUES
                ));
            }
            for (name, value) in &c.values {
                if let Err(why) = check_variable_name(name) {
                    return bad(format!("channel {:?}: value {name:?}: {why}", c.channel));
                }
                if value.len() > limits::MAX_VALUE_BYTES {
                    return bad(format!(
                        "channel {:?}: value {name:?} is {} bytes, more than {}",
                        c.channel,
                        value.len(),
                        limits::MAX_VALUE_BYTES
                    ));
                }
            }
        }
        Ok(())
    }

    /// What an agent checks before using an assignment: it is for `cluster`, not older than
    /// the accepted one (the same sequence only with the same payload), and not expired.
    pub fn check_for(
        &self,
        cluster: &str,
        payload_digest: &Sha256Digest,
        accepted: Option<AcceptedAssignment>,
        now: Timestamp,
    ) -> Result<(), AssignmentError> {
        if self.cluster != cluster {
            return Err(AssignmentError::WrongCluster {
                expected: cluster.to_owned(),
                found: self.cluster.clone(),
            });
        }
        if let Some(a) = accepted {
            if self.sequence < a.sequence {
                return Err(AssignmentError::Rollback {
                    offered: self.sequence,
                    accepted: a.sequence,
                });
            }
            if self.sequence == a.sequence && *payload_digest != a.digest {
                return Err(AssignmentError::SequenceReused {
                    sequence: self.sequence,
                });
            }
        }
        if let Some(expires) = self.expires
            && now >= expires
        {
            return Err(AssignmentError::Expired { expires, now });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Assignment {
        Assignment {
            assignment_type: ASSIGNMENT_TYPE.to_owned(),
            cluster: "shop-1".to_owned(),
            sequence: 5,
            issued: Timestamp::from_unix_seconds(1_795_964_645),
            expires: None,
            labels: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
            channels: vec![AssignedChannel {
                channel: "prod".to_owned(),
                max_generation: Some(7),
                on_unassign: OnUnassign::Prune,
                substitute: true,
                values: BTreeMap::from([("replicas".to_owned(), "2".to_owned())]),
            }],
            maintenance: None,
        }
    }

    #[test]
    fn a_typical_assignment_is_small_and_round_trips() {
        let a = sample();
        a.check_shape().unwrap();
        let json = a.to_payload();
        assert!(json.len() < 400, "{} bytes", json.len());
        let back: Assignment = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.channel("prod").unwrap().max_generation, Some(7));
        assert!(back.channel("dev").is_none());
    }

    #[test]
    fn checks_refuse_each_attack_with_its_own_error() {
        let a = sample();
        let d = Sha256Digest::of(&a.to_payload());
        let now = Timestamp::from_unix_seconds(1_795_964_700);
        assert!(a.check_for("shop-1", &d, None, now).is_ok());
        assert!(matches!(
            a.check_for("shop-2", &d, None, now),
            Err(AssignmentError::WrongCluster { .. })
        ));
        let newer = AcceptedAssignment {
            sequence: 6,
            digest: d,
        };
        assert!(matches!(
            a.check_for("shop-1", &d, Some(newer), now),
            Err(AssignmentError::Rollback {
                offered: 5,
                accepted: 6
            })
        ));
        let same_seq = AcceptedAssignment {
            sequence: 5,
            digest: Sha256Digest::of(b"other"),
        };
        assert!(matches!(
            a.check_for("shop-1", &d, Some(same_seq), now),
            Err(AssignmentError::SequenceReused { sequence: 5 })
        ));
        let mut expired = a.clone();
        expired.expires = Some(now);
        assert!(matches!(
            expired.check_for("shop-1", &d, None, now),
            Err(AssignmentError::Expired { .. })
        ));
    }

    #[test]
    fn shape_rules_hold() {
        let mut a = sample();
        a.channels.push(a.channels[0].clone());
        assert!(a.check_shape().is_err(), "duplicate channel");
        let mut a = sample();
        a.channels[0].values.insert("bad-name".to_owned(), "x".to_owned());
        assert!(a.check_shape().is_err(), "variable name");
        let mut a = sample();
        a.cluster = "Shop_1".to_owned();
        assert!(a.check_shape().is_err(), "cluster name");
        let mut a = sample();
        a.channels[0]
            .values
            .insert("big".to_owned(), "x".repeat(limits::MAX_VALUE_BYTES + 1));
        assert!(a.check_shape().is_err(), "value size");
    }
}
