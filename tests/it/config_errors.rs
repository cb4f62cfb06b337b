//! Bad configs: exit 2, stderr names the config file, the key path and the value, nothing is
//! written to the backup dir.
//!
//! Errors found without a server (syntax, keys, values) are checked in this process through
//! `pg_groupdump::config::load`, whose error text is what the binary prints; one test runs the
//! binary on such a config. Errors that need the catalog (a table, schema or database that is
//! not there) run the binary against the test server.

use crate::util::*;

/// Both `plan --json` and `run` must refuse the config with exit 2 and a message naming the
/// config file and every `needle`; the backup dir must stay without files.
fn expect_config_error(env: &Env, needles: &[&str]) -> Output {
    let config = env.config.to_str().unwrap().to_owned();
    let plan = env.run(&["plan", "--json"]);
    plan.expect_code(2);
    let out = env.run(&["run"]);
    out.expect_code(2);
    for (what, o) in [("plan", &plan), ("run", &out)] {
        assert!(
            o.stderr.contains(&config),
            "{what}: stderr does not name the config file {config}: {o:?}"
        );
        for n in needles {
            assert!(
                o.stderr.contains(n),
                "{what}: stderr does not contain {n:?}: {o:?}"
            );
        }
    }
    let files = env.files();
    assert!(
        files.is_empty(),
        "files created in the backup dir: {files:?}"
    );
    out
}

fn with_table(hint: &str) -> TestDb {
    let db = fresh_db(hint);
    db.sql("CREATE TABLE t (id int); CREATE TABLE shared (id int);");
    db
}

fn group(db: &TestDb, name: &str, body: &str) -> String {
    format!(
        "[[group]]\nname = {}\ndatabase = {}\n{body}\n",
        ts(name),
        ts(&db.name)
    )
}

/// A database name for configurations that are refused before any connection.
fn offline_db() -> TestDb {
    TestDb::offline("cfg_db")
}

/// The default configuration (without the test server) plus `extra`, written to `env`.
fn offline_cfg(env: &Env, extra: &str) {
    Config::offline(env, &offline_db().name)
        .extra(extra)
        .write(env);
}

#[test]
fn config_toml_syntax_error() {
    let env = Env::new();
    env.write_config("[backup\ndir = \"/tmp/x\"\n");
    config_error(&env, &[]);
}

#[test]
fn config_unknown_key_in_backup() {
    let db = offline_db();
    let env = Env::new();
    Config::offline(&env, &db.name)
        .backup("jobz", "2")
        .write(&env);
    config_error(&env, &["backup.jobz"]);
}

#[test]
fn config_unknown_key_in_connection() {
    let db = offline_db();
    let env = Env::new();
    Config::offline(&env, &db.name)
        .connection("hots", &ts("db.example"))
        .write(&env);
    config_error(&env, &["connection.hots"]);
}

#[test]
fn config_unknown_key_in_group() {
    let db = offline_db();
    let env = Env::new();
    offline_cfg(
        &env,
        &group(&db, "g", "tables = [\"public.t\"]\ntablez = []"),
    );
    config_error(&env, &["group[0].tablez"]);
}

/// The one configuration error run through the binary without a server.
#[test]
fn config_missing_backup_dir() {
    let env = Env::new();
    Config::offline(&env, &offline_db().name)
        .without_backup("dir")
        .write(&env);
    expect_config_error(&env, &["backup.dir"]);
    let entries: Vec<_> = std::fs::read_dir(env.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec!["groups.toml"],
        "nothing written next to the config"
    );
}

#[test]
fn config_jobs_zero() {
    let db = offline_db();
    let env = Env::new();
    Config::offline(&env, &db.name)
        .backup("jobs", "0")
        .write(&env);
    config_error(&env, &["backup.jobs", "0"]);
}

#[test]
fn config_compress_too_high() {
    let db = offline_db();
    let env = Env::new();
    Config::offline(&env, &db.name)
        .backup("compress", "12")
        .write(&env);
    config_error(&env, &["backup.compress", "12"]);
}

#[test]
fn config_bad_duration() {
    let db = offline_db();
    let env = Env::new();
    Config::offline(&env, &db.name)
        .backup("lock_wait_timeout", &ts("6 parsecs"))
        .write(&env);
    config_error(&env, &["backup.lock_wait_timeout", "6 parsecs"]);
}

#[test]
fn config_bad_ungrouped_mode() {
    let env = Env::new();
    offline_cfg(&env, "[ungrouped]\nmode = \"sometimes\"");
    config_error(&env, &["ungrouped.mode", "sometimes"]);
}

