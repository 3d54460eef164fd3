//! The agent's configuration: a YAML file, then `SKIFF_AGENT_*` environment variables and
//! flags on top. A bad config is refused at start with the key and reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A config the agent cannot run with.
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
    /// A key is missing or has a bad value.
    #[error("config {path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where bundles are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The Kubernetes API (server-side apply).
    Kube,
    /// A folder of manifest files (k3s auto-deploy, or trying skiff out).
    Dir(PathBuf),
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_target(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `kube` or `dir:PATH`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    match s.split_once(':') {
        _ if s == "kube" => Ok(Target::Kube),
        Some(("dir", path)) if !path.is_empty() => Ok(Target::Dir(PathBuf::from(path))),
        _ => Err(format!("{s:?}: expected `kube` or `dir:PATH`")),
    }
}

/// The whole agent configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The hub's URL; optional for air-gapped sites that only import.
    pub hub: Option<String>,
    /// Other places serving the same bundles (`<mirror>/<sha256>.tar.gz`), tried first.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// This cluster's name on the hub.
    pub cluster: String,
    /// The cluster token (prefer `token_file`).
    pub token: Option<String>,
    /// File holding the cluster token.
    pub token_file: Option<PathBuf>,
    /// Public keys (SPKI PEM) whose signatures are trusted (without `trust_root`; with it,
    /// they may vouch for the first root the hub serves: the migration path).
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// The trust root this site starts from (a root envelope, `FORMAT.md` §9): who signs
    /// bundles and assignments, and who may sign the next root. The agent follows newer
    /// roots from the hub or its import folder and keeps the newest in its store.
    #[serde(default)]
    pub trust_root: Option<PathBuf>,
    /// How many distinct trusted keys must have signed (default 1).
    #[serde(default = "one")]
    pub threshold: usize,
    /// Where the store and bundles live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `kube` or `dir:PATH`.
    #[serde(default = "default_target")]
    pub target: Target,
    /// A folder watched for `<sha256>.tar.gz` + `<sha256>.dsse.json` pairs.
    pub import_dir: Option<PathBuf>,
    /// Pause between polls when long-polling is off or failing (default 30s).
    #[serde(default = "default_poll", deserialize_with = "skiff_proto::config::duration")]
    pub poll_interval: Duration,
    /// How long one long-poll waits for a change (default 60s; 0 disables long-polling).
    #[serde(default = "default_wait", deserialize_with = "skiff_proto::config::duration")]
    pub long_poll_wait: Duration,
    /// Longest pause between retries when the hub is unreachable (default 5m).
    #[serde(
        default = "default_backoff",
        deserialize_with = "skiff_proto::config::duration"
    )]
    pub max_backoff: Duration,
    /// CA certificate (PEM) to trust for the hub, e.g. a private CA.
    pub ca_file: Option<PathBuf>,
    /// kubeconfig for the `kube` target (default: in-cluster, then $KUBECONFIG, ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// Namespace for the agent's own objects (inventory ConfigMaps).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Take over fields other managers own (server-side apply `force`; default true).
    #[serde(default = "yes")]
    pub force_conflicts: bool,
    /// Address for `/metrics` and `/healthz` (off unless set), e.g. 127.0.0.1:9090.
    pub listen: Option<SocketAddr>,
    /// Reports kept while the hub is unreachable (default 1000).
    #[serde(default = "default_outbox")]
    pub outbox_limit: usize,
    /// How often to compare the cluster with the applied bundles (default 60s; 0: never).
    #[serde(default = "default_drift", deserialize_with = "skiff_proto::config::duration")]
    pub drift_interval: Duration,
    /// Re-apply drifted objects (default true); per channel in `channels`, per object with
    /// the annotation `skiff.dev/self-heal: "false"`.
    #[serde(default = "yes")]
    pub self_heal: bool,
    /// Per-channel settings.
    #[serde(default)]
    pub channels: std::collections::BTreeMap<String, ChannelSettings>,
    /// Apply nothing until a signed assignment for this cluster arrives (default false: an
    /// agent that has never had one takes the channels the hub offers or `channels` lists;
    /// once one has been accepted, one is always required).
    #[serde(default)]
    pub require_assignment: bool,
    /// A YAML file of `name: value` pairs substituted into channels that ask for
    /// substitution, for values that must not leave the site. Local trust: whoever can
    /// write this file decides these values. The assignment's values win over the file's;
    /// the file's are never reported.
    pub values_file: Option<PathBuf>,
    /// The values read from `values_file`.
    #[serde(skip)]
    pub local_values: std::collections::BTreeMap<String, String>,
}

