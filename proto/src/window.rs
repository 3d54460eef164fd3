//! Maintenance windows (`FORMAT.md` §7.3): when a site may apply a newer generation,
//! in the site's own time zone (daylight saving included), carried in the signed assignment
//! and decided by the agent with its own clock, so they hold while the site is offline.

use serde::{Deserialize, Serialize};

use crate::statement::Timestamp;

/// Caps on maintenance windows.
pub mod limits {
    /// Most windows per cluster.
    pub const MAX_WINDOWS: usize = 16;
    /// Longest window, in minutes (a week).
    pub const MAX_MINUTES: u32 = 7 * 24 * 60;
}

/// A day of the week.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Day {
    fn of(w: jiff::civil::Weekday) -> Self {
        use jiff::civil::Weekday as W;
        match w {
            W::Monday => Self::Mon,
            W::Tuesday => Self::Tue,
            W::Wednesday => Self::Wed,
            W::Thursday => Self::Thu,
            W::Friday => Self::Fri,
            W::Saturday => Self::Sat,
            W::Sunday => Self::Sun,
        }
    }
}

/// One recurring window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    /// Days it starts on (empty: every day).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Day>,
    /// Local start time, `HH:MM` (24-hour).
    pub start: String,
    /// How long it stays open, in minutes (1 to a week).
    pub minutes: u32,
}

/// What the agent does about drift outside its windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutsideDrift {
    /// Correct it as usual (the applied generation is re-applied: nothing new is rolled out).
    #[default]
    Heal,
    /// Only report it until the next window.
    Report,
}

/// A cluster's maintenance windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maintenance {
    /// The site's IANA time zone (`Europe/Berlin`, `UTC`).
    pub time_zone: String,
    /// The windows; a newer generation is applied only while one is open.
    pub windows: Vec<Window>,
    /// Drift correction outside the windows.
    #[serde(default)]
    pub drift: OutsideDrift,
    /// An emergency override: until this instant, newer generations apply at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_now_until: Option<Timestamp>,
}

