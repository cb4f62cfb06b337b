//! Faults and lock windows with the native engine (`[backup] engine = "native"`), against a
//! real server: SIGTERM / SIGINT / `kill -9` while a group is being copied, lock timeouts with
//! the blocker named, yielding to DDL, the snapshot taken after the locks, the fallback to
//! pg_dump (a table altered after the schema archive, a database that is not UTF-8), a
//! `--group` run (no schema dump in the run), a server restart mid-copy, and each table locked
//! only while its own group is copied.
//!
//! There is no `pg_dump` per group to catch in the act: a native group is seen through its
//! session in `pg_stat_activity` (`application_name = 'pg_groupdump/<group>'` while it dumps
//! that group, running `COPY … TO STDOUT`, its transaction open until the group is done).
//!
//! A native copy of a few megabytes takes a fraction of a second, which is too short a window
//! to land a fault in reliably, and too machine-dependent. Tests that need a group to stay in
//! flight for a while point pg_groupdump at a [`Throttle`]: a TCP relay in front of the server
//! that forwards what the server sends to a *native* session (recognised by the
//! `application_name` of its startup packet, `pg_groupdump/native`) at a set rate, and
//! everything else at full speed. The group then stays in flight for seconds whatever the
//! machine, and the test lets it go at full speed (rate 0) once the fault is in place. The
//! relay closes one side of a connection as soon as the other closes, so that `kill -9` and
//! a server restart look to the other end as they would on a direct connection. The restart
//! test also holds the whole run still (SIGSTOP) while the server restarts, so that
//! pg_groupdump meets the lost connection in the middle of its copy, not before.
//!
//! The relay can also hold back the `ROLLBACK` that ends a group's transaction: the native
//! engine writes, fsyncs and renames a small group's archive on a blocking task it starts
//! before that ROLLBACK, so holding it back keeps a group in the window where its file has its
//! final name while its attempt is not over yet; two tests land a signal and a yield there.
//!
//! A server restart mid-copy must be retried (tokio-postgres's `connection closed` is a lost
//! connection), and a signal or a yield that lands after a group's file was committed but
//! before its transaction ended must leave the report and the backup directory agreeing (and
//! a retry that succeeds).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::faults::*;
use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Rows of `big` in the template (`(id int, info text)`, about 2 MB of COPY text: the largest
/// group, dumped first; a native copy of it at full speed takes a few tenths of a second in a
/// debug build, about ten seconds through a [`Throttle`] at [`SLOW`]).
const BIG_ROWS: u32 = 50_000;
/// Rows of `t` in the template (`(id int PRIMARY KEY, v text)`).
const T_ROWS: u32 = 1000;

/// A database used only as a template: `big` ([`BIG_ROWS`]), `t` ([`T_ROWS`], with a primary
/// key), `s1`..`s3` (100 rows each). Vacuumed, so that `big` is the largest group (dumped
/// first) and `t` the next.
static TEMPLATE: Template = Template::new("nf_template", || {
    format!(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, {BIG_ROWS}) g;
         CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {T_ROWS}) g;
         CREATE TABLE s1 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 100) g;
         CREATE TABLE s2 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 100) g;
         CREATE TABLE s3 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 100) g;
         VACUUM ANALYZE;"
    )
});

/// A new database holding a copy of the [`TEMPLATE`]'s tables.
fn clone_db(hint: &str) -> TestDb {
    TEMPLATE.clone_db(hint)
}

/// The default configuration for `db` with the native engine.
fn native_config(env: &Env, db: &str) -> Config {
    Config::new(env, db).backup("engine", &ts("native"))
}

// ---------------------------------------------------------------------------------------------
// A relay that slows down native sessions
// ---------------------------------------------------------------------------------------------

