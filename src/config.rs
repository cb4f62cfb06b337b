//! Reading and checking `groups.toml`.
//!
//! This module owns the whole file: every section, `[email]` (`email`) and `[retention]`
//! (`retention`) included, is parsed and checked here, and each feature receives only its
//! checked settings. Nothing here depends on the features, so they can all depend on it.
//!
//! The file is parsed into raw serde structs that mirror the TOML exactly and refuse unknown keys:
//! for a tool that writes and deletes backups, a typo such as `lock_wait_timout` must be an error,
//! not a silently ignored setting. The raw structs are then checked into [`Config`], whose values
//! are ready to use (durations parsed, table names split into schema and table, defaults filled).
//! Every error names the file, the key path (`group[1].tables[0]`) and the offending value.
//!
//! Checks that need the catalog (does this table exist? is it in two groups?) happen later, in
//! `plan`, still before anything is dumped.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::compression::Compression;

pub(crate) mod email;
mod encryption;
mod retention;
mod storage;

pub use email::{
    is_loopback, EmailConfig, On, PasswordSource, TlsMode, DEFAULT_SUBJECT_PREFIX, DEFAULT_TIMEOUT,
};
pub use retention::{GroupRetention, RetentionConfig, DEFAULT_KEEP_MIN};
pub use storage::StorageConfig;

/// An error in the configuration file, with the place it was found.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// The key path, e.g. `backup.jobs` or `group[2].tables[0]`.
    pub key: String,
    /// What is wrong, including the offending value.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The error for `key` whose value was refused for the reason `why`.
    fn at(file: &Path, key: impl Into<String>, why: impl fmt::Display) -> Self {
        ConfigError::new(file, key, why.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file structure

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    connection: RawConnection,
    backup: Option<RawBackup>,
    #[serde(default, rename = "group")]
    groups: Vec<RawGroup>,
    #[serde(default)]
    ungrouped: RawUngrouped,
    email: Option<email::RawEmail>,
    retention: Option<retention::RawRetention>,
    metrics: Option<RawMetrics>,
    storage: Option<storage::RawStorage>,
    encryption: Option<encryption::RawEncryption>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
    maintenance_database: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    dir: Option<PathBuf>,
    jobs: Option<i64>,
    lock_wait_timeout: Option<String>,
    compress: Option<i64>,
    compression: Option<String>,
    statistics: Option<bool>,
    databases: Option<Vec<String>>,
    #[serde(default)]
    exclude_databases: Vec<String>,
    pg_dump: Option<PathBuf>,
    pg_dumpall: Option<PathBuf>,
    globals: Option<bool>,
    schema: Option<bool>,
    lock_retries: Option<i64>,
    retry_delay: Option<String>,
    yield_after: Option<String>,
    file_mode: Option<String>,
    dir_mode: Option<String>,
    count_rows: Option<bool>,
    pg_restore: Option<PathBuf>,
    engine: Option<String>,
    split_above: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Option<String>,
    database: Option<String>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    schemas: Vec<String>,
    lock_wait_timeout: Option<String>,
    yield_after: Option<String>,
    max_age: Option<String>,
    keep_min: Option<i64>,
    engine: Option<String>,
    compression: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUngrouped {
    mode: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Checked configuration

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub connection: ConnectionConfig,
    pub backup: BackupConfig,
    pub groups: Vec<GroupConfig>,
    pub ungrouped: UngroupedConfig,
    /// `[email]`: where failure (or every) run summaries go. `None`: no mail.
    pub email: Option<EmailConfig>,
    /// `[retention]`: how old dumps are pruned. `None`: nothing is ever pruned.
    pub retention: Option<RetentionConfig>,
    /// `[metrics] textfile`: where the Prometheus metrics of each run are written.
    pub metrics_textfile: Option<PathBuf>,
    /// `[storage]`: the bucket every finished dump is uploaded to. `None`: local files only.
    pub storage: Option<StorageConfig>,
    /// `[encryption]`: the age recipients every file a run writes is encrypted to. `None`:
    /// files are written in the clear.
    pub encryption: Option<crate::crypt::Recipients>,
}

/// `[connection]`: every value is optional; what is missing comes from the libpq environment.
#[derive(Debug, Clone, Default)]
pub struct ConnectionConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub sslmode: Option<SslMode>,
    /// PEM file of the CAs trusted for verify-ca / verify-full (default: PGSSLROOTCERT,
    /// ~/.postgresql/root.crt, else the bundled web PKI roots).
    pub sslrootcert: Option<PathBuf>,
    pub maintenance_database: String,
}

/// libpq's `sslmode` values that pg_groupdump understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    /// TLS, and the server's certificate must chain to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// `[backup]`.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub dir: PathBuf,
    pub jobs: usize,
    pub lock_wait_timeout: Duration,
    /// How archives are compressed (`compression`, or the older `compress = N`); pg_dump's
    /// default, gzip, when neither is given.
    pub compression: Compression,
    /// Archives carry their tables' and indexes' planner statistics (pg_dump 18's
    /// `--statistics`), so a restore needs no ANALYZE.
    pub statistics: bool,
    /// `None`: every database that allows connections.
    pub databases: Option<Vec<String>>,
    pub exclude_databases: Vec<String>,
    pub pg_dump: Option<PathBuf>,
    pub pg_dumpall: Option<PathBuf>,
    pub globals: bool,
    pub schema: bool,
    /// How many more times a group that met a lock (timeout or yield) is tried in a run.
    pub lock_retries: u32,
    /// The wait before the first retry; the n-th retry waits n times this.
    pub retry_delay: Duration,
    /// Cancel a dump when another session has waited this long for a lock it holds.
    /// `None`: never yield.
    pub yield_after: Option<Duration>,
    /// Mode of the files written (default 0600).
    pub file_mode: u32,
    /// Mode of the directories created (default 0700).
    pub dir_mode: u32,
    /// Count each table's rows in the group's snapshot after its dump (for `verify --restore`).
    pub count_rows: bool,
    /// pg_restore for `verify` and `restore`; default: beside pg_dump.
    pub pg_restore: Option<PathBuf>,
    /// How group dumps are written (default `native`; `pg_dump` for a pg_dump child per group).
    pub engine: Engine,
    /// A table at least this large (its heap) is copied by several sessions at once, each a
    /// range of its blocks, in the group's snapshot (native engine, `jobs` > 1). `None`: never.
    pub split_above: Option<u64>,
}