/// Reads a local values file: a mapping of variable names to scalars (kept as text).
pub fn read_values_file(path: &Path) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    use skiff_proto::assignment::limits;
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.len() > 1 << 20 {
        return Err(invalid(
            "(file)".into(),
            format!("{} bytes, more than 1 MiB", meta.len()),
        ));
    }
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let docs = skiff_proto::manifest::parse_file(&path.display().to_string(), &text)
        .map_err(|e| invalid("(file)".into(), e.to_string()))?;
    let mut out = std::collections::BTreeMap::new();
    let Some(doc) = docs.into_iter().next() else {
        return Ok(out);
    };
    let serde_json::Value::Object(map) = doc.value else {
        return Err(invalid(
            "(top level)".into(),
            "must be a mapping of name: value".into(),
        ));
    };
    if map.len() > limits::MAX_VALUES {
        return Err(invalid(
            "(top level)".into(),
            format!("{} values, more than {}", map.len(), limits::MAX_VALUES),
        ));
    }
    for (k, v) in map {
        skiff_proto::values::check_variable_name(&k).map_err(|why| invalid(k.clone(), why.into()))?;
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return Err(invalid(k, "must be a string, number or boolean".into())),
        };
        if text.len() > limits::MAX_VALUE_BYTES {
            return Err(invalid(
                k,
                format!("{} bytes, more than {}", text.len(), limits::MAX_VALUE_BYTES),
            ));
        }
        out.insert(k, text);
    }
    Ok(out)
}

/// Settings for one channel.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// Overrides `self_heal` for this channel.
    pub self_heal: Option<bool>,
}

fn default_drift() -> Duration {
    Duration::from_secs(60)
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/skiff-agent")
}
fn default_target() -> Target {
    Target::Kube
}
fn default_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_namespace() -> String {
    "skiff-system".to_owned()
}
fn default_outbox() -> usize {
    1000
}

/// Flag and environment overrides.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--hub` / `SKIFF_AGENT_HUB`.
    pub hub: Option<String>,
    /// `--cluster` / `SKIFF_AGENT_CLUSTER`.
    pub cluster: Option<String>,
    /// `--token-file` / `SKIFF_AGENT_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// `SKIFF_AGENT_TOKEN`.
    pub token: Option<String>,
    /// `--data-dir` / `SKIFF_AGENT_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--target` / `SKIFF_AGENT_TARGET`.
    pub target: Option<Target>,
    /// `--import-dir` / `SKIFF_AGENT_IMPORT_DIR`.
    pub import_dir: Option<PathBuf>,
    /// `--kubeconfig` / `SKIFF_AGENT_KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// `--listen` / `SKIFF_AGENT_LISTEN`.
    pub listen: Option<SocketAddr>,
}

