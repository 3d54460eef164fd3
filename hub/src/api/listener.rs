//! Serving: plain HTTP or HTTPS (rustls with ring) on one listener, graceful shutdown.
//!
//! TLS handshakes run in tasks of their own and hand finished connections to axum through a
//! channel, so one slow client cannot hold up the accept loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

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

struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop ended: wait for shutdown to finish the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Some(tls) = tls else {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        return Ok(());
    };
    let local = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = mpsc::channel(256);
    let accept_loop = tokio::spawn(async move {
        loop {
            let Ok((stream, addr)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, peer = %addr, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                }
            });
        }
    });
    let result = axum::serve(TlsListener { rx, local }, app)
        .with_graceful_shutdown(shutdown)
        .await;
    accept_loop.abort();
    result?;
    Ok(())
}
