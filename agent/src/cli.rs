//! The `skiff-agent` command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skiff_proto::verify::Policy;

use std::sync::Arc;

use crate::agent::{Agent, Offered, TakenAssignment};
use crate::config::{AgentConfig, Overrides, Target};
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
    /// Run the agent: pull signed bundles from the hub (or an import folder), verify them,
    /// apply them, keep the last good state, report back.
    ///
    /// Every config key can also be set with SKIFF_AGENT_* variables or the flags below.
    Run(RunArgs),
    /// Show, from the local store (no hub needed), what each channel has applied.
    Status {
        /// The agent's config file (for its data_dir).
        #[arg(long, env = "SKIFF_AGENT_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
        /// The data folder (instead of --config).
        #[arg(long, env = "SKIFF_AGENT_DATA_DIR", value_name = "PATH")]
        data_dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Hold this site: the agent applies no newer generation until `release` (it still
    /// downloads and verifies them, keeps correcting drift as configured, and reports the
    /// hold to the hub when a newer generation waits). Works while the agent runs.
    Hold {
        /// The agent's config file (for its data_dir).
        #[arg(long, env = "SKIFF_AGENT_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
        /// The data folder (instead of --config).
        #[arg(long, env = "SKIFF_AGENT_DATA_DIR", value_name = "PATH")]
        data_dir: Option<PathBuf>,
        /// Why (shown in status, logs and the hub's rollout status).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift the site's hold: a generation that waited is applied within a second (inside
    /// the maintenance window, if the cluster has one).
    Release {
        /// The agent's config file (for its data_dir).
        #[arg(long, env = "SKIFF_AGENT_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
        /// The data folder (instead of --config).
        #[arg(long, env = "SKIFF_AGENT_DATA_DIR", value_name = "PATH")]
        data_dir: Option<PathBuf>,
    },
    /// Verify and apply a bundle carried in by hand (air gap), exactly as if the hub sent it.
    Import {
        /// The agent's settings.
        #[command(flatten)]
        run: RunArgs,
        /// The bundle (<sha256>.tar.gz).
        bundle: PathBuf,
        /// Its envelope (<sha256>.dsse.json).
        envelope: PathBuf,
    },
    /// Take a signed assignment carried in by hand (`<cluster>.assignment.json`, from
    /// `skiff-hub export`): which channels this cluster runs, up to which generation, with
    /// which values. Needs the agent stopped (its store is locked); the running agent takes
    /// `*.assignment.json` files from its import_dir by itself.
    ImportAssignment {
        /// The agent's settings.
        #[command(flatten)]
        run: RunArgs,
        /// The assignment envelope.
        file: PathBuf,
    },
    /// Compare the cluster with what was applied, once, and print the drift (the running
    /// agent does this every drift_interval). Needs the agent stopped (its store is locked).
    Check {
        /// The agent's settings.
        #[command(flatten)]
        run: RunArgs,
        /// Re-apply drifted objects (default: the config's self_heal).
        #[arg(long, conflicts_with = "no_heal")]
        heal: bool,
        /// Only report drift, whatever the config says.
        #[arg(long)]
        no_heal: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Reports for an air-gapped hub.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Work with bundle files directly (air-gapped sites, debugging).
    #[command(subcommand)]
    Bundle(BundleCommand),
}

/// `skiff-agent report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Write the reports waiting for the hub to a file for `skiff-hub report import`.
    Export {
        /// The agent's config file (for its data_dir and cluster).
        #[arg(long, env = "SKIFF_AGENT_CONFIG", value_name = "PATH")]
        config: PathBuf,
        /// Where to write the report file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// `skiff-agent run` (and `import`) settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The agent's config file (YAML).
    #[arg(long, env = "SKIFF_AGENT_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
    /// The hub's URL.
    #[arg(long, env = "SKIFF_AGENT_HUB")]
    pub hub: Option<String>,
    /// This cluster's name on the hub.
    #[arg(long, env = "SKIFF_AGENT_CLUSTER")]
    pub cluster: Option<String>,
    /// File holding the cluster token (SKIFF_AGENT_TOKEN gives the token itself).
    #[arg(long, env = "SKIFF_AGENT_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Data folder.
    #[arg(long, env = "SKIFF_AGENT_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// `kube` or `dir:PATH`.
    #[arg(long, env = "SKIFF_AGENT_TARGET", value_parser = crate::config::parse_target)]
    pub target: Option<Target>,
    /// Folder watched for bundle/envelope pairs.
    #[arg(long, env = "SKIFF_AGENT_IMPORT_DIR", value_name = "PATH")]
    pub import_dir: Option<PathBuf>,
    /// kubeconfig for the kube target.
    #[arg(long, env = "SKIFF_AGENT_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Address for /metrics and /healthz.
    #[arg(long, env = "SKIFF_AGENT_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, env = "SKIFF_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

impl RunArgs {
    fn load(&self) -> anyhow::Result<AgentConfig> {
        let o = Overrides {
            hub: self.hub.clone(),
            cluster: self.cluster.clone(),
            token_file: self.token_file.clone(),
            token: std::env::var("SKIFF_AGENT_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
            data_dir: self.data_dir.clone(),
            target: self.target.clone(),
            import_dir: self.import_dir.clone(),
            kubeconfig: self.kubeconfig.clone(),
            listen: self.listen,
        };
        Ok(AgentConfig::load(&self.config, &o)?)
    }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // A small runtime: an edge agent has little to do at once and should stay lean.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("Stopping");
}

/// BUNDLE comes before ENVELOPE: say so when they are given the other way round.
fn check_argument_order(bundle: &std::path::Path, envelope: &std::path::Path) -> anyhow::Result<()> {
    let name = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if name(bundle).ends_with(".dsse.json") && name(envelope).ends_with(".tar.gz") {
        anyhow::bail!(
            "the bundle (.tar.gz) comes first, then its envelope (.dsse.json): {} {}",
            envelope.display(),
            bundle.display()
        );
    }
    Ok(())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            crate::telemetry::init_logging(args.log_format == LogFormat::Json).map_err(anyhow::Error::msg)?;
            let config = args.load()?;
            config.require_source(&args.config)?;
            config.token()?; // a missing or empty token file is a config error, said now
            runtime()?.block_on(async {
                let listen = config.listen;
                tracing::info!(cluster = %config.cluster, hub = config.hub.as_deref().unwrap_or("-"), target = ?config.target, "Agent starting");
                let agent = Arc::new(Agent::new(config).await?);
                if let Some(addr) = listen {
                    let a = agent.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::telemetry::serve(addr, a).await {
                            tracing::error!(error = %e, address = %addr, "Metrics listener failed");
                        }
                    });
                }
                agent.run(shutdown_signal()).await;
                anyhow::Ok(())
            })
        }
        Command::Import {
            run,
            bundle,
            envelope,
        } => {
            check_argument_order(&bundle, &envelope)?;
            crate::telemetry::init_logging(false).map_err(anyhow::Error::msg)?;
            let mut config = run.load()?;
            config.hub = None; // import works offline; reports wait in the outbox
            runtime()?.block_on(async {
                let agent = Agent::new(config).await?;
                match agent.import_files(&bundle, &envelope, false).await? {
                    Offered::Applied => println!("imported and applied {}", bundle.display()),
                    Offered::Unchanged => println!("{} is already applied", bundle.display()),
                    Offered::Deferred(why) => println!(
                        "{} verified and stored; applied when it may: {why}",
                        bundle.display()
                    ),
                    Offered::Older { offered, accepted } => anyhow::bail!(
                        "{} rejected: generation {offered} is older than the accepted generation {accepted} (to roll back, commit the old content: it becomes a new generation)",
                        bundle.display()
                    ),
                    Offered::Failed(why) => anyhow::bail!("imported, but applying failed: {why}"),
                    Offered::Rejected(why) => anyhow::bail!("{} rejected: {why}", bundle.display()),
                    Offered::NotAssigned(why) => anyhow::bail!(
                        "{} not admitted: {why} (import this cluster's newer assignment first)",
                        bundle.display()
                    ),
                }
                Ok(())
            })
        }
        Command::ImportAssignment { run, file } => {
            crate::telemetry::init_logging(false).map_err(anyhow::Error::msg)?;
            let mut config = run.load()?;
            config.hub = None;
            runtime()?.block_on(async {
                let agent = Agent::new(config).await?;
                match agent.import_assignment(&file).await? {
                    TakenAssignment::Accepted(seq) => {
                        println!("assignment sequence {seq} taken from {}", file.display())
                    }
                    TakenAssignment::Unchanged => {
                        println!("{} is the assignment in effect already", file.display())
                    }
                    TakenAssignment::Refused(why) => anyhow::bail!("{} refused: {why}", file.display()),
                }
                Ok(())
            })
        }
        Command::Check {
            run,
            heal,
            no_heal,
            output,
        } => {
            crate::telemetry::init_logging(false).map_err(anyhow::Error::msg)?;
            let mut config = run.load()?;
            config.hub = None;
            let heal = if heal {
                Some(true)
            } else if no_heal {
                Some(false)
            } else {
                None
            };
            runtime()?.block_on(async {
                let agent = Agent::new(config).await?;
                let results = agent.check_all(heal).await;
                let mut report = serde_json::Map::new();
                for (channel, r) in results {
                    let checked = r?;
                    let health = crate::drift::roll_up(&checked.health);
                    if output == Output::Text {
                        println!("channel {channel}: {} drifted, health {}", checked.drift.len(), health.state);
                        for d in &checked.drift {
                            let paths: Vec<&str> = d.paths.iter().map(|p| p.path.as_str()).collect();
                            let fixed = if d.corrected { " (corrected)" } else { "" };
                            println!("  {} {}{fixed}: {}", d.kind, d.object, paths.join(", "));
                        }
                        for e in &checked.errors {
                            println!("  error: {e}");
                        }
                        for u in &checked.unknown {
                            println!("  unknown {}: {}", u.object, u.message);
                        }
                    }
                    report.insert(
                        channel,
                        serde_json::json!({"drift": checked.drift, "health": health, "errors": checked.errors, "unknown": checked.unknown}),
                    );
                }
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                anyhow::Ok(())
            })
        }
        Command::Status {
            config,
            data_dir,
            output,
        } => crate::status::print(&data_dir_of(data_dir, config)?, output == Output::Json),
        Command::Hold {
            config,
            data_dir,
            reason,
        } => {
            let dir = data_dir_of(data_dir, config)?;
            let hold = crate::hold::set(&dir, &reason)?;
            println!(
                "held since {}{}: no newer generation is applied until `skiff-agent release`",
                hold.since,
                if hold.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", hold.reason)
                }
            );
            Ok(())
        }
        Command::Release { config, data_dir } => {
            if crate::hold::release(&data_dir_of(data_dir, config)?)? {
                println!(
                    "released: a generation that waited is applied within a second (inside the maintenance window, if any)"
                );
            } else {
                println!("not held");
            }
            Ok(())
        }
        Command::Report(ReportCommand::Export { config, out }) => {
            let config = AgentConfig::load(&config, &Overrides::default())?;
            crate::status::export_reports(&config, &out)
        }
        Command::Bundle(BundleCommand::Verify {
            keys,
            threshold,
            channel,
            extract,
            bundle,
            envelope,
        }) => {
            check_argument_order(&bundle, &envelope)?;
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

/// The data folder, given directly or through the config file.
fn data_dir_of(data_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match (data_dir, config) {
        (Some(d), _) => Ok(d),
        (None, Some(c)) => Ok(AgentConfig::load(&c, &Overrides::default())?.data_dir),
        (None, None) => anyhow::bail!("give --config PATH or --data-dir PATH"),
    }
}