impl AgentConfig {
    /// Reads, overrides and checks a config file.
    pub fn load(path: &Path, o: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, o)
    }

    /// Parses and checks config text.
    pub fn parse(path: &Path, text: &[u8], o: &Overrides) -> Result<Self, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let docs = skiff_proto::manifest::parse_file(&path.display().to_string(), text)
            .map_err(|e| invalid("(file)", e.to_string()))?;
        let mut value = docs.into_iter().next().map_or(serde_json::json!({}), |d| d.value);
        // Overrides go in before deserializing, so required keys may come from them.
        let mut set = |k: &str, v: Option<serde_json::Value>| {
            if let (Some(v), Some(map)) = (v, value.as_object_mut()) {
                map.insert(k.to_owned(), v);
            }
        };
        let path_value = |p: &Option<PathBuf>| p.as_ref().map(|p| serde_json::json!(p.display().to_string()));
        set("hub", o.hub.clone().map(Into::into));
        set("cluster", o.cluster.clone().map(Into::into));
        set("token_file", path_value(&o.token_file));
        set("token", o.token.clone().map(Into::into));
        set("data_dir", path_value(&o.data_dir));
        set(
            "target",
            o.target.as_ref().map(|t| match t {
                Target::Kube => serde_json::json!("kube"),
                Target::Dir(p) => serde_json::json!(format!("dir:{}", p.display())),
            }),
        );
        set("import_dir", path_value(&o.import_dir));
        set("kubeconfig", path_value(&o.kubeconfig));
        set("listen", o.listen.map(|l| serde_json::json!(l.to_string())));
        let mut config: AgentConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            invalid(
                if key == "." { "(top level)" } else { &key },
                e.inner().to_string(),
            )
        })?;
        if let Some(hub) = &config.hub
            && !(hub.starts_with("https://") || hub.starts_with("http://"))
        {
            return Err(invalid("hub", format!("{hub:?} is not an http(s) URL")));
        }
        if config.hub.is_some() && config.token.is_none() && config.token_file.is_none() {
            return Err(invalid(
                "token_file",
                "required with hub (or token / SKIFF_AGENT_TOKEN)".into(),
            ));
        }
        if config.trusted_keys.is_empty() && config.trust_root.is_none() {
            return Err(invalid(
                "trust_root",
                "required: a trust root file (or, before roots, trusted_keys: at least one public key file)"
                    .into(),
            ));
        }
        if !config.trusted_keys.is_empty()
            && (config.threshold == 0 || config.threshold > config.trusted_keys.len())
        {
            return Err(invalid(
                "threshold",
                format!(
                    "{} is impossible with {} trusted key(s)",
                    config.threshold,
                    config.trusted_keys.len()
                ),
            ));
        }
        if skiff_proto::manifest::check_dns_label(&config.cluster).is_err() {
            return Err(invalid(
                "cluster",
                format!("{:?} is not a valid cluster name", config.cluster),
            ));
        }
        if let Some(file) = &config.values_file {
            config.local_values = read_values_file(file)?;
        }
        Ok(config)
    }

    /// Whether drifted objects of `channel` are re-applied.
    pub fn self_heal_for(&self, channel: &str) -> bool {
        self.channels
            .get(channel)
            .and_then(|c| c.self_heal)
            .unwrap_or(self.self_heal)
    }

    /// For `run`: an agent needs somewhere to get bundles from.
    pub fn require_source(&self, path: &Path) -> Result<(), ConfigError> {
        if self.hub.is_none() && self.import_dir.is_none() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: "hub".to_owned(),
                reason: "required unless import_dir is set (an agent needs somewhere to get bundles)"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// The cluster token.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_owned()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let t = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            key: "token_file".into(),
            reason: format!(
                "cannot read the cluster's token: {e} (the token is printed once by `skiff-hub cluster add NAME` or `cluster bootstrap`; `skiff-hub cluster rotate-token NAME` makes a new one)"
            ),
        })?;
        let t = t.trim().to_owned();
        if t.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.clone(),
                key: "token_file".into(),
                reason: "the file is empty; it should hold the cluster's token (skc_…)".into(),
            });
        }
        Ok(Some(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "hub: https://hub.example:8443\ncluster: edge-1\ntoken_file: /etc/skiff/token\ntrusted_keys: [/etc/skiff/signing.pub.pem]\ndata_dir: /var/lib/skiff-agent\ntarget: dir:/var/lib/rancher/k3s/server/manifests\nimport_dir: /media/skiff\n";

    fn parse(t: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.yaml"), t.as_bytes(), &Overrides::default())
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.target,
            Target::Dir(PathBuf::from("/var/lib/rancher/k3s/server/manifests"))
        );
        assert_eq!(c.long_poll_wait, Duration::from_secs(60));
        assert!(c.force_conflicts);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&GOOD.replace("target: dir:/var/lib/rancher/k3s/server/manifests", "target: ftp"))
            .unwrap_err();
        assert!(e.to_string().contains("agent.yaml: target:"), "{e}");
        let e = parse(&GOOD.replace("trusted_keys: [/etc/skiff/signing.pub.pem]", "trusted_keys: []"))
            .unwrap_err();
        assert!(e.to_string().contains("trusted_keys"), "{e}");
        let e = parse(&format!("{GOOD}threshold: 2\n")).unwrap_err();
        assert!(e.to_string().contains("threshold"), "{e}");
        let e = parse(&format!("{GOOD}poll_interval: often\n")).unwrap_err();
        assert!(e.to_string().contains("poll_interval"), "{e}");
    }

    #[test]
    fn self_heal_per_channel() {
        let c = parse(&format!(
            "{GOOD}self_heal: true\nchannels:\n  quiet: {{self_heal: false}}\n"
        ))
        .unwrap();
        assert!(c.self_heal_for("demo"));
        assert!(!c.self_heal_for("quiet"));
        assert_eq!(c.drift_interval, Duration::from_secs(60));
    }

    #[test]
    fn overrides_fill_in_and_win() {
        let o = Overrides {
            cluster: Some("edge-9".into()),
            target: Some(Target::Kube),
            ..Overrides::default()
        };
        let c = AgentConfig::parse(Path::new("a.yaml"), GOOD.as_bytes(), &o).unwrap();
        assert_eq!((c.cluster.as_str(), c.target), ("edge-9", Target::Kube));
    }
}
