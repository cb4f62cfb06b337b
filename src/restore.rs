//! Getting data back: `pg_groupdump restore` (one group, or a whole database from one run),
//! and the pieces `verify` shares with it — finding dumps and reports on disk, running
//! `pg_restore`, reading an archive's table of contents.
//!
//! A whole database is rebuilt from one run in the order that makes per-group dumps a full
//! backup: the schema archive's pre-data (types, functions, tables), every group's data, the
//! schema archive's data (sequence values), then its post-data (indexes, constraints, foreign
//! keys, triggers, materialized views) — constraints come last, so the groups' data can be
//! loaded in any order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use chrono::{DateTime, Utc};
use tokio::process::Command;

use crate::config::Config;
use crate::connect::{application_name, ConnParams};
use crate::crypt::{CryptError, Identities, PlainFile};
use crate::exit::Outcome;
use crate::failure::Failure;
use crate::report::{GroupKind, Kind, RunReport, Status};
use crate::store;
use crate::text::quote_ident;

/// The pg_restore to use: configured, else beside pg_dump, else on PATH.
pub fn pg_restore_path(config: &Config) -> Result<PathBuf, Failure> {
    if let Some(p) = &config.backup.pg_restore {
        return Ok(p.clone());
    }
    let (pg_dump, _) = crate::tools::locate(config.backup.pg_dump.as_deref(), None)
        .map_err(|e| Failure::Start(e.into()))?;
    let beside = pg_dump.with_file_name("pg_restore");
    if beside.exists() {
        return Ok(beside);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("pg_restore"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::Start(anyhow::anyhow!(
                "pg_restore not found beside {} or on PATH; set backup.pg_restore",
                pg_dump.display()
            ))
        })
}

/// Reads the report of `run_id`, or the one at `file`, or the newest in `<dir>/reports`.
pub fn load_report(
    config: &Config,
    ids: &Identities,
    run_id: Option<&str>,
    file: Option<&Path>,
) -> Result<(RunReport, PathBuf), Failure> {
    let path = match (file, run_id) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(id)) => {
            let plain = store::report_path(&config.backup.dir, id);
            crate::crypt::existing(&plain).unwrap_or(plain)
        }
        (None, None) => newest_report(&config.backup.dir).ok_or_else(|| {
            Failure::Usage(format!(
                "no run report in {}",
                config.backup.dir.join(store::REPORTS_DIR).display()
            ))
        })?,
    };
    let text = ids.read(&path).map_err(|e| match e {
        CryptError::Io { source, .. } => Failure::Usage(format!(
            "cannot read the run report {}: {source}",
            path.display()
        )),
        e => Failure::Usage(e.to_string()),
    })?;
    let report = serde_json::from_slice(&text)
        .map_err(|e| Failure::Usage(format!("{} is not a run report: {e}", path.display())))?;
    Ok((report, path))
}

fn newest_report(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join(store::REPORTS_DIR))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = crate::crypt::plain_name(&name).0.strip_suffix(".json")?;
            store::is_run_id(id).then(|| (id.to_string(), e.path()))
        })
        .max()
        .map(|(_, p)| p)
}

/// One entry of `pg_restore --list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// "TABLE", "TABLE DATA", "SEQUENCE SET", …
    pub desc: String,
    /// The object's oid in the source database (for TABLE DATA: its table's).
    pub oid: u32,
    /// What follows the description: "schema name owner" (names unquoted; newlines printed
    /// as spaces by pg_restore).
    pub rest: String,
}

/// The kinds of entry pg_restore lists, longest first so "TABLE DATA" is not read as "TABLE".
const DESCS: &[&str] = &[
    "MATERIALIZED VIEW DATA",
    "MATERIALIZED VIEW",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "SEQUENCE",
    "TABLE ATTACH",
    "TABLE DATA",
    "TABLE",
    "FK CONSTRAINT",
    "CHECK CONSTRAINT",
    "CONSTRAINT",
    "INDEX ATTACH",
    "INDEX",
    "DEFAULT ACL",
    "DEFAULT",
    "ROW SECURITY",
    "POLICY",
    "TRIGGER",
    "RULE",
    "COMMENT",
    "ACL",
];

