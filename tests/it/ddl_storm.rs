//! Tables that change under a run, with both engines: dropped, renamed, detached from their
//! partitioned table, altered, truncated or created between the plan and their group's dump.
//! Nothing is lost and nothing is called a failure: a dropped table is reported `gone`, a
//! renamed one is dumped under its new name in its planned group, a partition detached while
//! its group waited is dumped as its group's snapshot saw it.
//!
//! The focused tests hold every dump still behind a session that locks the largest table (the
//! run's schema dump waits for it first, `jobs = 1` keeps the groups behind it), change the
//! other tables while the run waits, then let it go. The storm test lets a session change
//! tables as fast as it can while a run dumps hundreds of one-table groups.

use serde_json::Value;

use crate::util::faults::*;
use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Changes while the run waits
// ---------------------------------------------------------------------------------------------

/// `aaa_blocker` first: the largest table (its group is dumped first) and the lowest oid
/// (pg_dump locks tables in oid order, so the schema dump waits on it before locking any
/// other).
const WAITING_DB: &str = "
    CREATE TABLE aaa_blocker AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 20000) g;
    CREATE TABLE t_drop AS SELECT g AS id FROM generate_series(1, 100) g;
    CREATE TABLE t_ren (id int PRIMARY KEY, info text);
    INSERT INTO t_ren SELECT g, md5(g::text) FROM generate_series(1, 200) g;
    CREATE TABLE t_keep AS SELECT g AS id FROM generate_series(1, 300) g;
    CREATE TABLE t_drop2 AS SELECT g AS id FROM generate_series(1, 50) g;
    CREATE TABLE parted (id int, info text) PARTITION BY RANGE (id);
    CREATE TABLE p1 PARTITION OF parted FOR VALUES FROM (0) TO (1000);
    CREATE TABLE p2 PARTITION OF parted FOR VALUES FROM (1000) TO (2000);
    INSERT INTO parted SELECT g, md5(g::text) FROM generate_series(1, 1999) g;
    VACUUM ANALYZE;";

fn waiting_groups(db: &str) -> String {
    let mut s = String::new();
    for (name, tables) in [
        ("g_blocker", &["public.aaa_blocker"][..]),
        ("g_drop", &["public.t_drop"]),
        ("g_ren", &["public.t_ren"]),
        ("g_mixed", &["public.t_keep", "public.t_drop2"]),
        ("g_parted", &["public.parted"]),
    ] {
        s.push_str(&group_cfg(db, name, tables));
    }
    s.push_str(SKIP_UNGROUPED);
    s
}

/// Whether a session of the run waits for a lock (in `db`: tests run side by side).
fn run_waits(db: &TestDb) -> bool {
    !db.query(
        "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE NOT l.granted AND a.application_name LIKE 'pg_groupdump/%'
            AND a.datname = current_database()",
    )
    .is_empty()
}

/// Runs `engine` over [`WAITING_DB`] (after a first run in which nothing changed), changing
/// tables while the second run waits for its first lock; returns the second run's report,
/// its output and the database.
fn run_with_changes_while_waiting(engine: &str) -> (Value, Ended, TestDb, Env) {
    let db = fresh_db(&format!("ddl_wait_{engine}"));
    db.sql(WAITING_DB);
    let env = Env::new();
    Config::new(&env, &db.name)
        .backup("engine", &ts(engine))
        .backup("jobs", "1")
        .backup("lock_wait_timeout", &ts("60s"))
        .backup("retry_delay", &ts("1s"))
        .extra(&waiting_groups(&db.name))
        .extra("[retention]\nmax_age = \"1s\"\nkeep_min = 1\n")
        .write(&env);
    env.run(&["run"]).expect_code(0);

    let (locker, _) = Locker::hold(&db, "aaa_blocker");
    let mut run = Running::start(&env, &["run"]);
    run.wait_until("the run waits for its first lock", secs(60), || {
        run_waits(&db)
    });
    db.sql(
        "DROP TABLE t_drop; ALTER TABLE t_ren RENAME TO t_ren_new; DROP TABLE t_drop2;
         ALTER TABLE parted DETACH PARTITION p2;",
    );
    drop(locker);
    let ended = run.wait(secs(120));
    let reports = env.dir.join("reports");
    let newest = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    (read_json(&newest), ended, db, env)
}

/// The first run's dump of `group`: the one file of its directory older than `report`'s run.
fn earlier_dumps(env: &Env, db: &str, group: &str, report: &Value) -> Vec<std::path::PathBuf> {
    let run_id = report["run_id"].as_str().unwrap();
    let this = expected_dump_path(&env.dir, db, group, run_id);
    let dir = this.parent().unwrap().to_path_buf();
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p != &this);
    v
}

