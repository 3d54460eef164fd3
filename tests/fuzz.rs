//! Bounded fuzzing, run as ordinary tests: the manifest parser, the bundle reader and
//! verifier, and the hub's direct HTTP path get mutations of real inputs (the shared corpus
//! when `SKIFF_CORPUS` or `../shared/corpus` has it, the example fleet otherwise) and must
//! neither panic nor break their invariants. Each target runs `SKIFF_FUZZ_ITERATIONS`
//! inputs (default 4,000) or `SKIFF_FUZZ_SECONDS` (default 15), whichever ends first;
//! the counts are printed. Deterministic: the same seed (`SKIFF_FUZZ_SEED`) gives the
//! same inputs, so a failure names the input that broke it and reproduces.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skiff_hub::api::fastpath::{Head, classify};
use skiff_proto::bundle::{Limits, Source, read_bundle, write_bundle};
use skiff_proto::dsse::Envelope;
use skiff_proto::keys::SigningKey;
use skiff_proto::manifest::{parse_file, parse_objects};
use skiff_proto::statement::{BundleRef, Statement};
use skiff_proto::verify::{Policy, TrustSet, verify_bundle};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `check` on mutations of `seeds` within the iteration and time budget; returns the
/// number of executions.
fn fuzz(target: &str, seeds: &[Vec<u8>], dict: &[&[u8]], mut check: impl FnMut(&[u8])) -> u64 {
    assert!(!seeds.is_empty(), "{target}: no seeds");
    let iterations = env_number("SKIFF_FUZZ_ITERATIONS", 4_000);
    let deadline = Instant::now() + Duration::from_secs(env_number("SKIFF_FUZZ_SECONDS", 15));
    let mut rng = Rng(env_number("SKIFF_FUZZ_SEED", 0x5eed_cafe_f00d_d00d) | 1);
    let mut runs = 0;
    for seed in seeds {
        check(seed);
        runs += 1;
    }
    while runs < iterations && Instant::now() < deadline {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(input.len() + 1);
            match rng.below(7) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] ^= 1 << rng.below(8);
                }
                1 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] = rng.next() as u8;
                }
                2 => {
                    let token = dict[rng.below(dict.len())];
                    input.splice(at..at, token.iter().copied());
                }
                3 if at < input.len() => {
                    let end = (at + 1 + rng.below(64)).min(input.len());
                    input.drain(at..end);
                }
                4 if at < input.len() => {
                    let end = (at + 1 + rng.below(256)).min(input.len());
                    let copy = input[at..end].to_vec();
                    let to = rng.below(input.len() + 1);
                    input.splice(to..to, copy);
                }
                5 => input.truncate(at),
                _ => {
                    let other = &seeds[rng.below(seeds.len())];
                    let from = rng.below(other.len() + 1);
                    let end = (from + rng.below(512)).min(other.len());
                    input.splice(at..at, other[from..end].iter().copied());
                }
            }
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if result.is_err() {
            let path = std::env::temp_dir().join(format!("skiff-fuzz-{target}-crash.bin"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "{target}: input #{runs} broke an invariant; saved to {}",
                path.display()
            );
        }
        runs += 1;
    }
    println!("fuzz {target}: {runs} executions, 0 failures");
    runs
}

/// Small real manifests to start from.
fn manifest_seeds() -> Vec<(String, Vec<u8>)> {
    let root = skiff_tests::corpus_dir("fuzz seeds from the corpus (the example fleet is used instead)")
        .unwrap_or_else(skiff_tests::examples_dir);
    let mut out: Vec<(String, Vec<u8>)> = skiff_tests::files_with_ext(&root, &[".yaml", ".yml", ".json"])
        .into_iter()
        .filter_map(|f| {
            let bytes = std::fs::read(root.join(&f)).ok()?;
            (bytes.len() < 16 << 10).then_some((f, bytes))
        })
        .collect();
    out.sort();
    out.truncate(120);
    out
}

const YAML_TOKENS: &[&[u8]] = &[
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"---\n",
    b"...\n",
    b"[",
    b"]",
    b"{",
    b"}",
    b": ",
    b"- ",
    b"!!str ",
    b"!!int ",
    b"|\n  ",
    b">-\n  ",
    b"'",
    b"\"",
    b"\\u0000",
    b"\t",
    b"\n",
    b"0755",
    b"yes",
    b".nan",
    b"? ",
    b"%YAML 1.1\n",
    b"apiVersion: v1\n",
    b"kind: List\nitems:\n",
    b"metadata: {name: ../x}\n",
    b"\xef\xbb\xbf",
    b"\xff",
];

