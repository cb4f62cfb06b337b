//! The native engine: a group's archive written by pg_groupdump itself, without a `pg_dump`
//! process per group.
//!
//! `pg_dump -t` reads the whole catalog of the database whatever `-t` says, so one pg_dump per
//! group costs tens of milliseconds per group even for an empty table; with thousands of
//! groups that is the whole backup window. The native engine reads the catalog once per
//! database and run — the run's schema archive (`pg_dump -Fc` with no table data), taken in a
//! snapshot of ours, in which we also record which catalog objects belong to which table and a
//! fingerprint of each table's definition — and then, for each group, on a pooled session:
//!
//! 1. `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY` and `LOCK TABLE … IN ACCESS SHARE
//!    MODE` as the first statement, bounded by `lock_timeout`. LOCK takes no snapshot, so the
//!    group's snapshot is taken by the next statement, after every lock is held: no DDL can
//!    commit between the snapshot and the locks (a window `pg_dump` itself leaves open).
//! 2. Compares each table's fingerprint with the schema archive's. A table altered since then
//!    would be restored with the old definition, so that group falls back to `pg_dump`.
//! 3. `COPY … TO STDOUT` each table and reads the owned sequences, in that snapshot.
//! 4. Writes a custom-format archive ([`archive`]): the schema archive's entries that
//!    belong to the group's tables — chosen as `pg_dump -t` chooses them — plus TABLE DATA and
//!    SEQUENCE SET entries. Stock `pg_restore` restores it like a `pg_dump -Fc -t` archive.
//!
//! Writing runs on blocking threads: a small group's data is held in memory and written,
//! compressed and fsynced after its transaction by one of a bounded set of writers; a large
//! group's streams to a writer thread through a small channel. Groups compress on all cores
//! and memory stays bounded whatever the table sizes.//!
//! Files: [`archive`] reads and writes the custom format; [`toc`] records which schema
//! entries belong to which table and cuts a group's share; [`session`] opens the sessions;
//! [`copy`] dumps one group in one transaction; [`writer`] writes and commits its file.
//! This module ties them to the run: where each database's schema archive comes from, and
//! one attempt at a group.

pub mod archive;
pub mod copy;
pub mod error;
pub mod pieces;
pub mod session;
pub mod split;
pub mod toc;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::job::{
    create_partial, remove_quietly, AttemptError, Contents, Job, Recording, Settings, Shared,
};
use super::pg_dump::{InSnapshot, PgDump};
use crate::config::Engine;
use crate::report::{Attempt, Kind};
use crate::store;
use copy::NativeError;
use session::{SessionError, Sessions};
use toc::{Recorded, SchemaToc};
use writer::WriteError;

/// A database's schema archive, ready to cut, or why it cannot be used (the reason its
/// groups are dumped with pg_dump).
type TocResult = Result<Arc<SchemaToc>, String>;

/// Where a schema dump hands its archive's TOC to the native groups of its database.
struct TocSlot {
    database: String,
    /// What the schema snapshot said, recorded by the successful attempt.
    recorded: Mutex<Option<Recorded>>,
    /// The archive's TOC, read from pg_dump's output as it went to the encryption.
    streamed: Mutex<Option<Result<archive::Toc, String>>>,
    tx: watch::Sender<Option<TocResult>>,
}

impl TocSlot {
    fn new(database: &str) -> Arc<TocSlot> {
        Arc::new(TocSlot {
            database: database.to_string(),
            recorded: Mutex::new(None),
            streamed: Mutex::new(None),
            tx: watch::channel(None).0,
        })
    }

    fn take_recorded(&self) -> Option<Recorded> {
        self.recorded.lock().expect("toc slot").take()
    }

    /// The schema archive's TOC: as it streamed by, or else read from its file at `path`
    /// (not encrypted), and what the snapshot recorded.
    async fn load(&self, path: PathBuf) -> TocResult {
        let recorded = self
            .take_recorded()
            .ok_or_else(|| "the catalog could not be read in its snapshot".to_string())?;
        let streamed = self.streamed.lock().expect("toc slot").take();
        let loaded = match streamed {
            Some(toc) => SchemaToc::new(toc?, recorded),
            None => tokio::task::spawn_blocking(move || SchemaToc::load(&path, recorded))
                .await
                .map_err(|e| e.to_string())?,
        };
        loaded.map(Arc::new).map_err(|e| e.to_string())
    }
}

