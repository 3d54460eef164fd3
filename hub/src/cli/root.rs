//! `skiff-hub root …`: the trust root chain, on files only (no hub needed), so root keys
//! can stay on an offline machine: `init` writes version 1, `rotate` the next version,
//! `sign` adds a signature, `show` checks the chain as agents walk it and says what waits
//! for which signatures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use skiff_proto::dsse::Envelope;
use skiff_proto::keys::{PublicKey, SigningKey};
use skiff_proto::root::{self, ROOT_TYPE, Role, Root, key_entry};
use skiff_proto::statement::Timestamp;

use super::Output;

/// `skiff-hub root …`
#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Write the first root (DIR/1.root.json): the root keys and how many must sign the
    /// next root, the keys that sign bundles and assignments. Signed with each --sign key
    /// given; add the others' signatures with `skiff-hub root sign`.
    Init {
        /// Folder of the chain (created).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// What the root says.
        #[command(flatten)]
        spec: RootSpec,
        /// Private keys (PKCS#8 PEM) to sign with now.
        #[arg(long = "sign", value_name = "PEM")]
        sign: Vec<PathBuf>,
    },
    /// Write the next root (DIR/<N+1>.root.json) from the newest: what is given replaces what
    /// it said (a signer left out is revoked once agents walk to it). It must be signed by a
    /// threshold of the current root keys and of its own.
    Rotate {
        /// Folder of the chain.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// What changes.
        #[command(flatten)]
        spec: RootSpec,
        /// Private keys (PKCS#8 PEM) to sign with now.
        #[arg(long = "sign", value_name = "PEM")]
        sign: Vec<PathBuf>,
    },
    /// Add a signature to a root file (kept if that key signed already).
    Sign {
        /// The root file (`<version>.root.json`).
        file: PathBuf,
        /// Private key (PKCS#8 PEM).
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
    },
    /// Check the chain in DIR as agents walk it; for each version its keys, roles, expiry,
    /// and what signatures it still waits for.
    Show {
        /// Folder of the chain.
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// What a root says; on `rotate`, only what is given changes.
#[derive(Debug, Args)]
pub struct RootSpec {
    /// A root key (public or private PEM: only the public part is used); repeat.
    #[arg(long = "root-key", value_name = "PEM")]
    root_keys: Vec<PathBuf>,
    /// Root keys that must sign the next root (default 1 on init).
    #[arg(long, value_name = "N")]
    root_threshold: Option<usize>,
    /// A key that signs bundles (the hub's signing.pub.pem); repeat.
    #[arg(long = "signer", value_name = "PEM")]
    signers: Vec<PathBuf>,
    /// Bundle signers that must sign (default 1 on init).
    #[arg(long, value_name = "N")]
    signer_threshold: Option<usize>,
    /// A key that signs assignments (default: the bundle signers, and on rotate it follows
    /// them unless set apart); repeat.
    #[arg(long = "assignment-signer", value_name = "PEM")]
    assignment_signers: Vec<PathBuf>,
    /// Assignment signers that must sign (default 1 on init).
    #[arg(long, value_name = "N")]
    assignment_threshold: Option<usize>,
    /// A channel with its own signers: NAME=KEY.pem,KEY.pem[:THRESHOLD] (e.g. two for
    /// prod: a CI key and a release manager's); NAME= removes it; repeat.
    #[arg(long = "channel", value_name = "NAME=PEM,PEM[:N]")]
    channels: Vec<String>,
    /// How long the root is valid (agents accept nothing new under an expired one).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "365d")]
    expires: Duration,
}

/// Reads a public key from a public (SPKI) or private (PKCS#8) PEM file.
fn public_key(path: &Path) -> anyhow::Result<PublicKey> {
    match PublicKey::load(path) {
        Ok(k) => Ok(k),
        Err(_) => Ok(SigningKey::load(path)
            .with_context(|| format!("{}: neither a public nor a private Ed25519 key", path.display()))?
            .public_key()),
    }
}

fn role_of(paths: &[PathBuf], threshold: usize, keys: &mut BTreeMap<String, String>) -> anyhow::Result<Role> {
    let mut ids = BTreeSet::new();
    for p in paths {
        let k = public_key(p)?;
        let (id, text) = key_entry(&k);
        keys.insert(id.clone(), text);
        ids.insert(id);
    }
    Ok(Role { keys: ids, threshold })
}

/// The keys a role names, with their base64 text, from a root.
fn carry(role: &Role, from: &Root, keys: &mut BTreeMap<String, String>) {
    for id in &role.keys {
        if let Some(t) = from.keys.get(id) {
            keys.insert(id.clone(), t.clone());
        }
    }
}

/// Builds a root at `version` from `spec`, taking what it leaves out from `previous`.
fn make(spec: &RootSpec, version: u64, previous: Option<&Root>) -> anyhow::Result<Root> {
    let mut keys = BTreeMap::new();
    let mut pick = |paths: &[PathBuf],
                    threshold: Option<usize>,
                    old: Option<&Role>,
                    what: &str|
     -> anyhow::Result<Role> {
        match (paths.is_empty(), old) {
            (false, _) => {
                let default = old.map_or(1, |o| o.threshold.min(paths.len()));
                role_of(paths, threshold.unwrap_or(default), &mut keys)
            }
            (true, Some(o)) => {
                let mut r = o.clone();
                if let Some(t) = threshold {
                    r.threshold = t;
                }
                carry(&r, previous.expect("old role comes from a root"), &mut keys);
                Ok(r)
            }
            (true, None) => anyhow::bail!("--{what} is required"),
        }
    };
    let root_role = pick(
        &spec.root_keys,
        spec.root_threshold,
        previous.map(|p| &p.root),
        "root-key",
    )?;
    let bundles = pick(
        &spec.signers,
        spec.signer_threshold,
        previous.map(|p| &p.bundles),
        "signer",
    )?;
    // Assignment signers follow the bundle signers unless set apart (given, or different
    // in the previous root).
    let follows =
        spec.assignment_signers.is_empty() && previous.is_none_or(|p| p.assignments.keys == p.bundles.keys);
    let assignments = match (follows, previous) {
        (true, _) => {
            let mut r = bundles.clone();
            r.threshold = spec
                .assignment_threshold
                .or(previous.map(|p| p.assignments.threshold))
                .unwrap_or(1)
                .min(r.keys.len());
            r
        }
        _ => pick(
            &spec.assignment_signers,
            spec.assignment_threshold,
            previous.map(|p| &p.assignments),
            "assignment-signer",
        )?,
    };
    let mut channels: BTreeMap<String, Role> = previous.map(|p| p.channels.clone()).unwrap_or_default();
    if let Some(p) = previous {
        for r in channels.values() {
            carry(r, p, &mut keys);
        }
    }
    for c in &spec.channels {
        let (name, rest) = c
            .split_once('=')
            .with_context(|| format!("--channel {c:?}: expected NAME=KEY.pem,KEY.pem[:N]"))?;
        if rest.is_empty() {
            channels.remove(name);
            continue;
        }
        let (list, threshold) = match rest.rsplit_once(':') {
            Some((l, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => (l, Some(n.parse()?)),
            _ => (rest, None),
        };
        let paths: Vec<PathBuf> = list.split(',').map(PathBuf::from).collect();
        let n = threshold.unwrap_or(paths.len());
        channels.insert(name.to_owned(), role_of(&paths, n, &mut keys)?);
    }
    let now = Timestamp::now();
    let root = Root {
        root_type: ROOT_TYPE.to_owned(),
        version,
        issued: now,
        expires: now.plus(spec.expires),
        keys,
        root: root_role,
        bundles,
        assignments,
        channels,
    };
    root.check_shape().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(root)
}

fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    paths
        .iter()
        .map(|p| SigningKey::load(p).with_context(|| format!("signing key {}", p.display())))
        .collect()
}

fn write_new(path: &Path, envelope: &Envelope) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(&envelope.to_json())?;
    Ok(())
}

/// The chain in `dir`, in version order, as files: (version, path, envelope).
fn files(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf, Envelope)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let path = e.path();
        if !path.to_string_lossy().ends_with(".root.json") {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let env = root::read_envelope(&bytes).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        let v = root::peek_version(&env).with_context(|| format!("{}: no version", path.display()))?;
        out.push((v, path, env));
    }
    out.sort_by_key(|(v, _, _)| *v);
    Ok(out)
}

