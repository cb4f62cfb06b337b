//! Watching table locks while a contender runs: `pg_locks` is polled every few milliseconds on
//! a session of our own, and for each workload table the continuous stretches during which a
//! backup session (application_name `pg_groupdump/…` or `pg_dump`, which is also what the
//! workers of `pg_dump -j` call themselves) held a granted lock on it are recorded. A stretch
//! runs from the first poll that saw the lock to the last poll that still saw it, so it is
//! short by up to one poll interval (reported as the resolution). Polls are at least 3 query
//! durations apart, so the poller uses at most a quarter of a core (its backend's CPU time is
//! reported with each run).
//!
//! Each stretch is recorded twice: over all backup sessions, and leaving out pg_groupdump's
//! schema dump (`pg_groupdump/_schema`, a `pg_dump --schema-only` that locks every table of the
//! database while it runs). The second is the lock a table gets because its own data is being
//! dumped: its group's dump (and row count) with pg_groupdump, the whole dump with pg_dump.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const QUERY: &str = "SELECT l.relation::oid::int8, a.application_name = 'pg_groupdump/_schema' \
     FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'relation' AND l.granted AND l.database = $1::int8::oid \
       AND l.pid <> pg_catalog.pg_backend_pid() \
       AND (a.application_name LIKE 'pg\\_groupdump/%' OR a.application_name = 'pg_dump')";

/// What a recording found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LockStats {
    /// The longest continuous lock on any one table, in seconds.
    pub longest_s: f64,
    /// The table it was on.
    pub longest_table: Option<String>,
    /// How many different workload tables were seen locked.
    pub tables_seen: usize,
    /// The same three, leaving out pg_groupdump's schema dump: the longest lock a table was
    /// held under because its own data was being dumped.
    pub longest_data_s: f64,
    pub longest_data_table: Option<String>,
    pub tables_seen_data: usize,
    /// How many polls were made, and their median interval (the resolution), in ms.
    pub polls: u64,
    pub median_interval_ms: f64,
}

/// Per table: the stretch in progress and the longest one so far.
#[derive(Default)]
struct Stretches {
    /// The start and last sighting of the stretch in progress.
    open: HashMap<u32, (Instant, Instant)>,
    longest: HashMap<u32, Duration>,
}

impl Stretches {
    /// One poll's sightings, taken at `now`.
    fn saw(&mut self, seen: &HashSet<u32>, now: Instant) {
        let gone: Vec<u32> = self
            .open
            .keys()
            .filter(|o| !seen.contains(o))
            .copied()
            .collect();
        for o in gone {
            self.close(o);
        }
        for &o in seen {
            self.open.entry(o).or_insert((now, now)).1 = now;
        }
    }

    fn close_all(&mut self) {
        let open: Vec<u32> = self.open.keys().copied().collect();
        for o in open {
            self.close(o);
        }
    }

    /// The longest stretch (table, duration).
    fn best(&self) -> Option<(u32, Duration)> {
        self.longest
            .iter()
            .max_by_key(|(_, d)| **d)
            .map(|(o, d)| (*o, *d))
    }

    fn close(&mut self, oid: u32) {
        if let Some((first, last)) = self.open.remove(&oid) {
            let d = last - first;
            let e = self.longest.entry(oid).or_default();
            if d > *e {
                *e = d;
            }
        }
    }
}

#[derive(Default)]
struct Recording {
    /// Locks of any backup session.
    all: Stretches,
    /// Locks of backup sessions other than pg_groupdump's schema dump.
    data: Stretches,
    polls: u64,
    intervals: Vec<f64>,
    last_poll: Option<Instant>,
}

struct Shared {
    recording: Mutex<Option<Recording>>,
    /// The pid of the polling session's backend.
    backend: Mutex<Option<i32>>,
    stop: AtomicBool,
}

/// A running poller for one database.
pub struct LockWatch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    names: Arc<HashMap<u32, String>>,
}