/// Why pg_restore could not do what was asked of it. The texts are the lines `verify` and
/// `restore` print.
#[derive(Debug, thiserror::Error)]
pub enum PgRestoreError {
    /// pg_restore could not be started.
    #[error("cannot run {}: {error}", program.display())]
    Spawn {
        program: PathBuf,
        error: std::io::Error,
    },
    /// pg_restore could not read an archive's table of contents.
    #[error("pg_restore cannot read {}: {stderr}", archive.display())]
    Unreadable { archive: PathBuf, stderr: String },
    /// The list of entries to restore could not be written for `--use-list`.
    #[error("cannot write {}: {error}", path.display())]
    ListFile {
        path: PathBuf,
        error: std::io::Error,
    },
    /// An encrypted archive could not be decrypted (all of it) for pg_restore.
    #[error(transparent)]
    Decrypt(#[from] CryptError),
}

/// An archive as pg_restore reads it: a file it opens by name, or an encrypted file decrypted
/// into its standard input as it reads, so that no plaintext reaches a disk. pg_restore reads
/// its input in order, and these archives hold their data in TOC order; only `pg_restore -j`
/// must seek, and gets a decrypted copy ([`Archive::seekable`]).
pub enum Archive {
    /// Plain, or a decrypted copy.
    File(PlainFile),
    /// Encrypted, decrypted on the way in.
    Piped { file: PathBuf, ids: Identities },
}

impl Archive {
    /// `file` to be read in order: an encrypted one is piped (the identities are checked
    /// against its recipients now).
    pub fn in_order(ids: &Identities, file: &Path) -> Result<Archive, CryptError> {
        if !crate::crypt::is_sealed(file) {
            return ids.plain_file(file).map(Archive::File);
        }
        ids.reader(file)?;
        Ok(Archive::Piped {
            file: file.to_path_buf(),
            ids: ids.clone(),
        })
    }

    /// `file` for a pg_restore that seeks (`--jobs`): an encrypted one is decrypted into a
    /// copy beside it first.
    pub fn seekable(ids: &Identities, file: &Path) -> Result<Archive, CryptError> {
        ids.plain_file(file).map(Archive::File)
    }

    /// The archive's file, for messages and for files to put beside it.
    pub fn file(&self) -> &Path {
        match self {
            Archive::File(p) => p.path(),
            Archive::Piped { file, .. } => file,
        }
    }

    /// Runs `cmd` (pg_restore, its options given) on the archive: as its last argument, or
    /// decrypted into its standard input by a thread. pg_restore may stop reading early
    /// (`--list` reads only the TOC): that is no error; a file that does not decrypt is.
    async fn output(
        &self,
        mut cmd: Command,
        program: &Path,
    ) -> Result<std::process::Output, PgRestoreError> {
        let (file, ids) = match self {
            Archive::File(p) => {
                cmd.arg(p.path()).stdin(Stdio::null());
                return cmd.output().await.map_err(PgRestoreError::spawn(program));
            }
            Archive::Piped { file, ids } => (file.clone(), ids.clone()),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(PgRestoreError::spawn(program))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let feeder = tokio::task::spawn_blocking(move || -> Result<(), CryptError> {
            let failed = |source: std::io::Error| CryptError::Damaged {
                file: file.clone(),
                message: source.to_string(),
            };
            let mut into = stdin
                .into_owned_fd()
                .and_then(crate::tools::blocking_pipe)
                .map_err(failed)?;
            let mut from = ids.reader(&file)?;
            match std::io::copy(&mut from, &mut into) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(failed(e)),
                _ => Ok(()),
            }
        });
        let out = child
            .wait_with_output()
            .await
            .map_err(PgRestoreError::spawn(program))?;
        match feeder.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(PgRestoreError::Spawn {
                program: program.to_path_buf(),
                error: std::io::Error::other(e.to_string()),
            }),
        }
    }
}

impl PgRestoreError {
    fn spawn(program: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |error| PgRestoreError::Spawn {
            program: program.to_path_buf(),
            error,
        }
    }
}

/// Runs `pg_restore --list` on an archive.
pub async fn list_archive(
    pg_restore: &Path,
    archive: &Archive,
) -> Result<Vec<TocEntry>, PgRestoreError> {
    Ok(parse_list(&list_text(pg_restore, archive).await?))
}

