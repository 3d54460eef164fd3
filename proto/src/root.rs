//! The trust root (`FORMAT.md` §9): one signed document naming the root keys (and how many
//! must sign the next root) and the keys that sign bundles and assignments (and how many
//! must sign, per channel if wanted). A new root is valid only when a threshold of the
//! previous root's keys *and* a threshold of its own root keys signed it; agents walk the
//! chain one version at a time, keep the highest, never go back, and refuse an expired one.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::dsse::{Envelope, decode_base64, pae};
use crate::keys::{PublicKey, SigningKey};
use crate::statement::{Timestamp, check_channel_name};
use crate::verify::MAX_SIGNATURES;

/// The `_type` of every v1 root.
pub const ROOT_TYPE: &str = "https://skiff.dev/root/v1";

/// The DSSE payload type of a root.
pub const ROOT_PAYLOAD_TYPE: &str = "application/vnd.skiff.root.v1+json";

/// Caps on roots, checked before the work.
pub mod limits {
    /// Largest root envelope (JSON).
    pub const MAX_ENVELOPE_BYTES: usize = 64 << 10;
    /// Most keys one root names.
    pub const MAX_KEYS: usize = 64;
    /// Most per-channel roles.
    pub const MAX_CHANNEL_ROLES: usize = 256;
    /// Most roots one walk takes (a chain longer than this is walked over several polls).
    pub const MAX_WALK: usize = 1024;
}

/// Keys allowed to sign one kind of document, and how many of them must.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Role {
    /// Key ids (each in the root's `keys`).
    pub keys: BTreeSet<String>,
    /// Distinct keys that must sign (1 to the number of keys).
    pub threshold: usize,
}

/// A root document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Root {
    /// Always [`ROOT_TYPE`].
    #[serde(rename = "_type")]
    pub root_type: String,
    /// 1 for the first root; each rotation adds one.
    pub version: u64,
    /// When it was signed.
    pub issued: Timestamp,
    /// From this instant on agents accept nothing new under it (a freeze attack ends here).
    pub expires: Timestamp,
    /// Every key the roles name: key id → base64 of the raw 32-byte Ed25519 public key.
    pub keys: BTreeMap<String, String>,
    /// Who signs the next root.
    pub root: Role,
    /// Who signs bundle statements (unless the channel has its own role).
    pub bundles: Role,
    /// Who signs assignments.
    pub assignments: Role,
    /// Channels whose bundles need other signers (e.g. `prod`: a CI key and a release
    /// manager's key, both).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, Role>,
}

/// A root (or a step of a chain) that cannot be trusted; each attack has its own variant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    /// Not a readable root envelope, or not the shape §9 describes.
    #[error("root is malformed: {0}")]
    Malformed(String),
    /// Not a root envelope.
    #[error("envelope payloadType is {0:?}, expected {ROOT_PAYLOAD_TYPE:?}")]
    WrongPayloadType(String),
    /// Larger than the cap.
    #[error("root envelope is {0} bytes, more than {max}", max = limits::MAX_ENVELOPE_BYTES)]
    TooLarge(usize),
    /// Not signed by a threshold of the previous root's root keys (a forged rotation, or a
    /// root of another fleet).
    #[error("root version {version} is not signed by the root keys of version {previous}: {detail}")]
    NotSignedByPrevious {
        /// The version offered.
        version: u64,
        /// The version trusted.
        previous: u64,
        /// What each signature did.
        detail: String,
    },
    /// Not signed by a threshold of its own root keys.
    #[error("root version {version} is not signed by its own root keys: {detail}")]
    NotSignedBySelf {
        /// The version.
        version: u64,
        /// What each signature did.
        detail: String,
    },
    /// Not the next version.
    #[error("root version {found} does not follow version {current} (expected {expected})", expected = current + 1)]
    VersionSkipped {
        /// The version trusted.
        current: u64,
        /// The version offered.
        found: u64,
    },
    /// Older than (or the same version as, with other content) the root trusted.
    #[error("root version {offered} is not newer than the trusted version {current} (a replayed root)")]
    Rollback {
        /// The version offered.
        offered: u64,
        /// The version trusted.
        current: u64,
    },
    /// Past its expiry.
    #[error(
        "trust root version {version} expired at {expires} (now {now}): nothing new is accepted until a newer root arrives"
    )]
    Expired {
        /// The version.
        version: u64,
        /// When.
        expires: Timestamp,
        /// Now.
        now: Timestamp,
    },
}

fn malformed<T>(m: String) -> Result<T, RootError> {
    Err(RootError::Malformed(m))
}

