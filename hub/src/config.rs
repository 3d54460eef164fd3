//! The hub's configuration: a YAML file, then `SKIFF_HUB_*` environment variables and
//! command-line flags on top. A bad config is refused at start with the file, key and reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use skiff_proto::manifest::check_dns_label;
use skiff_proto::statement::check_channel_name;

/// A config the hub cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line).
        message: String,
    },
    /// A key has a bad value.
    #[error("config {path}: {key}: {reason}")]
    Invalid {
        /// The file (or "environment"/"flags").
        path: PathBuf,
        /// The key, as a path (`channels[1].repo`).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// How a channel's path is turned into manifests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderMode {
    /// kustomize when the path holds a kustomization file, plain otherwise.
    #[default]
    Auto,
    /// YAML/JSON files as they are.
    Plain,
    /// `kubectl kustomize` / `kustomize build`.
    Kustomize,
}

/// TLS for the listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// The CA (PEM) that issued `cert`, when it is private: `cluster bootstrap` hands it to
    /// agents so they can trust the hub.
    pub ca: Option<PathBuf>,
}

/// Credentials for fetching a repository.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// File holding an HTTPS token (GitHub/GitLab/Gitea personal or deploy token).
    pub token_file: Option<PathBuf>,
    /// User name sent with the token (default `git`; GitLab deploy tokens need theirs).
    pub username: Option<String>,
    /// SSH private key for `ssh://` and `git@host:` URLs.
    pub ssh_key_file: Option<PathBuf>,
    /// known_hosts file for SSH (default: accept a new host key once, then pin it).
    pub known_hosts_file: Option<PathBuf>,
}

/// One Git repository.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Name channels refer to; also in the webhook path.
    pub name: String,
    /// Local path, `file://`, `https://`, `ssh://` or `user@host:path`.
    pub url: String,
    /// How often to fetch (default 60s).
    #[serde(default = "default_poll", deserialize_with = "skiff_proto::config::duration")]
    pub poll: Duration,
    /// Credentials for fetching.
    #[serde(default)]
    pub credentials: Credentials,
    /// Shared secret for push webhooks (GitHub/Gitea HMAC, GitLab token).
    pub webhook_secret_file: Option<PathBuf>,
}

fn default_poll() -> Duration {
    Duration::from_secs(60)
}

/// Whether `labels` carry every label of `selector` (an empty selector selects all).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Which clusters a channel goes to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Clusters whose labels include all of these.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Clusters by name.
    #[serde(default)]
    pub clusters: BTreeSet<String>,
}

impl Targets {
    /// Whether nothing is selected at all.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.clusters.is_empty()
    }

    /// Whether a cluster with this name and labels is targeted: named explicitly, or (when a
    /// label selector is given) carrying every selected label. No targets at all: none.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.clusters.contains(name) {
            return true;
        }
        !self.labels.is_empty() && selects(&self.labels, labels)
    }
}

/// One channel: a repository branch and path, rendered and signed for targeted clusters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Channel name (a label value).
    pub name: String,
    /// Name of a configured repository.
    pub repo: String,
    /// Branch to follow.
    pub branch: String,
    /// Folder in the repository (default: the root).
    #[serde(default)]
    pub path: String,
    /// How to render.
    #[serde(default)]
    pub render: RenderMode,
    /// Default namespace for namespaced objects that name none.
    pub namespace: Option<String>,
    /// Which clusters get it.
    #[serde(default)]
    pub targets: Targets,
    /// Statements expire this long after signing (agents then refuse them).
    #[serde(default, deserialize_with = "skiff_proto::config::opt_duration")]
    pub expires_after: Option<Duration>,
    /// Substitute `${name}` references in the channel's manifests on each cluster (default:
    /// on when `values` or `customizations` are set).
    pub substitute: Option<bool>,
    /// Values for every cluster the channel targets (the least specific).
    #[serde(default)]
    pub values: Values,
    /// Values for the clusters a label selector matches; a selector with more labels is
    /// more specific and wins, and of equally specific ones the later wins.
    #[serde(default)]
    pub customizations: Vec<Customization>,
    /// What agents do with the channel's objects when it no longer targets them: `prune`
    /// (default) or `keep`.
    #[serde(default)]
    pub on_unassign: skiff_proto::assignment::OnUnassign,
    /// A staged rollout: each new generation reaches the clusters step by step, gated on
    /// their health (none: every targeted cluster at once).
    #[serde(default)]
    pub rollout: Option<crate::rollout::RolloutPlan>,
}

