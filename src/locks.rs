//! Lock windows: watching the sessions of running dumps, naming who is in their way, and
//! yielding to DDL.
//!
//! One monitor session per run (on the maintenance database: `pg_locks`,
//! `pg_stat_activity` and `pg_blocking_pids()` are cluster-wide) polls a few times a second
//! while dumps are in flight. For each dump it finds the child's backend by database and
//! `application_name` (unique per group and database), and then:
//! - while the backend waits for a lock, records the sessions blocking it, so that a lock
//!   timeout is reported with the pid, user, application, client, state, transaction age and
//!   query of whoever was in the way;
//! - while the backend holds its locks, looks for sessions waiting for a lock that ours blocks
//!   (an `ALTER TABLE`, a `TRUNCATE`); when one has waited longer than `yield_after`, the dump
//!   is told to yield: it is cancelled, its backend terminated (so its locks go at once), and
//!   the group is retried later. A DDL statement therefore waits about `yield_after` behind a
//!   dump, never a whole dump.
//!
//! The monitor's queries take no locks on user tables.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::connect::{application_name, ConnParams};
use crate::report::Session;

/// How often the monitor looks.
const POLL: Duration = Duration::from_millis(200);

/// What the monitor learnt about one attempt.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The dump's backend pid, if it was seen.
    pub backend_pid: Option<i32>,
    /// When the dump's transaction (and snapshot) began, server time, if seen.
    pub snapshot_at: Option<String>,
    /// Time the backend was seen waiting for locks.
    pub lock_wait: Duration,
    /// The latest sessions seen blocking the backend while it waited.
    pub blockers: Vec<Session>,
}

struct Watch {
    database: String,
    application_name: String,
    /// Watch this backend rather than the one found by database and application_name.
    pid: Option<i32>,
    yield_after: Option<Duration>,
    yield_tx: Option<oneshot::Sender<Session>>,
    observed: Observed,
}

#[derive(Default)]
struct Shared {
    watches: HashMap<u64, Watch>,
}

/// The run's lock monitor.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Mutex<Shared>>,
    next_id: Arc<AtomicU64>,
    conn: ConnParams,
    database: String,
    server_version_num: i32,
    _stop: Arc<oneshot::Sender<()>>,
}

/// A dump being watched. Dropping it stops the watch.
pub struct WatchHandle {
    id: u64,
    shared: Arc<Mutex<Shared>>,
    /// Fires with the session to yield to.
    yield_rx: Option<oneshot::Receiver<Session>>,
}

impl WatchHandle {
    /// Resolves with the session to yield to, once one has waited `yield_after` behind the
    /// watched backend. Taken once; the watch goes on until [`finish`](Self::finish).
    pub fn yielded(&mut self) -> oneshot::Receiver<Session> {
        self.yield_rx.take().expect("yielded() is taken once")
    }

    /// Stops watching and returns what was seen.
    pub fn finish(self) -> Observed {
        let mut g = self.shared.lock().expect("monitor state");
        g.watches
            .remove(&self.id)
            .map(|w| w.observed)
            .unwrap_or_default()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if let Ok(mut g) = self.shared.lock() {
            g.watches.remove(&self.id);
        }
    }
}