/// The key id and base64 text of a public key, as a root lists it.
pub fn key_entry(key: &PublicKey) -> (String, String) {
    (
        key.keyid(),
        base64::engine::general_purpose::STANDARD.encode(key.as_bytes()),
    )
}

impl Root {
    /// Canonical JSON bytes: the DSSE payload.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("root serializes")
    }

    /// Signs it with each key.
    pub fn sign(&self, keys: &[&SigningKey]) -> Envelope {
        Envelope::sign(ROOT_PAYLOAD_TYPE, &self.to_payload(), keys)
    }

    /// The public key of a key id the root names.
    pub fn public_key(&self, keyid: &str) -> Option<PublicKey> {
        let bytes = decode_base64("keys", self.keys.get(keyid)?).ok()?;
        PublicKey::from_bytes(&bytes).ok()
    }

    /// The keys of a role.
    pub fn role_keys(&self, role: &Role) -> BTreeMap<String, PublicKey> {
        role.keys
            .iter()
            .filter_map(|id| Some((id.clone(), self.public_key(id)?)))
            .collect()
    }

    /// The role that signs bundles of `channel`.
    pub fn bundle_role(&self, channel: &str) -> &Role {
        self.channels.get(channel).unwrap_or(&self.bundles)
    }

    /// Checks the shape: type, version, times, keys (each parses and its id is its digest),
    /// roles (known keys, a threshold they can reach), caps.
    pub fn check_shape(&self) -> Result<(), RootError> {
        self.checked_keys(&BTreeMap::new()).map(|_| ())
    }

    /// [`Self::check_shape`], returning the keys decoded (each once). A key of `known` (ids
    /// checked before) with the same bytes is taken as it is, not decoded and hashed again.
    fn checked_keys(
        &self,
        known: &BTreeMap<String, PublicKey>,
    ) -> Result<BTreeMap<String, PublicKey>, RootError> {
        let mut decoded = BTreeMap::new();
        for (id, text) in &self.keys {
            let bytes = decode_base64("keys", text).ok();
            if let (Some(b), Some(k)) = (&bytes, known.get(id))
                && b.as_slice() == k.as_bytes()
            {
                decoded.insert(id.clone(), *k);
                continue;
            }
            let key = bytes.and_then(|b| PublicKey::from_bytes(&b).ok());
            match key {
                Some(k) if k.keyid() == *id => {
                    decoded.insert(id.clone(), k);
                }
                Some(_) => return malformed(format!("key {id:?}: its id is not the SHA-256 of the key")),
                None => return malformed(format!("key {id:?}: not a base64 Ed25519 public key")),
            }
        }
        if self.root_type != ROOT_TYPE {
            return malformed(format!("_type is {:?}, expected {ROOT_TYPE:?}", self.root_type));
        }
        if self.version == 0 {
            return malformed("version must be 1 or more".to_owned());
        }
        if self.expires <= self.issued {
            return malformed(format!(
                "expires {} is not after issued {}",
                self.expires, self.issued
            ));
        }
        if self.keys.len() > limits::MAX_KEYS {
            return malformed(format!(
                "{} keys, more than {}",
                self.keys.len(),
                limits::MAX_KEYS
            ));
        }
        if self.channels.len() > limits::MAX_CHANNEL_ROLES {
            return malformed(format!(
                "{} channel roles, more than {}",
                self.channels.len(),
                limits::MAX_CHANNEL_ROLES
            ));
        }
        let mut roles: Vec<(String, &Role)> = vec![
            ("root".to_owned(), &self.root),
            ("bundles".to_owned(), &self.bundles),
            ("assignments".to_owned(), &self.assignments),
        ];
        for (channel, role) in &self.channels {
            if let Err(why) = check_channel_name(channel) {
                return malformed(format!("channels: {channel:?}: {why}"));
            }
            roles.push((format!("channels.{channel}"), role));
        }
        for (name, role) in roles {
            if let Some(unknown) = role.keys.iter().find(|k| !self.keys.contains_key(*k)) {
                return malformed(format!("{name}: key {unknown:?} is not in keys"));
            }
            if role.threshold == 0 || role.threshold > role.keys.len() {
                return malformed(format!(
                    "{name}: threshold {} with {} key(s); it must be between 1 and the number of keys",
                    role.threshold,
                    role.keys.len()
                ));
            }
        }
        Ok(decoded)
    }

    /// Whether it has expired at `now`.
    pub fn check_fresh(&self, now: Timestamp) -> Result<(), RootError> {
        if now >= self.expires {
            return Err(RootError::Expired {
                version: self.version,
                expires: self.expires,
                now,
            });
        }
        Ok(())
    }
}

