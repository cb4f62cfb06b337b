//! Split tables (`[backup] split_above`, native engine): a table whose heap is at least
//! `split_above` is copied by several sessions in the group's snapshot, each a range of its
//! blocks, into its one TABLE DATA entry in physical order.
//!
//! The archive of a split table restores (`pg_restore -j 2`) to the source's rows with every
//! compression the test's pg_dump knows, and its COPY data is, row for row and in order, what
//! `pg_dump -Fc -t` writes of the table (rows updated after the load, so physical order is
//! not key order). A lock timeout in one of the extra sessions (its LOCK queued behind an
//! `ALTER TABLE` that waits for the group's own lock) ends the attempt as a lock timeout, and
//! the retry succeeds. `split_above = "off"` copies with one session; a size that is not one
//! is a configuration error.
//!
//! A range is at least 1024 blocks (8 MiB), so a table splits in two from a little more than
//! 8 MiB of heap: the tables here are 10–20 MB, ANALYZEd so that the plan weighs them.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::util::faults::*;
use crate::util::*;

/// `big (id int PRIMARY KEY, v text)`: 100 000 rows (about 11 MB of heap), every seventh
/// updated after the load (its new version at the end of the heap: physical order is not key
/// order); `small`: 100 rows.
static TEMPLATE: Template = Template::new("split_template", || {
    "CREATE TABLE big (id int PRIMARY KEY, v text);
     INSERT INTO big SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, 100000) g;
     UPDATE big SET v = 'u' || v WHERE id % 7 = 0;
     CREATE TABLE small AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 100) g;
     VACUUM ANALYZE;"
        .to_owned()
});

/// The group `g` of `tables` of `db`, nothing ungrouped.
fn group_g(db: &str, tables: &[&str]) -> String {
    format!("{}{SKIP_UNGROUPED}", group_cfg(db, "g", tables))
}

/// The `split` entries of `g`'s last attempt.
fn split_of(g: &Value) -> Vec<Value> {
    let attempts = g["attempts"].as_array().unwrap_or_else(|| panic!("{g:#}"));
    let last = attempts
        .last()
        .unwrap_or_else(|| panic!("no attempt: {g:#}"));
    last.get("split")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The entry of table `name` in `split` (its `table` names it).
fn split_entry<'a>(split: &'a [Value], name: &str) -> Option<&'a Value> {
    split.iter().find(|s| {
        s["table"]
            .as_str()
            .is_some_and(|t| t == name || t.ends_with(&format!(".{name}")))
    })
}

/// Runs `c` (must exit 0); returns its stdout.
fn stdout_of(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"))
}

/// The COPY data lines of `public.<table>` in a `pg_restore -f - --data-only` of `file`.
fn copy_rows(file: &Path, table: &str) -> Vec<String> {
    let s = server();
    let mut c = s.client(&s.bindir, "pg_restore");
    c.args(["--data-only", "-f", "-"]).arg(file);
    let script = stdout_of(c, &format!("pg_restore -f - {}", file.display()));
    let head = format!("COPY public.{table} ");
    let mut lines = script.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with(&head))
        .unwrap_or_else(|| panic!("no {head:?} in the script of {}", file.display()));
    let rows: Vec<String> = lines
        .by_ref()
        .take_while(|l| *l != "\\.")
        .map(str::to_owned)
        .collect();
    rows
}

/// `pg_restore -j 2 --exit-on-error -d <target> file`.
fn restore_parallel(file: &Path, target: &TestDb) {
    let s = server();
    let mut c = s.client(&s.bindir, "pg_restore");
    c.args(["-j", "2", "--exit-on-error", "-d"])
        .arg(conninfo_db(&target.name))
        .arg(file);
    stdout_of(c, &format!("pg_restore -j 2 {}", file.display()));
}

/// Compressions the test's pg_dump knows.
fn compressions() -> Vec<&'static str> {
    let mut v = vec!["gzip", "none"];
    if bin_major(&server().bindir, "pg_dump") >= 16 {
        v.extend(["zstd", "lz4"]);
    }
    v
}

