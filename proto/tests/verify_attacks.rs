//! Attacks on signed bundles, each generated here and named for what it tries; each must
//! be refused at its own step of `FORMAT.md` §5 with its own error.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_proto::bundle::{BuiltBundle, Limits, Source, write_bundle};
use skiff_proto::dsse::{Envelope, PAYLOAD_TYPE};
use skiff_proto::keys::SigningKey;
use skiff_proto::statement::{BundleRef, Statement, Timestamp};
use skiff_proto::verify::{Accepted, Policy, TrustError, TrustSet, VerifyError, verify_bundle};

const CM: &[u8] = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";

fn bundle(channel: &str, content: &[u8]) -> BuiltBundle {
    let files: BTreeMap<String, Vec<u8>> = [("cm.yaml".to_owned(), content.to_vec())].into();
    write_bundle(channel, Source::default(), None, &files, &Limits::default()).unwrap()
}

fn statement(b: &BuiltBundle, channel: &str, generation: u64) -> Statement {
    Statement::new(
        BundleRef {
            sha256: b.digest,
            size: b.bytes.len() as u64,
        },
        channel,
        generation,
        Some("0123456789abcdef0123456789abcdef01234567".into()),
    )
}

fn signed(s: &Statement, keys: &[&SigningKey]) -> Vec<u8> {
    Envelope::sign_statement(s, keys).to_json()
}

fn trust(keys: &[&SigningKey], threshold: usize) -> TrustSet {
    TrustSet::new(keys.iter().map(|k| k.public_key()), threshold).unwrap()
}

struct Fixture {
    key: SigningKey,
    bundle: BuiltBundle,
    statement: Statement,
}

fn fixture() -> Fixture {
    let key = SigningKey::generate().unwrap();
    let bundle = bundle("prod", CM);
    let statement = statement(&bundle, "prod", 5);
    Fixture {
        key,
        bundle,
        statement,
    }
}

fn verify(f: &Fixture, envelope: &[u8], tarball: &[u8], policy: &Policy) -> Result<(), VerifyError> {
    verify_bundle(&trust(&[&f.key], 1), envelope, tarball, policy).map(|_| ())
}

