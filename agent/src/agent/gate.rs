//! Whether a newer generation may be applied now: the site's hold and the cluster's
//! maintenance windows (from its signed assignment), judged by the agent's own clock.
//! Plain functions; [`Agent`] reads the hold file, the assignment and the clock around them.

use std::path::PathBuf;

use skiff_proto::api::DeferReason;
use skiff_proto::statement::Timestamp;
use skiff_proto::window::{Maintenance, OutsideDrift};

use super::Agent;
use crate::hold::Hold;

/// Test-only: a file holding an RFC 3339 instant the agent takes as "now" for maintenance
/// windows (nothing else), read at each decision, so a test moves a site's clock in and out
/// of its window.
pub const WINDOW_CLOCK_ENV: &str = "SKIFF_AGENT_WINDOW_CLOCK_FILE";

/// Why a newer generation waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deferral {
    /// Hold or window.
    pub reason: DeferReason,
    /// When the next window opens.
    pub next: Option<Timestamp>,
    /// For logs, reports and status.
    pub message: String,
}

/// Whether a newer generation waits at `now`: a hold waits always; windows wait while none
/// is open (and no emergency override runs).
pub fn deferral(hold: Option<&Hold>, maintenance: Option<&Maintenance>, now: Timestamp) -> Option<Deferral> {
    if let Some(h) = hold {
        return Some(Deferral {
            reason: DeferReason::Hold,
            next: None,
            message: if h.reason.is_empty() {
                format!("held on the site since {}", h.since)
            } else {
                format!("held on the site since {}: {}", h.since, h.reason)
            },
        });
    }
    let m = maintenance?;
    match m.open_at(now) {
        Ok(true) => None,
        Ok(false) => {
            let next = m.next_open(now);
            Some(Deferral {
                reason: DeferReason::Window,
                next,
                message: format!(
                    "waiting for window (next: {}, {})",
                    next.map_or_else(|| "none within a week".to_owned(), |t| t.to_string()),
                    m.time_zone
                ),
            })
        }
        Err(why) => Some(Deferral {
            reason: DeferReason::Window,
            next: None,
            message: format!("waiting: the maintenance window cannot be judged here ({why})"),
        }),
    }
}

/// Whether drift found at `now` is only reported (outside the windows, when the assignment
/// says `drift: report`).
pub fn report_only(maintenance: Option<&Maintenance>, now: Timestamp) -> bool {
    maintenance.is_some_and(|m| m.drift == OutsideDrift::Report && !m.open_at(now).unwrap_or(false))
}

impl Agent {
    /// The agent's clock for windows (see [`WINDOW_CLOCK_ENV`]).
    fn window_now() -> Timestamp {
        std::env::var_os(WINDOW_CLOCK_ENV)
            .map(PathBuf::from)
            .and_then(|p| {
                use std::io::Read as _;
                let mut text = String::new();
                std::fs::File::open(p)
                    .ok()?
                    .take(64)
                    .read_to_string(&mut text)
                    .ok()?;
                Some(text)
            })
            .and_then(|t| humantime::parse_rfc3339(t.trim()).ok())
            .map_or_else(Timestamp::now, Timestamp::from)
    }

    /// Why a newer generation waits now, if it does.
    pub(super) fn deferral(&self) -> Option<Deferral> {
        let maintenance = self.assignment().and_then(|a| a.maintenance);
        deferral(
            crate::hold::read(&self.config.data_dir).as_ref(),
            maintenance.as_ref(),
            Self::window_now(),
        )
    }

    /// Whether the site holds.
    pub fn held(&self) -> bool {
        crate::hold::read(&self.config.data_dir).is_some()
    }

    /// Whether drift is only reported now (outside the windows, `drift: report`).
    pub(super) fn drift_report_only(&self) -> bool {
        report_only(
            self.assignment().and_then(|a| a.maintenance).as_ref(),
            Self::window_now(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::window::Window;

    #[test]
    fn a_hold_beats_an_open_window_and_a_closed_window_names_the_next() {
        let m = Maintenance {
            time_zone: "UTC".into(),
            windows: vec![Window {
                days: vec![],
                start: "02:00".into(),
                minutes: 60,
            }],
            drift: OutsideDrift::Report,
            apply_now_until: None,
        };
        let inside = Timestamp::from_unix_seconds(2 * 3600 + 60);
        let outside = Timestamp::from_unix_seconds(5 * 3600);
        assert_eq!(deferral(None, Some(&m), inside), None);
        assert_eq!(deferral(None, None, outside), None);
        let d = deferral(None, Some(&m), outside).unwrap();
        assert_eq!(
            (d.reason, d.next),
            (DeferReason::Window, Some(Timestamp::from_unix_seconds(26 * 3600)))
        );
        assert!(
            d.message
                .starts_with("waiting for window (next: 1970-01-02T02:00:00Z"),
            "{}",
            d.message
        );
        let hold = Hold {
            reason: "stocktaking".into(),
            since: Timestamp::from_unix_seconds(0),
        };
        let d = deferral(Some(&hold), Some(&m), inside).unwrap();
        assert_eq!(d.reason, DeferReason::Hold);
        assert!(d.message.ends_with("stocktaking"));
        assert!(report_only(Some(&m), outside));
        assert!(!report_only(Some(&m), inside));
        assert!(!report_only(None, outside));
    }
}
