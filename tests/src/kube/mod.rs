//! A Kubernetes API test server: the real wire protocol over HTTP on loopback, with the
//! semantics of kube-apiserver that an agent depends on (discovery, CRUD, server-side apply
//! with field ownership and conflicts, dry-run, status subresources, defaulting, CRD and
//! namespace lifecycles, `Status` errors), plus fault injection for retry tests.
//!
//! It runs in-process on a thread of its own, so sync and async tests alike can start one in
//! well under a second; `skiff-kube-testserver` serves it as a process for `kubectl`.

mod defaults;
mod fields;
mod http;
mod immutable;
mod jsonpatch;
mod protobuf;
mod resources;
mod schema;
mod store;
mod strategic;
mod validation;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, Uri};

pub use defaults::canonical_quantity;
pub use http::KUBE_VERSION;
pub use resources::ResourceType;
pub use store::{ApiError, State};

/// A fault to inject: the next `remaining` requests whose path contains `path_contains`
/// (and, if set, use `method`) fail with HTTP `status`.
#[derive(Clone, Debug)]
struct Fault {
    path_contains: String,
    method: Option<Method>,
    /// Only requests made by this field manager (`?fieldManager=`): a test's own reads and
    /// writes never consume a fault meant for the agent.
    field_manager: Option<String>,
    status: u16,
    remaining: usize,
}

/// State shared by the handler, the listener and the test.
pub struct Shared {
    state: Mutex<State>,
    faults: Mutex<Vec<Fault>>,
    latency: Mutex<Duration>,
    refuse: AtomicBool,
    /// Set when the server stops: open watches end (graceful shutdown waits for them).
    closing: AtomicBool,
    pub(crate) requests: Mutex<Vec<String>>,
    /// Bytes of response bodies of known length (watches are not counted).
    pub(crate) bytes_out: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn log_request(&self, method: &Method, uri: &Uri) {
        self.requests
            .lock()
            .expect("requests lock")
            .push(format!("{method} {uri}"));
    }

    fn take_fault(&self, method: &Method, path: &str, field_manager: Option<&str>) -> Option<u16> {
        let mut faults = self.faults.lock().expect("faults lock");
        let fault = faults.iter_mut().find(|f| {
            f.remaining > 0
                && path.contains(&f.path_contains)
                && f.method.as_ref().is_none_or(|m| m == method)
                && f.field_manager
                    .as_deref()
                    .is_none_or(|m| Some(m) == field_manager)
        })?;
        fault.remaining -= 1;
        let status = fault.status;
        faults.retain(|f| f.remaining > 0);
        Some(status)
    }

    fn latency(&self) -> Duration {
        *self.latency.lock().expect("latency lock")
    }
}

/// A running test server. Dropping it stops it.
pub struct KubeTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Accepts connections, or closes them at once while the server refuses connections.
struct RefusingListener {
    inner: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for RefusingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if self.shared.refuse.load(Ordering::SeqCst) {
                        drop(stream); // closed before a byte is read: the client's request fails
                        continue;
                    }
                    return (stream, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl KubeTestServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("address"))
    }

    /// Starts a server on `addr`.
    pub fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            faults: Mutex::new(Vec::new()),
            latency: Mutex::new(Duration::ZERO),
            refuse: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            bytes_out: std::sync::atomic::AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app_shared = shared.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("kube-testserver-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let app = axum::Router::new()
                        .fallback(http::handle)
                        .with_state(app_shared.clone());
                    let listener = RefusingListener {
                        inner: listener,
                        shared: app_shared,
                    };
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("test server thread died"))??;
        Ok(Self {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (context `skiff-test`, namespace `default`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// A `kube` client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("server url"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Makes the next `count` requests whose path contains `path_contains` fail with
    /// `status` (500, 503, 429 …; 429 carries `Retry-After: 1`).
    pub fn fail_next(&self, count: usize, status: u16, path_contains: &str) {
        self.fail_next_method(count, status, path_contains, None);
    }

    /// Like [`Self::fail_next`], only for requests with `method`.
    pub fn fail_next_method(&self, count: usize, status: u16, path_contains: &str, method: Option<Method>) {
        self.shared.faults.lock().expect("faults lock").push(Fault {
            path_contains: path_contains.to_owned(),
            method,
            field_manager: None,
            status,
            remaining: count,
        });
    }

    /// Makes the next `count` server-side applies (PATCH) by `field_manager` to paths
    /// containing `path_contains` fail with `status`: scoped to the client under test, so
    /// the test's own requests to the same object never take the fault.
    pub fn fail_next_apply(&self, count: usize, status: u16, path_contains: &str, field_manager: &str) {
        self.shared.faults.lock().expect("faults lock").push(Fault {
            path_contains: path_contains.to_owned(),
            method: Some(Method::PATCH),
            field_manager: Some(field_manager.to_owned()),
            status,
            remaining: count,
        });
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().expect("latency lock") = latency;
    }

    /// While on, every new connection is closed as soon as it is accepted.
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// How many requests were served (faulted ones included).
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().expect("requests lock").len()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// Direct access to the server's state (for assertions that need no HTTP).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.shared.state.lock().expect("state lock"))
    }
}

impl Drop for KubeTestServer {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A kubeconfig for an API server at `url`.
pub fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff-test
  cluster:
    server: {url}
users:
- name: skiff-test
  user:
    token: skiff-test-token
contexts:
- name: skiff-test
  context:
    cluster: skiff-test
    user: skiff-test
    namespace: default
current-context: skiff-test
"
    )
}