/// How a group's archive is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// One `pg_dump -Fc -t …` child per group (`engine = "pg_dump"`).
    PgDump,
    /// The default: pg_groupdump writes the archive itself, the group's entries of the run's
    /// schema archive plus the data, copied in the group's own snapshot (see `native`). A
    /// group it cannot write is dumped with pg_dump.
    #[default]
    Native,
}

impl Engine {
    fn parse(s: &str) -> Result<Engine, ValueError> {
        match s {
            "pg_dump" => Ok(Engine::PgDump),
            "native" => Ok(Engine::Native),
            _ => Err(ValueError::Engine(s.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::PgDump => "pg_dump",
            Engine::Native => "native",
        }
    }
}

/// The default `yield_after`: a DDL statement waits at most about this long behind a dump.
pub const DEFAULT_YIELD_AFTER: Duration = Duration::from_secs(5);
/// The default `retry_delay`.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(10);

/// The default `lock_wait_timeout`: long enough for a busy OLTP table, short enough that a
/// blocked group gives up well before anyone notices the backup.
pub const DEFAULT_LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[group]]`.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Position in the file (for `group[N]` in messages).
    pub index: usize,
    pub name: String,
    pub database: String,
    pub tables: Vec<TableRef>,
    pub schemas: Vec<String>,
    /// Overrides `backup.lock_wait_timeout` for this group.
    pub lock_wait_timeout: Option<Duration>,
    /// Overrides `backup.yield_after` for this group (`Some(None)`: never yield).
    pub yield_after: Option<Option<Duration>>,
    /// Overrides `[retention]` for this group's dumps.
    pub retention: GroupRetention,
    /// Overrides `backup.engine` for this group.
    pub engine: Option<Engine>,
    /// Overrides `backup.compression` for this group.
    pub compression: Option<Compression>,
}

impl GroupConfig {
    /// The key path of this group, e.g. `group[2]`.
    pub fn key(&self) -> String {
        format!("group[{}]", self.index)
    }
}

/// A table as written in the configuration: `schema.table` or a bare `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: Option<String>,
    pub table: String,
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{}", crate::text::display_name(s, &self.table)),
            None => write!(f, "{}", crate::text::display_part(&self.table)),
        }
    }
}

