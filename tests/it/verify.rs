//! Proving the backups restore (issue #7): `verify` (files, sizes, sha256, tables; with
//! `--restore`, row counts in a scratch database), `restore` (one group, one run's group, over
//! an existing database, a whole database from one run) and the row counts of the report.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers
// ---------------------------------------------------------------------------------------------

/// A database with a group in a non-public schema whose tables use an enum type (so a scratch
/// or new database needs the schema archive's prerequisites), a public group with a foreign
/// key to it (a constraint that cannot be restored with its group alone), and an ungrouped
/// table.
fn inventory_db(hint: &str) -> TestDb {
    let db = fresh_db(hint);
    db.sql(
        "CREATE SCHEMA inv;
         CREATE TYPE inv.state AS ENUM ('new', 'stocked', 'gone');
         CREATE TABLE inv.items (id serial PRIMARY KEY, name text NOT NULL,
                                 state inv.state NOT NULL DEFAULT 'new');
         INSERT INTO inv.items (name, state)
           SELECT 'item ' || g, (ARRAY['new','stocked','gone'])[g % 3 + 1]::inv.state
           FROM generate_series(1, 40) g;
         CREATE TABLE inv.stock (item_id int NOT NULL REFERENCES inv.items (id), qty int,
                                 history inv.state[]);
         INSERT INTO inv.stock SELECT g, g * 2, ARRAY['new', 'gone']::inv.state[]
           FROM generate_series(1, 37) g;
         CREATE TABLE orders (id int PRIMARY KEY, customer text);
         INSERT INTO orders SELECT g, 'c' || g FROM generate_series(1, 60) g;
         CREATE TABLE order_items (order_id int REFERENCES orders (id),
                                   item_id int REFERENCES inv.items (id), qty int);
         INSERT INTO order_items SELECT g % 60 + 1, g % 40 + 1, g FROM generate_series(1, 150) g;
         CREATE TABLE misc (k text, v bytea);
         INSERT INTO misc VALUES ('a', '\\x00ff'), ('b', NULL);",
    );
    db
}

fn inventory_groups(db: &TestDb) -> String {
    format!(
        r#"
[[group]]
name = "inventory"
database = {d}
schemas = ["inv"]

[[group]]
name = "orders"
database = {d}
tables = ["public.orders", "public.order_items"]
"#,
        d = ts(&db.name)
    )
}

/// A workspace backing up `db` with `groups` (raw TOML) and `jobs = 2`.
fn env_for(db: &TestDb, groups: &str) -> Env {
    let env = Env::new();
    env.config_for(db)
        .backup("jobs", "2")
        .extra(groups)
        .write(&env);
    env
}

fn file_of(report: &Value, group: &str) -> PathBuf {
    let g = report_group(report, group);
    assert_eq!(g["status"], "ok", "{g:#}");
    PathBuf::from(
        g["file"]
            .as_str()
            .unwrap_or_else(|| panic!("no file: {g:#}")),
    )
}

fn run_id(report: &Value) -> String {
    report["run_id"].as_str().expect("run_id").to_owned()
}

/// The `BAD …` lines of verify's output.
fn bad_lines(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("BAD"))
        .collect()
}

/// Asserts verify failed (exit 1) on exactly the dump `file`, saying `why`.
fn assert_bad_dump(out: &Output, file: &Path, why: &str) {
    out.expect_code(1);
    let bad = bad_lines(out);
    assert_eq!(bad.len(), 1, "exactly one bad dump: {out:?}");
    assert!(
        bad[0].contains(&file.display().to_string()),
        "the BAD line names {}: {out:?}",
        file.display()
    );
    assert!(out.stderr.contains(why), "stderr says {why:?}: {out:?}");
}

/// Writes `report` as JSON to `path`.
fn write_report(path: &Path, report: &Value) {
    fs::write(path, serde_json::to_vec_pretty(report).unwrap()).expect("write report");
}

