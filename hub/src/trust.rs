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
