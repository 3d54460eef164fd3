//! `skiff-hub cluster bootstrap`: registers a cluster (or gives it a new token) and prints
//! everything its agent needs, filled in: the in-cluster manifest (the agent base of
//! `deploy/kubernetes/agent/base`), or the config and unit for a host install.

use std::collections::BTreeMap;

use anyhow::Context as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::HubArgs;
use crate::api::admin::{TokenResponse, TrustResponse};

/// The agent base, compiled in so the manifest always matches this hub's version.
const AGENT_BASE: &[&str] = &[
    include_str!("../../../deploy/kubernetes/agent/base/namespace.yaml"),
    include_str!("../../../deploy/kubernetes/agent/base/serviceaccount.yaml"),
    include_str!("../../../deploy/kubernetes/agent/base/rbac.yaml"),
    include_str!("../../../deploy/kubernetes/agent/base/secret.yaml"),
    include_str!("../../../deploy/kubernetes/agent/base/configmap.yaml"),
    include_str!("../../../deploy/kubernetes/agent/base/pvc.yaml"),
    include_str!("../../../deploy/kubernetes/agent/base/deployment.yaml"),
];
const AGENT_UNIT: &str = include_str!("../../../deploy/systemd/skiff-agent.service");

/// Output of `cluster bootstrap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BootstrapFormat {
    /// A manifest for `kubectl apply --server-side -f -`.
    Kube,
    /// The agent config, keys, token and systemd unit for a host install.
    Systemd,
}

struct Agent {
    url: String,
    cluster: String,
    token: String,
    keys: Vec<String>,
    ca: Option<String>,
    /// The channels that target the cluster now.
    channels: Vec<String>,
    /// The hub's newest trust root: the agent starts from it instead of a key list.
    root: Option<String>,
}