#[test]
fn split_copy_restores_like_pg_dump_with_every_method() {
    let db = TEMPLATE.clone_db("split_methods");
    let heap: i64 = db
        .query_one("SELECT pg_relation_size('public.big')")
        .parse()
        .unwrap();
    assert!(heap > 9 << 20, "big's heap is only {heap} bytes");
    // Physical order is not key order.
    assert_ne!(
        db.query("SELECT id::text FROM big"),
        db.query("SELECT id::text FROM big ORDER BY id"),
        "big's rows are in key order"
    );

    // What pg_dump writes of the table.
    let tmp = Env::new();
    let reference = tmp.path().join("big.pgdump");
    let s = server();
    let mut c = s.client(&s.bindir, "pg_dump");
    c.args(["-Fc", "-t", "public.big", "-f"])
        .arg(&reference)
        .arg("-d")
        .arg(conninfo_db(&db.name));
    stdout_of(c, "pg_dump -Fc -t public.big");
    let want = copy_rows(&reference, "big");
    assert_eq!(want.len(), 100_000);

    for method in compressions() {
        let started = Instant::now();
        let env = Env::new();
        Config::new(&env, &db.name)
            .backup("engine", &ts("native"))
            .backup("split_above", &ts("1MB"))
            .backup("jobs", "3")
            .backup("compression", &ts(method))
            .extra(&group_g(&db.name, &["public.big", "public.small"]))
            .write(&env);
        let report = env.run_ok(&[]);
        let g = report_group(&report, "g");
        assert_eq!(g["status"], "ok", "{method}: {g:#}");
        assert_eq!(g["engine"], "native", "{method}: {g:#}");
        assert_eq!(outcomes(g), ["ok"], "{method}: {g:#}");
        let split = split_of(g);
        let e = split_entry(&split, "big")
            .unwrap_or_else(|| panic!("{method}: big is not split: {g:#}"));
        assert!(e["sessions"].as_u64().unwrap() >= 2, "{method}: {e:#}");
        assert!(e["ranges"].as_u64().unwrap() >= 2, "{method}: {e:#}");
        assert!(
            split_entry(&split, "small").is_none(),
            "{method}: small (100 rows) was split: {g:#}"
        );
        let file = checked_file(g);

        let target = db.another("split_restore");
        restore_parallel(&file, &target);
        assert_same_rows(&db, &target, "public", "big");
        assert_same_rows(&db, &target, "public", "small");

        let got = copy_rows(&file, "big");
        assert_eq!(got.len(), want.len(), "{method}: rows of big");
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(
            first_diff, None,
            "{method}: big's COPY rows differ from pg_dump's (in order)"
        );
        eprintln!("split {method}: {:?}", started.elapsed());
    }
}

/// `b_big` (about 12 MB of heap, split) and, copied before it (tables are copied in name
/// order), `a_slow`: 12 values of 2.5 MB each, TOASTed (its heap is tiny, not split; its COPY
/// is 30 MB).
fn lock_db() -> TestDb {
    let db = fresh_db("split_lock");
    db.sql(
        "CREATE TABLE a_slow AS SELECT g AS id, repeat(md5(g::text), 80000) AS v \
           FROM generate_series(1, 12) g;
         CREATE TABLE b_big AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS v \
           FROM generate_series(1, 110000) g;
         VACUUM ANALYZE;",
    );
    db
}

