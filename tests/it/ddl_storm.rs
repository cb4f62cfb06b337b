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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
    // Every table is in a group when the plan is made; those created later are ungrouped.
    s.push_str("[ungrouped]\nmode = \"table\"\nexclude = [\"public.t_excl*\"]\n");
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
         ALTER TABLE parted DETACH PARTITION p2;
         CREATE TABLE p3 PARTITION OF parted FOR VALUES FROM (2000) TO (3000);
         INSERT INTO parted SELECT g, md5(g::text) FROM generate_series(2000, 2099) g;
         CREATE TABLE t_new AS SELECT g AS id FROM generate_series(1, 7) g;
         CREATE TABLE t_excl AS SELECT 1 AS id;",
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
    // own with its rows, no longer a partition. Attached: dumped with its partitioned table.
    let g = report_group(&report, "g_parted");
    assert_eq!(g["status"], "ok", "{g:#}");
    let target = db.another("parted_restored");
    restore(&checked_file(g), &target);
    assert_same_rows(&db, &target, "public", "p2");
    assert_same_rows(&db, &target, "public", "parted");
    assert_eq!(target.query_one("SELECT count(*) FROM parted"), "1099");
    assert_eq!(
        target.query_one("SELECT relispartition FROM pg_class WHERE oid = 'public.p2'::regclass"),
        "f"
    );
    assert_eq!(
        target.query_one("SELECT relispartition FROM pg_class WHERE oid = 'public.p3'::regclass"),
        "t"
    );
    assert_eq!(change(g, "public.p3")["change"], "attached", "{g:#}");

    // Created while the run waited: listed as new since the plan; dumped at the end of the
    // run on its own as an ungrouped table, unless excluded.
    let mut new: Vec<(String, bool)> = report["new_since_plan"]
        .as_array()
        .unwrap_or_else(|| panic!("no new_since_plan: {report:#}"))
        .iter()
        .map(|n| {
            (
                n["table"].as_str().unwrap().to_string(),
                n["dumped"].as_bool().unwrap(),
            )
        })
        .collect();
    new.sort();
    assert_eq!(
        new,
        vec![
            ("public.p3".to_string(), true),
            ("public.t_excl".to_string(), false),
            ("public.t_new".to_string(), true)
        ],
        "{report:#}"
    );
    assert!(
        ended.stderr.contains("public.t_new is new since the plan"),
        "{ended:?}"
    );
    let g = report_group(&report, "public.t_new");
    assert_eq!(g["status"], "ok", "{g:#}");
    let target = db.another("new_restored");
    restore(&checked_file(g), &target);
    assert_same_rows(&db, &target, "public", "t_new");
    assert!(report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["group"] != "public.t_excl"));

    // The whole database restores from the run: a gone group is no missing dump.
    let whole = unique_name("ddl_whole");
    let out = env.run(&[
        "restore",
        "--run",
        &run_id,
        "--database",
        &db.name,
        "--target",
        &whole,
    ]);
    out.expect_code(0);
    let whole = db_named(&whole);
    for t in ["t_ren_new", "t_keep", "p2", "p3", "t_new"] {
        assert_same_rows(&db, &whole, "public", t);
    }

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

// ---------------------------------------------------------------------------------------------
// The storm
// ---------------------------------------------------------------------------------------------

/// One-table groups `g_<i>` of `s_<i>`, and `PARTED` partitioned tables of two partitions.
const TABLES: usize = 520;
const PARTED: usize = 6;

