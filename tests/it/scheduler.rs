//! The scheduler: what starts when.

use std::time::{Duration, Instant};

use crate::util::*;

/// A native group waits for its database's schema archive, but the jobs behind it do not
/// wait with it: while the schema dump is held up by a lock (and retried), a pg_dump group
/// queued behind the native group takes a free slot and finishes.
#[test]
fn a_native_group_waiting_for_its_schema_archive_holds_up_no_other_job() {
    let db = fresh_db("sched_toc");
    db.sql(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
         CREATE TABLE small (id int); INSERT INTO small VALUES (1), (2);
         CREATE TABLE held (id int); INSERT INTO held VALUES (1);
         ANALYZE;",
    );
    let env = Env::new();
    let d = ts(&db.name);
    // pg_dump groups (small, held) and one native group (big).
    env.config_for(&db)
        .backup("engine", ts("pg_dump").as_str())
        .backup("jobs", "2")
        .backup("lock_wait_timeout", ts("1s").as_str())
        .backup("lock_retries", "6")
        .backup("retry_delay", ts("1s").as_str())
        .extra(&format!(
            "[[group]]\nname = \"big\"\ndatabase = {d}\ntables = [\"public.big\"]\nengine = \"native\"\n\n\
             [[group]]\nname = \"small\"\ndatabase = {d}\ntables = [\"public.small\"]\n\n\
             [[group]]\nname = \"held\"\ndatabase = {d}\ntables = [\"public.held\"]\n\n\
             [ungrouped]\nmode = \"skip\"\n"
        ))
        .write(&env);

    // Hold `held` for a few seconds: the schema dump (which locks every table) times out and
    // is retried until the lock goes.
    let mut holder = psql_command(
        &db.name,
        "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;",
    )
    .spawn()
    .expect("psql");
    let start = Instant::now();
    while db.query_one(
        "SELECT count(*) FROM pg_locks WHERE relation = 'public.held'::regclass \
           AND mode = 'AccessExclusiveLock' AND granted",
    ) != "1"
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lock was never taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = env.run(&["run"]);
    let _ = holder.wait();
    out.expect_code(0);
    let report = env.report();
    let schema = report["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["kind"] == "schema")
        .expect("a schema entry")
        .clone();
    assert!(
        schema["attempts"].as_array().expect("attempts").len() > 1,
        "the schema dump met the lock: {schema:#}"
    );
    let big = report_group(&report, "big");
    assert_eq!(big["engine"], "native", "{big:#}");
    let small = report_group(&report, "small");
    let (small_done, schema_done) = (
        small["finished_at"].as_str().expect("finished_at"),
        schema["finished_at"].as_str().expect("finished_at"),
    );
    assert!(
        small_done < schema_done,
        "small (behind the native group) finished at {small_done}, after the schema dump at {schema_done}"
    );
    let big_started = big["attempts"][0]["started_at"]
        .as_str()
        .expect("started_at");
    assert!(
        big_started >= schema_done,
        "the native group started ({big_started}) only once its schema archive was there ({schema_done})"
    );
    env.assert_no_ing();
}