/// The entry of `group` in a report, for editing.
fn group_mut<'a>(report: &'a mut Value, group: &str) -> &'a mut Value {
    report["groups"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|g| g["kind"] == "tables" && g["group"] == group)
        .unwrap_or_else(|| panic!("no group {group}"))
}

/// Scratch databases of `verify --restore` left by the process `pid` (their names end in
/// `_<pid>_<n>`).
fn scratch_dbs(pid: u32) -> Vec<String> {
    db_named("postgres")
        .query(&format!(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pg\\_groupdump\\_verify\\_%' \
             AND datname LIKE {}",
            ql(&format!("%\\_{pid}\\_%"))
        ))
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

fn flip_byte(file: &Path) {
    let mut data = fs::read(file).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0xff;
    fs::write(file, data).unwrap();
}

/// `restore` with `args` (must exit 0).
fn restore_ok(env: &Env, args: &[&str]) -> Output {
    let mut full = vec!["restore"];
    full.extend_from_slice(args);
    let out = env.run(&full);
    out.expect_code(0);
    out
}

fn row_counts(g: &Value) -> BTreeMap<String, i64> {
    g["row_counts"]
        .as_object()
        .unwrap_or_else(|| panic!("no row_counts: {g:#}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().expect("count")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------------------------

#[test]
fn verify_accepts_a_real_run_with_and_without_restore() {
    let db = inventory_db("verify_ok");
    let env = env_for(&db, &inventory_groups(&db));
    let report = env.run_ok(&[]);
    assert_eq!(
        row_counts(report_group(&report, "inventory")),
        BTreeMap::from([("inv.items".to_string(), 40), ("inv.stock".to_string(), 37)]),
        "{report:#}"
    );

    let out = env.run(&["verify"]);
    out.expect_code(0);
    assert!(bad_lines(&out).is_empty(), "{out:?}");
    // The schema dump and three groups (inventory, orders, public.misc).
    let ok = out.stderr.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(ok, 4, "{out:?}");
    assert!(out.stderr.contains("4 dumps checked, 0 bad"), "{out:?}");

    // Every group restores into a scratch database with the counted rows: the inventory group
    // needs schema inv and type inv.state from the schema archive, and order_items' foreign key
    // to inv.items cannot be restored without the inventory group (verify must not mind).
    let (pid, out) = env.run_with_pid(&["verify", "--restore"]);
    out.expect_code(0);
    assert!(bad_lines(&out).is_empty(), "{out:?}");
    assert!(out.stderr.contains("0 bad (with restore)"), "{out:?}");
    assert_eq!(
        scratch_dbs(pid),
        Vec::<String>::new(),
        "scratch databases left"
    );
}

#[test]
fn verify_catches_a_flipped_byte() {
    let db = inventory_db("verify_flip");
    let env = env_for(&db, &inventory_groups(&db));
    let report = env.run_ok(&[]);
    let file = file_of(&report, "inventory");
    flip_byte(&file);
    let out = env.run(&["verify"]);
    assert_bad_dump(&out, &file, "sha256 is");
    assert!(!out.stderr.contains("size is"), "same size: {out:?}");
}

#[test]
fn verify_catches_a_truncated_dump() {
    let db = inventory_db("verify_trunc");
    let env = env_for(&db, &inventory_groups(&db));
    let report = env.run_ok(&[]);
    let file = file_of(&report, "orders");
    let len = fs::metadata(&file).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = env.run(&["verify"]);
    assert_bad_dump(&out, &file, &format!("size is {} bytes", len - 100));
}

#[test]
fn verify_catches_a_dump_of_other_tables() {
    // The orders group's file replaced by the misc group's dump, with the report's size and
    // sha256 fixed up: only the table check can tell.
    let db = inventory_db("verify_swap");
    let env = env_for(&db, &inventory_groups(&db));
    let mut report = env.run_ok(&[]);
    let orders = file_of(&report, "orders");
    fs::copy(file_of(&report, "public.misc"), &orders).unwrap();
    let g = group_mut(&mut report, "orders");
    g["bytes"] = fs::metadata(&orders).unwrap().len().into();
    g["sha256"] = sha256_hex(&orders).into();
    write_report(&env.report_path(&run_id(&report)), &report);

    let out = env.run(&["verify"]);
    assert_bad_dump(&out, &orders, "unexpected TABLE entry: public misc");
    assert!(
        out.stderr.contains("table public.orders is missing"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("table public.order_items is missing"),
        "{out:?}"
    );
}

#[test]
fn verify_catches_a_table_the_group_should_not_have() {
    // The report says the orders group is only public.orders: its dump also holds
    // public.order_items. --report selects the edited copy; the original still verifies.
    let db = inventory_db("verify_extra");
    let env = env_for(&db, &inventory_groups(&db));
    let mut report = env.run_ok(&[]);
    let orders = file_of(&report, "orders");
    group_mut(&mut report, "orders")["tables"] = serde_json::json!(["public.orders"]);
    let edited = env.path().join("edited.json");
    write_report(&edited, &report);

    let out = env.run(&["verify", "--report", edited.to_str().unwrap()]);
    assert_bad_dump(&out, &orders, "unexpected TABLE entry: public order_items");
    let original = env.report_path(&run_id(&report));
    env.run(&["verify", "--report", original.to_str().unwrap()])
        .expect_code(0);
}

#[test]
fn verify_catches_a_missing_dump() {
    let db = inventory_db("verify_missing");
    let env = env_for(&db, &inventory_groups(&db));
    let report = env.run_ok(&[]);
    let file = file_of(&report, "orders");
    fs::remove_file(&file).unwrap();
    let out = env.run(&["verify"]);
    assert_bad_dump(&out, &file, "cannot read");
}

#[test]
fn verify_catches_a_dump_of_a_table_whose_name_extends_the_expected_one() {
    // Group "a" is public."t", group "b" is public."t 2"; pg_restore --list prints names
    // unquoted ("public t 2 postgres"), so a dump of "t 2" must not pass for a dump of "t".
    let db = fresh_db("verify_prefix");
    db.sql(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);
         CREATE TABLE \"t 2\" (id int); INSERT INTO \"t 2\" VALUES (2);",
    );
    let groups = format!(
        "[[group]]\nname = \"a\"\ndatabase = {d}\ntables = [\"public.t\"]\n\n\
         [[group]]\nname = \"b\"\ndatabase = {d}\ntables = [\"public.t 2\"]\n",
        d = ts(&db.name)
    );
    let env = env_for(&db, &groups);
    let mut report = env.run_ok(&[]);
    env.run(&["verify"]).expect_code(0);
    let a = file_of(&report, "a");
    fs::copy(file_of(&report, "b"), &a).unwrap();
    let g = group_mut(&mut report, "a");
    g["bytes"] = fs::metadata(&a).unwrap().len().into();
    g["sha256"] = sha256_hex(&a).into();
    write_report(&env.report_path(&run_id(&report)), &report);
    let out = env.run(&["verify"]);
    assert_bad_dump(&out, &a, "public t 2");
}

#[test]
fn verify_accepts_a_group_whose_table_names_share_a_prefix() {
    // public."t" and public."t 2" in one group: pg_restore --list prints "public t postgres"
    // and "public t 2 postgres"; both tables are there.
    let db = fresh_db("verify_prefix_ok");
    db.sql(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);
         CREATE TABLE \"t 2\" (id int); INSERT INTO \"t 2\" VALUES (2);",
    );
    let groups = format!(
        "[[group]]\nname = \"both\"\ndatabase = {}\ntables = [\"public.t\", \"public.t 2\"]\n",
        ts(&db.name)
    );
    let env = env_for(&db, &groups);
    env.run_ok(&[]);
    let out = env.run(&["verify", "--restore"]);
    out.expect_code(0);
}

#[test]
fn verify_run_and_report_select_the_run() {
    let db = inventory_db("verify_select");
    let env = env_for(&db, &inventory_groups(&db));
    let old = env.run_ok(&[]);
    let new = env.run_ok(&[]);
    let (old_id, new_id) = (run_id(&old), run_id(&new));
    assert_ne!(old_id, new_id);
    let broken = file_of(&new, "public.misc");
    flip_byte(&broken);

    // Default: the newest run.
    let out = env.run(&["verify"]);
    assert_bad_dump(&out, &broken, "sha256 is");
    assert!(out.stderr.contains(&new_id), "{out:?}");
    let out = env.run(&["verify", "--run", &new_id]);
    assert_bad_dump(&out, &broken, "sha256 is");

    let out = env.run(&["verify", "--run", &old_id]);
    out.expect_code(0);
    assert!(out.stderr.contains(&old_id), "{out:?}");
    assert!(!out.stderr.contains(&new_id), "{out:?}");

    // A report file anywhere.
    let elsewhere = env.path().join("old-run.json");
    fs::copy(env.report_path(&old_id), &elsewhere).unwrap();
    let out = env.run(&["verify", "--report", elsewhere.to_str().unwrap()]);
    out.expect_code(0);
    assert!(out.stderr.contains(&old_id), "{out:?}");
    let out = env.run(&[
        "verify",
        "--report",
        env.report_path(&new_id).to_str().unwrap(),
    ]);
    assert_bad_dump(&out, &broken, "sha256 is");

    // A run without a report is a usage error.
    env.run(&["verify", "--run", "20000101T000000Z"])
        .expect_code(2);
}

#[test]
fn verify_restore_catches_a_row_count_mismatch_and_drops_its_scratch_databases() {
    let db = inventory_db("verify_count");
    let env = env_for(&db, &inventory_groups(&db));
    let mut report = env.run_ok(&[]);
    let inventory = file_of(&report, "inventory");
    group_mut(&mut report, "inventory")["row_counts"]["inv.items"] = 41.into();
    let edited = env.path().join("edited.json");
    write_report(&edited, &report);

    // The files are what the report says: only a restore sees the count.
    env.run(&["verify", "--report", edited.to_str().unwrap()])
        .expect_code(0);
    let (pid, out) =
        env.run_with_pid(&["verify", "--restore", "--report", edited.to_str().unwrap()]);
    assert_bad_dump(
        &out,
        &inventory,
        "inv.items: 40 rows restored, 41 counted at dump time",
    );
    assert_eq!(
        scratch_dbs(pid),
        Vec::<String>::new(),
        "scratch databases left"
    );
}

// ---------------------------------------------------------------------------------------------
// Row counts
// ---------------------------------------------------------------------------------------------

#[test]
fn row_counts_are_the_rows_of_the_dump_while_rows_are_inserted() {
    let db = fresh_db("rowcount_load");
    db.sql(
        "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), v int);
         INSERT INTO events (v) SELECT g FROM generate_series(1, 20000) g;
         CREATE TABLE event_kinds (k text PRIMARY KEY);
         INSERT INTO event_kinds VALUES ('a'), ('b'), ('c');",
    );
    let groups = format!(
        "[[group]]\nname = \"events\"\ndatabase = {}\ntables = [\"public.events\", \"public.event_kinds\"]\n",
        ts(&db.name)
    );
    let env = env_for(&db, &groups);
    let load = Load::start(&db, "INSERT 0 1", |i| {
        format!("INSERT INTO events (v) VALUES ({i});\n")
    });
    // Rows are being inserted before the run starts...
    load.wait_done(50, Duration::from_secs(30));
    let report = env.run_ok(&[]);
    let counted = row_counts(report_group(&report, "events"));
    // ... and after it ended.
    let after_run = load.done();
    load.wait_done(after_run + 50, Duration::from_secs(30));
    let (inserted, errors) = load.stop();
    assert!(errors.is_empty(), "load errors: {errors}");

    assert_eq!(
        counted.keys().collect::<Vec<_>>(),
        vec!["public.event_kinds", "public.events"],
        "{report:#}"
    );
    let events = counted["public.events"];
    assert!(
        events > 20000,
        "rows inserted before the run are counted: {events}"
    );
    let now: i64 = db.query_one("SELECT count(*) FROM events").parse().unwrap();
    assert_eq!(now, 20000 + inserted as i64);
    assert!(
        events < now,
        "rows inserted after the run are not: {events} vs {now}"
    );
    assert_eq!(counted["public.event_kinds"], 3);

    // The dump holds exactly the counted rows.
    let target = db.another("rowcount_load_r");
    restore(&file_of(&report, "events"), &target);
    assert_eq!(
        target.table_digest("public", "events").1,
        events.to_string()
    );
    assert_eq!(target.table_digest("public", "event_kinds").1, "3");
    // Its rows are a prefix of the source's (ids are handed out in commit order here: one
    // inserting session).
    assert_eq!(
        target.query_one("SELECT max(id) FROM events"),
        events.to_string()
    );
    env.run(&["verify", "--restore"]).expect_code(0);
}

// ---------------------------------------------------------------------------------------------
// restore: one group
// ---------------------------------------------------------------------------------------------

/// A database with a two-table public group and a group in schema `inv` with an enum column,
/// no foreign key between groups.
fn shop_db(hint: &str) -> TestDb {
    let db = fresh_db(hint);
    db.sql(
        "CREATE SCHEMA inv;
         CREATE TYPE inv.state AS ENUM ('new', 'stocked', 'gone');
         CREATE TABLE inv.items (id serial PRIMARY KEY, name text, state inv.state NOT NULL);
         INSERT INTO inv.items (name, state)
           SELECT 'item ' || g, (ARRAY['new','stocked','gone'])[g % 3 + 1]::inv.state
           FROM generate_series(1, 25) g;
         CREATE TABLE inv.stock (item_id int REFERENCES inv.items (id), history inv.state[]);
         INSERT INTO inv.stock SELECT g, ARRAY['stocked']::inv.state[] FROM generate_series(1, 25) g;
         CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric);
         INSERT INTO orders SELECT g, 'c' || g, g * 1.5 FROM generate_series(1, 50) g;
         CREATE TABLE order_items (order_id int REFERENCES orders (id), sku text, qty int);
         INSERT INTO order_items SELECT g % 50 + 1, 'sku' || g, g FROM generate_series(1, 120) g;",
    );
    db
}

fn shop_groups(db: &TestDb) -> String {
    inventory_groups(db)
}

fn assert_restored_group(src: &TestDb, target: &TestDb, tables: &[(&str, &str)]) {
    let want: std::collections::BTreeSet<(String, String)> = tables
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    assert_eq!(target.user_tables(), want, "tables of {}", target.name);
    for (s, t) in tables {
        assert_same_rows(src, target, s, t);
    }
}

#[test]
fn restore_group_into_a_new_database() {
    let db = shop_db("restore_group");
    let env = env_for(&db, &shop_groups(&db));
    env.run_ok(&[]);
    let target = unique_name("restore_group_new");
    assert!(!database_exists(&target));
    let out = restore_ok(&env, &["--group", "orders", "--target", &target]);
    assert!(out.stderr.contains("created database"), "{out:?}");
    assert_restored_group(
        &db,
        &db_named(&target),
        &[("public", "orders"), ("public", "order_items")],
    );
}

#[test]
fn restore_group_in_a_schema_with_an_enum_into_a_new_database() {
    let db = shop_db("restore_enum");
    let env = env_for(&db, &shop_groups(&db));
    env.run_ok(&[]);
    let target = unique_name("restore_enum_new");
    assert!(!database_exists(&target));
    restore_ok(
        &env,
        &[
            "--group",
            "inventory",
            "--database",
            &db.name,
            "--target",
            &target,
        ],
    );
    let t = db_named(&target);
    assert_restored_group(&db, &t, &[("inv", "items"), ("inv", "stock")]);
    assert_eq!(
        t.query_one(
            "SELECT string_agg(e::text, ',' ORDER BY e) FROM unnest(enum_range(NULL::inv.state)) e"
        ),
        "new,stocked,gone"
    );
    assert_eq!(
        t.query_one("SELECT count(*) FROM inv.items WHERE state = 'gone'"),
        db.query_one("SELECT count(*) FROM inv.items WHERE state = 'gone'")
    );
}

#[test]
fn restore_run_picks_that_runs_dump() {
    let db = shop_db("restore_run");
    let env = env_for(&db, &shop_groups(&db));
    let old = env.run_ok(&[]);
    let old_orders = db.table_digest("public", "orders");
    let old_items = db.table_digest("public", "order_items");
    db.sql(
        "UPDATE orders SET customer = 'changed' WHERE id <= 10;
         DELETE FROM order_items WHERE qty > 100;
         INSERT INTO orders VALUES (1000, 'new', 1);",
    );
    let new = env.run_ok(&[]);
    assert_ne!(run_id(&old), run_id(&new));
    assert_ne!(old_orders, db.table_digest("public", "orders"));

    let t_old = unique_name("restore_run_old");
    restore_ok(
        &env,
        &[
            "--group",
            "orders",
            "--run",
            &run_id(&old),
            "--target",
            &t_old,
        ],
    );
    let t_old = db_named(&t_old);
    assert_eq!(t_old.table_digest("public", "orders"), old_orders);
    assert_eq!(t_old.table_digest("public", "order_items"), old_items);

    // Without --run: the newest dump.
    let t_new = unique_name("restore_run_new");
    restore_ok(&env, &["--group", "orders", "--target", &t_new]);
    assert_restored_group(
        &db,
        &db_named(&t_new),
        &[("public", "orders"), ("public", "order_items")],
    );

    // A run without a dump of the group.
    let out = env.run(&[
        "restore",
        "--group",
        "orders",
        "--run",
        "20000101T000000Z",
        "--target",
        &unique_name("restore_run_none"),
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("20000101T000000Z"), "{out:?}");
}

#[test]
fn restore_clean_replaces_the_groups_tables_in_an_existing_database() {
    let db = shop_db("restore_clean");
    let env = env_for(&db, &shop_groups(&db));
    env.run_ok(&[]);
    let target = db.another("restore_clean_t");
    target.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric);
         INSERT INTO orders VALUES (1, 'stale', 0), (99999, 'not in the dump', 0);
         CREATE TABLE order_items (order_id int REFERENCES orders (id), sku text, qty int);
         INSERT INTO order_items VALUES (1, 'stale', 1);
         CREATE TABLE keep (x int); INSERT INTO keep VALUES (7);",
    );
    // Without --clean, the tables are in the way: pg_restore reports errors.
    let out = env.run(&["restore", "--group", "orders", "--target", &target.name]);
    out.expect_code(1);

    restore_ok(
        &env,
        &["--group", "orders", "--clean", "--target", &target.name],
    );
    assert_same_rows(&db, &target, "public", "orders");
    assert_same_rows(&db, &target, "public", "order_items");
    assert_eq!(
        target.query_one("SELECT string_agg(x::text, ',') FROM keep"),
        "7"
    );
}

// ---------------------------------------------------------------------------------------------
// restore: a whole database from one run
// ---------------------------------------------------------------------------------------------

#[test]
fn restore_whole_database_from_one_run() {
    let db = fresh_db("restore_whole");
    db.sql(
        "CREATE SCHEMA app;
         CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TYPE app.pair AS (x int, y text);
         CREATE SEQUENCE app.ticket_seq START 100;
         SELECT setval('app.ticket_seq', 4242);
         CREATE FUNCTION app.add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
         CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN NEW.updated_at := '2000-01-01 00:00+00'; RETURN NEW; END$$;
         CREATE TABLE app.customers (id serial PRIMARY KEY, name text NOT NULL UNIQUE,
                                     mood app.mood, info app.pair, updated_at timestamptz);
         CREATE INDEX customers_lower_name ON app.customers (lower(name));
         CREATE TRIGGER customers_touch BEFORE INSERT OR UPDATE ON app.customers
           FOR EACH ROW EXECUTE FUNCTION app.touch();
         CREATE TABLE app.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                  customer_id int NOT NULL REFERENCES app.customers (id),
                                  total numeric(10,2) CHECK (total >= 0), note text);
         CREATE INDEX orders_customer_idx ON app.orders (customer_id);
         INSERT INTO app.customers (name, mood, info)
           SELECT 'c' || g, (ARRAY['sad','ok','happy'])[g % 3 + 1]::app.mood, ROW(g, 'y' || g)::app.pair
           FROM generate_series(1, 30) g;
         INSERT INTO app.orders (customer_id, total, note)
           SELECT g % 30 + 1, g * 1.25, CASE WHEN g % 7 = 0 THEN NULL ELSE E'n\\t' || g END
           FROM generate_series(1, 200) g;
         CREATE VIEW app.customer_totals AS
           SELECT c.name, app.add(count(o.id)::int, 0) AS n, sum(o.total) AS total
           FROM app.customers c LEFT JOIN app.orders o ON o.customer_id = c.id GROUP BY c.name;
         CREATE MATERIALIZED VIEW app.mood_counts AS
           SELECT mood, count(*) AS n FROM app.customers GROUP BY mood;
         CREATE UNIQUE INDEX mood_counts_mood ON app.mood_counts (mood);
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, repeat('x', g) FROM generate_series(1, 40) g;
         CREATE TABLE empty_t (id int);",
    );
    let groups = format!(
        r#"
[[group]]
name = "crm"
database = {d}
tables = ["app.customers"]

[[group]]
name = "sales"
database = {d}
tables = ["app.orders"]
"#,
        d = ts(&db.name)
    );
    let env = env_for(&db, &groups);
    let report = env.run_ok(&[]);
    let target = unique_name("restore_whole_t");
    let out = restore_ok(
        &env,
        &[
            "--run",
            &run_id(&report),
            "--database",
            &db.name,
            "--target",
            &target,
        ],
    );
    assert!(out.stderr.contains("created database"), "{out:?}");
    let t = db_named(&target);

    // The same DDL: types, functions, views, the materialized view, sequences, constraints
    // (the foreign key between the groups), indexes, triggers.
    let (want, got) = (schema_only_dump(&db), schema_only_dump(&t));
    if want != got {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .filter(|(a, b)| a != b)
            .take(20)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "schema of {target} differs from {} ({} vs {} lines):\n{}",
            db.name,
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
    assert!(got.contains("FOREIGN KEY (customer_id) REFERENCES app.customers(id)"));
    assert!(got.contains("CREATE TRIGGER customers_touch"));

    // The same rows in every table.
    let tables = db.user_tables();
    assert_eq!(t.user_tables(), tables);
    for (s, n) in &tables {
        assert_same_rows(&db, &t, s, n);
    }
    // Sequence values: the standalone one, serial and identity.
    let seqs = "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2";
    assert_eq!(t.query(seqs), db.query(seqs));
    assert_eq!(
        t.query("SELECT last_value, is_called FROM app.ticket_seq"),
        vec![vec!["4242".to_string(), "t".to_string()]]
    );
    // Views, the materialized view's contents, functions.
    for q in [
        "SELECT * FROM app.customer_totals ORDER BY name",
        "SELECT mood, n FROM app.mood_counts ORDER BY mood",
        "SELECT ispopulated FROM pg_matviews WHERE matviewname = 'mood_counts'",
        "SELECT app.add(2, 3)",
    ] {
        assert_eq!(t.query(q), db.query(q), "{q}");
    }
    assert_eq!(t.query("SELECT count(*) FROM app.mood_counts")[0][0], "3");
    // The trigger works.
    assert_eq!(
        t.query_one(
            "INSERT INTO app.customers (name) VALUES ('new') \
             RETURNING updated_at = '2000-01-01 00:00+00'"
        ),
        "t"
    );
}
