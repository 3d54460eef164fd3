//! The `skiff-agent` command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skiff_proto::verify::Policy;

use crate::verify::{check_files, load_trust};

/// The skiff agent: pulls signed bundles, verifies them and applies them to this cluster.
#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with bundle files directly (air-gapped sites, debugging).
    #[command(subcommand)]
    Bundle(BundleCommand),
}

/// `skiff-agent bundle …`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Verify a bundle and its signed envelope against trusted public keys.
    ///
    /// Runs every verification step an agent runs before applying: signatures (and
    /// threshold), statement, bundle digest and size, channel, expiry, and safe reading of
    /// the content. Exits 0 and prints channel, generation and commit when the bundle
    /// verifies; exits 1 with the failed step otherwise.
    ///
    /// Example: skiff-agent bundle verify --key signing.pub.pem \
    ///            out/<sha256>.tar.gz out/<sha256>.dsse.json
    Verify {
        /// A trusted public key (SPKI PEM); repeat for several.
        #[arg(long = "key", value_name = "PUB.pem", required = true)]
        keys: Vec<PathBuf>,
        /// How many distinct trusted keys must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// Refuse the bundle unless it was signed for this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Also write the verified manifests into this folder (must not exist yet).
        #[arg(long, value_name = "DIR")]
        extract: Option<PathBuf>,
        /// The bundle (<sha256>.tar.gz).
        bundle: PathBuf,
        /// Its envelope (<sha256>.dsse.json).
        envelope: PathBuf,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bundle(BundleCommand::Verify {
            keys,
            threshold,
            channel,
            extract,
            bundle,
            envelope,
        }) => {
            let trust = load_trust(&keys, threshold)?;
            let policy = Policy {
                channel,
                ..Policy::default()
            };
            let verified = check_files(&trust, &bundle, &envelope, &policy)?;
            if let Some(dir) = &extract {
                if dir.exists() {
                    anyhow::bail!("--extract {}: already exists; give a new folder", dir.display());
                }
                verified
                    .bundle
                    .extract_to(dir)
                    .with_context(|| format!("extracting into {}", dir.display()))?;
            }
            let s = &verified.statement;
            println!(
                "verified: channel={} generation={} commit={} sha256={} files={}",
                s.channel,
                s.generation,
                s.commit.as_deref().unwrap_or("-"),
                s.bundle.sha256,
                verified.bundle.files.len(),
            );
            Ok(())
        }
    }
}