impl ChannelConfig {
    /// Whether the channel's manifests are substituted.
    pub fn substitutes(&self) -> bool {
        self.substitute
            .unwrap_or(!self.values.is_empty() || !self.customizations.is_empty())
    }
}

/// Values by variable name. YAML numbers and booleans are taken as their text.
pub type Values = BTreeMap<String, ScalarText>;

/// A scalar read as text (`replicas: 3` is "3").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Self(s)),
            serde_json::Value::Number(n) => Ok(Self(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Self(b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "a value must be a string, number or boolean, not {other}"
            ))),
        }
    }
}

/// Values for the clusters a selector matches.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customization {
    /// A name for status and errors (optional).
    #[serde(default)]
    pub name: String,
    /// Labels a cluster must all carry.
    pub selector: BTreeMap<String, String>,
    /// The values.
    pub values: Values,
}

/// Maintenance windows for the clusters a selector (or a list of names) picks: their
/// agents apply newer generations only while a window is open, by their own clock in
/// `time_zone`. A cluster takes the first entry that picks it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// A name for status and errors.
    #[serde(default)]
    pub name: String,
    /// Clusters carrying all of these labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Clusters by name.
    #[serde(default)]
    pub clusters: BTreeSet<String>,
    /// The sites' IANA time zone (`Europe/Berlin`).
    pub time_zone: String,
    /// The windows.
    pub windows: Vec<WindowConfig>,
    /// Drift outside the windows: `heal` (default: re-apply the generation in place) or
    /// `report` (only report it until the next window).
    #[serde(default)]
    pub drift_outside: skiff_proto::window::OutsideDrift,
}

/// One recurring window.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Days it starts on (`mon` … `sun`; default every day).
    #[serde(default)]
    pub days: Vec<skiff_proto::window::Day>,
    /// Local start, `HH:MM`.
    pub start: String,
    /// How long it is open (`4h`; whole minutes, 1 minute to a week).
    #[serde(deserialize_with = "skiff_proto::config::duration")]
    pub duration: Duration,
}

impl MaintenanceConfig {
    /// Whether it picks this cluster.
    pub fn picks(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.clusters.contains(name) || (!self.selector.is_empty() && selects(&self.selector, labels))
    }

    /// As the assignment carries it.
    pub fn to_maintenance(&self) -> skiff_proto::window::Maintenance {
        skiff_proto::window::Maintenance {
            time_zone: self.time_zone.clone(),
            windows: self
                .windows
                .iter()
                .map(|w| skiff_proto::window::Window {
                    days: w.days.clone(),
                    start: w.start.clone(),
                    minutes: u32::try_from(w.duration.as_secs().div_ceil(60)).unwrap_or(u32::MAX),
                })
                .collect(),
            drift: self.drift_outside,
            apply_now_until: None,
        }
    }
}

/// The dashboard (`/ui`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// File holding a viewer token: it signs in to read, never to act (the admin token
    /// signs in as admin).
    pub viewer_token_file: Option<PathBuf>,
    /// How long a sign-in lasts.
    #[serde(deserialize_with = "skiff_proto::config::duration")]
    pub session_ttl: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            viewer_token_file: None,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// How the hub signs assignments.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssignmentConfig {
    /// Assignments expire this long after signing (default: never); the hub signs a fresh
    /// one when half of it has passed. An agent that cannot get a fresh one keeps what it
    /// runs and takes nothing new.
    #[serde(deserialize_with = "skiff_proto::config::opt_duration")]
    pub expires_after: Option<Duration>,
    /// A config change (at start) that would unassign more than this share of a channel's
    /// clusters at once is refused unless forced (`serve --force-unassign`): a label typo
    /// must not wipe a fleet. Percent, default 50.
    pub max_unassign_percent: u8,
}