/// `[ungrouped]`.
#[derive(Debug, Clone)]
pub struct UngroupedConfig {
    pub mode: UngroupedMode,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UngroupedMode {
    /// Every table that no group names is dumped on its own.
    Table,
    /// Tables that no group names are not dumped.
    Skip,
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            "(file)",
            format!("cannot read the configuration: {e}"),
        )
    })?;
    parse(path, &text)
}

/// Parses and checks configuration text; `path` is used in messages and to resolve nothing else.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(file)".to_string()
        } else {
            key
        };
        ConfigError::new(path, key, e.into_inner().to_string().trim_end().to_string())
    })?;
    check(path, raw)
}

fn check(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
    let connection = check_connection(path, raw.connection)?;
    let backup = check_backup(path, raw.backup)?;
    let groups = check_groups(path, raw.groups)?;
    let ungrouped = check_ungrouped(path, raw.ungrouped)?;
    let email = match raw.email {
        Some(e) => Some(email::check(path, e)?),
        None => None,
    };
    let retention = match raw.retention {
        Some(r) => Some(retention::check(path, r)?),
        None => None,
    };
    retention::check_overrides(path, &groups, retention.as_ref())?;
    let metrics_textfile = check_metrics(path, raw.metrics)?;
    let storage = match raw.storage {
        Some(s) => Some(storage::check(path, s)?),
        None => None,
    };
    let encryption = match raw.encryption {
        Some(e) => Some(encryption::check(path, e)?),
        None => None,
    };
    Ok(Config {
        path: path.to_path_buf(),
        connection,
        backup,
        groups,
        ungrouped,
        email,
        retention,
        metrics_textfile,
        storage,
        encryption,
    })
}

/// `[connection]`: only what is given is checked; libpq's environment fills the rest later.
fn check_connection(path: &Path, c: RawConnection) -> Result<ConnectionConfig, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let sslmode = match c.sslmode {
        None => None,
        Some(s) => Some(SslMode::parse(&s).ok_or_else(|| {
            err(
                "connection.sslmode",
                format!("{s:?} is not one of \"disable\", \"allow\", \"prefer\", \"require\", \"verify-ca\", \"verify-full\""),
            )
        })?),
    };
    if let Some(h) = &c.host {
        if h.is_empty() {
            return Err(err("connection.host", "must not be empty".into()));
        }
    }
    if c.port == Some(0) {
        return Err(err("connection.port", "0 is not a valid port".into()));
    }
    Ok(ConnectionConfig {
        host: c.host,
        port: c.port,
        user: c.user,
        password_file: c.password_file,
        sslmode,
        sslrootcert: c.sslrootcert,
        maintenance_database: c
            .maintenance_database
            .unwrap_or_else(|| "postgres".to_string()),
    })
}

