//! What the fault tests of both engines (tests/it/faults.rs: pg_dump, tests/it/native_faults.rs:
//! native) share: template databases cloned per test, one-table group configurations, a run in
//! the background (signals, SIGSTOP, waiting for a condition or the end with its output),
//! /proc, the sessions of a run's groups in `pg_stat_activity`, a session holding a lock,
//! report lookups and restore checks.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------------
// Data and configuration
// ---------------------------------------------------------------------------------------------

/// A database made once per test process (by `sql`, on first use) and used only as the
/// template of the databases tests clone from it.
pub struct Template {
    name: OnceLock<String>,
    hint: &'static str,
    sql: fn() -> String,
}

impl Template {
    pub const fn new(hint: &'static str, sql: fn() -> String) -> Template {
        Template {
            name: OnceLock::new(),
            hint,
            sql,
        }
    }

    /// A new database holding a copy of the template's tables.
    pub fn clone_db(&self, hint: &str) -> TestDb {
        let template = self.name.get_or_init(|| {
            let db = fresh_db(self.hint);
            db.sql(&(self.sql)());
            db.name
        });
        copy_of(template, hint)
    }
}

/// What ends a configuration whose groups are all listed: nothing ungrouped is dumped.
pub const SKIP_UNGROUPED: &str = "[ungrouped]\nmode = \"skip\"\n";

/// One `[[group]]` of `tables` in database `db`.
pub fn group_cfg(db: &str, name: &str, tables: &[&str]) -> String {
    format!(
        "[[group]]\nname = {}\ndatabase = {}\ntables = {}\n",
        ts(name),
        ts(db),
        ta(tables)
    )
}

/// `[[group]]` tables of database `db`, one table each (group name, table), and nothing
/// ungrouped.
pub fn one_table_groups(db: &str, groups: &[(&str, &str)]) -> String {
    let mut s: String = groups.iter().map(|(g, t)| group_cfg(db, g, &[t])).collect();
    s.push_str(SKIP_UNGROUPED);
    s
}

// ---------------------------------------------------------------------------------------------
// A run in the background
// ---------------------------------------------------------------------------------------------

/// A thread reading a pipe to its end.
type Reader = JoinHandle<Vec<u8>>;

fn reader<R: Read + Send + 'static>(mut r: R) -> Reader {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        b
    })
}

enum Pipes {
    /// Read by threads until the process closes them.
    Read(Reader, Reader),
    /// Not read; dropped by [`Running::hang_up_output`] to play a terminal that went away.
    Unread(Option<ChildStdout>, Option<ChildStderr>),
}

/// `pg_groupdump` running in the background; killed (SIGKILL) on drop if still running.
pub struct Running {
    pub child: Child,
    pub pid: i32,
    pipes: Pipes,
}

/// How a background run ended, with its output.
pub struct Ended {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Running {
    /// `pg_groupdump -c <config> <args>` with its output read.
    pub fn start(env: &Env, args: &[&str]) -> Running {
        let mut r = Running::start_unread(env, args);
        if let Pipes::Unread(o, e) = &mut r.pipes {
            r.pipes = Pipes::Read(reader(o.take().unwrap()), reader(e.take().unwrap()));
        }
        r
    }

