//! Attacks on the trust root (`FORMAT.md` §9): each is refused with its own error, and what
//! was trusted stays trusted.

use std::collections::{BTreeMap, BTreeSet};

use skiff_proto::Sha256Digest;
use skiff_proto::dsse::Envelope;
use skiff_proto::keys::SigningKey;
use skiff_proto::root::{ROOT_TYPE, Role, Root, RootError, key_entry, verify_initial, verify_next, walk};
use skiff_proto::statement::{BundleRef, Statement, Timestamp};
use skiff_proto::verify::{TrustSet, VerifyError};

fn key() -> SigningKey {
    SigningKey::generate().unwrap()
}

fn role(keys: &[&SigningKey], threshold: usize) -> Role {
    Role {
        keys: keys.iter().map(|k| k.public_key().keyid()).collect(),
        threshold,
    }
}

/// A root of `version` with root keys `roots` (threshold `t`) delegating bundles and
/// assignments to `signers` (threshold 1).
fn root(version: u64, roots: &[&SigningKey], t: usize, signers: &[&SigningKey]) -> Root {
    let keys: BTreeMap<String, String> = roots
        .iter()
        .chain(signers)
        .map(|k| key_entry(&k.public_key()))
        .collect();
    Root {
        root_type: ROOT_TYPE.to_owned(),
        version,
        issued: Timestamp::from_unix_seconds(Timestamp::now().unix_seconds() - 3600),
        expires: Timestamp::now().plus(std::time::Duration::from_secs(86_400)),
        keys,
        root: role(roots, t),
        bundles: role(signers, 1),
        assignments: role(signers, 1),
        channels: BTreeMap::new(),
    }
}

fn statement(channel: &str) -> Statement {
    Statement::new(
        BundleRef {
            sha256: Sha256Digest::of(b"bundle"),
            size: 6,
        },
        channel,
        1,
        None,
    )
}

#[test]
fn a_rotation_needs_the_old_root_keys_and_the_new_ones() {
    let (a, b, c, d) = (key(), key(), key(), key());
    let signer = key();
    let v1 = root(1, &[&a, &b], 2, &[&signer]);
    let first = verify_initial(&v1.sign(&[&a, &b])).unwrap();
    // v2 rotates the root keys to c, d.
    let v2 = root(2, &[&c, &d], 2, &[&signer]);
    assert_eq!(verify_next(&first, &v2.sign(&[&a, &b, &c, &d])).unwrap(), v2);
    // Only the old keys: the new root keys never agreed.
    assert!(matches!(
        verify_next(&first, &v2.sign(&[&a, &b])),
        Err(RootError::NotSignedBySelf { version: 2, .. })
    ));
    // Only the new keys: whoever holds c and d is not yet trusted.
    assert!(matches!(
        verify_next(&first, &v2.sign(&[&c, &d])),
        Err(RootError::NotSignedByPrevious {
            version: 2,
            previous: 1,
            ..
        })
    ));
    // Below the old threshold (one of two).
    assert!(matches!(
        verify_next(&first, &v2.sign(&[&a, &c, &d])),
        Err(RootError::NotSignedByPrevious { .. })
    ));
    // A signature repeated does not count twice.
    let mut twice = v2.sign(&[&a, &c, &d]);
    twice.signatures.push(twice.signatures[0].clone());
    assert!(matches!(
        verify_next(&first, &twice),
        Err(RootError::NotSignedByPrevious { .. })
    ));
}

#[test]
fn versions_are_walked_one_at_a_time_and_never_go_back() {
    let (a, b) = (key(), key());
    let signer = key();
    let v1 = root(1, &[&a], 1, &[&signer]);
    let v2 = root(2, &[&a], 1, &[&signer]);
    let v3 = root(3, &[&b], 1, &[&signer]);
    let e2 = v2.sign(&[&a]);
    let e3 = v3.sign(&[&a, &b]);
    // Skipping a version: v3 is not accepted straight after v1, even signed by v1's keys.
    let skip = root(3, &[&a], 1, &[&signer]).sign(&[&a]);
    assert_eq!(
        verify_next(&v1, &skip),
        Err(RootError::VersionSkipped { current: 1, found: 3 })
    );
    assert!(matches!(
        walk(&v1, std::slice::from_ref(&e3)),
        Err(RootError::VersionSkipped { .. })
    ));
    // The whole chain, in any order: each step checked.
    let taken = walk(&v1, &[e3.clone(), e2.clone()]).unwrap();
    assert_eq!(taken.iter().map(|(r, _)| r.version).collect::<Vec<_>>(), [2, 3]);
    // Back to an older root, properly signed by keys it once had: a rollback.
    let v1_again = root(1, &[&b], 1, &[&signer]).sign(&[&b]);
    assert!(matches!(
        verify_next(&v3, &v1_again),
        Err(RootError::Rollback {
            offered: 1,
            current: 3
        })
    ));
    assert!(matches!(
        verify_next(&v2, &e2),
        Err(RootError::Rollback {
            offered: 2,
            current: 2
        })
    ));
    // History in a chain is skipped, not an error; nothing newer means nothing changes.
    assert!(walk(&v3, &[e2, e3]).unwrap().is_empty());
}

#[test]
fn an_expired_root_accepts_nothing_new() {
    let a = key();
    let signer = key();
    let mut v1 = root(1, &[&a], 1, &[&signer]);
    v1.issued = Timestamp::from_unix_seconds(1_000);
    v1.expires = Timestamp::from_unix_seconds(2_000);
    let trust = TrustSet::from_root(verify_initial(&v1.sign(&[&a])).unwrap());
    assert!(
        trust
            .verify_envelope(&Envelope::sign_statement(&statement("dev"), &[&signer]))
            .is_ok()
    );
    let e = trust
        .check_fresh(Timestamp::from_unix_seconds(2_000))
        .unwrap_err();
    assert!(
        matches!(e, VerifyError::Root(RootError::Expired { version: 1, .. })),
        "{e}"
    );
    assert!(trust.check_fresh(Timestamp::from_unix_seconds(1_999)).is_ok());
    // An expired root in the middle of a chain is still a valid step.
    let v2 = root(2, &[&a], 1, &[&signer]);
    assert!(verify_next(&v1, &v2.sign(&[&a])).is_ok());
}

