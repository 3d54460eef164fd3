//! Hostile bundles, crafted byte by byte, each refused by the reader with its own error.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use skiff_proto::Sha256Digest;
use skiff_proto::bundle::{
    BundleError, Limits, MANIFEST_NAME, PathProblem, Source, read_bundle, read_manifest, write_bundle,
};

const CM: &[u8] = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";
const NS: &[u8] = b"apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";

/// One raw tar entry: name bytes, type flag, content, link target.
struct Raw {
    name: Vec<u8>,
    kind: u8,
    data: Vec<u8>,
    link: Vec<u8>,
}

fn file(name: &str, data: &[u8]) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        kind: b'0',
        data: data.to_vec(),
        link: Vec::new(),
    }
}

fn special(name: &str, kind: u8, link: &str) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        kind,
        data: Vec::new(),
        link: link.as_bytes().to_vec(),
    }
}

/// A tar stream written by hand, so nothing in the tar crate can refuse to write it.
fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let b = h.as_mut_bytes();
            b[..e.name.len()].copy_from_slice(&e.name);
            b[157..157 + e.link.len()].copy_from_slice(&e.link);
        }
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A `skiff-bundle.json` listing `files` (path, content) truthfully.
fn manifest(files: &[(&str, &[u8])]) -> Vec<u8> {
    let list: Vec<_> = files
        .iter()
        .map(|(p, d)| serde_json::json!({"path": p, "sha256": Sha256Digest::of(d), "size": d.len()}))
        .collect();
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    serde_json::to_vec(&serde_json::json!({
        "formatVersion": 1, "channel": "prod", "source": {}, "files": list, "totalSize": total
    }))
    .unwrap()
}

fn read(entries: &[Raw]) -> Result<skiff_proto::bundle::Bundle, BundleError> {
    read_bundle(gz(&raw_tar(entries)).as_slice(), &Limits::default())
}

fn good() -> Vec<Raw> {
    vec![
        file(MANIFEST_NAME, &manifest(&[("a.yaml", CM), ("b/b.yaml", NS)])),
        file("manifests/a.yaml", CM),
        file("manifests/b/b.yaml", NS),
    ]
}

#[test]
fn a_hand_made_well_formed_bundle_reads() {
    let bundle = read(&good()).unwrap();
    assert_eq!(bundle.files.len(), 2);
    assert_eq!(bundle.files[1].bytes, NS);
}