impl Default for AssignmentConfig {
    fn default() -> Self {
        Self {
            expires_after: None,
            max_unassign_percent: 50,
        }
    }
}

/// The whole hub configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// URL agents reach the hub at (printed in bootstrap output); default from `listen`.
    pub public_url: Option<String>,
    /// Where the hub keeps its store, blobs and Git mirrors.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Private signing key (PKCS#8 PEM).
    pub signing_key: Option<PathBuf>,
    /// File holding the admin token.
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself (prefer `admin_token_file` or `SKIFF_HUB_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// TLS certificate and key; without it the hub serves plain HTTP only on loopback or when
    /// `insecure_http` is set.
    pub tls: Option<TlsConfig>,
    /// Allow plain HTTP on a non-loopback address.
    #[serde(default)]
    pub insecure_http: bool,
    /// Git repositories.
    #[serde(default)]
    pub repos: Vec<RepoConfig>,
    /// Channels.
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// Timeout for one git fetch or render (default 120s).
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "skiff_proto::config::duration"
    )]
    pub command_timeout: Duration,
    /// Reports kept per cluster (default 200).
    #[serde(default = "default_history")]
    pub report_history: usize,
    /// What one peer, one cluster, or everyone together may cost the hub.
    #[serde(default)]
    pub limits: Limits,
    /// Who may read `/metrics` and what it shows.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// A cluster whose agent has not been heard from for this long is `offline` in status
    /// and metrics (default 5m: agents hold a long-poll of at most 300 s, 60 s by default,
    /// and ask again at once).
    #[serde(
        default = "default_offline_after",
        deserialize_with = "skiff_proto::config::duration"
    )]
    pub offline_after: Duration,
    /// How assignments are signed and guarded.
    #[serde(default)]
    pub assignments: AssignmentConfig,
    /// The dashboard.
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// Folder of the trust root chain (`<version>.root.json`, from `skiff-hub root …`):
    /// served to agents, which then trust what the newest root says (none: agents trust
    /// the keys in their configs).
    #[serde(default)]
    pub trust_root: Option<PathBuf>,
    /// Maintenance windows per label group or cluster (none: newer generations apply at
    /// any time).
    #[serde(default)]
    pub maintenance_windows: Vec<MaintenanceConfig>,
}

fn default_offline_after() -> Duration {
    Duration::from_secs(300)
}

/// Budgets for what arrives from outside: connections, time, reports, downloads. The
/// defaults carry a fleet of tens of thousands of agents (each holds one long-poll).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections at once, all peers together (default 50,000; never more than the
    /// process's file descriptor limit allows).
    pub max_connections: usize,
    /// Open connections from one IP address (default 512; raise it for fleets behind one
    /// NAT address, 0 for no per-address cap).
    pub max_connections_per_address: usize,
    /// Connections kept for admin requests and loopback peers when the rest are taken
    /// (default 64).
    pub admin_reserve: usize,
    /// How long a new connection may wait before its first byte (default 10s).
    #[serde(deserialize_with = "skiff_proto::config::duration")]
    pub first_byte_timeout: Duration,
    /// How long a whole request head may take from its first byte (default 10s).
    #[serde(deserialize_with = "skiff_proto::config::duration")]
    pub head_timeout: Duration,
    /// How long a kept-alive connection may sit with nothing read or written (default 120s;
    /// long-polls answer well within it).
    #[serde(deserialize_with = "skiff_proto::config::duration")]
    pub idle_timeout: Duration,
    /// How long reading a request body and answering may take, long-polls and download
    /// bodies aside (default 60s).
    #[serde(deserialize_with = "skiff_proto::config::duration")]
    pub request_timeout: Duration,
    /// Bundle downloads one cluster may run at once (default 2).
    pub downloads_per_cluster: usize,
    /// Bytes of report history kept per cluster (default 2 MiB), besides `report_history`.
    pub report_history_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_connections_per_address: 512,
            admin_reserve: 64,
            first_byte_timeout: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            downloads_per_cluster: 2,
            report_history_bytes: 2 << 20,
        }
    }
}

/// `/metrics`: open (the default, as Prometheus expects on a private network), or behind a
/// bearer token; per-cluster series only when asked for.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File holding a token `/metrics` requires (`Authorization: Bearer …`); the admin token
    /// works too. Unset: `/metrics` is open.
    pub token_file: Option<PathBuf>,
    /// Add per-cluster series (cluster names as labels: one series per cluster).
    #[serde(default)]
    pub per_cluster: bool,
}

/// A folder inside a repository in one spelling: `./apps`, `apps/` and `apps` are `apps`;
/// `.`, `./` and `` are the root (``). Everything that names the same folder builds the
/// same bundle. `..`, backslashes and control characters are refused.
pub fn normalize_repo_path(path: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{path:?}: '..' leaves the repository")),
            p if p.chars().any(|c| c == '\\' || c.is_control()) => {
                return Err(format!(
                    "{path:?}: backslashes and control characters cannot be in a path"
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Checks values: names as `${…}` references spell them, values within the assignment caps.
pub fn check_values(values: &Values) -> Result<(), (String, String)> {
    use skiff_proto::assignment::limits;
    if values.len() > limits::MAX_VALUES {
        return Err((
            String::new(),
            format!("{} values, more than {}", values.len(), limits::MAX_VALUES),
        ));
    }
    for (k, v) in values {
        skiff_proto::values::check_variable_name(k).map_err(|why| (k.clone(), why.to_owned()))?;
        if v.0.len() > limits::MAX_VALUE_BYTES {
            return Err((
                k.clone(),
                format!("{} bytes, more than {}", v.0.len(), limits::MAX_VALUE_BYTES),
            ));
        }
    }
    Ok(())
}

/// Shortest admin token, metrics token or webhook secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Checks a token or shared secret: [`MIN_SECRET_LEN`] characters at least.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.trim().len() < MIN_SECRET_LEN {
        Err(format!(
            "must be at least {MIN_SECRET_LEN} characters (head -c 32 /dev/urandom | base64)"
        ))
    } else {
        Ok(())
    }
}

/// Why a repository URL carries a secret, if it does: a password in its user info
/// (`https://user:token@host/…`, `ssh://git:pw@host/…`), any user info on HTTP(S), or a
/// query string (`?private_token=…`).
fn url_credentials(url: &str) -> Option<&'static str> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let http = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http");
    match authority.rsplit_once('@') {
        Some((user, _)) if user.contains(':') => return Some("the URL carries a password or token"),
        Some(_) if http => return Some("the URL carries a user name or token"),
        _ => {}
    }
    (http && rest.contains('?')).then_some("the URL carries a query string (tokens go in credentials)")
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("address")
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/skiff-hub")
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_history() -> usize {
    200
}

/// Settings from flags and the environment that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen` / `SKIFF_HUB_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` / `SKIFF_HUB_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--signing-key` / `SKIFF_HUB_SIGNING_KEY`.
    pub signing_key: Option<PathBuf>,
    /// `--admin-token-file` / `SKIFF_HUB_ADMIN_TOKEN_FILE`.
    pub admin_token_file: Option<PathBuf>,
    /// `SKIFF_HUB_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `--public-url` / `SKIFF_HUB_PUBLIC_URL`.
    pub public_url: Option<String>,
    /// `--insecure-http` / `SKIFF_HUB_INSECURE_HTTP`.
    pub insecure_http: Option<bool>,
}

