//! `[retention]` and the `[[group]] max_age` / `keep_min` overrides, checked into
//! [`RetentionConfig`] and [`GroupRetention`].
//!
//! Checked with the rest of the file: a retention mistake must stop a run before it dumps
//! anything, not surface at its end when the prune starts. `prune` receives only the checked
//! settings and decides from them which files go.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, GroupConfig};

/// `keep_min` when not set.
pub const DEFAULT_KEEP_MIN: u32 = 1;
/// The largest `keep_min` accepted.
const MAX_KEEP_MIN: i64 = 1_000_000;

/// `[retention]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    /// How old a dump may get before it is deleted (humantime, e.g. "14d"). Required.
    max_age: Option<String>,
    /// The newest this-many complete dumps of every group are kept whatever their age.
    keep_min: Option<i64>,
    /// Prune at the end of every `run` (default true).
    prune_after_run: Option<bool>,
}

/// The checked `[retention]` settings.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Prune at the end of every `run`.
    pub prune_after_run: bool,
    /// Default `max_age`.
    pub max_age: Duration,
    /// Default `keep_min` (≥ 1).
    pub keep_min: u32,
}

/// Per-group overrides of `[retention]` (`[[group]] max_age`, `keep_min`).
#[derive(Debug, Clone, Default)]
pub struct GroupRetention {
    pub max_age: Option<Duration>,
    pub keep_min: Option<u32>,
}

impl GroupRetention {
    /// Whether the group overrides anything.
    pub fn is_set(&self) -> bool {
        self.max_age.is_some() || self.keep_min.is_some()
    }
}

/// Why a `max_age` or `keep_min` value is refused.
#[derive(Debug, thiserror::Error)]
enum RetentionValueError {
    #[error("{0:?} is not a positive duration such as \"14d\" or \"36h\"")]
    MaxAge(String),
    #[error("{0} is not ≥ 1: the newest complete dump of every group is always kept")]
    KeepMinTooSmall(i64),
    #[error("{0} is larger than {MAX_KEEP_MIN}")]
    KeepMinTooLarge(i64),
}

fn parse_max_age(s: &str) -> Result<Duration, RetentionValueError> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| RetentionValueError::MaxAge(s.to_string()))
}

fn parse_keep_min(n: i64) -> Result<u32, RetentionValueError> {
    if n < 1 {
        Err(RetentionValueError::KeepMinTooSmall(n))
    } else if n > MAX_KEEP_MIN {
        Err(RetentionValueError::KeepMinTooLarge(n))
    } else {
        Ok(n as u32)
    }
}

/// Checks `[retention]`; errors name the key (`retention.keep_min`).
pub(super) fn check(path: &Path, raw: RawRetention) -> Result<RetentionConfig, ConfigError> {
    let max_age = match raw.max_age {
        None => {
            return Err(ConfigError::new(
                path,
                "retention.max_age",
                "is required in [retention]: how old a dump may get before it is deleted, \
                 e.g. \"14d\"",
            ))
        }
        Some(s) => parse_max_age(&s).map_err(|e| ConfigError::at(path, "retention.max_age", e))?,
    };
    let keep_min = match raw.keep_min {
        None => DEFAULT_KEEP_MIN,
        Some(n) => parse_keep_min(n).map_err(|e| ConfigError::at(path, "retention.keep_min", e))?,
    };
    Ok(RetentionConfig {
        prune_after_run: raw.prune_after_run.unwrap_or(true),
        max_age,
        keep_min,
    })
}

/// Checks a group's `max_age` / `keep_min` overrides; `key` is e.g. `group[2]`.
pub(super) fn check_group(
    path: &Path,
    key: &str,
    max_age: Option<&str>,
    keep_min: Option<i64>,
) -> Result<GroupRetention, ConfigError> {
    let max_age = match max_age {
        None => None,
        Some(s) => {
            Some(parse_max_age(s).map_err(|e| ConfigError::at(path, format!("{key}.max_age"), e))?)
        }
    };
    let keep_min = match keep_min {
        None => None,
        Some(n) => Some(
            parse_keep_min(n).map_err(|e| ConfigError::at(path, format!("{key}.keep_min"), e))?,
        ),
    };
    Ok(GroupRetention { max_age, keep_min })
}