/// The text of `pg_restore --list`.
async fn list_text(pg_restore: &Path, archive: &Archive) -> Result<String, PgRestoreError> {
    let mut cmd = Command::new(pg_restore);
    cmd.arg("--list").kill_on_drop(true);
    let out = archive.output(cmd, pg_restore).await?;
    if !out.status.success() {
        return Err(PgRestoreError::Unreadable {
            archive: archive.file().to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `pg_restore --list` output ("215; 1259 16385 TABLE public orders postgres").
pub fn parse_list(text: &str) -> Vec<TocEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        // "<dump id>; <tableoid> <oid> <desc> <rest>"
        let Some((_, after)) = line.split_once("; ") else {
            continue;
        };
        let mut it = after.splitn(3, ' ');
        let (Some(_), Some(oid), Some(tail)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let oid = oid.parse().unwrap_or(0);
        if let Some(desc) = DESCS.iter().find(|d| tail.starts_with(&format!("{d} "))) {
            out.push(TocEntry {
                desc: desc.to_string(),
                oid,
                rest: tail[desc.len() + 1..].to_string(),
            });
        } else if let Some((desc, rest)) = tail.split_once(' ') {
            out.push(TocEntry {
                desc: desc.to_string(),
                oid,
                rest: rest.to_string(),
            });
        }
    }
    out
}

/// How pg_restore prints a name in `--list`: newlines and carriage returns as spaces.
pub fn listed_name(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Checks that the archive's TABLE entries are exactly the group's tables, and that it has
/// data only for those. Tables are matched by oid when the report recorded them (exact, whatever
/// the names), else by name — "schema name owner" as pg_restore prints it, the owner being the
/// single word left over. Returns a description of every difference.
pub fn compare_tables(
    entries: &[TocEntry],
    tables: &[(String, String)],
    oids: Option<&[u32]>,
) -> Vec<String> {
    let shown = |i: usize| crate::text::display_name(&tables[i].0, &tables[i].1);
    let expected: Vec<String> = tables
        .iter()
        .map(|(s, t)| format!("{} {} ", listed_name(s), listed_name(t)))
        .collect();
    let find = |e: &TocEntry| -> Option<usize> {
        match oids {
            Some(oids) if oids.len() == tables.len() => oids.iter().position(|o| *o == e.oid),
            _ => expected.iter().position(|x| {
                e.rest
                    .strip_prefix(x.as_str())
                    .is_some_and(|owner| !owner.is_empty() && !owner.contains(' '))
            }),
        }
    };
    let mut problems = Vec::new();
    let mut found: BTreeSet<usize> = BTreeSet::new();
    for e in entries
        .iter()
        .filter(|e| e.desc == "TABLE" || e.desc == "TABLE DATA")
    {
        match find(e) {
            Some(i) => {
                if e.desc == "TABLE" {
                    found.insert(i);
                }
            }
            None => problems.push(format!("unexpected {} entry: {}", e.desc, e.rest)),
        }
    }
    for i in 0..tables.len() {
        if !found.contains(&i) {
            problems.push(format!("table {} is missing", shown(i)));
        }
    }
    problems
}

/// Runs pg_restore with `args` on `archive` into `database`; returns its stderr, and
/// whether it succeeded.
pub async fn run_pg_restore(
    pg_restore: &Path,
    conn: &ConnParams,
    database: &str,
    args: &[std::ffi::OsString],
    archive: &Archive,
) -> Result<(bool, String), PgRestoreError> {
    let mut cmd = Command::new(pg_restore);
    cmd.arg("--no-password")
        .arg(format!(
            "--dbname={}",
            conn.conninfo(database, &application_name("restore"))
        ))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in conn.child_env() {
        cmd.env(k, v);
    }
    let out = archive.output(cmd, pg_restore).await?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() && only_transaction_timeout_errors(&stderr) {
        return Ok((
            true,
            "note: this pg_restore sets transaction_timeout, which the target server (older \
             than PostgreSQL 17) does not have; nothing else failed"
                .to_string(),
        ));
    }
    Ok((out.status.success(), stderr))
}

/// Whether every error pg_restore reported is its `SET transaction_timeout = 0`, which
/// pg_restore 17 and later send to every server and servers before 17 refuse. pg_restore
/// goes on past it (we never give it --exit-on-error or --single-transaction), and the
/// setting only lifts a timeout those servers do not have: the restore is complete.
fn only_transaction_timeout_errors(stderr: &str) -> bool {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pg_restore: error:"))
        .collect();
    let ignored = stderr.lines().find_map(|l| {
        l.strip_prefix("pg_restore: warning: errors ignored on restore: ")
            .and_then(|n| n.trim().parse::<usize>().ok())
    });
    !errors.is_empty()
        && ignored == Some(errors.len())
        && errors
            .iter()
            .all(|e| e.contains("unrecognized configuration parameter \"transaction_timeout\""))
}

/// Creates `database` if it does not exist; true if it was created.
pub async fn ensure_database(
    conn: &ConnParams,
    maintenance: &str,
    database: &str,
) -> Result<bool, Failure> {
    let c = conn
        .connect(maintenance, &application_name("restore"))
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    let exists = c
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .map_err(|e| Failure::Start(anyhow::anyhow!(crate::text::pg_error_text(&e))))?
        .is_some();
    if exists {
        return Ok(false);
    }
    c.batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
        .await
        .map_err(|e| {
            Failure::Start(anyhow::anyhow!(
                "cannot create database {database:?}: {}",
                crate::text::pg_error_text(&e)
            ))
        })?;
    Ok(true)
}

/// Entry kinds of a schema archive that a group's tables may need and that `pg_dump -t`
/// leaves out: schemas, extensions, types, functions and the like (no tables, views or
/// sequences, which the group's own archive brings or which belong to other groups).
const PREREQUISITES: &[&str] = &[
    "SCHEMA ",
    "EXTENSION ",
    "TYPE ",
    "SHELL TYPE ",
    "DOMAIN ",
    "FUNCTION ",
    "PROCEDURE ",
    "AGGREGATE ",
    "COLLATION ",
    "CONVERSION ",
    "TEXT SEARCH ",
    "OPERATOR ",
    "CAST ",
    "PROCEDURAL LANGUAGE ",
    "ACCESS METHOD ",
    "FOREIGN DATA WRAPPER ",
    "SERVER ",
];

/// Restores into `database` what a group's archive needs but does not carry (schemas, types,
/// functions, extensions), taken from a schema archive. Errors (an object that already
/// exists) are reported by the caller's later checks, not here.
pub async fn restore_prerequisites(
    pg_restore: &Path,
    conn: &ConnParams,
    database: &str,
    schema_archive: &Archive,
) -> Result<(), PgRestoreError> {
    let text = list_text(pg_restore, schema_archive).await?;
    let list: String = text
        .lines()
        .filter(|line| {
            line.split_once("; ")
                .and_then(|(_, after)| after.splitn(3, ' ').nth(2))
                .is_some_and(|tail| PREREQUISITES.iter().any(|p| tail.starts_with(p)))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    // Beside the archive, not in a shared temporary directory: the list names its objects.
    let list_file = crate::crypt::scratch_path(schema_archive.file(), "toc");
    write_private(&list_file, list.as_bytes()).map_err(|error| PgRestoreError::ListFile {
        path: list_file.clone(),
        error,
    })?;
    let args: Vec<std::ffi::OsString> = vec![
        "--no-owner".into(),
        "--use-list".into(),
        list_file.clone().into(),
    ];
    let result = run_pg_restore(pg_restore, conn, database, &args, schema_archive).await;
    let _ = std::fs::remove_file(&list_file);
    result.map(|_| ())
}

/// Writes a new file only its owner may read.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(data)
}

/// The schema archive to take a group's prerequisites from: the same run's, else the newest.
pub fn schema_archive_for(root: &Path, database: &str, run_id: &str) -> Option<PathBuf> {
    let same = store::dump_path(root, database, store::SCHEMA_GROUP, run_id);
    if let Some(same) = crate::crypt::existing(&same) {
        return Some(same);
    }
    group_dumps(root, database, store::SCHEMA_GROUP)
        .pop()
        .map(|(_, p)| p)
}

/// Whether `database` holds no relation outside the system schemas.
async fn database_is_empty(conn: &ConnParams, database: &str) -> Result<bool, Failure> {
    let c = conn
        .connect(database, &application_name("restore"))
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    let row = c
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
                  AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f'))",
            &[],
        )
        .await
        .map_err(|e| Failure::Start(anyhow::anyhow!(crate::text::pg_error_text(&e))))?;
    Ok(row.get(0))
}

/// The dumps of one group on disk: (run id, path), oldest first. A file counts only if it
/// is exactly where [`store::dump_path`] puts that group's dump of its run.
fn group_dumps(root: &Path, database: &str, group: &str) -> Vec<(String, PathBuf)> {
    let dir = store::dump_dir(root, database, group);
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let stored = store::parse_path(path.strip_prefix(root).ok()?)?;
            let id = stored.run_id.as_str();
            let mut expected = store::dump_path(root, database, group, id);
            if stored.encrypted {
                expected = crate::crypt::sealed_path(&expected);
            }
            (!stored.partial && expected == path).then(|| (id.to_string(), path))
        })
        .collect();
    out.sort();
    out
}

/// The databases that have a dump directory for `group`.
fn databases_with_group(root: &Path, group: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let Some(db) = store::decode_component(&e.file_name().to_string_lossy()) else {
            continue;
        };
        if e.path().is_dir() && !group_dumps(root, &db, group).is_empty() {
            out.push(db);
        }
    }
    out
}

/// What `pg_groupdump restore` was asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreOptions {
    /// The group to restore; without it, --run and --database rebuild a whole database.
    #[arg(short, long, value_name = "NAME")]
    pub group: Option<String>,
    /// The database the group (or the run's dumps) belong to.
    #[arg(short, long, value_name = "DB")]
    pub database: Option<String>,
    /// The run to restore from (default for --group: its newest dump).
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// Each group's newest dump taken at or before TIME: RFC 3339 (2026-03-01T03:00:00Z) or
    /// "YYYY-MM-DD HH:MM[:SS]" in the local time zone. With --database and no --group, the
    /// whole database.
    #[arg(long, value_name = "TIME", conflicts_with = "run")]
    pub at: Option<String>,
    /// Database to restore into (created if missing).
    #[arg(long, value_name = "DB")]
    pub target: String,
    /// pg_restore --jobs.
    #[arg(short, long)]
    pub jobs: Option<u16>,
    /// Drop the group's objects in the target first (pg_restore --clean --if-exists).
    #[arg(long)]
    pub clean: bool,
    /// An age identity (secret key) file that decrypts encrypted dumps, as `age-keygen`
    /// writes it; may be given several times.
    #[arg(long = "identity", value_name = "FILE")]
    pub identities: Vec<PathBuf>,
}

