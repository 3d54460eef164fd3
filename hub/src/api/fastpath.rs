//! The direct path for agents' desired-state polls.
//!
//! Every agent holds one long-poll open almost all the time, so a hub's memory is mostly
//! what one held poll costs. Through hyper that is about 25 KiB (its fixed read and write
//! buffers plus the request in flight); here, a connection whose request is
//! `GET /v1/clusters/{cluster}/desired` is answered by a small HTTP/1.1 loop that keeps
//! nothing of the request while it waits: a few hundred bytes of state. Any other request
//! on the connection (or anything unusual: a body, pipelining, HTTP/1.0) hands the
//! connection, with the bytes already read, to hyper and the full router.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use super::AppState;
use super::agent::{DesiredReply, desired_reply};
use super::auth::{Denied, bearer_value};
use super::conns::{Slot, Watched};
use crate::config::Limits;

/// Longest request head read here.
const MAX_HEAD: usize = 16 * 1024;

/// Live connections on the direct path (for draining at shutdown).
pub static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// A stream that first yields bytes already read from it.
pub struct Prefixed<IO> {
    prefix: Vec<u8>,
    at: usize,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A parsed desired-state request: all the direct path needs to keep.
#[derive(Debug)]
pub struct DesiredRequest {
    cluster: String,
    token: Option<String>,
    if_none_match: Option<String>,
    wait: Option<String>,
    close: bool,
}

/// What to do with a request head.
#[derive(Debug)]
pub enum Head {
    /// A plain desired-state GET: answered here.
    Direct(DesiredRequest),
    /// Anything else: hyper and the router decide.
    Hyper,
    /// Refused here with 400 (the router would refuse it too).
    Bad(&'static str),
}

/// Sorts a request head read from a connection (`bytes` holds exactly what was read).
/// Only a head that ends exactly where `bytes` ends, with CRLF line ends only, is
/// answered here; anything hyper might frame differently goes to hyper with the same
/// bytes, so both paths agree on where each request begins and ends.
pub fn classify(bytes: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return Head::Hyper,
    };
    if len != bytes.len() || has_bare_lf(&bytes[..len]) {
        return Head::Hyper; // pipelined bytes, or line ends hyper may read otherwise
    }
    let authorizations = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
        .count();
    if authorizations > 1 {
        return Head::Bad("more than one Authorization header");
    }
    match desired_request(&req) {
        Some(r) => Head::Direct(r),
        None => Head::Hyper,
    }
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// The desired-state request in a parsed head; `None` unless it is a plain GET with no body.
fn desired_request(req: &httparse::Request<'_, '_>) -> Option<DesiredRequest> {
    if req.method? != "GET" || req.version? != 1 {
        return None;
    }
    let target = req.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let cluster = path.strip_prefix("/v1/clusters/")?.strip_suffix("/desired")?;
    if cluster.is_empty()
        || !cluster
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return None;
    }
    let mut poll = DesiredRequest {
        cluster: cluster.to_owned(),
        token: None,
        if_none_match: None,
        wait: None,
        close: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("wait", v)) => poll.wait = Some(v.to_owned()),
            _ => return None, // anything else: let the router decide
        }
    }
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).ok()?;
        match h.name.to_ascii_lowercase().as_str() {
            "authorization" => poll.token = bearer_value(value).map(str::to_owned),
            "if-none-match" => poll.if_none_match = Some(value.to_owned()),
            "connection" => poll.close = value.eq_ignore_ascii_case("close"),
            "content-length" if value.trim() != "0" => return None,
            "transfer-encoding" | "upgrade" | "expect" => return None,
            _ => {}
        }
    }
    Some(poll)
}

/// The request path of a head (for connections taken from the admin reserve).
fn request_path(bytes: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(bytes).ok()?;
    req.path.map(str::to_owned)
}

fn plain_response(code: u16, text: &str, message: &str, close: bool) -> Vec<u8> {
    let body = serde_json::json!({"error": message}).to_string();
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {code} {text}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn response(reply: &DesiredReply, close: bool) -> (u16, Vec<u8>) {
    let connection = if close { "connection: close\r\n" } else { "" };
    match reply {
        DesiredReply::Body(a) => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: {}\r\ncache-control: no-cache\r\ncontent-length: {}\r\n{connection}\r\n",
                a.etag,
                a.body.len()
            )
            .into_bytes();
            out.extend_from_slice(&a.body);
            (200, out)
        }
        DesiredReply::NotModified(etag) => (
            304,
            format!("HTTP/1.1 304 Not Modified\r\netag: {etag}\r\n{connection}\r\n").into_bytes(),
        ),
        DesiredReply::Denied(d) => {
            let (code, text, message, extra) = match d {
                Denied::Unauthorized => (
                    401,
                    "Unauthorized",
                    "missing or invalid bearer token",
                    "www-authenticate: Bearer realm=\"skiff\"\r\n",
                ),
                Denied::Forbidden(why) => (403, "Forbidden", *why, ""),
            };
            let body = serde_json::json!({"error": message}).to_string();
            (
                code,
                format!(
                    "HTTP/1.1 {code} {text}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n{connection}\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        }
        DesiredReply::BadRequest(m) => (400, plain_response(400, "Bad Request", m, close)),
    }
}

/// Reads one request head: `Ok(None)` on a clean close, shutdown, or no first byte within
/// `wait`; the bytes read otherwise (exactly one complete head, unless the peer sent more
/// or the head is over [`MAX_HEAD`]). From its first byte the whole head must arrive within
/// `head_timeout`, however slowly it drips.
async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    wait: Duration,
    head_timeout: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut deadline = tokio::time::Instant::now() + wait;
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout_at(deadline, io.read(&mut chunk)) => match r {
                Ok(r) => r?,
                Err(_) if buf.is_empty() => return Ok(None),
                Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request head too slow")),
            },
            _ = shutdown.changed(), if buf.is_empty() => return Ok(None),
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        if buf.is_empty() {
            deadline = tokio::time::Instant::now() + head_timeout;
        }
        buf.extend_from_slice(&chunk[..n]);
        // An empty line ends a head for httparse (and hyper): LF LF or LF CR LF. Finding one
        // is enough here; `classify` parses once and checks the head ends exactly there.
        let ends = buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n");
        // Not a request line at all (a TLS handshake sent to plain HTTP, say): let hyper
        // answer 400 now rather than wait out the head deadline.
        let not_http = !buf[0].is_ascii_uppercase();
        if ends || not_http || buf.len() >= MAX_HEAD {
            return Ok(Some(buf));
        }
    }
}

