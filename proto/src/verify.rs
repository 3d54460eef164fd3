//! Verification of a signed bundle, step by step as numbered in `FORMAT.md` §5.
//!
//! Everything here happens before a single manifest is parsed: a bundle that fails any step
//! is never extracted, stored or applied.

use std::collections::{BTreeMap, BTreeSet};

use crate::Sha256Digest;
use crate::assignment::{ASSIGNMENT_PAYLOAD_TYPE, Assignment, AssignmentError};
use crate::bundle::{Bundle, BundleError, Limits, read_bundle};
use crate::dsse::{DsseError, Envelope, PAYLOAD_TYPE};
use crate::keys::PublicKey;
use crate::root::{Role, Root, RootError};
use crate::statement::{STATEMENT_TYPE, Statement, Timestamp, check_channel_name};

/// Public keys an agent trusts, and how many of them must have signed.
#[derive(Clone, Debug)]
pub struct TrustSet {
    keys: BTreeMap<String, PublicKey>,
    threshold: usize,
    /// When the keys come from a trust root: its roles decide who must sign what.
    root: Option<Root>,
}

/// A trust set that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// No keys given.
    #[error("no trusted keys given")]
    NoKeys,
    /// Threshold 0, or more than the number of distinct keys.
    #[error(
        "threshold {threshold} is impossible with {keys} distinct trusted key(s); it must be between 1 and {keys}"
    )]
    BadThreshold {
        /// The threshold asked for.
        threshold: usize,
        /// Distinct keys.
        keys: usize,
    },
}

/// The highest generation accepted so far on a channel, and the bundle it named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The generation.
    pub generation: u64,
    /// The bundle digest of that generation.
    pub digest: Sha256Digest,
}

/// A payload whose signatures were checked: its bytes, the keys that signed it, and a note
/// per signature that did not count.
type SignedPayload = (Vec<u8>, BTreeSet<String>, Vec<String>);

/// Most signatures an envelope may carry.
pub const MAX_SIGNATURES: usize = 16;

/// What the verifier checks a statement against.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The channel this bundle must belong to, when the caller knows it.
    pub channel: Option<String>,
    /// The highest accepted generation on the statement's channel (anti-rollback).
    pub highest: Option<Accepted>,
    /// The current time, for expiry.
    pub now: Timestamp,
    /// Caps for reading the bundle.
    pub limits: Limits,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            channel: None,
            highest: None,
            now: Timestamp::now(),
            limits: Limits::default(),
        }
    }
}

/// A bundle that passed every step.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The signed statement.
    pub statement: Statement,
    /// The checked bundle content.
    pub bundle: Bundle,
}

