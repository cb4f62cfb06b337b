//! `plan --json`: group resolution and warnings.

use crate::util::*;
use serde_json::Value;

/// Simple tables with one row each.
fn tables(db: &TestDb, names: &[&str]) {
    let mut sql = String::new();
    for n in names {
        sql.push_str(&format!(
            "CREATE TABLE {n} (id int, v text); INSERT INTO {n} VALUES (1, 'x');\n"
        ));
    }
    db.sql(&sql);
}

fn warnings(plan: &Value) -> Vec<String> {
    strings(&plan["warnings"])
}

fn group_names(plan: &Value, db: &str) -> Vec<String> {
    plan_groups(plan, db).into_keys().collect()
}

#[test]
fn plan_explicit_schemas_ungrouped_and_exclude() {
    let db = fresh_db("plan_resolve");
    db.sql("CREATE SCHEMA audit; CREATE SCHEMA other;");
    tables(
        &db,
        &[
            "public.orders",
            "public.order_items",
            "audit.log_a",
            "audit.log_b",
            "public.misc",
            "public.tmp_x",
            "public.tmp_y",
            "other.keep",
        ],
    );
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            r#"
[[group]]
name = "orders"
database = {d}
tables = ["public.orders", "public.order_items"]

[[group]]
name = "audit"
database = {d}
schemas = ["audit"]

[ungrouped]
exclude = ["public.tmp_*"]
"#,
            d = ts(&db.name)
        ),
    );
    let plan = env.plan_json();

    let dbs = plan["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 1, "only the configured database: {plan:#}");
    let groups = plan_groups(&plan, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["audit", "orders", "other.keep", "public.misc"]),
        "{plan:#}"
    );
    let expect = [
        (
            "orders",
            "config",
            vec!["public.order_items", "public.orders"],
        ),
        ("audit", "config", vec!["audit.log_a", "audit.log_b"]),
        ("public.misc", "ungrouped", vec!["public.misc"]),
        ("other.keep", "ungrouped", vec!["other.keep"]),
    ];
    for (name, origin, tbls) in expect {
        let g = &groups[name];
        assert_eq!(g["origin"], origin, "origin of {name}: {g:#}");
        assert_eq!(plan_group_tables(g), owned(&tbls), "tables of {name}");
        let sum: u64 = g["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["bytes"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("table bytes: {t}"))
            })
            .sum();
        assert_eq!(g["bytes"].as_u64(), Some(sum), "group bytes = sum: {g:#}");
    }
    let excluded = sorted(strings(&dbs[0]["excluded"]));
    assert_eq!(excluded, owned(&["public.tmp_x", "public.tmp_y"]));
    assert!(warnings(&plan).is_empty(), "{plan:#}");
    // plan dumps nothing
    assert!(
        env.dumps().is_empty(),
        "plan wrote dumps: {:?}",
        env.files()
    );
}

#[test]
fn plan_reports_table_sizes() {
    let db = fresh_db("plan_sizes");
    db.sql(
        "CREATE TABLE big (id int, v text);
         INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;
         CREATE TABLE small (id int); INSERT INTO small VALUES (1);
         VACUUM ANALYZE big; VACUUM ANALYZE small;",
    );
    // sizes may be estimates (pg_class.relpages): VACUUM ANALYZE makes them current
    let env = Env::new();
    env.cfg(&db, "");
    let plan = env.plan_json();
    let groups = plan_groups(&plan, &db.name);
    let size = |g: &str| groups[g]["tables"][0]["bytes"].as_u64().unwrap();
    let actual: u64 = db
        .query_one("SELECT pg_relation_size('public.big')")
        .parse()
        .unwrap();
    assert!(actual > 200_000);
    assert!(
        size("public.big") >= actual,
        "size of public.big ({actual} bytes on disk): {plan:#}"
    );
    assert!(size("public.small") > 0, "a table with a row: {plan:#}");
    assert!(size("public.big") > size("public.small"), "{plan:#}");
    assert_eq!(
        groups["public.big"]["bytes"].as_u64(),
        Some(size("public.big"))
    );
}

#[test]
fn plan_skip_mode_keeps_only_configured_groups() {
    let db = fresh_db("plan_skip");
    tables(&db, &["public.a", "public.b", "public.c"]);
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            r#"
[[group]]
name = "ab"
database = {d}
tables = ["public.a", "public.b"]

[ungrouped]
mode = "skip"
"#,
            d = ts(&db.name)
        ),
    );
    let plan = env.plan_json();
    assert_eq!(group_names(&plan, &db.name), owned(&["ab"]), "{plan:#}");
    assert_eq!(
        plan_group_tables(&plan_groups(&plan, &db.name)["ab"]),
        owned(&["public.a", "public.b"])
    );
}

#[test]
fn plan_default_mode_is_table() {
    let db = fresh_db("plan_default_mode");
    tables(&db, &["public.a", "public.b"]);
    let env = Env::new();
    env.cfg(&db, "");
    let plan = env.plan_json();
    let groups = plan_groups(&plan, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["public.a", "public.b"])
    );
    for (name, g) in &groups {
        assert_eq!(g["origin"], "ungrouped");
        assert_eq!(plan_group_tables(g), vec![name.clone()]);
    }
}

fn partitioned(db: &TestDb) {
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
         INSERT INTO logs VALUES (1), (2), (2);
         CREATE TABLE plain (id int); INSERT INTO plain VALUES (1);",
    );
}