#[test]
fn a_lock_timeout_in_a_split_session_fails_the_attempt() {
    let db = lock_db();
    let env = Env::new();
    Config::new(&env, &db.name)
        .backup("engine", &ts("native"))
        .backup("split_above", &ts("1MB"))
        .backup("jobs", "2")
        .backup("lock_wait_timeout", &ts("1s"))
        .backup("lock_retries", "1")
        .backup("retry_delay", &ts("1s"))
        .backup("yield_after", &ts("never"))
        .extra(&group_g(&db.name, &["public.a_slow", "public.b_big"]))
        .write(&env);
    let app = "pg_groupdump/g";
    // The sessions of the group in a transaction: (pid, whether it is copying a_slow).
    let sessions = |pg: &mut SqlSession| -> Vec<(String, String)> {
        pg.query(&format!(
            "SELECT pid::text, (query LIKE 'COPY%' AND query LIKE '%a\\_slow%')::text \
               FROM pg_stat_activity WHERE datname = {} \
             AND application_name = {} AND xact_start IS NOT NULL",
            ql(&db.name),
            ql(app)
        ))
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
    };
    let copying_a_slow = |v: &[(String, String)]| v.len() == 1 && v[0].1 == "true";
    let mut pg = poller();
    let mut run = Running::start(&env, &["run"]);
    run.wait_until("a_slow is copying", secs(30), || {
        copying_a_slow(&sessions(&mut pg))
    });
    // Hold the run still while the ALTER queues: the group's session is still at a_slow (no
    // extra session yet), holding its ACCESS SHARE lock on b_big.
    run.freeze();
    let seen = sessions(&mut pg);
    assert!(
        copying_a_slow(&seen),
        "the group went past a_slow before the run could be held still: {seen:?}"
    );
    let marker = "split_lock_alter";
    let mut alter = psql_command(
        &db.name,
        &format!("BEGIN; ALTER TABLE b_big ADD COLUMN {marker} int; ROLLBACK;"),
    )
    .spawn()
    .expect("spawn psql");
    let b_big = db.table_oid("public", "b_big");
    wait_until("the ALTER waits for b_big", secs(10), || {
        pg.query_one(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND l.relation = {b_big} AND a.query LIKE '%{marker}%'"
        )) != "0"
    });
    run.thaw();
    let ended = run.wait(secs(60));
    let status = alter.wait().expect("wait psql");
    assert!(status.success(), "the ALTER's psql: {status:?}");
    assert_eq!(ended.status.code(), Some(0), "{ended:?}");

    let report = env.report();
    let g = report_group(&report, "g");
    assert_eq!(g["status"], "ok", "{g:#}");
    assert_eq!(g["engine"], "native", "{g:#}");
    assert_eq!(outcomes(g), ["lock_timeout", "ok"], "{g:#}");
    let first = &g["attempts"][0];
    let err = first["error"].as_str().unwrap_or_default();
    assert!(err.contains("lock"), "the first attempt's error: {first:#}");
    // The queued ALTER is named: seen while the group still held its lock.
    let blockers = first["blockers"].as_array().cloned().unwrap_or_default();
    assert!(
        blockers.iter().any(|b| b["query"]
            .as_str()
            .is_some_and(|q| q.contains("ALTER TABLE b_big"))),
        "the first attempt's blockers: {first:#}"
    );
    assert!(first["split"].is_null(), "{first:#}");
    let split = split_of(g);
    let e = split_entry(&split, "b_big").unwrap_or_else(|| panic!("b_big not split: {g:#}"));
    assert!(e["sessions"].as_u64().unwrap() >= 2, "{e:#}");
    assert!(split_entry(&split, "a_slow").is_none(), "{g:#}");
    let file = checked_file(g);
    let target = db.another("split_lock_restore");
    restore(&file, &target);
    assert_same_rows(&db, &target, "public", "b_big");
    assert_same_rows(&db, &target, "public", "a_slow");
}

#[test]
fn split_off_copies_with_one_session() {
    let db = TEMPLATE.clone_db("split_off");
    let env = Env::new();
    Config::new(&env, &db.name)
        .backup("engine", &ts("native"))
        .backup("split_above", &ts("off"))
        .backup("jobs", "3")
        .extra(&group_g(&db.name, &["public.big", "public.small"]))
        .write(&env);
    let report = env.run_ok(&[]);
    let g = report_group(&report, "g");
    assert_eq!(g["status"], "ok", "{g:#}");
    assert_eq!(g["engine"], "native", "{g:#}");
    assert_eq!(outcomes(g), ["ok"], "{g:#}");
    for a in g["attempts"].as_array().unwrap() {
        assert!(
            a.get("split").is_none(),
            "split with split_above off: {a:#}"
        );
    }
    let file = checked_file(g);
    let target = db.another("split_off_restore");
    restore(&file, &target);
    assert_same_rows(&db, &target, "public", "big");
    assert_same_rows(&db, &target, "public", "small");
}

#[test]
fn split_above_that_is_not_a_size_is_a_config_error() {
    let env = Env::new();
    Config::offline(&env, "cfg_db")
        .backup("split_above", &ts("12 parsecs"))
        .write(&env);
    config_error(&env, &["backup.split_above", "12 parsecs"]);
    let out = env.run(&["run"]);
    out.expect_code(2);
    for n in [
        "backup.split_above",
        "12 parsecs",
        env.config.to_str().unwrap(),
    ] {
        assert!(
            out.stderr.contains(n),
            "stderr does not contain {n:?}: {out:?}"
        );
    }
    let files = env.files();
    assert!(files.is_empty(), "files in the backup dir: {files:?}");
}
