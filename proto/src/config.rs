//! Pieces the hub's and the agent's configuration files share.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `30s`, `5m`, `1h30m`, or a whole number of seconds.
pub fn parse_duration(v: &serde_json::Value) -> Result<Duration, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a whole number of seconds")),
        serde_json::Value::String(s) => {
            humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))
        }
        other => Err(format!("expected a duration like 30s, found {other}")),
    }
}

/// For `#[serde(deserialize_with = "skiff_proto::config::duration")]`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// For optional durations (`null` or absent: none).
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    parse_duration(&v).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration(&serde_json::json!("90s")),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration(&serde_json::json!("1h30m")),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration(&serde_json::json!(15)),
            Ok(Duration::from_secs(15))
        );
        assert!(parse_duration(&serde_json::json!("soon")).is_err());
        assert!(parse_duration(&serde_json::json!(-1)).is_err());
    }
}