/// A root's content, read without checking signatures (what `show` and `rotate` start from).
fn content(e: &Envelope) -> anyhow::Result<Root> {
    Ok(serde_json::from_slice(&e.payload_bytes()?)?)
}

/// What signatures a root still waits for: of `role` (in `of`), how many more.
fn waiting(e: &Envelope, of: &Root, role: &Role) -> Option<String> {
    let payload = e.payload_bytes().ok()?;
    let message = skiff_proto::dsse::pae(&e.payload_type, &payload);
    let signed: BTreeSet<&str> = e
        .signatures
        .iter()
        .filter(|s| {
            of.public_key(&s.keyid).is_some_and(|k| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &s.sig)
                    .is_ok_and(|sig| k.verify(&message, &sig))
            })
        })
        .map(|s| s.keyid.as_str())
        .collect();
    let have = role.keys.iter().filter(|k| signed.contains(k.as_str())).count();
    (have < role.threshold).then(|| {
        let missing: Vec<String> = role
            .keys
            .iter()
            .filter(|k| !signed.contains(k.as_str()))
            .map(|k| k[..16].to_owned())
            .collect();
        format!(
            "{} more of [{}] (root keys of version {})",
            role.threshold - have,
            missing.join(", "),
            of.version
        )
    })
}

/// Runs a `root` command.
pub fn run(command: RootCommand) -> anyhow::Result<()> {
    match command {
        RootCommand::Init { dir, spec, sign } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if !files(&dir)?.is_empty() {
                anyhow::bail!(
                    "{} already holds a chain: use `skiff-hub root rotate`",
                    dir.display()
                );
            }
            let root = make(&spec, 1, None)?;
            let keys = load_keys(&sign)?;
            let envelope = root.sign(&keys.iter().collect::<Vec<_>>());
            let path = dir.join("1.root.json");
            write_new(&path, &envelope)?;
            println!("wrote {}", path.display());
            report(&dir)
        }
        RootCommand::Rotate { dir, spec, sign } => {
            let chain = files(&dir)?;
            let (v, _, newest) = chain
                .last()
                .with_context(|| format!("{} holds no root: use `skiff-hub root init`", dir.display()))?;
            let previous = content(newest)?;
            let root = make(&spec, v + 1, Some(&previous))?;
            let keys = load_keys(&sign)?;
            let envelope = root.sign(&keys.iter().collect::<Vec<_>>());
            let path = dir.join(format!("{}.root.json", v + 1));
            write_new(&path, &envelope)?;
            println!("wrote {}", path.display());
            report(&dir)
        }
        RootCommand::Sign { file, key } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut envelope =
                root::read_envelope(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if envelope.payload_type != root::ROOT_PAYLOAD_TYPE {
                anyhow::bail!(
                    "{}: not a root (payloadType {:?})",
                    file.display(),
                    envelope.payload_type
                );
            }
            let k = SigningKey::load(&key).with_context(|| format!("signing key {}", key.display()))?;
            let id = k.public_key().keyid();
            if envelope.signatures.iter().any(|s| s.keyid == id) {
                println!("{} is already signed by {}", file.display(), &id[..16]);
                return Ok(());
            }
            let payload = envelope.payload_bytes()?;
            let signed = Envelope::sign(&envelope.payload_type, &payload, &[&k]);
            envelope.signatures.extend(signed.signatures);
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, envelope.to_json())?;
            std::fs::rename(&tmp, &file)?;
            println!("signed {} with {}", file.display(), &id[..16]);
            if let Some(dir) = file.parent() {
                report(dir)?;
            }
            Ok(())
        }
        RootCommand::Show { dir, output } => {
            if output == Output::Json {
                let roots: Vec<Root> = files(&dir)?
                    .iter()
                    .map(|(_, _, e)| content(e))
                    .collect::<Result<_, _>>()?;
                println!("{}", serde_json::to_string_pretty(&roots)?);
                return Ok(());
            }
            report(&dir)
        }
    }
}