#[test]
fn fuzz_the_manifest_parser() {
    let seeds = manifest_seeds();
    let names: Vec<String> = seeds.iter().map(|(n, _)| n.clone()).collect();
    let bytes: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    let mut which = 0usize;
    fuzz("manifest", &bytes, YAML_TOKENS, |input| {
        which += 1;
        let name = &names[which % names.len()];
        if let Ok(docs) = parse_file(name, input) {
            for d in docs {
                assert!(d.index >= 1 && d.line >= 1);
                serde_json::to_vec(&d.value).expect("a parsed document is JSON");
            }
        }
        if let Ok(objects) = parse_objects(name, input) {
            for o in objects {
                // Whatever parses names nothing a path could escape through.
                assert!(!o.name.contains('/') && o.name != ".." && o.name != ".");
                assert!(
                    o.namespace
                        .as_deref()
                        .is_none_or(|n| !n.contains('/') && !n.contains('.'))
                );
                assert!(o.kind.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }
    });
}

/// Bundles of real manifests, as tar streams (mutated, then compressed) and as `.tar.gz`
/// (mutated as they are); each read must hold the format's rules or fail cleanly.
#[test]
fn fuzz_the_bundle_reader_and_verifier() {
    use std::io::{Read as _, Write as _};
    let seeds = manifest_seeds();
    let mut bundles = Vec::new();
    for chunk in seeds.chunks(8) {
        let files: BTreeMap<String, Vec<u8>> = chunk
            .iter()
            .enumerate()
            .map(|(i, (n, b))| (format!("{i}-{}", n.replace('/', "-")), b.clone()))
            .collect();
        bundles.push(
            write_bundle("fuzz", Source::default(), None, &files, &Limits::default())
                .unwrap()
                .bytes,
        );
    }
    let tars: Vec<Vec<u8>> = bundles
        .iter()
        .map(|b| {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(b.as_slice())
                .read_to_end(&mut out)
                .unwrap();
            out
        })
        .collect();
    let limits = Limits {
        max_files: 64,
        max_file_size: 1 << 20,
        max_total_size: 4 << 20,
        max_manifest_size: 1 << 20,
    };
    let check = |gz: &[u8]| {
        if let Ok(bundle) = read_bundle(gz, &limits) {
            assert!(bundle.files.len() <= limits.max_files);
            for (entry, file) in bundle.manifest.files.iter().zip(&bundle.files) {
                assert_eq!(entry.path, file.path);
                assert_eq!(skiff_proto::Sha256Digest::of(&file.bytes), entry.sha256);
                assert!(skiff_proto::bundle::check_path(&file.path).is_ok());
            }
        }
    };
    let tar_tokens: &[&[u8]] = &[
        b"manifests/",
        b"../",
        b"skiff-bundle.json",
        b"\0\0\0\0",
        b"ustar",
        b"0000777",
        b"\"size\":",
    ];
    fuzz("bundle-tar", &tars, tar_tokens, |tar| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(tar).unwrap();
        check(&enc.finish().unwrap());
    });
    fuzz("bundle-gz", &bundles, &[b"\x1f\x8b", b"\0"], check);

    // The verifier end to end: a genuine signature over whatever bytes the mutation made,
    // so every step up to reading the archive runs.
    let key = SigningKey::generate().unwrap();
    let trust = TrustSet::new(vec![key.public_key()], 1).unwrap();
    fuzz("verify", &bundles, &[b"\0"], |gz| {
        let statement = Statement::new(
            BundleRef {
                sha256: skiff_proto::Sha256Digest::of(gz),
                size: gz.len() as u64,
            },
            "fuzz",
            1,
            None,
        );
        let envelope = Envelope::sign_statement(&statement, &[&key]).to_json();
        let policy = Policy {
            limits,
            ..Policy::default()
        };
        if let Ok(v) = verify_bundle(&trust, &envelope, gz, &policy) {
            assert_eq!(v.bundle.manifest.channel, "fuzz");
        }
    });
}

/// The hub's direct path answers a request only when hyper would frame it the same way.
#[test]
fn fuzz_the_direct_http_path() {
    let seeds: Vec<Vec<u8>> = [
        &b"GET /v1/clusters/edge-1/desired?wait=60 HTTP/1.1\r\nhost: hub\r\nauthorization: Bearer skc_abc\r\nif-none-match: \"e\"\r\n\r\n"[..],
        b"GET /v1/clusters/a/desired HTTP/1.1\r\n\r\n",
        b"POST /v1/clusters/a/reports HTTP/1.1\r\ncontent-length: 2\r\n\r\n[]",
        b"GET /v1/bundles/abc HTTP/1.1\r\nrange: bytes=0-9\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    let tokens: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b"authorization: Bearer x\r\n",
        b"content-length: 5\r\n",
        b"transfer-encoding: chunked\r\n",
        b"connection: close\r\n",
        b"?wait=1",
        b"&x=1",
        b" HTTP/1.0",
        b"\0",
        b"%2e%2e/",
    ];
    fuzz("fastpath", &seeds, tokens, |input| match classify(input) {
        Head::Direct(_) => {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let framed = req.parse(input);
            assert!(
                matches!(framed, Ok(httparse::Status::Complete(n)) if n == input.len()),
                "{input:?}"
            );
            assert!(
                input
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b != b'\n' || (i > 0 && input[i - 1] == b'\r')),
                "bare LF taken directly: {input:?}"
            );
            assert_eq!(req.method, Some("GET"));
        }
        Head::Bad(_) => {
            let text = String::from_utf8_lossy(input).to_ascii_lowercase();
            assert!(text.matches("authorization").count() >= 2, "{input:?}");
        }
        Head::Hyper => {}
    });
}
