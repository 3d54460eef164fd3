//! How many requests the agent keeps in flight against the API server: it adapts to the
//! server, as TCP does to a network (additive increase, multiplicative decrease). An edge
//! cluster is often one k3s node on two cores whose API server also serves the workloads;
//! the agent must not be what slows it down.
//!
//! - Start at [`START`]; after a window of requests that all succeeded without latency
//!   rising, allow one more (up to [`MAX`], the documented cap).
//! - A 429 (API Priority and Fairness throttling) or a 5xx halves the window (at least 1)
//!   and the request is tried again after the server's `Retry-After` (or a short pause).
//! - Latency well above the best seen (the server queueing) takes one away.
//!
//! The decisions are a plain function ([`Pace::observe`]); the applier feeds it.

use std::time::Duration;

/// Requests in flight at first.
pub const START: usize = 4;
/// Most requests in flight, whatever the server takes (documented in `deploy/README.md`).
pub const MAX: usize = 32;
/// Latency this many times the best seen counts as the server queueing.
const QUEUEING: f64 = 3.0;

/// What one request came to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observed {
    /// Answered (successfully, or with an error that says nothing about load) in this time.
    Answered(Duration),
    /// 429, or a 5xx: the server is overloaded.
    Throttled,
}

/// The window of requests in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct Pace {
    limit: usize,
    best: Option<Duration>,
    /// Requests answered well since the window last grew.
    good: usize,
    /// No sign of load seen yet: the window doubles.
    slow_start: bool,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            limit: START,
            best: None,
            good: 0,
            slow_start: true,
        }
    }
}

impl Pace {
    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes in what one request came to.
    pub fn observe(&mut self, what: Observed) {
        match what {
            Observed::Throttled => {
                self.limit = (self.limit / 2).max(1);
                self.good = 0;
                self.slow_start = false;
            }
            Observed::Answered(took) => {
                let best = *self.best.get_or_insert(took);
                if took < best {
                    self.best = Some(took);
                }
                let floor = best.max(Duration::from_millis(1));
                if took.as_secs_f64() > floor.as_secs_f64() * QUEUEING {
                    if self.good == 0 && self.limit > 1 {
                        self.limit -= 1;
                    }
                    self.good = 0;
                    self.slow_start = false;
                    return;
                }
                self.good += 1;
                if self.good >= self.limit {
                    let grown = if self.slow_start {
                        self.limit * 2
                    } else {
                        self.limit + 1
                    };
                    self.limit = grown.min(MAX);
                    self.good = 0;
                }
            }
        }
    }
}

/// How long to wait before trying a throttled request again: the server's `Retry-After`
/// (seconds, at most 30), else a short pause growing with the attempt.
pub fn retry_after(header: Option<u64>, attempt: u32) -> Duration {
    match header {
        Some(s) => Duration::from_secs(s.clamp(1, 30)),
        None => Duration::from_millis(200 << attempt.min(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Observed = Observed::Answered(Duration::from_millis(5));

    #[test]
    fn grows_while_the_server_keeps_up() {
        let mut p = Pace::default();
        for _ in 0..1_000 {
            p.observe(FAST);
        }
        assert_eq!(p.limit(), MAX);
    }

    #[test]
    fn doubles_until_the_first_sign_of_load_then_grows_by_one() {
        let mut p = Pace::default();
        for _ in 0..START {
            p.observe(FAST);
        }
        assert_eq!(p.limit(), 2 * START, "slow start doubles");
        p.observe(Observed::Throttled);
        assert_eq!(p.limit(), START);
        for _ in 0..START {
            p.observe(FAST);
        }
        assert_eq!(p.limit(), START + 1, "then one more per window");
    }

    #[test]
    fn halves_on_throttling_and_never_stops() {
        let mut p = Pace::default();
        for _ in 0..100 {
            p.observe(FAST);
        }
        let before = p.limit();
        p.observe(Observed::Throttled);
        assert_eq!(p.limit(), before / 2);
        for _ in 0..10 {
            p.observe(Observed::Throttled);
        }
        assert_eq!(p.limit(), 1);
    }

    #[test]
    fn backs_off_when_latency_rises_and_holds_when_it_is_flat() {
        let mut p = Pace::default();
        for _ in 0..40 {
            p.observe(FAST);
        }
        let grown = p.limit();
        assert!(grown > START);
        // The server starts queueing: 10× the best latency.
        for _ in 0..5 {
            p.observe(Observed::Answered(Duration::from_millis(50)));
        }
        assert!(p.limit() < grown, "{} !< {grown}", p.limit());
        assert!(p.limit() >= 1);
    }

    #[test]
    fn retry_after_follows_the_server_within_bounds() {
        assert_eq!(retry_after(Some(2), 0), Duration::from_secs(2));
        assert_eq!(retry_after(Some(0), 0), Duration::from_secs(1));
        assert_eq!(retry_after(Some(3600), 0), Duration::from_secs(30));
        assert_eq!(retry_after(None, 0), Duration::from_millis(200));
        assert_eq!(retry_after(None, 9), Duration::from_millis(6400));
    }
}