/// `[backup]`: required, with at least `dir`; every other key has a default.
fn check_backup(path: &Path, b: Option<RawBackup>) -> Result<BackupConfig, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let b = b.ok_or_else(|| {
        err(
            "backup",
            "the [backup] table is required (with at least `dir`)".into(),
        )
    })?;
    let dir = b
        .dir
        .ok_or_else(|| err("backup.dir", "is required: where the dumps go".into()))?;
    if dir.as_os_str().is_empty() {
        return Err(err("backup.dir", "must not be empty".into()));
    }
    let jobs = match b.jobs {
        None => 2,
        Some(n) if (1..=256).contains(&n) => n as usize,
        Some(n) => return Err(err("backup.jobs", format!("{n} is not between 1 and 256"))),
    };
    let lock_wait_timeout = match b.lock_wait_timeout {
        None => DEFAULT_LOCK_WAIT_TIMEOUT,
        Some(s) => parse_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
            err(
                "backup.lock_wait_timeout",
                format!("{s:?} is not a positive duration such as \"6s\" or \"500ms\""),
            )
        })?,
    };
    let (lock_retries, retry_delay, yield_after) =
        check_lock_handling(path, b.lock_retries, b.retry_delay, b.yield_after)?;
    let file_mode = parse_mode(b.file_mode.as_deref(), 0o600, 0o600)
        .map_err(|e| ConfigError::at(path, "backup.file_mode", e))?;
    let dir_mode = parse_mode(b.dir_mode.as_deref(), 0o700, 0o700)
        .map_err(|e| ConfigError::at(path, "backup.dir_mode", e))?;
    let compression = match (b.compress, b.compression) {
        (Some(_), Some(_)) => {
            return Err(err(
                "backup.compress",
                "give either compress (a zlib level) or compression, not both".into(),
            ))
        }
        (Some(n), None) if (0..=9).contains(&n) => {
            Compression::parse(&n.to_string()).expect("0-9 parse")
        }
        (Some(n), None) => {
            return Err(err(
                "backup.compress",
                format!("{n} is not between 0 and 9"),
            ))
        }
        (None, Some(text)) => {
            Compression::parse(&text).map_err(|e| ConfigError::at(path, "backup.compression", e))?
        }
        (None, None) => Compression::default(),
    };
    if let Some(dbs) = &b.databases {
        for (i, d) in dbs.iter().enumerate() {
            if d.is_empty() {
                return Err(err(
                    &format!("backup.databases[{i}]"),
                    "empty database name".into(),
                ));
            }
        }
    }
    let engine = match b.engine {
        None => Engine::default(),
        Some(s) => Engine::parse(&s).map_err(|e| ConfigError::at(path, "backup.engine", e))?,
    };
    let split_above = match b.split_above.as_deref().map(str::trim) {
        None => Some(DEFAULT_SPLIT_ABOVE),
        Some("off") => None,
        Some(s) => Some(parse_size(s).filter(|n| *n > 0).ok_or_else(|| {
            err(
                "backup.split_above",
                format!("{s:?} is not a size such as \"64MB\" or \"2GB\", or \"off\""),
            )
        })?),
    };
    Ok(BackupConfig {
        dir,
        jobs,
        lock_wait_timeout,
        compression,
        statistics: b.statistics.unwrap_or(false),
        databases: b.databases,
        exclude_databases: b.exclude_databases,
        pg_dump: b.pg_dump,
        pg_dumpall: b.pg_dumpall,
        globals: b.globals.unwrap_or(true),
        schema: b.schema.unwrap_or(true),
        lock_retries,
        retry_delay,
        yield_after,
        file_mode,
        dir_mode,
        count_rows: b.count_rows.unwrap_or(true),
        pg_restore: b.pg_restore,
        engine,
        split_above,
    })
}

/// `backup.lock_retries`, `retry_delay` and `yield_after`: how a run deals with lock conflicts.
fn check_lock_handling(
    path: &Path,
    lock_retries: Option<i64>,
    retry_delay: Option<String>,
    yield_after: Option<String>,
) -> Result<(u32, Duration, Option<Duration>), ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let lock_retries = match lock_retries {
        None => 3,
        Some(n) if (0..=100).contains(&n) => n as u32,
        Some(n) => {
            return Err(err(
                "backup.lock_retries",
                format!("{n} is not between 0 and 100"),
            ))
        }
    };
    let retry_delay = match retry_delay {
        None => DEFAULT_RETRY_DELAY,
        Some(s) => parse_duration(&s).ok_or_else(|| {
            err(
                "backup.retry_delay",
                format!("{s:?} is not a duration such as \"10s\""),
            )
        })?,
    };
    let yield_after = match yield_after {
        None => Some(DEFAULT_YIELD_AFTER),
        Some(s) => {
            parse_yield_after(&s).map_err(|e| ConfigError::at(path, "backup.yield_after", e))?
        }
    };
    Ok((lock_retries, retry_delay, yield_after))
}

/// Every `[[group]]`; a (database, name) pair may appear only once.
fn check_groups(path: &Path, raw: Vec<RawGroup>) -> Result<Vec<GroupConfig>, ConfigError> {
    let mut groups = Vec::with_capacity(raw.len());
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (i, g) in raw.into_iter().enumerate() {
        groups.push(check_group(path, i, g, &mut seen)?);
    }
    Ok(groups)
}

