//! A Kubernetes API for tests: the in-process test server, or a real cluster when
//! `SKIFF_TEST_KUBECONFIG` names a kubeconfig (how the real thing is checked).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kube::KubeTestServer;

/// The environment variable that switches the Kubernetes tests to a real cluster.
pub const REAL_CLUSTER_ENV: &str = "SKIFF_TEST_KUBECONFIG";

/// A cluster to test against.
pub struct TestCluster {
    /// A client for it.
    pub client: kube::Client,
    /// The test server, when not running against a real cluster.
    pub server: Option<KubeTestServer>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// The test server, for a test that needs what only it offers (fault or latency
    /// injection, writing status as a controller would); `None` against a real cluster,
    /// after saying on stderr (past the harness's capture) that `test` was skipped and why.
    pub fn test_server_only(&self, test: &str, needs: &str) -> Option<&KubeTestServer> {
        if self.server.is_none() {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test} on a real cluster: it needs {needs}, which only the test server offers"
            );
        }
        self.server.as_ref()
    }
}

/// Installs rustls' ring provider once (as `main` does in the binaries).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TestCluster {
    /// A fresh test server, or the real cluster named by `SKIFF_TEST_KUBECONFIG`.
    pub async fn start() -> Self {
        install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        if let Ok(path) = std::env::var(REAL_CLUSTER_ENV) {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read SKIFF_TEST_KUBECONFIG");
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .expect("kubeconfig from SKIFF_TEST_KUBECONFIG");
            return Self {
                client: kube::Client::try_from(config).expect("client"),
                server: None,
                kubeconfig: PathBuf::from(path),
                _dir: dir,
            };
        }
        let server = KubeTestServer::start().expect("start test server");
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Self {
            client: server.client(),
            server: Some(server),
            kubeconfig,
            _dir: dir,
        }
    }

    /// Whether this is a real cluster.
    pub fn is_real(&self) -> bool {
        self.server.is_none()
    }

    /// A kubeconfig file for it (for `kubectl` and agent processes).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

/// A name no other test (or earlier run on a real cluster) uses: `prefix-<suffix>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{n}", (nanos ^ std::process::id()) & 0xffffff)
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
