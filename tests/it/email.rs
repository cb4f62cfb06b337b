//! `[email]`: one mail per run, over real SMTP. The mail server is `tests/smtp_server.py`
//! (Python's aiosmtpd) on a loopback port; it writes every message it accepts to a directory
//! that the tests read.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

const SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");
const FROM: &str = "backup@example.com";
const TO: [&str; 2] = ["ops@example.com", "dba@example.com"];

// ---------------------------------------------------------------------------------------------
// The mail server

#[derive(Default)]
struct SmtpOpts {
    /// (certificate, key) PEM files: offer and require STARTTLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// (user, password): require AUTH.
    auth: Option<(String, String)>,
    /// With `tls`: TLS from the first byte instead of STARTTLS.
    implicit_tls: bool,
    /// Accept connections and never answer.
    silent: bool,
}

/// A running `tests/smtp_server.py`; killed on drop.
struct Smtp {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Smtp {
    fn start(env: &Env, opts: SmtpOpts) -> Smtp {
        let root = env.path().join(format!("smtp-{}", unique_name("srv")));
        let dir = root.join("mail");
        fs::create_dir_all(&dir).unwrap();
        let ready = root.join("port");
        let log = fs::File::create(root.join("server.log")).unwrap();
        let mut c = Command::new("python3");
        c.arg(SERVER_SCRIPT)
            .arg("--dir")
            .arg(&dir)
            .arg("--ready")
            .arg(&ready)
            .args(["--max-seconds", "600"]);
        if opts.silent {
            c.args(["--mode", "silent"]);
        }
        if let Some((cert, key)) = &opts.tls {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
            if opts.implicit_tls {
                c.arg("--implicit-tls");
            }
        }
        if let Some((user, password)) = &opts.auth {
            c.args(["--user", user, "--password", password]);
        }
        c.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {SERVER_SCRIPT}: {e}"));
        let start = Instant::now();
        let port = loop {
            if let Ok(text) = fs::read_to_string(&ready) {
                if let Ok(p) = text.trim().parse::<u16>() {
                    break p;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the test SMTP server exited ({status}); is aiosmtpd installed \
                     (python3 -m pip install aiosmtpd, or scripts/test.sh)?\n{}",
                    fs::read_to_string(root.join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the test SMTP server did not start listening:\n{}",
                fs::read_to_string(root.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Smtp { child, port, dir }
    }

    /// Every message received, in order.
    fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("msg-") && name.ends_with(".json")
            })
            .collect();
        files.sort();
        files.iter().map(|f| read_json(f)).collect()
    }

    /// The one message received (panics unless exactly one).
    fn only_message(&self) -> Value {
        let mut m = self.messages();
        assert_eq!(m.len(), 1, "expected exactly one mail: {m:#?}");
        m.pop().unwrap()
    }

    /// How many connections the server has accepted.
    fn connections(&self) -> usize {
        fs::read_to_string(self.dir.join("connections.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A decoded plain-text body with CRLF line ends made LF.
fn body(msg: &Value) -> String {
    msg["body"]
        .as_str()
        .expect("body is a string")
        .replace("\r\n", "\n")
}

fn subject(msg: &Value) -> String {
    msg["subject"].as_str().expect("subject").to_owned()
}

/// A test CA and a server certificate it signed for 127.0.0.1 / localhost (openssl CLI).
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| openssl(args, dir);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pg_groupdump test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&args);
    fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// An `[email]` table for a server on `port`; `extra` is raw TOML lines (`timeout` is 10s
/// unless `extra` sets it).
fn email_table(port: u16, extra: &str) -> String {
    let timeout = if extra.lines().any(|l| l.starts_with("timeout")) {
        ""
    } else {
        "timeout = \"10s\"\n"
    };
    format!(
        "[email]\nhost = \"127.0.0.1\"\nport = {port}\nfrom = {}\nto = {}\n{timeout}{extra}\n",
        ts(FROM),
        ta(&TO)
    )
}

/// The path of the one report in the backup dir.
fn report_path(env: &Env) -> PathBuf {
    let reports = env.dir.join("reports");
    let mut files: Vec<PathBuf> = fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

/// Runs the binary with extra environment variables.
fn run_with_env(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pg_groupdump"));
    c.arg("-c")
        .arg(&env.config)
        .args(args)
        .current_dir(env.path());
    clean_pg_env(&mut c);
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().expect("run pg_groupdump");
    Output {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A password file with the given mode.
fn password_file(env: &Env, name: &str, password: &str, mode: u32) -> PathBuf {
    let p = env.path().join(name);
    fs::write(&p, format!("{password}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Holds an ACCESS EXCLUSIVE lock on a table from another session until dropped.
struct LockHolder {
    child: Child,
    db: TestDb,
    app: String,
    pid: String,
}

impl LockHolder {
    fn lock(db: &TestDb, table: &str) -> LockHolder {
        use std::io::Write;
        let s = server();
        let app = unique_name("mail_blocker");
        let mut child = Command::new(s.bin("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .arg("-p")
            .arg(s.port.to_string())
            .args(["-U", "postgres", "-d"])
            .arg(format!("{} application_name={app}", conninfo_db(&db.name)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql");
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(
                format!(
                    "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);\n"
                )
                .as_bytes(),
            )
            .unwrap();
        let start = Instant::now();
        let pid = loop {
            let rows = db.query(&format!(
                "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = {} AND l.mode = 'AccessExclusiveLock' AND l.granted \
                 AND l.relation = {}::regclass AND a.query LIKE '%pg_sleep%'",
                ql(&app),
                ql(table)
            ));
            if let Some(r) = rows.first() {
                break r[0].clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "lock holder never got its lock"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        LockHolder {
            child,
            db: db.clone(),
            app,
            pid,
        }
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        self.db.sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = {}",
            ql(&self.app)
        ));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database with tables `calm` (readable), `busy` (readable) and `secret` (not readable by
/// the returned role, which may read pg_stat_activity of others).
fn db_with_secret(hint: &str) -> (TestDb, String) {
    let db = fresh_db(hint);
    let role = unique_name("mailbk");
    db.sql(&format!(
        "CREATE TABLE calm (id int); INSERT INTO calm VALUES (1);
         CREATE TABLE busy (id int); INSERT INTO busy VALUES (2);
         CREATE TABLE secret (id int, pw text); INSERT INTO secret VALUES (1, 'hunter2');
         CREATE ROLE {r} LOGIN;
         GRANT pg_read_all_stats TO {r};
         GRANT CONNECT ON DATABASE {d} TO {r};
         GRANT USAGE ON SCHEMA public TO {r};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};
         REVOKE SELECT ON secret FROM {r};",
        r = qi(&role),
        d = qi(&db.name)
    ));
    (db, role)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn failed_groups_are_mailed_once_with_error_and_blocker() {
    let (db, role) = db_with_secret("mail_fail");
    let env = Env::new();
    let smtp = Smtp::start(&env, SmtpOpts::default());
    // The default engine. The schema-only dump it takes first (`schema = false`) cannot lock
    // `secret` (no privilege) nor `busy` (held), so every group of the database is dumped with
    // pg_dump (a fallback, with a warning); what is tested here holds either way.
    env.config_for(&db)
        .connection("user", &ts(&role))
        .backup("schema", "false")
        .backup("lock_wait_timeout", &ts("500ms"))
        .backup("lock_retries", "0")
        .extra(&email_table(smtp.port, "tls = \"none\""))
        .write(&env);
    let holder = LockHolder::lock(&db, "public.busy");
    let out = env.run(&["run"]);
    let holder_pid = holder.pid.clone();
    let holder_app = holder.app.clone();
    drop(holder);
    out.expect_code(1);

    let report = env.report();
    let groups = report_groups(&report, &db.name);
    assert_eq!(groups["public.busy"]["status"], "failed", "{report:#}");
    assert_eq!(groups["public.secret"]["status"], "failed", "{report:#}");
    assert_eq!(groups["public.calm"]["status"], "ok", "{report:#}");
    let blockers = &groups["public.busy"]["attempts"][0]["blockers"];
    assert!(
        blockers.as_array().is_some_and(|b| b
            .iter()
            .any(|s| s["pid"].as_i64() == holder_pid.parse().ok())),
        "the report names the blocker {holder_pid}: {report:#}"
    );

    let msg = smtp.only_message();
    assert_eq!(smtp.connections(), 1);
    assert_eq!(msg["mail_from"], FROM);
    assert_eq!(strings(&msg["rcpt_tos"]), TO.to_vec());
    let host = report["host"].as_str().unwrap();
    assert_eq!(
        subject(&msg),
        format!("[pg_groupdump] {host}: 2 of 3 groups failed")
    );
    let text = body(&msg);
    let path = report_path(&env);
    for want in [
        db.name.as_str(),
        "public.busy",
        "public.secret",
        // pg_dump's stderr with PostgreSQL's message
        "permission denied for table secret",
        // the lock: its timeout and the session that held it, with its query
        "could not lock the tables within 500ms",
        &format!("blocked by pid {holder_pid} user postgres"),
        &holder_app,
        "SELECT pg_sleep(120)",
        "attempts  1",
        // totals, the report and the host
        "3 in all: 1 ok, 2 failed",
        "written",
        "duration",
        path.to_str().unwrap(),
        host,
    ] {
        assert!(text.contains(want), "{want:?} not in the mail:\n{text}");
    }
    assert!(
        !text.contains("public.calm"),
        "the good group is no failure:\n{text}"
    );
    assert!(!text.contains("hunter2"));

    let n = &report["notification"];
    assert_eq!(n["sent"], true, "{report:#}");
    assert!(n["reply"].as_str().unwrap().starts_with("250"), "{n:#}");
    assert!(n["error"].is_null(), "{n:#}");
}

#[test]
fn all_ok_with_on_failure_sends_nothing() {
    let db = fresh_db("mail_quiet");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let env = Env::new();
    let smtp = Smtp::start(&env, SmtpOpts::default());
    env.config_for(&db)
        .extra(&email_table(smtp.port, "tls = \"none\"\non = \"failure\""))
        .write(&env);
    env.run(&["run"]).expect_code(0);
    assert!(smtp.messages().is_empty(), "{:#?}", smtp.messages());
    assert_eq!(
        smtp.connections(),
        0,
        "the mail server was not even contacted"
    );
    let report = env.report();
    assert!(report["notification"].is_null(), "{report:#}");
}

#[test]
fn on_always_mails_a_success_summary() {
    let db = fresh_db("mail_always");
    db.sql("CREATE TABLE a (id int); INSERT INTO a VALUES (1); CREATE TABLE b (id int);");
    let env = Env::new();
    let smtp = Smtp::start(&env, SmtpOpts::default());
    env.config_for(&db)
        .extra(&email_table(
            smtp.port,
            "tls = \"none\"\non = \"always\"\nsubject_prefix = \"[nightly]\"",
        ))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(0);
    let report = env.report();
    let total = report["groups"].as_array().unwrap().len();
    assert_eq!(total, 3, "_schema, a, b: {report:#}");
    let msg = smtp.only_message();
    let host = report["host"].as_str().unwrap();
    let subj = subject(&msg);
    assert!(
        subj.starts_with(&format!("[nightly] {host}: all 3 groups ok (")),
        "{subj}"
    );
    let text = body(&msg);
    for want in [
        "every dump succeeded",
        "3 in all: 3 ok, 0 failed",
        &format!("({} bytes)", report_bytes(&report)),
        report_path(&env).to_str().unwrap(),
        report["run_id"].as_str().unwrap(),
    ] {
        assert!(text.contains(want), "{want:?} not in the mail:\n{text}");
    }
    assert!(!text.contains("FAILED"), "{text}");
    assert_eq!(report["notification"]["sent"], true, "{report:#}");
    assert!(out.stderr.contains("mail sent"), "the log says so: {out:?}");
}

fn report_bytes(report: &Value) -> u64 {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["bytes"].as_u64())
        .sum()
}

#[test]
fn starttls_with_auth() {
    let db = fresh_db("mail_tls");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let env = Env::new();
    let certs = make_certs(&env.path().join("certs"));
    let smtp = Smtp::start(
        &env,
        SmtpOpts {
            tls: Some((certs.cert.clone(), certs.key.clone())),
            auth: Some(("pg_backup".into(), "s3cr3t pass".into())),
            ..SmtpOpts::default()
        },
    );
    let pw = password_file(&env, "smtp-password", "s3cr3t pass", 0o600);
    let table = email_table(
        smtp.port,
        &format!(
            "tls = \"starttls\"\nusername = \"pg_backup\"\npassword_file = {}\nca_file = {}\non = \"always\"",
            ts(pw.to_str().unwrap()),
            ts(certs.ca.to_str().unwrap())
        ),
    );
    env.config_for(&db).extra(&table).write(&env);

    let out = env.run(&["run"]);
    out.expect_code(0);
    assert!(!out.stderr.contains("s3cr3t"), "{out:?}");
    assert!(
        !out.stderr.contains("readable by group"),
        "no warning for a 0600 password file: {out:?}"
    );
    let msg = smtp.only_message();
    assert_eq!(msg["tls"], true, "{msg:#}");
    assert_eq!(msg["auth_user"], "pg_backup", "{msg:#}");
    assert!(body(&msg).contains("every dump succeeded"));
    assert_eq!(env.report()["notification"]["sent"], true);

    // email-test prints what the server answered
    let out = env.run(&["email-test"]);
    out.expect_code(0);
    assert!(out.stdout.contains("250"), "{out:?}");
    assert!(out.stdout.contains("queued as test-2"), "{out:?}");
    assert!(out.stdout.contains("encrypted"), "{out:?}");
    assert!(out.stdout.contains("235"), "AUTH reply: {out:?}");
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 2);
    assert!(
        subject(&msgs[1]).ends_with(": test message"),
        "{:#}",
        msgs[1]
    );
    assert_eq!(msgs[1]["auth_user"], "pg_backup");

    // the password from an environment variable
    let table = email_table(
        smtp.port,
        &format!(
            "tls = \"starttls\"\nusername = \"pg_backup\"\npassword_env = \"PGGD_TEST_SMTP_PW\"\nca_file = {}",
            ts(certs.ca.to_str().unwrap())
        ),
    );
    env.config_for(&db).extra(&table).write(&env);
    let out = run_with_env(
        &env,
        &["email-test"],
        &[("PGGD_TEST_SMTP_PW", "s3cr3t pass")],
    );
    out.expect_code(0);
    assert_eq!(smtp.messages().len(), 3);
    let out = run_with_env(&env, &["email-test"], &[]);
    out.expect_code(5);
    assert!(out.stderr.contains("PGGD_TEST_SMTP_PW"), "{out:?}");
    assert_eq!(smtp.messages().len(), 3);
}

#[test]
fn implicit_tls_with_auth() {
    let env = Env::new();
    let certs = make_certs(&env.path().join("certs"));
    let smtp = Smtp::start(
        &env,
        SmtpOpts {
            tls: Some((certs.cert.clone(), certs.key.clone())),
            implicit_tls: true,
            auth: Some(("pg_backup".into(), "pw".into())),
            ..SmtpOpts::default()
        },
    );
    let pw = password_file(&env, "smtp-password", "pw", 0o600);
    env.config_for(&db_named("unused"))
        .extra(&email_table(
            smtp.port,
            &format!(
                "tls = \"tls\"\nusername = \"pg_backup\"\npassword_file = {}\nca_file = {}",
                ts(pw.to_str().unwrap()),
                ts(certs.ca.to_str().unwrap())
            ),
        ))
        .write(&env);
    let out = env.run(&["email-test"]);
    out.expect_code(0);
    assert!(out.stdout.contains("250"), "{out:?}");
    let msg = smtp.only_message();
    assert_eq!(msg["tls"], true, "{msg:#}");
    assert_eq!(msg["auth_user"], "pg_backup", "{msg:#}");

    // STARTTLS against a server that speaks TLS at once fails, within the timeout
    env.config_for(&db_named("unused"))
        .extra(&email_table(
            smtp.port,
            &format!(
                "tls = \"starttls\"\ntimeout = \"3s\"\nca_file = {}",
                ts(certs.ca.to_str().unwrap())
            ),
        ))
        .write(&env);
    let start = Instant::now();
    env.run(&["email-test"]).expect_code(5);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn starttls_checks_certificate_and_password() {
    let db = fresh_db("mail_tls_bad");
    let env = Env::new();
    let certs = make_certs(&env.path().join("certs"));
    let smtp = Smtp::start(
        &env,
        SmtpOpts {
            tls: Some((certs.cert.clone(), certs.key.clone())),
            auth: Some(("pg_backup".into(), "right".into())),
            ..SmtpOpts::default()
        },
    );
    let good = password_file(&env, "good", "right", 0o600);
    let write = |extra: &str| {
        env.config_for(&db)
            .extra(&email_table(
                smtp.port,
                &format!("tls = \"starttls\"\nusername = \"pg_backup\"\n{extra}"),
            ))
            .write(&env)
    };

    // the test CA is not trusted unless named in ca_file
    write(&format!("password_file = {}", ts(good.to_str().unwrap())));
    let out = env.run(&["email-test"]);
    out.expect_code(5);
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "says why: {out:?}"
    );
    assert!(smtp.messages().is_empty());

    // ... or certificate checks are switched off, loudly
    write(&format!(
        "password_file = {}\ntls_insecure_skip_verify = true",
        ts(good.to_str().unwrap())
    ));
    let out = env.run(&["email-test"]);
    out.expect_code(0);
    assert!(
        out.stderr.contains("tls_insecure_skip_verify"),
        "warned: {out:?}"
    );
    assert_eq!(smtp.messages().len(), 1);

    // a wrong password: the server's refusal, never the password
    let bad = password_file(&env, "bad", "wrong-pw-123", 0o644);
    write(&format!(
        "password_file = {}\nca_file = {}",
        ts(bad.to_str().unwrap()),
        ts(certs.ca.to_str().unwrap())
    ));
    let out = env.run(&["email-test"]);
    out.expect_code(5);
    assert!(out.stderr.contains("535"), "{out:?}");
    assert!(
        out.stderr.contains("readable by group or others"),
        "a group/world-readable password file is warned about: {out:?}"
    );
    assert!(!out.stderr.contains("wrong-pw-123"), "{out:?}");
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn mail_server_down_backup_ok_exits_5() {
    let db = fresh_db("mail_down");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let env = Env::new();
    let port = closed_port();
    env.config_for(&db)
        .extra(&email_table(
            port,
            "tls = \"none\"\non = \"always\"\ntimeout = \"3s\"",
        ))
        .write(&env);
    let start = Instant::now();
    let out = env.run(&["run"]);
    let elapsed = start.elapsed();
    out.expect_code(5);
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert!(out.stderr.contains("could not send"), "{out:?}");
    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    let n = &report["notification"];
    assert_eq!(n["sent"], false, "{report:#}");
    assert!(n["reply"].is_null(), "{n:#}");
    let err = n["error"].as_str().expect("error");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    // the backup itself is there
    for g in report["groups"].as_array().unwrap() {
        checked_file(g);
    }
}

#[test]
fn silent_mail_server_times_out_with_the_backups_exit_code() {
    let (db, role) = db_with_secret("mail_silent");
    let env = Env::new();
    let smtp = Smtp::start(
        &env,
        SmtpOpts {
            silent: true,
            ..SmtpOpts::default()
        },
    );
    // The default engine. The schema-only dump it takes first (`schema = false`) cannot lock
    // `secret` (no privilege), so every group of the database is dumped with pg_dump (a
    // fallback, with a warning); what is tested here holds either way.
    env.config_for(&db)
        .connection("user", &ts(&role))
        .backup("schema", "false")
        .extra(&email_table(smtp.port, "tls = \"none\"\ntimeout = \"2s\""))
        .write(&env);
    let start = Instant::now();
    let out = env.run(&["run"]);
    let elapsed = start.elapsed();
    // a failed group: exit 1, whatever became of the mail
    out.expect_code(1);
    assert_eq!(smtp.connections(), 1, "it did try");
    assert!(
        elapsed >= Duration::from_secs(2),
        "it waited for the server: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "a 2s timeout bounds the wait: {elapsed:?}"
    );
    assert!(out.stderr.contains("could not send"), "{out:?}");
    let report = env.report();
    let n = &report["notification"];
    assert_eq!(n["sent"], false, "{report:#}");
    let err = n["error"].as_str().expect("error");
    assert!(err.contains("no answer within"), "{err}");
    assert!(err.contains("2s"), "{err}");
}

#[test]
fn run_that_cannot_start_is_mailed() {
    let db = fresh_db("mail_nostart");
    let env = Env::new();
    let smtp = Smtp::start(&env, SmtpOpts::default());
    let pg_port = closed_port();
    env.config_for(&db)
        .connection("port", &pg_port.to_string())
        .extra(&email_table(smtp.port, "tls = \"none\""))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(3);
    let msg = smtp.only_message();
    let subj = subject(&msg);
    assert!(subj.starts_with("[pg_groupdump] "), "{subj}");
    assert!(subj.ends_with(": the run could not start"), "{subj}");
    let text = body(&msg);
    assert!(text.contains("nothing was dumped"), "{text}");
    assert!(
        text.contains(&pg_port.to_string()),
        "names the server: {text}"
    );
    assert!(
        text.contains(env.config.to_str().unwrap()),
        "names the config: {text}"
    );
}

#[test]
fn run_locked_out_by_another_is_mailed() {
    use std::os::fd::AsRawFd;
    let db = fresh_db("mail_locked");
    db.sql("CREATE TABLE t (id int);");
    let env = Env::new();
    let smtp = Smtp::start(&env, SmtpOpts::default());
    env.config_for(&db)
        .extra(&email_table(smtp.port, "tls = \"none\""))
        .write(&env);
    fs::create_dir_all(&env.dir).unwrap();
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(env.dir.join(".pg_groupdump.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own, released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    let out = env.run(&["run"]);
    drop(lock);
    out.expect_code(4);
    let msg = smtp.only_message();
    assert!(subject(&msg).ends_with(": the run could not start"));
    assert!(body(&msg).contains("holds the lock"), "{}", body(&msg));
}

#[test]
fn email_test_without_email_table_is_a_usage_error() {
    let env = Env::new();
    Config::offline(&env, "mail_none").write(&env);
    let out = env.run(&["email-test"]);
    out.expect_code(2);
    assert!(out.stderr.contains("[email]"), "{out:?}");
}

#[test]
fn email_config_errors_name_the_key() {
    let env = Env::new();
    for (extra, key) in [
        ("port = 0", "email.port"),
        ("tls = \"ssl\"", "email.tls"),
        ("on = \"sometimes\"", "email.on"),
        ("timeout = \"forever\"", "email.timeout"),
        ("username = \"u\"", "email.username"),
        ("password = \"inline\"", "password"),
    ] {
        Config::offline(&env, "mail_cfg")
            .extra(&format!(
                "[email]\nhost = \"127.0.0.1\"\nfrom = {}\nto = {}\n{extra}\n",
                ts(FROM),
                ta(&TO)
            ))
            .write(&env);
        config_error(&env, &[key]);
    }
    Config::offline(&env, "mail_cfg")
        .extra("[email]\nhost = \"127.0.0.1\"\nfrom = \"a@example.com\"\nto = []\n")
        .write(&env);
    config_error(&env, &["email.to"]);
    assert!(env.dumps().is_empty());
}

#[test]
fn s3_a_failed_upload_is_mailed_with_the_store_error() {
    let s3 = crate::util::s3::S3::start();
    let db = fresh_db("mail_s3");
    db.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g;");
    let env = Env::new();
    let smtp = Smtp::start(&env, SmtpOpts::default());
    // A file where the database's "directory" of keys would go: the bucket can be listed and
    // the report uploaded, but no object can be completed below it.
    let blocker = s3.object("m", Path::new(&encode_component(&db.name)));
    fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    fs::write(&blocker, b"in the way").unwrap();
    env.config_for(&db)
        .backup("schema", "false")
        .extra(&format!(
            "[[group]]\nname = \"g\"\ndatabase = {}\ntables = [\"public.t\"]",
            ts(&db.name)
        ))
        .extra(&email_table(smtp.port, "tls = \"none\""))
        .extra(&s3.storage(&env, "m", None, ""))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(1);
    let report = env.report();
    let g = report_group(&report, "g");
    assert_eq!(g["status"], "failed", "{g:#}");
    let error = g["error"].as_str().unwrap();
    assert!(
        error.contains("upload of") && error.contains("s3://backups/m"),
        "{error}"
    );
    // The local file is kept, and is the dump the report describes.
    let file = PathBuf::from(g["file"].as_str().unwrap());
    assert_eq!(sha256_hex(&file), g["sha256"].as_str().unwrap());
    let text = body(&smtp.only_message());
    for want in ["upload of", "s3://backups/m", "the local file"] {
        assert!(text.contains(want), "{want:?} not in the mail:\n{text}");
    }
    assert!(!text.contains(crate::util::s3::SECRET_KEY));
}
