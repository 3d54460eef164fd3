//! What connections may cost: a global cap and a per-address cap on open connections (with
//! room kept for admin requests), and deadlines for a connection's first byte, a whole
//! request head and idleness. Unauthenticated peers are strangers; none of them may hold
//! more than its share of the hub.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Limits;

/// Open connections, in all and per peer address.
#[derive(Default)]
pub struct Tracker {
    total: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused at the caps (for `/metrics`).
    pub refused: AtomicU64,
}

/// Why a connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection the hub allows is open.
    Full,
    /// This address holds its share.
    PerAddress,
}

/// An admitted connection's place; given back when dropped.
pub struct Slot {
    tracker: Arc<Tracker>,
    ip: IpAddr,
    /// Taken from the reserve: only admin requests are served on it.
    pub admin_only: bool,
}

impl Tracker {
    /// Admits a connection from `ip` within `limits` (the global cap never above `ceiling`,
    /// what the file descriptor limit allows).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits, ceiling: usize) -> Result<Slot, Refusal> {
        let max = limits.max_connections.min(ceiling).max(1);
        let total = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        let release_total = || {
            self.total.fetch_sub(1, Ordering::SeqCst);
            self.refused.fetch_add(1, Ordering::Relaxed);
        };
        if total > max {
            release_total();
            return Err(Refusal::Full);
        }
        let loopback = ip.is_loopback();
        let admin_only = total > max.saturating_sub(limits.admin_reserve) && !loopback;
        {
            let mut per = self.per_address.lock().expect("tracker");
            let n = per.entry(ip).or_insert(0);
            if limits.max_connections_per_address > 0 && *n >= limits.max_connections_per_address {
                if *n == 0 {
                    per.remove(&ip);
                }
                drop(per);
                release_total();
                return Err(Refusal::PerAddress);
            }
            *n += 1;
        }
        Ok(Slot {
            tracker: self.clone(),
            ip,
            admin_only,
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tracker.total.fetch_sub(1, Ordering::SeqCst);
        let mut per = self.tracker.per_address.lock().expect("tracker");
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// Raises this process's open-file limit to its hard limit (each connection is a file);
/// returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "Could not raise the open-file limit to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A stream that notes when bytes last moved, so a watchdog can close it when idle.
pub struct Watched<IO> {
    io: IO,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<IO> Watched<IO> {
    /// Wraps `io`; [`Self::idle_for`] tells how long nothing moved.
    pub fn new(io: IO) -> (Self, Activity) {
        let last = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        (
            Self {
                io,
                last: last.clone(),
                epoch,
            },
            Activity { last, epoch },
        )
    }

    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The other end of a [`Watched`] stream.
pub struct Activity {
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl Activity {
    /// How long since bytes last moved.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Resolves once nothing has moved for `limit`.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle + Duration::from_millis(10)).await;
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_all_with_a_reserve() {
        let limits = Limits {
            max_connections: 10,
            max_connections_per_address: 3,
            admin_reserve: 2,
            ..Limits::default()
        };
        let t = Arc::new(Tracker::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..3).map(|_| t.admit(a, &limits, usize::MAX).unwrap()).collect();
        assert_eq!(t.admit(a, &limits, usize::MAX).err(), Some(Refusal::PerAddress));
        let mut others = Vec::new();
        for i in 2..=8 {
            let ip: IpAddr = format!("10.0.0.{i}").parse().unwrap();
            others.push(t.admit(ip, &limits, usize::MAX).unwrap());
        }
        // 10 open: the last two came from the reserve.
        assert_eq!(t.open(), 10);
        assert!(others[others.len() - 1].admin_only && others[others.len() - 2].admin_only);
        assert!(!others[others.len() - 3].admin_only);
        assert_eq!(
            t.admit("10.0.0.99".parse().unwrap(), &limits, usize::MAX).err(),
            Some(Refusal::Full)
        );
        drop(slots);
        assert_eq!(t.open(), 7);
        assert!(t.admit(a, &limits, usize::MAX).is_ok());
        // The file descriptor ceiling wins over the configured cap.
        let t = Arc::new(Tracker::default());
        let _one = t.admit(a, &limits, 1).unwrap();
        assert_eq!(t.admit(a, &limits, 1).err(), Some(Refusal::Full));
    }
}
