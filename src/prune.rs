//! Retention: which old dumps to delete, and deleting them.
//!
//! (Being written: this file holds the interface the rest of the program uses.)

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

/// `[retention]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {}

/// The checked `[retention]` settings.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Prune at the end of every `run`.
    pub prune_after_run: bool,
}

/// Per-group overrides of `[retention]` (`[[group]] max_age`, `keep_min`).
#[derive(Debug, Clone, Default)]
pub struct GroupRetention {}

/// Checks `[retention]`; errors name the key (`retention.keep_min`).
pub fn check(_path: &Path, _raw: RawRetention) -> Result<RetentionConfig, ConfigError> {
    Ok(RetentionConfig {
        prune_after_run: true,
    })
}

/// Checks a group's `max_age` / `keep_min` overrides; `key` is e.g. `group[2]`.
pub fn check_group(
    _path: &Path,
    _key: &str,
    _max_age: Option<&str>,
    _keep_min: Option<i64>,
) -> Result<GroupRetention, ConfigError> {
    Ok(GroupRetention {})
}

/// Identifies the dumps of one group on disk: (database or None for globals, group name).
pub type GroupKey = (Option<String>, String);

/// What a prune did (or would do, with `dry_run`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneSummary {
    pub deleted_files: u64,
    pub freed_bytes: u64,
    pub errors: Vec<String>,
}

/// Prunes `config.backup.dir` by the retention rules. The caller holds the run lock.
/// Groups in `protect` (their dump failed in this run) lose nothing.
pub fn prune(
    _config: &Config,
    _retention: &RetentionConfig,
    _protect: &HashSet<GroupKey>,
    _dry_run: bool,
) -> PruneSummary {
    PruneSummary::default()
}

/// `pg_groupdump prune [--dry-run] [--json]`: takes the run lock, prunes, prints per group what
/// is kept and deleted and why, and the bytes freed. Returns the exit code.
pub fn command(_config: &Config, _dry_run: bool, _json: bool) -> Result<i32, crate::Failure> {
    Err(crate::Failure::Usage("prune is not implemented yet".into()))
}
