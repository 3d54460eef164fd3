//! The O(kinds) drift check against the full one: the agent lists a channel's objects per
//! kind and compares again only what changed since it last found it in sync; the result
//! must be exactly what comparing every object gives, on the same cluster states (edits by
//! other field managers, deletions, objects re-created under the same name, a removed
//! channel label). On the test server the requests are counted too; the same test runs on
//! a real cluster with SKIFF_TEST_KUBECONFIG.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_agent::apply::Checked;
use skiff_agent::apply::kube::KubeApplier;
use skiff_proto::api::ObjectRef;
use skiff_proto::bundle::{Bundle, Limits, Source, read_bundle, write_bundle};
use skiff_tests::cluster::{TestCluster, unique_name};

/// A Namespace, `maps` ConfigMaps (each with `pad` bytes of data more) and a Service.
fn bundle(channel: &str, ns: &str, maps: usize, pad: usize) -> Bundle {
    let mut files = BTreeMap::new();
    files.insert(
        "00-namespace.yaml".to_owned(),
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n").into_bytes(),
    );
    for i in 0..maps {
        files.insert(
            format!("cm-{i:03}.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: {ns}}}\ndata: {{a: \"{i}\", b: \"x\", pad: \"{}\"}}\n",
                "p".repeat(pad)
            )
            .into_bytes(),
        );
    }
    files.insert(
        "svc.yaml".to_owned(),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        )
        .into_bytes(),
    );
    let built = write_bundle(
        channel,
        Source::default(),
        Some(ns.to_owned()),
        &files,
        &Limits::default(),
    )
    .unwrap();
    read_bundle(built.bytes.as_slice(), &Limits::default()).unwrap()
}

/// What a check found, in a form to compare: each drifted object with its kind and paths,
/// each object's health, and how many could not be compared.
type Summary = (
    Vec<(ObjectRef, String, Vec<String>)>,
    Vec<(ObjectRef, String)>,
    usize,
);

fn summary(c: &Checked) -> Summary {
    let drift = c
        .drift
        .iter()
        .map(|d| {
            (
                d.object.clone(),
                d.kind.clone(),
                d.paths.iter().map(|p| p.path.clone()).collect(),
            )
        })
        .collect();
    let mut health: Vec<(ObjectRef, String)> =
        c.health.iter().map(|h| (h.0.clone(), h.1.to_owned())).collect();
    health.sort();
    (drift, health, c.unknown.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_check_finds_exactly_what_comparing_every_object_finds() {
    listing_check_equals_comparing_every_object(0).await;
}

/// A bundle larger than the applier's batch (4 MiB of manifests) is not kept parsed from
/// its scan: apply and the full check read it again a batch at a time. Same results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_for_a_bundle_read_a_batch_at_a_time() {
    listing_check_equals_comparing_every_object(150_000).await;
}

async fn listing_check_equals_comparing_every_object(pad: usize) {
    let c = TestCluster::start().await;
    let channel = unique_name("quiet");
    let ns = unique_name("quiet");
    let b = bundle(&channel, &ns, 30, pad);
    if pad > 0 {
        assert!(b.manifest.total_size > 4 << 20, "{}", b.manifest.total_size);
    }
    let quiet = KubeApplier::new(c.client.clone(), true, ns.clone());
    let full = KubeApplier::new(c.client.clone(), true, ns.clone()).without_memory();
    let applied = quiet.apply(&channel, None, &b, &[]).await;
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    let inventory = applied.applied.clone();
    let requests = || c.server.as_ref().map(|s| s.request_count());

    // Both checks, the listing one twice (the second from what the first remembered).
    let compare = |step: &'static str| {
        let (quiet, full, b, inventory, channel) = (&quiet, &full, &b, &inventory, &channel);
        async move {
            let reference = full.check(channel, None, b, false, inventory).await.unwrap();
            for round in 0..2 {
                let before = requests();
                let got = quiet.check(channel, None, b, false, inventory).await.unwrap();
                assert_eq!(summary(&got), summary(&reference), "{step}, round {round}");
                if let (Some(a), Some(z)) = (before, requests()) {
                    println!(
                        "{step}, round {round}: {} requests for {} objects",
                        z - a,
                        inventory.len()
                    );
                }
            }
            summary(&reference)
        }
    };
    let (drift, health, _) = compare("unchanged").await;
    assert!(drift.is_empty(), "{drift:?}");
    assert_eq!(health.len(), 32);
    // Unchanged and remembered: a list per kind, no dry-run.
    if let Some(s) = &c.server {
        let before = s.request_count();
        quiet.check(&channel, None, &b, false, &inventory).await.unwrap();
        let used = s.request_count() - before;
        assert!(
            used <= 4,
            "{used} requests for an unchanged channel of 32 objects in 3 kinds"
        );
    }

    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
    // Another manager takes over a field skiff set.
    maps.patch(
        "cm-1",
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "changed"}})),
    )
    .await
    .unwrap();
    // Another manager adds a field of its own (not drift).
    maps.patch(
        "cm-2",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"extra": "theirs"}})),
    )
    .await
    .unwrap();
    // A hand edit (merge patch) of a value.
    maps.patch(
        "cm-3",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"b": "hand"}})),
    )
    .await
    .unwrap();
    let (drift, _, _) = compare("edited by others").await;
    let drifted: Vec<&str> = drift.iter().map(|d| d.0.name.as_str()).collect();
    assert_eq!(drifted, ["cm-1", "cm-3"], "{drift:?}");

    // Deleted; and deleted then re-created under the same name with other content.
    maps.delete("cm-4", &DeleteParams::default()).await.unwrap();
    maps.delete("cm-5", &DeleteParams::default()).await.unwrap();
    let mut again: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cm-5", "namespace": ns, "labels": {"skiff.dev/channel": channel}},
        "data": {"a": "5", "b": "recreated"}
    }))
    .unwrap();
    again.metadata.resource_version = None;
    maps.create(&PostParams::default(), &again).await.unwrap();
    // The channel label taken off (the object drops out of the list).
    maps.patch(
        "cm-6",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"skiff.dev/channel": null}}})),
    )
    .await
    .unwrap();
    let (drift, _, _) = compare("deleted, re-created, unlabelled").await;
    let kinds: BTreeMap<&str, &str> = drift.iter().map(|d| (d.0.name.as_str(), d.1.as_str())).collect();
    assert_eq!(kinds.get("cm-4"), Some(&"missing"), "{drift:?}");
    assert_eq!(kinds.get("cm-5"), Some(&"modified"), "{drift:?}");
    assert_eq!(kinds.get("cm-6"), Some(&"modified"), "{drift:?}");

    // Healed by the listing check: then both agree on no drift again.
    let healed = quiet.check(&channel, None, &b, true, &inventory).await.unwrap();
    assert!(
        healed
            .drift
            .iter()
            .all(|d| d.corrected || d.kind == "unreconcilable"),
        "{:?}",
        healed.drift
    );
    let (drift, _, _) = compare("after healing").await;
    assert!(drift.is_empty(), "{drift:?}");
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(c.client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
}
