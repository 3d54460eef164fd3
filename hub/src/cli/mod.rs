//! The `skiff-hub` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use skiff_proto::Sha256Digest;
use skiff_proto::bundle::{Limits, read_bundle};
use skiff_proto::keys::SigningKey;

use crate::build::{BuildRequest, Input, build};
use crate::client::{HubClient, read_token};
use crate::config::{HubConfig, Overrides, RenderMode};

mod admin;
mod bootstrap;
mod rollout;
mod root;
use crate::sign::{PUBLIC_KEY_FILE, SIGNING_KEY_FILE, keygen};
pub use rollout::RolloutCommand;
pub use root::RootCommand;

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
    /// Run the hub: follow Git, build and sign bundles, serve them to clusters.
    ///
    /// Every config key can also come from SKIFF_HUB_* environment variables or the flags
    /// below (flags win over the environment, which wins over the file).
    Serve(ServeArgs),
    /// Register and manage clusters on a running hub.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Show every cluster and channel: desired vs applied generation, result, drift, health;
    /// or, given a cluster, everything about it (messages, object errors, drift paths).
    Status {
        /// One cluster, in detail.
        cluster: Option<String>,
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Write a cluster's desired bundles and envelopes to a folder, for an air-gapped site
    /// (its agent imports them from its import folder or with `skiff-agent import`); or one
    /// channel's current bundle and envelope, to rebuild it and compare
    /// (`skiff-hub bundle build … | cmp`).
    Export {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// The cluster.
        #[arg(long, required_unless_present = "channel", conflicts_with = "channel")]
        cluster: Option<String>,
        /// One channel's current bundle instead.
        #[arg(long)]
        channel: Option<String>,
        /// Folder to write <sha256>.tar.gz and <sha256>.dsse.json into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Reports carried back from air-gapped sites.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Staged rollouts of channels with a rollout plan: status, pause, resume, promote,
    /// abort.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// The trust root chain agents follow (files only: run it where the root keys are,
    /// offline): init, rotate (add or revoke signers, change root keys), sign, show.
    #[command(subcommand)]
    Root(RootCommand),
    /// Add your signature to a channel's generation that waits for more signers (the trust
    /// root's two-person rule, e.g. for prod): shows what is signed, signs it with your key
    /// here (the key never leaves this machine), and sends the signature to the hub.
    Sign {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// The channel.
        #[arg(long)]
        channel: String,
        /// Your private key (PKCS#8 PEM).
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
        /// The generation you mean to sign (refused if another waits).
        #[arg(long)]
        generation: Option<u64>,
    },
}

/// Where the running hub is, for admin commands.
#[derive(Debug, Clone, Args)]
pub struct HubArgs {
    /// The hub's URL.
    #[arg(long, env = "SKIFF_HUB_URL", default_value = "http://127.0.0.1:8080")]
    pub hub: String,
    /// File holding the admin token (or set SKIFF_HUB_ADMIN_TOKEN to the token itself; the
    /// older SKIFF_ADMIN_TOKEN_FILE / SKIFF_ADMIN_TOKEN still work).
    #[arg(long, env = "SKIFF_HUB_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the hub's TLS, e.g. a self-signed hub.
    #[arg(long, env = "SKIFF_HUB_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

impl HubArgs {
    fn client(&self) -> anyhow::Result<HubClient> {
        // The same names as `serve` reads; the older ones keep working, with a note.
        let deprecated = |old: &str, new: &str| {
            let value = std::env::var(old).ok().filter(|v| !v.trim().is_empty());
            if value.is_some() {
                eprintln!("note: {old} is deprecated; use {new}");
            }
            value
        };
        let file = self.admin_token_file.clone().or_else(|| {
            deprecated("SKIFF_ADMIN_TOKEN_FILE", "SKIFF_HUB_ADMIN_TOKEN_FILE").map(PathBuf::from)
        });
        let token = std::env::var("SKIFF_HUB_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| deprecated("SKIFF_ADMIN_TOKEN", "SKIFF_HUB_ADMIN_TOKEN"));
        let token = match (file, token) {
            (Some(path), _) => read_token(&path)?,
            (None, Some(t)) => t.trim().to_owned(),
            _ => anyhow::bail!(
                "no admin token: give --admin-token-file PATH, or set SKIFF_HUB_ADMIN_TOKEN_FILE (a file) or SKIFF_HUB_ADMIN_TOKEN (the token)"
            ),
        };
        HubClient::new(&self.hub, token, self.ca_file.as_ref())
    }
}

/// `skiff-hub serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The hub's config file (YAML).
    #[arg(long, env = "SKIFF_HUB_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
    /// Address to listen on (overrides `listen`).
    #[arg(long, env = "SKIFF_HUB_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Data folder (overrides `data_dir`).
    #[arg(long, env = "SKIFF_HUB_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Signing key (overrides `signing_key`).
    #[arg(long, env = "SKIFF_HUB_SIGNING_KEY", value_name = "PEM")]
    pub signing_key: Option<PathBuf>,
    /// Admin token file (overrides `admin_token_file`); SKIFF_HUB_ADMIN_TOKEN gives the token itself.
    #[arg(long, env = "SKIFF_HUB_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// URL agents reach the hub at (overrides `public_url`).
    #[arg(long, env = "SKIFF_HUB_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Allow plain HTTP on a non-loopback address.
    #[arg(long, env = "SKIFF_HUB_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Start even if the configuration unassigns channels from more than
    /// `assignments.max_unassign_percent` of their clusters at once (their agents then prune
    /// or keep those channels' objects, as each channel's `on_unassign` says).
    #[arg(long, env = "SKIFF_HUB_FORCE_UNASSIGN")]
    pub force_unassign: bool,
    /// Log format.
    #[arg(long, value_enum, env = "SKIFF_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// `skiff-hub cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster; prints its token once, alone on stdout (the hub keeps only a hash).
    Add {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name (lowercase letters, digits, '-').
        name: String,
        /// A label, key=value; repeat for several.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List clusters with their labels and when their agents were last seen.
    List {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Set (key=value) or remove (key-) labels.
    Label {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
        /// key=value to set, key- to remove.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
    /// Set (key=value) or remove (key-) the values substituted into a cluster's channels
    /// (`${key}` in their manifests): the most specific values, above the channel's values
    /// and customizations. Its agent gets them with its next assignment.
    SetValues {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
        /// Only for this channel (default: every channel of the cluster).
        #[arg(long)]
        channel: Option<String>,
        /// key=value to set, key- to remove.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
    /// Hold a cluster's channel at a generation (it is served the newest generation at or
    /// below it, and its agent refuses anything newer), or release it with --clear.
    Pin {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
        /// The channel.
        #[arg(long)]
        channel: String,
        /// Highest generation the cluster may run.
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        generation: Option<u64>,
        /// Remove the pin.
        #[arg(long)]
        clear: bool,
    },
    /// Emergency override of a cluster's maintenance windows: its agent applies newer
    /// generations at once until the override ends (signed into its assignment, so it holds
    /// offline too); --clear ends it early.
    ApplyNow {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
        /// How long the override lasts (e.g. 2h).
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration,
              required_unless_present = "clear", conflicts_with = "clear")]
        duration: Option<Duration>,
        /// End the override.
        #[arg(long)]
        clear: bool,
    },
    /// Print exactly the objects a cluster would apply (its channels at the generation it is
    /// served, values substituted), as YAML or JSON: check a site before committing.
    Render {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Output format (text: YAML documents).
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Unregister a cluster and forget its reports.
    Remove {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
    },
    /// Register a cluster (or give an existing one a new token) and print everything its
    /// agent needs, filled in: `skiff-hub cluster bootstrap edge-7 | kubectl apply --server-side -f -`
    /// installs a working agent. `--format systemd` prints the config, keys, token and unit
    /// for a host install instead.
    Bootstrap {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
        /// A label, key=value; repeat for several (used when registering).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The URL the agent should use for the hub (default: the hub's public_url).
        #[arg(long, value_name = "URL")]
        hub_url: Option<String>,
        /// What to print.
        #[arg(long, value_enum, default_value_t = bootstrap::BootstrapFormat::Kube)]
        format: bootstrap::BootstrapFormat,
        /// With --format systemd: write the files beneath DIR (DIR/etc/skiff/…, with their
        /// modes; `--out /` installs them) instead of printing them.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Give a cluster a new token (printed alone on stdout); the old one stops working.
    RotateToken {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name.
        name: String,
    },
}

/// `skiff-hub report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Import a report file written by `skiff-agent report export` (each report is stored
    /// once, however often it is imported).
    Import {
        /// The hub to talk to.
        #[command(flatten)]
        hub: HubArgs,
        /// The report file.
        file: PathBuf,
    },
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
    /// How to render: kustomize when the path holds a kustomization file (auto), plain YAML
    /// files, or kustomize.
    #[arg(long, value_enum, default_value_t = RenderArg::Auto)]
    pub render: RenderArg,
    /// The channel substitutes per-cluster values: check `${…}` references as placeholders
    /// (names built from values are then valid).
    #[arg(long)]
    pub substitute: bool,
}

/// `--render`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RenderArg {
    /// kustomize if a kustomization file is present, else plain.
    Auto,
    /// YAML/JSON files as they are.
    Plain,
    /// kustomize build.
    Kustomize,
}

impl From<RenderArg> for RenderMode {
    fn from(r: RenderArg) -> Self {
        match r {
            RenderArg::Auto => RenderMode::Auto,
            RenderArg::Plain => RenderMode::Plain,
            RenderArg::Kustomize => RenderMode::Kustomize,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
    };
    match cli.command {
        Command::Serve(args) => {
            crate::telemetry::init_logging(args.log_format == LogFormat::Json).map_err(anyhow::Error::msg)?;
            let overrides = Overrides {
                listen: args.listen,
                data_dir: args.data_dir,
                signing_key: args.signing_key,
                admin_token_file: args.admin_token_file,
                admin_token: std::env::var("SKIFF_HUB_ADMIN_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty()),
                public_url: args.public_url,
                insecure_http: args.insecure_http.then_some(true),
            };
            let config = HubConfig::load(&args.config, &overrides)?;
            runtime()?.block_on(crate::serve::run(config, args.force_unassign))
        }
        Command::Cluster(c) => runtime()?.block_on(admin::cluster(c)),
        Command::Status { hub, output, cluster } => match cluster {
            Some(name) => runtime()?.block_on(admin::cluster_detail(&hub, &name, output)),
            None => runtime()?.block_on(admin::status(&hub, output)),
        },
        Command::Export {
            hub,
            cluster,
            channel,
            out,
        } => match (cluster, channel) {
            (Some(cluster), _) => runtime()?.block_on(admin::export(&hub, &cluster, &out)),
            (None, Some(channel)) => runtime()?.block_on(admin::export_channel(&hub, &channel, &out)),
            (None, None) => unreachable!("clap requires --cluster or --channel"),
        },
        Command::Rollout(c) => runtime()?.block_on(rollout::run(c)),
        Command::Root(c) => root::run(c),
        Command::Sign {
            hub,
            channel,
            key,
            generation,
        } => runtime()?.block_on(admin::sign(&hub, &channel, &key, generation)),
        Command::Report(ReportCommand::Import { hub, file }) => {
            runtime()?.block_on(admin::import(&hub, &file))
        }
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
        render: args.render.into(),
        timeout: Duration::from_secs(120),
        substitute: args.substitute,
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
