//! `run`: files, dump contents, restores, report.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::*;
use serde_json::Value;

fn is_run_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
}

fn rfc3339(v: &Value, what: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{what} {s:?}: {e}"))
}

/// Check the report's top-level fields and every entry's shape; returns the run id.
fn check_report_shape(report: &Value, env: &Env, status: &str) -> String {
    let run_id = report["run_id"].as_str().expect("run_id").to_owned();
    assert!(
        is_run_id(&run_id),
        "run_id {run_id:?} is not yyyymmddThhmmssZ"
    );
    let started = rfc3339(&report["started_at"], "started_at");
    let finished = rfc3339(&report["finished_at"], "finished_at");
    assert!(started <= finished, "{report:#}");
    assert_eq!(report["status"], status, "{report:#}");
    assert!(report["host"].is_string(), "host: {report:#}");
    assert_eq!(report["dir"].as_str(), env.dir.to_str(), "dir: {report:#}");
    for g in report["groups"].as_array().expect("groups") {
        let kind = g["kind"].as_str().expect("kind");
        assert!(["tables", "schema", "globals"].contains(&kind), "{g:#}");
        assert!(g["group"].is_string(), "{g:#}");
        assert!(g["tables"].is_array(), "{g:#}");
        if kind == "globals" {
            assert!(g["database"].is_null(), "{g:#}");
            assert_eq!(g["group"], "_globals");
        } else {
            assert!(g["database"].is_string(), "{g:#}");
        }
        if kind == "schema" {
            assert_eq!(g["group"], "_schema");
        }
        let s = rfc3339(&g["started_at"], "group started_at");
        let f = rfc3339(&g["finished_at"], "group finished_at");
        assert!(s <= f, "{g:#}");
        match g["status"].as_str().expect("status") {
            "ok" => {
                assert!(g["error"].is_null(), "{g:#}");
                checked_file(g);
            }
            "failed" => {
                assert!(g["error"].is_string(), "{g:#}");
                for k in ["file", "bytes", "sha256"] {
                    assert!(g[k].is_null(), "failed group has {k}: {g:#}");
                }
            }
            other => panic!("bad status {other}: {g:#}"),
        }
    }
    run_id
}

/// Restore `file` into a new database (after creating `schemas`) and check that it holds
/// exactly `tables` with the same rows as `src`.
fn restore_and_compare(src: &TestDb, file: &Path, schemas: &[&str], tables: &[(&str, &str)]) {
    let target = src.another("restore");
    target.create_schemas(schemas.iter().copied());
    restore(file, &target);
    let want: BTreeSet<(String, String)> = tables
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    assert_eq!(
        target.user_tables(),
        want,
        "tables restored from {}",
        file.display()
    );
    for (s, t) in tables {
        assert_same_rows(src, &target, s, t);
    }
}

fn shop(db: &TestDb) {
    db.sql(
        "CREATE SCHEMA audit;
         CREATE TABLE orders (id int, customer text, total numeric);
         INSERT INTO orders SELECT g, 'c' || g, g * 1.5 FROM generate_series(1, 50) g;
         CREATE TABLE order_items (order_id int, sku text, qty int);
         INSERT INTO order_items SELECT g % 50 + 1, 'sku' || g, g FROM generate_series(1, 120) g;
         CREATE TABLE audit.log (at timestamptz, msg text);
         INSERT INTO audit.log VALUES ('2024-01-01 00:00+00', E'multi\nline'), ('2024-01-02 00:00+00', NULL);
         CREATE TABLE audit.log2 (x jsonb);
         INSERT INTO audit.log2 VALUES ('{\"a\": [1,2]}');
         CREATE TABLE misc (k text, v bytea);
         INSERT INTO misc VALUES ('a', '\\x00ff'), ('b', NULL);
         CREATE TABLE empty_t (id int);",
    );
}

