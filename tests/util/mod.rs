//! Test harness: one real PostgreSQL server per test process, a fresh database per test,
//! a temporary workspace per test, and helpers to run `pg_groupdump` and inspect its output.
//! The version matrix (tests/it/matrix.rs) adds one server per PostgreSQL major version of
//! `PG_MATRIX` ([`server_of`]), started on first use too.

#![allow(dead_code)]

pub mod faults;
pub mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one invocation of the binary under test may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Server {
    pub bindir: PathBuf,
    /// The major version of its binaries (and so of the server).
    pub major: u32,
    pub port: u16,
    /// Temp dir holding the data directory, the unix socket and the server log.
    pub root: PathBuf,
    pub datadir: PathBuf,
    /// Run initdb / pg_ctl through `runuser -u postgres --` (we are root).
    as_postgres: bool,
    /// The server options (`pg_ctl -o`), for a restart.
    opts: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The shared server, started on first use and stopped at process exit.
pub fn server() -> &'static Server {
    SERVER.get_or_init(start_server)
}

fn pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").expect("no /usr/lib/postgresql; set PG_BINDIR")
    {
        let entry = entry.unwrap();
        let Ok(version) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        let better = match &best {
            None => true,
            Some((v, _)) => version > *v,
        };
        if better && bin.join("initdb").exists() {
            best = Some((version, bin));
        }
    }
    best.expect("no /usr/lib/postgresql/*/bin with initdb; set PG_BINDIR")
        .1
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The major version of `bindir/prog` (`prog --version` prints "prog (PostgreSQL) 15.18 …").
pub fn bin_major(bindir: &Path, prog: &str) -> u32 {
    let path = bindir.join(prog);
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} --version printed {text:?} ({})",
                path.display(),
                out.status
            )
        })
}

// ---------------------------------------------------------------------------------------------
// The version matrix: a server per PostgreSQL major version
// ---------------------------------------------------------------------------------------------

/// One version of `PG_MATRIX`: its binaries, and its server once started.
struct MatrixVersion {
    bindir: PathBuf,
    server: OnceLock<Server>,
}

static MATRIX: OnceLock<BTreeMap<u32, MatrixVersion>> = OnceLock::new();

/// `PG_MATRIX`, parsed: `"14=/…/bin 15=/usr/lib/postgresql/15/bin …"` (scripts/test.sh exports
/// it, see scripts/lib/pgversions.sh).
fn matrix() -> &'static BTreeMap<u32, MatrixVersion> {
    MATRIX.get_or_init(|| {
        let value = std::env::var("PG_MATRIX").unwrap_or_default();
        let mut versions = BTreeMap::new();
        for word in value.split_whitespace() {
            let (major, bindir) = word
                .split_once('=')
                .and_then(|(m, d)| Some((m.parse::<u32>().ok()?, d)))
                .unwrap_or_else(|| panic!("PG_MATRIX={value:?}: {word:?} is not MAJOR=BINDIR"));
            versions.insert(
                major,
                MatrixVersion {
                    bindir: PathBuf::from(bindir),
                    server: OnceLock::new(),
                },
            );
        }
        versions
    })
}

fn matrix_version(major: u32) -> &'static MatrixVersion {
    matrix().get(&major).unwrap_or_else(|| {
        panic!(
            "PostgreSQL {major} is not in PG_MATRIX ({:?}): the version-matrix tests need \
             PostgreSQL 14 to 18; run scripts/test.sh (it fetches them, see \
             scripts/lib/pgversions.sh) or export PG_MATRIX=\"14=/path/to/14/bin 15=… 18=…\"",
            std::env::var("PG_MATRIX").unwrap_or_default()
        )
    })
}

/// The bin directory of PostgreSQL `major` (server and client programs) in `PG_MATRIX`;
/// panics if it has none, or if its programs are another version.
pub fn matrix_bindir(major: u32) -> &'static Path {
    let v = matrix_version(major);
    let found = bin_major(&v.bindir, "pg_dump");
    assert_eq!(
        found,
        major,
        "PG_MATRIX gives {} for PostgreSQL {major}, but its pg_dump is {found}",
        v.bindir.display()
    );
    &v.bindir
}

/// The server of PostgreSQL `major` from `PG_MATRIX`, started on first use and stopped at
/// process exit (like [`server`], which it is when `PG_BINDIR` is that version's bin dir).
/// Panics if `PG_MATRIX` lacks the version.
pub fn server_of(major: u32) -> &'static Server {
    let bindir = matrix_bindir(major);
    let v = matrix_version(major);
    if fs::canonicalize(bindir).ok() == fs::canonicalize(pg_bindir()).ok() {
        return server();
    }
    v.server.get_or_init(|| {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe {
                libc::atexit(stop_matrix_servers);
            }
        });
        start_cluster(bindir.to_path_buf(), &format!("pg_groupdump-pg{major}-"))
    })
}

