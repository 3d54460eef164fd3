//! Assignments as plain data: what a cluster runs, computed from the channel targets, the
//! values config and the cluster's own record; and the guard against a config change that
//! would unassign much of a channel at once. Signing and storing happen in [`crate::fleet`].

use std::collections::BTreeMap;

use skiff_proto::Sha256Digest;
use skiff_proto::assignment::{ASSIGNMENT_TYPE, AssignedChannel, Assignment};
use skiff_proto::statement::Timestamp;

use crate::config::{ChannelConfig, MaintenanceConfig};
use crate::store::ClusterRecord;
use skiff_proto::window::Maintenance;

/// The values of `channel` for `cluster`, least specific first: the channel's values, its
/// customizations whose selector the cluster matches (fewer selected labels first; of equal
/// ones, config order), the cluster's values, then the cluster's values for this channel.
pub fn values(channel: &ChannelConfig, cluster: &ClusterRecord) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = channel
        .values
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let mut matching: Vec<(usize, usize)> = channel
        .customizations
        .iter()
        .enumerate()
        .filter(|(_, z)| crate::config::selects(&z.selector, &cluster.labels))
        .map(|(i, z)| (z.selector.len(), i))
        .collect();
    matching.sort();
    for (_, i) in matching {
        out.extend(
            channel.customizations[i]
                .values
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone())),
        );
    }
    out.extend(cluster.values.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(own) = cluster.channel_values.get(&channel.name) {
        out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// What `cluster` is assigned, with sequence 0 and no times: the content that is signed
/// again only when it changes. `pins`: the highest generation per channel it may run (its
/// own pins, lowered by the channel's rollout).
pub fn content(
    cluster: &ClusterRecord,
    channels: &[ChannelConfig],
    pins: &BTreeMap<String, u64>,
    windows: &[MaintenanceConfig],
) -> Assignment {
    let mut assigned: Vec<AssignedChannel> = channels
        .iter()
        .filter(|c| c.targets.matches(&cluster.name, &cluster.labels))
        .map(|c| AssignedChannel {
            channel: c.name.clone(),
            max_generation: pins.get(&c.name).copied(),
            on_unassign: c.on_unassign,
            substitute: c.substitutes(),
            values: if c.substitutes() {
                values(c, cluster)
            } else {
                BTreeMap::new()
            },
        })
        .collect();
    assigned.sort_by(|a, b| a.channel.cmp(&b.channel));
    Assignment {
        assignment_type: ASSIGNMENT_TYPE.to_owned(),
        cluster: cluster.name.clone(),
        sequence: 0,
        issued: Timestamp::from_unix_seconds(0),
        expires: None,
        labels: cluster.labels.clone(),
        channels: assigned,
        maintenance: maintenance(windows, cluster),
    }
}

/// The maintenance windows of `cluster`: the first entry that picks it, with the cluster's
/// emergency override (`cluster apply-now`).
pub fn maintenance(windows: &[MaintenanceConfig], cluster: &ClusterRecord) -> Option<Maintenance> {
    let mut m = windows
        .iter()
        .find(|w| w.picks(&cluster.name, &cluster.labels))?
        .to_maintenance();
    m.apply_now_until = cluster.apply_now_until;
    Some(m)
}

/// The digest of an assignment's content (sequence and times left out).
pub fn content_digest(content: &Assignment) -> Sha256Digest {
    Sha256Digest::of(&content.to_payload())
}

/// The next sequence after `previous`: at least the time in milliseconds, so sequences keep
/// growing even if the hub's store is lost and rebuilt.
pub fn next_sequence(previous: Option<u64>, now_millis: u64) -> u64 {
    previous.map_or(1, |p| p.saturating_add(1)).max(now_millis)
}

/// One channel a change would take from many clusters at once.
#[derive(Debug, PartialEq, Eq)]
pub struct MassUnassign {
    /// The channel.
    pub channel: String,
    /// Clusters that had it.
    pub had: usize,
    /// Of those, clusters that would lose it.
    pub losing: usize,
}

/// Channels that would be unassigned from more than `max_percent` of their clusters (and
/// from more than one), comparing what each cluster was assigned (`before`) with what it
/// would be (`after`; clusters absent from it are removed, which is no unassignment).
pub fn mass_unassigns(
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
    max_percent: u8,
) -> Vec<MassUnassign> {
    let mut had: BTreeMap<&str, usize> = BTreeMap::new();
    let mut losing: BTreeMap<&str, usize> = BTreeMap::new();
    for (cluster, channels) in before {
        let Some(now) = after.get(cluster) else { continue };
        for c in channels {
            *had.entry(c).or_default() += 1;
            if !now.contains(c) {
                *losing.entry(c).or_default() += 1;
            }
        }
    }
    losing
        .into_iter()
        .filter_map(|(channel, losing)| {
            let had = had[channel];
            let allowed = (had * usize::from(max_percent) / 100).max(1);
            (losing > allowed).then(|| MassUnassign {
                channel: channel.to_owned(),
                had,
                losing,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Customization, ScalarText, Targets};

    fn channel(name: &str, labels: &[(&str, &str)]) -> ChannelConfig {
        let yaml = format!("name: {name}\nrepo: r\nbranch: main\n");
        let mut c: ChannelConfig = serde_json::from_value(
            skiff_proto::manifest::parse_yaml("c", &yaml).unwrap()[0]
                .value
                .clone(),
        )
        .unwrap();
        c.targets = Targets {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            clusters: Default::default(),
        };
        c
    }

    fn cluster(name: &str, labels: &[(&str, &str)]) -> ClusterRecord {
        ClusterRecord {
            name: name.to_owned(),
            token_hash: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            values: BTreeMap::new(),
            channel_values: BTreeMap::new(),
            pins: BTreeMap::new(),
            apply_now_until: None,
            created: Timestamp::from_unix_seconds(0),
            last_seen: None,
            legacy_reports: BTreeMap::new(),
        }
    }

    fn vals(pairs: &[(&str, &str)]) -> BTreeMap<String, ScalarText> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ScalarText((*v).to_owned())))
            .collect()
    }

    #[test]
    fn the_most_specific_value_wins() {
        let mut c = channel("shops", &[("tier", "shop")]);
        c.values = vals(&[("replicas", "1"), ("registry", "r.example"), ("site", "none")]);
        c.customizations = vec![
            Customization {
                name: "eu-big".into(),
                selector: [("region".into(), "eu".into()), ("size".into(), "big".into())].into(),
                values: vals(&[("replicas", "5")]),
            },
            Customization {
                name: "eu".into(),
                selector: [("region".into(), "eu".into())].into(),
                values: vals(&[("replicas", "2"), ("registry", "eu.example")]),
            },
        ];
        let small = cluster("a", &[("tier", "shop"), ("region", "eu")]);
        let big = cluster("b", &[("tier", "shop"), ("region", "eu"), ("size", "big")]);
        let us = cluster("c", &[("tier", "shop"), ("region", "us")]);
        assert_eq!(values(&c, &small)["replicas"], "2");
        assert_eq!(values(&c, &big)["replicas"], "5", "two selected labels beat one");
        assert_eq!(values(&c, &big)["registry"], "eu.example");
        assert_eq!(values(&c, &us)["replicas"], "1");
        let mut own = big.clone();
        own.values.insert("site".into(), "b-17".into());
        own.channel_values
            .insert("shops".into(), [("replicas".to_owned(), "9".to_owned())].into());
        assert_eq!(values(&c, &own)["site"], "b-17");
        assert_eq!(values(&c, &own)["replicas"], "9", "the cluster's own values win");
    }

    #[test]
    fn content_changes_only_with_what_it_says() {
        let mut c = channel("shops", &[("tier", "shop")]);
        c.values = vals(&[("x", "1")]);
        let other = channel("other", &[("tier", "depot")]);
        let channels = vec![other, c];
        let a = cluster("a", &[("tier", "shop")]);
        let content_a = content(&a, &channels, &a.pins, &[]);
        assert_eq!(content_a.channels.len(), 1);
        assert!(content_a.channels[0].substitute);
        assert_eq!(
            content_digest(&content(&a, &channels, &a.pins, &[])),
            content_digest(&content_a)
        );
        let mut pinned = a.clone();
        pinned.pins.insert("shops".into(), 3);
        assert_ne!(
            content_digest(&content(&pinned, &channels, &pinned.pins, &[])),
            content_digest(&content_a)
        );
        let mut relabelled = a.clone();
        relabelled.labels.insert("region".into(), "eu".into());
        assert_ne!(
            content_digest(&content(&relabelled, &channels, &relabelled.pins, &[])),
            content_digest(&content_a)
        );
        let moved = cluster("a", &[("tier", "depot")]);
        assert_eq!(
            content(&moved, &channels, &moved.pins, &[]).channels[0].channel,
            "other"
        );
    }

    #[test]
    fn sequences_only_grow() {
        assert_eq!(next_sequence(None, 0), 1);
        assert_eq!(next_sequence(Some(7), 0), 8);
        assert_eq!(next_sequence(Some(7), 1_000), 1_000);
        assert_eq!(next_sequence(Some(5_000), 1_000), 5_001);
    }

    #[test]
    fn the_guard_counts_clusters_losing_a_channel() {
        let before: BTreeMap<String, Vec<String>> = (0..10)
            .map(|i| (format!("c{i}"), vec!["shops".to_owned()]))
            .collect();
        let mut after = before.clone();
        for i in 0..5 {
            after.insert(format!("c{i}"), vec![]);
        }
        assert!(mass_unassigns(&before, &after, 50).is_empty(), "half is allowed");
        after.insert("c5".into(), vec![]);
        assert_eq!(
            mass_unassigns(&before, &after, 50),
            vec![MassUnassign {
                channel: "shops".into(),
                had: 10,
                losing: 6
            }]
        );
        // A single-cluster channel may always move; removed clusters do not count.
        let one: BTreeMap<String, Vec<String>> = [("c0".to_owned(), vec!["solo".to_owned()])].into();
        assert!(mass_unassigns(&one, &[("c0".to_owned(), vec![])].into(), 0).is_empty());
        assert!(mass_unassigns(&before, &BTreeMap::new(), 0).is_empty());
    }
}
