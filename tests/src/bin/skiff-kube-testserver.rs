//! `skiff-kube-testserver`: the Kubernetes API test server as a process, for `kubectl` and
//! for tests that run the agent as a real process.
//!
//! ```text
//! skiff-kube-testserver --listen 127.0.0.1:PORT --kubeconfig PATH [--crd-establish-delay 500ms]
//! ```
//!
//! Writes the kubeconfig once it is listening, prints the URL, and serves until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use skiff_tests::kube::KubeTestServer;

fn main() -> anyhow::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut kubeconfig: Option<PathBuf> = None;
    let mut establish = std::time::Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs ADDRESS:PORT"))?;
                listen = v.parse().map_err(|e| anyhow::anyhow!("--listen {v:?}: {e}"))?;
            }
            "--kubeconfig" => {
                kubeconfig = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--kubeconfig needs PATH"))?
                        .into(),
                )
            }
            "--crd-establish-delay" => {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--crd-establish-delay needs a duration (500ms)"))?;
                establish = humantime::parse_duration(&v)
                    .map_err(|e| anyhow::anyhow!("--crd-establish-delay {v:?}: {e}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "Kubernetes API test server for skiff's tests.\n\nUsage: skiff-kube-testserver [--listen 127.0.0.1:PORT] [--kubeconfig PATH] [--crd-establish-delay DURATION]\n\n  --listen               address to serve on (default 127.0.0.1:0, a free port)\n  --kubeconfig           write a kubeconfig pointing at the server here once it listens\n  --crd-establish-delay  how long a new CRD takes to be Established and served, as on a\n                         real cluster (default 0: at once)"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "--listen must be a loopback address, got {listen}"
    );
    let server = KubeTestServer::start_on(listen)?;
    server.with_state(|state| state.set_crd_establish_delay(establish));
    if let Some(path) = &kubeconfig {
        let tmp = path.with_extension("tmp");
        server.write_kubeconfig(&tmp)?;
        std::fs::rename(&tmp, path)?;
    }
    println!("{}", server.url());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(server);
    Ok(())
}
