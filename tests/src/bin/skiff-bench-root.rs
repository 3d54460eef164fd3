//! `skiff-bench-root`: what walking a chain of trust roots costs an agent. Builds a chain of
//! `N` roots (default 100), each rotating to a fresh set of root keys (2 of 3 must sign,
//! the old threshold and the new), then times `walk` from version 1 to the newest, the
//! median of 20 runs, and one statement check under the newest root.
//!
//! ```text
//! cargo run --release -p skiff-tests --bin skiff-bench-root [-- N]
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skiff_proto::Sha256Digest;
use skiff_proto::dsse::Envelope;
use skiff_proto::keys::SigningKey;
use skiff_proto::root::{ROOT_TYPE, Role, Root, key_entry, verify_initial, walk};
use skiff_proto::statement::{BundleRef, Statement, Timestamp};
use skiff_proto::verify::TrustSet;

fn keys(n: usize) -> Vec<SigningKey> {
    (0..n).map(|_| SigningKey::generate().expect("key")).collect()
}

fn root(version: u64, roots: &[SigningKey], signer: &SigningKey) -> Root {
    let mut all: BTreeMap<String, String> = roots.iter().map(|k| key_entry(&k.public_key())).collect();
    all.extend([key_entry(&signer.public_key())]);
    let now = Timestamp::now();
    Root {
        root_type: ROOT_TYPE.to_owned(),
        version,
        issued: now,
        expires: now.plus(Duration::from_secs(365 * 86_400)),
        keys: all,
        root: Role {
            keys: roots.iter().map(|k| k.public_key().keyid()).collect(),
            threshold: 2,
        },
        bundles: Role {
            keys: [signer.public_key().keyid()].into(),
            threshold: 1,
        },
        assignments: Role {
            keys: [signer.public_key().keyid()].into(),
            threshold: 1,
        },
        channels: BTreeMap::new(),
    }
}

/// A chain of `n` roots: root keys rotated at every version (`rotate_roots`), or kept while
/// the bundle signer changes.
fn chain(n: u64, rotate_roots: bool) -> (Envelope, Vec<Envelope>, SigningKey) {
    let mut signer = SigningKey::generate().expect("key");
    let mut root_keys = keys(3);
    let first_env = root(1, &root_keys, &signer).sign(&[&root_keys[0], &root_keys[1]]);
    let mut out: Vec<Envelope> = Vec::new();
    for v in 2..=n {
        if rotate_roots {
            let next_keys = keys(3);
            let r = root(v, &next_keys, &signer);
            out.push(r.sign(&[&root_keys[0], &root_keys[1], &next_keys[0], &next_keys[1]]));
            root_keys = next_keys;
        } else {
            signer = SigningKey::generate().expect("key");
            out.push(root(v, &root_keys, &signer).sign(&[&root_keys[0], &root_keys[1]]));
        }
    }
    (first_env, out, signer)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let (first_env, kept, _) = chain(n, false);
    let start = verify_initial(&first_env).expect("first root");
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            walk(&start, &kept).expect("chain verifies");
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "walking {} roots (2-of-3 root keys kept, the bundle signer rotated every version: 2 signatures each): median {:.2} ms ({:.1} µs per root)",
        n - 1,
        times[10].as_secs_f64() * 1000.0,
        times[10].as_secs_f64() * 1e6 / (n - 1).max(1) as f64
    );
    let (first_env, chain, signer) = chain(n, true);
    let start = verify_initial(&first_env).expect("first root");
    let mut times = Vec::new();
    let mut newest = None;
    for _ in 0..20 {
        let t = Instant::now();
        let taken = walk(&start, &chain).expect("chain verifies");
        times.push(t.elapsed());
        newest = taken.last().map(|(r, _)| r.clone());
    }
    times.sort();
    let median = times[times.len() / 2];
    let newest = newest.expect("walked");
    println!(
        "walking {} roots (2-of-3 root keys, rotated every version: 4 signatures each): median {:.2} ms ({:.1} µs per root), min {:.2} ms",
        n - 1,
        median.as_secs_f64() * 1000.0,
        median.as_secs_f64() * 1e6 / (n - 1).max(1) as f64,
        times[0].as_secs_f64() * 1000.0
    );
    let trust = TrustSet::from_root(newest);
    let statement = Statement::new(
        BundleRef {
            sha256: Sha256Digest::of(b"bench"),
            size: 5,
        },
        "prod",
        1,
        None,
    );
    let envelope = Envelope::sign_statement(&statement, &[&signer]);
    let t = Instant::now();
    for _ in 0..1000 {
        trust.verify_envelope(&envelope).expect("verifies");
    }
    println!(
        "a statement under the newest root: {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / 1000.0
    );
}
