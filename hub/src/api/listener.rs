//! Serving: plain HTTP or HTTPS (rustls with ring) on one listener, graceful shutdown.
//!
//! TLS handshakes run in tasks of their own and hand finished connections back through a
//! channel, so one slow client cannot hold up the accept loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::conns::Slot;
use crate::config::TlsConfig;

/// The listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding failed.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key is unusable.
    #[error("TLS {path}: {message}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads a rustls server config from PEM files.
pub fn tls_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServeError> {
    let err = |path: &Path, message: String| ServeError::Tls {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| err(&tls.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&tls.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(&tls.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| err(&tls.key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(&tls.cert, e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests
/// (long-polls end early on shutdown, so draining takes moments; it is bounded at 30 s).
///
/// Each connection starts on the direct path for agents' polls ([`super::fastpath`]) and is
/// handed to hyper (read buffer capped at its 8 KiB minimum, one router shared by all
/// connections) for anything else.
pub async fn serve(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    app: Router,
    state: Arc<super::AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(8192)
        .keep_alive(true)
        .header_read_timeout(state.config.limits.head_timeout)
        .timer(hyper_util::rt::TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(|c| TlsAcceptor::from(Arc::new(c)));
    let (tx, mut rx) = mpsc::channel::<(TlsStream<TcpStream>, Slot)>(256);
    let limits = state.config.limits.clone();
    // Each connection is a file: stay below the descriptor limit, with room for the store,
    // blobs and git.
    let ceiling =
        usize::try_from(super::conns::raise_nofile_limit().saturating_sub(256)).unwrap_or(usize::MAX);
    if ceiling < limits.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            allowed = ceiling,
            "The open-file limit allows fewer connections than limits.max_connections; raise LimitNOFILE"
        );
    }
    // None: nothing said yet (an Instant in the past could underflow on a fresh machine).
    let mut refusals_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let slot = match state.connections.admit(peer.ip(), &limits, ceiling) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        // Closed at once; said in the log at most every 10 s.
                        if refusals_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                            refusals_logged = Some(Instant::now());
                            tracing::warn!(peer = %peer.ip(), ?refusal, open = state.connections.open(), "Connection refused at the connection limit");
                        }
                        drop(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                match &acceptor {
                    None => {
                        tokio::spawn(super::fastpath::serve_connection(
                            stream,
                            slot,
                            state.clone(),
                            http.clone(),
                            service.clone(),
                            graceful.watcher(),
                        ));
                    }
                    Some(acceptor) => {
                        // Handshakes run on their own, so a slow client cannot stall accepting.
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        let timeout = limits.first_byte_timeout;
                        tokio::spawn(async move {
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let _ = tx.send((tls, slot)).await;
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, peer = %peer, "TLS handshake failed"),
                                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Some((tls, slot)) = rx.recv() => {
                tokio::spawn(super::fastpath::serve_connection(
                    tls,
                    slot,
                    state.clone(),
                    http.clone(),
                    service.clone(),
                    graceful.watcher(),
                ));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let direct = async {
        while super::fastpath::ACTIVE.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(graceful.shutdown(), direct) } => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("Connections still open after 30s; closing them");
        }
    }
    Ok(())
}