fn shop_groups(db: &TestDb) -> String {
    format!(
        r#"
[[group]]
name = "orders"
database = {d}
tables = ["public.orders", "public.order_items"]

[[group]]
name = "audit"
database = {d}
schemas = ["audit"]
"#,
        d = ts(&db.name)
    )
}

#[test]
fn run_dumps_every_group_and_writes_report() {
    let db = fresh_db("run_basic");
    shop(&db);
    let env = Env::new();
    env.config_for(&db)
        .backup("jobs", "2")
        .extra(&shop_groups(&db))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(0);

    let report = env.report();
    let run_id = check_report_shape(&report, &env, "ok");
    let groups = report_groups(&report, &db.name);
    let expect: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "orders",
            vec![("public", "orders"), ("public", "order_items")],
        ),
        ("audit", vec![("audit", "log"), ("audit", "log2")]),
        ("public.misc", vec![("public", "misc")]),
        ("public.empty_t", vec![("public", "empty_t")]),
    ];
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        sorted(expect.iter().map(|(g, _)| g.to_string()).collect()),
        "{report:#}"
    );
    let mut expected_files = BTreeSet::new();
    for (name, tables) in &expect {
        let g = &groups[*name];
        assert_eq!(g["status"], "ok", "{g:#}");
        assert_eq!(
            sorted(strings(&g["tables"])),
            sorted(tables.iter().map(|(s, t)| display(s, t)).collect()),
            "{g:#}"
        );
        let file = checked_file(g);
        assert_eq!(
            file,
            expected_dump_path(&env.dir, &db.name, name, &run_id),
            "file of group {name}"
        );
        expected_files.insert(file.clone());
        assert_dump_tables(&file, &db, tables, true);
        let schemas: Vec<&str> = tables.iter().map(|(s, _)| *s).collect();
        restore_and_compare(&db, &file, &schemas, tables);
    }

    // schema dump
    let schema_entries: Vec<&Value> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["kind"] == "schema")
        .collect();
    assert_eq!(schema_entries.len(), 1, "{report:#}");
    let se = schema_entries[0];
    assert_eq!(se["database"], db.name.as_str());
    assert_eq!(se["status"], "ok");
    let schema_file = checked_file(se);
    assert_eq!(
        schema_file,
        env.dir
            .join(&db.name)
            .join("_schema")
            .join(format!("{}._schema.{run_id}.dump", db.name))
    );
    expected_files.insert(schema_file.clone());
    let toc = toc(&schema_file);
    assert!(
        !toc.iter().any(|e| e.desc == "TABLE DATA"),
        "schema dump holds data: {toc:#?}"
    );
    let schema_tables: BTreeSet<u32> = toc
        .iter()
        .filter(|e| e.desc == "TABLE")
        .map(|e| e.oid)
        .collect();
    let all: BTreeSet<u32> = db
        .user_tables()
        .iter()
        .map(|(s, t)| db.table_oid(s, t))
        .collect();
    assert_eq!(schema_tables, all, "schema dump defines every table");
    assert!(toc
        .iter()
        .any(|e| e.desc == "SCHEMA" && e.rest.starts_with("- audit ")));

    // globals = false: no globals entry, no _globals dir
    assert!(
        !report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["kind"] == "globals"),
        "{report:#}"
    );
    assert!(!env.dir.join("_globals").exists());

    // exactly the reported dumps on disk, all with the run's timestamp
    let on_disk: BTreeSet<PathBuf> = env.dumps().into_iter().collect();
    assert_eq!(on_disk, expected_files);
    env.assert_no_ing();
    assert!(env
        .dir
        .join("reports")
        .join(format!("{run_id}.json"))
        .exists());
}