async fn register(hub: &HubArgs, name: &str, labels: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let client = hub.client()?;
    let body = serde_json::to_vec(&json!({"name": name, "labels": labels}))?;
    let (status, bytes) = client
        .send(Method::POST, "/v1/admin/clusters", Some(body))
        .await?;
    if status == StatusCode::CONFLICT {
        eprintln!(
            "cluster {name} is already registered: it gets a new token; an agent installed with the old one stops authenticating"
        );
        let r: TokenResponse = client
            .json(Method::POST, &format!("/v1/admin/clusters/{name}/token"), None)
            .await?;
        return Ok(r.token);
    }
    if !status.is_success() {
        anyhow::bail!(
            "registering {name}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let r: TokenResponse =
        serde_json::from_slice(&bytes).context("unexpected answer registering the cluster")?;
    Ok(r.token)
}

fn agent_yaml(a: &Agent, token_file: &str, dir: &str, kube: bool) -> String {
    let keys: Vec<String> = (0..a.keys.len())
        .map(|i| format!("{dir}/{}", key_file(i)))
        .collect();
    // With a trust root, the agent starts from it (and follows newer roots); else the keys.
    let trust = match &a.root {
        Some(_) => format!("trust_root: {dir}/root.json"),
        None => format!("trusted_keys: [{}]", keys.join(", ")),
    };
    let mut y = format!(
        "hub: {}\ncluster: {}\ntoken_file: {token_file}\n{trust}\ndata_dir: /var/lib/skiff-agent\n",
        a.url, a.cluster,
    );
    if a.ca.is_some() {
        y.push_str(&format!("ca_file: {dir}/ca.crt\n"));
    }
    // What the cluster runs comes from its signed assignment (from the hub, or from an
    // export's `<cluster>.assignment.json` on an air-gapped site); a new install takes
    // nothing without one. The channels that target it today are listed for their
    // per-channel settings.
    y.push_str(&format!(
        "require_assignment: true\nchannels: {{{}}}\n",
        a.channels
            .iter()
            .map(|c| format!("{c}: {{}}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if kube {
        y.push_str("target: kube\nnamespace: skiff-system\nlisten: 0.0.0.0:9090\n");
    } else {
        y.push_str(
            "# k3s: the node's kubeconfig; or, with no API credentials, write into k3s's auto-deploy folder:\n\
             #   target: dir:/var/lib/rancher/k3s/server/manifests\n\
             target: kube\nkubeconfig: /etc/rancher/k3s/k3s.yaml\nlisten: 127.0.0.1:9090\n",
        );
    }
    y
}

fn key_file(i: usize) -> String {
    if i == 0 {
        "signing.pub.pem".to_owned()
    } else {
        format!("signing-{}.pub.pem", i + 1)
    }
}

fn manifest(a: &Agent) -> anyhow::Result<String> {
    let mut docs: Vec<Value> = Vec::new();
    for text in AGENT_BASE {
        for d in skiff_proto::manifest::parse_yaml("agent base", text)? {
            docs.push(d.value);
        }
    }
    for d in &mut docs {
        match (d["kind"].as_str(), d["metadata"]["name"].as_str()) {
            (Some("Secret"), Some("skiff-agent-token")) => {
                d["stringData"] = json!({"token": a.token});
            }
            (Some("ConfigMap"), Some("skiff-agent")) => {
                let mut data = serde_json::Map::new();
                data.insert(
                    "agent.yaml".into(),
                    json!(agent_yaml(a, "/etc/skiff/token/token", "/etc/skiff/config", true)),
                );
                for (i, k) in a.keys.iter().enumerate() {
                    data.insert(key_file(i), json!(k));
                }
                if let Some(root) = &a.root {
                    data.insert("root.json".into(), json!(root));
                }
                if let Some(ca) = &a.ca {
                    data.insert("ca.crt".into(), json!(ca));
                }
                d["data"] = Value::Object(data);
            }
            _ => {}
        }
    }
    let mut out = format!(
        "# skiff agent for cluster {}, talking to {}.\n# Apply: kubectl apply --server-side -f <this file>\n# The cluster token is in the Secret skiff-system/skiff-agent-token only: keep this file private.\n",
        a.cluster, a.url
    );
    out.push_str(&crate::yaml::documents(&docs));
    Ok(out)
}

/// The files of a host install: (absolute path, mode, content).
fn systemd_files(a: &Agent) -> Vec<(String, u32, String)> {
    let mut files = vec![
        (
            "/etc/skiff/agent.yaml".to_owned(),
            0o644,
            agent_yaml(a, "/etc/skiff/token", "/etc/skiff", false),
        ),
        ("/etc/skiff/token".to_owned(), 0o600, format!("{}\n", a.token)),
    ];
    for (i, k) in a.keys.iter().enumerate() {
        files.push((format!("/etc/skiff/{}", key_file(i)), 0o644, k.clone()));
    }
    if let Some(root) = &a.root {
        files.push(("/etc/skiff/root.json".to_owned(), 0o644, root.clone()));
    }
    if let Some(ca) = &a.ca {
        files.push(("/etc/skiff/ca.crt".to_owned(), 0o644, ca.clone()));
    }
    files.push((
        "/etc/systemd/system/skiff-agent.service".to_owned(),
        0o644,
        AGENT_UNIT.to_owned(),
    ));
    files
}

fn systemd(a: &Agent) -> String {
    let mut out = format!(
        "# skiff agent for cluster {} on a host (e.g. a k3s node). Write each file below, then:\n#   systemctl daemon-reload && systemctl enable --now skiff-agent\n",
        a.cluster
    );
    for (path, mode, body) in systemd_files(a) {
        out.push_str(&format!("\n# ==> {path} (mode {mode:04o})\n{body}"));
        if !body.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Writes the host install's files beneath `root` (`root/etc/skiff/…`) with their modes;
/// `--out /` installs them in place.
fn write_systemd(a: &Agent, root: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    for (path, mode, body) in systemd_files(a) {
        let target = root.join(path.trim_start_matches('/'));
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&target)
            .with_context(|| format!("writing {}", target.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(body.as_bytes())?;
        eprintln!("wrote {} (mode {mode:04o})", target.display());
    }
    eprintln!("then: systemctl daemon-reload && systemctl enable --now skiff-agent");
    Ok(())
}

/// The image the agent's Deployment runs (from the kustomize base).
fn agent_image() -> &'static str {
    AGENT_BASE
        .iter()
        .flat_map(|doc| doc.lines())
        .find_map(|l| l.trim().strip_prefix("image: "))
        .unwrap_or("skiff-agent")
}

/// Whether a URL's host is a loopback address (or `localhost`).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Runs `cluster bootstrap`.
pub async fn bootstrap(
    hub: &HubArgs,
    name: &str,
    labels: &BTreeMap<String, String>,
    hub_url: Option<String>,
    format: BootstrapFormat,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if out.is_some() && format != BootstrapFormat::Systemd {
        anyhow::bail!("--out writes the files of a host install: use it with --format systemd");
    }
    let trust: TrustResponse = hub.client()?.json(Method::GET, "/v1/admin/trust", None).await?;
    let url = hub_url.unwrap_or(trust.public_url);
    // Checked before anything is registered: a refused bootstrap changes nothing.
    if format == BootstrapFormat::Kube && is_loopback_url(&url) {
        anyhow::bail!(
            "the hub URL {url} is a loopback address: an agent running in a cluster cannot reach it. \
             Set public_url in the hub config (or pass --hub-url) to an address the cluster can reach"
        );
    }
    let token = register(hub, name, labels).await?;
    let desired: skiff_proto::api::Desired = hub
        .client()?
        .json(Method::GET, &format!("/v1/admin/clusters/{name}/desired"), None)
        .await?;
    let agent = Agent {
        url,
        cluster: name.to_owned(),
        token,
        keys: trust.public_keys,
        ca: trust.ca,
        channels: desired.channels.into_iter().map(|c| c.channel).collect(),
        root: desired
            .root
            .map(|e| String::from_utf8_lossy(&e.to_json()).into_owned()),
    };
    match format {
        BootstrapFormat::Kube => {
            eprintln!(
                "note: the manifest runs the image {}; build it with `podman build -f deploy/container/Containerfile --target agent` and make it available to the cluster under that name (a registry, or `k3s ctr images import`; see deploy/README.md)",
                agent_image()
            );
            print!("{}", manifest(&agent)?)
        }
        BootstrapFormat::Systemd => match out {
            Some(root) => write_systemd(&agent, root)?,
            None => print!("{}", systemd(&agent)),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_urls() {
        for url in [
            "http://127.0.0.1:8080",
            "https://localhost",
            "http://[::1]:80/x",
            "http://user@127.1.2.3",
        ] {
            assert!(super::is_loopback_url(url), "{url}");
        }
        for url in [
            "https://hub.example:8443",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]:80",
        ] {
            assert!(!super::is_loopback_url(url), "{url}");
        }
        assert!(super::agent_image().contains("skiff-agent"));
    }
}
