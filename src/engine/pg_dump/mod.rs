//! The pg_dump engine: a `pg_dump` (or `pg_dumpall`) child per attempt, in a snapshot
//! exported by a session of ours that locks nothing ([`super::snapshot`]), watched by the
//! run's lock monitor. After a group's dump, its rows are counted in the same snapshot.
//!
//! A child's failure is known only by its exit status and what it printed: this module is
//! the one place that reads pg_dump's stderr to tell a lock timeout, a lost connection or a
//! table that vanished under it from other failures.
//!
//! Groups follow their tables by oid ([`crate::engine::follow`]). pg_dump takes names, and
//! matches `-t` against the catalog as its snapshot sees it, then locks each table by name —
//! later, in the latest catalog. So the names are resolved in the exported snapshot itself
//! (what pg_dump will match), and after a successful dump they are resolved again outside
//! it: a table renamed between the snapshot and pg_dump's lock may have left its name to
//! another table, which pg_dump then locked instead; such a dump is discarded and the group
//! tried again. A table dropped in that window makes pg_dump fail (`relation … does not
//! exist`): also tried again, with the names resolved anew.

mod child;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::connect::application_name;
use crate::engine::job::{
    create_partial, remove_quietly, AttemptError, Contents, Job, Recording, Settings, Shared,
};
use crate::engine::snapshot::{Exported, Snapshots};
use crate::report::{Attempt, Kind, SnapshotInfo};
use crate::store;
use child::{ChildError, DumpSettings};

/// Work done in a dump's exported snapshot, on the exporting session, while pg_dump runs:
/// how the native engine reads the catalog as the schema archive sees it.
pub trait InSnapshot: Send + Sync {
    fn record<'a>(&'a self, client: &'a Client) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

    /// The archive's TOC, read from pg_dump's output as it streamed by to the encryption
    /// (an encrypted archive is not read back from its file).
    fn archive_toc(&self, toc: Result<crate::engine::native::archive::Toc, String>);
}

/// The pg_dump engine of a run.
pub struct PgDump {
    settings: DumpSettings,
    maintenance: String,
    snapshots: Snapshots,
    count_rows: bool,
    shared: Arc<Shared>,
}

impl PgDump {
    pub fn new(settings: &Settings, shared: Arc<Shared>) -> Self {
        PgDump {
            settings: DumpSettings {
                tools: settings.tools.clone(),
                conn: settings.conn.clone(),
                statistics: settings.statistics,
                seal: settings.seal.clone(),
            },
            maintenance: settings.maintenance.clone(),
            snapshots: Snapshots::new(settings.conn.clone(), settings.jobs),
            count_rows: settings.count_rows,
            shared,
        }
    }

    /// One attempt: write the `.ing`, watch the lock window, commit or clean up. With
    /// `in_snapshot`, that work runs in the dump's snapshot while the child runs.
    pub async fn attempt(
        &self,
        job: &mut Job,
        number: u32,
        in_snapshot: Option<&dyn InSnapshot>,
    ) -> (Attempt, Result<store::Finished, AttemptError>) {
        let mut rec = Recording::start(number);
        let result = self.dump(job, &mut rec.attempt, in_snapshot).await;
        (rec.finish(&result), result)
    }

    async fn dump(
        &self,
        job: &mut Job,
        a: &mut Attempt,
        in_snapshot: Option<&dyn InSnapshot>,
    ) -> Result<store::Finished, AttemptError> {
        let database = job
            .database
            .clone()
            .unwrap_or_else(|| self.maintenance.clone());
        let database = database.as_str();
        let app = application_name(&job.group);
        let partial = create_partial(job)?;
        // Globals take no table locks: nothing to watch.
        let mut watch = (job.kind != Kind::Globals)
            .then(|| self.shared.monitor.watch(database, &app, job.yield_after));
        let cancel = self.shared.cancelled(watch.as_mut().map(|w| w.yielded()));
        let exported = match job.kind {
            Kind::Globals => None,
            _ => self.export(job, database).await,
        };
        a.snapshot = exported.as_ref().map(|e| e.info.clone());
        if let (Some(e), Kind::Tables) = (&exported, job.kind) {
            if let Err(err) = follow_in_snapshot(job, e).await {
                let e = exported.expect("matched above");
                self.snapshots.release(e).await;
                remove_quietly(&partial);
                return Err(err);
            }
        }
        let req = child::DumpRequest {
            kind: &job.contents,
            compression: job.compression,
            database,
            application_name: &app,
            lock_wait_timeout: job.lock_wait_timeout,
            snapshot: exported.as_ref().map(|e| e.id.as_str()),
            out: &partial,
            seal: self.settings.seal.as_ref(),
            read_toc: in_snapshot.is_some(),
        };
        let child = match (in_snapshot, &exported) {
            (Some(work), Some(e)) => {
                let (child, ()) = tokio::join!(
                    child::run_child(&self.settings, &req, cancel),
                    work.record(e.client())
                );
                child
            }
            _ => child::run_child(&self.settings, &req, cancel).await,
        };
        if let Some(e) = exported {
            if let (Ok(Ok(_)), Contents::Tables(pairs), true) =
                (&child, &job.contents, self.count_rows)
            {
                a.row_counts = self
                    .count_rows(job, &e, pairs)
                    .await
                    .map(|counts| job.tables.iter().cloned().zip(counts).collect());
            }
            self.snapshots.release(e).await;
        }
        let observed = watch.map(|w| w.finish()).unwrap_or_default();
        if a.snapshot.is_none() {
            a.snapshot = observed.snapshot_at.clone().map(|t| SnapshotInfo {
                taken_at: t,
                wal_lsn: None,
            });
        }
        a.lock_wait_ms = observed.lock_wait.as_millis() as u64;
        let outcome = match child {
            Ok(Ok(output)) => {
                let warnings = output.warnings;
                a.warnings = (!warnings.is_empty()).then_some(warnings);
                if let (Some(work), Some(toc)) = (in_snapshot, output.toc) {
                    work.archive_toc(toc);
                }
                match self.confirm_names(job, database).await {
                    Ok(()) => commit(&partial, job).await,
                    Err(e) => Err(e),
                }
            }
            Err(cancel) => {
                self.shared
                    .after_cancel(job, observed.backend_pid, &cancel)
                    .await;
                Err(AttemptError::Cancelled(cancel))
            }
            Ok(Err(e)) => {
                let mut e = classify(job, &partial, e);
                self.shared.diagnose(job, &observed, &mut e).await;
                Err(e)
            }
        };
        if outcome.is_err() {
            remove_quietly(&partial);
        }
        outcome
    }