/// Prints the chain: each version's roles and expiry, whether it verifies as agents walk
/// it, and what it waits for.
fn report(dir: &Path) -> anyhow::Result<()> {
    let chain = files(dir)?;
    let mut trusted: Option<Root> = None;
    for (v, path, e) in &chain {
        let r = content(e)?;
        let role = |x: &Role| format!("{} of {}", x.threshold, x.keys.len());
        println!(
            "version {v} ({}): root keys {}, bundle signers {}, assignment signers {}{}; expires {}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            role(&r.root),
            role(&r.bundles),
            role(&r.assignments),
            r.channels
                .iter()
                .map(|(c, x)| format!(", {c}: {}", role(x)))
                .collect::<String>(),
            r.expires
        );
        let checked = match &trusted {
            None => root::verify_initial(e),
            Some(t) => root::verify_next(t, e),
        };
        match checked {
            Ok(ok) => {
                println!("  verifies");
                trusted = Some(ok);
            }
            Err(error) => {
                println!("  does not verify yet: {error}");
                let mut waits = Vec::new();
                if let Some(t) = &trusted {
                    waits.extend(waiting(e, t, &t.root));
                }
                waits.extend(waiting(e, &r, &r.root));
                for w in waits {
                    println!("  waits for {w}");
                }
                break;
            }
        }
    }
    if let Some(t) = &trusted
        && let Err(e) = t.check_fresh(Timestamp::now())
    {
        println!("WARNING: {e}");
    }
    Ok(())
}