/// `pg_groupdump restore`: one group (`--group`), or a whole database from one run (`--run`
/// with `--database`).
pub async fn restore(config: &Config, opts: &RestoreOptions) -> Result<Outcome, Failure> {
    let at = opts
        .at
        .as_deref()
        .map(crate::list::parse_time)
        .transpose()
        .map_err(|e| Failure::Usage(format!("--at: {e}")))?;
    // With [storage], the dumps are read from the bucket.
    let want = store::bucket::Want {
        run: opts.run.as_deref(),
        database: opts.database.as_deref(),
        group: opts.group.as_deref(),
    };
    let mirror = store::bucket::Mirror::fetch(config, want, false)
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    let config = mirror.as_ref().map_or(config, |m| &m.config);
    let restorer = Restorer::new(config, opts)?;
    if let Some(group) = &opts.group {
        return restore_group(config, opts, &restorer, group, at).await;
    }
    if let (Some(at), Some(database)) = (at, &opts.database) {
        return restore_database_at(config, &restorer, at, database).await;
    }
    let (Some(run_id), Some(database)) = (&opts.run, &opts.database) else {
        return Err(Failure::Usage(
            "restore needs --group NAME, or --run ID (or --at TIME) with --database DB for a whole database"
                .into(),
        ));
    };
    restore_database(config, &restorer, run_id, database).await
}