    /// Like [`Running::start`], with stdout and stderr pipes that nobody reads.
    pub fn start_unread(env: &Env, args: &[&str]) -> Running {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pg_groupdump"));
        c.arg("-c")
            .arg(&env.config)
            .args(args)
            .current_dir(env.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        clean_pg_env(&mut c);
        c.env("PGCONNECT_TIMEOUT", "10");
        let mut child = c.spawn().expect("spawn pg_groupdump");
        let pipes = Pipes::Unread(child.stdout.take(), child.stderr.take());
        Running {
            pid: child.id() as i32,
            child,
            pipes,
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold its Child).
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    /// SIGSTOP, and wait until the whole process is stopped.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let start = Instant::now();
        while proc_stat(&self.pid.to_string()).map(|(state, _)| state) != Some('T') {
            assert!(start.elapsed() < secs(10), "pg_groupdump never stopped");
            std::thread::sleep(ms(1));
        }
    }

    /// SIGCONT after [`Running::freeze`].
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Closes our ends of its stdout and stderr: its next writes fail with EPIPE.
    pub fn hang_up_output(&mut self) {
        match &mut self.pipes {
            Pipes::Unread(o, e) => {
                drop(o.take());
                drop(e.take());
            }
            Pipes::Read(..) => panic!("hang_up_output needs Running::start_unread"),
        }
    }

    /// Polls `cond` until it holds; panics after `limit`, or at once (with the run's output)
    /// if the run ends first.
    pub fn wait_until(&mut self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if cond() {
                return;
            }
            if self.child.try_wait().expect("try_wait").is_some() {
                let ended = self.output();
                panic!("the run ended before {what}: {ended:?}");
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(ms(10));
        }
    }

    /// Waits for the end and takes its output (none if it was not read).
    fn output(&mut self) -> Ended {
        let status = self.child.wait().expect("wait");
        let pipes = std::mem::replace(&mut self.pipes, Pipes::Unread(None, None));
        let (stdout, stderr) = match pipes {
            Pipes::Read(o, e) => (o.join().unwrap(), e.join().unwrap()),
            Pipes::Unread(..) => (Vec::new(), Vec::new()),
        };
        Ended {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// `kill -9`: SIGKILL, and the end (within 10 s), which must be death by SIGKILL.
    pub fn kill9(self) -> Ended {
        self.signal(libc::SIGKILL);
        let ended = self.wait(secs(10));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&ended.status),
            Some(libc::SIGKILL),
            "{ended:?}"
        );
        ended
    }

    /// Waits for the end (at most `limit`, then SIGKILL and panic).
    pub fn wait(mut self, limit: Duration) -> Ended {
        let start = Instant::now();
        while self.child.try_wait().expect("try_wait").is_none() {
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let ended = self.output();
                panic!("pg_groupdump still running after {limit:?}: {ended:?}");
            }
            std::thread::sleep(ms(10));
        }
        self.output()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `signal`; a stopped process must be continued to die of SIGKILL
            // promptly on every kernel (it does on Linux, but costs nothing).
            unsafe {
                libc::kill(self.pid, libc::SIGCONT);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// (state, ppid) from /proc/<pid>/stat, or None if it is gone.
pub fn proc_stat(pid: &str) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut it = after.split(' ');
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

pub fn proc_cmdline(pid: &str) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Every live process: (pid, state, ppid, argv). Zombies included (state 'Z', empty argv).
pub fn processes() -> Vec<(String, char, i32, Vec<String>)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let (Some((state, ppid)), Some(argv)) = (proc_stat(&pid), proc_cmdline(&pid)) {
            out.push((pid, state, ppid, argv));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sessions seen in pg_stat_activity and pg_locks
// ---------------------------------------------------------------------------------------------

/// A polling session on the shared server.
pub fn poller() -> SqlSession {
    server().session("postgres")
}

/// The pid of the session of `group` (application_name `pg_groupdump/<group>`) in database
/// `db` while its statement is a `COPY` and its state one of `states`, asked through `pg` (on
/// any database of the server).
pub fn copy_backend(pg: &mut SqlSession, db: &str, group: &str, states: &[&str]) -> Option<i32> {
    let states: Vec<String> = states.iter().map(|s| ql(s)).collect();
    pg.query(&format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = {} AND application_name = {} \
         AND query LIKE 'COPY%' AND state IN ({})",
        ql(db),
        ql(&format!("pg_groupdump/{group}")),
        states.join(", ")
    ))
    .first()
    .map(|r| r[0].parse().unwrap())
}

/// Waits until a session whose query contains `marker` holds a granted ACCESS EXCLUSIVE
/// lock; returns its pid.
pub fn wait_for_lock_holder(db: &TestDb, marker: &str) -> i64 {
    let start = Instant::now();
    loop {
        let rows = db.query(&format!(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
             WHERE a.query LIKE {} AND a.pid <> pg_backend_pid() \
               AND l.mode = 'AccessExclusiveLock' AND l.granted",
            ql(&format!("%{marker}%"))
        ));
        if let Some(r) = rows.first() {
            return r[0].parse().unwrap();
        }
        assert!(start.elapsed() < secs(20), "the locker never got its lock");
        std::thread::sleep(ms(20));
    }
}

/// A psql session holding ACCESS EXCLUSIVE on a table, its statement marked with `marker`
/// (found so in pg_stat_activity and in the report's blockers); on drop it is killed and its
/// backend terminated (a backend in `pg_sleep` does not notice its client went away).
pub struct Locker {
    child: Child,
    db: TestDb,
    pub marker: String,
}

impl Locker {
    /// Takes ACCESS EXCLUSIVE on `table` and keeps it for a minute; returns once it is held,
    /// with the session's pid.
    pub fn hold(db: &TestDb, table: &str) -> (Locker, i64) {
        let marker = unique_name("locker");
        let sql = format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60) AS {marker};"
        );
        let mut c = db.server().psql_command(&db.name, &sql);
        let locker = Locker {
            child: c.spawn().expect("spawn psql"),
            db: db.clone(),
            marker: marker.clone(),
        };
        let pid = wait_for_lock_holder(db, &marker);
        (locker, pid)
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Ignoring failure: a panic in Drop would abort.
        let s = self.db.server();
        let _ = s
            .psql_command(
                &self.db.name,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE query LIKE {} AND pid <> pg_backend_pid()",
                    ql(&format!("%{}%", self.marker))
                ),
            )
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Reports and restores
// ---------------------------------------------------------------------------------------------

/// Every dump file with its final name in `env`'s backup dir, with its sha256: what a killed
/// run leaves, for [`assert_next_run_sweeps`] to find unchanged.
pub fn dump_hashes(env: &Env) -> Vec<(PathBuf, String)> {
    env.dumps()
        .into_iter()
        .map(|p| {
            let h = sha256_hex(&p);
            (p, h)
        })
        .collect()
}

/// The outcome of each attempt of a report's group entry.
pub fn outcomes(g: &Value) -> Vec<String> {
    g["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts: {g:#}"))
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect()
}

/// The report of a run stopped by the signal named `signal` while `group` of database `db`
/// was in flight: the run is `interrupted` by that signal, the group failed with an error that
/// names it, its first attempt `interrupted`, and its archive is not on disk. Returns the
/// report and the group's path.
pub fn assert_stopped_in_flight(
    env: &Env,
    db: &str,
    signal: &str,
    group: &str,
) -> (Value, PathBuf) {
    let report = env.report();
    let run_id = report["run_id"].as_str().unwrap();
    assert_eq!(report["status"], "interrupted", "{report:#}");
    assert_eq!(report["signal"], signal, "{report:#}");
    let g = report_group(&report, group);
    assert_eq!(g["status"], "failed", "{g:#}");
    assert!(
        g["error"].as_str().unwrap().contains(signal),
        "the in-flight group's error names {signal}: {g:#}"
    );
    assert_eq!(g["attempts"][0]["outcome"], "interrupted", "{g:#}");
    let path = expected_dump_path(&env.dir, db, group, run_id);
    assert!(!path.exists(), "{}", path.display());
    (report, path)
}

/// Restores `file` into a fresh database and checks the table has the source's rows; returns
/// the restored database.
pub fn restore_and_compare(file: &Path, db: &TestDb, table: &str) -> TestDb {
    let target = db.another("restore");
    restore(file, &target);
    assert_same_rows(db, &target, "public", table);
    target
}

/// A database on the private server `ps` for the server-restart tests: `r1` (`r1_rows`
/// rows), `r2` (20 000), `r3` (10 000), all `(id int, info text)`. Returns its name.
pub fn restart_db(ps: &PrivateServer, hint: &str, r1_rows: u32) -> String {
    let name = unique_name(hint);
    ps.psql("postgres", &format!("CREATE DATABASE {}", qi(&name)));
    ps.psql(
        &name,
        &format!(
            "CREATE TABLE r1 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, {r1_rows}) g;
             CREATE TABLE r2 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 20000) g;
             CREATE TABLE r3 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 10000) g;
             VACUUM ANALYZE;"
        ),
    );
    name
}