impl Monitor {
    /// Starts the monitor task. It connects lazily and reconnects after errors, so a monitor
    /// problem never fails a dump (it only loses diagnostics).
    pub fn start(conn: ConnParams, database: String, server_version_num: i32) -> Monitor {
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let m = Monitor {
            shared: shared.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            conn,
            database,
            server_version_num,
            _stop: Arc::new(stop_tx),
        };
        let me = m.clone_inner();
        tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
                let elapsed = last.elapsed();
                last = Instant::now();
                if me.shared.lock().expect("monitor state").watches.is_empty() {
                    continue;
                }
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = me
                        .conn
                        .connect(&me.database, &application_name("monitor"))
                        .await
                        .ok();
                }
                if let Some(c) = &client {
                    if let Err(e) = me.tick(c, elapsed).await {
                        tracing::debug!("lock monitor: {}", crate::text::pg_error_text(&e));
                    }
                }
            }
        });
        m
    }

    fn clone_inner(&self) -> MonitorInner {
        MonitorInner {
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            database: self.database.clone(),
            server_version_num: self.server_version_num,
        }
    }

    /// Starts watching the dump whose backend has this database and application_name.
    pub fn watch(
        &self,
        database: &str,
        application_name: &str,
        yield_after: Option<Duration>,
    ) -> WatchHandle {
        self.insert(database, application_name, None, yield_after)
    }

    /// Starts watching one backend of ours by pid (a session counting rows, say).
    pub fn watch_pid(&self, pid: i32, yield_after: Option<Duration>) -> WatchHandle {
        self.insert("", "", Some(pid), yield_after)
    }

    fn insert(
        &self,
        database: &str,
        application_name: &str,
        pid: Option<i32>,
        yield_after: Option<Duration>,
    ) -> WatchHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.lock().expect("monitor state").watches.insert(
            id,
            Watch {
                database: database.to_string(),
                application_name: application_name.to_string(),
                pid,
                yield_after,
                yield_tx: Some(tx),
                observed: Observed::default(),
            },
        );
        WatchHandle {
            id,
            shared: self.shared.clone(),
            yield_rx: Some(rx),
        }
    }

    /// Sessions holding or waiting for a lock that conflicts with ACCESS SHARE on any of
    /// these tables of `database`: who was in the way of a dump that timed out.
    pub async fn conflicting_sessions(&self, database: &str, table_oids: &[u32]) -> Vec<Session> {
        let Ok(c) = self
            .conn
            .connect(&self.database, &application_name("monitor"))
            .await
        else {
            return Vec::new();
        };
        conflicting_on(&c, database, table_oids).await
    }

    /// Cancels the running statement of a backend of ours (its session stays usable).
    pub async fn cancel(&self, pid: i32) {
        self.signal_backend("pg_cancel_backend", pid).await;
    }

    /// Terminates a backend of ours (after a yield), so its locks go at once.
    pub async fn terminate(&self, pid: i32) {
        self.signal_backend("pg_terminate_backend", pid).await;
    }

    async fn signal_backend(&self, function: &str, pid: i32) {
        let Ok(c) = self
            .conn
            .connect(&self.database, &application_name("monitor"))
            .await
        else {
            return;
        };
        let sql = format!("SELECT pg_catalog.{function}($1)");
        if let Err(e) = c.execute(&sql, &[&pid]).await {
            tracing::debug!("{function}({pid}): {}", crate::text::pg_error_text(&e));
        }
    }
}

/// Sessions holding or waiting for ACCESS EXCLUSIVE on any of these tables of `database`,
/// asked on `c` (any session: pg_locks is not subject to its snapshot).
pub async fn conflicting_on(
    c: &tokio_postgres::Client,
    database: &str,
    table_oids: &[u32],
) -> Vec<Session> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS}, NULL::float8, string_agg(DISTINCT l.mode, ',')
           FROM pg_catalog.pg_locks l
           JOIN pg_catalog.pg_stat_activity b ON b.pid = l.pid
          WHERE l.locktype = 'relation'
            AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = $1)
            AND l.relation = ANY($2)
            AND l.mode = 'AccessExclusiveLock'
            AND b.pid <> pg_catalog.pg_backend_pid()
          GROUP BY {SESSION_GROUP}"
    );
    match c.query(&sql, &[&database, &table_oids]).await {
        Ok(rows) => rows.iter().map(session_from_row).collect(),
        Err(e) => {
            tracing::debug!("blocker diagnosis: {}", crate::text::pg_error_text(&e));
            Vec::new()
        }
    }
}

/// A backend of ours as `pg_stat_activity` shows it.
#[derive(Clone)]
struct Backend {
    pid: i32,
    /// When its transaction (and snapshot) began, server time.
    xact_start: Option<String>,
    /// Whether it waits for a lock.
    waiting: bool,
}