/// What both kinds of restore share: the pg_restore to run, how to connect, and the target.
struct Restorer<'a> {
    pg_restore: PathBuf,
    conn: ConnParams,
    maintenance: &'a str,
    target: &'a str,
    /// Arguments every pg_restore of this restore gets (`--jobs`).
    common: Vec<std::ffi::OsString>,
    /// `--identity`: what decrypts encrypted dumps.
    ids: Identities,
    /// `--jobs`: pg_restore seeks in the archives.
    parallel: bool,
}

impl<'a> Restorer<'a> {
    fn new(config: &'a Config, opts: &'a RestoreOptions) -> Result<Self, Failure> {
        let pg_restore = pg_restore_path(config)?;
        let conn = ConnParams::resolve(&config.connection).map_err(|e| Failure::Start(e.into()))?;
        let common = opts
            .jobs
            .map(|j| format!("--jobs={j}").into())
            .into_iter()
            .collect();
        Ok(Restorer {
            pg_restore,
            conn,
            maintenance: &config.connection.maintenance_database,
            target: &opts.target,
            common,
            ids: Identities::load(&opts.identities)?,
            parallel: opts.jobs.is_some(),
        })
    }

    /// Creates the target database if it does not exist (saying so); true if it was created.
    async fn create_target(&self) -> Result<bool, Failure> {
        let created = ensure_database(&self.conn, self.maintenance, self.target).await?;
        if created {
            crate::say!("created database {}", self.target);
        }
        Ok(created)
    }

    /// `file` as this restore's pg_restore reads it (decrypted in a pipe, or into a copy
    /// with `--jobs`). Missing or wrong keys are usage errors (exit 2).
    fn archive(&self, file: &Path) -> Result<Archive, Failure> {
        let archive = if self.parallel {
            Archive::seekable(&self.ids, file)
        } else {
            Archive::in_order(&self.ids, file)
        };
        Ok(archive?)
    }

    /// Runs pg_restore on `archive` into the target with the common arguments and `args`;
    /// whether it succeeded, and its stderr.
    async fn run(
        &self,
        args: &[std::ffi::OsString],
        archive: &Archive,
    ) -> Result<(bool, String), Failure> {
        let all: Vec<std::ffi::OsString> = self.common.iter().chain(args).cloned().collect();
        match run_pg_restore(&self.pg_restore, &self.conn, self.target, &all, archive).await {
            Ok(done) => Ok(done),
            Err(PgRestoreError::Decrypt(e)) => Err(e.into()),
            Err(e) => Err(Failure::Start(e.into())),
        }
    }

    /// One pg_restore of a whole-database restore, its stderr printed under `what`; the number
    /// of problems (1 when pg_restore reported errors).
    async fn step(
        &self,
        what: &str,
        args: &[std::ffi::OsString],
        archive: &Archive,
    ) -> Result<usize, Failure> {
        let (ok, stderr) = self.run(args, archive).await?;
        if !stderr.is_empty() {
            crate::say!("{what}: {stderr}");
        }
        if ok {
            Ok(0)
        } else {
            crate::say!("{what}: pg_restore reported errors");
            Ok(1)
        }
    }
}

/// `restore --group`: the group's newest dump (or `--run`'s) into the target. A target that
/// is new or empty first gets the schemas, types and functions the group's tables need.
async fn restore_group(
    config: &Config,
    opts: &RestoreOptions,
    restorer: &Restorer<'_>,
    group: &str,
    at: Option<DateTime<Utc>>,
) -> Result<Outcome, Failure> {
    let root = &config.backup.dir;
    let database = match &opts.database {
        Some(d) => d.clone(),
        None => the_database_with_group(root, group)?,
    };
    let (dump_run, file) = match at {
        Some(at) => find_group_dump_at(root, &restorer.ids, &database, group, at)?,
        None => find_group_dump(root, &database, group, opts.run.as_deref())?,
    };
    let created = restorer.create_target().await?;
    if created || database_is_empty(&restorer.conn, restorer.target).await? {
        if let Some(schema) = schema_archive_for(root, &database, &dump_run) {
            let schema = Archive::in_order(&restorer.ids, &schema)?;
            restore_prerequisites(
                &restorer.pg_restore,
                &restorer.conn,
                restorer.target,
                &schema,
            )
            .await
            .map_err(|e| Failure::Start(e.into()))?;
        }
    }
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if opts.clean {
        args.push("--clean".into());
        args.push("--if-exists".into());
    }
    let archive = restorer.archive(&file)?;
    crate::say!("restoring {} into {}", file.display(), restorer.target);
    let (ok, stderr) = restorer.run(&args, &archive).await?;
    if !stderr.is_empty() {
        crate::say!("{stderr}");
    }
    Ok(if ok { Outcome::Ok } else { Outcome::SomeFailed })
}