#[test]
fn a_good_bundle_verifies() {
    let f = fixture();
    let v = verify_bundle(
        &trust(&[&f.key], 1),
        &signed(&f.statement, &[&f.key]),
        &f.bundle.bytes,
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(v.statement, f.statement);
    assert_eq!(v.bundle.files[0].bytes, CM);
}

#[test]
fn signed_by_an_untrusted_key() {
    let f = fixture();
    let mallory = SigningKey::generate().unwrap();
    let env = signed(&f.statement, &[&mallory]);
    let err = verify(&f, &env, &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(
        matches!(err, VerifyError::BelowThreshold { valid: 0, threshold: 1, ref detail } if detail.contains("key not trusted")),
        "{err}"
    );
}

#[test]
fn keyid_of_a_trusted_key_on_a_forged_signature() {
    let f = fixture();
    let mallory = SigningKey::generate().unwrap();
    let mut env = Envelope::sign_statement(&f.statement, &[&mallory]);
    env.signatures[0].keyid = f.key.public_key().keyid();
    let err = verify(&f, &env.to_json(), &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(
        matches!(err, VerifyError::BelowThreshold { ref detail, .. } if detail.contains("does not verify")),
        "{err}"
    );
}

#[test]
fn payload_swapped_after_signing() {
    let f = fixture();
    let mut env = Envelope::sign_statement(&f.statement, &[&f.key]);
    let mut evil = f.statement.clone();
    evil.generation = 999;
    env.payload = Envelope::sign_statement(&evil, &[]).payload;
    let err = verify(&f, &env.to_json(), &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(
        matches!(err, VerifyError::BelowThreshold { valid: 0, .. }),
        "{err}"
    );
}

#[test]
fn payload_type_changed() {
    let f = fixture();
    let env = Envelope::sign(
        "application/vnd.in-toto+json",
        &f.statement.to_payload(),
        &[&f.key],
    );
    let err = verify(&f, &env.to_json(), &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::WrongPayloadType { .. }), "{err}");
}

#[test]
fn signatures_stripped() {
    let f = fixture();
    let env = Envelope::sign(PAYLOAD_TYPE, &f.statement.to_payload(), &[]);
    let err = verify(&f, &env.to_json(), &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::NoSignatures), "{err}");
}

#[test]
fn threshold_not_met_and_one_key_counted_once() {
    let f = fixture();
    let second = SigningKey::generate().unwrap();
    let two_of_two = trust(&[&f.key, &second], 2);
    // The same key signing twice is still one key.
    let env = signed(&f.statement, &[&f.key, &f.key]);
    let err = verify_bundle(&two_of_two, &env, &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BelowThreshold {
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{err}"
    );
    let env = signed(&f.statement, &[&f.key, &second]);
    verify_bundle(&two_of_two, &env, &f.bundle.bytes, &Policy::default()).unwrap();
}

#[test]
fn impossible_trust_sets_are_refused() {
    let k = SigningKey::generate().unwrap();
    assert!(matches!(
        TrustSet::new([k.public_key()], 0),
        Err(TrustError::BadThreshold { .. })
    ));
    assert!(matches!(
        TrustSet::new([k.public_key(), k.public_key()], 2),
        Err(TrustError::BadThreshold { keys: 1, .. })
    ));
    assert!(matches!(TrustSet::new([], 1), Err(TrustError::NoKeys)));
}

#[test]
fn malformed_statement_signed_by_a_trusted_key() {
    let f = fixture();
    let env = Envelope::sign(PAYLOAD_TYPE, b"{\"hello\": 1}", &[&f.key]);
    let err = verify(&f, &env.to_json(), &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::MalformedStatement(_)), "{err}");
}

#[test]
fn malformed_and_oversized_envelopes() {
    let f = fixture();
    let err = verify(&f, b"{", &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::Envelope(_)), "{err}");
    let huge = vec![b' '; (1 << 20) + 1];
    let err = verify(&f, &huge, &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

#[test]
fn tarball_tampered() {
    let f = fixture();
    let env = signed(&f.statement, &[&f.key]);
    let mut evil = f.bundle.bytes.clone();
    let last = evil.len() - 12;
    evil[last] ^= 0xff;
    let err = verify(&f, &env, &evil, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::DigestMismatch { .. }), "{err}");
}

#[test]
fn tarball_swapped_for_another_signed_size() {
    let f = fixture();
    let env = signed(&f.statement, &[&f.key]);
    let other = bundle(
        "prod",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other-and-longer}\n",
    );
    let err = verify(&f, &env, &other.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::SizeMismatch { .. }), "{err}");
}

#[test]
fn signed_for_another_channel() {
    let f = fixture();
    let env = signed(&f.statement, &[&f.key]);
    let policy = Policy {
        channel: Some("staging".into()),
        ..Policy::default()
    };
    let err = verify(&f, &env, &f.bundle.bytes, &policy).unwrap_err();
    assert!(matches!(err, VerifyError::WrongChannel { .. }), "{err}");
}

#[test]
fn bundle_built_for_another_channel_than_signed() {
    let f = fixture();
    let staging = bundle("staging", CM);
    let s = statement(&staging, "prod", 5);
    let env = signed(&s, &[&f.key]);
    let err = verify(&f, &env, &staging.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::BundleChannelMismatch { .. }), "{err}");
}

