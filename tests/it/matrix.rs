//! The version matrix: the native engine (`[backup] engine = "native"`) against PostgreSQL 14,
//! 15, 16, 17 and 18, each server with its own pg_dump and pg_restore (`PG_MATRIX`, see
//! scripts/lib/pgversions.sh; the harness starts one server per version, [`server_of`]).
//!
//! Per version (one test each, so that a failure names the version):
//! - the oracle of tests/it/native.rs ([`oracle_on`]) on that version's corpus
//!   ([`corpus_for`]: 17 adds a partitioned table with a table access method, 18 named NOT
//!   NULL constraints and virtual generated columns): every group's archive restores (that
//!   version's pg_restore) to what `pg_dump -Fc -t` of its tables restores to; every group's
//!   report entry says `engine: native`, no fallback; every archive's header (format,
//!   archive version, compression, versions) is the one that version's pg_dump writes;
//! - `verify --restore` of that run passes, and `restore --run ID --database D --target T`
//!   gives a database whose `pg_dump` (schema and data) equals the source's;
//! - compression: 16 and later, one run each with `zstd` (two groups with their own: `lz4:5`,
//!   `none`), `lz4`, `none` and `gzip:9`, restored and compared the same way; 14 and 15,
//!   `none` (a group with `gzip:1`) so, and `zstd` (in `[backup]`, in a `[[group]]`) refused
//!   as a configuration error (exit 2) naming the pg_dump and its version, before anything
//!   is written;
//! - a table held in ACCESS EXCLUSIVE by another session: its group fails with outcome
//!   `lock_timeout` naming the blocker's pid, the other groups succeed (exit 1; natively, or
//!   with pg_dump after the native engine's schema-only dump of the database was blocked too,
//!   the fallback naming the blocker).
//!
//! And pg_dump 18 against a PostgreSQL 14 server: the oracle (restore targets on the
//! PostgreSQL 18 server: stock pg_restore 18 cannot restore into 14, see below) and
//! `verify --restore`; and `restore --run` of such a run into the 14 server, as a user would
//! restore it.
//!
//! The checks of one version run even when an earlier one failed; the test then panics with
//! all their failures.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::native::{
    assert_same_text, check_engine_field, oracle_on, plain_dump, Failures, Group, Oracled, Setup,
};
use crate::util::faults::{group_cfg, Locker};
use crate::util::*;

/// The native engine's setup for PostgreSQL `major`: its server, its own programs.
fn native_on(major: u32) -> Setup {
    Setup {
        server: server_of(major),
        targets: server_of(major),
        clients: matrix_bindir(major).to_path_buf(),
        engine: "native",
    }
}

/// The archive version a pg_dump of major version `major` writes.
fn archive_version(major: u32) -> &'static str {
    match major {
        ..=15 => "1.14-0",
        16 => "1.15-0",
        _ => "1.16-0",
    }
}

/// The header lines of `pg_restore -l` (";     Key: value"), without those that differ
/// between two dumps of the same tables (creation time, number of entries).
fn archive_header(pg_restore: &Path, file: &Path) -> Vec<String> {
    pg_restore_list(pg_restore, file)
        .lines()
        .filter_map(|l| l.strip_prefix(";     "))
        .filter(|l| !l.starts_with("TOC Entries:"))
        .map(str::to_owned)
        .collect()
}