#[test]
fn run_globals_dump() {
    let db = fresh_db("run_globals");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let role = unique_name("globals_role");
    psql("postgres", &format!("CREATE ROLE {} NOLOGIN", qi(&role)));
    let env = Env::new();
    env.config_for(&db)
        .backup("globals", "true")
        .backup("schema", "false")
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let report = env.report();
    let run_id = check_report_shape(&report, &env, "ok");
    let globals: Vec<&Value> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["kind"] == "globals")
        .collect();
    assert_eq!(globals.len(), 1, "{report:#}");
    assert_eq!(globals[0]["status"], "ok");
    let file = checked_file(globals[0]);
    assert_eq!(
        file,
        env.dir
            .join("_globals")
            .join(format!("_globals.{run_id}.sql"))
    );
    let sql = fs::read_to_string(&file).unwrap();
    assert!(sql.contains("CREATE ROLE"), "{sql}");
    assert!(sql.contains(&role), "globals name the role {role}");
    // schema = false: no schema dump
    assert!(!env.dir.join(&db.name).join("_schema").exists());
    env.assert_no_ing();
}

#[test]
fn run_report_option_writes_there() {
    let db = fresh_db("run_report_opt");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let env = Env::new();
    env.cfg(&db, "");
    let report_path = env.path().join("my-report.json");
    env.run(&["run", "--report", report_path.to_str().unwrap()])
        .expect_code(0);
    let report = read_json(&report_path);
    check_report_shape(&report, &env, "ok");
    let groups = report_groups(&report, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["public.t"])
    );
}

#[test]
fn run_group_option_dumps_only_that_group() {
    let db = fresh_db("run_group_opt");
    shop(&db);
    let env = Env::new();
    env.config_for(&db)
        .backup("schema", "false")
        .extra(&shop_groups(&db))
        .write(&env);
    env.run(&["run", "--group", "orders"]).expect_code(0);
    let report = env.report();
    let run_id = check_report_shape(&report, &env, "ok");
    let groups = report_groups(&report, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["orders"])
    );
    assert_eq!(
        env.dumps(),
        vec![expected_dump_path(&env.dir, &db.name, "orders", &run_id)]
    );

    // two --group options, one of them an ungrouped table's group
    let env2 = Env::new();
    env2.config_for(&db)
        .backup("schema", "false")
        .extra(&shop_groups(&db))
        .write(&env2);
    env2.run(&["run", "--group", "audit", "--group", "public.misc"])
        .expect_code(0);
    let report = env2.report();
    let groups = report_groups(&report, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["audit", "public.misc"])
    );
    assert_eq!(env2.dumps().len(), 2, "{:?}", env2.files());
}