extern "C" fn stop_matrix_servers() {
    for v in MATRIX.get().into_iter().flat_map(|m| m.values()) {
        if let Some(s) = v.server.get() {
            let _ = s.stop("immediate");
            let _ = fs::remove_dir_all(&s.root);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What a test needs from the machine
// ---------------------------------------------------------------------------------------------

/// Panics unless `program` runs (`program version_arg` exits 0): a test that needs a tool
/// fails without it rather than passing untested. scripts/test.sh installs every tool a test
/// requires, from the Debian package `package`.
pub fn require_tool(program: &str, version_arg: &str, package: &str) {
    let ran = Command::new(program)
        .arg(version_arg)
        .stdin(Stdio::null())
        .output();
    match ran {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test needs {program}, but `{program} {version_arg}` failed ({}): {}; \
             install the Debian package {package} (scripts/test.sh does)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "this test needs {program}, which cannot be run ({e}); install the Debian package \
             {package} (scripts/test.sh does)"
        ),
    }
}

/// `openssl ARGS` in `dir` (for test certificates); panics unless it succeeds.
pub fn openssl(args: &[&str], dir: &Path) {
    require_tool("openssl", "version", "openssl");
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `cond` (every 20 ms) until it holds; panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Panics unless the tests run as root (`why` says what for): CI and scripts/test.sh run as
/// root; elsewhere, leave the test out by name (`-- --skip NAME`).
pub fn require_root(why: &str) {
    assert!(
        is_root(),
        "this test must run as root ({why}); run it as root, or leave it out with --skip"
    );
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "no postgres user to run the server as"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

impl Server {
    /// A command running a server binary, as the postgres user if we are root.
    fn server_cmd(&self, prog: &str) -> Command {
        server_cmd(&self.bindir, self.as_postgres, prog)
    }

    /// A client program from the server's bin dir (psql, pg_dump, pg_restore...).
    pub fn bin(&self, prog: &str) -> PathBuf {
        self.bindir.join(prog)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }
}

fn server_cmd(bindir: &Path, as_postgres: bool, prog: &str) -> Command {
    let prog = bindir.join(prog);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args([OsStr::new("-u"), OsStr::new("postgres"), OsStr::new("--")]);
        c.arg(prog);
        c
    } else {
        Command::new(prog)
    }
}

fn check(what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_server() -> Server {
    let server = start_cluster(pg_bindir(), "pg_groupdump-it-");
    // SAFETY: registering a plain extern "C" function with no captured state.
    unsafe {
        libc::atexit(stop_server);
    }
    server
}

/// Roles that are members of this role must log in with a password over TCP (scram-sha-256);
/// every other role is trusted. Created (NOLOGIN) on every server the harness starts.
pub const PASSWORD_ROLE: &str = "pwauth";

/// initdb (trust, plus the [`PASSWORD_ROLE`] line in pg_hba.conf) and start a server of the
/// binaries in `bindir` on a free port, in a new temp dir named `prefix…`.
fn start_cluster(bindir: PathBuf, prefix: &str) -> Server {
    let major = bin_major(&bindir, "postgres");
    let as_postgres = is_root();
    let root = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
        .keep();
    if as_postgres {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown server dir");
    }
    let datadir = root.join("data");
    let out = server_cmd(&bindir, as_postgres, "initdb")
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .arg("--locale=C")
        .arg("-D")
        .arg(&datadir)
        .output()
        .expect("run initdb");
    check("initdb", out);
    // First match wins: members of PASSWORD_ROLE need a password, everyone else is trusted.
    let hba = datadir.join("pg_hba.conf");
    let trust = fs::read_to_string(&hba).expect("read pg_hba.conf");
    fs::write(
        &hba,
        format!("host all +{PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n{trust}"),
    )
    .expect("write pg_hba.conf");

    // A port can be taken between our probe and the server's bind: retry a few times.
    let mut last_err = String::new();
    for _ in 0..5 {
        let port = free_port();
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
             -c fsync=off -c max_connections=200 -c full_page_writes=off",
            root.display()
        );
        let out = server_cmd(&bindir, as_postgres, "pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&datadir)
            .arg("-l")
            .arg(root.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        if out.status.success() {
            let server = Server {
                bindir,
                major,
                port,
                root,
                datadir,
                as_postgres,
                opts,
            };
            server.psql(
                "postgres",
                &format!("CREATE ROLE {} NOLOGIN", qi(PASSWORD_ROLE)),
            );
            return server;
        }
        last_err = format!(
            "{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(root.join("server.log")).unwrap_or_default()
        );
    }
    panic!("could not start PostgreSQL: {last_err}");
}

impl Server {
    /// `pg_ctl stop -m MODE` (waits).
    fn stop(&self, mode: &str) -> std::process::Output {
        self.server_cmd("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.datadir)
            .args(["-m", mode, "-w", "-t", "30"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl stop")
    }

    /// psql on this server, as postgres over TCP.
    fn psql_cmd(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin("psql"));
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d"])
            .arg(conninfo_db(db));
        clean_pg_env(&mut c);
        c
    }

    /// Run SQL in `db` of this server; panic with psql's stderr on error.
    pub fn psql(&self, db: &str, sql: &str) {
        let out = run_with_stdin(self.psql_cmd(db), sql);
        assert!(
            out.status.success(),
            "psql -p {} -d {db} failed:\n--- sql ---\n{sql}\n--- stderr ---\n{}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One query in `db` of this server, as rows of text fields.
    pub fn query(&self, db: &str, sql: &str) -> Vec<Vec<String>> {
        query_rows_with(self.psql_cmd(db), db, sql)
    }
}

/// One psql session kept open for many small queries (polling without a new connection, and
/// a new process, each time). Values must not contain newlines.
pub struct SqlSession {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Server {
    /// A [`SqlSession`] on `db` of this server, as postgres.
    pub fn session(&self, db: &str) -> SqlSession {
        let mut c = self.psql_cmd(db);
        c.args(["-A", "-t", "-F", "\u{1f}"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("spawn psql");
        SqlSession {
            stdin: child.stdin.take().unwrap(),
            stdout: std::io::BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }
}

impl SqlSession {
    /// Runs one statement; returns its rows (fields split on the unit separator).
    pub fn query(&mut self, sql: &str) -> Vec<Vec<String>> {
        use std::io::BufRead;
        const END: &str = "\u{1e}end-of-result\u{1e}";
        write!(self.stdin, "{sql};\n\\echo {END}\n").expect("write to psql");
        self.stdin.flush().expect("flush psql");
        let mut rows = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read psql");
            assert!(
                n > 0,
                "psql session ended (see its stderr above) after: {sql}"
            );
            let line = line.trim_end_matches('\n');
            if line == END {
                return rows;
            }
            if !line.is_empty() {
                rows.push(line.split('\u{1f}').map(str::to_owned).collect());
            }
        }
    }

    /// First column of the first row.
    pub fn query_one(&mut self, sql: &str) -> String {
        let rows = self.query(sql);
        assert!(!rows.is_empty(), "no rows from {sql}");
        rows[0][0].clone()
    }
}

impl Drop for SqlSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

extern "C" fn stop_server() {
    if let Some(s) = SERVER.get() {
        let _ = s.stop("immediate");
        let _ = fs::remove_dir_all(&s.root);
    }
}

/// A server of one test's own (same binaries, own temp dir and port), for faults that would
/// disturb the tests sharing [`server`]. Stopped and removed on drop.
pub struct PrivateServer(Server);

/// Starts a [`PrivateServer`].
pub fn private_server() -> PrivateServer {
    PrivateServer(start_cluster(pg_bindir(), "pg_groupdump-priv-"))
}

impl std::ops::Deref for PrivateServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl PrivateServer {
    /// `pg_ctl restart -m fast`: sessions are terminated, the server comes back on the same
    /// port. Returns once it accepts connections again.
    pub fn restart(&self) {
        let out = self
            .server_cmd("pg_ctl")
            .arg("restart")
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-m", "fast", "-w", "-t", "60", "-o", &self.opts])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl restart");
        check("pg_ctl restart", out);
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A process-unique lowercase identifier starting with `hint`.
pub fn unique_name(hint: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let hint: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!("{hint}_{}_{n}", std::process::id())
}

/// Quote an SQL identifier.
pub fn qi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn ql(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"schema"."table"` for SQL.
pub fn qt(schema: &str, table: &str) -> String {
    format!("{}.{}", qi(schema), qi(table))
}

/// A database of a test, on the shared [`server`] or on a server of the version matrix.
#[derive(Clone, Debug)]
pub struct TestDb {
    pub name: String,
    /// Its server; None: the shared one (not started for a database that is only named).
    on: Option<&'static Server>,
}

/// A new, empty, uniquely named database.
pub fn fresh_db(hint: &str) -> TestDb {
    server().fresh_db(hint)
}

/// A new, empty database with exactly this name (make it unique!).
pub fn create_db_named(name: &str) -> TestDb {
    server().create_db_named(name)
}

fn psql_cmd(db: &str) -> Command {
    server().psql_cmd(db)
}

/// `psql -c SQL` on database `db` of the shared server, output discarded, not yet started:
/// for sessions a test runs beside pg_groupdump (a lock holder, a DDL statement) and waits
/// for or kills itself.
pub fn psql_command(db: &str, sql: &str) -> Command {
    server().psql_command(db, sql)
}

impl Server {
    /// A new, empty, uniquely named database on this server.
    pub fn fresh_db(&'static self, hint: &str) -> TestDb {
        self.create_db_named(&unique_name(hint))
    }

    /// A new, empty database with exactly this name on this server (make it unique!).
    pub fn create_db_named(&'static self, name: &str) -> TestDb {
        self.psql("postgres", &format!("CREATE DATABASE {}", qi(name)));
        self.db_named(name)
    }

    /// A handle for an existing database of this server.
    pub fn db_named(&'static self, name: &str) -> TestDb {
        TestDb {
            name: name.to_owned(),
            on: Some(self),
        }
    }

    /// A new database copied from the database `template` of this server (which nobody may be
    /// connected to).
    pub fn copy_of(&'static self, template: &str, hint: &str) -> TestDb {
        let name = unique_name(hint);
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {} TEMPLATE {}", qi(&name), qi(template)),
        );
        self.db_named(&name)
    }

    /// Whether this server has a database of this name.
    pub fn database_exists(&self, name: &str) -> bool {
        !self
            .query(
                "postgres",
                &format!("SELECT 1 FROM pg_database WHERE datname = {}", ql(name)),
            )
            .is_empty()
    }

    /// `psql -c SQL` on database `db` of this server (see [`psql_command`]).
    pub fn psql_command(&self, db: &str, sql: &str) -> Command {
        let mut c = self.client(&self.bindir, "psql");
        c.args(["-X", "-q", "-d"])
            .arg(conninfo_db(db))
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Client program `prog` of the PostgreSQL in `bindir` (this server's own, or another
    /// version's), connecting to this server as postgres over TCP (`-h -p -U` given; add
    /// `-d`).
    pub fn client(&self, bindir: &Path, prog: &str) -> Command {
        let mut c = Command::new(bindir.join(prog));
        c.args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string());
        clean_pg_env(&mut c);
        c
    }
}

/// `dbname='...'`: a database name for `-d` that is never taken for a connection string.
pub fn conninfo_db(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Remove libpq environment variables that could redirect a client.
pub fn clean_pg_env(c: &mut Command) {
    for v in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGDATABASE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGSSLMODE",
        "PGOPTIONS",
        "PGTZ",
        "PGCLIENTENCODING",
    ] {
        c.env_remove(v);
    }
}

fn run_with_stdin(mut c: Command, input: &str) -> std::process::Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().unwrap();
    out
}

/// Run SQL (any number of statements) in `db`; panic with psql's stderr on error.
pub fn psql(db: &str, sql: &str) {
    let out = run_with_stdin(psql_cmd(db), sql);
    assert!(
        out.status.success(),
        "psql -d {db} failed:\n--- sql ---\n{sql}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestDb {
    /// A database name for configurations refused before any connection: no server is
    /// started for it (its [`TestDb::server`] is the shared one).
    pub fn offline(name: &str) -> TestDb {
        TestDb {
            name: name.to_owned(),
            on: None,
        }
    }

    /// The server the database is on.
    pub fn server(&self) -> &'static Server {
        self.on.unwrap_or_else(server)
    }

    pub fn sql(&self, sql: &str) {
        self.server().psql(&self.name, sql)
    }

    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        self.server().query(&self.name, sql)
    }

    /// First column of the first row.
    pub fn query_one(&self, sql: &str) -> String {
        let rows = self.query(sql);
        assert!(!rows.is_empty(), "no rows from {sql}");
        rows[0][0].clone()
    }

    /// Another fresh database on the same server (e.g. a restore target).
    pub fn another(&self, hint: &str) -> TestDb {
        self.server().fresh_db(hint)
    }

    /// Checksum and count of all rows of a table.
    pub fn table_digest(&self, schema: &str, table: &str) -> (String, String) {
        let row = &self.query(&format!(
            "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), 'empty'), count(*) \
             FROM {} t",
            qt(schema, table)
        ))[0];
        (row[0].clone(), row[1].clone())
    }

    /// (schema, table) of every ordinary or partitioned user table.
    pub fn user_tables(&self) -> BTreeSet<(String, String)> {
        self.query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%'",
        )
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
    }

    /// oid of a table.
    pub fn table_oid(&self, schema: &str, table: &str) -> u32 {
        self.query_one(&format!("SELECT {}::regclass::oid", ql(&qt(schema, table))))
            .parse()
            .unwrap()
    }

    /// Create the given (non-public) schemas.
    pub fn create_schemas<'a>(&self, schemas: impl IntoIterator<Item = &'a str>) {
        let mut sql = String::new();
        for s in schemas {
            if s != "public" {
                sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};\n", qi(s)));
            }
        }
        if !sql.is_empty() {
            self.sql(&sql);
        }
    }
}

/// Run one query, returning rows of text fields (unit/record separator characters on the
/// wire, so values with newlines survive).
fn query_rows_with(mut c: Command, db: &str, sql: &str) -> Vec<Vec<String>> {
    c.args(["-A", "-t", "-F", "\u{1f}", "-R", "\u{1e}"]);
    let out = run_with_stdin(c, sql);
    assert!(
        out.status.success(),
        "psql -d {db} query failed:\n--- sql ---\n{sql}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("psql output is UTF-8");
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if text.is_empty() {
        return Vec::new();
    }
    text.split('\u{1e}')
        .map(|r| r.split('\u{1f}').map(str::to_owned).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Workspace and the binary under test
// ---------------------------------------------------------------------------------------------

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n--- stderr ---\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panic with both streams unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A per-test workspace: a temp dir with a config file and a backup dir.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("pg_groupdump-ws-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().join("backup");
        let config = tmp.path().join("groups.toml");
        Env { tmp, dir, config }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn write_config(&self, toml: &str) {
        fs::write(&self.config, toml).expect("write config");
    }

    /// Default config for `db` (see [`Config`]) plus `extra`; written to the config file.
    pub fn cfg(&self, db: &TestDb, extra: &str) {
        self.write_config(&self.config_for(db).extra(extra).toml());
    }

    /// Default config for `db`, on its server (see [`Config::on`]).
    pub fn config_for(&self, db: &TestDb) -> Config {
        Config::on(self, db.server(), &db.name)
    }

    /// Run `pg_groupdump -c <config> <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full: Vec<&OsStr> = vec![OsStr::new("-c"), self.config.as_os_str()];
        full.extend(args.iter().map(OsStr::new));
        run_bin(&full, self.path())
    }

    pub fn plan_json(&self) -> Value {
        let out = self.run(&["plan", "--json"]);
        out.expect_code(0);
        out.json()
    }

    /// Every file (not dir) under the backup dir, relative to it.
    pub fn files(&self) -> Vec<PathBuf> {
        list_files(&self.dir)
    }

    /// Every `*.dump` file under the backup dir (absolute).
    pub fn dumps(&self) -> Vec<PathBuf> {
        self.files()
            .into_iter()
            .filter(|p| p.extension() == Some(OsStr::new("dump")))
            .map(|p| self.dir.join(p))
            .collect()
    }

    /// Assert that no `.ing` file is left anywhere under the backup dir.
    pub fn assert_no_ing(&self) {
        let ing: Vec<_> = self
            .files()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".ing"))
            .collect();
        assert!(ing.is_empty(), "leftover .ing files: {ing:?}");
    }

    /// The report written at the default location `<dir>/reports/<run_id>.json` (exactly one).
    pub fn report(&self) -> Value {
        let reports = self.dir.join("reports");
        let entries: Vec<PathBuf> = fs::read_dir(&reports)
            .unwrap_or_else(|e| panic!("no reports dir {}: {e}", reports.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension() == Some(OsStr::new("json")))
            .collect();
        assert_eq!(
            entries.len(),
            1,
            "expected one report in {reports:?}: {entries:?}"
        );
        let report = read_json(&entries[0]);
        let run_id = report["run_id"].as_str().expect("run_id is a string");
        assert_eq!(
            entries[0].file_name().unwrap().to_string_lossy(),
            format!("{run_id}.json"),
            "report file name is <run_id>.json"
        );
        report
    }
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", path.display()))
}

pub fn list_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !root.exists() {
        return out;
    }
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.expect("walk");
        if !entry.file_type().is_dir() {
            out.push(entry.path().strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// Run the binary under test with `args` in `cwd`, with a timeout.
pub fn run_bin<S: AsRef<OsStr>>(args: &[S], cwd: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pg_groupdump"));
    c.args(args).current_dir(cwd);
    clean_pg_env(&mut c);
    c.env("PGCONNECT_TIMEOUT", "10");
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn pg_groupdump");
    wait_timeout(child, RUN_TIMEOUT)
}

fn wait_timeout(mut child: Child, timeout: Duration) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let so = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
            let se = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("pg_groupdump timed out after {timeout:?}\nstdout: {so}\nstderr: {se}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    let code = match status.code() {
        Some(c) => c,
        None => {
            panic!("pg_groupdump killed by a signal ({status})\nstdout: {stdout}\nstderr: {stderr}")
        }
    };
    Output {
        code,
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// A TOML basic string.
pub fn ts(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings.
pub fn ta(items: &[&str]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| ts(s)).collect::<Vec<_>>().join(", ")
    )
}

/// Config builder. Defaults: `[connection]` host 127.0.0.1, the test server's port, user
/// postgres; `[backup]` dir = the workspace backup dir, `databases = [db]`, `globals = false`,
/// `pg_dump` = the test server's pg_dump (for a server of the version matrix also its
/// `pg_restore`, see [`Config::on`]). Values are raw TOML.
pub struct Config {
    connection: BTreeMap<String, String>,
    backup: BTreeMap<String, String>,
    extra: String,
}

impl Config {
    pub fn new(env: &Env, db: &str) -> Config {
        Config::on(env, server(), db)
    }

    /// The config for database `db` of server `s`: its port and its pg_dump; for a server
    /// other than the shared [`server`] (one of [`server_of`]), its pg_restore too, so that
    /// `verify` and `restore` use that version's.
    pub fn on(env: &Env, s: &Server, db: &str) -> Config {
        let mut connection = BTreeMap::new();
        connection.insert("host".into(), ts("127.0.0.1"));
        connection.insert("port".into(), s.port.to_string());
        connection.insert("user".into(), ts("postgres"));
        let mut backup = BTreeMap::new();
        backup.insert("dir".into(), ts(env.dir.to_str().unwrap()));
        backup.insert("databases".into(), ta(&[db]));
        backup.insert("globals".into(), "false".into());
        backup.insert("pg_dump".into(), ts(s.bin("pg_dump").to_str().unwrap()));
        let config = Config {
            connection,
            backup,
            extra: String::new(),
        };
        if SERVER.get().is_some_and(|shared| std::ptr::eq(shared, s)) {
            config
        } else {
            config.clients(&s.bindir)
        }
    }

    /// `pg_dump` and `pg_restore` from `bindir` (e.g. a newer PostgreSQL's than the server's).
    pub fn clients(self, bindir: &Path) -> Self {
        self.backup("pg_dump", &ts(bindir.join("pg_dump").to_str().unwrap()))
            .backup(
                "pg_restore",
                &ts(bindir.join("pg_restore").to_str().unwrap()),
            )
    }

    /// Like [`Config::new`], without the test server (port 5432, `pg_dump` from PATH): for
    /// configuration checks that connect to nothing.
    pub fn offline(env: &Env, db: &str) -> Config {
        let mut connection = BTreeMap::new();
        connection.insert("host".into(), ts("127.0.0.1"));
        connection.insert("port".into(), "5432".into());
        connection.insert("user".into(), ts("postgres"));
        let mut backup = BTreeMap::new();
        backup.insert("dir".into(), ts(env.dir.to_str().unwrap()));
        backup.insert("databases".into(), ta(&[db]));
        backup.insert("globals".into(), "false".into());
        Config {
            connection,
            backup,
            extra: String::new(),
        }
    }

    pub fn connection(mut self, key: &str, raw: &str) -> Self {
        self.connection.insert(key.into(), raw.into());
        self
    }

    pub fn backup(mut self, key: &str, raw: &str) -> Self {
        self.backup.insert(key.into(), raw.into());
        self
    }

    pub fn without_backup(mut self, key: &str) -> Self {
        self.backup.remove(key);
        self
    }

    /// Appended after `[backup]`: `[[group]]` / `[ungrouped]` tables.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub fn toml(&self) -> String {
        let mut out = String::from("[connection]\n");
        for (k, v) in &self.connection {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str("\n[backup]\n");
        for (k, v) in &self.backup {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str(&self.extra);
        out
    }

    pub fn write(&self, env: &Env) {
        env.write_config(&self.toml());
    }
}

/// `pg_groupdump::config::load` of `env`'s configuration file, in this process, must fail
/// naming the file and every one of `needles`; returns the error's text
/// (`<file>: <key>: <message>`, as the binary prints it before it exits 2).
pub fn config_error(env: &Env, needles: &[&str]) -> String {
    let text = match pg_groupdump::config::load(&env.config) {
        Ok(_) => panic!(
            "the configuration was accepted:\n{}",
            fs::read_to_string(&env.config).unwrap_or_default()
        ),
        Err(e) => e.to_string(),
    };
    let file = env.config.to_str().unwrap();
    assert!(
        text.contains(file),
        "the error does not name the config file {file}: {text}"
    );
    for n in needles {
        assert!(text.contains(n), "the error does not contain {n:?}: {text}");
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Names, per the naming rules of src/store.rs
// ---------------------------------------------------------------------------------------------

/// One part of a display name: SQL-quoted if it contains '.' or '"'.
pub fn display_part(part: &str) -> String {
    if part.contains('.') || part.contains('"') {
        qi(part)
    } else {
        part.to_owned()
    }
}

/// The "schema.table" display name.
pub fn display(schema: &str, table: &str) -> String {
    format!("{}.{}", display_part(schema), display_part(table))
}

/// Path component encoding.
pub fn encode_component(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        let keep = if c.is_ascii() {
            c.is_ascii_alphanumeric() || "._+=@,-".contains(c)
        } else {
            !(c.is_whitespace() || c.is_control())
        };
        let leading_special = i == 0 && (c == '.' || c == '_');
        if keep && !leading_special {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// `<dir>/<db>/<group>/<db>.<group>.<ts>.dump`
pub fn expected_dump_path(dir: &Path, db: &str, group: &str, ts: &str) -> PathBuf {
    let (d, g) = (encode_component(db), encode_component(group));
    dir.join(&d).join(&g).join(format!("{d}.{g}.{ts}.dump"))
}

// ---------------------------------------------------------------------------------------------
// Dump inspection and restore
// ---------------------------------------------------------------------------------------------

/// One line of `pg_restore -l`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    pub desc: String,
    pub tableoid: u32,
    pub oid: u32,
    /// "schema name owner" as printed (names are not quoted and may contain spaces).
    pub rest: String,
}

const TOC_DESCS: &[&str] = &[
    "TABLE DATA",
    "TABLE ATTACH",
    "TABLE",
    "SEQUENCE SET",
    "SEQUENCE OWNED BY",
    "SEQUENCE",
    "FK CONSTRAINT",
    "CHECK CONSTRAINT",
    "CONSTRAINT",
    "INDEX ATTACH",
    "INDEX",
    "DEFAULT ACL",
    "DEFAULT",
    "SCHEMA",
    "COMMENT",
    "ACL",
    "TYPE",
    "FUNCTION",
    "VIEW",
    "MATERIALIZED VIEW DATA",
    "MATERIALIZED VIEW",
    "EXTENSION",
    "ENCODING",
    "STDSTRINGS",
    "SEARCHPATH",
    "DATABASE PROPERTIES",
    "DATABASE",
    "TRIGGER",
    "RULE",
    "POLICY",
    "ROW SECURITY",
];

/// `pg_restore -l FILE`, parsed (comment lines dropped).
pub fn toc(file: &Path) -> Vec<TocEntry> {
    toc_with(&server().bin("pg_restore"), file)
}

/// The text of `pg_restore -l FILE` by the given pg_restore; panics unless it succeeds.
pub fn pg_restore_list(pg_restore: &Path, file: &Path) -> String {
    let out = Command::new(pg_restore)
        .arg("-l")
        .arg(file)
        .output()
        .expect("run pg_restore -l");
    assert!(
        out.status.success(),
        "pg_restore -l {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pg_restore -l FILE` by the given pg_restore (one that reads the archive's version),
/// parsed.
pub fn toc_with(pg_restore: &Path, file: &Path) -> Vec<TocEntry> {
    let text = pg_restore_list(pg_restore, file);
    let mut entries = Vec::new();
    for line in text.lines() {
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        // "ID; TABLEOID OID DESC SCHEMA NAME OWNER"
        let (_, rest) = line.split_once("; ").expect("toc line");
        let mut it = rest.splitn(3, ' ');
        let tableoid = it.next().unwrap().parse().expect("tableoid");
        let oid = it.next().unwrap().parse().expect("oid");
        let tail = it.next().unwrap_or("");
        let desc = TOC_DESCS
            .iter()
            .find(|d| tail.starts_with(&format!("{d} ")))
            .map(|d| d.to_string())
            .unwrap_or_else(|| tail.split(' ').next().unwrap().to_owned());
        let rest = tail[desc.len()..].trim_start().to_owned();
        entries.push(TocEntry {
            desc,
            tableoid,
            oid,
            rest,
        });
    }
    entries
}

/// Assert that the dump's TABLE entries are exactly `tables` (matched by oid in `db`), and its
/// TABLE DATA entries exactly those of them that hold data (ordinary tables, not partitioned
/// ones). With `only_tables`, the dump must hold nothing but TABLE, TABLE DATA and (for
/// partitions) TABLE ATTACH entries.
pub fn assert_dump_tables(file: &Path, db: &TestDb, tables: &[(&str, &str)], only_tables: bool) {
    let entries = toc(file);
    let entry_oids = |desc: &str| -> BTreeSet<u32> {
        entries
            .iter()
            .filter(|e| e.desc == desc)
            .map(|e| e.oid)
            .collect()
    };
    let mut want = BTreeSet::new();
    let mut want_data = BTreeSet::new();
    for (s, t) in tables {
        let oid = db.table_oid(s, t);
        want.insert(oid);
        if db.query_one(&format!("SELECT relkind FROM pg_class WHERE oid = {oid}")) == "r" {
            want_data.insert(oid);
        }
    }
    assert_eq!(
        entry_oids("TABLE"),
        want,
        "TABLE entries of {} (by oid) are not exactly {tables:?}; toc: {entries:#?}",
        file.display()
    );
    assert_eq!(
        entry_oids("TABLE DATA"),
        want_data,
        "TABLE DATA entries of {} (by oid) are not exactly {tables:?}; toc: {entries:#?}",
        file.display()
    );
    if only_tables {
        let others: Vec<&TocEntry> = entries
            .iter()
            .filter(|e| !["TABLE", "TABLE DATA", "TABLE ATTACH"].contains(&e.desc.as_str()))
            .collect();
        assert!(
            others.is_empty(),
            "{} holds entries other than tables: {others:#?}",
            file.display()
        );
    }
}

/// `pg_restore -d <target> FILE` by the target server's pg_restore (exit status must be 0).
pub fn restore(file: &Path, target: &TestDb) {
    let s = target.server();
    let mut c = s.client(&s.bindir, "pg_restore");
    c.args(["--exit-on-error", "-d"])
        .arg(conninfo_db(&target.name))
        .arg(file);
    let out = c.output().expect("run pg_restore");
    assert!(
        out.status.success(),
        "pg_restore {} into {} failed: {}",
        file.display(),
        target.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assert a table has identical rows in two databases.
pub fn assert_same_rows(a: &TestDb, b: &TestDb, schema: &str, table: &str) {
    assert_eq!(
        a.table_digest(schema, table),
        b.table_digest(schema, table),
        "rows of {} differ between {} and {}",
        qt(schema, table),
        a.name,
        b.name
    );
}

pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(&data))
}

// ---------------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------------

/// The groups of one database in `plan --json` output, by group name.
pub fn plan_groups(plan: &Value, db: &str) -> BTreeMap<String, Value> {
    let dbs = plan["databases"].as_array().expect("plan.databases array");
    let entry = dbs
        .iter()
        .find(|d| d["database"] == db)
        .unwrap_or_else(|| panic!("database {db} not in plan: {plan:#}"));
    entry["groups"]
        .as_array()
        .expect("groups array")
        .iter()
        .map(|g| {
            (
                g["group"].as_str().expect("group name").to_owned(),
                g.clone(),
            )
        })
        .collect()
}

/// The table names of a plan group, sorted.
pub fn plan_group_tables(group: &Value) -> Vec<String> {
    let mut v: Vec<String> = group["tables"]
        .as_array()
        .expect("tables array")
        .iter()
        .map(|t| t["table"].as_str().expect("table name").to_owned())
        .collect();
    v.sort();
    v
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_owned()
        })
        .collect()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub fn owned(v: &[&str]) -> Vec<String> {
    sorted(v.iter().map(|s| s.to_string()).collect())
}

/// Report group entries of kind "tables" for `db`, by group name.
pub fn report_groups(report: &Value, db: &str) -> BTreeMap<String, Value> {
    report["groups"]
        .as_array()
        .expect("report.groups array")
        .iter()
        .filter(|g| g["kind"] == "tables" && g["database"] == db)
        .map(|g| (g["group"].as_str().expect("group").to_owned(), g.clone()))
        .collect()
}

/// The file of a report entry, checked to exist with the recorded size and sha256.
pub fn checked_file(entry: &Value) -> PathBuf {
    let file = PathBuf::from(
        entry["file"]
            .as_str()
            .unwrap_or_else(|| panic!("entry has no file: {entry:#}")),
    );
    assert!(file.is_absolute(), "file is not absolute: {entry:#}");
    let meta = fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(
        entry["bytes"].as_u64(),
        Some(meta.len()),
        "bytes of {}",
        file.display()
    );
    assert_eq!(
        entry["sha256"].as_str(),
        Some(sha256_hex(&file).as_str()),
        "sha256 of {}",
        file.display()
    );
    file
}

// ---------------------------------------------------------------------------------------------
// Runs, reports, schema dumps and background load (verify, restore and consistency tests)
// ---------------------------------------------------------------------------------------------

impl Env {
    /// `run` (must exit 0); returns the report it wrote (the newest in `<dir>/reports`).
    pub fn run_ok(&self, args: &[&str]) -> Value {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        self.run(&full).expect_code(0);
        self.newest_report()
    }

    /// The newest report in `<dir>/reports` (by run id).
    pub fn newest_report(&self) -> Value {
        let reports = self.dir.join("reports");
        let newest = fs::read_dir(&reports)
            .unwrap_or_else(|e| panic!("no reports dir {}: {e}", reports.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension() == Some(OsStr::new("json")))
            .max()
            .unwrap_or_else(|| panic!("no report in {}", reports.display()));
        read_json(&newest)
    }

    /// `<dir>/reports/<run_id>.json`.
    pub fn report_path(&self, run_id: &str) -> PathBuf {
        self.dir.join("reports").join(format!("{run_id}.json"))
    }

    /// Run `pg_groupdump -c <config> <args>`; also returns the process id it had.
    pub fn run_with_pid(&self, args: &[&str]) -> (u32, Output) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pg_groupdump"));
        c.arg("-c")
            .arg(&self.config)
            .args(args)
            .current_dir(self.path());
        clean_pg_env(&mut c);
        c.env("PGCONNECT_TIMEOUT", "10");
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = c.spawn().expect("spawn pg_groupdump");
        let pid = child.id();
        (pid, wait_timeout(child, RUN_TIMEOUT))
    }
}

/// The entry of group `name` (kind "tables") in a run report.
pub fn report_group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .expect("report.groups array")
        .iter()
        .find(|g| g["kind"] == "tables" && g["group"] == name)
        .unwrap_or_else(|| panic!("no group {name:?} in the report: {report:#}"))
}

/// A new database copied from the database `template` (which nobody may be connected to).
pub fn copy_of(template: &str, hint: &str) -> TestDb {
    server().copy_of(template, hint)
}

/// A database handle for an existing database (e.g. one `restore --target` created).
pub fn db_named(name: &str) -> TestDb {
    server().db_named(name)
}

/// Whether a database of this name exists.
pub fn database_exists(name: &str) -> bool {
    server().database_exists(name)
}

/// `pg_dump --schema-only` of `db` (by its server's pg_dump), without the `\restrict` /
/// `\unrestrict` lines (their key differs on every dump).
pub fn schema_only_dump(db: &TestDb) -> String {
    let s = db.server();
    let mut c = s.client(&s.bindir, "pg_dump");
    c.arg("--schema-only").arg("-d").arg(conninfo_db(&db.name));
    let out = c.output().expect("run pg_dump --schema-only");
    check(&format!("pg_dump --schema-only {}", db.name), out.clone());
    String::from_utf8(out.stdout)
        .expect("pg_dump output is UTF-8")
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A long-lived `psql` session fed SQL through its stdin by a thread, until stopped: load
/// that runs while the binary under test works. psql echoes each statement's command tag
/// on stdout; the lines equal to `tag` (e.g. "COMMIT") are counted. Each piece of SQL must
/// print `tag` exactly once: the feeder keeps at most a few pieces ahead of psql, so that
/// stopping is prompt.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    child: Child,
    threads: Vec<std::thread::JoinHandle<()>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Load {
    /// Starts the session on `db`; `next(i)` gives the SQL to send i-th (whole statements).
    pub fn start(
        db: &TestDb,
        tag: &'static str,
        mut next: impl FnMut(u64) -> String + Send + 'static,
    ) -> Load {
        use std::io::BufRead;
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::{Arc, Mutex};
        let s = db.server();
        let mut c = s.client(&s.bindir, "psql");
        c.arg("-X").arg("-d").arg(conninfo_db(&db.name));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn psql");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let writer = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    if i > done.load(Ordering::SeqCst) + 4 {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    if stdin.write_all(next(i).as_bytes()).is_err() {
                        break;
                    }
                    i += 1;
                }
                // Dropping stdin ends the session once psql has run what it was sent.
            })
        };
        let reader = {
            let done = done.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line == tag {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let errors = {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut b = String::new();
                let _ = err.read_to_string(&mut b);
                stderr.lock().unwrap().push_str(&b);
            })
        };
        Load {
            stop,
            done,
            child,
            threads: vec![writer, reader, errors],
            stderr,
        }
    }

    /// How many `tag` lines psql has printed so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits (at most `timeout`) until at least `n` were done.
    pub fn wait_done(&self, n: u64, timeout: Duration) {
        let start = Instant::now();
        while self.done() < n {
            assert!(
                start.elapsed() < timeout,
                "load did only {} of {n} in {timeout:?}; psql stderr: {}",
                self.done(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops feeding, lets psql finish what it was sent (killing it after 30 s); returns how
    /// many were done and psql's stderr.
    pub fn stop(mut self) -> (u64, String) {
        self.stop.store(true, Ordering::SeqCst);
        let start = Instant::now();
        loop {
            if self.child.try_wait().expect("wait psql").is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let err = self.stderr.lock().unwrap().clone();
        (self.done(), err)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if !self.threads.is_empty() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), for load generators.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % (hi - lo + 1)
    }
}

/// The `.ing` files under the backup directory (relative paths).
pub fn ing_files(env: &Env) -> Vec<PathBuf> {
    env.files()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".ing"))
        .collect()
}

/// A complete custom-format archive: pg_restore reads all of it (data included) and its table
/// of contents lists something.
pub fn assert_archive_complete(file: &Path) {
    let out = Command::new(server().bin("pg_restore"))
        .arg("--file=/dev/null")
        .arg(file)
        .output()
        .expect("run pg_restore");
    assert!(
        out.status.success(),
        "{} is not a complete archive: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!toc(file).is_empty(), "{} lists nothing", file.display());
}

/// After a run was killed: the next run succeeds, sweeps (and names) the killed run's `.ing`
/// `leftovers`, leaves the killed run's complete files (`kept`: path and sha256) unchanged, and
/// reports every group ok with a checked file. Returns its report.
pub fn assert_next_run_sweeps(
    env: &Env,
    leftovers: &[PathBuf],
    kept: &[(PathBuf, String)],
) -> Value {
    let next = env.run(&["run"]);
    next.expect_code(0);
    env.assert_no_ing();
    for l in leftovers {
        assert!(
            next.stderr.contains(&env.dir.join(l).display().to_string()),
            "the sweep names {}: {next:?}",
            l.display()
        );
    }
    for (p, h) in kept {
        assert_eq!(&sha256_hex(p), h, "{} changed", p.display());
    }
    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    for g in report["groups"].as_array().unwrap() {
        assert_eq!(g["status"], "ok", "{g:#}");
        checked_file(g);
    }
    report
}

// ---------------------------------------------------------------------------------------------
// The corpus (tests/data): the oracle test's database, the archive format's pg_dump archives
// ---------------------------------------------------------------------------------------------

/// What the corpus needs in a database and in every restore target (schemas, types,
/// functions), with the role placeholders of [`Roles::fill`].
pub const PREREQ: &str = include_str!("../data/native_prereq.sql");
/// Tables, their dependents and their rows, run after [`PREREQ`].
pub const CORPUS: &str = include_str!("../data/native_corpus.sql");
/// What PostgreSQL 17 and later add to [`CORPUS`] (a table access method on a partitioned
/// table).
pub const CORPUS_PG17: &str = include_str!("../data/native_corpus_pg17.sql");
/// What PostgreSQL 18 and later add to [`CORPUS`] (named NOT NULL constraints, virtual
/// generated columns).
pub const CORPUS_PG18: &str = include_str!("../data/native_corpus_pg18.sql");

/// The corpus for a server of PostgreSQL `major`: [`CORPUS`] and the additions of the versions
/// up to it, in order.
pub fn corpus_for(major: u32) -> String {
    let mut sql = CORPUS.to_owned();
    for (since, more) in [(17, CORPUS_PG17), (18, CORPUS_PG18)] {
        if major >= since {
            sql.push('\n');
            sql.push_str(more);
        }
    }
    sql
}

/// The two cluster-wide roles the corpus refers to, unique to one test, on one server.
pub struct Roles {
    pub reader: String,
    pub owner: String,
    pub server: &'static Server,
}

impl Roles {
    /// The roles on the shared [`server`].
    pub fn create() -> Roles {
        Roles::create_on(server())
    }

    /// The roles on server `s`.
    pub fn create_on(s: &'static Server) -> Roles {
        let roles = Roles {
            reader: unique_name("oracle_reader"),
            owner: unique_name("oracle_owner"),
            server: s,
        };
        roles.also_on(s);
        roles
    }

    /// Creates the same roles on server `s` too (e.g. the server restore targets are on).
    pub fn also_on(&self, s: &Server) {
        s.psql(
            "postgres",
            &format!(
                "CREATE ROLE {} NOLOGIN; CREATE ROLE {} NOLOGIN;",
                qi(&self.reader),
                qi(&self.owner)
            ),
        );
    }

    /// `sql` with the role placeholders filled in.
    pub fn fill(&self, sql: &str) -> String {
        sql.replace("__READER__", &qi(&self.reader))
            .replace("__OWNER__", &qi(&self.owner))
    }

    /// A fresh database holding the prerequisites only: the template of the restore targets.
    pub fn prepared_db(&self, hint: &str) -> TestDb {
        self.prepared_db_on(self.server, hint)
    }

    /// [`Roles::prepared_db`] on server `s` (which has the roles, see [`Roles::also_on`]).
    pub fn prepared_db_on(&self, s: &'static Server, hint: &str) -> TestDb {
        let db = s.fresh_db(hint);
        db.sql(&self.fill(PREREQ));
        db
    }
}

impl Roles {
    /// A fresh database holding the prerequisites and the corpus of its server's version
    /// ([`corpus_for`]).
    pub fn corpus_db(&self, hint: &str) -> TestDb {
        let db = self.prepared_db(hint);
        db.sql(&self.fill(&corpus_for(self.server.major)));
        db
    }
}