/// Key ids of `keys` with a valid signature on `envelope`, and a note per signature that
/// did not count.
pub(crate) fn valid_signers(
    envelope: &Envelope,
    payload: &[u8],
    keys: &BTreeMap<String, PublicKey>,
) -> (BTreeSet<String>, Vec<String>) {
    valid_signers_known(envelope, payload, keys, &BTreeMap::new())
}

/// [`valid_signers`], counting without verifying again a key already found valid on this
/// envelope (`known`: key id → the key that verified).
fn valid_signers_known(
    envelope: &Envelope,
    payload: &[u8],
    keys: &BTreeMap<String, PublicKey>,
    known: &BTreeMap<String, PublicKey>,
) -> (BTreeSet<String>, Vec<String>) {
    let message = pae(&envelope.payload_type, payload);
    let mut valid = BTreeSet::new();
    let mut notes = Vec::new();
    for signature in envelope.signatures.iter().take(MAX_SIGNATURES) {
        if let (Some(k), Some(seen)) = (keys.get(&signature.keyid), known.get(&signature.keyid))
            && k.as_bytes() == seen.as_bytes()
        {
            valid.insert(signature.keyid.clone());
            continue;
        }
        let short: String = signature.keyid.chars().take(12).collect();
        let Ok(sig) = decode_base64("signatures[].sig", &signature.sig) else {
            notes.push(format!("{short}: sig is not base64"));
            continue;
        };
        // The keyid is a hint; an empty one means "try every key".
        let candidates: Vec<(&String, &PublicKey)> = if signature.keyid.is_empty() {
            keys.iter().collect()
        } else {
            keys.get_key_value(&signature.keyid).into_iter().collect()
        };
        if candidates.is_empty() {
            notes.push(format!("{short}: key not trusted for this"));
            continue;
        }
        match candidates.into_iter().find(|(_, k)| k.verify(&message, &sig)) {
            Some((id, _)) => {
                valid.insert(id.clone());
            }
            None => notes.push(format!("{short}: signature does not verify")),
        }
    }
    (valid, notes)
}

/// Whether `role`'s threshold is met; else what was found.
pub(crate) fn meets(role: &Role, valid: &BTreeSet<String>, notes: &[String]) -> Result<(), String> {
    let count = valid.iter().filter(|k| role.keys.contains(*k)).count();
    if count >= role.threshold {
        return Ok(());
    }
    let mut detail = vec![format!("{count} of {} required signature(s)", role.threshold)];
    detail.extend(notes.iter().take(3).cloned());
    Err(detail.join("; "))
}

fn envelope_payload(envelope: &Envelope) -> Result<Vec<u8>, RootError> {
    if envelope.payload_type != ROOT_PAYLOAD_TYPE {
        return Err(RootError::WrongPayloadType(envelope.payload_type.clone()));
    }
    if envelope.signatures.len() > MAX_SIGNATURES {
        return malformed(format!(
            "{} signatures, more than {MAX_SIGNATURES}",
            envelope.signatures.len()
        ));
    }
    envelope
        .payload_bytes()
        .map_err(|e| RootError::Malformed(e.to_string()))
}

/// A root with its keys decoded.
type Decoded = (Root, BTreeMap<String, PublicKey>);

fn parse(payload: &[u8], known: &BTreeMap<String, PublicKey>) -> Result<Decoded, RootError> {
    let root: Root = serde_json::from_slice(payload).map_err(|e| RootError::Malformed(e.to_string()))?;
    let keys = root.checked_keys(known)?;
    Ok((root, keys))
}

fn role_of(role: &Role, keys: &BTreeMap<String, PublicKey>) -> BTreeMap<String, PublicKey> {
    role.keys
        .iter()
        .filter_map(|id| Some((id.clone(), *keys.get(id)?)))
        .collect()
}

/// Reads a root envelope's JSON within its cap.
pub fn read_envelope(bytes: &[u8]) -> Result<Envelope, RootError> {
    if bytes.len() > limits::MAX_ENVELOPE_BYTES {
        return Err(RootError::TooLarge(bytes.len()));
    }
    Envelope::from_json(bytes).map_err(|e| RootError::Malformed(e.to_string()))
}

/// The root an agent is installed with: the installer vouches for this copy, so it must only
/// be a well-formed root signed by a threshold of its own root keys.
pub fn verify_initial(envelope: &Envelope) -> Result<Root, RootError> {
    let payload = envelope_payload(envelope)?;
    let (root, keys) = parse(&payload, &BTreeMap::new())?;
    let (valid, notes) = valid_signers(envelope, &payload, &role_of(&root.root, &keys));
    meets(&root.root, &valid, &notes).map_err(|detail| RootError::NotSignedBySelf {
        version: root.version,
        detail,
    })?;
    Ok(root)
}

