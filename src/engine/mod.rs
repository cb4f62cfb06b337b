//! Engines: each turns one [`Job`] — a group's tables, a database's schema, the cluster's
//! globals — into one finished file in the backup directory, or a typed [`AttemptError`].
//!
//! The scheduler ([`crate::run`]) decides when a job runs, how many run at once, and whether
//! a failed attempt is tried again; it sees an attempt only as a [`Tried`]. An engine decides
//! how the file is made:
//! - [`pg_dump`]: a `pg_dump`/`pg_dumpall` child per job, in a snapshot exported by a session
//!   of ours ([`snapshot`]);
//! - [`native`]: the group's archive written by pg_groupdump itself, cut from the run's
//!   schema archive, with the data copied on a pooled session.
//!
//! [`Engines`] is what the scheduler holds: it picks the engine a job asked for, hands a
//! group to pg_dump when the native engine cannot write it, and lets the native engine watch
//! the schema dumps it cuts. Both engines share the run's lock [`Monitor`]: a lock timeout is
//! reported with who was in the way, and a session of ours yields to DDL that waits on it.
//!
//! To add an engine: a module here that turns a `Job` into a `Tried`, and a branch in
//! [`Engines::attempt`]. An archive version or a compression method is the native engine's
//! business alone ([`native::archive`]).

pub mod native;
pub mod pg_dump;
pub mod pool;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};

use crate::config::Engine;
use crate::dump::DumpKind;
use crate::locks::{Monitor, Observed};
use crate::report::{now_rfc3339, Attempt, Kind, Outcome, Session};
use crate::store;

/// One unit of work: a file to make, tried up to `1 + lock_retries` times.
pub struct Job {
    pub kind: Kind,
    pub database: Option<String>,
    pub group: String,
    /// The tables' display names (`schema.table`).
    pub tables: Vec<String>,
    pub table_oids: Vec<u32>,
    /// What `pg_dump` is to dump for it.
    pub dump: DumpKind,
    pub path: PathBuf,
    pub lock_wait_timeout: Duration,
    pub yield_after: Option<Duration>,
    /// The engine asked for. The native engine hands a group it cannot write to pg_dump for
    /// the rest of the run.
    pub engine: Engine,
}

impl Job {
    /// `database/group`, printable, for logs.
    pub fn label(&self) -> String {
        crate::text::printable(&format!(
            "{}/{}",
            self.database.as_deref().unwrap_or("(cluster)"),
            self.group
        ))
    }
}

/// Why an attempt was stopped from outside.
#[derive(Debug, Clone)]
pub enum Cancel {
    /// A session waited longer than `yield_after` for a lock the attempt held.
    Yield(Box<Session>),
    /// SIGINT or SIGTERM.
    Signal(i32),
}

impl std::fmt::Display for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cancel::Yield(s) => write!(
                f,
                "yielded to a session waiting for a lock: {}",
                s.describe()
            ),
            Cancel::Signal(sig) => write!(f, "interrupted by {}", signal_name(*sig)),
        }
    }
}

/// Why an attempt produced no file, classified where it happened.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The locks were not granted within the lock-wait timeout.
    #[error("could not lock the tables within {} ({}): {detail}", humantime::format_duration(*.timeout), who(.blockers))]
    LockTimeout {
        timeout: Duration,
        /// Who was in the way, once diagnosed.
        blockers: Vec<Session>,
        /// What the server or pg_dump said.
        detail: String,
    },
    /// The connection was lost or refused (a restart, a terminated backend).
    #[error("{0}")]
    ConnectionLost(String),
    /// Writing the file failed for want of space.
    #[error("disk full: could not write {} (No space left on device): {detail}", path.display())]
    DiskFull { path: PathBuf, detail: String },
    /// Yielded to DDL, or stopped by a signal.
    #[error("{0}")]
    Cancelled(Cancel),
    /// Anything else: retrying will not mend it.
    #[error("{0}")]
    Other(String),
}