#[test]
fn a_revoked_key_signs_nothing_after_the_root_that_drops_it() {
    let a = key();
    let (old, new) = (key(), key());
    let v1 = root(1, &[&a], 1, &[&old]);
    let v2 = root(2, &[&a], 1, &[&old, &new]);
    let v3 = root(3, &[&a], 1, &[&new]);
    let by_old = Envelope::sign_statement(&statement("dev"), &[&old]);
    let by_new = Envelope::sign_statement(&statement("dev"), &[&new]);
    assert!(TrustSet::from_root(v1).verify_envelope(&by_old).is_ok());
    let both = TrustSet::from_root(v2);
    assert!(both.verify_envelope(&by_old).is_ok() && both.verify_envelope(&by_new).is_ok());
    let revoked = TrustSet::from_root(v3);
    assert!(revoked.verify_envelope(&by_new).is_ok());
    let e = revoked.verify_envelope(&by_old).unwrap_err();
    assert!(matches!(e, VerifyError::BelowThreshold { valid: 0, .. }), "{e}");
    // Assignments too.
    let assignment = skiff_proto::assignment::Assignment {
        assignment_type: skiff_proto::assignment::ASSIGNMENT_TYPE.to_owned(),
        cluster: "shop-1".to_owned(),
        sequence: 1,
        issued: Timestamp::now(),
        expires: None,
        labels: BTreeMap::new(),
        channels: Vec::new(),
        maintenance: None,
    };
    assert!(revoked.verify_assignment(&assignment.sign(&[&old])).is_err());
    assert!(revoked.verify_assignment(&assignment.sign(&[&new])).is_ok());
}

#[test]
fn a_channel_can_need_two_signers() {
    let a = key();
    let (ci, release) = (key(), key());
    let mut v1 = root(1, &[&a], 1, &[&ci]);
    v1.keys.extend([key_entry(&release.public_key())]);
    v1.channels.insert("prod".into(), role(&[&ci, &release], 2));
    let trust = TrustSet::from_root(v1);
    assert!(
        trust
            .verify_envelope(&Envelope::sign_statement(&statement("dev"), &[&ci]))
            .is_ok()
    );
    let e = trust
        .verify_envelope(&Envelope::sign_statement(&statement("prod"), &[&ci]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::BelowThreshold {
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        trust
            .verify_envelope(&Envelope::sign_statement(&statement("prod"), &[&ci, &release]))
            .is_ok()
    );
    // The release manager alone signs nothing: not a bundle signer for other channels.
    assert!(
        trust
            .verify_envelope(&Envelope::sign_statement(&statement("dev"), &[&release]))
            .is_err()
    );
}

#[test]
fn a_root_of_another_fleet_is_refused() {
    let (ours, theirs) = (key(), key());
    let signer = key();
    let v1 = root(1, &[&ours], 1, &[&signer]);
    let foreign = root(2, &[&theirs], 1, &[&theirs]).sign(&[&theirs]);
    assert!(matches!(
        verify_next(&v1, &foreign),
        Err(RootError::NotSignedByPrevious { version: 2, .. })
    ));
    // A statement signed by the other fleet's key is not trusted here.
    let trust = TrustSet::from_root(v1);
    assert!(
        trust
            .verify_envelope(&Envelope::sign_statement(&statement("dev"), &[&theirs]))
            .is_err()
    );
}

#[test]
fn malformed_roots_are_named() {
    let a = key();
    let signer = key();
    let good = root(1, &[&a], 1, &[&signer]);
    let check = |r: &Root| verify_initial(&r.sign(&[&a])).unwrap_err().to_string();
    let mut r = good.clone();
    r.root.threshold = 2;
    assert!(
        check(&r).contains("root: threshold 2 with 1 key"),
        "{}",
        check(&r)
    );
    let mut r = good.clone();
    r.bundles.keys = BTreeSet::from(["0".repeat(64)]);
    assert!(check(&r).contains("is not in keys"));
    let mut r = good.clone();
    let (id, _) = key_entry(&a.public_key());
    r.keys.insert(id, key_entry(&signer.public_key()).1);
    assert!(check(&r).contains("its id is not the SHA-256"));
    let mut r = good.clone();
    r.expires = r.issued;
    assert!(check(&r).contains("is not after issued"));
    let mut r = good.clone();
    r.channels.insert("Not A Channel".into(), role(&[&signer], 1));
    assert!(check(&r).contains("channels"));
    // Signed by a key it does not name as a root key.
    assert!(matches!(
        verify_initial(&good.sign(&[&signer])),
        Err(RootError::NotSignedBySelf { .. })
    ));
    // A bundle statement is not a root, and a root is not a statement.
    let as_statement = Envelope::sign_statement(&statement("dev"), &[&a]);
    assert!(matches!(
        verify_initial(&as_statement),
        Err(RootError::WrongPayloadType(_))
    ));
    let trust = TrustSet::new([a.public_key()], 1).unwrap();
    assert!(matches!(
        trust.verify_envelope(&good.sign(&[&a])),
        Err(VerifyError::WrongPayloadType { .. })
    ));
    assert!(matches!(
        skiff_proto::root::read_envelope(&vec![b' '; 70_000]),
        Err(RootError::TooLarge(70_000))
    ));
}