/// The root after `current`: signed by a threshold of `current`'s root keys (checked before
/// its payload is parsed), exactly one version newer, and signed by a threshold of its own
/// root keys. Expiry is not checked here: an expired root in the middle of a chain is still
/// a valid step; only the newest must be fresh ([`Root::check_fresh`]).
pub fn verify_next(current: &Root, envelope: &Envelope) -> Result<Root, RootError> {
    let keys = current.checked_keys(&BTreeMap::new())?;
    next_step(current, &keys, envelope).map(|(r, _)| r)
}

/// [`verify_next`] with the current root's keys decoded; returns the next root's.
fn next_step(
    current: &Root,
    current_keys: &BTreeMap<String, PublicKey>,
    envelope: &Envelope,
) -> Result<Decoded, RootError> {
    let payload = envelope_payload(envelope)?;
    let old_role = role_of(&current.root, current_keys);
    let (valid, notes) = valid_signers(envelope, &payload, &old_role);
    if let Err(detail) = meets(&current.root, &valid, &notes) {
        // Name the version offered when it can be read (it is not trusted for anything else).
        let version = peek_version(envelope).unwrap_or(0);
        if version != 0 && version <= current.version {
            return Err(RootError::Rollback {
                offered: version,
                current: current.version,
            });
        }
        return Err(RootError::NotSignedByPrevious {
            version,
            previous: current.version,
            detail,
        });
    }
    let (next, next_keys) = parse(&payload, current_keys)?;
    if next.version <= current.version {
        return Err(RootError::Rollback {
            offered: next.version,
            current: current.version,
        });
    }
    if next.version != current.version + 1 {
        return Err(RootError::VersionSkipped {
            current: current.version,
            found: next.version,
        });
    }
    // Root keys that stay are not verified twice on the same envelope.
    let seen: BTreeMap<String, PublicKey> = old_role
        .into_iter()
        .filter(|(id, _)| valid.contains(id))
        .collect();
    let (valid, notes) = valid_signers_known(envelope, &payload, &role_of(&next.root, &next_keys), &seen);
    meets(&next.root, &valid, &notes).map_err(|detail| RootError::NotSignedBySelf {
        version: next.version,
        detail,
    })?;
    Ok((next, next_keys))
}

/// The version a root envelope claims, read without trusting it (to order a chain).
pub fn peek_version(envelope: &Envelope) -> Option<u64> {
    #[derive(Deserialize)]
    struct Version {
        version: u64,
    }
    let payload = envelope.payload_bytes().ok()?;
    serde_json::from_slice::<Version>(&payload)
        .ok()
        .map(|v| v.version)
}

/// Walks `chain` from `current`: takes version current+1, then +2, … as long as the chain
/// holds the next one (at most [`limits::MAX_WALK`] steps); entries at or below the
/// trusted version are history and skipped. Returns every root taken, oldest first (empty:
/// nothing newer). A next version that does not verify stops the walk with its error.
pub fn walk(current: &Root, chain: &[Envelope]) -> Result<Vec<(Root, Envelope)>, RootError> {
    let mut by_version: BTreeMap<u64, &Envelope> = BTreeMap::new();
    for e in chain {
        if let Some(v) = peek_version(e).filter(|v| *v > current.version) {
            // Of two claiming the same version, the first; the other fails nothing.
            by_version.entry(v).or_insert(e);
        }
    }
    let mut taken: Vec<(Root, Envelope)> = Vec::new();
    let mut trusted_keys = current.checked_keys(&BTreeMap::new())?;
    for _ in 0..limits::MAX_WALK {
        let trusted = taken.last().map_or(current, |(r, _)| r);
        let Some(e) = by_version.get(&(trusted.version + 1)) else {
            if let Some((&v, e)) = by_version.range(trusted.version + 1..).next() {
                // A gap: the chain skips a version. Said only if nothing was taken.
                if taken.is_empty() {
                    return Err(verify_next(trusted, e)
                        .err()
                        .unwrap_or(RootError::VersionSkipped {
                            current: trusted.version,
                            found: v,
                        }));
                }
            }
            break;
        };
        let (next, keys) = next_step(trusted, &trusted_keys, e)?;
        trusted_keys = keys;
        taken.push((next, (*e).clone()));
    }
    Ok(taken)
}