/// The run's report entry of every group: `ok`, `engine: native`, no fallback, its file
/// checked (size, sha256); and every file's archive header equal to that of `pg_dump -Fc
/// [-Z z]` (the run's pg_dump, `z` = the run's compression in pg_dump's spelling, or the
/// group's own in `group_z`: (group, z)) of the group's tables, the archive version the one
/// that pg_dump writes.
fn check_run(
    pg: &Setup,
    src: &TestDb,
    groups: &[Group],
    report: &Value,
    z: Option<&str>,
    group_z: &[(&str, &str)],
) {
    let entries = report_groups(report, &src.name);
    let pg_dump_major = bin_major(&pg.clients, "pg_dump");
    let pg_restore = pg.clients.join("pg_restore");
    let refs = tempfile::tempdir().expect("tempdir");
    let mut failures = Failures::default();
    for g in groups {
        failures.check(&format!("group {}", g.name), || {
            let entry = entries
                .get(&g.name)
                .unwrap_or_else(|| panic!("group {} is not in the report: {report:#}", g.name));
            assert_eq!(entry["status"], "ok", "group {}: {entry:#}", g.name);
            check_engine_field(pg.engine, &g.name, entry);
            let file = checked_file(entry);
            let z = group_z
                .iter()
                .find(|(name, _)| *name == g.name)
                .map(|(_, z)| *z)
                .or(z);
            let reference = refs.path().join("reference.dump");
            let mut c = pg.server.client(&pg.clients, "pg_dump");
            c.arg("-Fc");
            if let Some(z) = z {
                c.arg("-Z").arg(z);
            }
            for (s, t) in &g.tables {
                c.arg("-t").arg(format!(
                    "\"{}\".\"{}\"",
                    s.replace('"', "\"\""),
                    t.replace('"', "\"\"")
                ));
            }
            c.arg("-f")
                .arg(&reference)
                .arg("-d")
                .arg(conninfo_db(&src.name));
            let out = c.output().expect("run pg_dump");
            assert!(
                out.status.success(),
                "pg_dump -Fc -Z {z:?} of group {}: {}",
                g.name,
                String::from_utf8_lossy(&out.stderr)
            );
            let want = archive_header(&pg_restore, &reference);
            assert!(
                want.contains(&format!("Dump Version: {}", archive_version(pg_dump_major))),
                "pg_dump {pg_dump_major} wrote {want:?}"
            );
            assert_same_text(
                &format!(
                    "group {}: archive header (pg_restore -l), compression {z:?}",
                    g.name
                ),
                &file.display().to_string(),
                &archive_header(&pg_restore, &file).join("\n"),
                &format!("pg_dump -Fc -Z {z:?} -t …"),
                &want.join("\n"),
            );
        });
    }
    failures.assert_none();
}

/// `restore --run ID --database SRC --target NEW` of the run in `env`: the new database's
/// `pg_dump` (schema and data, COPY rows sorted) equals the source's.
fn check_whole_restore(pg: &Setup, env: &Env, src: &TestDb, report: &Value, what: &str) {
    let run_id = report["run_id"].as_str().expect("run_id");
    let target = unique_name("matrix_restored");
    let out = env.run(&[
        "restore",
        "--run",
        run_id,
        "--database",
        &src.name,
        "--target",
        &target,
    ]);
    assert_eq!(
        out.code, 0,
        "{what}: restore --run {run_id} --database {} --target {target}:\n{out:?}",
        src.name
    );
    let restored = pg.server.db_named(&target);
    assert_same_text(
        &format!("{what}: pg_dump (schema and data, COPY rows sorted) after restore --run"),
        &format!("restored ({target})"),
        &plain_dump(pg, &restored),
        &format!("source ({})", src.name),
        &plain_dump(pg, src),
    );
}

/// pg_dump's `-Z` spelling of `compression` for a pg_dump of major version `major`: before 16
/// a bare level (0: none).
fn pg_dump_z(major: u32, compression: &str) -> &str {
    match (major, compression) {
        (..=15, "none") => "0",
        (..=15, c) => c.strip_prefix("gzip:").unwrap_or(c),
        (_, c) => c,
    }
}

/// A run of the oracle's groups of `src` with `compression` (and `group_compression`:
/// (group, its own compression)), its archives checked ([`check_run`]), restored whole and
/// compared with the source.
fn compressed_run(
    pg: &Setup,
    src: &TestDb,
    groups: &[Group],
    compression: &str,
    group_compression: &[(&str, &str)],
) {
    let what = format!("compression = {compression:?}, per group {group_compression:?}");
    let env = Env::new();
    let lines: Vec<(&str, String)> = group_compression
        .iter()
        .map(|(g, c)| (*g, format!("compression = {}", ts(c))))
        .collect();
    let keys: Vec<(&str, &str)> = lines.iter().map(|(g, l)| (*g, l.as_str())).collect();
    pg.config_with(&env, src, groups, &keys)
        .backup("compression", &ts(compression))
        .write(&env);
    let out = env.run(&["run"]);
    assert_eq!(out.code, 0, "{what}: the run:\n{out:?}");
    let report = env.report();
    let major = bin_major(&pg.clients, "pg_dump");
    let group_z: Vec<(&str, &str)> = group_compression
        .iter()
        .map(|(g, c)| (*g, pg_dump_z(major, c)))
        .collect();
    check_run(
        pg,
        src,
        groups,
        &report,
        Some(pg_dump_z(major, compression)),
        &group_z,
    );
    check_whole_restore(pg, &env, src, &report, &what);
}