/// `s_<i>` holds rows `1..=5 + i % 7` of `(id, md5(i:id))`; the partitions of `pt_<k>` hold
/// `(id, md5(k:id))` for ids 1..=20, split at 10. The storm never writes a row into a table
/// of these: each keeps these rows, or none once truncated.
fn storm_db_sql() -> String {
    format!(
        "CREATE SCHEMA other;
         CREATE FUNCTION digest(t regclass) RETURNS text LANGUAGE plpgsql AS $$
           DECLARE r text;
           BEGIN
             EXECUTE format('SELECT count(*) || '':'' || coalesce(md5(string_agg(id || '':'' || info, '','' ORDER BY id)), '''') FROM ONLY %s', t) INTO r;
             RETURN r;
           END $$;
         DO $$ BEGIN
           FOR i IN 0..{last} LOOP
             EXECUTE format('CREATE TABLE public.s_%s AS SELECT g AS id, md5(%s || '':'' || g) AS info FROM generate_series(1, %s) g', i, i, 5 + i % 7);
           END LOOP;
           FOR k IN 0..{last_parted} LOOP
             EXECUTE format('CREATE TABLE public.pt_%s (id int, info text) PARTITION BY RANGE (id)', k);
             EXECUTE format('CREATE TABLE public.pt_%s_a PARTITION OF public.pt_%s FOR VALUES FROM (0) TO (11)', k, k);
             EXECUTE format('CREATE TABLE public.pt_%s_b PARTITION OF public.pt_%s FOR VALUES FROM (11) TO (100)', k, k);
             EXECUTE format('INSERT INTO public.pt_%s SELECT g, md5(%s || '':'' || g) FROM generate_series(1, 20) g', k, k);
           END LOOP;
         END $$;
         ANALYZE;",
        last = TABLES - 1,
        last_parted = PARTED - 1
    )
}

fn storm_groups(db: &str) -> String {
    let mut s = String::new();
    for i in 0..TABLES {
        s.push_str(&group_cfg(
            db,
            &format!("g_{i}"),
            &[&format!("public.s_{i}")],
        ));
    }
    for k in 0..PARTED {
        s.push_str(&group_cfg(
            db,
            &format!("gp_{k}"),
            &[&format!("public.pt_{k}")],
        ));
    }
    s.push_str(SKIP_UNGROUPED);
    s
}

/// What the storm does to `s_<i>` (by `i % 10`) and to `pt_<k>`, plus tables it creates.
fn storm_statements(seed: u64) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..TABLES {
        let t = format!("public.s_{i}");
        match i % 10 {
            1 => v.push(format!("DROP TABLE {t}")),
            2 => v.push(format!("ALTER TABLE {t} RENAME TO s_{i}_r")),
            3 => v.push(format!("ALTER TABLE {t} ADD COLUMN extra int DEFAULT 7")),
            4 => v.push(format!("TRUNCATE {t}")),
            // Renamed, and its name taken by another table: its group must follow the oid.
            5 => v.push(format!(
                "BEGIN; ALTER TABLE {t} RENAME TO s_{i}_old;
                 CREATE TABLE {t} (id int, info text); INSERT INTO {t} VALUES (0, 'impostor');
                 COMMIT"
            )),
            6 => v.push(format!("ALTER TABLE {t} SET SCHEMA other")),
            _ => {}
        }
    }
    for k in 0..PARTED {
        match k % 3 {
            0 => v.push(format!(
                "ALTER TABLE public.pt_{k} DETACH PARTITION public.pt_{k}_b"
            )),
            1 => v.push(format!("DROP TABLE public.pt_{k}_a")),
            _ => v.push(format!("ALTER TABLE public.pt_{k}_b RENAME TO pt_{k}_b_r")),
        }
    }
    for j in 0..40 {
        v.push(format!(
            "CREATE TABLE public.n_{j} AS SELECT g AS id, 'new' AS info FROM generate_series(1, 3) g"
        ));
    }
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.range(0, i as u64) as usize);
    }
    v
}

/// The digest ([`storm_db_sql`]'s `digest`) of each ordinary table of `db`, by oid, with its
/// schema and name.
fn digests(db: &TestDb) -> BTreeMap<u32, (String, String, String)> {
    db.query(
        "SELECT c.oid, n.nspname, c.relname, digest(c.oid::regclass)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname IN ('public', 'other')",
    )
    .into_iter()
    .map(|r| {
        (
            r[0].parse().unwrap(),
            (r[1].clone(), r[2].clone(), r[3].clone()),
        )
    })
    .collect()
}

/// Restores every group archive of the run into `target`, three at a time.
fn restore_all(files: &[std::path::PathBuf], target: &TestDb) {
    let chunks: Vec<Vec<std::path::PathBuf>> = files
        .chunks(files.len().div_ceil(3))
        .map(<[_]>::to_vec)
        .collect();
    std::thread::scope(|s| {
        for chunk in &chunks {
            s.spawn(move || {
                for f in chunk {
                    restore(f, target);
                }
            });
        }
    });
}

fn storm(engine: &str) {
    let db = fresh_db(&format!("ddl_storm_{engine}"));
    db.sql(&storm_db_sql());
    let before = digests(&db);
    assert_eq!(before.len(), TABLES + 2 * PARTED);
    let env = Env::new();
    Config::new(&env, &db.name)
        .backup("engine", &ts(engine))
        .backup("jobs", "2")
        .backup("retry_delay", &ts("1s"))
        .backup("lock_retries", "5")
        .extra(&storm_groups(&db.name))
        .write(&env);

    let mut run = Running::start(&env, &["run"]);
    // The storm starts with the groups' dumps (the native engine's wait for its schema
    // archive, whose retries the storm would otherwise outlast).
    let dumping = || {
        env.files().iter().any(|p| {
            let p = p.to_string_lossy();
            p.contains("/g_") && p.ends_with(".dump")
        })
    };
    run.wait_until("the first group is dumped", secs(120), dumping);
    let statements = storm_statements(7);
    let mut session = server().session(&db.name);
    let started = Instant::now();
    for (n, sql) in statements.iter().enumerate() {
        session.query(sql);
        // Spread over about three seconds, whatever the machine.
        let due = Duration::from_millis(3000 * (n as u64 + 1) / statements.len() as u64);
        std::thread::sleep(due.saturating_sub(started.elapsed()));
    }
    let storm_took = started.elapsed();
    drop(session);
    let ended = run.wait(secs(600));
    let report = env.report();
    let groups = report["groups"].as_array().unwrap();
    let failed: Vec<&Value> = groups.iter().filter(|g| g["status"] == "failed").collect();
    eprintln!(
        "storm ({engine}): exit {:?}, {} of {} groups failed",
        ended.status.code(),
        failed.len(),
        groups.len()
    );
    assert_eq!(ended.status.code(), Some(0), "{ended:?}");
    env.assert_no_ing();
    assert_eq!(report["status"], "ok", "{report:#}");
    assert_eq!(
        groups.len(),
        TABLES + PARTED + 1,
        "every group and the schema dump"
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(!ended.stderr.contains("FAILED"), "{ended:?}");

    // Where each table of the plan was dumped, and under which name.
    let mut dumped: BTreeMap<u32, (String, &Value)> = BTreeMap::new();
    for g in groups
        .iter()
        .filter(|g| g["kind"] == "tables" && g["status"] == "ok")
    {
        let oids = g["table_oids"]
            .as_array()
            .unwrap_or_else(|| panic!("{g:#}"));
        for (oid, name) in oids.iter().zip(strings(&g["tables"])) {
            dumped.insert(oid.as_u64().unwrap() as u32, (name, g));
        }
    }
    let files: Vec<std::path::PathBuf> = groups
        .iter()
        .filter(|g| g["kind"] == "tables" && g["status"] == "ok")
        .map(checked_file)
        .collect();
    for f in env.dumps() {
        toc(&f);
    }
    let target = db.another(&format!("ddl_storm_{engine}_restored"));
    target.sql("CREATE SCHEMA other;");
    target.sql(
        &storm_db_sql()
            .split("DO $$")
            .next()
            .unwrap()
            .replace("CREATE SCHEMA other;", ""),
    );
    restore_all(&files, &target);
    let restored: BTreeMap<(String, String), String> = digests(&target)
        .into_values()
        .map(|(s, t, d)| ((s, t), d))
        .collect();

    // Every table there before and after the run: in its planned group's archive, with its
    // rows (a truncated one possibly with none).
    let after = digests(&db);
    let mut checked = 0;
    for (oid, (schema, name, digest)) in &before {
        if !after.contains_key(oid) {
            continue;
        }
        let (dumped_as, g) = dumped
            .get(oid)
            .unwrap_or_else(|| panic!("{schema}.{name} (oid {oid}) was not dumped: {report:#}"));
        let (s, t) = dumped_as.split_once('.').unwrap();
        let got = restored
            .get(&(s.to_string(), t.to_string()))
            .unwrap_or_else(|| panic!("{dumped_as} is not in the restored archives ({g:#})"));
        let truncated =
            name.starts_with("s_") && name[2..].parse::<usize>().is_ok_and(|i| i % 10 == 4);
        assert!(
            got == digest || (truncated && got == "0:"),
            "{schema}.{name} (dumped as {dumped_as}): {got} restored, {digest} before ({g:#})"
        );
        let planned = match name.strip_prefix("s_") {
            Some(i) => format!("g_{i}"),
            None => format!("gp_{}", &name[3..name[3..].find('_').unwrap() + 3]),
        };
        assert_eq!(g["group"], planned.as_str(), "{g:#}");
        checked += 1;
    }
    // Tables the storm created (new ones, and those that took a renamed table's name) are
    // listed, not dumped: nothing is ungrouped in this configuration.
    let new = report["new_since_plan"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for n in &new {
        let t = n["table"].as_str().unwrap();
        assert!(
            t.starts_with("public.n_") || t.starts_with("public.s_"),
            "{n:#}"
        );
        assert_eq!(n["dumped"], false, "{n:#}");
    }
    let gone = groups.iter().filter(|g| g["status"] == "gone").count();
    let renamed = groups
        .iter()
        .flat_map(|g| g["table_changes"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["change"] == "renamed")
        .count();
    let fallbacks = groups.iter().filter(|g| g["fallback"].is_string()).count();
    eprintln!(
        "storm ({engine}): {} statements in {storm_took:?}; {} groups, {gone} gone, {renamed} renamed tables, {fallbacks} fallbacks, {checked} tables checked, {} new since the plan",
        statements.len(),
        groups.len() - 1,
        new.len()
    );
    assert!(checked >= TABLES / 2, "{checked}");
}

#[test]
fn ddl_storm_pg_dump() {
    storm("pg_dump");
}

#[test]
fn ddl_storm_native() {
    storm("native");
}
