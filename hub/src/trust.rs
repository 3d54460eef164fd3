//! The hub's side of the trust root (`proto/FORMAT.md` §9): the chain of roots it serves,
//! read from a folder of `<version>.root.json` files (written by `skiff-hub root …`, which
//! works offline), checked as agents check it; whether the hub's own key may sign under the
//! newest root; and signing current bundles again when the hub's key changed, so a later
//! root can revoke the old key without stranding what sites run.

use std::path::Path;

use skiff_proto::dsse::Envelope;
use skiff_proto::keys::{PublicKey, SigningKey};
use skiff_proto::root::{self, Root};
use skiff_proto::statement::{Statement, Timestamp};

use crate::config::ChannelConfig;
use crate::fleet::{Fleet, FleetError};

/// Most root files read from the folder.
const MAX_ROOT_FILES: usize = 4096;

/// Reads and checks the chain in `dir`: the lowest version is taken as given (it must be
/// signed by its own root keys), every later one must follow it as an agent would walk
/// it. Returns the chain, oldest first; the error names the file.
pub fn load_chain(dir: &Path) -> Result<Vec<(Root, Envelope)>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("reading trust_root folder {}: {e}", dir.display()))?;
    let mut envelopes: Vec<(u64, std::path::PathBuf, Envelope)> = Vec::new();
    for e in entries.flatten().take(MAX_ROOT_FILES) {
        let path = e.path();
        if !path.to_string_lossy().ends_with(".root.json") {
            continue;
        }
        let bytes = read_capped(&path)?;
        let envelope = root::read_envelope(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let version = root::peek_version(&envelope)
            .ok_or_else(|| format!("{}: not a root (no version)", path.display()))?;
        envelopes.push((version, path, envelope));
    }
    envelopes.sort_by_key(|(v, _, _)| *v);
    let Some((_, first_path, first)) = envelopes.first() else {
        return Err(format!(
            "trust_root folder {} holds no *.root.json",
            dir.display()
        ));
    };
    let first_root = root::verify_initial(first).map_err(|e| format!("{}: {e}", first_path.display()))?;
    let mut chain = vec![(first_root, first.clone())];
    for (_, path, e) in &envelopes[1..] {
        let current = &chain.last().expect("one").0;
        let next = root::verify_next(current, e).map_err(|err| format!("{}: {err}", path.display()))?;
        chain.push((next, e.clone()));
    }
    Ok(chain)
}

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > root::limits::MAX_ENVELOPE_BYTES as u64 {
        return Err(format!(
            "{}: {len} bytes, more than a root may be ({})",
            path.display(),
            root::limits::MAX_ENVELOPE_BYTES
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether `key` signs bundles and assignments under `root`; the error says what to do.
pub fn check_signer(root: &Root, key: &PublicKey) -> Result<(), String> {
    let id = key.keyid();
    for (what, role) in [("bundles", &root.bundles), ("assignments", &root.assignments)] {
        if !role.keys.contains(&id) {
            return Err(format!(
                "the hub's signing key {} is not among the {what} signers of trust root version {}: agents would refuse what it signs; rotate the root to add it (skiff-hub root rotate --signer …) or start with a key it names",
                &id[..16],
                root.version
            ));
        }
    }
    if root.assignments.threshold > 1 {
        return Err(format!(
            "trust root version {} wants {} signatures on assignments: the hub signs them alone, as labels, values, pins and rollout steps change; keep the assignments threshold at 1 (two-person rules apply to bundles, per channel)",
            root.version, root.assignments.threshold
        ));
    }
    Ok(())
}

/// Channels whose bundles need more signers than the hub's key alone, with the role.
pub fn needs_more_signers<'a>(root: &'a Root, key: &PublicKey) -> Vec<(&'a str, &'a root::Role)> {
    let id = key.keyid();
    root.channels
        .iter()
        .filter(|(_, role)| {
            let ours = usize::from(role.keys.contains(&id));
            ours < role.threshold
        })
        .map(|(c, r)| (c.as_str(), r))
        .collect()
}

/// Signs the current bundle of every channel again, as a new generation, when its statement
/// carries no signature by `key` (the hub's key changed): the same bytes, so agents apply
/// nothing, but a root that later revokes the old key leaves every site's bundle valid.
/// Returns the channels signed again.
pub fn resign_current(
    fleet: &Fleet,
    channels: &[ChannelConfig],
    key: &SigningKey,
) -> Result<Vec<String>, FleetError> {
    let id = key.public_key().keyid();
    let mut out = Vec::new();
    for c in channels {
        let Some(mut record) = fleet.channel(&c.name) else {
            continue;
        };
        let Some(envelope) = record.envelope.clone() else {
            continue;
        };
        if envelope.signatures.iter().any(|s| s.keyid == id) {
            continue;
        }
        // Our own store's statement: read to carry its bundle and commit over.
        let Ok(old) = envelope
            .payload_bytes()
            .map_err(|e| e.to_string())
            .and_then(|p| serde_json::from_slice::<Statement>(&p).map_err(|e| e.to_string()))
        else {
            continue;
        };
        let mut statement = Statement::new(old.bundle, &c.name, record.generation + 1, old.commit.clone());
        statement.expires = c.expires_after.map(|d| Timestamp::now().plus(d));
        record.keep_current();
        record.generation = statement.generation;
        record.envelope = Some(Envelope::sign_statement(&statement, &[key]));
        record.updated = Some(Timestamp::now());
        fleet.set_channel(&c.name, record)?;
        tracing::info!(channel = %c.name, generation = statement.generation, "Current bundle signed again with the hub's key (its statement carried no signature by it)");
        out.push(c.name.clone());
    }
    Ok(out)
}

/// A generation waiting for signatures, as `status` and `skiff-hub sign` see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// The channel.
    pub channel: String,
    /// The generation.
    pub generation: u64,
    /// Source commit.
    pub commit: Option<String>,
    /// Bundle digest.
    pub sha256: skiff_proto::Sha256Digest,
    /// The statement with its signatures so far (what a signer signs).
    pub envelope: Envelope,
    /// Signatures the channel needs.
    pub threshold: usize,
    /// Key ids of the channel's signers that signed.
    pub signed: Vec<String>,
    /// Key ids of the channel's signers that did not yet.
    pub missing: Vec<String>,
    /// Whether it is served now (enough signatures).
    #[serde(default)]
    pub served: bool,
}

fn waiting_of(channel: &str, p: &crate::store::PendingBuild, role: &root::Role, root: &Root) -> Waiting {
    let payload = p.envelope.payload_bytes().unwrap_or_default();
    let message = skiff_proto::dsse::pae(&p.envelope.payload_type, &payload);
    let signed: Vec<String> = role
        .keys
        .iter()
        .filter(|id| {
            p.envelope.signatures.iter().any(|s| {
                s.keyid == **id
                    && root.public_key(id).is_some_and(|k| {
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &s.sig)
                            .is_ok_and(|sig| k.verify(&message, &sig))
                    })
            })
        })
        .cloned()
        .collect();
    Waiting {
        channel: channel.to_owned(),
        generation: p.generation,
        commit: p.commit.clone(),
        sha256: p.sha256,
        envelope: p.envelope.clone(),
        threshold: role.threshold,
        missing: role
            .keys
            .iter()
            .filter(|k| !signed.contains(k))
            .cloned()
            .collect(),
        signed,
        served: false,
    }
}

