//! skiff's keys and signatures are the standard ones: the real `openssl` checks what skiff
//! signs, and keys made by `openssl genpkey` sign bundles that skiff verifies.

use std::path::Path;
use std::process::Command;

use skiff_proto::Sha256Digest;
use skiff_proto::dsse::{Envelope, pae};
use skiff_tests::{examples_dir, run_bin};

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn build_dir(key: &Path, out: &Path) -> String {
    run_bin(
        "skiff-hub",
        &[
            "bundle",
            "build",
            "--dir",
            s(&examples_dir().join("apps")),
            "--channel",
            "demo",
            "--generation",
            "1",
            "--key",
            s(key),
            "--out",
            s(out),
        ],
    )
    .success()
    .stdout
    .trim()
    .to_owned()
}

#[test]
fn openssl_verifies_a_skiff_signature_over_the_pae() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    run_bin("skiff-hub", &["keygen", "--out", s(&keys)]).success();
    let out = tmp.path().join("out");
    let digest = build_dir(&keys.join("signing.pem"), &out);

    let envelope =
        Envelope::from_json(&std::fs::read(out.join(format!("{digest}.dsse.json"))).unwrap()).unwrap();
    let message = pae(&envelope.payload_type, &envelope.payload_bytes().unwrap());
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&envelope.signatures[0].sig)
        .unwrap();
    std::fs::write(tmp.path().join("pae.bin"), &message).unwrap();
    std::fs::write(tmp.path().join("sig.bin"), &sig).unwrap();

    let pub_pem = keys.join("signing.pub.pem");
    let verify = |msg: &str| {
        openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            s(&pub_pem),
            "-rawin",
            "-in",
            msg,
            "-sigfile",
            s(&tmp.path().join("sig.bin")),
        ])
    };
    let ok = verify(s(&tmp.path().join("pae.bin")));
    assert!(
        ok.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Signature Verified Successfully"));

    // openssl must also say no to a changed message, or the check above proves nothing.
    let mut changed = message.clone();
    changed[message.len() - 2] ^= 1;
    std::fs::write(tmp.path().join("changed.bin"), &changed).unwrap();
    assert!(!verify(s(&tmp.path().join("changed.bin"))).status.success());

    // keyid = sha256 of the raw 32-byte key, which is the tail of the SPKI DER.
    let der = openssl(&["pkey", "-pubin", "-in", s(&pub_pem), "-outform", "DER"]);
    assert!(der.status.success());
    let raw = &der.stdout[der.stdout.len() - 32..];
    assert_eq!(envelope.signatures[0].keyid, Sha256Digest::of(raw).to_string());

    // And the private key parses in openssl as an Ed25519 key.
    let text = openssl(&["pkey", "-in", s(&keys.join("signing.pem")), "-noout", "-text"]);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    assert!(String::from_utf8_lossy(&text.stdout).contains("ED25519 Private-Key"));
}

#[test]
fn a_key_made_by_openssl_signs_bundles_skiff_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("ossl.pem");
    let public = tmp.path().join("ossl.pub.pem");
    assert!(
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", s(&key)])
            .status
            .success()
    );
    assert!(
        openssl(&["pkey", "-in", s(&key), "-pubout", "-out", s(&public)])
            .status
            .success()
    );
    let out = tmp.path().join("out");
    let digest = build_dir(&key, &out);
    let ok = run_bin(
        "skiff-agent",
        &[
            "bundle",
            "verify",
            "--key",
            s(&public),
            s(&out.join(format!("{digest}.tar.gz"))),
            s(&out.join(format!("{digest}.dsse.json"))),
        ],
    )
    .success();
    assert!(
        ok.stdout.contains("verified: channel=demo generation=1"),
        "{}",
        ok.stdout
    );
}