/// A TCP relay on 127.0.0.1 in front of a server. What the server sends to a native session of
/// pg_groupdump (its startup packet carries `application_name` `pg_groupdump/native`) is
/// forwarded at `rate` bytes per second (0: full speed) after a burst of [`BURST`] bytes;
/// every other connection (pg_dump children, the lock monitor, catalog sessions) goes at full
/// speed. When either side of a connection closes, so does the other.
///
/// Armed with [`Throttle::hold_next_rollback`], it also holds back the next `ROLLBACK` a
/// native session sends (the end of a group's transaction, once its data is all copied) until
/// [`Throttle::release`] or until the connection closes: the group's transaction stays open,
/// with its locks, after pg_groupdump has all its data.
struct Throttle {
    port: u16,
    state: Arc<RelayState>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct RelayState {
    rate: AtomicU64,
    stop: AtomicBool,
    /// Hold back the next ROLLBACK of a native session.
    hold_rollback: AtomicBool,
    /// A ROLLBACK is being held back.
    holding: AtomicBool,
    released: AtomicBool,
}

/// How a native session introduces itself (src/connect.rs: `application_name("native")`).
const NATIVE_MARK: &[u8] = b"pg_groupdump/native";

/// Bytes a native session gets at full speed before the rate applies (and again after a
/// pause): small groups are not slowed down, nor the end of a transaction.
const BURST: f64 = 64.0 * 1024.0;

impl Throttle {
    fn start(upstream: u16, rate: u64) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(RelayState::default());
        state.rate.store(rate, Ordering::SeqCst);
        let accept = {
            let state = state.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if state.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let conn = Arc::new(Conn::default());
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (st, cn) = (state.clone(), conn.clone());
                    std::thread::spawn(move || relay_up(client, server, cn, st));
                    let st = state.clone();
                    std::thread::spawn(move || relay_down(s2, c2, conn, st));
                }
            })
        };
        Throttle {
            port,
            state,
            accept: Some(accept),
        }
    }

    /// Bytes per second for native sessions from now on; 0 for full speed.
    fn set_rate(&self, rate: u64) {
        self.state.rate.store(rate, Ordering::SeqCst);
    }

    /// Holds back the next ROLLBACK a native session sends (once).
    fn hold_next_rollback(&self) {
        self.state.released.store(false, Ordering::SeqCst);
        self.state.hold_rollback.store(true, Ordering::SeqCst);
    }

    /// Whether a ROLLBACK is being held back.
    fn holding(&self) -> bool {
        self.state.holding.load(Ordering::SeqCst)
    }

    /// Lets a held ROLLBACK go.
    fn release(&self) {
        self.state.released.store(true, Ordering::SeqCst);
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wake the accept loop up so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One relayed connection.
#[derive(Default)]
struct Conn {
    /// A native session of pg_groupdump.
    native: AtomicBool,
    closed: AtomicBool,
}

fn close_both(conn: &Conn, a: &TcpStream, b: &TcpStream) {
    conn.closed.store(true, Ordering::SeqCst);
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Client to server, at full speed; marks the connection native if its first bytes (the
/// startup packet, after a refused SSLRequest) name a native session.
fn relay_up(mut client: TcpStream, mut server: TcpStream, conn: Arc<Conn>, st: Arc<RelayState>) {
    let mut head: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if head.len() < 4096 {
            head.extend_from_slice(&buf[..n]);
            if head.windows(NATIVE_MARK.len()).any(|w| w == NATIVE_MARK) {
                conn.native.store(true, Ordering::SeqCst);
            }
        }
        let rollback = conn.native.load(Ordering::SeqCst)
            && buf[..n].windows(8).any(|w| w == b"ROLLBACK")
            && st.hold_rollback.swap(false, Ordering::SeqCst);
        if rollback {
            st.holding.store(true, Ordering::SeqCst);
            while !st.released.load(Ordering::SeqCst) && !conn.closed.load(Ordering::SeqCst) {
                std::thread::sleep(ms(5));
            }
            st.holding.store(false, Ordering::SeqCst);
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    close_both(&conn, &client, &server);
}

/// Server to client: paced at the rate for native connections (a token bucket of [`BURST`]).
fn relay_down(mut server: TcpStream, mut client: TcpStream, conn: Arc<Conn>, st: Arc<RelayState>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut allowance = BURST;
    let mut last = Instant::now();
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let rate = st.rate.load(Ordering::SeqCst) as f64;
        if rate > 0.0 && conn.native.load(Ordering::SeqCst) {
            let now = Instant::now();
            allowance = (allowance + (now - last).as_secs_f64() * rate).min(BURST);
            last = now;
            if allowance < n as f64 {
                std::thread::sleep(Duration::from_secs_f64((n as f64 - allowance) / rate));
                allowance = 0.0;
                last = Instant::now();
            } else {
                allowance -= n as f64;
            }
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    close_both(&conn, &server, &client);
}

/// What native sessions get while a test holds a group in flight: `big` takes 10 s.
const SLOW: u64 = 200_000;

/// A native run of `db`'s tables as `groups` (one table each; nothing ungrouped) with the
/// `backup` settings, its sessions going through a [`Throttle`] at [`SLOW`]; started, not
/// waited for.
fn slowed_run(
    db: &TestDb,
    backup: &[(&str, &str)],
    groups: &[(&str, &str)],
) -> (Throttle, Env, Running) {
    let relay = Throttle::start(server().port, SLOW);
    let env = Env::new();
    let mut config = native_config(&env, &db.name).connection("port", &relay.port.to_string());
    for (key, raw) in backup {
        config = config.backup(key, raw);
    }
    config
        .extra(&one_table_groups(&db.name, groups))
        .write(&env);
    let run = Running::start(&env, &["run"]);
    (relay, env, run)
}

// ---------------------------------------------------------------------------------------------
// A run in the background
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Sessions seen in pg_stat_activity and pg_locks
// ---------------------------------------------------------------------------------------------

/// The pid of the native session of `group` in `db` while it is copying the group: its
/// statement is a `COPY` and its transaction is open (the server may have sent everything
/// and wait, idle in its transaction, for pg_groupdump to read it).
fn in_flight(pg: &mut SqlSession, db: &str, group: &str) -> Option<i32> {
    copy_backend(pg, db, group, &["active", "idle in transaction"])
}

/// The application_name of every session of pg_groupdump in `db` that is in a transaction.
fn in_transaction(pg: &mut SqlSession, db: &str) -> Vec<String> {
    pg.query(&format!(
        "SELECT application_name FROM pg_stat_activity WHERE datname = {} \
         AND application_name LIKE 'pg_groupdump/%' AND xact_start IS NOT NULL ORDER BY 1",
        ql(db)
    ))
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

/// Whether the session of `group` in `db` waits for a lock on the relation `oid`.
fn waits_for_lock(pg: &mut SqlSession, db: &str, group: &str, oid: u32) -> bool {
    pg.query_one(&format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE a.datname = {} AND a.application_name = {} AND NOT l.granted \
           AND l.locktype = 'relation' AND l.relation = {oid}",
        ql(db),
        ql(&format!("pg_groupdump/{group}"))
    )) != "0"
}

/// Waits (up to `limit`) until backend `pid` is gone; returns how long that took.
fn wait_backend_gone(pg: &mut SqlSession, pid: i32, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = pg.query_one(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        ));
        if n == "0" {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "backend {pid} still there after {limit:?}: {:?}",
            pg.query(&format!(
                "SELECT application_name, state, query FROM pg_stat_activity WHERE pid = {pid}"
            ))
        );
        std::thread::sleep(ms(10));
    }
}

/// `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` with a short lock_timeout: nobody holds a lock on
/// the table any more.
fn assert_lockable(db: &TestDb, table: &str) {
    db.sql(&format!(
        "BEGIN; SET LOCAL lock_timeout = '500ms'; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; COMMIT;"
    ));
}

// ---------------------------------------------------------------------------------------------
// Files and reports
// ---------------------------------------------------------------------------------------------

fn has_column(db: &TestDb, table: &str, column: &str) -> bool {
    db.query_one(&format!(
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = {} AND column_name = {}",
        ql(table),
        ql(column)
    )) == "1"
}

// ---------------------------------------------------------------------------------------------
// 1. SIGTERM and SIGINT while a group is copied
// ---------------------------------------------------------------------------------------------

/// `big` is held in flight (slowed down) while the three small groups finish; then `sig`.
fn stop_mid_copy(sig: i32, name: &str, code: i32) {
    let db = clone_db(&format!("nf_{name}"));
    let (_relay, env, mut run) = slowed_run(
        &db,
        &[("jobs", "2")],
        &[
            ("big", "public.big"),
            ("s1", "public.s1"),
            ("s2", "public.s2"),
            ("s3", "public.s3"),
        ],
    );
    let mut pg = poller();
    let mut backend = None;
    run.wait_until(
        "big is copying and the schema and small groups are done",
        secs(60),
        || {
            backend = in_flight(&mut pg, &db.name, "big");
            backend.is_some()
                && env.dumps().len() >= 4
                && in_transaction(&mut pg, &db.name) == ["pg_groupdump/big"]
        },
    );
    let backend = backend.unwrap();
    // A small group's file is written while its transaction ends: give pg_groupdump a moment
    // to see the end of the last one (see native_sigterm_while_a_finished_group_ends_its_…).
    std::thread::sleep(ms(200));
    run.signal(sig);
    let signalled = Instant::now();
    let ended = run.wait(secs(30));
    let took = signalled.elapsed();
    assert_eq!(ended.status.code(), Some(code), "{ended:?}");
    assert!(took < secs(5), "the run took {took:?} to stop: {ended:?}");
    assert!(
        ended.stderr.contains(name),
        "stderr names {name}: {ended:?}"
    );
    // The group's session is gone and its lock with it.
    let gone = wait_backend_gone(&mut pg, backend, secs(2));
    assert_lockable(&db, "big");
    env.assert_no_ing();

    let (report, big_path) = assert_stopped_in_flight(&env, &db.name, name, "big");
    let big = report_group(&report, "big");
    assert_eq!(outcomes(big), ["interrupted"], "{big:#}");
    assert!(big["file"].is_null(), "{big:#}");
    assert!(
        !big_path.parent().unwrap().exists()
            || fs::read_dir(big_path.parent().unwrap()).unwrap().count() == 0,
        "nothing of big is left: {:?}",
        env.files()
    );
    // Finished groups are kept, complete, and written by the native engine.
    let mut reported = Vec::new();
    for g in report["groups"].as_array().unwrap() {
        if g["group"] == "big" {
            continue;
        }
        assert_eq!(g["status"], "ok", "{g:#}");
        let file = checked_file(g);
        assert_archive_complete(&file);
        if g["kind"] == "tables" {
            assert_eq!(g["engine"], "native", "{g:#}");
            assert!(g["fallback"].is_null(), "{g:#}");
        }
        reported.push(file);
    }
    assert_eq!(reported.len(), 4, "_schema, s1, s2, s3: {report:#}");
    let mut on_disk = env.dumps();
    on_disk.sort();
    reported.sort();
    assert_eq!(
        on_disk, reported,
        "exactly the files of the groups reported ok"
    );
    restore_and_compare(&checked_file(report_group(&report, "s2")), &db, "s2");
    eprintln!("{name}: stopped in {took:?}; big's backend gone {gone:?} after the exit");
}

#[test]
fn native_sigterm_mid_copy_drops_the_group_in_flight_keeps_finished_ones_and_exits_143() {
    stop_mid_copy(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn native_sigint_mid_copy_drops_the_group_in_flight_keeps_finished_ones_and_exits_130() {
    stop_mid_copy(libc::SIGINT, "SIGINT", 130);
}

/// The end of a small group's transaction. The native engine writes, fsyncs and renames a
/// small group's archive on a blocking task that it starts before it sends the transaction's
/// ROLLBACK, so the file can have its final name while the attempt is still waiting for the
/// ROLLBACK's answer. The relay holds that ROLLBACK back, which holds the group there for as
/// long as the test needs: all its data copied, its transaction (and lock) still open. Returns
/// once the ROLLBACK is held and the group's file has its final name, or a second later if it
/// does not get one (an engine that commits the file only once the transaction is over).
fn held_at_rollback(db: &TestDb, extra: &[(&str, &str)]) -> (Throttle, Env, Running) {
    let relay = Throttle::start(server().port, 0);
    relay.hold_next_rollback();
    let env = Env::new();
    let mut c = native_config(&env, &db.name)
        .connection("port", &relay.port.to_string())
        .extra(&one_table_groups(&db.name, &[("s1", "public.s1")]));
    for (k, v) in extra {
        c = c.backup(k, v);
    }
    c.write(&env);
    let mut pg = poller();
    let mut run = Running::start(&env, &["run"]);
    run.wait_until("s1's ROLLBACK is held back", secs(30), || relay.holding());
    // Its transaction is still open: the server has not seen the ROLLBACK.
    assert_eq!(
        in_transaction(&mut pg, &db.name),
        ["pg_groupdump/s1"],
        "s1's session is in its transaction"
    );
    let dir = env.dir.join(encode_component(&db.name)).join("s1");
    let start = Instant::now();
    while start.elapsed() < secs(1) && !env.dumps().iter().any(|p| p.starts_with(&dir)) {
        std::thread::sleep(ms(10));
    }
    (relay, env, run)
}

/// SIGTERM there: the run exits 143 with no `.ing` left, and report and disk agree: either the
/// group is reported ok with its file (which restores to the table's rows), or it is reported
/// otherwise and its archive is not on disk. (The archive's writer task, started before the
/// ROLLBACK, must not commit a file the report then disowns.)
#[test]
fn native_sigterm_while_a_finished_group_ends_its_transaction_leaves_report_and_disk_agreeing() {
    let db = clone_db("nf_term_rollback");
    let (relay, env, run) = held_at_rollback(&db, &[]);
    run.signal(libc::SIGTERM);
    let ended = run.wait(secs(30));
    relay.release();
    assert_eq!(ended.status.code(), Some(143), "{ended:?}");
    env.assert_no_ing();
    let report = env.report();
    let s1 = report_group(&report, "s1");
    let file = expected_dump_path(&env.dir, &db.name, "s1", report["run_id"].as_str().unwrap());
    match s1["status"].as_str() {
        Some("ok") => {
            assert_eq!(checked_file(s1), file, "{s1:#}");
            restore_and_compare(&file, &db, "s1");
        }
        _ => assert!(
            !file.exists(),
            "s1 is reported {} (attempts {:?}, file {}) but its archive {} is on disk, \
             complete: the report and the backup directory disagree",
            s1["status"],
            outcomes(s1),
            s1["file"],
            file.display()
        ),
    }
}

/// A yield there (a session asks for ACCESS EXCLUSIVE on the table while the group's
/// transaction is still open): the LOCK waits less than 4 s, the first attempt is `yielded`,
/// and the retry succeeds: exit 0, the group ok with a file that restores, no `.ing` left.
/// (The yielded attempt's writer task must not leave a file that the retry's commit meets.)
#[test]
fn native_yield_while_a_finished_group_ends_its_transaction_is_retried_successfully() {
    let db = clone_db("nf_yield_rollback");
    let (relay, env, run) = held_at_rollback(
        &db,
        &[
            ("yield_after", &ts("1s")),
            ("retry_delay", &ts("200ms")),
            ("lock_retries", "2"),
        ],
    );
    let mut ddl = server().session(&db.name);
    ddl.query("BEGIN");
    let started = Instant::now();
    ddl.query("LOCK TABLE s1 IN ACCESS EXCLUSIVE MODE");
    let waited = started.elapsed();
    ddl.query("COMMIT");
    let ended = run.wait(secs(30));
    relay.release();
    assert!(waited < secs(4), "LOCK TABLE waited {waited:?}: {ended:?}");
    let report = env.report();
    let s1 = report_group(&report, "s1");
    assert_eq!(
        outcomes(s1).first().map(String::as_str),
        Some("yielded"),
        "{s1:#}"
    );
    assert_eq!(ended.status.code(), Some(0), "{ended:?}\n{s1:#}");
    assert_eq!(s1["status"], "ok", "{s1:#}");
    let file = checked_file(s1);
    env.assert_no_ing();
    restore_and_compare(&file, &db, "s1");
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 while a group is copied
// ---------------------------------------------------------------------------------------------

/// `kill -9` while `big` is being copied (slowly): no final file for it, only its `.ing`; its
/// session goes at once; the next run sweeps the `.ing` and succeeds, the finished files
/// unchanged.
#[test]
fn native_kill9_mid_copy_leaves_only_ing_files_which_the_next_run_sweeps() {
    let db = clone_db("nf_kill9");
    let (relay, env, mut run) = slowed_run(
        &db,
        &[("jobs", "2")],
        &[("big", "public.big"), ("s1", "public.s1")],
    );
    let mut pg = poller();
    let mut backend = None;
    run.wait_until("big is copying", secs(60), || {
        backend = in_flight(&mut pg, &db.name, "big");
        backend.is_some()
    });
    let backend = backend.unwrap();
    let killed = Instant::now();
    run.kill9();
    // The server notices the closed socket (the relay closes its side when pg_groupdump's
    // goes, as a direct connection would): the session and its lock go at once.
    let gone = wait_backend_gone(&mut pg, backend, secs(3));
    assert_lockable(&db, "big");
    relay.set_rate(0);
    eprintln!(
        "kill -9: big's backend gone {gone:?} after the exit ({:?} after the kill)",
        killed.elapsed()
    );

    let big_dir = env.dir.join(encode_component(&db.name)).join("big");
    let leftovers = ing_files(&env);
    assert!(
        leftovers
            .iter()
            .any(|p| env.dir.join(p).starts_with(&big_dir)),
        "the group in flight left its .ing: {:?}",
        env.files()
    );
    let big_final: Vec<PathBuf> = env
        .dumps()
        .into_iter()
        .filter(|p| p.starts_with(&big_dir))
        .collect();
    assert!(big_final.is_empty(), "no final file for big: {big_final:?}");
    let kept = dump_hashes(&env);
    for (p, _) in &kept {
        assert_archive_complete(p);
    }

    let report = assert_next_run_sweeps(&env, &leftovers, &kept);
    let big = report_group(&report, "big");
    assert_eq!(big["engine"], "native", "{big:#}");
    restore_and_compare(&checked_file(big), &db, "big");
}

// ---------------------------------------------------------------------------------------------
// 3. Lock timeouts
// ---------------------------------------------------------------------------------------------

/// Every attempt of `g` timed out on its lock and names the locker.
fn assert_blocked_by(g: &Value, attempts: usize, pid: i64, marker_sql: &str) {
    assert_eq!(g["status"], "failed", "{g:#}");
    assert_eq!(
        outcomes(g),
        vec!["lock_timeout"; attempts],
        "1 + lock_retries attempts, each a lock timeout: {g:#}"
    );
    for at in g["attempts"].as_array().unwrap() {
        let blockers = at["blockers"].as_array().unwrap();
        let b = blockers
            .iter()
            .find(|b| b["pid"].as_i64() == Some(pid))
            .unwrap_or_else(|| panic!("blocker pid {pid} not named: {at:#}"));
        assert!(
            b["query"].as_str().unwrap_or_default().contains(marker_sql),
            "the blocker's query: {b:#}"
        );
    }
    let err = g["error"].as_str().unwrap();
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(g["file"].is_null(), "{g:#}");
}

/// The lock is taken after the schema archive is written (while `big`, dumped first with one
/// job, is in flight), so it is the native session's own LOCK that times out.
#[test]
fn native_lock_timeout_fails_the_group_after_1_plus_lock_retries_naming_the_blocker() {
    let db = clone_db("nf_locked");
    let (relay, env, mut run) = slowed_run(
        &db,
        &[
            ("jobs", "1"),
            ("lock_wait_timeout", &ts("1s")),
            ("lock_retries", "1"),
            ("retry_delay", &ts("1s")),
        ],
        &[
            ("big", "public.big"),
            ("t", "public.t"),
            ("s1", "public.s1"),
        ],
    );
    let mut pg = poller();
    run.wait_until("big is copying", secs(60), || {
        in_flight(&mut pg, &db.name, "big").is_some()
    });
    let (locker, pid) = Locker::hold(&db, "t");
    relay.set_rate(0);
    let ended = run.wait(secs(60));
    assert_eq!(ended.status.code(), Some(1), "{ended:?}");
    assert!(ended.stderr.contains(&format!("pid {pid}")), "{ended:?}");
    env.assert_no_ing();
    let report = env.report();
    assert_eq!(report["status"], "failed", "{report:#}");
    let t = report_group(&report, "t");
    assert_blocked_by(t, 2, pid, &locker.marker);
    assert_eq!(t["engine"], "native", "{t:#}");
    assert!(t["fallback"].is_null(), "{t:#}");
    for a in t["attempts"].as_array().unwrap() {
        // Each waited its lock_wait_timeout, not more.
        let d = a["duration_ms"].as_u64().unwrap();
        assert!((900..3000).contains(&d), "{a:#}");
    }
    assert!(
        !expected_dump_path(&env.dir, &db.name, "t", report["run_id"].as_str().unwrap()).exists()
    );
    for g in ["big", "s1"] {
        let e = report_group(&report, g);
        assert_eq!(e["status"], "ok", "{e:#}");
        assert_eq!(e["engine"], "native", "{e:#}");
        assert_eq!(outcomes(e), ["ok"], "{e:#}");
        assert_archive_complete(&checked_file(e));
    }
    drop(locker);
}

/// The lock is held from before the run: the schema dump cannot lock the table either, so
/// there is no schema archive to cut and every group of the database goes to pg_dump (which
/// times out on the same lock for the locked group).
#[test]
fn native_lock_held_through_the_run_fails_the_schema_dump_and_groups_fall_back_to_pg_dump() {
    let db = fresh_db("nf_locked_all");
    db.sql(
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);
         CREATE TABLE u (id int); INSERT INTO u SELECT generate_series(1, 100);",
    );
    let (locker, pid) = Locker::hold(&db, "t");
    let env = Env::new();
    native_config(&env, &db.name)
        .backup("lock_wait_timeout", &ts("300ms"))
        .backup("lock_retries", "1")
        .backup("retry_delay", &ts("300ms"))
        .extra(&one_table_groups(
            &db.name,
            &[("t", "public.t"), ("u", "public.u")],
        ))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(1);
    env.assert_no_ing();
    let report = env.report();
    let schema = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "schema")
        .expect("the schema dump");
    assert_blocked_by(schema, 2, pid, &locker.marker);
    let t = report_group(&report, "t");
    assert_blocked_by(t, 2, pid, &locker.marker);
    assert_eq!(t["engine"], "pg_dump", "{t:#}");
    let u = report_group(&report, "u");
    assert_eq!(u["status"], "ok", "{u:#}");
    assert_eq!(u["engine"], "pg_dump", "{u:#}");
    for g in [t, u] {
        let why = g["fallback"].as_str().unwrap_or_default();
        assert!(why.contains("schema dump failed"), "{g:#}");
    }
    restore_and_compare(&checked_file(u), &db, "u");
    drop(locker);
}

// ---------------------------------------------------------------------------------------------
// 4. Yielding to DDL
// ---------------------------------------------------------------------------------------------

/// `ALTER TABLE big ADD COLUMN` while `big` is being copied (slowly): it waits about
/// `yield_after`, the attempt yields to it (the session named), and the retry dumps the altered
/// table, whose archive restores with the new column.
#[test]
fn native_yields_to_alter_table_within_yield_after_and_redumps_the_altered_table() {
    let db = clone_db("nf_yield");
    let (relay, env, mut run) = slowed_run(
        &db,
        &[
            ("jobs", "1"),
            ("yield_after", &ts("1s")),
            ("lock_retries", "3"),
            ("retry_delay", &ts("200ms")),
        ],
        &[("big", "public.big"), ("s1", "public.s1")],
    );
    let mut pg = poller();
    run.wait_until("big is copying", secs(60), || {
        in_flight(&mut pg, &db.name, "big").is_some()
    });
    let mut ddl = server().session(&db.name);
    let ddl_pid: i64 = ddl.query_one("SELECT pg_backend_pid()").parse().unwrap();
    let started = Instant::now();
    ddl.query("ALTER TABLE big ADD COLUMN c int");
    let waited = started.elapsed();
    relay.set_rate(0);
    let ended = run.wait(secs(60));
    assert_eq!(ended.status.code(), Some(0), "{ended:?}");
    // It did wait for the dump, and about yield_after (1 s) only.
    assert!(
        waited >= ms(900) && waited < secs(4),
        "ALTER TABLE waited {waited:?}\n{ended:?}"
    );
    assert!(ended.stderr.contains("yielded to pid"), "{ended:?}");
    env.assert_no_ing();

    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    let big = report_group(&report, "big");
    assert_eq!(big["status"], "ok", "{big:#}");
    let o = outcomes(big);
    assert_eq!(o.first().map(String::as_str), Some("yielded"), "{big:#}");
    assert_eq!(o.last().map(String::as_str), Some("ok"), "{big:#}");
    let to = &big["attempts"][0]["yielded_to"];
    assert_eq!(to["pid"].as_i64(), Some(ddl_pid), "{big:#}");
    assert!(
        to["query"]
            .as_str()
            .unwrap_or_default()
            .contains("ALTER TABLE"),
        "{big:#}"
    );
    // The retry met a table whose definition is no longer the schema archive's.
    match big["engine"].as_str() {
        Some("pg_dump") => {
            let why = big["fallback"].as_str().unwrap_or_default();
            assert!(why.contains("big") && why.contains("altered"), "{big:#}");
        }
        Some("native") => assert!(big["fallback"].is_null(), "{big:#}"),
        other => panic!("engine {other:?}: {big:#}"),
    }
    eprintln!(
        "yield: ALTER TABLE waited {waited:?}; the retry used {} ({})",
        big["engine"], big["fallback"]
    );
    let target = restore_and_compare(&checked_file(big), &db, "big");
    assert!(
        has_column(&target, "big", "c"),
        "the restored big has the column added by the DDL it yielded to: {big:#}"
    );
    let s1 = report_group(&report, "s1");
    assert_eq!(outcomes(s1), ["ok"], "{s1:#}");
    assert_eq!(s1["engine"], "native", "{s1:#}");
}

// ---------------------------------------------------------------------------------------------
// 5, 6. The snapshot comes after the locks; a table altered since the schema archive
// ---------------------------------------------------------------------------------------------

/// Runs `big` then `t` with one job; while `big` is in flight (the schema archive is written),
/// `hold` runs in a session of its own that takes ACCESS EXCLUSIVE on `t` and does what it
/// does in that transaction; once `t`'s native session waits for its lock, the session commits.
/// Returns the workspace, the report, the run's stderr, and the time just before the commit
/// (server clock, the format of `snapshot.taken_at`).
fn behind_a_transaction(db: &TestDb, hold: &[&str]) -> (Env, Value, String, String) {
    let (relay, env, mut run) = slowed_run(
        db,
        &[("jobs", "1"), ("lock_wait_timeout", &ts("20s"))],
        &[("big", "public.big"), ("t", "public.t")],
    );
    let mut pg = poller();
    run.wait_until("big is copying", secs(60), || {
        in_flight(&mut pg, &db.name, "big").is_some()
    });
    let mut a = server().session(&db.name);
    a.query("BEGIN");
    for sql in hold {
        a.query(sql);
    }
    relay.set_rate(0);
    let t_oid = db.table_oid("public", "t");
    run.wait_until("t waits for its lock", secs(30), || {
        waits_for_lock(&mut pg, &db.name, "t", t_oid)
    });
    std::thread::sleep(ms(300));
    let before = a.query_one(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    a.query("COMMIT");
    let ended = run.wait(secs(60));
    assert_eq!(ended.status.code(), Some(0), "{ended:?}");
    env.assert_no_ing();
    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    let big = report_group(&report, "big");
    assert_eq!(big["engine"], "native", "{big:#}");
    (env, report, ended.stderr, before)
}

/// A session locks `t`, inserts 500 rows and commits only once `t`'s native session waits
/// behind it. The group's snapshot comes after its lock, so the archive has those rows; a
/// snapshot taken before the lock (as with an exported snapshot, or any statement before the
/// LOCK) would not.
#[test]
fn native_snapshot_is_taken_after_the_lock_so_the_blockers_committed_rows_are_dumped() {
    let db = clone_db("nf_snap_after_lock");
    let (_env, report, _, before) = behind_a_transaction(
        &db,
        &[
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            "INSERT INTO t SELECT g, 'from A' FROM generate_series(100001, 100500) g",
        ],
    );
    let t = report_group(&report, "t");
    assert_eq!(t["status"], "ok", "{t:#}");
    assert_eq!(t["engine"], "native", "{t:#}");
    assert!(t["fallback"].is_null(), "{t:#}");
    assert_eq!(outcomes(t), ["ok"], "{t:#}");
    let want = i64::from(T_ROWS) + 500;
    assert_eq!(t["row_counts"]["public.t"].as_i64(), Some(want), "{t:#}");
    assert!(
        t["lock_wait_ms"].as_u64().unwrap() >= 250,
        "it waited for the lock: {t:#}"
    );
    let taken = t["snapshot"]["taken_at"].as_str().unwrap();
    assert!(
        taken > before.as_str(),
        "snapshot {taken} not after the commit ({before}): {t:#}"
    );
    let target = restore_and_compare(&checked_file(t), &db, "t");
    assert_eq!(target.query_one("SELECT count(*) FROM t"), want.to_string());
    assert_eq!(
        target.query_one("SELECT count(*) FROM t WHERE v = 'from A'"),
        "500"
    );
}

/// A session adds a column to `t` after the schema archive was taken and commits once `t`'s
/// native session waits behind it: the fingerprints differ, so the group is dumped with pg_dump
/// (the schema archive would restore the old definition), and its archive has the column.
#[test]
fn native_falls_back_to_pg_dump_for_a_table_altered_after_the_schema_archive() {
    let db = clone_db("nf_altered");
    let (_env, report, stderr, _) =
        behind_a_transaction(&db, &["ALTER TABLE t ADD COLUMN c int DEFAULT 7"]);
    let t = report_group(&report, "t");
    assert_eq!(t["status"], "ok", "{t:#}");
    assert_eq!(t["engine"], "pg_dump", "{t:#}");
    let why = t["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("public.t") && why.contains("altered"), "{t:#}");
    assert!(stderr.contains("dumped with pg_dump"), "{stderr}");
    assert_eq!(outcomes(t), ["ok"], "{t:#}");
    let target = restore_and_compare(&checked_file(t), &db, "t");
    assert!(has_column(&target, "t", "c"), "{t:#}");
    assert_eq!(
        target.query_one("SELECT count(*) FROM t WHERE c = 7"),
        T_ROWS.to_string()
    );
}

// ---------------------------------------------------------------------------------------------
// 7. --group: no schema dump in the run
// ---------------------------------------------------------------------------------------------

/// `run --group`: no schema dump in the run, so the native engine takes a private
/// `--schema-only` archive, reads it and removes it. The group's archive restores into a
/// database that has its schema and type.
#[test]
fn native_single_group_run_restores_and_leaves_no_schema_archive_behind() {
    let db = fresh_db("nf_one_group");
    db.sql(
        "CREATE SCHEMA app;
         CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE app.t (id serial PRIMARY KEY, m app.mood NOT NULL, note text);
         INSERT INTO app.t (m, note)
           SELECT (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::app.mood, md5(g::text)
             FROM generate_series(1, 1000) g;
         CREATE TABLE app.u (id int); INSERT INTO app.u SELECT generate_series(1, 10);",
    );
    let env = Env::new();
    native_config(&env, &db.name)
        .extra(&format!(
            "[[group]]\nname = \"gt\"\ndatabase = {d}\ntables = [\"app.t\"]\n\n\
             [[group]]\nname = \"gu\"\ndatabase = {d}\ntables = [\"app.u\"]\n",
            d = ts(&db.name)
        ))
        .write(&env);
    let out = env.run(&["run", "--group", "gt"]);
    out.expect_code(0);
    env.assert_no_ing();
    let report = env.report();
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "only gt: {report:#}");
    let gt = &groups[0];
    assert_eq!(gt["group"], "gt", "{report:#}");
    assert_eq!(gt["status"], "ok", "{gt:#}");
    assert_eq!(gt["engine"], "native", "{gt:#}");
    assert!(gt["fallback"].is_null(), "{gt:#}");
    let file = checked_file(gt);
    // No schema archive of any kind is left, nor a directory for one: the backup dir holds
    // exactly the lock file, gt's archive and the report.
    let run_id = report["run_id"].as_str().unwrap();
    let d = encode_component(&db.name);
    let want: BTreeSet<PathBuf> = [
        PathBuf::from(".pg_groupdump.lock"),
        file.strip_prefix(&env.dir).unwrap().to_path_buf(),
        PathBuf::from(format!("reports/{run_id}.json")),
    ]
    .into();
    let all: BTreeSet<PathBuf> = env.files().into_iter().collect();
    assert_eq!(all, want, "files in the backup dir");
    let dirs: BTreeSet<PathBuf> = walkdir::WalkDir::new(&env.dir)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.path().strip_prefix(&env.dir).unwrap().to_path_buf())
        .collect();
    let want: BTreeSet<PathBuf> = [
        PathBuf::from(&d),
        PathBuf::from(&d).join("gt"),
        PathBuf::from("reports"),
    ]
    .into();
    assert_eq!(dirs, want, "directories in the backup dir");
    let target = db.another("nf_one_group_r");
    target.sql("CREATE SCHEMA app; CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');");
    restore(&file, &target);
    assert_same_rows(&db, &target, "app", "t");
    // The owned sequence came along with its value, the primary key too.
    assert_eq!(target.query_one("SELECT nextval('app.t_id_seq')"), "1001");
    assert_eq!(
        target.query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'app.t'::regclass AND contype = 'p'"
        ),
        "1"
    );
    assert_eq!(
        target.query_one("SELECT count(*) FROM pg_class WHERE relname = 'u'"),
        "0",
        "gu is not in gt's archive"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A database that is not UTF-8
// ---------------------------------------------------------------------------------------------

fn encoded_db(hint: &str, encoding: &str) -> TestDb {
    let name = unique_name(hint);
    psql(
        "postgres",
        &format!(
            "CREATE DATABASE {} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
            qi(&name)
        ),
    );
    db_named(&name)
}

/// `pg_restore --data-only -f -` of `archive`, as bytes (in the archive's encoding), without
/// the random `\restrict` fence of recent minor releases.
fn data_script(archive: &Path) -> Vec<u8> {
    let out = Command::new(server().bin("pg_restore"))
        .args(["--data-only", "-f", "-"])
        .arg(archive)
        .output()
        .expect("pg_restore");
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.starts_with(b"\\restrict ") && !l.starts_with(b"\\unrestrict "))
        .collect::<Vec<_>>()
        .join(&b'\n')
}

/// `pg_dump -Fc -t` of one table of `db`, to `path`; the pattern in the database's encoding
/// (pg_dump's client encoding is the database's).
fn pg_dump_table(db: &TestDb, pattern: &[u8], path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let s = server();
    let mut c = Command::new(s.bin("pg_dump"));
    c.args(["-Fc", "-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(s.port.to_string())
        .arg("-t")
        .arg(std::ffi::OsStr::from_bytes(pattern))
        .arg("-f")
        .arg(path)
        .arg("-d")
        .arg(conninfo_db(&db.name));
    clean_pg_env(&mut c);
    let out = c.output().expect("pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Databases that are not UTF-8 — LATIN1 with non-ASCII names, comments and data, and
/// SQL_ASCII with bytes that are no character of any encoding — are written natively: COPY
/// gives the rows in the database's encoding, and the names and comments of the schema
/// archive are kept byte for byte. The data each archive holds is byte-identical to what a
/// `pg_dump -t` archive of the same table holds, and each restores to the source's rows.
#[test]
fn native_writes_non_utf8_databases_byte_for_byte_as_pg_dump_does() {
    for (encoding, setup) in [
        (
            "LATIN1",
            "SET client_encoding = 'UTF8';
             CREATE TABLE \"café\" AS SELECT g AS id, 'caf' || chr(233) || ' ' || g AS \"naïve\"
               FROM generate_series(1, 1000) g;
             COMMENT ON TABLE \"café\" IS 'crème brûlée';
             CREATE TABLE l2 (id serial PRIMARY KEY, v text DEFAULT 'été');
             INSERT INTO l2 (v) SELECT repeat(chr(200 + g % 50), 3) FROM generate_series(1, 100) g;",
        ),
        (
            "SQL_ASCII",
            "CREATE TABLE \"café\" (id int, \"naïve\" text);
             INSERT INTO \"café\" SELECT g, E'\\xff\\xfe raw ' || g FROM generate_series(1, 1000) g;
             CREATE TABLE l2 (id serial PRIMARY KEY, v bytea, w text);
             INSERT INTO l2 (v, w) SELECT E'\\\\x00ff', E'\\x80\\x81' FROM generate_series(1, 100) g;",
        ),
    ] {
        let db = encoded_db("nf_enc", encoding);
        db.sql(setup);
        assert_eq!(db.query_one("SHOW server_encoding"), encoding);
        let env = Env::new();
        native_config(&env, &db.name)
            .extra(&one_table_groups(
                &db.name,
                &[("g1", "public.\"café\""), ("g2", "public.l2")],
            ))
            .write(&env);
        let out = env.run(&["run"]);
        out.expect_code(0);
        env.assert_no_ing();
        let report = env.report();
        assert_eq!(report["status"], "ok", "{encoding}: {report:#}");
        for (g, pattern, table) in [("g1", "public.\"café\"", "café"), ("g2", "public.l2", "l2")]
        {
            let e = report_group(&report, g);
            assert_eq!(e["status"], "ok", "{encoding}: {e:#}");
            assert_eq!(e["engine"], "native", "{encoding}: {e:#}");
            assert!(e.get("fallback").is_none(), "{encoding}: {e:#}");
            let ours = checked_file(e);
            let theirs = env.path().join(format!("{g}.pg_dump"));
            let pattern: Vec<u8> = if encoding == "LATIN1" {
                // LATIN1 is Unicode's first 256 code points, a byte each.
                pattern.chars().map(|c| c as u32 as u8).collect()
            } else {
                pattern.as_bytes().to_vec()
            };
            pg_dump_table(&db, &pattern, &theirs);
            assert!(
                data_script(&ours) == data_script(&theirs),
                "{encoding}: the data of {table} differs from pg_dump's:\n ours:   {}\n theirs: {}",
                String::from_utf8_lossy(&data_script(&ours)),
                String::from_utf8_lossy(&data_script(&theirs))
            );
            let target = encoded_db("nf_enc_r", encoding);
            restore(&ours, &target);
            // (The table's name is sent in UTF-8, whatever the database's encoding.)
            let digest = |d: &TestDb| {
                d.query_one(&format!(
                    "SET client_encoding = 'UTF8'; \
                     SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) || ' ' || count(*) \
                       FROM public.{} t",
                    qi(table)
                ))
            };
            assert_eq!(digest(&db), digest(&target), "{encoding}: rows of {table}");
            if table == "café" && encoding == "LATIN1" {
                assert_eq!(
                    target.query_one(
                        "SET client_encoding = 'UTF8'; \
                         SELECT obj_description('public.\"café\"'::regclass)"
                    ),
                    "crème brûlée"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Server restart mid-copy
// ---------------------------------------------------------------------------------------------

/// The server restarts while `g_r1` is being copied (slowly, the run held still with SIGSTOP
/// meanwhile, so that it meets the lost connection in the middle of its copy). A backend
/// terminated while it waits to write COPY data to a client that is not reading closes its
/// socket without a FATAL message, which tokio-postgres reports as "connection closed": that
/// too is a lost connection. The group's first attempt is `connection_lost`, its last `ok`
/// ("retrying" logged), the run exits 0, and every group's native archive restores to the
/// source's rows.
#[test]
fn native_server_restart_mid_copy_is_retried_and_every_group_restores() {
    let ps = private_server();
    let dbname = restart_db(&ps, "nf_restart", 50_000);
    let relay = Throttle::start(ps.port, SLOW);
    let env = Env::new();
    native_config(&env, &dbname)
        .connection("port", &relay.port.to_string())
        .backup("jobs", "1")
        .backup("lock_retries", "5")
        .backup("retry_delay", &ts("500ms"))
        .extra(&restart_groups(&dbname))
        .write(&env);
    let mut pg = ps.session("postgres");
    let mut run = Running::start(&env, &["run"]);
    let mut backend = None;
    run.wait_until("g_r1 is copying", secs(60), || {
        backend = in_flight(&mut pg, &dbname, "g_r1");
        backend.is_some()
    });
    run.freeze();
    assert_eq!(
        in_flight(&mut pg, &dbname, "g_r1"),
        backend,
        "g_r1 was done before the run could be held still"
    );
    drop(pg);
    ps.restart();
    relay.set_rate(0);
    run.thaw();
    let ended = run.wait(secs(90));
    assert_retried_after_restart(&env, &ended, &ps, &dbname, Some("native"));
}

// ---------------------------------------------------------------------------------------------
// 10. Each table locked only while its own group is copied
// ---------------------------------------------------------------------------------------------

/// Every table (12 groups of one table, two jobs) is seen locked only by its own group's
/// session, only between its group's start and end, and never longer than its group took.
#[test]
fn native_each_table_is_locked_only_while_its_own_group_is_copied() {
    let db = fresh_db("nf_lockhold");
    let mut sql = String::new();
    for i in 0..12 {
        sql.push_str(&format!(
            "CREATE TABLE h{i:02} (id int, info text);
             INSERT INTO h{i:02} SELECT g, md5(g::text) FROM generate_series(1, 10000) g;\n"
        ));
    }
    sql.push_str("VACUUM ANALYZE;");
    db.sql(&sql);
    let names: HashMap<String, String> = db
        .query("SELECT oid::text, relname FROM pg_class WHERE relname ~ '^h[0-9]+$'")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let env = Env::new();
    native_config(&env, &db.name)
        .backup("jobs", "2")
        .write(&env);

    // Every lock a session of the run holds on a table of the database, polled on one
    // session, with the session's application_name and the server's clock (epoch ms; the
    // report's times come from the same machine's clock). pg_stat_activity is read once per
    // transaction, pg_locks when the query runs: a session can be seen holding the lock it
    // has just taken under the name it had a moment before. So each poll reads the names,
    // then the locks, then the names again (three transactions), and a lock counts only if
    // its session had the same name and the same open transaction before and after: the name
    // it had while holding it.
    // The schema dump (pg_dump --schema-only) locks every table while it reads the catalog,
    // before any group starts: it is left out.
    type Seen = HashMap<String, (i64, i64, BTreeSet<String>)>;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let mut pg = server().session(&db.name);
        std::thread::spawn(move || {
            let names = |pg: &mut SqlSession| -> HashMap<String, (String, String)> {
                pg.query(
                    "SELECT pid::text, application_name, coalesce(xact_start::text, '') \
                       FROM pg_stat_activity WHERE application_name LIKE 'pg_groupdump/%'",
                )
                .into_iter()
                .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone())))
                .collect()
            };
            let mut seen: Seen = HashMap::new();
            let mut polls = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let before = names(&mut pg);
                let locks = pg.query(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, pid, relation \
                       FROM pg_locks \
                      WHERE locktype = 'relation' AND granted \
                        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                );
                let after = names(&mut pg);
                polls += 1;
                // Leave the run some CPU.
                std::thread::sleep(ms(2));
                for r in locks {
                    let (Some(a), Some(b)) = (before.get(&r[1]), after.get(&r[1])) else {
                        continue;
                    };
                    // The same name in the same transaction before and after: the lock
                    // belongs to that transaction (not to one that began and ended between
                    // the two reads, as a small group's can on a busy machine).
                    let ((app, xact), (app_after, xact_after)) = (a, b);
                    if app != app_after
                        || xact != xact_after
                        || xact.is_empty()
                        || app == "pg_groupdump/_schema"
                    {
                        continue;
                    }
                    let at: i64 = r[0].parse().unwrap();
                    let e = seen
                        .entry(r[2].clone())
                        .or_insert_with(|| (at, at, BTreeSet::new()));
                    e.1 = at;
                    e.2.insert(app.clone());
                }
            }
            (seen, polls)
        })
    };
    let started = Instant::now();
    let out = env.run(&["run"]);
    let wall = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (seen, polls) = watcher.join().unwrap();
    out.expect_code(0);
    let report = env.report();

    let epoch_ms = |v: &Value| -> i64 {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
            .timestamp_millis()
    };
    let mut checked = 0;
    let mut longest = 0;
    for (oid, (first, last, apps)) in &seen {
        let Some(name) = names.get(oid) else { continue };
        let group = format!("public.{name}");
        let g = report_group(&report, &group);
        assert_eq!(g["engine"], "native", "{g:#}");
        assert_eq!(outcomes(g), ["ok"], "{g:#}");
        // Locked by its own group's session only...
        let want: BTreeSet<String> = [format!("pg_groupdump/{group}")].into();
        assert_eq!(apps, &want, "{name} was locked by another group's session");
        // ...only while that group was being dumped (times are whole milliseconds)...
        let (from, to) = (epoch_ms(&g["started_at"]), epoch_ms(&g["finished_at"]));
        assert!(
            from - 2 <= *first && *last <= to + 2,
            "{name} was seen locked from {first} to {last} (epoch ms), its group ran from \
             {from} to {to}: {g:#}"
        );
        // ...and never longer than it took.
        let held = last - first;
        longest = longest.max(held);
        let own = g["duration_ms"].as_i64().unwrap();
        assert!(
            held <= own + 100,
            "{name} stayed locked {held} ms, its own group took {own} ms"
        );
        checked += 1;
    }
    eprintln!(
        "lock hold: {checked} tables seen locked in {polls} polls, longest {longest} ms, run {wall:?}"
    );
    assert!(
        checked >= 8,
        "the watcher saw too few locked tables ({checked} in {polls} polls): {seen:?}"
    );
    assert!(
        ms(longest as u64) * 3 < wall,
        "longest lock hold {longest} ms is not small against the run's {wall:?}"
    );
}