#[test]
fn run_group_option_unknown_group_is_usage_error() {
    let db = fresh_db("run_group_unknown");
    db.sql("CREATE TABLE t (id int);");
    let env = Env::new();
    env.cfg(&db, "");
    let out = env.run(&["run", "--group", "no_such_group"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no_such_group"), "{out:?}");
    assert!(env.dumps().is_empty());
}

#[test]
fn run_database_option_selects_databases() {
    let db1 = fresh_db("run_dbsel_a");
    let db2 = fresh_db("run_dbsel_b");
    db1.sql("CREATE TABLE t1 (id int); INSERT INTO t1 VALUES (1);");
    db2.sql("CREATE TABLE t2 (id int); INSERT INTO t2 VALUES (2);");
    let env = Env::new();
    env.config_for(&db1)
        .backup("databases", &ta(&[&db1.name, &db2.name]))
        .write(&env);
    let plan = env.plan_json();
    assert_eq!(plan["databases"].as_array().unwrap().len(), 2, "{plan:#}");

    env.run(&["run", "--database", &db2.name]).expect_code(0);
    let report = env.report();
    let run_id = check_report_shape(&report, &env, "ok");
    assert!(report_groups(&report, &db1.name).is_empty(), "{report:#}");
    assert_eq!(
        report_groups(&report, &db2.name)
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        owned(&["public.t2"])
    );
    assert!(
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["database"] != db1.name.as_str()),
        "{report:#}"
    );
    assert!(!env.dir.join(&db1.name).exists(), "{:?}", env.files());
    assert!(expected_dump_path(&env.dir, &db2.name, "public.t2", &run_id).exists());
}

#[test]
fn run_partitioned_group_dumps_and_restores_partitions() {
    let db = fresh_db("run_partitions");
    db.sql(
        "CREATE TABLE ev (id int, d date) PARTITION BY RANGE (d);
         CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
             PARTITION BY HASH (id);
         CREATE TABLE ev_2025_a PARTITION OF ev_2025 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE ev_2025_b PARTITION OF ev_2025 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         INSERT INTO ev SELECT g, DATE '2024-06-01' + g FROM generate_series(1, 300) g;
         CREATE TABLE logs (id int) PARTITION BY LIST (id);
         CREATE TABLE logs_1 PARTITION OF logs FOR VALUES IN (1);
         CREATE TABLE logs_2 PARTITION OF logs FOR VALUES IN (2);
         INSERT INTO logs VALUES (1), (2), (2);",
    );
    let env = Env::new();
    env.config_for(&db)
        .backup("schema", "false")
        .extra(&format!(
            "[[group]]\nname = \"events\"\ndatabase = {}\ntables = [\"public.ev\"]\n",
            ts(&db.name)
        ))
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let report = env.report();
    let run_id = check_report_shape(&report, &env, "ok");
    let groups = report_groups(&report, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["events", "public.logs"])
    );
    let ev: Vec<(&str, &str)> = ["ev", "ev_2024", "ev_2025", "ev_2025_a", "ev_2025_b"]
        .iter()
        .map(|t| ("public", *t))
        .collect();
    let logs: Vec<(&str, &str)> = ["logs", "logs_1", "logs_2"]
        .iter()
        .map(|t| ("public", *t))
        .collect();
    for (name, tables) in [("events", &ev), ("public.logs", &logs)] {
        let file = expected_dump_path(&env.dir, &db.name, name, &run_id);
        assert_eq!(checked_file(&groups[name]), file);
        assert_eq!(
            sorted(strings(&groups[name]["tables"])),
            sorted(tables.iter().map(|(s, t)| display(s, t)).collect())
        );
        assert_dump_tables(&file, &db, tables, true);
        restore_and_compare(&db, &file, &[], tables);
    }
    assert_eq!(env.dumps().len(), 2, "{:?}", env.files());
}

#[test]
fn run_jobs_flag_and_compress() {
    let db = fresh_db("run_jobs");
    let mut sql = String::new();
    for i in 0..6 {
        sql.push_str(&format!(
            "CREATE TABLE j{i} (id int, v text); INSERT INTO j{i} SELECT g, repeat('x', g) FROM generate_series(1, 40) g;\n"
        ));
    }
    db.sql(&sql);
    let env = Env::new();
    env.config_for(&db)
        .backup("compress", "0")
        .backup("schema", "false")
        .write(&env);
    env.run(&["run", "--jobs", "4"]).expect_code(0);
    let report = env.report();
    let run_id = check_report_shape(&report, &env, "ok");
    let groups = report_groups(&report, &db.name);
    assert_eq!(groups.len(), 6);
    for i in 0..6 {
        let t = format!("j{i}");
        let file = expected_dump_path(&env.dir, &db.name, &format!("public.{t}"), &run_id);
        assert_dump_tables(&file, &db, &[("public", &t)], true);
        let header = std::process::Command::new(server().bin("pg_restore"))
            .arg("-l")
            .arg(&file)
            .output()
            .unwrap();
        let header = String::from_utf8_lossy(&header.stdout).into_owned();
        assert!(
            header.contains("Compression: 0") || header.contains("Compression: none"),
            "compress = 0 is honoured: {header}"
        );
    }
    env.assert_no_ing();
}