/// The watched backends found by one look.
#[derive(Default)]
struct Backends {
    by_name: HashMap<(String, String), Backend>,
    by_pid: HashMap<i32, Backend>,
}

struct MonitorInner {
    shared: Arc<Mutex<Shared>>,
    conn: ConnParams,
    database: String,
    server_version_num: i32,
}

const SESSION_COLUMNS: &str =
    "b.pid, b.usename::text, b.application_name, b.client_addr::text, b.state, \
     extract(epoch FROM now() - b.xact_start)::float8, left(b.query, 300)";
const SESSION_GROUP: &str =
    "b.pid, b.usename, b.application_name, b.client_addr, b.state, b.xact_start, b.query";

fn session_from_row(r: &tokio_postgres::Row) -> Session {
    Session {
        pid: r.get(0),
        user: r.get(1),
        application_name: r.get(2),
        client_addr: r.get(3),
        state: r.get(4),
        xact_age_s: r.get(5),
        query: r.get::<_, Option<String>>(6).map(|q| shorten(&q)),
        waited_s: r.get(7),
        lock_mode: r.get(8),
    }
}

/// Collapses whitespace and cuts a statement to a readable length.
fn shorten(q: &str) -> String {
    let one: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 200 {
        format!("{}…", one.chars().take(200).collect::<String>())
    } else {
        one
    }
}

impl MonitorInner {
    /// One look at every watched backend: where it is, whether it waits for a lock (then
    /// who blocks it), and whether a session has waited long enough behind it to yield.
    async fn tick(
        &self,
        c: &tokio_postgres::Client,
        elapsed: Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let wanted: Vec<(u64, String, String, Option<i32>)> = {
            let g = self.shared.lock().expect("monitor state");
            g.watches
                .iter()
                .map(|(id, w)| (*id, w.database.clone(), w.application_name.clone(), w.pid))
                .collect()
        };
        let seen = self.find_backends(c, &wanted).await?;
        let ours: Vec<i32> = seen.by_pid.keys().copied().collect();
        for (id, db, app, pid) in wanted {
            let found = match pid {
                Some(pid) => seen.by_pid.get(&pid),
                None => seen.by_name.get(&(db, app)),
            };
            let Some(b) = found.cloned() else {
                continue;
            };
            if !self.observe(id, &b, elapsed) {
                continue;
            }
            if b.waiting {
                self.record_blockers(c, id, b.pid).await?;
            } else {
                self.yield_if_waited_on(c, id, b.pid, &ours).await?;
            }
        }
        Ok(())
    }

    /// The backends of the watched dumps, by (database, application_name) and by pid.
    async fn find_backends(
        &self,
        c: &tokio_postgres::Client,
        wanted: &[(u64, String, String, Option<i32>)],
    ) -> Result<Backends, tokio_postgres::Error> {
        let names: Vec<String> = wanted.iter().map(|w| w.2.clone()).collect();
        let pids: Vec<i32> = wanted.iter().filter_map(|w| w.3).collect();
        let rows = c
            .query(
                "SELECT a.pid, a.datname::text, a.application_name,
                        to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        coalesce(a.wait_event_type = 'Lock', false)
                   FROM pg_catalog.pg_stat_activity a
                  WHERE (a.application_name = ANY($1) OR a.pid = ANY($2))
                    AND a.backend_type = 'client backend'
                  ORDER BY a.backend_start",
                &[&names, &pids],
            )
            .await?;
        let mut seen = Backends::default();
        for r in &rows {
            let db: Option<String> = r.get(1);
            let app: Option<String> = r.get(2);
            let b = Backend {
                pid: r.get(0),
                xact_start: r.get(3),
                waiting: r.get(4),
            };
            seen.by_pid.insert(b.pid, b.clone());
            // The newest backend wins (rows come oldest first).
            if let (Some(db), Some(app)) = (db, app) {
                seen.by_name.insert((db, app), b);
            }
        }
        Ok(seen)
    }