/// Before PostgreSQL 16, `compression = "zstd"` is a configuration error (exit 2) naming the
/// pg_dump and its version, in `[backup]` and in a `[[group]]`; nothing is written to
/// backup.dir.
fn zstd_refused(pg: &Setup, src: &TestDb, groups: &[Group]) {
    let env = Env::new();
    pg.config(&env, src, groups)
        .backup("compression", &ts("zstd"))
        .write(&env);
    let out = env.run(&["run"]);
    refused(pg, &env, &out, "backup.compression");

    let env = Env::new();
    pg.config_with(&env, src, groups, &[("big", "compression = \"zstd:3\"")])
        .backup("compression", &ts("gzip:9"))
        .write(&env);
    let out = env.run(&["run"]);
    refused(pg, &env, &out, "].compression");
}

/// The run exited 2, its error naming `key`, zstd, the pg_dump and its version; nothing is in
/// backup.dir.
fn refused(pg: &Setup, env: &Env, out: &Output, key: &str) {
    out.expect_code(2);
    let pg_dump = pg.clients.join("pg_dump");
    let version = Command::new(&pg_dump)
        .arg("--version")
        .output()
        .expect("pg_dump --version");
    let version = String::from_utf8_lossy(&version.stdout);
    let version = version.split_whitespace().nth(2).expect("a version");
    for needle in [key, "zstd", pg_dump.to_str().unwrap(), version] {
        assert!(
            out.stderr.contains(needle),
            "the error does not name {needle:?}:\n{out:?}"
        );
    }
    assert_eq!(
        env.files(),
        Vec::<std::path::PathBuf>::new(),
        "files written to backup.dir despite the configuration error"
    );
}

/// A table held in ACCESS EXCLUSIVE by another session: its group fails with outcome
/// `lock_timeout`, naming the blocker's pid; the other groups succeed; exit 1.
fn lock_timeout(pg: &Setup) {
    let db = pg.server.fresh_db("matrix_locked");
    db.sql(
        "CREATE TABLE held (id int PRIMARY KEY, v text);
         INSERT INTO held SELECT g, md5(g::text) FROM generate_series(1, 100) g;
         CREATE TABLE free1 (id int GENERATED ALWAYS AS IDENTITY, v text);
         INSERT INTO free1 (v) SELECT md5(g::text) FROM generate_series(1, 100) g;
         CREATE TABLE free2 (id int);
         INSERT INTO free2 SELECT generate_series(1, 10);",
    );
    let (_locker, pid) = Locker::hold(&db, "public.held");
    let env = Env::new();
    env.config_for(&db)
        .clients(&pg.clients)
        .backup("engine", &ts("native"))
        .backup("schema", "false")
        .backup("lock_wait_timeout", &ts("500ms"))
        .backup("lock_retries", "0")
        .extra(&group_cfg(&db.name, "H", &["public.held"]))
        .extra(&group_cfg(&db.name, "F", &["public.free1", "public.free2"]))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(1);
    env.assert_no_ing();
    let report = env.report();
    let h = report_group(&report, "H");
    assert_eq!(h["status"], "failed", "{h:#}");
    let attempts = h["attempts"].as_array().expect("attempts");
    assert!(!attempts.is_empty(), "{h:#}");
    for at in attempts {
        assert_eq!(at["outcome"], "lock_timeout", "{h:#}");
        assert!(
            at["blockers"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["pid"].as_i64() == Some(pid))),
            "blocker pid {pid} not named: {at:#}"
        );
    }
    let err = h["error"].as_str().unwrap_or_default();
    assert!(err.contains(&format!("pid {pid}")), "{h:#}");
    // The other group is dumped. The native engine reads the schema TOC of a schema-only dump
    // of the whole database, which waits for the held table too: it may fall back to pg_dump,
    // saying so and naming the blocker.
    let f = report_group(&report, "F");
    assert_eq!(f["status"], "ok", "{f:#}");
    if f["engine"] != "native" {
        assert_eq!(f["engine"], "pg_dump", "{f:#}");
        let why = f["fallback"].as_str().unwrap_or_default();
        assert!(
            why.contains("schema-only dump") && why.contains(&format!("pid {pid}")),
            "group F fell back, not because the held table blocked the schema dump: {f:#}"
        );
    }
    let target = db.another("matrix_locked_r");
    restore(&checked_file(f), &target);
    assert_same_rows(&db, &target, "public", "free1");
}

