//! The store's change log, which watches read: every write that reaches the store (a
//! create, an update, a controller's change, a deletion) as an ADDED, MODIFIED or DELETED
//! event with the resourceVersion it made. The last [`KEPT`] are kept; a watch from an
//! older resourceVersion gets the 410 `Expired` a real server gives once etcd compacted.

use serde_json::Value;

use super::{
    ApiError, Key, ResourceType, State, matches_fields, matches_labels, parse_field_selector,
    parse_label_selector,
};

/// Events kept.
pub const KEPT: usize = 4096;

/// A change as a watch sends it: ADDED, MODIFIED or DELETED, and the object.
pub type Change = (&'static str, Value);

/// One change.
pub struct Event {
    rv: u64,
    bucket: Key,
    kind: &'static str,
    object: Value,
}

impl State {
    /// Notes a change of an object of `bucket` (group, plural), made at the current
    /// resourceVersion.
    pub(super) fn record(&mut self, bucket: &Key, kind: &'static str, object: Value) {
        if self.events.len() >= KEPT {
            self.events.pop_front();
            self.events_dropped = true;
        }
        self.events.push_back(Event {
            rv: self.rv,
            bucket: bucket.clone(),
            kind,
            object,
        });
    }

    /// The changes of `rt`'s objects after resourceVersion `from` (in one namespace or all,
    /// by label and field selector), oldest first, and the resourceVersion they run to.
    pub fn changes_since(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
        from: u64,
    ) -> Result<(Vec<Change>, u64), ApiError> {
        if self.events_dropped
            && let Some(first) = self.events.front()
            && from + 1 < first.rv
        {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {from} ({})", first.rv - 1),
            ));
        }
        let labels = label_selector.map(parse_label_selector).transpose()?;
        let fields = field_selector.map(parse_field_selector).transpose()?;
        let bucket = (rt.group.clone(), rt.plural.clone());
        let changes = self
            .events
            .iter()
            .filter(|e| e.rv > from && e.bucket == bucket)
            .filter(|e| {
                ns.is_none_or(|n| e.object.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
            })
            .filter(|e| labels.as_ref().is_none_or(|sel| matches_labels(sel, &e.object)))
            .filter(|e| fields.as_ref().is_none_or(|sel| matches_fields(sel, &e.object)))
            .map(|e| (e.kind, e.object.clone()))
            .collect();
        Ok((changes, self.rv))
    }
}
