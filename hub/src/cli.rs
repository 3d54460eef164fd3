//! The `skiff-hub` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use skiff_proto::Sha256Digest;
use skiff_proto::bundle::{Limits, read_bundle};
use skiff_proto::keys::SigningKey;

use crate::build::{BuildRequest, Input, build};
use crate::sign::{PUBLIC_KEY_FILE, SIGNING_KEY_FILE, keygen};

/// The skiff hub: turns Git commits into signed, reproducible bundles for a fleet of clusters.
#[derive(Debug, Parser)]
#[command(name = "skiff-hub", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 signing key pair (signing.pem, signing.pub.pem).
    ///
    /// The private key is written with mode 0600; give the public key to every agent
    /// (`trusted_keys`). Existing files are never overwritten.
    Keygen {
        /// Folder to write the key pair into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Build and inspect bundles by hand (what the hub does for every new commit).
    #[command(subcommand)]
    Bundle(BundleCommand),
}

/// `skiff-hub bundle …`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build a signed bundle from a folder or a Git commit.
    ///
    /// Takes every *.yaml, *.yml and *.json file below the path (hidden files and folders
    /// skipped), checks that each document is a Kubernetes object, and writes
    /// OUT/<sha256>.tar.gz and OUT/<sha256>.dsse.json. Prints the digest on stdout.
    /// From Git, the tree is read at the exact commit: uncommitted changes never leak in.
    ///
    /// Example: skiff-hub bundle build --repo ./fleet --rev main --path apps \
    ///            --channel prod --generation 1 --key keys/signing.pem --out out/
    Build(Box<BuildArgs>),
    /// Show what a bundle holds (channel, source, files) without trusting it.
    ///
    /// The structure is checked (safe paths, digests, limits); signatures are not. Use
    /// `skiff-agent bundle verify` to check a bundle against trusted keys.
    Inspect {
        /// The bundle (<sha256>.tar.gz).
        bundle: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Arguments of `bundle build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build from this folder on disk.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["repo", "rev", "path"], required_unless_present = "repo")]
    pub dir: Option<PathBuf>,
    /// Build from this Git repository (bare or not); needs --rev.
    #[arg(long, value_name = "PATH", requires = "rev")]
    pub repo: Option<PathBuf>,
    /// Commit, branch or tag to build (with --repo).
    #[arg(long, value_name = "REV", requires = "repo")]
    pub rev: Option<String>,
    /// Folder inside the repository (with --repo); default: the whole tree.
    #[arg(long, value_name = "SUBDIR", requires = "repo")]
    pub path: Option<String>,
    /// Channel the bundle is for (becomes the label skiff.dev/channel).
    #[arg(long)]
    pub channel: String,
    /// Generation number to sign; agents refuse a generation lower than one they accepted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub generation: u64,
    /// Private signing key (PKCS#8 PEM), e.g. from `skiff-hub keygen`.
    #[arg(long, value_name = "PEM", env = "SKIFF_HUB_SIGNING_KEY")]
    pub key: PathBuf,
    /// Folder to write <sha256>.tar.gz and <sha256>.dsse.json into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Default namespace for namespaced objects that name none (as `kubectl -n`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Branch to record in the bundle (default: --rev when it names a branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Repository URL to record (default: the repository's `origin` remote, credentials removed).
    #[arg(long, value_name = "URL")]
    pub source_repo: Option<String>,
    /// Make the statement expire this long after signing (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let public = keygen(&out)?;
            eprintln!(
                "wrote {} (keep it secret) and {} (give it to agents)",
                out.join(SIGNING_KEY_FILE).display(),
                out.join(PUBLIC_KEY_FILE).display()
            );
            println!("{}", public.keyid());
            Ok(())
        }
        Command::Bundle(BundleCommand::Build(args)) => build_command(args),
        Command::Bundle(BundleCommand::Inspect { bundle, output }) => inspect_command(&bundle, output),
    }
}

fn build_command(args: Box<BuildArgs>) -> anyhow::Result<()> {
    let input = match (args.dir, args.repo, args.rev) {
        (Some(dir), _, _) => Input::Dir(dir),
        (None, Some(repo), Some(rev)) => Input::Git {
            repo,
            rev,
            path: args.path.unwrap_or_default(),
        },
        _ => anyhow::bail!("give either --dir PATH or --repo PATH --rev REV"),
    };
    let key = SigningKey::load(&args.key)?;
    let request = BuildRequest {
        input,
        channel: args.channel,
        generation: args.generation,
        default_namespace: args.namespace,
        branch: args.branch,
        source_repo: args.source_repo,
        expires_in: args.expires_in,
    };
    let built = build(&request, &key)?;
    let (tarball, envelope) = built.write_to(&args.out)?;
    eprintln!(
        "built {} ({} bytes, {} files) and {}: channel {} generation {}{}",
        tarball.display(),
        built.tarball.len(),
        built.manifest.files.len(),
        envelope.display(),
        built.statement.channel,
        built.statement.generation,
        built
            .statement
            .commit
            .as_deref()
            .map(|c| format!(" commit {c}"))
            .unwrap_or_default(),
    );
    println!("{}", built.digest());
    Ok(())
}

fn inspect_command(path: &std::path::Path, output: Output) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let digest = Sha256Digest::of(&bytes);
    let bundle = read_bundle(bytes.as_slice(), &Limits::default())
        .with_context(|| format!("{} is not a valid bundle", path.display()))?;
    let m = &bundle.manifest;
    if output == Output::Json {
        let value = serde_json::json!({ "sha256": digest, "size": bytes.len(), "manifest": m });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    println!("bundle     {}", path.display());
    println!("sha256     {digest}");
    println!("size       {} bytes", bytes.len());
    println!("format     v{}", m.format_version);
    println!("channel    {}", m.channel);
    println!("repo       {}", or_dash(&m.source.repo));
    println!("branch     {}", or_dash(&m.source.branch));
    println!("commit     {}", or_dash(&m.source.commit));
    println!("path       {}", or_dash(&m.source.path));
    println!("namespace  {}", or_dash(&m.default_namespace));
    println!("files      {} ({} bytes)", m.files.len(), m.total_size);
    for f in &m.files {
        println!("  {:>9}  {}  {}", f.size, &f.sha256.to_string()[..12], f.path);
    }
    println!("(structure checked; signatures not: use `skiff-agent bundle verify`)");
    Ok(())
}