impl HubConfig {
    /// Reads, overrides and checks a config file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, overrides)
    }

    /// Parses and checks config text (`path` names it in errors).
    pub fn parse(path: &Path, text: &[u8], overrides: &Overrides) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let docs = skiff_proto::manifest::parse_file(&name, text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let value = match docs.len() {
            0 => serde_json::json!({}),
            1 => docs.into_iter().next().expect("one").value,
            n => {
                return Err(ConfigError::Syntax {
                    path: path.to_owned(),
                    message: format!("expected one YAML document, found {n}"),
                });
            }
        };
        let mut config: HubConfig =
            serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                key: if e.path().to_string() == "." {
                    "(top level)".to_owned()
                } else {
                    e.path().to_string()
                },
                reason: e.inner().to_string(),
            })?;
        for (i, c) in config.channels.iter_mut().enumerate() {
            c.path = normalize_repo_path(&c.path).map_err(|reason| ConfigError::Invalid {
                path: path.to_owned(),
                key: format!("channels[{i}].path"),
                reason,
            })?;
        }
        let o = overrides;
        if let Some(v) = o.listen {
            config.listen = v;
        }
        if let Some(v) = &o.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &o.signing_key {
            config.signing_key = Some(v.clone());
        }
        if let Some(v) = &o.admin_token_file {
            config.admin_token_file = Some(v.clone());
        }
        if let Some(v) = &o.admin_token {
            config.admin_token = Some(v.clone());
        }
        if let Some(v) = &o.public_url {
            config.public_url = Some(v.clone());
        }
        if let Some(v) = o.insecure_http {
            config.insecure_http = v;
        }
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        if self.signing_key.is_none() {
            return Err(invalid(
                "signing_key".into(),
                "required: path of the PKCS#8 signing key (skiff-hub keygen)".into(),
            ));
        }
        if self.admin_token.is_none() && self.admin_token_file.is_none() {
            return Err(invalid(
                "admin_token_file".into(),
                "required (or admin_token / SKIFF_HUB_ADMIN_TOKEN): the token for admin commands".into(),
            ));
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure_http {
            return Err(invalid(
                "listen".into(),
                format!(
                    "{} is not a loopback address; configure tls (cert, key) or set insecure_http: true",
                    self.listen
                ),
            ));
        }
        let mut repos = BTreeSet::new();
        for (i, r) in self.repos.iter().enumerate() {
            if check_dns_label(&r.name).is_err() {
                return Err(invalid(
                    format!("repos[{i}].name"),
                    format!(
                        "{:?}: use lowercase letters, digits and '-' (it appears in URLs)",
                        r.name
                    ),
                ));
            }
            if !repos.insert(r.name.as_str()) {
                return Err(invalid(
                    format!("repos[{i}].name"),
                    format!("{:?} is defined twice", r.name),
                ));
            }
            if r.url.trim().is_empty() {
                return Err(invalid(format!("repos[{i}].url"), "empty".into()));
            }
            if let Some(why) = url_credentials(&r.url) {
                return Err(invalid(
                    format!("repos[{i}].url"),
                    format!(
                        "{why}: it would show in `ps`, logs and the mirror's config; put the token in a file and name it in credentials.token_file (and credentials.username)"
                    ),
                ));
            }
            if let Some(path) = &r.webhook_secret_file {
                match std::fs::read_to_string(path) {
                    Ok(secret) if secret.trim().len() >= MIN_SECRET_LEN => {}
                    Ok(_) => {
                        return Err(invalid(
                            format!("repos[{i}].webhook_secret_file"),
                            format!(
                                "{}: the secret must be at least {MIN_SECRET_LEN} characters (head -c 32 /dev/urandom | base64)",
                                path.display()
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(invalid(
                            format!("repos[{i}].webhook_secret_file"),
                            format!("{}: {e}", path.display()),
                        ));
                    }
                }
            }
            if r.poll < Duration::from_secs(1) {
                return Err(invalid(format!("repos[{i}].poll"), "must be at least 1s".into()));
            }
        }
        let mut channels = BTreeSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            if let Err(reason) = check_channel_name(&c.name) {
                return Err(invalid(
                    format!("channels[{i}].name"),
                    format!("{:?}: {reason}", c.name),
                ));
            }
            if !channels.insert(c.name.as_str()) {
                return Err(invalid(
                    format!("channels[{i}].name"),
                    format!("{:?} is defined twice", c.name),
                ));
            }
            if !repos.contains(c.repo.as_str()) {
                return Err(invalid(
                    format!("channels[{i}].repo"),
                    format!(
                        "{:?} is not one of the configured repos ({})",
                        c.repo,
                        repos.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if c.branch.is_empty() || c.branch.starts_with('-') || c.branch.contains("..") {
                return Err(invalid(
                    format!("channels[{i}].branch"),
                    format!("{:?} is not a branch name", c.branch),
                ));
            }
            if c.path.split('/').any(|p| p == "..") {
                return Err(invalid(
                    format!("channels[{i}].path"),
                    "may not contain '..'".into(),
                ));
            }
            if let Some(ns) = &c.namespace
                && let Err(reason) = check_dns_label(ns)
            {
                return Err(invalid(
                    format!("channels[{i}].namespace"),
                    format!("{ns:?}: {reason}"),
                ));
            }
            check_values(&c.values).map_err(|(k, why)| invalid(format!("channels[{i}].values.{k}"), why))?;
            for (j, z) in c.customizations.iter().enumerate() {
                let key = format!("channels[{i}].customizations[{j}]");
                if z.selector.is_empty() {
                    return Err(invalid(
                        format!("{key}.selector"),
                        "empty: it would match every cluster (use the channel's values for that)".into(),
                    ));
                }
                crate::fleet::check_labels(&z.selector)
                    .map_err(|e| invalid(format!("{key}.selector"), e.to_string()))?;
                check_values(&z.values).map_err(|(k, why)| invalid(format!("{key}.values.{k}"), why))?;
            }
            if let Some(plan) = &c.rollout {
                plan.check()
                    .map_err(|why| invalid(format!("channels[{i}].rollout"), why))?;
            }
        }
        for (i, m) in self.maintenance_windows.iter().enumerate() {
            let key = format!("maintenance_windows[{i}]");
            if m.selector.is_empty() && m.clusters.is_empty() {
                return Err(invalid(
                    key,
                    "picks no cluster: give a selector (labels) or clusters (names)".into(),
                ));
            }
            m.to_maintenance().check().map_err(|why| invalid(key, why))?;
        }
        if self.assignments.max_unassign_percent > 100 {
            return Err(invalid(
                "assignments.max_unassign_percent".into(),
                "a percentage: 0 to 100".into(),
            ));
        }
        Ok(())
    }

    /// The admin token, from the config (or `SKIFF_HUB_ADMIN_TOKEN`) or its file; every
    /// source must give at least [`MIN_SECRET_LEN`] characters.
    pub fn admin_token(&self) -> Result<String, ConfigError> {
        let (token, path, key) = match &self.admin_token {
            Some(t) => (
                t.trim().to_owned(),
                PathBuf::from("config or environment"),
                "admin_token",
            ),
            None => {
                let path = self.admin_token_file.as_ref().expect("checked");
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                (text.trim().to_owned(), path.clone(), "admin_token_file")
            }
        };
        check_secret(&token).map_err(|reason| ConfigError::Invalid {
            path,
            key: key.into(),
            reason,
        })?;
        Ok(token)
    }

    /// The token `/metrics` requires, if one is configured.
    pub fn metrics_token(&self) -> Result<Option<String>, ConfigError> {
        read_secret_file(self.metrics.token_file.as_deref(), "metrics.token_file")
    }

    /// The dashboard's viewer token, if configured (at least [`MIN_SECRET_LEN`] characters,
    /// and not the admin token).
    pub fn viewer_token(&self) -> Result<Option<String>, ConfigError> {
        let token = read_secret_file(
            self.dashboard.viewer_token_file.as_deref(),
            "dashboard.viewer_token_file",
        )?;
        if let (Some(t), Some(path)) = (&token, &self.dashboard.viewer_token_file)
            && self.admin_token().is_ok_and(|a| a == *t)
        {
            return Err(ConfigError::Invalid {
                path: path.clone(),
                key: "dashboard.viewer_token_file".into(),
                reason: "the viewer token is the admin token: give viewers a token of their own".into(),
            });
        }
        Ok(token)
    }

    /// The URL agents use to reach this hub.
    pub fn public_url(&self) -> String {
        self.public_url.clone().unwrap_or_else(|| {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", self.listen)
        })
    }
}

/// A token from a file (trimmed), at least [`MIN_SECRET_LEN`] characters; `key` names the
/// setting in errors.
fn read_secret_file(path: Option<&Path>, key: &str) -> Result<Option<String>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim().to_owned();
    check_secret(&token).map_err(|reason| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.into(),
        reason,
    })?;
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8080
data_dir: /tmp/hub
signing_key: /etc/skiff/signing.pem
admin_token_file: /etc/skiff/admin.token
repos:
  - {name: fleet, url: "file:///srv/git/fleet.git", poll: 30s}
channels:
  - {name: prod, repo: fleet, branch: main, path: apps, targets: {labels: {env: prod}}}
"#;

    fn parse(text: &str) -> Result<HubConfig, ConfigError> {
        HubConfig::parse(Path::new("hub.yaml"), text.as_bytes(), &Overrides::default())
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.repos[0].poll, Duration::from_secs(30));
        assert_eq!(c.channels[0].render, RenderMode::Auto);
        assert_eq!(c.channels[0].targets.labels["env"], "prod");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let err = parse(&GOOD.replace("repo: fleet,", "repo: nope,"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config hub.yaml: channels[0].repo: \"nope\" is not one of"),
            "{err}"
        );
        let err = parse(&GOOD.replace("poll: 30s", "poll: soon"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("repos[0].poll") && err.contains("soon"), "{err}");
        let err = parse(&GOOD.replace("branch: main,", "branch: main, colour: red,"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("channels[0]") && err.contains("unknown field `colour`"),
            "{err}"
        );
        let err = parse(&GOOD.replace("127.0.0.1:8080", "0.0.0.0:8080"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen") && err.contains("tls"), "{err}");
        let err = parse("listen: [\n").unwrap_err().to_string();
        assert!(err.starts_with("config hub.yaml: hub.yaml: line"), "{err}");
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            listen: Some("127.0.0.1:9999".parse().unwrap()),
            ..Overrides::default()
        };
        let c = HubConfig::parse(Path::new("hub.yaml"), GOOD.as_bytes(), &o).unwrap();
        assert_eq!(c.listen.port(), 9999);
    }

    #[test]
    fn urls_with_credentials_are_refused() {
        for url in [
            "https://x-access-token:ghp_secret@github.com/org/fleet.git",
            "https://ghp_secret@github.com/org/fleet.git",
            "https://gitlab.com/org/fleet.git?private_token=x",
            "ssh://git:secret@host/fleet",
        ] {
            let text = GOOD.replace("file:///srv/git/fleet.git", url);
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("repos[0].url") && err.contains("credentials.token_file"),
                "{url}: {err}"
            );
            assert!(
                !err.contains("secret"),
                "the error must not echo the secret: {err}"
            );
        }
        for url in [
            "ssh://git@host/fleet",
            "git@github.com:org/fleet.git",
            "https://github.com/org/fleet.git",
        ] {
            parse(&GOOD.replace("file:///srv/git/fleet.git", url)).unwrap();
        }
    }

    #[test]
    fn channel_paths_have_one_spelling() {
        for (given, want) in [
            ("./apps", "apps"),
            ("apps/", "apps"),
            (".", ""),
            ("./", ""),
            ("", ""),
            ("a/./b//c", "a/b/c"),
        ] {
            assert_eq!(normalize_repo_path(given).unwrap(), want, "{given}");
            let config = parse(&GOOD.replace("path: apps", &format!("path: \"{given}\""))).unwrap();
            assert_eq!(config.channels[0].path, want);
        }
        let err = parse(&GOOD.replace("path: apps", "path: ../other"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("channels[0].path") && err.contains("leaves the repository"),
            "{err}"
        );
    }

    #[test]
    fn targets() {
        let t = Targets {
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            clusters: ["special".to_owned()].into(),
        };
        let prod: BTreeMap<String, String> = [("env".to_owned(), "prod".to_owned())].into();
        assert!(t.matches("a", &prod));
        assert!(t.matches("special", &BTreeMap::new()));
        assert!(!t.matches("b", &BTreeMap::new()));
        assert!(!Targets::default().matches("a", &prod), "no targets: no clusters");
    }
}