    /// The group's snapshot, exported by a session of ours that locks nothing; without one
    /// pg_dump takes its own.
    async fn export(&self, job: &Job, database: &str) -> Option<Exported> {
        match self.snapshots.export(database).await {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::debug!(
                    "no exported snapshot for {}: {e}",
                    crate::text::printable(&job.group)
                );
                None
            }
        }
    }

    /// Counts the group's rows in its snapshot. Counting takes ACCESS SHARE again: it yields
    /// to DDL like the dump did. A failure costs only the counts.
    async fn count_rows(
        &self,
        job: &Job,
        e: &Exported,
        tables: &[(String, String)],
    ) -> Option<Vec<i64>> {
        let monitor = &self.shared.monitor;
        let mut w = monitor.watch_pid(e.pid, job.yield_after);
        let counted = tokio::select! {
            r = self.snapshots.count_rows(e, tables, job.lock_wait_timeout) => r.map_err(|e| e.to_string()),
            Ok(s) = w.yielded() => {
                monitor.cancel(e.pid).await;
                Err(format!("cancelled, yielding to a waiting session: {}", s.describe()))
            }
        };
        drop(w);
        counted
            .inspect_err(|err| {
                tracing::warn!(
                    "{}: rows not counted: {err}",
                    crate::text::printable(&job.group)
                )
            })
            .ok()
    }
}

impl PgDump {
    /// After a group's pg_dump: whether each name it was given still belongs to the group's
    /// table (pg_dump held its lock by that name until it exited, so a name that moved to
    /// another table means pg_dump may have dumped that one). A table dropped since is no
    /// reason to doubt the dump.
    async fn confirm_names(&self, job: &Job, database: &str) -> Result<(), AttemptError> {
        let Contents::Tables(pairs) = &job.contents else {
            return Ok(());
        };
        let now = match self.snapshots.resolve(database, &job.table_oids).await {
            Ok(now) => now,
            Err(e) => return Err(AttemptError::ConnectionLost(e.to_string())),
        };
        let moved = job.table_oids.iter().zip(pairs).find_map(|(oid, was)| {
            let is = now.get(oid)?;
            (is != was).then(|| {
                format!(
                    "{} was renamed to {} as pg_dump locked it by name",
                    crate::text::display_name(&was.0, &was.1),
                    crate::text::display_name(&is.0, &is.1)
                )
            })
        });
        match moved {
            Some(why) => Err(AttemptError::TableChanged(why)),
            None => Ok(()),
        }
    }
}

/// Makes the job's tables those its oids are in the exported snapshot — the catalog pg_dump
/// will match `-t` against.
async fn follow_in_snapshot(job: &mut Job, e: &Exported) -> Result<(), AttemptError> {
    let names = crate::engine::follow::resolve(e.client(), &job.table_oids)
        .await
        .map_err(|err| AttemptError::ConnectionLost(crate::text::pg_error_text(&err)))?;
    job.follow(&names)
}

/// fsyncs and renames the finished `.ing` on a blocking thread.
async fn commit(partial: &std::path::Path, job: &Job) -> Result<store::Finished, AttemptError> {
    let (p, f) = (partial.to_path_buf(), job.path.clone());
    let cannot =
        |why: String| AttemptError::Other(format!("cannot finish {}: {why}", job.path.display()));
    match tokio::task::spawn_blocking(move || store::commit(&p, &f)).await {
        Ok(Ok(finished)) => Ok(finished),
        Ok(Err(e)) => Err(cannot(crate::text::io_message(&e))),
        Err(e) => Err(cannot(e.to_string())),
    }
}