#[test]
fn run_exits_4_while_another_run_holds_the_lock() {
    use std::os::fd::AsRawFd;
    let db = fresh_db("run_lock");
    db.sql("CREATE TABLE t (id int);");
    let env = Env::new();
    env.cfg(&db, "");
    fs::create_dir_all(&env.dir).unwrap();
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(env.dir.join(".pg_groupdump.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    let out = env.run(&["run"]);
    out.expect_code(4);
    assert!(env.dumps().is_empty(), "{:?}", env.files());
    drop(lock);
    env.run(&["run"]).expect_code(0);
    assert_eq!(env.dumps().len(), 2, "{:?}", env.files());
}

#[test]
fn run_starts_the_largest_groups_first() {
    let db = fresh_db("largest_first");
    db.sql(
        "CREATE TABLE small (id int); INSERT INTO small SELECT generate_series(1, 10);
         CREATE TABLE large (id int, t text); INSERT INTO large SELECT g, md5(g::text) FROM generate_series(1, 60000) g;
         CREATE TABLE medium (id int, t text); INSERT INTO medium SELECT g, md5(g::text) FROM generate_series(1, 6000) g;
         CREATE TABLE tiny (id int);
         VACUUM ANALYZE small; VACUUM ANALYZE large; VACUUM ANALYZE medium; VACUUM ANALYZE tiny;",
    );
    let env = Env::new();
    env.config_for(&db)
        .backup("schema", "false")
        .backup("jobs", "1")
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let report = env.report();
    let mut started: Vec<(String, String)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["attempts"][0]["started_at"].as_str().unwrap().to_owned(),
                g["group"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, g)| g.as_str()).collect();
    assert_eq!(
        &order[..3],
        &["public.large", "public.medium", "public.small"],
        "{report:#}"
    );
}

/// A stand-in for the test server's pg_dump that appends each command line it is given to a
/// log (one line each) and runs the real one. Returns (the stand-in, its log).
fn recording_pg_dump(env: &Env) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = env.path().join("pg_dump.log");
    let path = env.path().join("recording_pg_dump");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            server().bin("pg_dump").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    (path, log)
}

/// The command lines in a [`recording_pg_dump`] log that dump tables (`--table`): a group's
/// own pg_dump.
fn group_pg_dumps(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("--table"))
        .map(str::to_owned)
        .collect()
}

/// The report's group dumps (kind `tables`).
fn table_entries(report: &Value) -> Vec<&Value> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["kind"] == "tables")
        .collect()
}

/// Without `engine` anywhere in the configuration, every group is written by the native
/// engine: the report says `engine: native` (no fallback), no pg_dump is run for a group
/// (the only pg_dump dumps the schema), and the files restore.
#[test]
fn run_without_engine_writes_natively() {
    let db = fresh_db("run_default_engine");
    shop(&db);
    let env = Env::new();
    let (pg_dump, log) = recording_pg_dump(&env);
    let config = env
        .config_for(&db)
        .backup("pg_dump", &ts(pg_dump.to_str().unwrap()))
        .extra(&shop_groups(&db))
        .toml();
    assert!(
        !config.lines().any(|l| l.trim_start().starts_with("engine")),
        "{config}"
    );
    env.write_config(&config);
    let (report, run_id, groups) = shop_run(&env);
    for g in &groups {
        assert_eq!(g["status"], "ok", "{g:#}");
        assert_eq!(g["engine"], "native", "{g:#}");
        assert!(g["fallback"].is_null(), "{g:#}");
    }
    let dumped = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        dumped.contains("pg_groupdump/_schema"),
        "the schema dump is a pg_dump: {dumped}"
    );
    assert_eq!(group_pg_dumps(&log), Vec::<String>::new(), "{dumped}");
    restores_from_its_file(
        &db,
        &env,
        &report,
        &run_id,
        "orders",
        &[],
        &[("public", "orders"), ("public", "order_items")],
    );
}

/// Runs the shop's groups (exit 0): the report (its shape checked), its run id, and its four
/// table entries (orders, audit, public.misc, public.empty_t).
fn shop_run(env: &Env) -> (Value, String, Vec<Value>) {
    env.run(&["run"]).expect_code(0);
    let report = env.report();
    let run_id = check_report_shape(&report, env, "ok");
    let entries: Vec<Value> = table_entries(&report).into_iter().cloned().collect();
    assert_eq!(
        entries.len(),
        4,
        "orders, audit, public.misc, public.empty_t: {report:#}"
    );
    (report, run_id, entries)
}

