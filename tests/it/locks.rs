//! Lock windows against real concurrent sessions: bounded waits with the blocker named,
//! retries, yielding to DDL, and per-group lock-hold times.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::faults::{group_cfg, wait_for_lock_holder};
use crate::util::*;

/// A psql session running `sql` in the background (killed on drop).
struct Session {
    child: Child,
}

impl Session {
    fn start(db: &TestDb, sql: &str) -> Session {
        let mut c = psql_command(&db.name, sql);
        Session {
            child: c.spawn().expect("spawn psql"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pg_groupdump -c <config> run` in the background.
fn spawn_run(env: &Env) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pg_groupdump"));
    c.arg("-c")
        .arg(&env.config)
        .arg("run")
        .current_dir(env.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    clean_pg_env(&mut c);
    c.spawn().expect("spawn pg_groupdump")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("wait pg_groupdump");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn held_lock_fails_only_its_group_and_names_the_blocker() {
    let db = fresh_db("lock_held");
    db.sql(
        "CREATE TABLE a1 (id int); INSERT INTO a1 SELECT generate_series(1, 100);
         CREATE TABLE a2 (id int); INSERT INTO a2 SELECT generate_series(1, 100);
         CREATE TABLE b (id int); INSERT INTO b SELECT generate_series(1, 100);
         CREATE TABLE c (id int); INSERT INTO c SELECT generate_series(1, 100);",
    );
    let marker = unique_name("held_marker");
    let _locker = Session::start(
        &db,
        &format!(
            "BEGIN; LOCK TABLE a1 IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120) AS {marker};"
        ),
    );
    let pid = wait_for_lock_holder(&db, &marker);

    // The default engine. Natively the schema-only dump (`schema = false`) meets the lock
    // first and gives up after its retries, so every group of the database is dumped with
    // pg_dump (fallback); A then fails on its own attempts. The native engine's own attempts
    // meeting a lock: native_faults::native_lock_timeout_fails_the_group_after_1_plus_lock_retries_….
    let env = Env::new();
    env.config_for(&db)
        .backup("schema", "false")
        .backup("lock_wait_timeout", &ts("500ms"))
        .backup("lock_retries", "2")
        .backup("retry_delay", &ts("100ms"))
        .extra(&group_cfg(&db.name, "A", &["public.a1", "public.a2"]))
        .write(&env);
    let started = Instant::now();
    let out = env.run(&["run"]);
    out.expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(30), "{out:?}");
    env.assert_no_ing();

    let report = env.report();
    let a = report_group(&report, "A");
    assert_eq!(a["status"], "failed", "{a:#}");
    let attempts = a["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "1 + lock_retries attempts: {a:#}");
    for at in attempts {
        assert_eq!(at["outcome"], "lock_timeout", "{at:#}");
        let blockers = at["blockers"].as_array().unwrap();
        let b = blockers
            .iter()
            .find(|b| b["pid"].as_i64() == Some(pid))
            .unwrap_or_else(|| panic!("blocker pid {pid} not named: {at:#}"));
        assert!(b["query"].as_str().unwrap().contains(&marker), "{b:#}");
    }
    let err = a["error"].as_str().unwrap();
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(out.stderr.contains(&format!("pid {pid}")), "{out:?}");
    for other in ["public.b", "public.c"] {
        let g = report_group(&report, other);
        assert_eq!(g["status"], "ok", "{g:#}");
        assert!(std::path::Path::new(g["file"].as_str().unwrap()).exists());
    }
    assert!(
        !expected_dump_path(&env.dir, &db.name, "A", report["run_id"].as_str().unwrap()).exists()
    );
}

#[test]
fn lock_released_after_first_attempt_is_retried_successfully() {
    let db = fresh_db("lock_retry");
    db.sql(
        "CREATE TABLE a1 (id int); INSERT INTO a1 SELECT generate_series(1, 100);
         CREATE TABLE b (id int); INSERT INTO b SELECT generate_series(1, 100);",
    );
    let marker = unique_name("retry_marker");
    let _locker = Session::start(
        &db,
        &format!("BEGIN; LOCK TABLE a1 IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(1.5) AS {marker}; COMMIT;"),
    );
    wait_for_lock_holder(&db, &marker);
    let env = Env::new();
    // The pg_dump engine: the group's own dump is what meets the lock. With the native engine
    // the schema-only dump it takes first (`schema = false`) meets it instead and retries
    // within the group's first attempt, which then finds the lock gone: one attempt, `ok`,
    // and the lock timeouts are in no attempt of the report.
    env.config_for(&db)
        .backup("engine", &ts("pg_dump"))
        .backup("schema", "false")
        .backup("lock_wait_timeout", &ts("400ms"))
        .backup("lock_retries", "3")
        .backup("retry_delay", &ts("1500ms"))
        .extra(&group_cfg(&db.name, "A", &["public.a1"]))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(0);
    let report = env.report();
    let a = report_group(&report, "A");
    assert_eq!(a["status"], "ok", "{a:#}");
    let attempts = a["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{a:#}");
    assert_eq!(attempts[0]["outcome"], "lock_timeout", "{a:#}");
    assert_eq!(attempts.last().unwrap()["outcome"], "ok", "{a:#}");
    let restored = db.another("lock_retry_r");
    restore(std::path::Path::new(a["file"].as_str().unwrap()), &restored);
    assert_eq!(
        db.table_digest("public", "a1"),
        restored.table_digest("public", "a1")
    );
}

/// Waits until the backend of group `group` is copying data; panics after `limit`.
fn wait_for_copy(db: &TestDb, group: &str, limit: Duration) {
    wait_until(&format!("the dump of {group} copies"), limit, || {
        db.query_one(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = {} \
             AND state = 'active' AND query LIKE 'COPY%'",
            ql(&format!("pg_groupdump/{group}"))
        )) != "0"
    });
}

/// Runs `sql` in a new session and returns how long it took.
fn timed_sql(db: &TestDb, sql: &str) -> Duration {
    let start = Instant::now();
    db.sql(sql);
    start.elapsed()
}

#[test]
fn truncate_waits_only_yield_after_then_the_group_is_dumped_again() {
    let db = fresh_db("yield");
    db.sql(
        "CREATE TABLE big (id int, info text, crt_time timestamp);
         INSERT INTO big SELECT g, md5(g::text), clock_timestamp() FROM generate_series(1, 1500000) g;
         CREATE TABLE small (id int); INSERT INTO small VALUES (1);",
    );
    let env = Env::new();
    env.config_for(&db)
        .backup("schema", "false")
        .backup("jobs", "1")
        .backup("yield_after", &ts("1s"))
        .backup("lock_retries", "3")
        .backup("retry_delay", &ts("200ms"))
        .extra(&group_cfg(&db.name, "large", &["public.big"]))
        .write(&env);
    let run = spawn_run(&env);
    wait_for_copy(&db, "large", Duration::from_secs(30));
    let waited = timed_sql(&db, "TRUNCATE big");
    let (code, stderr) = finish(run);
    assert_eq!(code, 0, "{stderr}");
    // yield_after (1 s) + one monitor poll + ending the dump's backend, with slack for CI.
    assert!(
        waited < Duration::from_millis(3000),
        "TRUNCATE waited {waited:?}\n{stderr}"
    );

    let report = env.report();
    let g = report_group(&report, "large");
    let attempts = g["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "yielded", "{g:#}");
    let to = &attempts[0]["yielded_to"];
    assert!(to["query"].as_str().unwrap().contains("TRUNCATE"), "{g:#}");
    assert!(stderr.contains("yielded to pid"), "{stderr}");
    assert_eq!(g["status"], "ok", "{g:#}");
    assert_eq!(attempts.last().unwrap()["outcome"], "ok");
    env.assert_no_ing();
    let restored = db.another("yield_r");
    restore(std::path::Path::new(g["file"].as_str().unwrap()), &restored);
    assert_eq!(restored.query_one("SELECT count(*) FROM big"), "0");
}

#[test]
fn seed_truncate_mid_run_affects_only_its_own_group() {
    let db = fresh_db("seed8");
    let rows = [2, 15, 10, 30, 40, 10, 10, 50]; // × 10 000: the seed's proportions, scaled down
    let mut sql = String::new();
    for (i, r) in rows.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE TABLE t{n} (id int, info text, crt_time timestamp);
             INSERT INTO t{n} SELECT g, md5(random()::text), clock_timestamp() FROM generate_series(1, {r}0000) g;\n",
            n = i + 1
        ));
    }
    db.sql(&sql);
    let env = Env::new();
    env.config_for(&db)
        .backup("jobs", "2")
        .backup("yield_after", &ts("500ms"))
        .backup("retry_delay", &ts("200ms"))
        .write(&env);
    let run = spawn_run(&env);
    wait_for_copy_any(&db, Duration::from_secs(30));
    let waited = timed_sql(&db, "TRUNCATE t7");
    let (code, stderr) = finish(run);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        waited < Duration::from_millis(2500),
        "TRUNCATE t7 waited {waited:?}\n{stderr}"
    );
    let report = env.report();
    for g in report["groups"].as_array().unwrap() {
        assert_eq!(g["status"], "ok", "{g:#}");
        if g["group"] != "public.t7" && g["kind"] == "tables" {
            assert_eq!(g["attempts"].as_array().unwrap().len(), 1, "{g:#}");
        }
    }
}

fn wait_for_copy_any(db: &TestDb, limit: Duration) {
    wait_until("a dump copies", limit, || {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_groupdump/%' \
             AND state = 'active' AND query LIKE 'COPY%'",
        ) != "0"
    });
}

#[test]
fn each_table_is_locked_only_while_its_own_group_is_dumped() {
    let db = fresh_db("lockhold");
    let mut sql = String::new();
    for i in 0..16 {
        sql.push_str(&format!(
            "CREATE TABLE h{i:02} (id int, info text);
             INSERT INTO h{i:02} SELECT g, md5(g::text) FROM generate_series(1, 60000) g;\n"
        ));
    }
    db.sql(&sql);
    let oids: HashMap<String, String> = db
        .query("SELECT oid::text, relname FROM pg_class WHERE relname ~ '^h[0-9]+$'")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let env = Env::new();
    // The pg_dump engine, whose runs here take no schema dump: every lock the poller sees is a
    // group's. With the native engine a schema-only dump locks every table at the start (by
    // design), which this poller would count against each table's group; its native
    // counterpart, which leaves that dump out, is
    // native_faults::native_each_table_is_locked_only_while_its_own_group_is_copied.
    env.config_for(&db)
        .backup("engine", &ts("pg_dump"))
        .backup("schema", "false")
        .backup("jobs", "2")
        .write(&env);

    // Poll pg_locks from one session (one long-lived psql reading queries on stdin would be
    // nicer; a tight loop of short queries is simpler and fast enough at this scale).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let db = db.clone();
        std::thread::spawn(move || {
            let mut seen: HashMap<String, (Instant, Instant)> = HashMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = db.query(&format!(
                    "SELECT l.relation::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE a.application_name LIKE 'pg_groupdump/%' AND l.locktype = 'relation' \
                       AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = {})",
                    ql(&db.name)
                ));
                let now = Instant::now();
                for r in rows {
                    let e = seen.entry(r[0].clone()).or_insert((now, now));
                    e.1 = now;
                }
            }
            seen
        })
    };
    let started = Instant::now();
    let out = env.run(&["run"]);
    let wall = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = poller.join().unwrap();
    out.expect_code(0);
    let report = env.report();

    let mut checked = 0;
    let mut longest = Duration::ZERO;
    for (oid, (first, last)) in &seen {
        let Some(name) = oids.get(oid) else { continue };
        let held = *last - *first;
        longest = longest.max(held);
        let g = report_group(&report, &format!("public.{name}"));
        let own = Duration::from_millis(g["duration_ms"].as_u64().unwrap());
        assert!(
            held <= own + Duration::from_millis(300),
            "{name} stayed locked {held:?}, its own dump took {own:?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 8,
        "the poller saw too few locked tables ({checked}): {seen:?}"
    );
    assert!(
        longest * 3 < wall,
        "longest lock hold {longest:?} is not small against the run's {wall:?}"
    );
}
