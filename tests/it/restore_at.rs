//! `restore --at TIME`: each group's newest dump taken at or before TIME, for one group or a
//! whole database, with the spread between the chosen groups' snapshots.

use std::time::Duration;

use crate::util::*;

fn count(db: &TestDb, table: &str) -> String {
    db.query_one(&format!("SELECT count(*) FROM {table}"))
}

/// A moment strictly between two runs: a second after the last one, a second before the next.
fn pause_and_mark() -> chrono::DateTime<chrono::Utc> {
    std::thread::sleep(Duration::from_millis(1100));
    let t = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    t
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn restore_at_picks_each_groups_dump_at_or_before_the_time_and_says_the_spread() {
    let db = fresh_db("at");
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 100);
         CREATE TABLE order_items (order_id int REFERENCES orders (id), qty int);
         INSERT INTO order_items SELECT g % 100 + 1, g FROM generate_series(1, 300) g;
         CREATE TABLE misc (k int); INSERT INTO misc VALUES (1);",
    );
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            "[[group]]\nname = \"orders\"\ndatabase = {}\ntables = [\"public.orders\", \"public.order_items\"]\n",
            ts(&db.name)
        ),
    );
    env.run(&["run"]).expect_code(0);
    let t1 = pause_and_mark();
    db.sql("INSERT INTO orders SELECT generate_series(101, 150); INSERT INTO misc VALUES (2);");
    env.run(&["run"]).expect_code(0);
    std::thread::sleep(Duration::from_millis(1100));
    db.sql("INSERT INTO orders SELECT generate_series(151, 200); INSERT INTO misc VALUES (3);");
    env.run(&["run", "--group", "orders"]).expect_code(0);
    let t3 = pause_and_mark();
    let mut runs: Vec<String> = std::fs::read_dir(env.dir.join("reports"))
        .unwrap()
        .map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.trim_end_matches(".json").to_string()
        })
        .collect();
    runs.sort();
    assert_eq!(runs.len(), 3);

    // A whole database as of t1: everything from the first run.
    let target = db.another("at_t1");
    let out = env.run(&[
        "restore",
        "--database",
        &db.name,
        "--at",
        &rfc3339(t1),
        "--target",
        &target.name,
    ]);
    out.expect_code(0);
    assert_eq!(count(&target, "orders"), "100");
    assert_eq!(count(&target, "order_items"), "300");
    assert_eq!(count(&target, "misc"), "1");
    assert!(
        out.stderr
            .contains(&format!("schema: the dump of run {}", runs[0])),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("snapshots are "), "{}", out.stderr);

    // As of t3: orders from the third run (a `--group` run), misc and the schema from the
    // second; the spread between them is said.
    let target = db.another("at_t3");
    let out = env.run(&[
        "restore",
        "--database",
        &db.name,
        "--at",
        &rfc3339(t3),
        "--target",
        &target.name,
    ]);
    out.expect_code(0);
    assert_eq!(count(&target, "orders"), "200");
    assert_eq!(count(&target, "misc"), "2");
    let e = &out.stderr;
    assert!(
        e.contains(&format!("group orders: the dump of run {}", runs[2])),
        "{e}"
    );
    assert!(
        e.contains(&format!("group public.misc: the dump of run {}", runs[1])),
        "{e}"
    );
    assert!(
        e.contains(&format!("schema: the dump of run {}", runs[1])),
        "{e}"
    );
    let spread = e
        .lines()
        .find(|l| l.starts_with("the chosen groups' snapshots are "))
        .unwrap_or_else(|| panic!("no spread line:\n{e}"));
    assert!(
        spread.contains("earliest group public.misc") && spread.contains("latest group orders"),
        "{spread}"
    );
    assert!(!spread.contains(" are 0s apart"), "{spread}");

    // One group, the time in local "YYYY-MM-DD HH:MM:SS".
    let local = t1
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let target = db.another("at_group");
    let out = env.run(&[
        "restore",
        "--group",
        "orders",
        "--at",
        &local,
        "--target",
        &target.name,
    ]);
    out.expect_code(0);
    assert_eq!(count(&target, "orders"), "100");
    assert!(
        out.stderr.contains(&format!("the dump of run {}", runs[0])),
        "{}",
        out.stderr
    );

    // Nothing that old: a usage error naming the group and the time; a time that is none.
    let out = env.run(&[
        "restore",
        "--group",
        "orders",
        "--at",
        "2000-01-01T00:00:00Z",
        "--target",
        &target.name,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("no dump of group \"orders\"")
            && out.stderr.contains("at or before 2000-01-01T00:00:00Z")
            && out.stderr.contains("its oldest dump was taken"),
        "{}",
        out.stderr
    );
    let out = env.run(&[
        "restore",
        "--database",
        &db.name,
        "--at",
        "2000-01-01 00:00",
        "--target",
        &target.name,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("no schema dump of database"),
        "{}",
        out.stderr
    );
    let out = env.run(&[
        "restore",
        "--group",
        "orders",
        "--at",
        "yesterday",
        "--target",
        &target.name,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("--at: \"yesterday\" is not a time"),
        "{}",
        out.stderr
    );
}