/// The one database that has dumps of `group` (`--database` names it when there are several).
fn the_database_with_group(root: &Path, group: &str) -> Result<String, Failure> {
    let mut dbs = databases_with_group(root, group);
    match dbs.len() {
        1 => Ok(dbs.remove(0)),
        0 => Err(Failure::Usage(format!(
            "no dump of group {group:?} in {}",
            root.display()
        ))),
        _ => Err(Failure::Usage(format!(
            "group {group:?} exists in several databases ({}): name one with --database",
            dbs.join(", ")
        ))),
    }
}

/// The group's dump from run `run_id`, or its newest: (its run id, its path).
fn find_group_dump(
    root: &Path,
    database: &str,
    group: &str,
    run_id: Option<&str>,
) -> Result<(String, PathBuf), Failure> {
    let mut dumps = group_dumps(root, database, group);
    let found = match run_id {
        Some(id) => dumps.into_iter().find(|(r, _)| r == id),
        None => dumps.pop(),
    };
    found.ok_or_else(|| {
        Failure::Usage(format!(
            "no dump of group {group:?} of database {database:?}{} in {}",
            run_id.map(|r| format!(" from run {r}")).unwrap_or_default(),
            root.display()
        ))
    })
}

/// `restore --group --at`: the group's newest dump taken at or before `at` (its snapshot's
/// time, or its run's start when the report does not say): (its run id, its path).
fn find_group_dump_at(
    root: &Path,
    ids: &Identities,
    database: &str,
    group: &str,
    at: DateTime<Utc>,
) -> Result<(String, PathBuf), Failure> {
    let inv = crate::list::local(root, ids, &[(database.to_string(), group.to_string())]);
    let history = inv.group(GroupKind::Tables, database, group);
    let Some(dump) = history.and_then(|h| h.at(at)) else {
        return Err(Failure::Usage(format!(
            "no dump of group {group:?} of database {database:?} taken at or before {} in {}{}",
            shown_time(at),
            root.display(),
            oldest_note(history)
        )));
    };
    crate::say!(
        "group {group}: the dump of run {} (snapshot taken {})",
        dump.run_id,
        shown_time(dump.time)
    );
    Ok((dump.run_id.clone(), root.join(&dump.rel)))
}

/// "; its oldest dump is from …", when the group has dumps (all of them too new).
fn oldest_note(history: Option<&crate::list::History>) -> String {
    history
        .and_then(|h| h.dumps.last())
        .map(|d| format!("; its oldest dump was taken {}", shown_time(d.time)))
        .unwrap_or_default()
}

fn shown_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `restore --at --database`: a whole database from each group's newest dump taken at or
/// before `at`, and the schema dump taken at or before it; says how far apart the chosen
/// groups' snapshots are. The groups are those on disk and those of the schema dump's run.
async fn restore_database_at(
    config: &Config,
    restorer: &Restorer<'_>,
    at: DateTime<Utc>,
    database: &str,
) -> Result<Outcome, Failure> {
    let root = &config.backup.dir;
    let inv = crate::list::local(root, &restorer.ids, &crate::list::configured_names(config));
    let schema_history = inv.group(GroupKind::Schema, database, store::SCHEMA_GROUP);
    let Some(schema) = schema_history.and_then(|h| h.at(at)) else {
        return Err(Failure::Usage(format!(
            "no schema dump of database {database:?} taken at or before {} in {}{}",
            shown_time(at),
            root.display(),
            oldest_note(schema_history)
        )));
    };
    let mut names: BTreeSet<String> = inv
        .groups
        .iter()
        .filter(|h| h.kind == GroupKind::Tables && h.database == database)
        .map(|h| h.group.clone())
        .collect();
    if let Some(report) = inv.reports.get(&schema.run_id) {
        names.extend(
            report
                .groups
                .iter()
                .filter(|g| g.kind == Kind::Tables && g.database.as_deref() == Some(database))
                .filter(|g| g.status != Status::Gone)
                .map(|g| g.group.clone()),
        );
    }
    let chosen: Vec<(String, Option<&crate::list::Stored>)> = names
        .into_iter()
        .map(|g| {
            let d = inv
                .group(GroupKind::Tables, database, &g)
                .and_then(|h| h.at(at));
            (g, d)
        })
        .collect();
    say_spread(&chosen, schema);
    let groups: Vec<(String, Option<PathBuf>)> = chosen
        .iter()
        .map(|(g, d)| (g.clone(), d.map(|d| root.join(&d.rel))))
        .collect();
    let missing = format!("no dump taken at or before {}", shown_time(at));
    let from = format!("the dumps taken at or before {}", shown_time(at));
    rebuild(
        restorer,
        database,
        &root.join(&schema.rel),
        &groups,
        &missing,
        &from,
    )
    .await
}