/// A `[[group]]` retention override without a `[retention]` table would silently do nothing
/// (nothing is pruned without `[retention]`): an error, once both are known.
pub(super) fn check_overrides(
    path: &Path,
    groups: &[GroupConfig],
    retention: Option<&RetentionConfig>,
) -> Result<(), ConfigError> {
    if retention.is_some() {
        return Ok(());
    }
    match groups.iter().find(|g| g.retention.is_set()) {
        None => Ok(()),
        Some(g) => {
            let key = if g.retention.max_age.is_some() {
                "max_age"
            } else {
                "keep_min"
            };
            Err(ConfigError::new(
                path,
                format!("{}.{key}", g.key()),
                "has no effect without a [retention] table (nothing is pruned without one)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn defaults_and_errors() {
        let p = Path::new("groups.toml");
        let raw = |t: &str| -> RawRetention { toml::from_str(t).unwrap() };
        let r = check(p, raw("max_age = \"4d\"")).unwrap();
        assert_eq!(r.max_age, Duration::from_secs(4 * DAY));
        assert_eq!(r.keep_min, 1);
        assert!(r.prune_after_run);
        let r = check(
            p,
            raw("max_age = \"36h\"\nkeep_min = 3\nprune_after_run = false"),
        )
        .unwrap();
        assert_eq!((r.keep_min, r.prune_after_run), (3, false));

        let e = check(p, raw("keep_min = 2")).unwrap_err();
        assert_eq!(e.key, "retention.max_age");
        let e = check(p, raw("max_age = \"4d\"\nkeep_min = 0")).unwrap_err();
        assert_eq!(e.key, "retention.keep_min");
        assert!(e.message.contains("0 is not ≥ 1"), "{e}");
        let e = check(p, raw("max_age = \"4d\"\nkeep_min = -2")).unwrap_err();
        assert_eq!(e.key, "retention.keep_min");
        let e = check(p, raw("max_age = \"4d\"\nkeep_min = 1000001")).unwrap_err();
        assert_eq!(e.message, "1000001 is larger than 1000000");
        for bad in ["soon", "0s", "", "-1d"] {
            let e = check(p, raw(&format!("max_age = {bad:?}"))).unwrap_err();
            assert_eq!(e.key, "retention.max_age", "{bad}");
            assert!(e.message.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(toml::from_str::<RawRetention>("max_age = \"4d\"\nkeepmin = 1").is_err());

        let g = check_group(p, "group[2]", Some("30d"), Some(5)).unwrap();
        assert_eq!(g.max_age, Some(Duration::from_secs(30 * DAY)));
        assert_eq!(g.keep_min, Some(5));
        assert!(!check_group(p, "group[2]", None, None).unwrap().is_set());
        let e = check_group(p, "group[2]", None, Some(0)).unwrap_err();
        assert_eq!(e.key, "group[2].keep_min");
        let e = check_group(p, "group[2]", Some("x"), None).unwrap_err();
        assert_eq!(e.key, "group[2].max_age");
    }

    #[test]
    fn overrides_need_a_retention_table() {
        let text = "[backup]\ndir = \"/b\"\n[[group]]\nname = \"g\"\ndatabase = \"d\"\n\
                    tables = [\"t\"]\nkeep_min = 3\n";
        // Checked when the configuration is read.
        let e = crate::config::parse(Path::new("groups.toml"), text).unwrap_err();
        assert_eq!(e.key, "group[0].keep_min");
        let with = format!("{text}[retention]\nmax_age = \"1d\"\n");
        let c = crate::config::parse(Path::new("groups.toml"), &with).unwrap();
        check_overrides(&c.path, &c.groups, c.retention.as_ref()).unwrap();
    }
}