/// The tables of a [`restart_db`] as groups `g_r1`, `g_r2`, `g_r3`, nothing ungrouped.
pub fn restart_groups(db: &str) -> String {
    one_table_groups(
        db,
        &[
            ("g_r1", "public.r1"),
            ("g_r2", "public.r2"),
            ("g_r3", "public.r3"),
        ],
    )
}

/// The end of a run of [`restart_groups`] during which the server restarted while `g_r1` was
/// being copied: exit 0, no `.ing` left, the report ok, `g_r1`'s first attempt
/// `connection_lost` and its last `ok` ("retrying" logged), and every group ok (written by
/// `engine`, if given) with a file that restores to the source's rows.
pub fn assert_retried_after_restart(
    env: &Env,
    ended: &Ended,
    ps: &PrivateServer,
    db: &str,
    engine: Option<&str>,
) {
    assert_eq!(ended.status.code(), Some(0), "{ended:?}\n{}", ps.log());
    env.assert_no_ing();
    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    let r1 = report_group(&report, "g_r1");
    let o = outcomes(r1);
    assert_eq!(
        o.first().map(String::as_str),
        Some("connection_lost"),
        "{r1:#}"
    );
    assert_eq!(o.last().map(String::as_str), Some("ok"), "{r1:#}");
    assert!(ended.stderr.contains("retrying"), "{ended:?}");
    for t in ["r1", "r2", "r3"] {
        let e = report_group(&report, &format!("g_{t}"));
        assert_eq!(e["status"], "ok", "{e:#}");
        if let Some(engine) = engine {
            assert_eq!(e["engine"], engine, "{e:#}");
        }
        assert_restores_rows_of(&checked_file(e), ps, db, t);
    }
}

/// `file`, restored into a fresh database of the shared server, has the rows `public.<table>`
/// has in database `db` of `ps`.
pub fn assert_restores_rows_of(file: &Path, ps: &Server, db: &str, table: &str) {
    let target = fresh_db("restart_restored");
    restore(file, &target);
    let digest = format!(
        "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)), count(*) FROM public.{table} t"
    );
    assert_eq!(
        ps.query(db, &digest),
        target.query(&digest),
        "rows of {table} after restore"
    );
}
