//! Listing a channel's objects per kind by its label, page by page: resourceVersions from
//! metadata-only lists for drift checks, health from full lists a page at a time.

use std::collections::HashMap;

use kube::api::{Api, DynamicObject};
use kube::discovery::Scope;
use serde_json::Value;

use super::{Failure, KubeApplier, describe};

/// Objects listed in one page of a drift check's list requests.
pub(super) const LIST_PAGE: u32 = 500;
/// Objects in one page of a full list (health): whole objects are larger, a page is what
/// is held while it is read.
const FULL_PAGE: u32 = 100;

/// What a drift check's list found of one object.
pub(super) enum Listed {
    /// Listed with the channel label, at this resourceVersion.
    Version(String),
    /// Not listed: deleted, or its label removed (asked for by name).
    Absent,
    /// Its kind could not be listed: asked for by name.
    Unknown,
}

/// An object's key within its kind: (namespace, name).
pub(super) type Key = (Option<String>, String);

/// Lists the objects carrying `labels` page by page (metadata only when `metadata`),
/// handing each to `each`; no page is kept.
async fn list_pages(
    api: &Api<DynamicObject>,
    labels: &str,
    metadata: bool,
    each: &mut (dyn FnMut(DynamicObject) + Send),
) -> Result<(), Failure> {
    let page_size = if metadata { LIST_PAGE } else { FULL_PAGE };
    let mut params = kube::api::ListParams::default().labels(labels).limit(page_size);
    loop {
        let next = if metadata {
            // Read into a struct of the three fields a check needs: serde skips the rest
            // (managedFields above all, often most of an object's metadata) without building it.
            let request = kube::core::Request::new(api.resource_url())
                .list_metadata(&params)
                .map_err(|e| describe(&kube::Error::BuildRequest(e)))?;
            let page: LeanList = api
                .clone()
                .into_client()
                .request(request)
                .await
                .map_err(|e| describe(&e))?;
            for o in page.items {
                each(DynamicObject {
                    types: None,
                    metadata: kube::api::ObjectMeta {
                        name: o.metadata.name,
                        namespace: o.metadata.namespace,
                        resource_version: o.metadata.resource_version,
                        ..Default::default()
                    },
                    data: Value::Null,
                });
            }
            page.metadata.continue_
        } else {
            let page = api.list(&params).await.map_err(|e| describe(&e))?;
            let next = page.metadata.continue_.clone();
            page.items.into_iter().for_each(&mut *each);
            next
        };
        match next.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// A metadata-only list page, as little of it as a drift check reads.
#[derive(serde::Deserialize)]
struct LeanList {
    #[serde(default)]
    metadata: LeanListMeta,
    #[serde(default)]
    items: Vec<LeanItem>,
}

#[derive(Default, serde::Deserialize)]
struct LeanListMeta {
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

#[derive(serde::Deserialize)]
struct LeanItem {
    metadata: LeanMeta,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
}

impl KubeApplier {
    /// The resourceVersion of each object of a kind carrying the channel label, from a
    /// metadata-only list (`PartialObjectMetadataList`, pages of 500): a few hundred bytes
    /// per object whatever its size. Cluster-wide first; where the agent may not list
    /// cluster-wide, per namespace in `namespaces`.
    pub(super) async fn list_versions(
        &self,
        channel: &str,
        api_version: &str,
        kind: &str,
        namespaces: &[Option<String>],
    ) -> Result<HashMap<Key, String>, Failure> {
        let (ar, caps) = self.resolve(api_version, kind).await.map_err(|e| describe(&e))?;
        let labels = format!("{}={channel}", super::super::CHANNEL_LABEL);
        let mut out = HashMap::new();
        let mut each = |meta: kube::api::ObjectMeta| {
            if let Some(name) = meta.name {
                out.insert((meta.namespace, name), meta.resource_version.unwrap_or_default());
            }
        };
        let all = self.api(&ar, &caps, None);
        match list_pages(&all, &labels, true, &mut |o| each(o.metadata)).await {
            Err(_) if caps.scope == Scope::Namespaced => {
                for ns in namespaces {
                    let api = self.api(&ar, &caps, ns.as_deref());
                    list_pages(&api, &labels, true, &mut |o| each(o.metadata)).await?;
                }
            }
            other => other?,
        }
        Ok(out)
    }

    /// The health of each object of a kind carrying the channel label that `wanted` names,
    /// read from full lists one page at a time (a page's objects are dropped once read).
    pub(super) async fn list_health(
        &self,
        channel: &str,
        api_version: &str,
        kind: &str,
        wanted: &std::collections::BTreeSet<Key>,
    ) -> Result<HashMap<Key, (&'static str, Option<String>)>, Failure> {
        let (ar, caps) = self.resolve(api_version, kind).await.map_err(|e| describe(&e))?;
        let labels = format!("{}={channel}", super::super::CHANNEL_LABEL);
        let mut out = HashMap::new();
        let mut each = |o: DynamicObject| {
            let key = (
                o.metadata.namespace.clone(),
                o.metadata.name.clone().unwrap_or_default(),
            );
            if wanted.contains(&key) {
                let live = serde_json::to_value(&o).unwrap_or(Value::Null);
                out.insert(key, crate::drift::object_health(&live));
            }
        };
        let all = self.api(&ar, &caps, None);
        match list_pages(&all, &labels, false, &mut each).await {
            Err(_) if caps.scope == Scope::Namespaced => {
                let namespaces: std::collections::BTreeSet<&Option<String>> =
                    wanted.iter().map(|k| &k.0).collect();
                for ns in namespaces {
                    let api = self.api(&ar, &caps, ns.as_deref());
                    list_pages(&api, &labels, false, &mut each).await?;
                }
            }
            other => other?,
        }
        Ok(out)
    }
}