/// Prints which dump each group restores from, and how far apart the chosen snapshots are.
fn say_spread(chosen: &[(String, Option<&crate::list::Stored>)], schema: &crate::list::Stored) {
    crate::say!(
        "schema: the dump of run {} (taken {})",
        schema.run_id,
        shown_time(schema.time)
    );
    for (g, d) in chosen {
        if let Some(d) = d {
            crate::say!(
                "group {g}: the dump of run {} (snapshot taken {})",
                d.run_id,
                shown_time(d.time)
            );
        }
    }
    let found = chosen.iter().filter_map(|(g, d)| Some((g, (*d)?)));
    let earliest = found.clone().min_by_key(|(_, d)| d.time);
    let latest = found.max_by_key(|(_, d)| d.time);
    if let (Some((ge, e)), Some((gl, l))) = (earliest, latest) {
        let spread = (l.time - e.time).num_seconds();
        crate::say!(
            "the chosen groups' snapshots are {} apart: earliest group {ge} ({}), latest group {gl} ({})",
            crate::list::short_age(spread),
            shown_time(e.time),
            shown_time(l.time)
        );
    }
}

/// `restore --run --database`: a whole database from one run, in the order described in the
/// module documentation.
async fn restore_database(
    config: &Config,
    restorer: &Restorer<'_>,
    run_id: &str,
    database: &str,
) -> Result<Outcome, Failure> {
    let root = &config.backup.dir;
    let plain = store::dump_path(root, database, store::SCHEMA_GROUP, run_id);
    let Some(schema) = crate::crypt::existing(&plain) else {
        return Err(Failure::Usage(format!(
            "run {run_id} has no schema dump of database {database:?} ({} is missing)",
            plain.display()
        )));
    };
    let groups = groups_of_run(config, &restorer.ids, database, run_id);
    let missing = format!("no successful dump in run {run_id}");
    rebuild(
        restorer,
        database,
        &schema,
        &groups,
        &missing,
        &format!("run {run_id}"),
    )
    .await
}

/// Rebuilds a database from a schema archive and its groups' dumps (`None`: the group has
/// none, said with `missing`): every step is tried; each one that fails counts as a problem.
async fn rebuild(
    restorer: &Restorer<'_>,
    database: &str,
    schema: &Path,
    groups: &[(String, Option<PathBuf>)],
    missing: &str,
    from: &str,
) -> Result<Outcome, Failure> {
    let schema = restorer.archive(schema)?;
    restorer.create_target().await?;
    let section = |s: &str| -> Vec<std::ffi::OsString> { vec![format!("--section={s}").into()] };
    let mut failures = restorer
        .step("schema (pre-data)", &section("pre-data"), &schema)
        .await?;
    for (group, file) in groups {
        match file {
            Some(f) => {
                let f = restorer.archive(f)?;
                let args = ["--data-only".into()];
                failures += restorer.step(&format!("group {group}"), &args, &f).await?;
            }
            None => {
                failures += 1;
                crate::say!("group {group}: {missing}; its tables stay empty");
            }
        }
    }
    failures += restorer
        .step("schema (sequence values)", &section("data"), &schema)
        .await?;
    failures += restorer
        .step("schema (post-data)", &section("post-data"), &schema)
        .await?;
    crate::say!(
        "restored database {database} from {from} into {}: {} groups{}",
        restorer.target,
        groups.len(),
        if failures > 0 {
            format!(", {failures} problems")
        } else {
            String::new()
        }
    );
    Ok(if failures > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Ok
    })
}

