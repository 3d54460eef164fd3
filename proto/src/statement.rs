//! The statement: what a signer vouches for about one bundle (`FORMAT.md` §3).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Sha256Digest;

/// The `_type` of every v1 statement.
pub const STATEMENT_TYPE: &str = "https://skiff.dev/statement/v1";

/// A signed statement about one bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The tarball this statement names.
    pub bundle: BundleRef,
    /// The channel the bundle belongs to.
    pub channel: String,
    /// Strictly increasing per channel; assigned by the hub.
    pub generation: u64,
    /// The source commit the bundle was built from, when it came from Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When the statement was made.
    pub created: Timestamp,
    /// After this instant agents refuse the statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// The digest and size of a bundle tarball.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    /// SHA-256 of the `tar.gz` bytes.
    pub sha256: Sha256Digest,
    /// Length of the `tar.gz` in bytes.
    pub size: u64,
}

impl Statement {
    /// A statement for a bundle, created now.
    pub fn new(bundle: BundleRef, channel: &str, generation: u64, commit: Option<String>) -> Self {
        Self {
            statement_type: STATEMENT_TYPE.to_owned(),
            bundle,
            channel: channel.to_owned(),
            generation,
            commit,
            created: Timestamp::now(),
            expires: None,
        }
    }

    /// Canonical JSON bytes (field order fixed by this struct): the DSSE payload.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("statement serializes")
    }
}

/// Checks a channel name: it becomes the label value `skiff.dev/channel=<name>`, so it follows
/// Kubernetes label-value rules (1–63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends).
pub fn check_channel_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 63 {
        return Err("longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    if !alnum(name.as_bytes().first()) || !alnum(name.as_bytes().last()) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// A UTC instant with one-second precision, written as RFC 3339 (`2026-11-29T15:04:05Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// Now, truncated to the second.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Seconds since the Unix epoch.
    pub fn unix_seconds(self) -> u64 {
        self.0
    }

    /// From seconds since the Unix epoch.
    pub fn from_unix_seconds(secs: u64) -> Self {
        Self(secs)
    }

    /// This instant plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_secs()))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_secs(t.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_seconds(SystemTime::from(*self)), f)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = humantime::TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_rfc3339(s).map(Self::from)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("bad RFC 3339 time {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_as_rfc3339() {
        let t = Timestamp::from_unix_seconds(1_795_964_645);
        assert_eq!(t.to_string(), "2026-11-29T15:04:05Z");
        assert_eq!("2026-11-29T15:04:05Z".parse::<Timestamp>().unwrap(), t);
    }

    #[test]
    fn channel_names_follow_label_value_rules() {
        assert!(check_channel_name("prod").is_ok());
        assert!(check_channel_name("edge.eu-1_a").is_ok());
        assert!(check_channel_name("").is_err());
        assert!(check_channel_name("-prod").is_err());
        assert!(check_channel_name("prod/eu").is_err());
        assert!(check_channel_name(&"a".repeat(64)).is_err());
    }
}