/// `group`'s file is where the naming rules put it and restores `tables` (after `schemas`).
fn restores_from_its_file(
    db: &TestDb,
    env: &Env,
    report: &Value,
    run_id: &str,
    group: &str,
    schemas: &[&str],
    tables: &[(&str, &str)],
) {
    let file = expected_dump_path(&env.dir, &db.name, group, run_id);
    assert_eq!(checked_file(report_group(report, group)), file);
    restore_and_compare(db, &file, schemas, tables);
}

/// `engine = "pg_dump"` still writes every group with a pg_dump of its own: the report says
/// `engine: pg_dump` (no fallback), and one `pg_dump --table …` ran per group, under the
/// group's application_name.
#[test]
fn engine_pg_dump_writes_each_group_with_pg_dump() {
    let db = fresh_db("run_pg_dump_engine");
    shop(&db);
    let env = Env::new();
    let (pg_dump, log) = recording_pg_dump(&env);
    env.config_for(&db)
        .backup("engine", &ts("pg_dump"))
        .backup("pg_dump", &ts(pg_dump.to_str().unwrap()))
        .extra(&shop_groups(&db))
        .write(&env);
    let (report, run_id, groups) = shop_run(&env);
    let dumps = group_pg_dumps(&log);
    assert_eq!(
        dumps.len(),
        groups.len(),
        "one pg_dump per group: {dumps:#?}"
    );
    for g in &groups {
        assert_eq!(g["status"], "ok", "{g:#}");
        assert_eq!(g["engine"], "pg_dump", "{g:#}");
        assert!(g["fallback"].is_null(), "{g:#}");
        let app = format!(
            "application_name='pg_groupdump/{}'",
            g["group"].as_str().unwrap()
        );
        assert_eq!(
            dumps.iter().filter(|l| l.contains(&app)).count(),
            1,
            "one pg_dump for {app}: {dumps:#?}"
        );
    }
    restores_from_its_file(
        &db,
        &env,
        &report,
        &run_id,
        "orders",
        &[],
        &[("public", "orders"), ("public", "order_items")],
    );
}

/// `[[group]] engine = "pg_dump"` under the default engine: that group alone gets a pg_dump of
/// its own; the others are written natively.
#[test]
fn group_engine_pg_dump_overrides_the_native_default() {
    let db = fresh_db("run_group_engine");
    shop(&db);
    let env = Env::new();
    let (pg_dump, log) = recording_pg_dump(&env);
    let groups = shop_groups(&db).replace(
        "schemas = [\"audit\"]\n",
        "schemas = [\"audit\"]\nengine = \"pg_dump\"\n",
    );
    assert!(groups.contains("engine = \"pg_dump\""), "{groups}");
    env.config_for(&db)
        .backup("pg_dump", &ts(pg_dump.to_str().unwrap()))
        .extra(&groups)
        .write(&env);
    let (report, run_id, entries) = shop_run(&env);
    for g in &entries {
        let want = if g["group"] == "audit" {
            "pg_dump"
        } else {
            "native"
        };
        assert_eq!(g["status"], "ok", "{g:#}");
        assert_eq!(g["engine"], want, "{g:#}");
        assert!(g["fallback"].is_null(), "{g:#}");
    }
    let dumps = group_pg_dumps(&log);
    assert_eq!(dumps.len(), 1, "one group pg_dump, audit's: {dumps:#?}");
    assert!(
        dumps[0].contains("application_name='pg_groupdump/audit'"),
        "{dumps:#?}"
    );
    restores_from_its_file(
        &db,
        &env,
        &report,
        &run_id,
        "audit",
        &["audit"],
        &[("audit", "log"), ("audit", "log2")],
    );
}