#[test]
fn replayed_older_generation() {
    let f = fixture();
    let env = signed(&f.statement, &[&f.key]);
    let policy = Policy {
        highest: Some(Accepted {
            generation: 6,
            digest: f.bundle.digest,
        }),
        ..Policy::default()
    };
    let err = verify(&f, &env, &f.bundle.bytes, &policy).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Rollback {
                offered: 5,
                highest: 6,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn same_generation_is_fine_only_for_the_same_bundle() {
    let f = fixture();
    let env = signed(&f.statement, &[&f.key]);
    let same = Policy {
        highest: Some(Accepted {
            generation: 5,
            digest: f.bundle.digest,
        }),
        ..Policy::default()
    };
    verify(&f, &env, &f.bundle.bytes, &same).unwrap();
    let other = Policy {
        highest: Some(Accepted {
            generation: 5,
            digest: bundle("prod", b"other").digest,
        }),
        ..Policy::default()
    };
    let err = verify(&f, &env, &f.bundle.bytes, &other).unwrap_err();
    assert!(
        matches!(err, VerifyError::GenerationReused { generation: 5, .. }),
        "{err}"
    );
}

#[test]
fn expired_statement() {
    let f = fixture();
    let mut s = f.statement.clone();
    s.created = Timestamp::from_unix_seconds(1_000_000);
    s.expires = Some(s.created.plus(Duration::from_secs(3600)));
    let env = signed(&s, &[&f.key]);
    let err = verify(&f, &env, &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::Expired { .. }), "{err}");
    // Not yet expired: fine.
    let before = Policy {
        now: Timestamp::from_unix_seconds(1_000_100),
        ..Policy::default()
    };
    verify(&f, &env, &f.bundle.bytes, &before).unwrap();
}

#[test]
fn url_safe_unpadded_base64_from_other_dsse_tools_is_accepted() {
    use base64::Engine as _;
    let f = fixture();
    let mut env = Envelope::sign_statement(&f.statement, &[&f.key]);
    let raw = env.payload_bytes().unwrap();
    env.payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    verify(&f, &env.to_json(), &f.bundle.bytes, &Policy::default()).unwrap();
}

fn assignment(cluster: &str, sequence: u64) -> skiff_proto::assignment::Assignment {
    use skiff_proto::assignment::{ASSIGNMENT_TYPE, AssignedChannel, Assignment, OnUnassign};
    Assignment {
        assignment_type: ASSIGNMENT_TYPE.to_owned(),
        cluster: cluster.to_owned(),
        sequence,
        issued: Timestamp::now(),
        expires: None,
        labels: BTreeMap::new(),
        channels: vec![AssignedChannel {
            channel: "prod".to_owned(),
            max_generation: None,
            on_unassign: OnUnassign::Prune,
            substitute: false,
            values: BTreeMap::new(),
        }],
        maintenance: None,
    }
}

#[test]
fn an_assignment_and_a_statement_never_pass_for_each_other() {
    let f = fixture();
    let t = trust(&[&f.key], 1);
    let a = assignment("shop-1", 3).sign(&[&f.key]);
    let (back, digest) = t.verify_assignment(&a).unwrap();
    assert_eq!(back.cluster, "shop-1");
    assert_eq!(digest, skiff_proto::Sha256Digest::of(&a.payload_bytes().unwrap()));
    // An assignment offered as a bundle's envelope, and a statement offered as an assignment.
    let err = verify(&f, &a.to_json(), &f.bundle.bytes, &Policy::default()).unwrap_err();
    assert!(matches!(err, VerifyError::WrongPayloadType { .. }), "{err}");
    let s = Envelope::sign_statement(&f.statement, &[&f.key]);
    let err = t.verify_assignment(&s).unwrap_err();
    assert!(matches!(err, VerifyError::WrongPayloadType { .. }), "{err}");
    // Signed by an untrusted key.
    let stranger = SigningKey::generate().unwrap();
    let err = t
        .verify_assignment(&assignment("shop-1", 3).sign(&[&stranger]))
        .unwrap_err();
    assert!(matches!(err, VerifyError::BelowThreshold { .. }), "{err}");
    // The payload changed after signing (the cluster name swapped).
    let mut tampered = a.clone();
    let other = assignment("shop-2", 3).sign(&[&stranger]);
    tampered.payload = other.payload;
    let err = t.verify_assignment(&tampered).unwrap_err();
    assert!(matches!(err, VerifyError::BelowThreshold { .. }), "{err}");
}