fn parse_start(text: &str) -> Result<(i8, i8), String> {
    let bad = || format!("start {text:?}: expected HH:MM (24-hour)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok((h, m))
}

impl Maintenance {
    /// Checks time zone, windows and caps; the error says which and why.
    pub fn check(&self) -> Result<(), String> {
        self.zone()?;
        if self.windows.is_empty() {
            return Err("no windows (leave maintenance out to allow any time)".to_owned());
        }
        if self.windows.len() > limits::MAX_WINDOWS {
            return Err(format!(
                "{} windows, at most {}",
                self.windows.len(),
                limits::MAX_WINDOWS
            ));
        }
        for (i, w) in self.windows.iter().enumerate() {
            parse_start(&w.start).map_err(|e| format!("windows[{i}]: {e}"))?;
            if w.minutes == 0 || w.minutes > limits::MAX_MINUTES {
                return Err(format!(
                    "windows[{i}]: {} minutes; a window lasts 1 minute to a week",
                    w.minutes
                ));
            }
            if w.days.len() > 7 {
                return Err(format!("windows[{i}]: more than 7 days"));
            }
        }
        Ok(())
    }

    fn zone(&self) -> Result<jiff::tz::TimeZone, String> {
        jiff::tz::TimeZone::get(&self.time_zone).map_err(|e| format!("time zone {:?}: {e}", self.time_zone))
    }

    /// The windows' (start, end) instants in Unix seconds for those starting on the local
    /// days from `first` days before `now`'s to `last` days after it.
    fn spans(&self, now: Timestamp, first: i64, last: i64) -> Result<Vec<(i64, i64)>, String> {
        let tz = self.zone()?;
        let now = jiff::Timestamp::from_second(now.unix_seconds() as i64).map_err(|e| e.to_string())?;
        let today = now.to_zoned(tz.clone()).date();
        let mut out = Vec::new();
        for offset in -first..=last {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            for w in &self.windows {
                if !w.days.is_empty() && !w.days.contains(&Day::of(day.weekday())) {
                    continue;
                }
                let (h, m) = parse_start(&w.start)?;
                // A start that falls in a daylight-saving gap moves forward, as clocks do.
                let Ok(start) = day.at(h, m, 0, 0).to_zoned(tz.clone()) else {
                    continue;
                };
                let start = start.timestamp().as_second();
                out.push((start, start + i64::from(w.minutes) * 60));
            }
        }
        Ok(out)
    }

    /// Whether a newer generation may be applied at `now`: a window is open, or the
    /// emergency override runs.
    pub fn open_at(&self, now: Timestamp) -> Result<bool, String> {
        if self.apply_now_until.is_some_and(|t| now < t) {
            return Ok(true);
        }
        let t = now.unix_seconds() as i64;
        // A window lasts at most a week: those starting up to 8 local days back may be open.
        Ok(self.spans(now, 8, 0)?.iter().any(|(s, e)| *s <= t && t < *e))
    }

    /// When the next window opens after `now` (within about a week).
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        let t = now.unix_seconds() as i64;
        self.spans(now, 0, 8)
            .ok()?
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| *s > t)
            .min()
            .map(|s| Timestamp::from_unix_seconds(s as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        let t: jiff::Timestamp = rfc3339.parse().unwrap();
        Timestamp::from_unix_seconds(t.as_second() as u64)
    }

    fn nightly(zone: &str) -> Maintenance {
        Maintenance {
            time_zone: zone.to_owned(),
            windows: vec![Window {
                days: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
                start: "22:00".to_owned(),
                minutes: 360,
            }],
            drift: OutsideDrift::Heal,
            apply_now_until: None,
        }
    }

    #[test]
    fn windows_follow_the_local_clock_across_midnight_and_daylight_saving() {
        let m = nightly("Europe/Berlin");
        m.check().unwrap();
        // Monday 2026-11-30, Berlin is UTC+1: the window is 21:00Z Monday to 03:00Z Tuesday.
        assert!(!m.open_at(at("2026-11-30T20:59:59Z")).unwrap());
        assert!(m.open_at(at("2026-11-30T21:00:00Z")).unwrap());
        assert!(
            m.open_at(at("2026-12-01T02:59:59Z")).unwrap(),
            "past local midnight"
        );
        assert!(!m.open_at(at("2026-12-01T03:00:00Z")).unwrap());
        assert_eq!(
            m.next_open(at("2026-12-01T03:00:00Z")),
            Some(at("2026-12-01T21:00:00Z"))
        );
        // Friday night's window runs into Saturday; none starts Saturday or Sunday.
        assert!(m.open_at(at("2026-12-05T01:00:00Z")).unwrap());
        assert!(!m.open_at(at("2026-12-05T22:00:00Z")).unwrap());
        assert_eq!(
            m.next_open(at("2026-12-05T12:00:00Z")),
            Some(at("2026-12-07T21:00:00Z"))
        );
        // In summer Berlin is UTC+2: the same local window starts an hour earlier in UTC.
        assert!(m.open_at(at("2026-07-06T20:00:00Z")).unwrap());
        assert!(!m.open_at(at("2026-07-06T19:59:00Z")).unwrap());
        // Another zone, the same instant: closed.
        assert!(
            !nightly("America/New_York")
                .open_at(at("2026-11-30T21:00:00Z"))
                .unwrap()
        );
    }

    #[test]
    fn the_emergency_override_opens_until_it_ends() {
        let mut m = nightly("UTC");
        let now = at("2026-11-30T12:00:00Z");
        assert!(!m.open_at(now).unwrap());
        m.apply_now_until = Some(at("2026-11-30T13:00:00Z"));
        assert!(m.open_at(now).unwrap());
        assert!(!m.open_at(at("2026-11-30T13:00:00Z")).unwrap());
    }

    #[test]
    fn bad_windows_are_named() {
        let mut m = nightly("Mars/Olympus");
        assert!(m.check().unwrap_err().contains("Mars/Olympus"));
        m.time_zone = "UTC".into();
        m.windows[0].start = "24:00".into();
        assert!(m.check().unwrap_err().contains("windows[0]: start \"24:00\""));
        m.windows[0].start = "7:00".into();
        assert!(m.check().is_err());
        m.windows[0].start = "07:00".into();
        m.windows[0].minutes = 0;
        assert!(m.check().unwrap_err().contains("1 minute to a week"));
        m.windows.clear();
        assert!(m.check().unwrap_err().contains("no windows"));
    }
}