/// The groups of `database` in run `run_id`, each with its dump (`None`: the dump failed).
/// The run's report says which groups there were; without it (written elsewhere with
/// `--report`), the dumps on disk do.
fn groups_of_run(
    config: &Config,
    ids: &Identities,
    database: &str,
    run_id: &str,
) -> Vec<(String, Option<PathBuf>)> {
    let root = &config.backup.dir;
    if let Ok((report, _)) = load_report(config, ids, Some(run_id), None) {
        return report
            .groups
            .iter()
            .filter(|g| g.kind == Kind::Tables && g.database.as_deref() == Some(database))
            // Every table dropped before its dump: nothing of it to restore, nothing missing.
            .filter(|g| g.status != Status::Gone)
            .map(|g| {
                let file = (g.status == Status::Ok)
                    .then(|| store::dump_path(root, database, &g.group, run_id))
                    .and_then(|p| crate::crypt::existing(&p));
                (g.group.clone(), file)
            })
            .collect();
    }
    let dbdir = store::database_dir(root, database);
    let mut groups = Vec::new();
    for e in std::fs::read_dir(&dbdir).into_iter().flatten().flatten() {
        let Some(group) = store::decode_component(&e.file_name().to_string_lossy()) else {
            continue;
        };
        if group == store::SCHEMA_GROUP {
            continue;
        }
        let p = store::dump_path(root, database, &group, run_id);
        if let Some(p) = crate::crypt::existing(&p) {
            groups.push((group, Some(p)));
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_archive_is_piped_unless_pg_restore_must_seek() {
        let id = age::x25519::Identity::generate();
        let r = crate::crypt::Recipients::new(vec![id.to_public()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = crate::crypt::sealed_path(&dir.path().join("db.g.20260101T000000Z.dump"));
        std::fs::write(&file, r.seal_bytes(b"PGDMP...").unwrap()).unwrap();
        let ids = Identities::from_keys(vec![id]);
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let piped = Archive::in_order(&ids, &file).unwrap();
        assert!(
            matches!(piped, Archive::Piped { .. }) && files() == 1,
            "no copy"
        );
        let copy = Archive::seekable(&ids, &file).unwrap();
        assert!(matches!(copy, Archive::File(_)) && files() == 2);
        drop(copy);
        assert_eq!(files(), 1, "the copy is removed");
        let wrong = Identities::from_keys(vec![age::x25519::Identity::generate()]);
        assert!(matches!(
            Archive::in_order(&wrong, &file),
            Err(CryptError::NoMatch { .. })
        ));
    }

    #[test]
    fn only_the_transaction_timeout_of_a_newer_pg_restore_is_forgiven() {
        let tt = "pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter \"transaction_timeout\"\nCommand was: SET transaction_timeout = 0;\n";
        let one = format!("{tt}pg_restore: warning: errors ignored on restore: 1");
        assert!(only_transaction_timeout_errors(&one));
        let two = format!("{tt}{tt}pg_restore: warning: errors ignored on restore: 2");
        assert!(only_transaction_timeout_errors(&two));
        let other = format!(
            "{tt}pg_restore: error: could not execute query: ERROR:  relation \"t\" already exists\npg_restore: warning: errors ignored on restore: 2"
        );
        assert!(!only_transaction_timeout_errors(&other));
        // An error pg_restore counted but did not print as such is not forgiven.
        let miscounted = format!("{tt}pg_restore: warning: errors ignored on restore: 3");
        assert!(!only_transaction_timeout_errors(&miscounted));
        assert!(!only_transaction_timeout_errors(""));
    }

    #[test]
    fn names_sharing_a_prefix_are_told_apart() {
        let text = "1; 1259 1 TABLE public t 2 postgres\n2; 0 1 TABLE DATA public t 2 postgres\n";
        let e = parse_list(text);
        let t = vec![("public".to_string(), "t".to_string())];
        assert_eq!(compare_tables(&e, &t, None).len(), 3);
        let both = vec![
            ("public".to_string(), "t".to_string()),
            ("public".to_string(), "t 2".to_string()),
        ];
        let text = "1; 1259 1 TABLE public t postgres\n2; 1259 2 TABLE public t 2 postgres\n";
        assert!(compare_tables(&parse_list(text), &both, None).is_empty());
    }

    #[test]
    fn list_parsing_and_comparison() {
        let text = ";\n; Archive created at ...\n;\n\
            215; 1259 16385 TABLE public orders postgres\n\
            216; 1259 16392 TABLE my schema order items postgres\n\
            3364; 0 16385 TABLE DATA public orders postgres\n\
            3365; 0 16392 TABLE DATA my schema order items postgres\n\
            3220; 2606 16396 CONSTRAINT public orders orders_pkey postgres\n";
        let e = parse_list(text);
        assert_eq!(e.len(), 5);
        assert_eq!(e[2].desc, "TABLE DATA");
        assert_eq!(e[2].rest, "public orders postgres");
        let tables = vec![
            ("public".to_string(), "orders".to_string()),
            ("my schema".to_string(), "order items".to_string()),
        ];
        assert!(compare_tables(&e, &tables, None).is_empty());
        assert!(compare_tables(&e, &tables, Some(&[16385, 16392])).is_empty());
        assert_eq!(compare_tables(&e, &tables, Some(&[16385, 1])).len(), 3);
        let fewer = vec![("public".to_string(), "orders".to_string())];
        let p = compare_tables(&e, &fewer, None);
        assert_eq!(p.len(), 2, "{p:?}");
        let more = vec![
            ("public".to_string(), "orders".to_string()),
            ("my schema".to_string(), "order items".to_string()),
            ("public".to_string(), "x".to_string()),
        ];
        assert_eq!(
            compare_tables(&e, &more, None),
            vec!["table public.x is missing".to_string()]
        );
    }
}