impl InSnapshot for TocSlot {
    fn record<'a>(&'a self, client: &'a Client) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match toc::record(client).await {
                Ok(r) => *self.recorded.lock().expect("toc slot") = Some(r),
                Err(err) => tracing::warn!(
                    "{}: cannot read the catalog in the schema snapshot: {}",
                    crate::text::printable(&self.database),
                    crate::text::pg_error_text(&err)
                ),
            }
        })
    }

    fn archive_toc(&self, toc: Result<archive::Toc, String>) {
        *self.streamed.lock().expect("toc slot") = Some(toc);
    }
}

/// How the native groups of a database get its schema TOC.
enum TocSource {
    /// From the run's schema dump.
    Job(Arc<TocSlot>),
    /// From a `pg_dump --schema-only` of our own, taken by the first group that needs it
    /// (the run takes no schema dump of that database).
    Private(tokio::sync::OnceCell<TocResult>),
}

/// The result of trying a group with the native engine.
pub enum NativeTry {
    Done(Box<Attempt>, Result<store::Finished, AttemptError>),
    /// Dump it with pg_dump instead; `quiet` when the reason was logged for the database.
    Fallback {
        why: String,
        quiet: bool,
    },
}

/// The native engine of a run.
pub struct Native {
    shared: Arc<Shared>,
    pg_dump: Arc<PgDump>,
    sessions: Sessions,
    /// Native files being written and fsynced at once ([`writer::FINISHING_PER_JOB`]).
    finishing: Arc<Semaphore>,
    tocs: HashMap<String, TocSource>,
    /// Bumped whenever a schema TOC is published.
    published: watch::Sender<u64>,
    root: PathBuf,
    run_id: String,
    lock_wait_timeout: Duration,
    yield_after: Option<Duration>,
    split_above: Option<u64>,
    /// `[encryption]`: archives are encrypted as they are written.
    seal: Option<crate::crypt::Recipients>,
}

/// Why an attempt did not finish natively.
enum Step {
    Fallback(String),
    Failed(AttemptError),
}

impl From<AttemptError> for Step {
    fn from(e: AttemptError) -> Self {
        Step::Failed(e)
    }
}

impl Native {
    /// The engine for these jobs: each database with native groups gets its TOC from the
    /// run's schema job, or else from a schema-only dump of its own.
    pub fn new(
        settings: &Settings,
        shared: Arc<Shared>,
        pg_dump: Arc<PgDump>,
        jobs: &[Job],
    ) -> Self {
        let native_dbs: HashSet<&str> = jobs
            .iter()
            .filter(|j| j.kind == Kind::Tables && j.engine == Engine::Native)
            .filter_map(|j| j.database.as_deref())
            .collect();
        let mut tocs = HashMap::new();
        for j in jobs {
            if let (Kind::Schema, Contents::Schema { .. }, Some(db)) =
                (j.kind, &j.contents, j.database.as_deref())
            {
                if native_dbs.contains(db) {
                    tocs.insert(db.to_string(), TocSource::Job(TocSlot::new(db)));
                }
            }
        }
        for db in native_dbs {
            tocs.entry(db.to_string())
                .or_insert_with(|| TocSource::Private(tokio::sync::OnceCell::new()));
        }
        Native {
            shared,
            pg_dump,
            sessions: Sessions::new(settings.conn.clone(), settings.jobs),
            finishing: Arc::new(Semaphore::new(
                (writer::FINISHING_PER_JOB * settings.jobs).max(8),
            )),
            tocs,
            published: watch::channel(0).0,
            root: settings.root.clone(),
            run_id: settings.run_id.clone(),
            lock_wait_timeout: settings.lock_wait_timeout,
            yield_after: settings.yield_after,
            split_above: settings.split_above,
            seal: settings.seal.clone(),
        }
    }

    /// Whether a native group's schema TOC is there (or will be taken by the group itself).
    pub fn ready(&self, job: &Job) -> bool {
        match job.database.as_deref().and_then(|d| self.tocs.get(d)) {
            Some(TocSource::Job(slot)) => slot.tx.borrow().is_some(),
            _ => true,
        }
    }