/// Every generation waiting for signatures.
pub fn waiting(fleet: &Fleet) -> Vec<Waiting> {
    let Some(root) = fleet.newest_root() else {
        return Vec::new();
    };
    fleet
        .channel_configs()
        .iter()
        .filter_map(|c| {
            let p = fleet.channel(&c.name)?.pending?;
            Some(waiting_of(&c.name, &p, root.bundle_role(&c.name), &root))
        })
        .collect()
}

/// Adds a signature (by one of the channel's signers under the newest root) to the
/// generation of `channel` that waits; once enough signed, that generation is served.
pub fn add_signature(
    fleet: &Fleet,
    channel: &str,
    generation: u64,
    signature: skiff_proto::dsse::Signature,
) -> Result<Waiting, FleetError> {
    let invalid = |m: String| Err(FleetError::Invalid(m));
    let Some(root) = fleet.newest_root() else {
        return invalid("the hub serves no trust root: nothing waits for signatures".to_owned());
    };
    let Some(mut record) = fleet.channel(channel) else {
        return invalid(format!("channel {channel:?} is not configured"));
    };
    let Some(mut pending) = record.pending.clone() else {
        return invalid(format!(
            "channel {channel:?} has no generation waiting for signatures"
        ));
    };
    if pending.generation != generation {
        return invalid(format!(
            "channel {channel:?}: generation {} waits, not {generation} (a newer commit replaced it: sign that one)",
            pending.generation
        ));
    }
    let role = root.bundle_role(channel).clone();
    let Some(key) = role
        .keys
        .contains(&signature.keyid)
        .then(|| root.public_key(&signature.keyid))
        .flatten()
    else {
        return invalid(format!(
            "key {} is not a signer of channel {channel:?} under trust root version {}",
            signature.keyid.chars().take(16).collect::<String>(),
            root.version
        ));
    };
    let payload = pending
        .envelope
        .payload_bytes()
        .map_err(|e| FleetError::Invalid(e.to_string()))?;
    let message = skiff_proto::dsse::pae(&pending.envelope.payload_type, &payload);
    let sig = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &signature.sig)
        .map_err(|e| FleetError::Invalid(format!("signature is not base64: {e}")))?;
    if !key.verify(&message, &sig) {
        return invalid(format!(
            "the signature by {} does not verify over generation {generation} of channel {channel:?}",
            &signature.keyid[..16.min(signature.keyid.len())]
        ));
    }
    if !pending
        .envelope
        .signatures
        .iter()
        .any(|s| s.keyid == signature.keyid)
    {
        pending.envelope.signatures.push(signature);
    }
    let mut status = waiting_of(channel, &pending, &role, &root);
    if status.signed.len() >= role.threshold {
        tracing::info!(
            channel,
            generation,
            "Enough signatures: the waiting generation is served"
        );
        record.keep_current();
        record.generation = pending.generation;
        record.sha256 = Some(pending.sha256);
        record.size = pending.size;
        record.commit = pending.commit.clone();
        record.envelope = Some(pending.envelope.clone());
        record.content = pending.content;
        record.updated = Some(Timestamp::now());
        record.pending = None;
        status.served = true;
    } else {
        tracing::info!(
            channel,
            generation,
            missing = status.threshold - status.signed.len(),
            "Signature added; the generation still waits"
        );
        record.pending = Some(pending);
    }
    fleet.set_channel(channel, record)?;
    Ok(status)
}
