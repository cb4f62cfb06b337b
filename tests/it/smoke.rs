//! The harness itself works: server, psql, queries with awkward values.

use crate::util::*;

#[test]
fn harness_server_and_psql() {
    let db = fresh_db("smoke");
    db.sql("CREATE TABLE \"we\"\"ird\nname\" (a int, b text); INSERT INTO \"we\"\"ird\nname\" VALUES (1, E'x\\ny|z'), (2, NULL);");
    let rows = db.query("SELECT a, b FROM \"we\"\"ird\nname\" ORDER BY a");
    assert_eq!(
        rows,
        vec![
            vec!["1".to_string(), "x\ny|z".to_string()],
            vec!["2".to_string(), String::new()]
        ]
    );
    assert!(db.query("SELECT 1 WHERE false").is_empty());
    let tables = db.user_tables();
    assert!(tables.contains(&("public".to_string(), "we\"ird\nname".to_string())));
    let other = db.another("smoke_target");
    assert!(other.user_tables().is_empty());
}