impl LockWatch {
    /// Starts polling the locks of database `db_oid` on `client`'s server every `every`; only
    /// relations in `names` (the workload's tables) count.
    pub fn start(
        config: tokio_postgres::Config,
        db_oid: u32,
        names: HashMap<u32, String>,
        every: Duration,
    ) -> anyhow::Result<LockWatch> {
        let shared = Arc::new(Shared {
            recording: Mutex::new(None),
            backend: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let relevant: HashSet<u32> = names.keys().copied().collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let client = match config.connect(tokio_postgres::NoTls).await {
                        Ok((client, conn)) => {
                            tokio::spawn(conn);
                            client
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let stmt = match client.prepare(QUERY).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let backend: i32 = match client
                        .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
                        .await
                    {
                        Ok(r) => r.get(0),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    *shared.backend.lock().unwrap() = Some(backend);
                    let _ = ready_tx.send(Ok(()));
                    let db = db_oid as i64;
                    while !shared.stop.load(Ordering::Relaxed) {
                        let active = shared.recording.lock().unwrap().is_some();
                        if !active {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        let asked = Instant::now();
                        let rows = match client.query(&stmt, &[&db]).await {
                            Ok(r) => r,
                            Err(e) => {
                                eprintln!("bench: lock poll failed: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        let now = Instant::now();
                        let mut seen: HashSet<u32> = HashSet::new();
                        let mut seen_data: HashSet<u32> = HashSet::new();
                        for r in &rows {
                            let oid = r.get::<_, i64>(0) as u32;
                            if !relevant.contains(&oid) {
                                continue;
                            }
                            seen.insert(oid);
                            if !r.get::<_, bool>(1) {
                                seen_data.insert(oid);
                            }
                        }
                        if let Some(rec) = shared.recording.lock().unwrap().as_mut() {
                            if let Some(prev) = rec.last_poll {
                                rec.intervals.push((now - prev).as_secs_f64() * 1000.0);
                            }
                            rec.last_poll = Some(now);
                            rec.polls += 1;
                            rec.all.saw(&seen, now);
                            rec.data.saw(&seen_data, now);
                        }
                        // pg_locks is not free: with 10 000 locks held a poll takes tens of
                        // milliseconds of server CPU. Wait at least 3 times as long as the poll
                        // took, so polling never takes more than a quarter of a core.
                        tokio::time::sleep(every.max((now - asked) * 3)).await;
                    }
                });
            })
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("lock poller thread died"))??;
        Ok(LockWatch {
            shared,
            thread: Some(thread),
            names: Arc::new(names),
        })
    }

    /// The pid of the polling session's backend (to measure what polling costs the server).
    pub fn backend_pid(&self) -> Option<i32> {
        *self.shared.backend.lock().unwrap()
    }

    /// Starts a new recording.
    pub fn begin(&self) {
        *self.shared.recording.lock().unwrap() = Some(Recording::default());
    }

    /// Ends the recording (after one more poll, which sees the last locks gone) and returns
    /// what it found.
    pub fn end(&self) -> LockStats {
        let asked = Instant::now();
        loop {
            let done = self
                .shared
                .recording
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|r| r.last_poll)
                .is_some_and(|t| t > asked);
            if done || asked.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut rec = self
            .shared
            .recording
            .lock()
            .unwrap()
            .take()
            .unwrap_or_default();
        rec.all.close_all();
        rec.data.close_all();
        let best = rec.all.best();
        let best_data = rec.data.best();
        let mut iv = rec.intervals.clone();
        iv.sort_by(|a, b| a.total_cmp(b));
        LockStats {
            longest_s: best.map(|(_, d)| d.as_secs_f64()).unwrap_or(0.0),
            longest_table: best.and_then(|(o, _)| self.names.get(&o).cloned()),
            tables_seen: rec.all.longest.len(),
            longest_data_s: best_data.map(|(_, d)| d.as_secs_f64()).unwrap_or(0.0),
            longest_data_table: best_data.and_then(|(o, _)| self.names.get(&o).cloned()),
            tables_seen_data: rec.data.longest.len(),
            polls: rec.polls,
            median_interval_ms: if iv.is_empty() { 0.0 } else { iv[iv.len() / 2] },
        }
    }
}

impl Drop for LockWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