/// One `[[group]]`, the `i`-th in the file; `seen` holds the (database, name) pairs before it.
fn check_group(
    path: &Path,
    i: usize,
    g: RawGroup,
    seen: &mut HashSet<(String, String)>,
) -> Result<GroupConfig, ConfigError> {
    let key = format!("group[{i}]");
    let err = |sub: &str, msg: String| ConfigError::new(path, format!("{key}{sub}"), msg);
    let name = g.name.ok_or_else(|| err(".name", "is required".into()))?;
    check_group_name(&name).map_err(|e| ConfigError::at(path, format!("{key}.name"), e))?;
    let database = g
        .database
        .ok_or_else(|| err(".database", format!("is required (group {name:?})")))?;
    if database.is_empty() {
        return Err(err(".database", "empty database name".into()));
    }
    if !seen.insert((database.clone(), name.clone())) {
        return Err(err(
            ".name",
            format!("duplicate group name {name:?} in database {database:?}"),
        ));
    }
    if g.tables.is_empty() && g.schemas.is_empty() {
        return Err(err(
            "",
            format!("group {name:?} names no `tables` and no `schemas`"),
        ));
    }
    let mut tables = Vec::with_capacity(g.tables.len());
    for (j, t) in g.tables.iter().enumerate() {
        let r =
            parse_table_ref(t).map_err(|e| err(&format!(".tables[{j}]"), format!("{t:?}: {e}")))?;
        tables.push(r);
    }
    for (j, s) in g.schemas.iter().enumerate() {
        if s.is_empty() {
            return Err(err(&format!(".schemas[{j}]"), "empty schema name".into()));
        }
    }
    let lock_wait_timeout = match g.lock_wait_timeout {
        None => None,
        Some(s) => Some(parse_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
            err(
                ".lock_wait_timeout",
                format!("{s:?} is not a positive duration such as \"6s\""),
            )
        })?),
    };
    let yield_after = match g.yield_after {
        None => None,
        Some(s) => Some(
            parse_yield_after(&s)
                .map_err(|e| ConfigError::at(path, format!("{key}.yield_after"), e))?,
        ),
    };
    let retention = retention::check_group(path, &key, g.max_age.as_deref(), g.keep_min)?;
    let engine = match g.engine {
        None => None,
        Some(s) => {
            Some(Engine::parse(&s).map_err(|e| ConfigError::at(path, format!("{key}.engine"), e))?)
        }
    };
    let compression = g
        .compression
        .map(|c| Compression::parse(&c))
        .transpose()
        .map_err(|e| ConfigError::at(path, format!("{key}.compression"), e))?;
    Ok(GroupConfig {
        index: i,
        name,
        database,
        tables,
        schemas: g.schemas,
        lock_wait_timeout,
        yield_after,
        retention,
        engine,
        compression,
    })
}

/// `[ungrouped]`: the mode, and exclusion patterns that must be valid globs.
fn check_ungrouped(path: &Path, raw: RawUngrouped) -> Result<UngroupedConfig, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    let mode = match raw.mode.as_deref() {
        None | Some("table") => UngroupedMode::Table,
        Some("skip") => UngroupedMode::Skip,
        Some(m) => {
            return Err(err(
                "ungrouped.mode",
                format!("{m:?} is not \"table\" or \"skip\""),
            ))
        }
    };
    for (i, p) in raw.exclude.iter().enumerate() {
        globset::Glob::new(p)
            .map_err(|e| err(&format!("ungrouped.exclude[{i}]"), format!("{p:?}: {e}")))?;
    }
    Ok(UngroupedConfig {
        mode,
        exclude: raw.exclude,
    })
}

/// `[metrics]`: a `textfile` that node_exporter's textfile collector will read.
fn check_metrics(path: &Path, raw: Option<RawMetrics>) -> Result<Option<PathBuf>, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(path, key, msg);
    match raw {
        None => Ok(None),
        Some(RawMetrics { textfile: None }) => {
            Err(err("metrics.textfile", "is required in [metrics]".into()))
        }
        Some(RawMetrics { textfile: Some(p) }) => {
            if p.extension().and_then(|e| e.to_str()) != Some("prom") {
                return Err(err(
                    "metrics.textfile",
                    format!(
                        "{}: node_exporter reads only files ending in .prom",
                        p.display()
                    ),
                ));
            }
            Ok(Some(p))
        }
    }
}

