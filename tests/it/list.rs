//! `pg_groupdump list`: per group its newest good dump, how many are kept, its last failure
//! when newer, and configured groups with no dump at all — as an aligned table and as JSON.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// A database with a two-table group (`orders`), a table configured as a group of its own
/// (`later`) after the first run, and an ungrouped table (`public.secret`).
fn shop(hint: &str) -> (TestDb, Env) {
    let db = fresh_db(hint);
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 100);
         CREATE TABLE order_items (order_id int REFERENCES orders (id), qty int);
         INSERT INTO order_items SELECT g % 100 + 1, g FROM generate_series(1, 300) g;
         CREATE TABLE later (id int);
         CREATE TABLE secret (id int); INSERT INTO secret VALUES (1);",
    );
    let env = Env::new();
    (db, env)
}

/// The `orders` group; `with_later`: and the `later` group, configured after the first run.
fn groups_toml(db: &TestDb, with_later: bool) -> String {
    let mut s = format!(
        "[[group]]\nname = \"orders\"\ndatabase = {d}\ntables = [\"public.orders\", \"public.order_items\"]\n",
        d = ts(&db.name)
    );
    if with_later {
        s.push_str(&format!(
            "\n[[group]]\nname = \"later\"\ndatabase = {}\ntables = [\"public.later\"]\n",
            ts(&db.name)
        ));
    }
    s
}

/// A pg_dump that fails the dumps of tables whose names contain `word`.
fn failing_pg_dump(env: &Env, word: &str) -> PathBuf {
    let real = server().bin("pg_dump");
    let path = env.path().join("failing_pg_dump");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \"$*\" in *--table*{word}*) echo 'pg_dump: error: simulated failure' >&2; \
             exit 1;; esac\nexec '{}' \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn run_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(dir.join("reports"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.trim_end_matches(".json").to_string()
        })
        .collect();
    ids.sort();
    ids
}

fn row<'a>(listing: &'a Value, kind: &str, group: &str) -> &'a Value {
    listing["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == kind && g["group"] == group)
        .unwrap_or_else(|| panic!("no {kind} row {group} in {listing:#}"))
}

#[test]
fn list_shows_newest_good_dump_kept_count_last_failure_and_groups_never_dumped() {
    let (db, env) = shop("list");
    env.cfg(&db, &groups_toml(&db, false));
    env.run(&["run"]).expect_code(0);
    std::thread::sleep(Duration::from_millis(1100));
    // The second run: every dump through pg_dump, the one of `secret` failing.
    let failing = failing_pg_dump(&env, "secret");
    env.config_for(&db)
        .backup("engine", &ts("pg_dump"))
        .backup("pg_dump", &ts(failing.to_str().unwrap()))
        .extra(&groups_toml(&db, true))
        .write(&env);
    env.run(&["run", "--group", "orders", "--group", "public.secret"])
        .expect_code(1);
    let ids = run_ids(&env.dir);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let (first, second) = (&ids[0], &ids[1]);

    let out = env.run(&["list", "--json"]);
    out.expect_code(0);
    let l = out.json();
    let orders = row(&l, "tables", "orders");
    assert_eq!(orders["database"], db.name.as_str());
    assert_eq!(orders["status"], "ok");
    assert_eq!(orders["configured"], true);
    assert_eq!(orders["kept"], 2);
    assert_eq!(orders["newest"]["run_id"], second.as_str());
    assert_eq!(orders["newest"]["engine"], "pg_dump");
    assert!(orders["last_failure"].is_null());
    let age = orders["newest"]["age_s"].as_i64().unwrap();
    assert!((0..600).contains(&age), "{orders}");
    let file = env.dir.join(orders["newest"]["file"].as_str().unwrap());
    assert_eq!(
        orders["newest"]["bytes"].as_u64().unwrap(),
        fs::metadata(&file).unwrap().len()
    );
    assert_eq!(
        orders["kept_bytes"].as_u64().unwrap(),
        fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum::<u64>()
    );

    let secret = row(&l, "tables", "public.secret");
    assert_eq!(secret["status"], "failed");
    assert_eq!(secret["configured"], false);
    assert_eq!(secret["kept"], 1);
    assert_eq!(secret["newest"]["run_id"], first.as_str());
    assert_eq!(secret["newest"]["engine"], "native");
    assert_eq!(secret["last_failure"]["run_id"], second.as_str());
    let error = secret["last_failure"]["error"].as_str().unwrap();
    assert!(error.contains("simulated failure"), "{error}");

    let later = row(&l, "tables", "later");
    assert_eq!(later["status"], "none");
    assert_eq!(later["configured"], true);
    assert_eq!(later["kept"], 0);
    assert!(later["newest"].is_null());

    // Dumped by the first run as an ungrouped table, no longer dumped since.
    let ungrouped = row(&l, "tables", "public.later");
    assert_eq!(
        (&ungrouped["status"], &ungrouped["configured"]),
        (&"ok".into(), &false.into())
    );
    assert_eq!(ungrouped["newest"]["run_id"], first.as_str());

    // The first run's schema dump (the second, with `--group`, took none of its own).
    let schema = row(&l, "schema", "_schema");
    assert_eq!(schema["kept"], 1);
    assert_eq!(l["groups"].as_array().unwrap().len(), 5, "{l:#}");

    // The table: aligned columns, the failure's error below it.
    let out = env.run(&["list"]);
    out.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header = lines[0];
    assert!(header.starts_with("DATABASE"), "{}", out.stdout);
    let col = |name: &str| header.find(name).unwrap();
    let line_of = |group: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(group))
            .unwrap_or_else(|| panic!("no line for {group}:\n{}", out.stdout))
    };
    for (group, status, kept) in [
        ("orders", "ok", "2"),
        ("public.secret", "FAILED", "1"),
        ("later", "no dump", "0"),
    ] {
        let line = line_of(group);
        assert_eq!(
            &line[col("STATUS")..col("STATUS") + status.len()],
            status,
            "{line}"
        );
        assert_eq!(&line[col("KEPT")..], kept, "{line}");
    }
    assert!(line_of("orders")[col("NEWEST")..].starts_with(second.as_str()));
    assert!(out
        .stdout
        .contains(&format!("{}/public.secret: run {second} failed: ", db.name)));

    // Narrowed to one group; names nothing known: a usage error naming it.
    let one = env.run(&["list", "--json", "--group", "orders"]);
    one.expect_code(0);
    let groups = one.json()["groups"].as_array().unwrap().clone();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["group"], "orders");
    let bad = env.run(&["list", "--group", "nosuch"]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("\"nosuch\""), "{}", bad.stderr);
    let bad = env.run(&["list", "--database", "nosuchdb"]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("\"nosuchdb\""), "{}", bad.stderr);
}
