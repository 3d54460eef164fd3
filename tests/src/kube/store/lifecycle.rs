//! Deletion as kube-apiserver and its controllers carry it out: an object with finalizers is
//! only marked (`deletionTimestamp`) until its last finalizer is removed; deleting a Namespace
//! marks it `Terminating`, the namespace controller deletes its content, and the namespace
//! goes once nothing is left in it; while it terminates, nothing new may be created in it
//! (the `NamespaceLifecycle` admission plugin's 403). The controller's work is done at once
//! after each write here, where a real cluster does it a moment later: clients must (and
//! the conformance tests do) wait for it either way.

use serde_json::{Value, json};

use super::{ApiError, Key, ResourceType, State, now};

/// The finalizer kube-apiserver puts in every namespace's `spec.finalizers`.
const NAMESPACE_FINALIZER: &str = "kubernetes";

fn finalizers(object: &Value, pointer: &str) -> Vec<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn is_namespace(rt: &ResourceType) -> bool {
    rt.kind == "Namespace" && rt.group.is_empty()
}

impl State {
    /// DELETE one object. Without finalizers it goes at once (a `Status` answer); with
    /// finalizers it is marked and returned. A Namespace is marked `Terminating` and emptied
    /// by the namespace controller; deleting it again while its content is being removed is
    /// a 409, as on a real server. Deleting a CRD deletes its resources and their objects.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let existing = self.existing(rt, ns, name)?;
        let namespace = is_namespace(rt);
        if namespace
            && deleting(&existing.object)
            && !finalizers(&existing.object, "/spec/finalizers").is_empty()
        {
            return Err(ApiError {
                details: Some(json!({"name": name, "kind": "namespaces"})),
                ..ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on namespaces \"{name}\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."
                    ),
                )
            });
        }
        let held = namespace || !finalizers(&existing.object, "/metadata/finalizers").is_empty();
        if held {
            let mut marked = existing.clone();
            if !deleting(&marked.object) {
                marked.object["metadata"]["deletionTimestamp"] = json!(now());
                marked.object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if namespace {
                    marked.object["status"]["phase"] = json!("Terminating");
                }
                if !dry_run {
                    self.rv += 1;
                    marked.object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                }
            }
            let out = Self::render(rt, &marked);
            if !dry_run {
                self.put(rt, ns, name, marked);
                self.run_namespace_controller();
            }
            return Ok(out);
        }

        let uid = existing
            .object
            .pointer("/metadata/uid")
            .cloned()
            .unwrap_or(Value::Null);
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": uid},
        });
        if dry_run {
            return Ok(status);
        }
        self.remove(rt, ns, name);
        if rt.kind == "CustomResourceDefinition" && rt.group == "apiextensions.k8s.io" {
            let removed: Vec<ResourceType> = self
                .types
                .iter()
                .filter(|t| t.crd.as_deref() == Some(name))
                .cloned()
                .collect();
            self.types.retain(|t| t.crd.as_deref() != Some(name));
            for t in removed {
                self.objects.remove(&(t.group, t.plural));
            }
        }
        self.run_namespace_controller();
        Ok(status)
    }

    /// PUT `/api/v1/namespaces/{name}/finalize`: sets the namespace's `spec.finalizers`
    /// (how a stuck namespace is let go by hand); nothing else of the body is taken.
    pub fn finalize_namespace(&mut self, name: &str, body: &Value, dry_run: bool) -> Result<Value, ApiError> {
        let rt = self.find("", "v1", "namespaces").expect("namespaces");
        let mut stored = self.existing(&rt, None, name)?;
        let wanted = body
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        if !wanted.is_array() {
            return Err(ApiError::invalid(
                &rt,
                name,
                "spec.finalizers",
                "Invalid value: must be a list",
            ));
        }
        stored.object["spec"]["finalizers"] = wanted;
        if !dry_run {
            self.rv += 1;
            stored.object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        }
        let out = Self::render(&rt, &stored);
        if !dry_run {
            self.put(&rt, None, name, stored);
            self.run_namespace_controller();
        }
        Ok(out)
    }

    /// What the `NamespaceLifecycle` admission plugin refuses: new objects in a namespace
    /// that is being deleted.
    pub(super) fn check_namespace_open(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let Some(ns) = ns.filter(|_| rt.namespaced) else {
            return Ok(());
        };
        let ns_type = self.find("", "v1", "namespaces").expect("namespaces");
        match self.stored(&ns_type, None, ns) {
            Some(n) if deleting(&n.object) => Err(ApiError {
                details: Some(
                    json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": [{
                        "reason": "NamespaceTerminating",
                        "message": format!("namespace {ns} is being terminated"),
                        "field": "metadata.namespace",
                    }]}),
                ),
                ..ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified_plural()
                    ),
                )
            }),
            _ => Ok(()),
        }
    }

    /// Validation of finalizers on an object being deleted: they may only go.
    pub(super) fn check_finalizers(
        rt: &ResourceType,
        name: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        if !deleting(old) {
            return Ok(());
        }
        let before = finalizers(old, "/metadata/finalizers");
        let added: Vec<String> = finalizers(new, "/metadata/finalizers")
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid(
            rt,
            name,
            "metadata.finalizers",
            &format!(
                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
            ),
        ))
    }

    /// After a write: an object marked for deletion whose last finalizer went is deleted.
    pub(super) fn collect_if_finalized(&mut self, rt: &ResourceType, ns: Option<&str>, name: &str) {
        let done = self.stored(rt, ns, name).is_some_and(|s| {
            deleting(&s.object)
                && finalizers(&s.object, "/metadata/finalizers").is_empty()
                && !is_namespace(rt)
        });
        if done {
            self.remove(rt, ns, name);
        }
        self.run_namespace_controller();
    }

    fn put(&mut self, rt: &ResourceType, ns: Option<&str>, name: &str, stored: super::Stored) {
        let bucket = (rt.group.clone(), rt.plural.clone());
        let object = stored.object.clone();
        self.objects
            .entry(bucket.clone())
            .or_default()
            .insert(key(rt, ns, name), stored);
        self.record(&bucket, "MODIFIED", object);
    }

    fn remove(&mut self, rt: &ResourceType, ns: Option<&str>, name: &str) {
        self.drop_object(&(rt.group.clone(), rt.plural.clone()), &key(rt, ns, name));
    }

    /// The namespace controller, run to a fixed point: each terminating namespace's objects
    /// are deleted (those with finalizers marked), and a namespace with nothing left loses
    /// its `kubernetes` finalizer and goes; one with objects left says so in its conditions.
    fn run_namespace_controller(&mut self) {
        let ns_key: Key = (String::new(), "namespaces".to_owned());
        let terminating: Vec<String> = self
            .objects
            .get(&ns_key)
            .into_iter()
            .flat_map(|b| b.iter())
            .filter(|(_, s)| deleting(&s.object))
            .map(|((_, name), _)| name.clone())
            .collect();
        if terminating.is_empty() {
            return;
        }
        let namespaced: Vec<Key> = self
            .types
            .iter()
            .filter(|t| t.namespaced)
            .map(|t| (t.group.clone(), t.plural.clone()))
            .collect();
        for ns in terminating {
            let mut remaining: Vec<(String, Vec<String>)> = Vec::new();
            for bucket_key in &namespaced {
                let inside: Vec<(Key, Vec<String>, bool)> = self
                    .objects
                    .get(bucket_key)
                    .into_iter()
                    .flat_map(|b| b.iter())
                    .filter(|((ons, _), _)| ons == &ns)
                    .map(|(k, s)| {
                        (
                            k.clone(),
                            finalizers(&s.object, "/metadata/finalizers"),
                            deleting(&s.object),
                        )
                    })
                    .collect();
                for (key, held_by, marked) in inside {
                    if held_by.is_empty() {
                        self.drop_object(bucket_key, &key);
                        continue;
                    }
                    if !marked {
                        self.touch(bucket_key, &key, |o| {
                            o["metadata"]["deletionTimestamp"] = json!(now());
                            o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                        });
                    }
                    remaining.push((bucket_key.1.clone(), held_by));
                }
            }
            let ns_object_key = (String::new(), ns.clone());
            let Some(object) = self
                .objects
                .get(&ns_key)
                .and_then(|b| b.get(&ns_object_key))
                .map(|s| s.object.clone())
            else {
                continue;
            };
            if remaining.is_empty() {
                if finalizers(&object, "/spec/finalizers")
                    .iter()
                    .any(|f| f == NAMESPACE_FINALIZER)
                {
                    self.touch(&ns_key, &ns_object_key, |o| {
                        let left: Vec<Value> = finalizers(o, "/spec/finalizers")
                            .into_iter()
                            .filter(|f| f != NAMESPACE_FINALIZER)
                            .map(Value::from)
                            .collect();
                        o["spec"]["finalizers"] = Value::Array(left);
                    });
                }
                let done = self
                    .objects
                    .get(&ns_key)
                    .and_then(|b| b.get(&ns_object_key))
                    .is_some_and(|s| {
                        finalizers(&s.object, "/spec/finalizers").is_empty()
                            && finalizers(&s.object, "/metadata/finalizers").is_empty()
                    });
                if done {
                    self.drop_object(&ns_key, &ns_object_key);
                }
                continue;
            }
            let conditions = conditions(&remaining);
            let messages = |c: Option<&Value>| -> Vec<Value> {
                c.and_then(Value::as_array)
                    .map(|a| a.iter().map(|c| c["message"].clone()).collect())
                    .unwrap_or_default()
            };
            if messages(object.pointer("/status/conditions")) != messages(Some(&conditions)) {
                self.touch(&ns_key, &ns_object_key, |o| {
                    o["status"]["conditions"] = conditions
                });
            }
        }
    }

    /// Changes a stored object as a controller does: a new resourceVersion, a MODIFIED event.
    fn touch(&mut self, bucket: &Key, key: &Key, change: impl FnOnce(&mut Value)) {
        self.rv += 1;
        let rv = self.rv;
        let Some(stored) = self.objects.get_mut(bucket).and_then(|b| b.get_mut(key)) else {
            return;
        };
        change(&mut stored.object);
        stored.object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = stored.object.clone();
        self.record(bucket, "MODIFIED", object);
    }

    /// Removes a stored object: a new resourceVersion, a DELETED event.
    fn drop_object(&mut self, bucket: &Key, key: &Key) {
        let Some(stored) = self.objects.get_mut(bucket).and_then(|b| b.remove(key)) else {
            return;
        };
        self.rv += 1;
        let mut object = stored.object;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(bucket, "DELETED", object);
    }
}

fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> Key {
    (
        ns.filter(|_| rt.namespaced).unwrap_or_default().to_owned(),
        name.to_owned(),
    )
}

/// A terminating namespace's conditions while objects are left (the namespace controller's
/// `NamespaceContentRemaining` and `NamespaceFinalizersRemaining`).
fn conditions(remaining: &[(String, Vec<String>)]) -> Value {
    let mut by_resource: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut by_finalizer: std::collections::BTreeMap<&str, usize> = Default::default();
    for (plural, fins) in remaining {
        *by_resource.entry(plural).or_default() += 1;
        for f in fins {
            *by_finalizer.entry(f).or_default() += 1;
        }
    }
    let resources: Vec<String> = by_resource
        .iter()
        .map(|(r, n)| format!("{r} has {n} resource instances"))
        .collect();
    let finalizers: Vec<String> = by_finalizer
        .iter()
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect();
    let time = now();
    json!([
        {"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
         "message": format!("Some resources are remaining: {}", resources.join(", ")), "lastTransitionTime": time},
        {"type": "NamespaceFinalizersRemaining", "status": "True", "reason": "SomeFinalizersRemain",
         "message": format!("Some content in the namespace has finalizers remaining: {}", finalizers.join(", ")), "lastTransitionTime": time},
    ])
}