/// What a failed child's exit and stderr say: a lock timeout, a lost connection, a full
/// disk, or something retrying will not mend.
fn classify(job: &Job, partial: &std::path::Path, e: ChildError) -> AttemptError {
    let text = e.to_string();
    if let ChildError::Output { source, .. } = &e {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return AttemptError::DiskFull {
                path: partial.to_path_buf(),
                detail: text,
            };
        }
    }
    let ChildError::Failed { .. } = e else {
        return AttemptError::Other(text);
    };
    if is_lock_failure(&text) {
        AttemptError::lock_timeout(job, text)
    } else if is_table_change(&text) {
        AttemptError::TableChanged(text)
    } else if is_connection_failure(&text) {
        AttemptError::ConnectionLost(text)
    } else if text.contains("No space left on device") {
        AttemptError::DiskFull {
            path: partial.to_path_buf(),
            detail: text,
        }
    } else {
        AttemptError::Other(text)
    }
}

/// Whether a pg_dump failure was about locks (a lock wait that timed out, or NOWAIT).
fn is_lock_failure(stderr: &str) -> bool {
    stderr.contains("could not obtain lock")
        || stderr.contains("lock timeout")
        || (stderr.contains("statement timeout") && stderr.contains("LOCK TABLE"))
}

/// Whether pg_dump failed because a table was dropped or renamed between its catalog read
/// and its lock (or its reading of the table's definition): another attempt, with a catalog
/// read anew, will not meet it. The schema dump of a database under DDL fails so; without
/// retrying it the native engine would be lost for the whole database.
fn is_table_change(stderr: &str) -> bool {
    (stderr.contains("relation") && stderr.contains("does not exist"))
        || stderr.contains("could not open relation with OID")
        || stderr.contains("cache lookup failed")
        || stderr.contains("no matching tables were found")
}

/// Whether a failure was the connection going away or being refused (a server restart, a
/// terminated backend) — worth another attempt — rather than something retrying cannot mend
/// (a database that no longer exists, a failed authentication, a permission).
fn is_connection_failure(stderr: &str) -> bool {
    const PERMANENT: [&str; 5] = [
        "does not exist",
        "password authentication failed",
        "no pg_hba.conf entry",
        "permission denied",
        "authentication failed",
    ];
    const TRANSIENT: [&str; 12] = [
        "server closed the connection unexpectedly",
        "terminating connection due to administrator command",
        "Connection refused",
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "could not receive data from server",
        "no connection to the server",
        "connection to server was lost",
        "SSL SYSCALL error",
        // tokio-postgres (the native engine's sessions): a backend that goes away while
        // sending COPY data often closes without an error message.
        "connection closed",
        "error communicating with the server",
    ];
    !PERMANENT.iter().any(|p| stderr.contains(p)) && TRANSIENT.iter().any(|t| stderr.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_failures_are_recognised() {
        let timeout =
            "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n\
                       pg_dump: detail: Query was: LOCK TABLE public.t7 IN ACCESS SHARE MODE";
        assert!(is_lock_failure(timeout));
        assert!(is_lock_failure(
            "pg_dump: error: could not obtain lock on relation \"t\""
        ));
        assert!(!is_lock_failure(
            "pg_dump: error: permission denied for table t"
        ));
    }

    #[test]
    fn tables_that_vanished_under_pg_dump_are_recognised() {
        for stderr in [
            "pg_dump: error: query failed: ERROR:  relation \"public.test_7\" does not exist\n\
             pg_dump: detail: Query was: LOCK TABLE public.test_7 IN ACCESS SHARE MODE",
            "pg_dump: error: query failed: ERROR:  could not open relation with OID 16421",
            "pg_dump: error: query failed: ERROR:  cache lookup failed for relation 16421",
            "pg_dump: error: no matching tables were found for pattern \"public.t\"",
        ] {
            assert!(is_table_change(stderr), "{stderr}");
            assert!(!is_lock_failure(stderr), "{stderr}");
        }
        assert!(!is_table_change(
            "pg_dump: error: connection to server failed: FATAL:  database \"x\" does not exist"
        ));
        assert!(!is_table_change(
            "pg_dump: error: permission denied for table t"
        ));
    }

    #[test]
    fn connection_failures_are_recognised() {
        assert!(is_connection_failure(
            "pg_dump: error: query failed: server closed the connection unexpectedly"
        ));
        assert!(is_connection_failure(
            "FATAL:  terminating connection due to administrator command"
        ));
        assert!(is_connection_failure(
            "connection to server at \"127.0.0.1\", port 5 failed: Connection refused"
        ));
        // tokio-postgres, when a backend dies mid-COPY.
        assert!(is_connection_failure("connection closed"));
        assert!(!is_connection_failure(
            "connection to server failed: FATAL:  database \"x\" does not exist"
        ));
        assert!(!is_connection_failure(
            "FATAL:  password authentication failed for user \"bk\""
        ));
    }
}
