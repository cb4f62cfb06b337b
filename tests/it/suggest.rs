//! `plan --suggest-groups` and `init`: groups proposed from the live catalog (tables tied by
//! foreign keys, partitions, inheritance and views), the foreign keys the configuration dumps
//! apart, and a starter groups.toml that `plan` accepts.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use crate::util::*;

/// Four tables tied by foreign keys (order_items holding most of the data), a partitioned
/// table and a plain one read by one view, two tables tied by inheritance, and a table tied
/// to nothing.
fn tied_db(hint: &str) -> TestDb {
    let db = fresh_db(hint);
    db.sql(
        "CREATE TABLE customers (id int PRIMARY KEY);
         CREATE TABLE products (id int PRIMARY KEY);
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers (id));
         CREATE TABLE order_items (order_id int REFERENCES orders (id),
                                   product_id int REFERENCES products (id), note text);
         INSERT INTO customers VALUES (1); INSERT INTO products VALUES (1);
         INSERT INTO orders SELECT g, 1 FROM generate_series(1, 100) g;
         INSERT INTO order_items SELECT g % 100 + 1, 1, repeat('x', 200) FROM generate_series(1, 20000) g;
         CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE TABLE audit (id int, what text);
         CREATE VIEW recent AS SELECT e.id, a.what FROM events e JOIN audit a USING (id);
         CREATE TABLE base_log (msg text);
         CREATE TABLE child_log (extra int) INHERITS (base_log);
         CREATE TABLE settings (k text PRIMARY KEY, v text);
         ANALYZE;",
    );
    db
}

fn table_set(group: &toml::Value) -> BTreeSet<String> {
    group["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn suggest_groups_ties_keys_partitions_inheritance_and_views_and_lists_keys_dumped_apart() {
    let db = tied_db("suggest");
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            "[[group]]\nname = \"orders\"\ndatabase = {d}\ntables = [\"public.orders\"]\n\n\
             [[group]]\nname = \"items\"\ndatabase = {d}\ntables = [\"public.order_items\"]\n",
            d = ts(&db.name)
        ),
    );
    let out = env.run(&["plan", "--suggest-groups"]);
    out.expect_code(0);
    // Ready to paste: everything but the [[group]] blocks is a comment.
    let parsed: toml::Value =
        toml::from_str(&out.stdout).unwrap_or_else(|e| panic!("not TOML ({e}):\n{}", out.stdout));
    let groups = parsed["group"].as_array().unwrap();
    let sets: BTreeSet<BTreeSet<String>> = groups.iter().map(table_set).collect();
    assert_eq!(
        sets,
        BTreeSet::from([
            set(&[
                "public.customers",
                "public.order_items",
                "public.orders",
                "public.products"
            ]),
            set(&["public.audit", "public.events"]),
            set(&["public.base_log", "public.child_log"]),
        ]),
        "{}",
        out.stdout
    );
    // Named after the most referenced table, of those the one referencing fewest (oldest
    // first); the largest group first.
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names[0], "customers");
    assert_eq!(
        names[1..].iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["events", "base_log"])
    );
    assert!(groups
        .iter()
        .all(|g| g["database"].as_str() == Some(db.name.as_str())));
    let text = &out.stdout;
    assert!(text.contains("# WARNING: holds "), "{text}");
    assert!(
        text.contains("tied by view public.recent reads public.audit, public.events"),
        "{text}"
    );
    assert!(
        text.contains("tied by public.child_log inherits public.base_log"),
        "{text}"
    );
    assert!(text.contains("\"public.order_items\",  # ~"), "{text}");
    assert!(text.contains("public.settings"), "{text}");
    assert!(
        text.contains("public.order_items → public.orders (order_items_order_id_fkey): group \"items\" / group \"orders\""),
        "{text}"
    );

    let out = env.run(&["plan", "--suggest-groups", "--json"]);
    out.expect_code(0);
    let j = out.json();
    let d = &j["databases"][0];
    assert_eq!(d["database"], db.name.as_str());
    assert_eq!(d["alone"], serde_json::json!(["public.settings"]));
    let big = &d["groups"][0];
    assert!(big["share"].as_f64().unwrap() > 0.5, "{big}");
    assert!(big["warning"].is_string());
    assert!(d["groups"][1]["warning"].is_null());
    let crossing: BTreeSet<(String, String, String)> = d["crossing_foreign_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_string(),
                k["table_group"].to_string(),
                k["references_group"].to_string(),
            )
        })
        .collect();
    let g = |s: &str| format!("{s:?}");
    assert_eq!(
        crossing,
        BTreeSet::from([
            ("order_items_order_id_fkey".into(), g("items"), g("orders")),
            (
                "order_items_product_id_fkey".into(),
                g("items"),
                "null".to_string()
            ),
            (
                "orders_customer_id_fkey".into(),
                g("orders"),
                "null".to_string()
            ),
        ])
    );
}

/// `pg_groupdump init` with the connection in the libpq environment, in `cwd`.
fn init(args: &[&str], cwd: &std::path::Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pg_groupdump"));
    c.arg("init").args(args).current_dir(cwd);
    clean_pg_env(&mut c);
    c.env("PGHOST", "127.0.0.1")
        .env("PGPORT", server().port.to_string())
        .env("PGUSER", "postgres")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    let out = c.output().expect("run pg_groupdump init");
    Output {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn init_writes_a_starter_file_that_plan_accepts_and_never_overwrites_one() {
    let db = tied_db("init");
    let env = Env::new();
    let dir = env.dir.to_str().unwrap().to_string();
    let out = init(&["--database", &db.name, "--dir", &dir], env.path());
    out.expect_code(0);
    let file = env.path().join("groups.toml");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        out.stderr.contains("wrote groups.toml: 3 groups suggested"),
        "{}",
        out.stderr
    );
    assert!(
        written.contains("\n# [retention] ") && written.contains("\n# max_age = \"14d\"\n"),
        "{written}"
    );
    assert!(
        written.contains(&format!("dir = {}", ts(&dir))),
        "{written}"
    );

    // `plan` takes it as it is: the suggested groups, and the one table tied to nothing.
    let out = env.run(&["plan", "--json"]);
    out.expect_code(0);
    let plan = out.json();
    let groups = plan["databases"][0]["groups"].as_array().unwrap();
    let configured: BTreeSet<(String, usize)> = groups
        .iter()
        .filter(|g| g["origin"] == "config")
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_string(),
                g["tables"].as_array().unwrap().len(),
            )
        })
        .collect();
    // events brings its partition.
    assert_eq!(
        configured,
        BTreeSet::from([
            ("customers".to_string(), 4),
            ("events".to_string(), 3),
            ("base_log".to_string(), 2),
        ]),
        "{plan:#}"
    );
    assert_eq!(
        plan["databases"][0]["ungrouped"],
        serde_json::json!(["public.settings"])
    );
    assert!(plan["warnings"].as_array().unwrap().is_empty(), "{plan:#}");

    // Never overwritten: a usage error, the file as it was.
    let out = init(&["--database", &db.name], env.path());
    out.expect_code(2);
    assert!(
        out.stderr.contains("groups.toml already exists"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);

    // A database that is not there: the run could not start.
    let out = init(
        &["--database", "no_such_db_here", "--output", "other.toml"],
        env.path(),
    );
    out.expect_code(3);
    assert!(out.stderr.contains("no_such_db_here"), "{}", out.stderr);
    assert!(!env.path().join("other.toml").exists());
}