/// The default `backup.split_above`: a table that takes about half a second or more to copy
/// and compress on one core. Copied by every session, its lock window is a fraction of one
/// session's (on S8 the longest single-table lock is 0.35× the per-table loop's, against
/// 0.65× at 64 MB; BENCHMARKS.md).
pub const DEFAULT_SPLIT_ABOVE: u64 = 32 << 20;

/// A size as PostgreSQL writes them: a number of bytes, or with a unit `B`, `kB`, `MB`, `GB`
/// or `TB` (powers of 1024; case and a space before the unit do not matter).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let shift = match s[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kb" => 10,
        "mb" => 20,
        "gb" => 30,
        "tb" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// Parses a humantime duration ("6s", "1m 30s", "500ms").
pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// Why a single value is refused; the text follows `file: key: ` in the [`ConfigError`].
#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("{0:?} is not \"pg_dump\" or \"native\"")]
    Engine(String),
    #[error("{text:?}: the owner must keep access ({required:04o})")]
    ModeLocksOutOwner { text: String, required: u32 },
    #[error("{0:?} is not an octal mode such as \"0640\"")]
    Mode(String),
    #[error("{0:?} is not a positive duration such as \"5s\", or \"never\"")]
    YieldAfter(String),
    #[error("empty group name")]
    EmptyGroupName,
    #[error("{0:?}: names starting with '_' are reserved (_schema, _globals)")]
    ReservedGroupName(String),
    #[error("{0:?}: control characters are not allowed in a group name")]
    ControlInGroupName(String),
    #[error("{0:?}: longer than 200 bytes")]
    LongGroupName(String),
}

/// An octal mode such as "0640"; `required` bits must be set (the owner must keep access).
fn parse_mode(s: Option<&str>, default: u32, required: u32) -> Result<u32, ValueError> {
    let Some(s) = s else { return Ok(default) };
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && m & required == required => Ok(m),
        Ok(m) if m <= 0o777 => Err(ValueError::ModeLocksOutOwner {
            text: s.to_string(),
            required,
        }),
        _ => Err(ValueError::Mode(s.to_string())),
    }
}

/// `yield_after`: a positive duration, or "never" / "off".
fn parse_yield_after(s: &str) -> Result<Option<Duration>, ValueError> {
    match s.trim() {
        "never" | "off" => Ok(None),
        t => parse_duration(t)
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(|| ValueError::YieldAfter(s.to_string())),
    }
}

/// A group name becomes a directory and a file name (see `store`): it must not be empty, take
/// a reserved name, or hold control characters, and it must leave room in a file name.
fn check_group_name(name: &str) -> Result<(), ValueError> {
    if name.is_empty() {
        return Err(ValueError::EmptyGroupName);
    }
    if name.starts_with('_') {
        return Err(ValueError::ReservedGroupName(name.to_string()));
    }
    if name.chars().any(char::is_control) {
        return Err(ValueError::ControlInGroupName(name.to_string()));
    }
    if name.len() > 200 {
        return Err(ValueError::LongGroupName(name.to_string()));
    }
    Ok(())
}

/// Why a table name as written in the configuration cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableRefError {
    #[error("unterminated double quote")]
    UnterminatedQuote,
    #[error("a quoted name must be followed by '.' or end")]
    AfterQuote,
    #[error("a double quote inside an unquoted name (quote the whole part: \"a\"\"b\")")]
    QuoteInUnquoted,
    #[error("empty name part")]
    EmptyPart,
    #[error("more than two dot-separated parts: write it as schema.table, double-quoting a part that contains '.'")]
    TooManyParts,
}