/// Serves one connection: desired-state polls directly, anything else through hyper.
pub async fn serve_connection<IO, S>(
    mut io: IO,
    slot: Slot,
    state: Arc<AppState>,
    http: hyper::server::conn::http1::Builder,
    service: S,
    graceful: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let mut shutdown = state.shutdown.clone();
    let limits: &Limits = &state.config.limits;
    let mut wait = limits.first_byte_timeout;
    loop {
        let head = match read_head(&mut io, &mut shutdown, wait, limits.head_timeout).await {
            Ok(Some(h)) => h,
            _ => break,
        };
        wait = limits.idle_timeout;
        if slot.admin_only && !request_path(&head).is_some_and(|p| p.starts_with("/v1/admin/")) {
            // The last connections are kept for administrators to reach a busy hub.
            let _ = io
                .write_all(&plain_response(
                    503,
                    "Service Unavailable",
                    "the hub is at its connection limit",
                    true,
                ))
                .await;
            break;
        }
        let poll = match classify(&head) {
            Head::Direct(poll) => poll,
            Head::Bad(why) => {
                let _ = io.write_all(&plain_response(400, "Bad Request", why, true)).await;
                break;
            }
            Head::Hyper => {
                let (watched, activity) = Watched::new(Prefixed {
                    prefix: head,
                    at: 0,
                    io,
                });
                let conn = http.serve_connection(TokioIo::new(watched), service);
                // Hyper bounds each request head; this bounds a connection on which nothing
                // moves at all (an idle keep-alive, a reader that stopped reading).
                tokio::select! {
                    _ = graceful.watch(conn) => {}
                    () = activity.idle(limits.idle_timeout) => {}
                }
                ACTIVE.fetch_sub(1, Ordering::SeqCst);
                drop(slot);
                return;
            }
        };
        drop(head);
        let started = Instant::now();
        let reply = desired_reply(
            &state,
            &poll.cluster,
            poll.token.as_deref(),
            poll.if_none_match,
            poll.wait.as_deref(),
        )
        .await;
        let close = poll.close || *shutdown.borrow();
        let (code, bytes) = response(&reply, close);
        drop(reply);
        state.metrics.request("desired", code, started.elapsed());
        if io.write_all(&bytes).await.is_err() || io.flush().await.is_err() || close {
            break;
        }
    }
    let _ = io.shutdown().await;
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::{Head, classify};

    fn parse(head: &[u8]) -> Option<super::DesiredRequest> {
        match classify(head) {
            Head::Direct(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn heads_that_hyper_could_frame_otherwise_go_to_hyper() {
        // Bare LF line ends, bytes after the head, a head that is not complete.
        for other in [
            &b"GET /v1/clusters/a/desired HTTP/1.1\nhost: x\n\n"[..],
            b"GET /v1/clusters/a/desired HTTP/1.1\r\nhost: x\n\r\n",
            b"GET /v1/clusters/a/desired HTTP/1.1\r\n\r\nGET /v1/admin/status HTTP/1.1\r\n\r\n",
            b"GET /v1/clusters/a/desired HTTP/1.1\r\nhost: x\r\n",
        ] {
            assert!(
                matches!(classify(other), Head::Hyper),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        let twice = b"GET /v1/clusters/a/desired HTTP/1.1\r\nauthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n";
        assert!(matches!(classify(twice), Head::Bad(_)));
    }

    #[test]
    fn only_plain_desired_gets_take_the_direct_path() {
        let ok = b"GET /v1/clusters/edge-1/desired?wait=60 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\nif-none-match: \"e\"\r\n\r\n";
        let p = parse(ok).unwrap();
        assert_eq!(
            (p.cluster.as_str(), p.token.as_deref(), p.wait.as_deref()),
            ("edge-1", Some("t"), Some("60"))
        );
        assert_eq!(p.if_none_match.as_deref(), Some("\"e\""));
        for other in [
            &b"GET /v1/bundles/abc HTTP/1.1\r\n\r\n"[..],
            b"POST /v1/clusters/edge-1/desired HTTP/1.1\r\n\r\n",
            b"GET /v1/clusters/edge-1/desired HTTP/1.0\r\n\r\n",
            b"GET /v1/clusters/edge-1/desired?x=1 HTTP/1.1\r\n\r\n",
            b"GET /v1/clusters/Edge%201/desired HTTP/1.1\r\n\r\n",
            b"GET /v1/clusters/edge-1/desired HTTP/1.1\r\ncontent-length: 5\r\n\r\n",
            b"GET /v1/clusters/edge-1/desired HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(parse(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