fn who(blockers: &[Session]) -> String {
    if blockers.is_empty() {
        "no blocking session was seen".to_string()
    } else {
        format!(
            "blocked by {}",
            blockers
                .iter()
                .map(Session::describe)
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

impl AttemptError {
    /// A lock timeout whose blockers are still to be found.
    pub fn lock_timeout(job: &Job, detail: String) -> Self {
        AttemptError::LockTimeout {
            timeout: job.lock_wait_timeout,
            blockers: Vec::new(),
            detail,
        }
    }

    /// What the report calls this.
    pub fn outcome(&self) -> Outcome {
        match self {
            AttemptError::LockTimeout { .. } => Outcome::LockTimeout,
            AttemptError::ConnectionLost(_) => Outcome::ConnectionLost,
            AttemptError::Cancelled(Cancel::Yield(_)) => Outcome::Yielded,
            AttemptError::Cancelled(Cancel::Signal(_)) => Outcome::Interrupted,
            AttemptError::DiskFull { .. } | AttemptError::Other(_) => Outcome::Failed,
        }
    }
}

/// One attempt's record and result, and which engine made it.
pub struct Tried {
    pub attempt: Attempt,
    pub result: Result<store::Finished, AttemptError>,
    /// The engine that wrote (or tried to write) a group; `None` for schema and globals.
    pub engine: Option<Engine>,
    /// Why the native engine handed the group to pg_dump in this attempt.
    pub fallback: Option<String>,
}

/// What every engine of a run shares.
pub struct Shared {
    pub monitor: Monitor,
    /// Set to the signal number once SIGINT or SIGTERM arrives.
    pub shutdown: watch::Receiver<Option<i32>>,
    pub lock_retries: u32,
    pub retry_delay: Duration,
}

impl Shared {
    /// Resolves when the attempt must stop: a yield to DDL (when `yield_rx` is given) or a
    /// signal.
    pub async fn cancelled(&self, yield_rx: Option<oneshot::Receiver<Session>>) -> Cancel {
        let yielded = async {
            match yield_rx {
                Some(rx) => match rx.await {
                    Ok(s) => s,
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = yielded => Cancel::Yield(Box::new(s)),
            sig = stopped(self.shutdown.clone()) => Cancel::Signal(sig),
        }
    }

    /// Ends a backend of ours that was cancelled, so its locks go at once, and logs a yield.
    pub async fn after_cancel(&self, job: &Job, pid: Option<i32>, cancel: &Cancel) {
        if let Some(pid) = pid {
            self.monitor.terminate(pid).await;
        }
        if let Cancel::Yield(s) = cancel {
            tracing::warn!(
                "{}: yielded to pid {}: {}",
                job.label(),
                s.pid,
                s.query.as_deref().unwrap_or("(query not visible)")
            );
        }
    }

    /// Names the sessions in the way of a lock timeout: those the monitor saw while the
    /// attempt waited, else those holding conflicting locks now.
    pub async fn diagnose(&self, job: &Job, observed: &Observed, e: &mut AttemptError) {
        let AttemptError::LockTimeout { blockers, .. } = e else {
            return;
        };
        *blockers = if observed.blockers.is_empty() {
            let database = job.database.as_deref().unwrap_or_default();
            self.monitor
                .conflicting_sessions(database, &job.table_oids)
                .await
        } else {
            observed.blockers.clone()
        };
    }
}

/// Resolves when the run is told to stop; returns the signal.
pub async fn stopped(mut rx: watch::Receiver<Option<i32>>) -> i32 {
    loop {
        if let Some(sig) = *rx.borrow_and_update() {
            return sig;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// "SIGINT", "SIGTERM".
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// An attempt's record, from its start to [`finish_attempt`].
pub struct Recording {
    pub attempt: Attempt,
    started: Instant,
}

impl Recording {
    pub fn start(number: u32) -> Self {
        Recording {
            attempt: Attempt::new(number, now_rfc3339()),
            started: Instant::now(),
        }
    }

    /// Records the attempt's end: its outcome and error, who was in the way or yielded to,
    /// when it finished and how long it took.
    pub fn finish(self, result: &Result<store::Finished, AttemptError>) -> Attempt {
        let mut a = self.attempt;
        if let Err(e) = result {
            a.outcome = e.outcome();
            a.error = Some(e.to_string());
            match e {
                AttemptError::LockTimeout { blockers, .. } => a.blockers = blockers.clone(),
                AttemptError::Cancelled(Cancel::Yield(s)) => a.yielded_to = Some((**s).clone()),
                _ => {}
            }
        }
        a.finished_at = now_rfc3339();
        a.duration_ms = self.started.elapsed().as_millis() as u64;
        a
    }
}

/// Creates the attempt's `.ing` file.
pub fn create_partial(job: &Job) -> Result<PathBuf, AttemptError> {
    store::create_partial(&job.path).map_err(|e| {
        AttemptError::Other(format!(
            "cannot create {}: {}",
            store::partial_path(&job.path).display(),
            crate::text::io_message(&e)
        ))
    })
}

/// Removes a file if it is there, logging only a failure that is not "not found".
pub fn remove_quietly(p: &Path) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", p.display()),
    }
}

/// Everything an engine needs to know of the run.
pub struct Settings {
    pub pg_dump: crate::dump::DumpSettings,
    pub conn: crate::connect::ConnParams,
    pub maintenance: String,
    /// Jobs at once: sessions kept idle, files written at once.
    pub jobs: usize,
    pub count_rows: bool,
    /// zlib level of native archives (-1: default).
    pub compression: i32,
    pub root: PathBuf,
    pub run_id: String,
    /// The run's defaults, for the schema dumps the native engine takes itself.
    pub lock_wait_timeout: Duration,
    pub yield_after: Option<Duration>,
}

/// The engines of a run, as the scheduler sees them.
pub struct Engines {
    pg_dump: Arc<pg_dump::PgDump>,
    native: native::Native,
}

impl Engines {
    /// Sets up both engines for these jobs.
    pub fn new(settings: Settings, shared: Arc<Shared>, jobs: &[Job]) -> Self {
        let pg_dump = Arc::new(pg_dump::PgDump::new(&settings, shared.clone()));
        let native = native::Native::new(&settings, shared, pg_dump.clone(), jobs);
        Engines { pg_dump, native }
    }

    /// Whether the job can start now. A native group waits for its database's schema
    /// archive, which the run's schema job is still taking.
    pub fn ready(&self, job: &Job) -> bool {
        job.engine != Engine::Native || job.kind != Kind::Tables || self.native.ready(job)
    }

    /// Changes whenever a job that was not [`ready`](Self::ready) may have become so.
    pub fn readiness(&self) -> watch::Receiver<u64> {
        self.native.readiness()
    }

    /// One attempt at the job, holding `slot` (which an engine may give back early, once
    /// the database work is done).
    pub async fn attempt(
        &self,
        job: &mut Job,
        number: u32,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) -> Tried {
        let group = (job.kind == Kind::Tables).then_some(());
        if job.engine == Engine::Native && group.is_some() {
            match self.native.attempt(job, number, slot).await {
                native::NativeTry::Done(attempt, result) => {
                    return Tried {
                        attempt: *attempt,
                        result,
                        engine: Some(Engine::Native),
                        fallback: None,
                    }
                }
                native::NativeTry::Fallback { why, quiet } => {
                    if quiet {
                        tracing::debug!("{}: dumped with pg_dump: {why}", job.label());
                    } else {
                        tracing::warn!("{}: dumped with pg_dump: {why}", job.label());
                    }
                    job.engine = Engine::PgDump;
                    let (attempt, result) = self.pg_dump.attempt(job, number, None).await;
                    return Tried {
                        attempt,
                        result,
                        engine: Some(Engine::PgDump),
                        fallback: Some(why),
                    };
                }
            }
        }
        let recorder = self.native.recorder_for(job);
        let (attempt, result) = self.pg_dump.attempt(job, number, recorder.as_deref()).await;
        Tried {
            attempt,
            result,
            engine: group.map(|()| Engine::PgDump),
            fallback: None,
        }
    }

    /// Tells the engines a job has ended (after its last attempt): the native engine takes
    /// a schema dump's archive for its groups.
    pub async fn finished(&self, job: &Job, result: Result<(), &str>) {
        self.native.schema_finished(job, result).await;
    }
}