/// Everything above for PostgreSQL `major`.
fn version(major: u32) {
    let pg = native_on(major);
    assert_eq!(pg.server.major, major, "the server of PG_MATRIX's {major}");
    let mut failures = Failures::default();
    let mut oracled: Option<Oracled> = None;
    failures.check(&format!("PostgreSQL {major}: oracle"), || {
        oracled = Some(oracle_on(&pg));
    });
    if let Some(o) = &oracled {
        failures.check(&format!("PostgreSQL {major}: archive headers"), || {
            check_run(&pg, &o.src, &o.groups, &o.report, None, &[])
        });
        failures.check(&format!("PostgreSQL {major}: verify --restore"), || {
            let out = o.env.run(&["verify", "--restore"]);
            assert_eq!(out.code, 0, "verify --restore:\n{out:?}");
        });
        failures.check(&format!("PostgreSQL {major}: restore --run"), || {
            check_whole_restore(&pg, &o.env, &o.src, &o.report, "default compression")
        });
        // 16 and later: every method, and in the zstd run two groups of their own.
        let runs: &[(&str, &[(&str, &str)])] = if major >= 16 {
            &[
                ("zstd", &[("big", "lz4:5"), ("orders", "none")]),
                ("lz4", &[]),
                ("none", &[]),
                ("gzip:9", &[]),
            ]
        } else {
            &[("none", &[("big", "gzip:1")])]
        };
        for (c, per_group) in runs {
            failures.check(&format!("PostgreSQL {major}: compression {c:?}"), || {
                compressed_run(&pg, &o.src, &o.groups, c, per_group)
            });
        }
        if major >= 16 {
            // The pg_dump engine honours the same setting, in pg_dump's own spelling.
            let with_pg_dump = Setup {
                engine: "pg_dump",
                ..native_on(major)
            };
            failures.check(
                &format!("PostgreSQL {major}: compression \"zstd:5\", engine pg_dump"),
                || compressed_run(&with_pg_dump, &o.src, &o.groups, "zstd:5", &[]),
            );
        }
        if major < 16 {
            failures.check(&format!("PostgreSQL {major}: compression \"zstd\""), || {
                zstd_refused(&pg, &o.src, &o.groups)
            });
        }
        failures.check(&format!("PostgreSQL {major}: statistics"), || {
            statistics(major)
        });
    }
    failures.check(&format!("PostgreSQL {major}: lock timeout"), || {
        lock_timeout(&pg)
    });
    failures.assert_none();
}