    /// Records what was seen of watch `id`'s backend; false if the watch has ended.
    fn observe(&self, id: u64, b: &Backend, elapsed: Duration) -> bool {
        let mut g = self.shared.lock().expect("monitor state");
        let Some(w) = g.watches.get_mut(&id) else {
            return false;
        };
        w.observed.backend_pid = Some(b.pid);
        if w.observed.snapshot_at.is_none() {
            w.observed.snapshot_at = b.xact_start.clone();
        }
        if b.waiting {
            w.observed.lock_wait += elapsed;
        }
        true
    }

    /// Records the sessions blocking a backend that waits for a lock.
    async fn record_blockers(
        &self,
        c: &tokio_postgres::Client,
        id: u64,
        pid: i32,
    ) -> Result<(), tokio_postgres::Error> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS}, NULL::float8,
                    (SELECT string_agg(DISTINCT l.mode, ',') FROM pg_catalog.pg_locks l
                      WHERE l.pid = b.pid AND l.locktype = 'relation' AND l.granted)
               FROM pg_catalog.pg_stat_activity b
              WHERE b.pid = ANY(pg_catalog.pg_blocking_pids($1))"
        );
        let blockers: Vec<Session> = c
            .query(&sql, &[&pid])
            .await?
            .iter()
            .map(session_from_row)
            .collect();
        if !blockers.is_empty() {
            let mut g = self.shared.lock().expect("monitor state");
            if let Some(w) = g.watches.get_mut(&id) {
                w.observed.blockers = blockers;
            }
        }
        Ok(())
    }

    /// Tells watch `id` to yield when a session not of ours has waited `yield_after` for a
    /// lock its backend holds.
    async fn yield_if_waited_on(
        &self,
        c: &tokio_postgres::Client,
        id: u64,
        pid: i32,
        ours: &[i32],
    ) -> Result<(), tokio_postgres::Error> {
        let yield_after = {
            let g = self.shared.lock().expect("monitor state");
            match g.watches.get(&id) {
                Some(w) if w.yield_tx.is_some() => w.yield_after,
                _ => None,
            }
        };
        let Some(yield_after) = yield_after else {
            return Ok(());
        };
        let waitstart = if self.server_version_num >= 140000 {
            "coalesce(l.waitstart, b.state_change)"
        } else {
            "b.state_change"
        };
        let sql = format!(
            "SELECT {SESSION_COLUMNS},
                    extract(epoch FROM now() - {waitstart})::float8, l.mode
               FROM pg_catalog.pg_locks l
               JOIN pg_catalog.pg_stat_activity b ON b.pid = l.pid
              WHERE NOT l.granted AND b.pid <> ALL($2)
                AND $1 = ANY(pg_catalog.pg_blocking_pids(l.pid))
              ORDER BY 8 DESC"
        );
        let waiters: Vec<Session> = c
            .query(&sql, &[&pid, &ours])
            .await?
            .iter()
            .map(session_from_row)
            .collect();
        if let Some(first) = waiters
            .into_iter()
            .find(|s| s.waited_s.is_some_and(|w| w >= yield_after.as_secs_f64()))
        {
            let mut g = self.shared.lock().expect("monitor state");
            if let Some(tx) = g.watches.get_mut(&id).and_then(|w| w.yield_tx.take()) {
                let _ = tx.send(first);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_describe_themselves() {
        let s = Session {
            pid: 42,
            user: Some("app".into()),
            application_name: Some("psql".into()),
            client_addr: Some("10.0.0.5".into()),
            state: Some("idle in transaction".into()),
            xact_age_s: Some(12.5),
            waited_s: None,
            lock_mode: Some("AccessExclusiveLock".into()),
            query: Some(shorten("ALTER   TABLE\n t7 ADD c int")),
        };
        let d = s.describe();
        for part in [
            "pid 42",
            "user app",
            "10.0.0.5",
            "idle in transaction",
            "12.5s",
            "ALTER TABLE t7 ADD c int",
        ] {
            assert!(d.contains(part), "{d}");
        }
    }
}