    /// Changes whenever a schema TOC is published.
    pub fn readiness(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// What the schema job of a database with native groups records in its snapshot.
    pub fn recorder_for(&self, job: &Job) -> Option<Arc<dyn InSnapshot>> {
        self.slot_for(job).map(|s| s as Arc<dyn InSnapshot>)
    }

    /// The TOC slot a schema job fills.
    fn slot_for(&self, job: &Job) -> Option<Arc<TocSlot>> {
        match (
            job.kind,
            job.database.as_deref().and_then(|d| self.tocs.get(d)),
        ) {
            (Kind::Schema, Some(TocSource::Job(slot))) => Some(slot.clone()),
            _ => None,
        }
    }

    /// A schema job has ended: its archive's TOC (or why there is none) goes to the groups.
    pub async fn schema_finished(&self, job: &Job, result: Result<(), &str>) {
        let Some(slot) = self.slot_for(job) else {
            return;
        };
        let toc = match result {
            Ok(()) => slot.load(job.path.clone()).await,
            Err(e) => Err(format!("the schema dump failed: {e}")),
        };
        warn_if_unusable(&slot.database, &toc);
        slot.tx.send_replace(Some(toc));
        self.published.send_modify(|n| *n += 1);
    }

    /// One attempt at a group: the same lock window, yield and retry rules as a pg_dump
    /// attempt, on a pooled session of ours.
    ///
    /// The slot (`permit`) is given back as soon as the database work is done: fsyncing the
    /// file need not keep the next group waiting.
    pub async fn attempt(
        &self,
        job: &mut Job,
        number: u32,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> NativeTry {
        let database = job.database.clone().expect("a group has a database");
        let database = database.as_str();
        let toc = match self.schema_toc(database).await {
            Ok(t) => t,
            Err(why) => return NativeTry::Fallback { why, quiet: true },
        };
        let mut rec = Recording::start(number);
        let result = match self
            .dump(job, database, &toc, &mut rec.attempt, permit)
            .await
        {
            Ok(finished) => Ok(finished),
            Err(Step::Failed(e)) => Err(e),
            Err(Step::Fallback(why)) => return NativeTry::Fallback { why, quiet: false },
        };
        NativeTry::Done(Box::new(rec.finish(&result)), result)
    }

    async fn dump(
        &self,
        job: &mut Job,
        database: &str,
        toc: &SchemaToc,
        a: &mut Attempt,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<store::Finished, Step> {
        let partial = create_partial(job)?;
        let session = match self.sessions.take(database).await {
            Ok(s) => s,
            Err(e) => {
                remove_quietly(&partial);
                return Err(session_error(job, e).into());
            }
        };
        let mut watch = self.shared.monitor.watch_pid(session.pid, job.yield_after);
        let cancel = self.shared.cancelled(Some(watch.yielded()));
        let split = split::Split {
            above: self.split_above,
            held: permit.as_ref().map_or(1, |p| p.num_permits()),
            slots: &self.shared.slots,
            jobs: self.shared.jobs,
            pool: &self.sessions,
            database,
        };
        let dumped = tokio::select! {
            r = follow_and_dump(&session, toc, job, &partial, split, self.seal.as_ref()) => Ok(r),
            c = cancel => Err(c),
        };
        let observed = watch.finish();
        a.lock_wait_ms = observed.lock_wait.as_millis() as u64;
        let result = match dumped {
            Err(cancel) => {
                // Mid-statement or between two: ending the backend releases its locks at once.
                self.shared
                    .after_cancel(job, Some(session.pid), &cancel)
                    .await;
                drop(session);
                Err(AttemptError::Cancelled(cancel).into())
            }
            Ok(Ok(d)) => {
                self.sessions.give(database, session);
                // The group's slot goes once its file has a writing slot: spooled data never
                // piles up in memory when files are written slower than groups are copied.
                let writing = self
                    .finishing
                    .clone()
                    .acquire_many_owned(d.file.weight())
                    .await
                    .expect("never closed");
                drop(permit.take());
                a.snapshot = Some(d.snapshot);
                a.lock_wait_ms = d.lock_wait.as_millis() as u64;
                a.row_counts = Some(job.tables.iter().cloned().zip(d.row_counts).collect());
                a.split = d
                    .split
                    .iter()
                    .filter_map(|(oid, sessions, ranges)| {
                        let i = job.table_oids.iter().position(|o| o == oid)?;
                        Some(crate::report::SplitTable {
                            table: job.tables[i].clone(),
                            sessions: *sessions,
                            ranges: *ranges,
                        })
                    })
                    .collect();
                d.file
                    .complete(writing)
                    .await
                    .map_err(|e| write_error(&partial, e).into())
            }
            Ok(Err(NativeError::Fallback(why))) => {
                self.sessions.give(database, session);
                remove_quietly(&partial);
                return Err(Step::Fallback(why));
            }
            Ok(Err(e)) => {
                self.sessions.give(database, session);
                let mut e = native_error(job, e);
                self.shared.diagnose(job, &observed, &mut e).await;
                Err(e.into())
            }
        };
        if result.is_err() {
            remove_quietly(&partial);
        }
        result
    }

    /// The schema TOC of `database` for its native groups: the run's schema archive, or one
    /// taken now for the purpose (and removed once read).
    async fn schema_toc(&self, database: &str) -> TocResult {
        match self.tocs.get(database) {
            None => Err("no schema archive is planned".into()),
            Some(TocSource::Job(slot)) => {
                let mut rx = slot.tx.subscribe();
                let result = match rx.wait_for(Option::is_some).await {
                    Ok(v) => v.clone().expect("waited for Some"),
                    Err(_) => Err("the schema dump ended without a result".into()),
                };
                result
            }
            Some(TocSource::Private(cell)) => cell
                .get_or_init(|| self.private_toc(database))
                .await
                .clone(),
        }
    }

    /// Takes a `pg_dump --schema-only` archive of `database` in a snapshot of ours, reads its
    /// TOC and removes it. Its name ends in `.ing`, so a crash leaves nothing the next run
    /// keeps.
    async fn private_toc(&self, database: &str) -> TocResult {
        // In the backup directory itself: no directory appears for a dump the run does not
        // keep.
        let slot = TocSlot::new(database);
        let mut job = Job {
            kind: Kind::Schema,
            database: Some(database.to_string()),
            group: store::SCHEMA_GROUP.into(),
            tables: Vec::new(),
            table_oids: Vec::new(),
            contents: Contents::SchemaOnly,
            path: crate::crypt::written_path(
                store::schema_toc_path(&self.root, database, &self.run_id),
                self.seal.as_ref(),
            ),
            lock_wait_timeout: self.lock_wait_timeout,
            yield_after: self.yield_after,
            engine: Engine::PgDump,
            compression: crate::compression::Compression::default(),
            changes: Vec::new(),
            expects_split: false,
        };
        let mut last = String::new();
        for number in 1..=1 + self.shared.lock_retries {
            let (a, result) = self.pg_dump.attempt(&mut job, number, Some(&*slot)).await;
            match result {
                Ok(_) => {
                    let toc = slot.load(job.path.clone()).await;
                    remove_quietly(&job.path);
                    warn_if_unusable(database, &toc);
                    return toc;
                }
                Err(e) if a.outcome.is_retryable() && self.shared.shutdown.borrow().is_none() => {
                    let delay = self.shared.retry_delay * number;
                    tracing::warn!(
                        "{}: the schema archive for the native engine: attempt {number} of {}: {e}; retrying in {}",
                        crate::text::printable(database),
                        1 + self.shared.lock_retries,
                        humantime::format_duration(delay)
                    );
                    last = e.to_string();
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
        }
        tracing::warn!(
            "{}: no schema archive for the native engine ({last}); the groups of this database are dumped with pg_dump",
            crate::text::printable(database)
        );
        Err(format!("the schema-only dump failed: {last}"))
    }
}

/// Times a group's names are resolved again within one attempt when a table is dropped or
/// renamed as it is locked; then the attempt ends, to be retried later in the run.
const RESOLVE_TRIES: u32 = 3;

/// Dumps the group's tables under the names they have now ([`crate::engine::follow`]).
///
/// The first try locks the names the job and the schema archive agree on without asking the
/// catalog first: the locked names are checked against the oids once locked, so a rename,
/// a drop or an attached partition in between only sends it to the next tries. Those resolve
/// the oids' names right before the locks ([`RESOLVE_TRIES`] times at most). A table renamed
/// since the schema archive was taken falls back to pg_dump: the archive's entries carry the
/// old name.
async fn follow_and_dump(
    session: &session::NativeSession,
    toc: &SchemaToc,
    job: &mut Job,
    partial: &std::path::Path,
    split: split::Split<'_>,
    seal: Option<&crate::crypt::Recipients>,
) -> Result<copy::Dumped, NativeError> {
    let mut last = String::new();
    for resolved in std::iter::once(false).chain(std::iter::repeat_n(true, RESOLVE_TRIES as usize))
    {
        if resolved {
            let names = crate::engine::follow::resolve(&session.client, &job.table_oids).await?;
            if job.follow(&names).is_err() {
                return Err(NativeError::Gone);
            }
        }
        match renamed_since_schema(toc, job) {
            Some(why) if resolved => return Err(NativeError::Fallback(why)),
            Some(why) => {
                last = why;
                continue;
            }
            // A table the schema archive does not have may have been dropped since the plan.
            None if !resolved && job.table_oids.iter().any(|o| toc.name(*o).is_none()) => continue,
            None => {}
        }
        let req = copy::Request {
            group: &job.group,
            table_oids: &job.table_oids,
            lock_wait_timeout: job.lock_wait_timeout,
            compression: job.compression,
            out: partial,
            final_path: &job.path,
            split: split::Split { ..split },
            seal,
        };
        match copy::dump_group(session, toc, &req).await {
            Err(NativeError::Changed(why)) => last = why,
            other => return other,
        }
    }
    Err(NativeError::Changed(last))
}

/// Why the schema archive's entries no longer name a table of the job, if they do not.
fn renamed_since_schema(toc: &SchemaToc, job: &Job) -> Option<String> {
    let Contents::Tables(pairs) = &job.contents else {
        return None;
    };
    job.table_oids.iter().zip(pairs).find_map(|(oid, now)| {
        let then = toc.name(*oid)?;
        (then != now).then(|| {
            format!(
                "{} was renamed to {} after the schema archive was taken",
                crate::text::display_name(&then.0, &then.1),
                crate::text::display_name(&now.0, &now.1)
            )
        })
    })
}

/// The one log line for a database whose groups the native engine cannot dump.
fn warn_if_unusable(database: &str, toc: &TocResult) {
    if let Err(e) = toc {
        tracing::warn!(
            "{}: the native engine cannot use the schema archive ({e}); the groups of this database are dumped with pg_dump",
            crate::text::printable(database)
        );
    }
}

/// A server error of a native session: a lock timeout, a lost connection, or other.
fn server_error(job: &Job, e: &tokio_postgres::Error) -> AttemptError {
    let text = crate::text::pg_error_text(e);
    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        AttemptError::lock_timeout(job, text)
    } else if crate::connect::is_transient(e) {
        AttemptError::ConnectionLost(text)
    } else {
        AttemptError::Other(text)
    }
}

fn native_error(job: &Job, e: NativeError) -> AttemptError {
    match e {
        NativeError::Server(e) => server_error(job, &e),
        NativeError::Changed(why) => AttemptError::TableChanged(why),
        NativeError::Gone => AttemptError::Gone,
        NativeError::Session(e) => session_error(job, e),
        NativeError::SplitLockTimeout { error, blockers } => AttemptError::LockTimeout {
            timeout: job.lock_wait_timeout,
            blockers,
            detail: crate::text::pg_error_text(&error),
        },
        other => AttemptError::Other(other.to_string()),
    }
}

fn session_error(job: &Job, e: SessionError) -> AttemptError {
    match e {
        SessionError::Setup(e) => server_error(job, &e),
        SessionError::Connect(e) if e.is_transient() => {
            AttemptError::ConnectionLost(format!("{e:#}"))
        }
        SessionError::Connect(e) => AttemptError::Other(format!("{e:#}")),
    }
}

fn write_error(partial: &std::path::Path, e: WriteError) -> AttemptError {
    if e.is_disk_full() {
        AttemptError::DiskFull {
            path: partial.to_path_buf(),
            detail: e.to_string(),
        }
    } else {
        AttemptError::Other(e.to_string())
    }
}