/// Why verification failed. Each attack has its own variant. All are permanent: retrying the
/// same bytes cannot succeed; only a new bundle can.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Step 1: the envelope is not readable.
    #[error("{0}")]
    Envelope(#[from] DsseError),
    /// Step 2: not a skiff statement.
    #[error("envelope payloadType is {found:?}, expected {expected:?}")]
    WrongPayloadType {
        /// The payload type found.
        found: String,
        /// The payload type wanted.
        expected: &'static str,
    },
    /// Step 3: the envelope carries no signature at all.
    #[error("envelope has no signatures")]
    NoSignatures,
    /// Step 5: the statement names a bundle larger than the format allows.
    #[error("statement names a bundle of {size} bytes, more than the limit of {limit}")]
    BundleTooLarge {
        /// The size signed.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Step 3: more signatures than any real signer set makes (each costs a verification).
    #[error("envelope has {count} signatures, more than the limit of {MAX_SIGNATURES}")]
    TooManySignatures {
        /// Signatures in the envelope.
        count: usize,
    },
    /// Step 3: fewer valid signatures by distinct trusted keys than the threshold.
    #[error("{valid} valid signature(s) from trusted keys, {threshold} required ({detail})")]
    BelowThreshold {
        /// Distinct trusted keys whose signature verified.
        valid: usize,
        /// The threshold.
        threshold: usize,
        /// What happened to each signature.
        detail: String,
    },
    /// Step 4: the payload is not a v1 statement.
    #[error("statement is malformed: {0}")]
    MalformedStatement(String),
    /// Step 5: the tarball's length differs from the statement.
    #[error("bundle is {actual} bytes, the statement says {expected}")]
    SizeMismatch {
        /// Size in the statement.
        expected: u64,
        /// Size of the bytes given.
        actual: u64,
    },
    /// Step 5: the tarball's digest differs from the statement (tampered or swapped).
    #[error("bundle sha256 is {actual}, the statement says {expected}")]
    DigestMismatch {
        /// Digest in the statement.
        expected: Sha256Digest,
        /// Digest of the bytes given.
        actual: Sha256Digest,
    },
    /// Step 6: signed for another channel.
    #[error("statement is for channel {found:?}, expected {expected:?}")]
    WrongChannel {
        /// The channel expected.
        expected: String,
        /// The channel signed.
        found: String,
    },
    /// Step 7: older than what was already accepted (a replay of an old bundle).
    #[error(
        "channel {channel:?}: generation {offered} is older than the accepted generation {highest}; roll back with a new commit instead"
    )]
    Rollback {
        /// The channel.
        channel: String,
        /// The generation offered.
        offered: u64,
        /// The highest generation accepted.
        highest: u64,
    },
    /// Step 7: the accepted generation number, but a different bundle.
    #[error(
        "channel {channel:?}: generation {generation} was accepted for bundle {accepted}, this statement names {offered}"
    )]
    GenerationReused {
        /// The channel.
        channel: String,
        /// The generation.
        generation: u64,
        /// The bundle accepted under it.
        accepted: Sha256Digest,
        /// The bundle now offered under it.
        offered: Sha256Digest,
    },
    /// Step 8: past its expiry.
    #[error("statement expired at {expires} (now {now})")]
    Expired {
        /// When it expired.
        expires: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// Step 9: the tarball's content breaks a rule or a cap.
    #[error("bundle content: {0}")]
    Bundle(#[from] BundleError),
    /// An assignment breaks a rule of `FORMAT.md` §7.
    #[error("{0}")]
    Assignment(#[from] AssignmentError),
    /// Step 3a: the trust root does not allow it (expired).
    #[error("{0}")]
    Root(#[from] RootError),
    /// Step 9: `skiff-bundle.json` names another channel than the signed statement.
    #[error("skiff-bundle.json is for channel {bundle:?}, the statement for {statement:?}")]
    BundleChannelMismatch {
        /// Channel in the statement.
        statement: String,
        /// Channel in the bundle.
        bundle: String,
    },
}

impl TrustSet {
    /// A trust set of `keys` (duplicates count once) needing `threshold` signatures.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>, threshold: usize) -> Result<Self, TrustError> {
        let keys: BTreeMap<String, PublicKey> = keys.into_iter().map(|k| (k.keyid(), k)).collect();
        if keys.is_empty() {
            return Err(TrustError::NoKeys);
        }
        if threshold == 0 || threshold > keys.len() {
            return Err(TrustError::BadThreshold {
                threshold,
                keys: keys.len(),
            });
        }
        Ok(Self {
            keys,
            threshold,
            root: None,
        })
    }

    /// The trust a root delegates: bundles by its `bundles` role (or the channel's own),
    /// assignments by its `assignments` role.
    pub fn from_root(root: Root) -> Self {
        let mut roles = vec![&root.bundles, &root.assignments];
        roles.extend(root.channels.values());
        let keys = roles.into_iter().flat_map(|r| root.role_keys(r)).collect();
        Self {
            keys,
            threshold: 1,
            root: Some(root),
        }
    }

    /// Whether a threshold of these keys signed `envelope` (whatever it holds): how the keys
    /// an agent trusted before roots vouch for its first root.
    pub fn vouches_for(&self, envelope: &Envelope) -> bool {
        let Ok(payload) = envelope.payload_bytes() else {
            return false;
        };
        crate::root::valid_signers(envelope, &payload, &self.keys).0.len() >= self.threshold
    }

    /// The root this trust comes from, if any.
    pub fn root(&self) -> Option<&Root> {
        self.root.as_ref()
    }

    /// Step 3a: the trust root (if any) has not expired at `now`: under an expired root
    /// nothing new is accepted (what was accepted before stays applicable).
    pub fn check_fresh(&self, now: Timestamp) -> Result<(), VerifyError> {
        match &self.root {
            Some(r) => r.check_fresh(now).map_err(VerifyError::Root),
            None => Ok(()),
        }
    }

    /// Whether enough of the right keys signed: the root's role for it, or the plain
    /// threshold.
    fn check_role(
        &self,
        role: Option<&Role>,
        valid: &BTreeSet<String>,
        notes: &[String],
    ) -> Result<(), VerifyError> {
        let Some(role) = role else { return Ok(()) };
        crate::root::meets(role, valid, notes).map_err(|detail| VerifyError::BelowThreshold {
            valid: valid.iter().filter(|k| role.keys.contains(*k)).count(),
            threshold: role.threshold,
            detail,
        })
    }

    /// The key ids trusted.
    pub fn keyids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Steps 2–4: checks the payload type and the signatures, then parses the statement.
    pub fn verify_envelope(&self, envelope: &Envelope) -> Result<Statement, VerifyError> {
        let (payload, valid, notes) = self.verified_payload(envelope, PAYLOAD_TYPE)?;
        // Step 4: only a verified payload is parsed.
        let statement: Statement =
            serde_json::from_slice(&payload).map_err(|e| VerifyError::MalformedStatement(e.to_string()))?;
        if statement.statement_type != STATEMENT_TYPE {
            return Err(VerifyError::MalformedStatement(format!(
                "_type is {:?}, expected {STATEMENT_TYPE:?}",
                statement.statement_type
            )));
        }
        if let Err(reason) = check_channel_name(&statement.channel) {
            return Err(VerifyError::MalformedStatement(format!(
                "channel {:?}: {reason}",
                statement.channel
            )));
        }
        if statement.generation == 0 {
            return Err(VerifyError::MalformedStatement(
                "generation must be 1 or more".to_owned(),
            ));
        }
        // Under a root, the channel's own signers (e.g. two for prod) must have signed.
        self.check_role(
            self.root.as_ref().map(|r| r.bundle_role(&statement.channel)),
            &valid,
            &notes,
        )?;
        Ok(statement)
    }

    /// `FORMAT.md` §7.2 steps 1–3 for an assignment: payload type, signatures (as for a
    /// statement), then its shape. Returns it with the SHA-256 of its payload.
    pub fn verify_assignment(&self, envelope: &Envelope) -> Result<(Assignment, Sha256Digest), VerifyError> {
        let (payload, valid, notes) = self.verified_payload(envelope, ASSIGNMENT_PAYLOAD_TYPE)?;
        self.check_role(self.root.as_ref().map(|r| &r.assignments), &valid, &notes)?;
        let assignment: Assignment = serde_json::from_slice(&payload)
            .map_err(|e| VerifyError::Assignment(AssignmentError::Malformed(e.to_string())))?;
        assignment.check_shape()?;
        Ok((assignment, Sha256Digest::of(&payload)))
    }

    /// Steps 2–3: the payload type is `expected` and enough trusted keys signed (under a
    /// root: at least one of its signing keys, the role is checked once the payload says
    /// what it is); returns the payload bytes (not yet parsed), the keys that signed, and a
    /// note per signature that did not count.
    fn verified_payload(
        &self,
        envelope: &Envelope,
        expected: &'static str,
    ) -> Result<SignedPayload, VerifyError> {
        // Step 2.
        if envelope.payload_type != expected {
            return Err(VerifyError::WrongPayloadType {
                found: envelope.payload_type.clone(),
                expected,
            });
        }
        // Step 3: distinct trusted keys with a valid signature over the PAE.
        if envelope.signatures.is_empty() {
            return Err(VerifyError::NoSignatures);
        }
        if envelope.signatures.len() > MAX_SIGNATURES {
            return Err(VerifyError::TooManySignatures {
                count: envelope.signatures.len(),
            });
        }
        let payload = envelope.payload_bytes()?;
        let (valid, mut notes) = crate::root::valid_signers(envelope, &payload, &self.keys);
        let needed = if self.root.is_some() { 1 } else { self.threshold };
        if valid.len() < needed {
            if notes.is_empty() {
                notes.push("signatures repeat the same key".to_owned());
            }
            // A summary, not one line per signature: the envelope is the sender's to inflate.
            let more = notes.len().saturating_sub(3);
            notes.truncate(3);
            if more > 0 {
                notes.push(format!("{more} more"));
            }
            return Err(VerifyError::BelowThreshold {
                valid: valid.len(),
                threshold: needed,
                detail: notes.join("; "),
            });
        }
        Ok((payload, valid, notes))
    }
}

/// Step 5: the tarball is exactly the one the statement names.
pub fn check_tarball(statement: &Statement, tarball: &[u8]) -> Result<(), VerifyError> {
    check_size(statement, &Limits::default())?;
    if tarball.len() as u64 != statement.bundle.size {
        return Err(VerifyError::SizeMismatch {
            expected: statement.bundle.size,
            actual: tarball.len() as u64,
        });
    }
    let actual = Sha256Digest::of(tarball);
    if actual != statement.bundle.sha256 {
        return Err(VerifyError::DigestMismatch {
            expected: statement.bundle.sha256,
            actual,
        });
    }
    Ok(())
}

/// Step 5, before any byte is fetched or read: the size the statement names is within the
/// format's caps, so a signed statement is the only thing that sets how much is read.
pub fn check_size(statement: &Statement, limits: &Limits) -> Result<(), VerifyError> {
    let limit = limits.max_bundle_size();
    if statement.bundle.size > limit {
        return Err(VerifyError::BundleTooLarge {
            size: statement.bundle.size,
            limit,
        });
    }
    Ok(())
}

/// Steps 6–8: channel, anti-rollback, expiry.
pub fn check_policy(statement: &Statement, policy: &Policy) -> Result<(), VerifyError> {
    // Step 6.
    if let Some(expected) = &policy.channel
        && *expected != statement.channel
    {
        return Err(VerifyError::WrongChannel {
            expected: expected.clone(),
            found: statement.channel.clone(),
        });
    }
    // Step 7.
    if let Some(highest) = policy.highest {
        if statement.generation < highest.generation {
            return Err(VerifyError::Rollback {
                channel: statement.channel.clone(),
                offered: statement.generation,
                highest: highest.generation,
            });
        }
        if statement.generation == highest.generation && statement.bundle.sha256 != highest.digest {
            return Err(VerifyError::GenerationReused {
                channel: statement.channel.clone(),
                generation: statement.generation,
                accepted: highest.digest,
                offered: statement.bundle.sha256,
            });
        }
    }
    // Step 8.
    if let Some(expires) = statement.expires
        && policy.now >= expires
    {
        return Err(VerifyError::Expired {
            expires,
            now: policy.now,
        });
    }
    Ok(())
}

/// Every step of `FORMAT.md` §5, in order: envelope, signatures, statement, tarball digest,
/// channel, rollback, expiry, then safe reading of the content.
pub fn verify_bundle(
    trust: &TrustSet,
    envelope_json: &[u8],
    tarball: &[u8],
    policy: &Policy,
) -> Result<Verified, VerifyError> {
    // Step 1.
    let envelope = Envelope::from_json(envelope_json)?;
    let statement = trust.verify_envelope(&envelope)?;
    trust.check_fresh(policy.now)?;
    check_tarball(&statement, tarball)?;
    check_policy(&statement, policy)?;
    // Step 9.
    let bundle = read_bundle(tarball, &policy.limits)?;
    if bundle.manifest.channel != statement.channel {
        return Err(VerifyError::BundleChannelMismatch {
            statement: statement.channel,
            bundle: bundle.manifest.channel,
        });
    }
    Ok(Verified { statement, bundle })
}