/// `[backup] statistics = true`: from 18, both engines' archives carry the planner
/// statistics of their tables and indexes, so a restored table has them without ANALYZE;
/// before 18 the setting is a configuration error naming the pg_dump and its version.
fn statistics(major: u32) {
    let db = server_of(major).fresh_db("matrix_stats");
    db.sql(
        "CREATE TABLE s (id int PRIMARY KEY, v text);
         INSERT INTO s SELECT g, 'v' || (g % 7) FROM generate_series(1, 5000) g;
         CREATE INDEX s_v ON s (v);
         ANALYZE s;",
    );
    let stats = |d: &TestDb| {
        d.query(
            "SELECT c.relname, c.reltuples::bigint,
                    (SELECT count(*) FROM pg_stats WHERE tablename = 's')
               FROM pg_class c WHERE c.relname IN ('s', 's_pkey', 's_v') ORDER BY 1",
        )
    };
    for engine in ["native", "pg_dump"] {
        let env = Env::new();
        env.config_for(&db)
            .backup("engine", &ts(engine))
            .backup("statistics", "true")
            .extra(&format!(
                "{}[ungrouped]\nmode = \"skip\"\n",
                group_cfg(&db.name, "gs", &["public.s"])
            ))
            .write(&env);
        let out = env.run(&["run"]);
        if major < 18 {
            assert_eq!(out.code, 2, "{engine}: statistics before 18:\n{out:?}");
            assert!(
                out.stderr.contains("backup.statistics")
                    && out.stderr.contains(&format!("is version {major}")),
                "{engine}: the error names the key and the pg_dump's version:\n{out:?}"
            );
            assert!(env.files().is_empty(), "{engine}: {:?}", env.files());
            continue;
        }
        assert_eq!(out.code, 0, "{engine}: the run:\n{out:?}");
        let report = env.report();
        let entry = report_group(&report, "gs");
        assert_eq!(entry["engine"], engine, "{entry:#}");
        let listed = pg_restore_list(
            &matrix_bindir(major).join("pg_restore"),
            &checked_file(entry),
        );
        for name in ["s", "s_pkey", "s_v"] {
            assert!(
                listed
                    .lines()
                    .any(|l| l.contains(&format!("STATISTICS DATA public {name} "))),
                "{engine}: the archive lists the statistics of {name}:\n{listed}"
            );
        }
        let target = server_of(major).fresh_db("matrix_stats_r");
        let out = env.run(&["restore", "--group", "gs", "--target", &target.name]);
        assert_eq!(out.code, 0, "{engine}: restore:\n{out:?}");
        assert_eq!(
            stats(&target),
            stats(&db),
            "{engine}: statistics after restore"
        );
    }
}

#[test]
fn postgresql_14() {
    version(14);
}

#[test]
fn postgresql_15() {
    version(15);
}

#[test]
fn postgresql_16() {
    version(16);
}

#[test]
fn postgresql_17() {
    version(17);
}

#[test]
fn postgresql_18() {
    version(18);
}

/// pg_dump (and pg_restore) 18 against a PostgreSQL 14 server: the oracle, the archives'
/// headers, `verify --restore`.
#[test]
fn pg_dump_18_against_postgresql_14() {
    let pg = Setup {
        server: server_of(14),
        targets: server_of(18),
        clients: matrix_bindir(18).to_path_buf(),
        engine: "native",
    };
    let o = oracle_on(&pg);
    let mut failures = Failures::default();
    failures.check("archive headers", || {
        check_run(&pg, &o.src, &o.groups, &o.report, None, &[])
    });
    failures.check("verify --restore", || {
        let out = o.env.run(&["verify", "--restore"]);
        assert_eq!(out.code, 0, "verify --restore:\n{out:?}");
    });
    failures.assert_none();
}

/// pg_dump and pg_restore 18, server 14: `restore --run ID --database D --target T` of a
/// native run gives a database whose `pg_dump` (schema and data) equals the source's. (Stock
/// pg_restore 18 starts every restore with `SET transaction_timeout = 0`, a setting
/// PostgreSQL 14 does not have.)
#[test]
fn restore_with_pg_restore_18_into_postgresql_14() {
    let pg = Setup {
        server: server_of(14),
        targets: server_of(14),
        clients: matrix_bindir(18).to_path_buf(),
        engine: "native",
    };
    let db = pg.server.fresh_db("matrix_18on14");
    db.sql(
        "CREATE SCHEMA app;
         CREATE TABLE app.customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);
         CREATE TABLE app.orders (id serial PRIMARY KEY,
                                  customer_id int NOT NULL REFERENCES app.customers (id),
                                  qty int, total numeric GENERATED ALWAYS AS (qty * 2) STORED);
         INSERT INTO app.customers (name) SELECT 'c' || g FROM generate_series(1, 50) g;
         INSERT INTO app.orders (customer_id, qty) SELECT g % 50 + 1, g FROM generate_series(1, 500) g;
         COMMENT ON TABLE app.orders IS 'orders';",
    );
    let env = Env::new();
    env.config_for(&db)
        .clients(&pg.clients)
        .backup("engine", &ts("native"))
        .extra(&group_cfg(&db.name, "crm", &["app.customers"]))
        .extra(&group_cfg(&db.name, "sales", &["app.orders"]))
        .write(&env);
    let report = env.run_ok(&[]);
    for g in ["crm", "sales"] {
        check_engine_field("native", g, report_group(&report, g));
    }
    check_whole_restore(&pg, &env, &db, &report, "pg_dump 18, server 14");
}