#[test]
fn config_duplicate_group_name() {
    let db = offline_db();
    let env = Env::new();
    offline_cfg(
        &env,
        &(group(&db, "dupgrp", "tables = [\"public.t\"]")
            + &group(&db, "dupgrp", "tables = [\"public.shared\"]")),
    );
    config_error(&env, &["group[1].name", "dupgrp"]);
}

#[test]
fn config_group_name_starting_with_underscore() {
    let db = offline_db();
    let env = Env::new();
    offline_cfg(&env, &group(&db, "_mine", "tables = [\"public.t\"]"));
    config_error(&env, &["group[0].name", "_mine"]);
}

#[test]
fn config_table_in_two_groups() {
    let db = with_table("cfg_two_groups");
    let env = Env::new();
    env.cfg(
        &db,
        &(group(&db, "g1", "tables = [\"public.t\", \"public.shared\"]")
            + &group(&db, "g2", "tables = [\"public.shared\"]")),
    );
    let out = expect_config_error(&env, &["public.shared"]);
    assert!(
        out.stderr.contains("group[1].tables[0]") || out.stderr.contains("group[0].tables[1]"),
        "stderr names the key path of the duplicate: {out:?}"
    );
}

#[test]
fn config_missing_table() {
    let db = with_table("cfg_missing_table");
    let env = Env::new();
    env.cfg(
        &db,
        &group(
            &db,
            "g",
            "tables = [\"public.t\", \"public.no_such_table\"]",
        ),
    );
    expect_config_error(&env, &["group[0].tables[1]", "public.no_such_table"]);
}

#[test]
fn config_table_names_are_not_case_folded() {
    let db = fresh_db("cfg_case");
    db.sql("CREATE TABLE \"MixedCase\" (id int);");
    let env = Env::new();
    env.cfg(&db, &group(&db, "g", "tables = [\"public.mixedcase\"]"));
    expect_config_error(&env, &["group[0].tables[0]", "public.mixedcase"]);
}

#[test]
fn config_ambiguous_bare_table_name() {
    let db = fresh_db("cfg_ambiguous");
    db.sql("CREATE SCHEMA s1; CREATE SCHEMA s2; CREATE TABLE s1.dupname (id int); CREATE TABLE s2.dupname (id int);");
    let env = Env::new();
    env.cfg(&db, &group(&db, "g", "tables = [\"dupname\"]"));
    expect_config_error(&env, &["group[0].tables[0]", "dupname"]);
}

#[test]
fn config_missing_schema() {
    let db = with_table("cfg_missing_schema");
    let env = Env::new();
    env.cfg(&db, &group(&db, "g", "schemas = [\"no_such_schema\"]"));
    expect_config_error(&env, &["group[0].schemas[0]", "no_such_schema"]);
}

#[test]
fn config_group_names_missing_database() {
    let db = with_table("cfg_missing_gdb");
    let missing = unique_name("no_such_db");
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            "[[group]]\nname = \"g\"\ndatabase = {}\ntables = [\"public.t\"]\n",
            ts(&missing)
        ),
    );
    expect_config_error(&env, &["group[0].database", &missing]);
}

#[test]
fn config_databases_names_missing_database() {
    let db = with_table("cfg_missing_db");
    let missing = unique_name("no_such_db");
    let env = Env::new();
    env.config_for(&db)
        .backup("databases", &ta(&[&db.name, &missing]))
        .write(&env);
    expect_config_error(&env, &["backup.databases[1]", &missing]);
}

#[test]
fn usage_error_exits_2() {
    let env = Env::new();
    offline_cfg(&env, "");
    env.run(&["run", "--no-such-flag"]).expect_code(2);
    env.run(&["frobnicate"]).expect_code(2);
    assert!(env.files().is_empty(), "{:?}", env.files());
}

#[test]
fn config_unknown_engine() {
    let db = offline_db();
    let env = Env::new();
    Config::offline(&env, &db.name)
        .backup("engine", &ts("fast"))
        .write(&env);
    config_error(&env, &["backup.engine", "\"fast\"", "pg_dump", "native"]);
    Config::offline(&env, &db.name)
        .extra(&group(
            &db,
            "g",
            "tables = [\"public.t\"]\nengine = \"pgdump\"",
        ))
        .write(&env);
    config_error(&env, &["group[0].engine", "\"pgdump\""]);
}
