//! The site's hold (`skiff-agent hold` / `release`): a small file in the data folder, so
//! it is set and lifted while the agent runs (its store is locked then) and survives
//! restarts. While it exists the agent applies no newer generation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_proto::statement::Timestamp;

/// The hold file's name in the data folder.
pub const HOLD_FILE: &str = "hold.json";

/// Largest hold file read; a larger one counts as a hold with an unreadable reason.
const MAX_HOLD_BYTES: u64 = 4096;

/// Longest reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// A hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Why, as the site said it.
    #[serde(default)]
    pub reason: String,
    /// Since when.
    pub since: Timestamp,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(HOLD_FILE)
}

/// The hold in effect, if any. A hold file that cannot be read or parsed is still a hold
/// (the site asked for one): its reason says what is wrong with it.
pub fn read(data_dir: &Path) -> Option<Hold> {
    let p = path(data_dir);
    let meta = std::fs::metadata(&p).ok()?;
    let unreadable = |why: String| Hold {
        reason: format!("(hold file {} unreadable: {why})", p.display()),
        since: meta.modified().map_or_else(|_| Timestamp::now(), Timestamp::from),
    };
    if meta.len() > MAX_HOLD_BYTES {
        return Some(unreadable(format!("larger than {MAX_HOLD_BYTES} bytes")));
    }
    match std::fs::read(&p) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| unreadable(e.to_string()))),
        Err(e) => Some(unreadable(e.to_string())),
    }
}

/// Sets (or replaces) the hold.
pub fn set(data_dir: &Path, reason: &str) -> anyhow::Result<Hold> {
    let hold = Hold {
        reason: reason.chars().take(MAX_REASON_CHARS).collect(),
        since: Timestamp::now(),
    };
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!("{HOLD_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&hold)?)
        .and_then(|()| std::fs::rename(&tmp, path(data_dir)))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path(data_dir).display()))?;
    Ok(hold)
}

/// Lifts the hold; returns whether there was one.
pub fn release(data_dir: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path(data_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::anyhow!("removing {}: {e}", path(data_dir).display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_set_read_and_released_and_a_broken_file_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        let h = set(dir.path(), &"x".repeat(MAX_REASON_CHARS + 10)).unwrap();
        assert_eq!(h.reason.len(), MAX_REASON_CHARS);
        assert_eq!(read(dir.path()), Some(h));
        assert!(release(dir.path()).unwrap());
        assert!(!release(dir.path()).unwrap());
        std::fs::write(dir.path().join(HOLD_FILE), b"{not json").unwrap();
        assert!(read(dir.path()).unwrap().reason.contains("unreadable"));
        std::fs::write(dir.path().join(HOLD_FILE), vec![b' '; 5000]).unwrap();
        assert!(read(dir.path()).unwrap().reason.contains("larger than"));
    }
}
