//! Could not start: exit 3 (pg_dump missing or too old, server unreachable).

use std::os::unix::fs::PermissionsExt;

use crate::util::*;

#[test]
fn pg_dump_older_than_server_exits_3() {
    let db = fresh_db("old_pg_dump");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let env = Env::new();
    let marker = env.path().join("fake-pg_dump-was-asked-to-dump");
    let fake = env.path().join("fake").join("pg_dump");
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  --version|-V) echo 'pg_dump (PostgreSQL) 9.6.24'; exit 0;;\nesac\ntouch '{}'\nexit 1\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.config_for(&db)
        .backup("pg_dump", &ts(fake.to_str().unwrap()))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(3);
    assert!(
        out.stderr.contains("9.6"),
        "stderr names the version: {out:?}"
    );
    assert!(!marker.exists(), "the too-old pg_dump was asked to dump");
    assert!(env.dumps().is_empty(), "{:?}", env.files());
    env.assert_no_ing();
}

#[test]
fn pg_dump_missing_exits_3() {
    let db = fresh_db("missing_pg_dump");
    db.sql("CREATE TABLE t (id int);");
    let env = Env::new();
    let missing = env.path().join("nowhere").join("pg_dump");
    env.config_for(&db)
        .backup("pg_dump", &ts(missing.to_str().unwrap()))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(3);
    assert!(
        out.stderr.contains(missing.to_str().unwrap()),
        "stderr names the path: {out:?}"
    );
    assert!(env.dumps().is_empty(), "{:?}", env.files());
}

#[test]
fn server_unreachable_exits_3() {
    let db = fresh_db("unreachable");
    let env = Env::new();
    // a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.config_for(&db)
        .connection("port", &port.to_string())
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(3);
    assert!(env.dumps().is_empty(), "{:?}", env.files());
}
