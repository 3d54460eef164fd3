//! `cluster render`: exactly the objects a cluster would apply — its assigned channels at the
//! generation it is served, values substituted as its agent substitutes them — so an operator
//! can check a site before committing or before changing its values.

use serde::{Deserialize, Serialize};
use skiff_proto::bundle::{Limits, read_bundle};
use skiff_proto::objects::{builtin_cluster_scoped, objects};
use skiff_proto::values::cluster_variables;

use crate::assign;
use crate::fleet::{Fleet, FleetError};

/// One channel as a cluster would apply it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenderedChannel {
    /// The channel.
    pub channel: String,
    /// The generation the cluster is served (none built yet, or none at or below its pin).
    pub generation: Option<u64>,
    /// Whether values are substituted.
    pub substitute: bool,
    /// The objects, in bundle order.
    pub objects: Vec<serde_json::Value>,
    /// Why objects could not be read (an unset variable names file, document, line, path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Renders `cluster`'s assigned channels (or only `channel`). Values only the site's local
/// values file holds are unknown here: a reference to one shows as an error.
pub fn render(
    fleet: &Fleet,
    cluster: &str,
    channel: Option<&str>,
) -> Result<Vec<RenderedChannel>, FleetError> {
    let record = fleet
        .cluster_record(cluster)
        .ok_or_else(|| FleetError::UnknownCluster(cluster.to_owned()))?;
    let content = assign::content(
        &record,
        fleet.channel_configs(),
        &fleet.pins_of(&record),
        fleet.maintenance_configs(),
    );
    if let Some(c) = channel
        && content.channel(c).is_none()
    {
        return Err(FleetError::Invalid(format!(
            "channel {c:?} is not assigned to cluster {cluster:?}"
        )));
    }
    let mut out = Vec::new();
    for entry in content
        .channels
        .iter()
        .filter(|e| channel.is_none_or(|c| c == e.channel))
    {
        let served = fleet
            .channel(&entry.channel)
            .and_then(|r| r.served_at_most(entry.max_generation));
        let mut rendered = RenderedChannel {
            channel: entry.channel.clone(),
            generation: served.as_ref().map(|s| s.generation),
            substitute: entry.substitute,
            objects: Vec::new(),
            errors: Vec::new(),
        };
        if let Some(served) = served {
            let bundle = fleet
                .store()
                .read_blob(&served.sha256)
                .map_err(FleetError::from)
                .and_then(|bytes| {
                    read_bundle(bytes.as_slice(), &Limits::default())
                        .map_err(|e| FleetError::Invalid(e.to_string()))
                })?;
            let values = entry.substitute.then(|| {
                let mut v = cluster_variables(&content.cluster, &content.labels);
                v.extend(entry.values.clone());
                v
            });
            let namespaced = |api: &str, kind: &str| !builtin_cluster_scoped(api, kind);
            match objects(&bundle, &entry.channel, values.as_ref(), &namespaced) {
                Ok(objs) => rendered.objects = objs.into_iter().map(|o| o.value).collect(),
                Err(errors) => rendered.errors = errors.iter().map(ToString::to_string).collect(),
            }
        }
        out.push(rendered);
    }
    Ok(out)
}
