//! TLS to the server: `sslmode` with libpq's meanings, for pg_groupdump's own sessions and its
//! pg_dump children alike, against a server that refuses the role without encryption.

use std::path::Path;

use crate::util::*;

/// A CA and a server certificate for 127.0.0.1 signed by it, plus an unrelated CA.
fn certificates(dir: &Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=pg_groupdump test CA",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
            "-days",
            "2",
            "-subj",
            "/CN=someone else",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    );
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
        dir,
    );
}

#[test]
fn sslmode_is_honoured_by_sessions_and_children() {
    let ps = private_server();
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    // The server's key must belong to the server's user and be private.
    for f in ["server.crt", "server.key"] {
        let to = ps.datadir.join(f);
        std::fs::copy(certs.path().join(f), &to).unwrap();
        let owner = std::fs::metadata(&ps.datadir).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba = ps.datadir.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostssl all tlsonly 127.0.0.1/32 trust\nhost all tlsonly 127.0.0.1/32 reject\n{rest}"
        ),
    )
    .unwrap();
    ps.psql(
        "postgres",
        "ALTER SYSTEM SET ssl = on; SELECT pg_reload_conf();",
    );
    ps.psql(
        "postgres",
        "CREATE ROLE tlsonly LOGIN SUPERUSER; CREATE DATABASE tlsdb;",
    );
    ps.psql(
        "tlsdb",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);",
    );

    let ca = certs.path().join("ca.crt");
    let other = certs.path().join("other.crt");
    let attempt = |host: &str, mode: &str, root: Option<&Path>| -> Output {
        let env = Env::new();
        let mut c = Config::new(&env, "tlsdb")
            .connection("host", &ts(host))
            .connection("port", &ps.port.to_string())
            .connection("user", &ts("tlsonly"))
            .connection("sslmode", &ts(mode))
            .backup("schema", "false");
        if let Some(r) = root {
            c = c.connection("sslrootcert", &ts(r.to_str().unwrap()));
        }
        c.write(&env);
        let out = env.run(&["run"]);
        if out.code == 0 {
            assert_eq!(env.dumps().len(), 1, "{out:?}");
        }
        out
    };

    let out = attempt("127.0.0.1", "disable", None);
    out.expect_code(3);
    assert!(out.stderr.contains("no encryption"), "{out:?}");
    // Encryption without certificate checks, as libpq's require.
    attempt("127.0.0.1", "require", None).expect_code(0);
    attempt("127.0.0.1", "prefer", None).expect_code(0);
    // The chain and the name checked.
    attempt("127.0.0.1", "verify-ca", Some(&ca)).expect_code(0);
    attempt("127.0.0.1", "verify-full", Some(&ca)).expect_code(0);
    let out = attempt("127.0.0.1", "verify-ca", Some(&other));
    out.expect_code(3);
    assert!(out.stderr.to_lowercase().contains("certificate"), "{out:?}");
    let out = attempt("localhost", "verify-full", Some(&ca));
    out.expect_code(3);
    assert!(out.stderr.contains("not valid for name"), "{out:?}");
    // verify-ca does not check the name.
    attempt("localhost", "verify-ca", Some(&ca)).expect_code(0);
}