#[test]
fn written_bundles_read_back_and_are_deterministic() {
    let files: BTreeMap<String, Vec<u8>> = [("z.yaml", CM), ("a/very/".repeat(30).as_str(), NS)]
        .iter()
        .map(|(p, d)| (format!("{p}x.yaml"), d.to_vec()))
        .collect();
    let one = write_bundle(
        "prod",
        Source::default(),
        Some("apps".into()),
        &files,
        &Limits::default(),
    )
    .unwrap();
    let two = write_bundle(
        "prod",
        Source::default(),
        Some("apps".into()),
        &files,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(one.bytes, two.bytes);
    assert_eq!(one.digest, Sha256Digest::of(&one.bytes));
    // gzip header: no name flag, mtime 0, OS unknown.
    assert_eq!(&one.bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let back = read_bundle(one.bytes.as_slice(), &Limits::default()).unwrap();
    assert_eq!(back.manifest, one.manifest);
    assert_eq!(back.files.len(), 2);
    assert!(
        back.files[0].path.len() > 200,
        "long names survive: {}",
        back.files[0].path
    );
}

#[test]
fn absolute_path() {
    let mut e = good();
    e.push(file("/etc/cron.d/evil", b"x"));
    assert!(matches!(
        read(&e),
        Err(BundleError::UnsafePath {
            problem: PathProblem::Absolute,
            ..
        })
    ));
}

#[test]
fn parent_dir_traversal() {
    let mut e = good();
    e.push(file("manifests/../../evil.yaml", b"x"));
    assert!(matches!(
        read(&e),
        Err(BundleError::UnsafePath {
            problem: PathProblem::ParentDir,
            ..
        })
    ));
}

#[test]
fn parent_dir_in_the_manifest_list() {
    let e = vec![
        file(MANIFEST_NAME, &manifest(&[("../x.yaml", CM)])),
        file("manifests/../x.yaml", CM),
    ];
    assert!(matches!(
        read(&e),
        Err(BundleError::UnsafePath {
            problem: PathProblem::ParentDir,
            ..
        })
    ));
}

#[test]
fn symlink_entry() {
    let mut e = good();
    e.insert(1, special("manifests/a.yaml", b'2', "/etc/shadow"));
    assert!(matches!(
        read(&e),
        Err(BundleError::NotRegularFile {
            kind: "symbolic link",
            ..
        })
    ));
}

#[test]
fn hard_link_entry() {
    let mut e = good();
    e.insert(1, special("manifests/a.yaml", b'1', "manifests/b/b.yaml"));
    assert!(matches!(
        read(&e),
        Err(BundleError::NotRegularFile {
            kind: "hard link",
            ..
        })
    ));
}

#[test]
fn device_entries() {
    for (kind, name) in [(b'3', "character device"), (b'4', "block device")] {
        let mut e = good();
        e.insert(1, special("manifests/dev", kind, ""));
        match read(&e) {
            Err(BundleError::NotRegularFile { kind, .. }) => assert_eq!(kind, name),
            other => panic!("expected {name} refused, got {other:?}"),
        }
    }
}

#[test]
fn fifo_entry() {
    let mut e = good();
    e.insert(1, special("manifests/pipe", b'6', ""));
    assert!(matches!(
        read(&e),
        Err(BundleError::NotRegularFile { kind: "FIFO", .. })
    ));
}

#[test]
fn directory_entry() {
    let mut e = good();
    e.insert(1, special("manifests/b/", b'5', ""));
    assert!(matches!(
        read(&e),
        Err(BundleError::NotRegularFile {
            kind: "directory",
            ..
        })
    ));
}

#[test]
fn duplicate_entry_in_the_archive() {
    let mut e = good();
    e.push(file("manifests/a.yaml", CM));
    assert!(matches!(read(&e), Err(BundleError::DuplicatePath { .. })));
}

#[test]
fn second_manifest_shadowing_the_first() {
    let mut e = good();
    e.push(file(MANIFEST_NAME, &manifest(&[])));
    assert!(matches!(read(&e), Err(BundleError::DuplicatePath { .. })));
}

#[test]
fn duplicate_path_in_the_manifest_list() {
    let e = vec![
        file(MANIFEST_NAME, &manifest(&[("a.yaml", CM), ("a.yaml", CM)])),
        file("manifests/a.yaml", CM),
    ];
    assert!(matches!(read(&e), Err(BundleError::DuplicatePath { .. })));
}

#[test]
fn non_utf8_name() {
    let mut e = good();
    e.push(Raw {
        name: b"manifests/\xff\xfe.yaml".to_vec(),
        kind: b'0',
        data: b"x".to_vec(),
        link: Vec::new(),
    });
    assert!(matches!(read(&e), Err(BundleError::NonUtf8Path { .. })));
}

#[test]
fn the_manifest_alone_reads_as_the_whole_bundle_does_and_is_checked_the_same() {
    let limits = Limits::default();
    let whole = read(&good()).unwrap();
    let alone = read_manifest(gz(&raw_tar(&good())).as_slice(), &limits).unwrap();
    assert_eq!(alone, whole.manifest);
    // What follows the manifest is not read: a damaged tail does not stop it (the
    // tarball's signed digest is what vouches for the rest).
    let mut tail_damaged = good();
    tail_damaged.push(file("stray.txt", b"x"));
    assert!(read(&tail_damaged).is_err());
    assert_eq!(
        read_manifest(gz(&raw_tar(&tail_damaged)).as_slice(), &limits).unwrap(),
        whole.manifest
    );
    // The manifest itself is checked as a full read checks it.
    let e = vec![file("manifests/a.yaml", CM)];
    assert!(matches!(
        read_manifest(gz(&raw_tar(&e)).as_slice(), &limits),
        Err(BundleError::ManifestMissing { .. })
    ));
    let bad = vec![file(MANIFEST_NAME, b"{\"formatVersion\": 9}")];
    assert!(read_manifest(gz(&raw_tar(&bad)).as_slice(), &limits).is_err());
}

#[test]
fn missing_manifest() {
    let e = vec![file("manifests/a.yaml", CM)];
    assert!(matches!(read(&e), Err(BundleError::ManifestMissing { found }) if found == "manifests/a.yaml"));
    assert!(matches!(read(&[]), Err(BundleError::ManifestMissing { found }) if found.is_empty()));
}

#[test]
fn malformed_manifest() {
    for bad in [
        &b"{not json"[..],
        br#"{"formatVersion":1}"#,
        br#"{"formatVersion":1,"channel":"prod","source":{},"files":[],"totalSize":0,"extra":1}"#,
    ] {
        let e = vec![file(MANIFEST_NAME, bad)];
        assert!(
            matches!(read(&e), Err(BundleError::ManifestMalformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn unsupported_format_version() {
    let json = String::from_utf8(manifest(&[]))
        .unwrap()
        .replace("\"formatVersion\":1", "\"formatVersion\":2");
    let e = vec![file(MANIFEST_NAME, json.as_bytes())];
    assert!(matches!(
        read(&e),
        Err(BundleError::UnsupportedFormat { found: 2 })
    ));
}

#[test]
fn file_whose_digest_differs() {
    let mut e = good();
    e[1] = file(
        "manifests/a.yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: X}\n",
    );
    assert!(matches!(read(&e), Err(BundleError::DigestMismatch { path, .. }) if path == "a.yaml"));
}

#[test]
fn file_whose_size_differs() {
    let mut e = good();
    e[1] = file("manifests/a.yaml", b"apiVersion: v1\n");
    assert!(matches!(read(&e), Err(BundleError::SizeMismatch { path, .. }) if path == "a.yaml"));
}

#[test]
fn file_not_listed() {
    let mut e = good();
    e.push(file("manifests/extra.yaml", CM));
    assert!(matches!(read(&e), Err(BundleError::UnlistedFile { path }) if path == "manifests/extra.yaml"));
    let mut e = good();
    e.push(file("outside.txt", b"x"));
    assert!(matches!(read(&e), Err(BundleError::UnlistedFile { .. })));
}

#[test]
fn listed_file_missing() {
    let mut e = good();
    e.pop();
    assert!(matches!(read(&e), Err(BundleError::MissingFile { path }) if path == "b/b.yaml"));
}

#[test]
fn total_size_lie() {
    let json = String::from_utf8(manifest(&[("a.yaml", CM)]))
        .unwrap()
        .replace(&format!("\"totalSize\":{}", CM.len()), "\"totalSize\":1");
    let e = vec![file(MANIFEST_NAME, json.as_bytes()), file("manifests/a.yaml", CM)];
    assert!(matches!(
        read(&e),
        Err(BundleError::TotalSizeMismatch { declared: 1, .. })
    ));
}

#[test]
fn unsorted_file_list() {
    let e = vec![
        file(MANIFEST_NAME, &manifest(&[("b.yaml", NS), ("a.yaml", CM)])),
        file("manifests/a.yaml", CM),
        file("manifests/b.yaml", NS),
    ];
    assert!(matches!(read(&e), Err(BundleError::UnsortedFiles { .. })));
}

#[test]
fn caps_on_file_count_file_size_and_total() {
    let limits = Limits {
        max_files: 1,
        ..Limits::default()
    };
    let gzipped = gz(&raw_tar(&good()));
    assert!(matches!(
        read_bundle(gzipped.as_slice(), &limits),
        Err(BundleError::TooManyFiles { count: 2, limit: 1 })
    ));
    let limits = Limits {
        max_file_size: 10,
        ..Limits::default()
    };
    assert!(matches!(
        read_bundle(gzipped.as_slice(), &limits),
        Err(BundleError::FileTooLarge { limit: 10, .. })
    ));
    let limits = Limits {
        max_total_size: CM.len() as u64,
        ..Limits::default()
    };
    assert!(matches!(
        read_bundle(gzipped.as_slice(), &limits),
        Err(BundleError::TotalTooLarge { .. })
    ));
    let limits = Limits {
        max_manifest_size: 16,
        ..Limits::default()
    };
    assert!(matches!(
        read_bundle(gzipped.as_slice(), &limits),
        Err(BundleError::ManifestTooLarge { .. })
    ));
}

#[test]
fn the_writer_refuses_what_readers_would_refuse() {
    let files: BTreeMap<String, Vec<u8>> = [("../x.yaml".to_owned(), CM.to_vec())].into();
    assert!(matches!(
        write_bundle("prod", Source::default(), None, &files, &Limits::default()),
        Err(BundleError::UnsafePath { .. })
    ));
    let files: BTreeMap<String, Vec<u8>> = [("x.yaml".to_owned(), CM.to_vec())].into();
    assert!(matches!(
        write_bundle("prod/eu", Source::default(), None, &files, &Limits::default()),
        Err(BundleError::BadChannel { .. })
    ));
    assert!(matches!(
        write_bundle(
            "prod",
            Source::default(),
            Some("Bad_NS".into()),
            &files,
            &Limits::default()
        ),
        Err(BundleError::BadNamespace { .. })
    ));
}

/// A GNU long-name record of 256 MiB of zeros compresses to a few hundred KiB. The reader
/// must stop at its decompression cap instead of inflating it.
#[test]
fn gzip_bomb_stops_at_the_cap() {
    let limits = Limits {
        max_files: 10,
        max_file_size: 1 << 20,
        max_total_size: 1 << 20,
        max_manifest_size: 1 << 16,
    };
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    let mut first = raw_tar(&[file(MANIFEST_NAME, &manifest(&[]))]);
    first.truncate(first.len() - 1024); // drop the end-of-archive blocks
    enc.write_all(&first).unwrap();
    let bomb_size: u64 = 256 << 20;
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
    h.set_size(bomb_size);
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(bomb_size >> 20) {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "bomb is small: {}", bomb.len());
    match read_bundle(bomb.as_slice(), &limits) {
        Err(BundleError::DecompressedTooLarge { limit }) => assert_eq!(limit, limits.max_tar_stream()),
        other => panic!("expected the cap to stop the bomb, got {other:?}"),
    }
}

#[test]
fn truncated_and_garbage_input() {
    let full = gz(&raw_tar(&good()));
    assert!(matches!(
        read_bundle(&full[..full.len() / 2], &Limits::default()),
        Err(BundleError::Corrupt(_))
    ));
    assert!(matches!(
        read_bundle(&b"not gzip at all"[..], &Limits::default()),
        Err(BundleError::Corrupt(_))
    ));
}

/// Data after the end-of-archive blocks: a reader that stops at the end and one that reads
/// on would see different things.
#[test]
fn data_after_the_end_of_archive_is_refused() {
    let mut tar = raw_tar(&good());
    tar.extend_from_slice(&raw_tar(&[file("manifests/evil.yaml", CM)]));
    assert!(matches!(
        read_bundle(gz(&tar).as_slice(), &Limits::default()),
        Err(BundleError::TrailingData(_))
    ));
    // Zero padding to a full tar record is what tar writers add: allowed.
    let mut padded = raw_tar(&good());
    padded.resize(padded.len().div_ceil(10240) * 10240, 0);
    assert!(read_bundle(gz(&padded).as_slice(), &Limits::default()).is_ok());
}

/// A second gzip member (which `gunzip` would concatenate) or trailing garbage.
#[test]
fn a_second_gzip_member_or_trailing_bytes_are_refused() {
    let mut two = gz(&raw_tar(&good()));
    two.extend_from_slice(&gz(b"more"));
    assert!(matches!(
        read_bundle(two.as_slice(), &Limits::default()),
        Err(BundleError::TrailingData(_))
    ));
    let mut junk = gz(&raw_tar(&good()));
    junk.extend_from_slice(b"junk");
    assert!(matches!(
        read_bundle(junk.as_slice(), &Limits::default()),
        Err(BundleError::TrailingData(_))
    ));
}