#[test]
fn plan_partitioned_table_brings_its_partitions() {
    let db = fresh_db("plan_partitions");
    partitioned(&db);
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            r#"
[[group]]
name = "events"
database = {d}
tables = ["public.ev"]
"#,
            d = ts(&db.name)
        ),
    );
    let plan = env.plan_json();
    let groups = plan_groups(&plan, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["events", "public.logs", "public.plain"]),
        "partitions never are groups of their own: {plan:#}"
    );
    assert_eq!(
        plan_group_tables(&groups["events"]),
        owned(&[
            "public.ev",
            "public.ev_2024",
            "public.ev_2025",
            "public.ev_2025_a",
            "public.ev_2025_b"
        ])
    );
    assert_eq!(
        plan_group_tables(&groups["public.logs"]),
        owned(&["public.logs", "public.logs_1", "public.logs_2"])
    );
    assert_eq!(groups["public.logs"]["origin"], "ungrouped");
}

#[test]
fn plan_bare_table_name_resolves_in_any_schema() {
    let db = fresh_db("plan_bare");
    db.sql("CREATE SCHEMA shop_s;");
    tables(&db, &["shop_s.widget", "public.other"]);
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            r#"
[[group]]
name = "w"
database = {d}
tables = ["widget"]
"#,
            d = ts(&db.name)
        ),
    );
    let plan = env.plan_json();
    let groups = plan_groups(&plan, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["public.other", "w"])
    );
    assert_eq!(plan_group_tables(&groups["w"]), owned(&["shop_s.widget"]));
}

#[test]
fn plan_quoted_names_in_config() {
    let db = fresh_db("plan_quoted");
    db.sql(
        r#"CREATE SCHEMA "my.schema";
           CREATE TABLE "my.schema"."x.y" (id int);
           CREATE TABLE public."dq""uote" (id int);
           CREATE TABLE public."MixedCase" (id int);
           CREATE TABLE public.mixedcase (id int);
           CREATE TABLE "my.schema".plain (id int);"#,
    );
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            r#"
[[group]]
name = "q"
database = {d}
tables = ['"my.schema"."x.y"', 'public."dq""uote"', 'public.MixedCase']
"#,
            d = ts(&db.name)
        ),
    );
    let plan = env.plan_json();
    let groups = plan_groups(&plan, &db.name);
    assert_eq!(
        plan_group_tables(&groups["q"]),
        owned(&[
            r#""my.schema"."x.y""#,
            r#"public."dq""uote""#,
            "public.MixedCase"
        ]),
        "{plan:#}"
    );
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["\"my.schema\".plain", "public.mixedcase", "q"]),
        "ungrouped display names quote parts with '.' or '\"': {plan:#}"
    );
}

#[test]
fn plan_warns_about_foreign_key_between_groups() {
    let db = fresh_db("plan_fk");
    db.sql(
        "CREATE TABLE fk_parent (id int PRIMARY KEY);
         CREATE TABLE fk_inside (id int PRIMARY KEY, p int REFERENCES fk_parent);
         CREATE TABLE fk_child (id int, parent_id int REFERENCES fk_parent);
         CREATE TABLE unrelated (id int);",
    );
    let env = Env::new();
    env.cfg(
        &db,
        &format!(
            r#"
[[group]]
name = "parents"
database = {d}
tables = ["public.fk_parent", "public.fk_inside"]
"#,
            d = ts(&db.name)
        ),
    );
    let out = env.run(&["plan", "--json"]);
    out.expect_code(0);
    let plan = out.json();
    let w = warnings(&plan);
    let fk: Vec<&String> = w
        .iter()
        .filter(|w| w.contains("public.fk_child") && w.contains("public.fk_parent"))
        .collect();
    assert_eq!(fk.len(), 1, "one warning naming both tables: {w:#?}");
    assert!(
        !w.iter().any(|w| w.contains("fk_inside")),
        "a foreign key inside one group is fine: {w:#?}"
    );
    assert!(
        out.stderr.contains("public.fk_child") && out.stderr.contains("public.fk_parent"),
        "warning also on stderr: {}",
        out.stderr
    );
}

#[test]
fn plan_warns_about_exclude_matching_nothing() {
    let db = fresh_db("plan_excl_warn");
    tables(&db, &["public.tmp_a", "public.keep"]);
    let env = Env::new();
    env.cfg(
        &db,
        r#"
[ungrouped]
exclude = ["public.nomatch_*", "public.tmp_*"]
"#,
    );
    let out = env.run(&["plan", "--json"]);
    out.expect_code(0);
    let plan = out.json();
    let w = warnings(&plan);
    assert_eq!(
        w.iter().filter(|w| w.contains("public.nomatch_*")).count(),
        1,
        "{w:#?}"
    );
    assert!(
        !w.iter().any(|w| w.contains("public.tmp_*")),
        "a pattern that matched must not warn: {w:#?}"
    );
    assert!(out.stderr.contains("public.nomatch_*"), "{}", out.stderr);
    assert_eq!(
        group_names(&plan, &db.name),
        owned(&["public.keep"]),
        "{plan:#}"
    );
}

#[test]
fn plan_human_output() {
    let db = fresh_db("plan_human");
    tables(&db, &["public.visible_tbl"]);
    let env = Env::new();
    env.cfg(&db, "");
    let out = env.run(&["plan"]);
    out.expect_code(0);
    assert!(out.stdout.contains("public.visible_tbl"), "{out:?}");
}
