//! One group failing does not stop the others.

use std::collections::BTreeSet;

use crate::util::*;

#[test]
fn unreadable_table_fails_only_its_group() {
    let db = fresh_db("fail_iso");
    let role = unique_name("bk");
    db.sql(&format!(
        "CREATE TABLE a (id int, v text); INSERT INTO a VALUES (1, 'a1'), (2, 'a2');
         CREATE TABLE b (id int); INSERT INTO b SELECT generate_series(1, 30);
         CREATE TABLE secret (id int, pw text); INSERT INTO secret VALUES (1, 'hunter2');
         CREATE TABLE c (id int); INSERT INTO c VALUES (3);
         CREATE ROLE {r} LOGIN;
         GRANT CONNECT ON DATABASE {d} TO {r};
         GRANT USAGE ON SCHEMA public TO {r};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};
         REVOKE SELECT ON secret FROM {r};",
        r = qi(&role),
        d = qi(&db.name)
    ));
    let env = Env::new();
    // The default engine. The schema-only dump it takes first (`schema = false`) cannot lock
    // `secret` (no privilege), so every group of the database is dumped with pg_dump (a
    // fallback, with a warning); what is tested here holds either way.
    env.config_for(&db)
        .connection("user", &ts(&role))
        .backup("schema", "false")
        .backup("jobs", "2")
        .extra(&format!(
            "[[group]]\nname = \"ab\"\ndatabase = {}\ntables = [\"public.a\", \"public.b\"]\n",
            ts(&db.name)
        ))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(1);

    let report = env.report();
    assert_eq!(report["status"], "failed", "{report:#}");
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let groups = report_groups(&report, &db.name);
    assert_eq!(
        groups.keys().cloned().collect::<Vec<_>>(),
        owned(&["ab", "public.c", "public.secret"])
    );
    let secret = &groups["public.secret"];
    assert_eq!(secret["status"], "failed", "{secret:#}");
    let err = secret["error"].as_str().expect("error string");
    assert!(err.contains("permission denied"), "error: {err}");
    for k in ["file", "bytes", "sha256"] {
        assert!(secret[k].is_null(), "{secret:#}");
    }

    let mut files = BTreeSet::new();
    for (name, tables) in [
        ("ab", vec![("public", "a"), ("public", "b")]),
        ("public.c", vec![("public", "c")]),
    ] {
        let g = &groups[name];
        assert_eq!(g["status"], "ok", "{g:#}");
        assert!(g["error"].is_null());
        let file = checked_file(g);
        assert_eq!(file, expected_dump_path(&env.dir, &db.name, name, &run_id));
        files.insert(file.clone());
        // ACL entries are expected here (grants), so not only tables
        assert_dump_tables(&file, &db, &tables, false);
        let target = db.another("fail_restore");
        restore(&file, &target);
        for (s, t) in &tables {
            assert_same_rows(&db, &target, s, t);
        }
    }
    let on_disk: BTreeSet<_> = env.dumps().into_iter().collect();
    assert_eq!(on_disk, files, "no dump of the failed group");
    env.assert_no_ing();
}
