//! What the scheduler and the engines share: the job to do, how an attempt went, why it
//! failed, and what every engine of a run needs of the run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::{oneshot, watch, Semaphore};

use crate::config::Engine;
use crate::locks::{Monitor, Observed};
use crate::report::{now_rfc3339, Attempt, Kind, Outcome, Session};
use crate::store;

/// What a job's file is to contain.
#[derive(Debug, Clone)]
pub enum Contents {
    /// `pg_dump -Fc` of these (schema, table) pairs.
    Tables(Vec<(String, String)>),
    /// `pg_dump -Fc` of a whole database without the data of these (schema, table) pairs —
    /// every table of the database: the DDL of everything, plus the values of sequences and
    /// the contents of materialized views, which no group's dump carries.
    Schema { exclude_data: Vec<String> },
    /// `pg_dump -Fc --schema-only` of a whole database: the TOC the native engine needs when
    /// the run takes no schema dump of its own.
    SchemaOnly,
    /// `pg_dumpall --globals-only`.
    Globals { role_passwords: bool },
}

/// One unit of work: a file to make, tried up to `1 + lock_retries` times.
pub struct Job {
    pub kind: Kind,
    pub database: Option<String>,
    pub group: String,
    /// The tables' display names (`schema.table`).
    pub tables: Vec<String>,
    pub table_oids: Vec<u32>,
    /// What its file is to contain.
    pub contents: Contents,
    pub path: PathBuf,
    pub lock_wait_timeout: Duration,
    pub yield_after: Option<Duration>,
    /// The engine asked for. The native engine hands a group it cannot write to pg_dump for
    /// the rest of the run.
    pub engine: Engine,
    /// How its archive's data is compressed.
    pub compression: crate::compression::Compression,
    /// Planned tables found dropped or renamed by an attempt ([`super::follow`]); `tables`,
    /// `table_oids` and `contents` then name the tables as they are now.
    pub changes: Vec<crate::report::TableChange>,
    /// The plan expects a table to be copied by several sessions at once (one estimated at
    /// least `backup.split_above`): an attempt takes every slot, for a session each.
    pub expects_split: bool,
}

impl Job {
    /// The slots (of `jobs`) an attempt takes: one, or all of them for a job with a table
    /// to split.
    pub fn slots(&self, jobs: usize) -> u32 {
        if self.expects_split {
            u32::try_from(jobs.max(1)).unwrap_or(1)
        } else {
            1
        }
    }

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
            Cancel::Signal(sig) => write!(f, "interrupted by {}", crate::exit::signal_name(*sig)),
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
    /// A table was dropped or renamed between resolving its name and locking it: the next
    /// attempt resolves the names again.
    #[error("{0}")]
    TableChanged(String),
    /// Every table of the group was dropped after the plan: there is nothing to dump.
    #[error("every table of the group was dropped after the plan")]
    Gone,
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
            AttemptError::TableChanged(_) => Outcome::TableChanged,
            AttemptError::Gone => Outcome::Gone,
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
    /// The run's slots (`jobs`): an attempt holds one or more; the native engine takes
    /// spare ones for the sessions of a split table.
    pub slots: Arc<Semaphore>,
    /// How many slots there are.
    pub jobs: usize,
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
        if !blockers.is_empty() {
            // Named where the timeout happened.
            return;
        }
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

/// An attempt's record, from its start to [`Recording::finish`].
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
                AttemptError::Cancelled(Cancel::Yield(s)) => a.yielded_to = Some(s.clone()),
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
    pub tools: crate::tools::Tools,
    pub conn: crate::connect::ConnParams,
    pub maintenance: String,
    /// Jobs at once: sessions kept idle, files written at once.
    pub jobs: usize,
    pub count_rows: bool,
    /// Archives carry planner statistics (`backup.statistics`).
    pub statistics: bool,
    /// Tables of at least this heap size are split (`backup.split_above`).
    pub split_above: Option<u64>,
    pub root: PathBuf,
    pub run_id: String,
    /// The run's defaults, for the schema dumps the native engine takes itself.
    pub lock_wait_timeout: Duration,
    pub yield_after: Option<Duration>,
    /// `[encryption]`: every file is encrypted to these recipients as it is written.
    pub seal: Option<crate::crypt::Recipients>,
}