/// Parses `schema.table` where either part may be written in SQL double quotes (`"a.b"."X""y"`),
/// or a bare `table`. Unquoted parts are taken exactly as written (no case folding).
pub fn parse_table_ref(s: &str) -> Result<TableRef, TableRefError> {
    let mut parts: Vec<String> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(TableRefError::UnterminatedQuote),
                    Some('"') => {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            part.push('"');
                        } else {
                            break;
                        }
                    }
                    Some(c) => part.push(c),
                }
            }
            match chars.peek() {
                None | Some('.') => {}
                Some(_) => return Err(TableRefError::AfterQuote),
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(TableRefError::QuoteInUnquoted);
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(TableRefError::EmptyPart);
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => unreachable!(),
        }
    }
    match parts.len() {
        1 => Ok(TableRef {
            schema: None,
            table: parts.pop().unwrap(),
        }),
        2 => {
            let table = parts.pop().unwrap();
            Ok(TableRef {
                schema: parts.pop(),
                table,
            })
        }
        _ => Err(TableRefError::TooManyParts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("groups.toml"), text)
    }

    #[test]
    fn split_above_takes_sizes_and_off() {
        let with = |v: &str| cfg(&format!("[backup]\ndir = \"/b\"\nsplit_above = {v}\n"));
        assert_eq!(
            cfg("[backup]\ndir = \"/b\"\n").unwrap().backup.split_above,
            Some(DEFAULT_SPLIT_ABOVE)
        );
        assert_eq!(with("\"2GB\"").unwrap().backup.split_above, Some(2 << 30));
        assert_eq!(
            with("\"512 kB\"").unwrap().backup.split_above,
            Some(512 << 10)
        );
        assert_eq!(with("\"off\"").unwrap().backup.split_above, None);
        for bad in ["\"0\"", "\"12 parsecs\"", "\"-1MB\""] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("backup.split_above"), "{bad}: {e}");
        }
    }

    #[test]
    fn table_refs_round_trip() {
        for (schema, table) in [
            ("public", "t1"),
            ("a.b", "c"),
            ("a", "b.c"),
            ("we\"ird", "x\"\"y"),
            ("Mixed Case", "Ünïcödé *?$/..%"),
            ("s", "line\nbreak"),
        ] {
            let shown = crate::text::display_name(schema, table);
            let back = parse_table_ref(&shown).unwrap();
            assert_eq!(back.schema.as_deref(), Some(schema), "{shown}");
            assert_eq!(back.table, table, "{shown}");
        }
        assert_eq!(parse_table_ref("orders").unwrap().schema, None);
        assert!(parse_table_ref("a.b.c").is_err());
        assert!(parse_table_ref("a.").is_err());
        assert!(parse_table_ref("\"a").is_err());
        assert!(parse_table_ref("a\"b.c").is_err());
        // Ambiguous without quotes, distinct with them.
        assert_ne!(
            crate::text::display_name("a.b", "c"),
            crate::text::display_name("a", "b.c")
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = cfg("[backup]\ndir = \"/b\"\n").unwrap();
        assert_eq!(c.backup.jobs, 2);
        assert_eq!(c.backup.lock_wait_timeout, DEFAULT_LOCK_WAIT_TIMEOUT);
        assert_eq!(c.ungrouped.mode, UngroupedMode::Table);
        assert_eq!(c.connection.maintenance_database, "postgres");
        assert!(c.backup.globals && c.backup.schema);
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let e = cfg("[backup]\ndir = \"/b\"\njobz = 3\n").unwrap_err();
        assert!(e.key.contains("backup"), "{e}");
        assert!(e.to_string().contains("jobz"), "{e}");
        let e = cfg("[backup]\ndir = \"/b\"\njobs = 0\n").unwrap_err();
        assert_eq!(e.key, "backup.jobs");
        let e = cfg("[backup]\ndir = \"/b\"\ncompress = 12\n").unwrap_err();
        assert!(e.to_string().contains("12"), "{e}");
        let e = cfg("[backup]\ndir = \"/b\"\nlock_wait_timeout = \"six\"\n").unwrap_err();
        assert!(e.to_string().contains("six"), "{e}");
        let e = cfg("[backup]\ndir = \"/b\"\n[[group]]\nname = \"g\"\ndatabase = \"d\"\ntables = [\"t\"]\n[[group]]\nname = \"g\"\ndatabase = \"d\"\ntables = [\"u\"]\n").unwrap_err();
        assert_eq!(e.key, "group[1].name");
        let e = cfg("[backup]\ndir = \"/b\"\n[[group]]\nname = \"g\"\ndatabase = \"d\"\ntables = [\"t\"]\nschemaz = []\n").unwrap_err();
        assert!(e.to_string().contains("schemaz"), "{e}");
        assert!(e.key.starts_with("group"), "{e}");
        assert!(cfg("[connection]\nport = 1\n").is_err());
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../groups.toml.example");
        let c = cfg(text).unwrap();
        assert!(!c.groups.is_empty());
    }
}
