//! Awkward schema, table, group and database names: each table gets its own dump holding
//! exactly that table, file names are encoded as src/store.rs says, rows restore identical.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::util::*;

const LONG: &str = "日日日日日日日日日日日日日日日日日日日日日"; // 21 x 3 bytes = 63 bytes

fn special_tables() -> Vec<(&'static str, &'static str)> {
    vec![
        ("public", "it's"),
        ("public", "dq\"uote"),
        ("public", "has space"),
        ("public", "dot.ted"),
        ("public", "star*"),
        ("public", "q?mark"),
        ("public", "dollar$"),
        ("public", "sl/ash"),
        ("public", ".."),
        ("public", "."),
        ("public", "pct%41"),
        ("public", "new\nline"),
        ("public", "MixedCase"),
        ("public", "mixedcase"),
        ("public", LONG),
        ("public", "t"),
        ("public", "t1"),
        ("public", "a*b"),
        ("public", "aXb"),
        ("public", "[ab]"),
        ("public", "back\\slash"),
        ("public", "-leading-dash"),
        ("public", "nb\u{a0}sp"),
        ("public", "tab\there"),
        ("public", "emoji😀"),
        ("Sch \"q\"", "t"),
        ("my.schema", "x.y"),
        ("_priv", "t"),
        ("sp ace", "t1"),
        ("..", "t"),
    ]
}

#[test]
fn special_names_each_get_their_own_exact_dump() {
    assert_eq!(LONG.len(), 63);
    let db = fresh_db("names");
    let tables = special_tables();
    let schemas: BTreeSet<&str> = tables.iter().map(|(s, _)| *s).collect();
    db.create_schemas(schemas.iter().copied());
    let mut sql = String::new();
    for (i, (s, t)) in tables.iter().enumerate() {
        let q = qt(s, t);
        sql.push_str(&format!(
            "CREATE TABLE {q} (id int, v text);\nINSERT INTO {q} SELECT g, {} || g FROM generate_series(1, {}) g;\n",
            ql(&format!("{s}|{t}|")),
            i + 1
        ));
    }
    db.sql(&sql);
    assert_eq!(db.user_tables().len(), tables.len());

    let env = Env::new();
    env.config_for(&db).backup("schema", "false").write(&env);

    // plan: one ungrouped group per table, named by its display name
    let plan = env.plan_json();
    let groups = plan_groups(&plan, &db.name);
    let want_names: Vec<String> = sorted(tables.iter().map(|(s, t)| display(s, t)).collect());
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        want_names,
        "{plan:#}"
    );
    for (name, g) in &groups {
        assert_eq!(plan_group_tables(g), vec![name.clone()], "{g:#}");
    }

    let out = env.run(&["run"]);
    out.expect_code(0);
    let report = env.report();
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let rgroups = report_groups(&report, &db.name);
    assert_eq!(rgroups.keys().cloned().collect::<Vec<_>>(), want_names);

    let target = db.another("names_restore");
    target.create_schemas(schemas.iter().copied());
    let mut files = BTreeSet::new();
    let db_dir = env.dir.join(&db.name);
    for (s, t) in &tables {
        let name = display(s, t);
        let entry = &rgroups[&name];
        assert_eq!(entry["status"], "ok", "{entry:#}");
        assert_eq!(strings(&entry["tables"]), vec![name.clone()]);
        let file = checked_file(entry);
        // <dir>/<db>/<group>/<file>: no '/' inside a component
        assert_eq!(
            file.parent().and_then(|p| p.parent()),
            Some(db_dir.as_path()),
            "{name:?} -> {}",
            file.display()
        );
        assert_eq!(
            file,
            expected_dump_path(&env.dir, &db.name, &name, &run_id),
            "encoding of {name:?}"
        );
        assert!(
            files.insert(file.clone()),
            "duplicate file {}",
            file.display()
        );
        assert_dump_tables(&file, &db, &[(s, t)], true);
        restore(&file, &target);
        assert_same_rows(&db, &target, s, t);
    }
    let want: BTreeSet<(String, String)> = tables
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    assert_eq!(target.user_tables(), want);
    let on_disk: BTreeSet<PathBuf> = env.dumps().into_iter().collect();
    assert_eq!(on_disk, files);
    env.assert_no_ing();
}

#[test]
fn special_group_names_are_encoded() {
    let db = fresh_db("group_names");
    db.sql(
        "CREATE TABLE g1 (id int); INSERT INTO g1 VALUES (1);
         CREATE TABLE g2 (id int); INSERT INTO g2 VALUES (2);
         CREATE TABLE g3 (id int); INSERT INTO g3 VALUES (3);
         CREATE TABLE g4 (id int); INSERT INTO g4 VALUES (4);",
    );
    let env = Env::new();
    let group = |name: &str, table: &str| {
        format!(
            "[[group]]\nname = {}\ndatabase = {}\ntables = [{}]\n",
            ts(name),
            ts(&db.name),
            ts(table)
        )
    };
    env.config_for(&db)
        .backup("schema", "false")
        .extra(
            &[
                group("..", "public.g1"),
                group("a/b", "public.g2"),
                group(".hidden", "public.g3"),
                group("Ünïcode gröup", "public.g4"),
            ]
            .concat(),
        )
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let report = env.report();
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let groups = report_groups(&report, &db.name);
    for (name, table, component) in [
        ("..", "g1", "%2E."),
        ("a/b", "g2", "a%2Fb"),
        (".hidden", "g3", "%2Ehidden"),
        ("Ünïcode gröup", "g4", "Ünïcode%20gröup"),
    ] {
        let file = checked_file(&groups[name]);
        assert_eq!(encode_component(name), component);
        assert_eq!(
            file,
            env.dir
                .join(&db.name)
                .join(component)
                .join(format!("{}.{component}.{run_id}.dump", db.name)),
            "group {name:?}"
        );
        assert_dump_tables(&file, &db, &[("public", table)], true);
    }
    // nothing escaped the database directory
    for f in env.dumps() {
        assert!(f.starts_with(env.dir.join(&db.name)), "{}", f.display());
    }
    env.assert_no_ing();
}

#[test]
fn special_database_name() {
    let name = format!(".Odd db=x/\"q\"%'{}", unique_name("z"));
    let db = create_db_named(&name);
    db.sql("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');");
    let env = Env::new();
    env.cfg(&db, "");
    env.run(&["run"]).expect_code(0);
    let report = env.report();
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let groups = report_groups(&report, &name);
    let file = checked_file(&groups["public.t"]);
    let enc = encode_component(&name);
    assert!(enc.starts_with("%2EOdd%20db=x%2F%22q%22%25%27"), "{enc}");
    assert_eq!(
        file,
        expected_dump_path(&env.dir, &name, "public.t", &run_id)
    );
    let schema_file = env
        .dir
        .join(&enc)
        .join("_schema")
        .join(format!("{enc}._schema.{run_id}.dump"));
    assert!(schema_file.exists(), "{:?}", env.files());
    assert_dump_tables(&file, &db, &[("public", "t")], true);
    let target = db.another("odd_restore");
    restore(&file, &target);
    assert_same_rows(&db, &target, "public", "t");
}