/// The schema dump's entry in a run report.
fn schema_entry(report: &Value) -> &Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "schema")
        .unwrap_or_else(|| panic!("no schema dump in the report: {report:#}"))
}

fn change(g: &Value, table: &str) -> Value {
    g["table_changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no table_changes: {g:#}"))
        .iter()
        .find(|c| c["table"] == table)
        .unwrap_or_else(|| panic!("no change of {table}: {g:#}"))
        .clone()
}

fn assert_changes_while_waiting(engine: &str) {
    let (report, ended, db, env) = run_with_changes_while_waiting(engine);
    assert_eq!(ended.status.code(), Some(0), "{ended:?}");
    assert_eq!(report["status"], "ok", "{report:#}");
    env.assert_no_ing();
    let run_id = report["run_id"].as_str().unwrap().to_string();

    // Dropped: gone, logged, no file, and the earlier dump kept by retention.
    let g = report_group(&report, "g_drop");
    assert_eq!(g["status"], "gone", "{g:#}");
    let c = change(g, "public.t_drop");
    assert_eq!(c["change"], "gone", "{c:#}");
    assert!(
        c["found_at"]
            .as_str()
            .is_some_and(|t| t >= report["started_at"].as_str().unwrap()),
        "{c:#}"
    );
    assert!(!expected_dump_path(&env.dir, &db.name, "g_drop", &run_id).exists());
    assert_eq!(
        earlier_dumps(&env, &db.name, "g_drop", &report).len(),
        1,
        "{report:#}"
    );
    assert!(
        ended
            .stderr
            .contains("public.t_drop was dropped after the plan"),
        "{ended:?}"
    );

    // Renamed: dumped under its new name, in its planned group, old and new in the report.
    let g = report_group(&report, "g_ren");
    assert_eq!(g["status"], "ok", "{g:#}");
    assert_eq!(strings(&g["tables"]), vec!["public.t_ren_new"], "{g:#}");
    let c = change(g, "public.t_ren");
    assert_eq!(
        (&c["change"], &c["now"]),
        (&Value::from("renamed"), &Value::from("public.t_ren_new")),
        "{c:#}"
    );
    let file = checked_file(g);
    assert_eq!(
        file,
        expected_dump_path(&env.dir, &db.name, "g_ren", &run_id)
    );
    let target = db.another("ren_restored");
    restore(&file, &target);
    assert_same_rows(&db, &target, "public", "t_ren_new");
    assert!(
        ended.stderr.contains("renamed to public.t_ren_new"),
        "{ended:?}"
    );

    // One table of two dropped: the group is dumped without it.
    let g = report_group(&report, "g_mixed");
    assert_eq!(g["status"], "ok", "{g:#}");
    assert_eq!(strings(&g["tables"]), vec!["public.t_keep"], "{g:#}");
    assert_eq!(change(g, "public.t_drop2")["change"], "gone");
    assert_dump_tables(&checked_file(g), &db, &[("public", "t_keep")], true);

    // Detached while the group waited: dumped as the group's snapshot saw it, a table of its
    // own with its rows, no longer a partition.
    let g = report_group(&report, "g_parted");
    assert_eq!(g["status"], "ok", "{g:#}");
    let target = db.another("parted_restored");
    restore(&checked_file(g), &target);
    assert_same_rows(&db, &target, "public", "p2");
    assert_same_rows(&db, &target, "public", "parted");
    assert_eq!(target.query_one("SELECT count(*) FROM parted"), "999");
    assert_eq!(
        target.query_one("SELECT relispartition FROM pg_class WHERE oid = 'public.p2'::regclass"),
        "f"
    );

    // The schema dump met the dropped table under its lock, and was tried again.
    let s = schema_entry(&report);
    assert_eq!(s["status"], "ok", "{s:#}");
    assert_eq!(
        outcomes(s).first().map(String::as_str),
        Some("table_changed"),
        "{s:#}"
    );
    if engine == "native" {
        for name in ["g_blocker", "g_mixed", "g_parted"] {
            assert_eq!(
                report_group(&report, name)["engine"],
                "native",
                "{report:#}"
            );
        }
    }
}

#[test]
fn ddl_while_waiting_pg_dump() {
    assert_changes_while_waiting("pg_dump");
}

#[test]
fn ddl_while_waiting_native() {
    assert_changes_while_waiting("native");
}
