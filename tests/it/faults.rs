//! Faults injected for real, against a real server (issue #6): signals and `kill -9` in the
//! middle of a run, a failed password authentication, the password kept off every command
//! line, file and directory modes, a database dropped and a server restarted under a running
//! dump, and a full disk. Each test checks that nothing finished was lost, that no file with a
//! final name is incomplete, that no `pg_dump` outlives the run, and that the message names the
//! cause.
//!
//! Catching a dump in flight: the test waits until `pg_stat_activity` shows the group's session
//! (`application_name = pg_groupdump/<group>`, in the test's database) running `COPY`; where
//! the fault must land while that dump is still running (signals, DROP DATABASE, a server
//! restart), the `pg_dump` child is then held still with SIGSTOP ([`Frozen`]) and let go with
//! SIGCONT once the fault has been injected. The dump is then in flight whatever the machine's
//! speed, and tables can stay small. `kill -9` tests never freeze a child: the kernel's
//! parent-death SIGTERM must reach a running one.
//!
//! Tests that need more than a few rows clone a template database made once per process
//! ([`template`]).
//!
//! Engines: a test that catches a group's dump through its `pg_dump` child (freezing it,
//! killing the run while it copies, reading its command line) says `engine = "pg_dump"`
//! ([`pg_dump_config`]); the native engine's counterparts are in `native_faults.rs`. The
//! others (`kill -9` at other moments, authentication, file modes, a full disk) run with the
//! default engine, native.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::faults::*;
use crate::util::*;

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Rows of `public.big` in the template: its dump takes about half a second at the default
/// compression, long enough to be seen copying.
const BIG_ROWS: u32 = 200_000;

/// A database used only as a template: `big` ([`BIG_ROWS`]), `mid1`..`mid3` (50k rows each),
/// `small` (100 rows), all `(id int, info text)`.
static TEMPLATE: Template = Template::new("faults_template", || {
    format!(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, {BIG_ROWS}) g;
         CREATE TABLE mid1 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 50000) g;
         CREATE TABLE mid2 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 50000) g;
         CREATE TABLE mid3 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 50000) g;
         CREATE TABLE small AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 100) g;
         VACUUM ANALYZE;"
    )
});

/// The default configuration for `db`, with `engine = "pg_dump"`: for the tests that catch a
/// group's dump in flight through its `pg_dump` child (held still with SIGSTOP, or expected to
/// be killed, or its command line read). The native engine has no such child; its
/// counterparts are in `native_faults.rs`.
fn pg_dump_config(env: &Env, db: &TestDb) -> Config {
    env.config_for(db).backup("engine", &ts("pg_dump"))
}

/// A new database holding a copy of the [`TEMPLATE`]'s tables.
fn clone_db(hint: &str) -> TestDb {
    TEMPLATE.clone_db(hint)
}

/// The template's tables as four groups (`big`, `mid1`, `mid2`, `small`), nothing ungrouped.
fn template_groups(db: &TestDb) -> String {
    one_table_groups(
        &db.name,
        &[
            ("big", "public.big"),
            ("mid1", "public.mid1"),
            ("mid2", "public.mid2"),
            ("small", "public.small"),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// A run in the background
// ---------------------------------------------------------------------------------------------

/// Whether the dump of `group` (application_name `pg_groupdump/<group>`) of database `db` is
/// copying rows, asked through `session` (on any database of the server).
fn copying(session: &mut SqlSession, db: &str, group: &str) -> bool {
    copy_backend(session, db, group, &["active"]).is_some()
}

/// The pid of the run's live `pg_dump` child dumping `group` (its conninfo carries
/// `application_name='pg_groupdump/<group>'`).
fn dump_child(run_pid: i32, group: &str) -> Option<i32> {
    let app = format!("application_name='pg_groupdump/{group}'");
    processes()
        .into_iter()
        .find(|(_, state, ppid, argv)| {
            *ppid == run_pid
                && *state != 'Z'
                && is_dump_program(argv)
                && argv.iter().any(|a| a.contains(&app))
        })
        .map(|(pid, ..)| pid.parse().unwrap())
}

/// A process held still with SIGSTOP; SIGCONT when dropped.
struct Frozen(i32);

impl Frozen {
    /// Freezes the run's pg_dump of `group`, which must be running.
    fn dump_of(run: &Running, group: &str) -> Frozen {
        let pid = dump_child(run.pid, group)
            .unwrap_or_else(|| panic!("no pg_dump child for {group} of pid {}", run.pid));
        // SAFETY: kill(2) with a pid we just saw as our grandchild.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let frozen = Frozen(pid);
        // The stop takes effect when the process next runs: on a busy machine, a signal sent
        // meanwhile would be taken first (lower number) and its handler entered before the stop.
        let start = Instant::now();
        while proc_stat(&pid.to_string()).is_some_and(|(state, _)| state != 'T') {
            assert!(start.elapsed() < secs(10), "pg_dump {pid} never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        frozen
    }

    /// Whether `sig` is pending for it (sent while it is stopped).
    fn pending(&self, sig: i32) -> bool {
        let status = fs::read_to_string(format!("/proc/{}/status", self.0)).unwrap_or_default();
        status
            .lines()
            .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
            .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
            .any(|mask| mask & (1 << (sig - 1)) != 0)
    }

    /// Waits (up to `limit`) until `sig` is pending; false if it never came.
    fn wait_pending(&self, sig: i32, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.pending(sig) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Its /proc status lines about state and signals, for messages.
    fn status(&self) -> String {
        fs::read_to_string(format!("/proc/{}/status", self.0))
            .unwrap_or_else(|e| format!("(no status: {e})"))
            .lines()
            .filter(|l| l.starts_with("State") || l.starts_with("Sig") || l.starts_with("ShdPnd"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as in dump_of; harmless if it has exited meanwhile.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and files
// ---------------------------------------------------------------------------------------------

fn is_dump_program(argv: &[String]) -> bool {
    argv.first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "pg_dump" || n == "pg_dumpall")
}

/// Live (not zombie) pg_dump / pg_dumpall processes whose command line mentions any of
/// `needles` (the backup dir, the database name): those of a given run.
fn dump_processes(needles: &[&str]) -> Vec<String> {
    processes()
        .into_iter()
        .filter(|(_, state, _, argv)| *state != 'Z' && is_dump_program(argv))
        .filter(|(_, _, _, argv)| {
            let line = argv.join(" ");
            needles.iter().any(|n| line.contains(n))
        })
        .map(|(pid, _, _, argv)| format!("{pid}: {}", argv.join(" ")))
        .collect()
}

fn assert_no_dump_process(needles: &[&str], within: Duration) {
    let start = Instant::now();
    loop {
        let left = dump_processes(needles);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "pg_dump processes of the run still running after {within:?}: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file with a final name under the backup dir is complete: archives read to the end,
/// JSON parses, SQL (globals) ends with pg_dumpall's closing line.
fn assert_final_files_complete(env: &Env) -> usize {
    let mut n = 0;
    for rel in env.files() {
        let path = env.dir.join(&rel);
        let name = rel.to_string_lossy();
        if name.ends_with(".dump") {
            assert_archive_complete(&path);
        } else if name.ends_with(".json") {
            read_json(&path);
        } else if name.ends_with(".sql") {
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("PostgreSQL database cluster dump complete"),
                "{} is incomplete:\n{text}",
                path.display()
            );
        } else {
            continue;
        }
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// 1. SIGTERM, SIGINT, SIGHUP
// ---------------------------------------------------------------------------------------------

/// SIGTERM or SIGINT while `big` is copying (held still) and smaller groups are done.
fn stop_mid_run(sig: i32, name: &str, code: i32) {
    let db = clone_db(&format!("faults_{name}"));
    let env = Env::new();
    pg_dump_config(&env, &db)
        .backup("jobs", "2")
        .extra(&template_groups(&db))
        .write(&env);
    let mut pg = poller();
    let mut run = Running::start(&env, &["run"]);
    run.wait_until("big is copying", secs(60), || {
        copying(&mut pg, &db.name, "big")
    });
    let big_dump = Frozen::dump_of(&run, "big");
    run.wait_until("two dumps are done", secs(60), || env.dumps().len() >= 2);
    run.signal(sig);
    let started = Instant::now();
    // Running pg_dumps get SIGTERM, whichever signal stopped the run.
    let got_sigterm = big_dump.wait_pending(libc::SIGTERM, secs(4));
    let pending = big_dump.status();
    big_dump.thaw();
    let ended = run.wait(secs(30));
    assert!(
        got_sigterm,
        "the pg_dump in flight got no SIGTERM:\n{pending}\n{ended:?}"
    );
    // Well within the 5 s grace before SIGKILL: pg_dump ends at once on SIGTERM.
    assert!(started.elapsed() < secs(5), "{ended:?}");
    assert_eq!(ended.status.code(), Some(code), "{ended:?}");
    assert!(
        ended.stderr.contains(name),
        "stderr names {name}: {ended:?}"
    );
    assert_no_dump_process(&[env.dir.to_str().unwrap(), &db.name], Duration::ZERO);
    env.assert_no_ing();

    let (report, _) = assert_stopped_in_flight(&env, &db.name, name, "big");
    let mut ok = 0;
    for g in report["groups"].as_array().unwrap() {
        match g["status"].as_str().unwrap() {
            "ok" => {
                let file = checked_file(g);
                assert_archive_complete(&file);
                ok += 1;
            }
            "failed" => {
                let err = g["error"].as_str().unwrap_or_default();
                assert!(err.contains(name), "failed only by {name}: {g:#}");
                assert!(g["file"].is_null(), "{g:#}");
            }
            other => panic!("status {other}: {g:#}"),
        }
    }
    assert!(
        ok >= 2,
        "groups finished before the signal are kept: {report:#}"
    );
    // Exactly the files of the groups reported ok.
    let reported: Vec<PathBuf> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["status"] == "ok")
        .map(|g| PathBuf::from(g["file"].as_str().unwrap()))
        .collect();
    assert_eq!(sorted_paths(env.dumps()), sorted_paths(reported));
}

fn sorted_paths(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    v.sort();
    v
}

#[test]
fn sigterm_mid_run_cancels_the_dump_in_flight_keeps_finished_ones_and_exits_143() {
    stop_mid_run(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn sigint_mid_run_cancels_the_dump_in_flight_keeps_finished_ones_and_exits_130() {
    stop_mid_run(libc::SIGINT, "SIGINT", 130);
}

/// SIGHUP while `big` is copying (held still): ignored, and not passed on to the dump. With
/// `hang_up_output`, the terminal is gone as well: the run's stdout and stderr can no longer
/// be written (EPIPE).
fn sighup_mid_run(hint: &str, hang_up_output: bool) {
    let db = clone_db(hint);
    let env = Env::new();
    pg_dump_config(&env, &db)
        .backup("jobs", "2")
        .extra(&template_groups(&db))
        .write(&env);
    let mut pg = poller();
    let mut run = if hang_up_output {
        Running::start_unread(&env, &["run"])
    } else {
        Running::start(&env, &["run"])
    };
    run.wait_until("big is copying", secs(60), || {
        copying(&mut pg, &db.name, "big")
    });
    let big_dump = Frozen::dump_of(&run, "big");
    if hang_up_output {
        run.hang_up_output();
    }
    run.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !big_dump.pending(libc::SIGTERM),
        "SIGHUP cancelled the dump"
    );
    big_dump.thaw();
    let ended = run.wait(secs(60));
    let files = env.files();
    assert_eq!(ended.status.code(), Some(0), "{ended:?}\nfiles: {files:#?}");
    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    assert!(report["signal"].is_null(), "{report:#}");
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 5, "_schema + 4 groups: {report:#}");
    for g in groups {
        assert_eq!(g["status"], "ok", "{g:#}");
        assert_eq!(g["attempts"].as_array().unwrap().len(), 1, "{g:#}");
        checked_file(g);
    }
    env.assert_no_ing();
    let big = checked_file(report_group(&report, "big"));
    restore_and_compare(&big, &db, "big");
}

#[test]
fn sighup_mid_run_is_ignored_and_the_run_completes() {
    sighup_mid_run("faults_sighup", false);
}

/// SIGHUP with the terminal gone: every later write to stdout and stderr fails (EPIPE), and
/// the run neither panics nor stops on it. It ends as without the hang-up: exit 0, every group
/// ok after one attempt with a complete file, no `.ing` left, and its report written.
#[test]
fn sighup_with_the_terminal_gone_is_ignored_and_the_run_completes() {
    sighup_mid_run("faults_sighup_gone", true);
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9
// ---------------------------------------------------------------------------------------------

enum Moment {
    After(Duration),
    Copying(&'static str),
    DumpsDone(usize),
}

/// Kills the run with SIGKILL at `moment`; then: no pg_dump of it survives, every file with a
/// final name is complete, and the next run sweeps the `.ing` leftovers and succeeds.
fn kill9_at(hint: &str, moment: Moment) {
    let db = clone_db(hint);
    let env = Env::new();
    let copying_moment = matches!(moment, Moment::Copying(_));
    // Killed while a group is copying: that group's pg_dump child must be running, so the
    // run uses the pg_dump engine; at the other moments, the default engine (whose schema
    // dump and globals are pg_dump / pg_dumpall children too).
    let config = if copying_moment {
        pg_dump_config(&env, &db)
    } else {
        env.config_for(&db)
    };
    config
        .backup("jobs", "2")
        .backup("globals", "true")
        .extra(&template_groups(&db))
        .write(&env);
    let mut pg = poller();
    let mut run = Running::start(&env, &["run"]);
    let needles = [env.dir.to_str().unwrap(), db.name.as_str()];
    match moment {
        Moment::After(d) => std::thread::sleep(d),
        Moment::Copying(g) => run.wait_until(&format!("{g} is copying"), secs(60), || {
            copying(&mut pg, &db.name, g)
        }),
        Moment::DumpsDone(n) => run.wait_until(&format!("{n} dumps done"), secs(60), || {
            env.dumps().len() >= n
        }),
    }
    let running_at_kill = dump_processes(&needles);
    run.kill9();
    // The children get SIGTERM from the kernel (PR_SET_PDEATHSIG).
    assert_no_dump_process(&needles, secs(5));
    let leftovers = ing_files(&env);
    if copying_moment {
        assert!(
            !running_at_kill.is_empty(),
            "no pg_dump was running when the run was killed"
        );
        assert!(
            !leftovers.is_empty(),
            "dumps were in flight ({running_at_kill:#?}): their .ing should be left: {:?}",
            env.files()
        );
    }
    let complete_before = assert_final_files_complete(&env);
    let kept = dump_hashes(&env);

    // The killed run's complete files are still there, unchanged.
    assert_next_run_sweeps(&env, &leftovers, &kept);
    assert!(assert_final_files_complete(&env) > complete_before);
}

#[test]
fn kill9_after_200ms_leaves_only_complete_files() {
    kill9_at(
        "faults_kill_early",
        Moment::After(Duration::from_millis(200)),
    );
}

#[test]
fn kill9_while_copying_leaves_only_complete_files_and_no_pg_dump() {
    kill9_at("faults_kill_copy", Moment::Copying("big"));
}

#[test]
fn kill9_right_after_the_first_dump_leaves_only_complete_files() {
    kill9_at("faults_kill_first", Moment::DumpsDone(1));
}

#[test]
fn kill9_after_three_dumps_leaves_only_complete_files() {
    kill9_at("faults_kill_three", Moment::DumpsDone(3));
}

// ---------------------------------------------------------------------------------------------
// 3. Authentication, 4. secrets and modes
// ---------------------------------------------------------------------------------------------

/// A login role that must give `password` (a member of [`PASSWORD_ROLE`]), allowed to read
/// every table of `db`.
fn password_role(db: &TestDb, password: &str) -> String {
    let role = unique_name("pwrole");
    db.sql(&format!(
        "CREATE ROLE {r} LOGIN PASSWORD {p} IN ROLE {pw};
         GRANT CONNECT ON DATABASE {d} TO {r};
         GRANT USAGE ON SCHEMA public TO {r};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};",
        r = qi(&role),
        p = ql(password),
        pw = qi(PASSWORD_ROLE),
        d = qi(&db.name)
    ));
    role
}

fn write_secret(path: &Path, text: &str, mode: u32) {
    fs::write(path, format!("{text}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn wrong_password_exits_3_naming_user_and_server_then_the_right_one_works() {
    let db = fresh_db("faults_auth");
    db.sql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);");
    let right = unique_name("Right-pw");
    let role = password_role(&db, &right);
    let env = Env::new();
    let pwfile = env.path().join("password");
    let wrong = unique_name("Wrong-pw");
    write_secret(&pwfile, &wrong, 0o600);
    env.config_for(&db)
        .connection("user", &ts(&role))
        .connection("password_file", &ts(pwfile.to_str().unwrap()))
        .write(&env);

    let out = env.run(&["run"]);
    out.expect_code(3);
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out:?}"
    );
    assert!(out.stderr.contains(&role), "names the user: {out:?}");
    let target = format!("127.0.0.1:{}", server().port);
    assert!(out.stderr.contains(&target), "names the server: {out:?}");
    assert!(!out.stderr.contains(&wrong) && !out.stdout.contains(&wrong));
    assert!(
        !out.stderr.contains("readable by other users"),
        "0600 draws no warning: {out:?}"
    );
    // Authentication is checked before the backup dir is created.
    assert!(!env.dir.exists(), "written: {:?}", env.files());

    write_secret(&pwfile, &right, 0o600);
    let out = env.run(&["run"]);
    out.expect_code(0);
    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    let t = checked_file(report_group(&report, "public.t"));
    restore_and_compare(&t, &db, "t");
}

#[test]
fn password_file_readable_by_others_draws_a_warning_naming_the_key() {
    let db = fresh_db("faults_pw_mode");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let right = unique_name("Right-pw");
    let role = password_role(&db, &right);
    let env = Env::new();
    let pwfile = env.path().join("password");
    write_secret(&pwfile, &right, 0o644);
    env.config_for(&db)
        .connection("user", &ts(&role))
        .connection("password_file", &ts(pwfile.to_str().unwrap()))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(0);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("connection.password_file"))
        .unwrap_or_else(|| panic!("no warning naming connection.password_file: {out:?}"));
    assert!(warning.contains(pwfile.to_str().unwrap()), "{warning}");
    assert!(warning.contains("0644"), "{warning}");
    assert!(!out.stderr.contains(&right));
}

#[test]
fn password_is_on_no_command_line_nor_in_output_report_or_file_names() {
    let db = clone_db("faults_secret");
    let password = unique_name("S3cret-pw");
    let role = password_role(&db, &password);
    let env = Env::new();
    let pwfile = env.path().join("password");
    write_secret(&pwfile, &password, 0o600);
    // The pg_dump engine: a pg_dump child per group, each command line checked (with the
    // native engine only the schema dump is one).
    pg_dump_config(&env, &db)
        .connection("user", &ts(&role))
        .connection("password_file", &ts(pwfile.to_str().unwrap()))
        .backup("jobs", "2")
        .extra(&template_groups(&db))
        .write(&env);
    let mut run = Running::start(&env, &["-v", "run"]);
    // Every command line of the run's children, polled while it runs.
    let mut seen: Vec<Vec<String>> = Vec::new();
    let pid = run.pid;
    let start = Instant::now();
    while run.child.try_wait().unwrap().is_none() {
        for (_, _, ppid, argv) in processes() {
            if (ppid == pid || argv.join(" ").contains(&password)) && !seen.contains(&argv) {
                seen.push(argv);
            }
        }
        assert!(start.elapsed() < secs(120), "run too long");
        std::thread::sleep(Duration::from_millis(15));
    }
    let ended = run.wait(secs(1));
    assert_eq!(ended.status.code(), Some(0), "{ended:?}");
    assert!(
        !ended.stderr.contains("readable by other users"),
        "{ended:?}"
    );
    let dumps: Vec<&Vec<String>> = seen
        .iter()
        .filter(|a| is_dump_program(a) && a.iter().any(|x| x.starts_with("--file=")))
        .collect();
    assert!(
        dumps.len() >= 2,
        "pg_dump children were seen while they ran: {seen:#?}"
    );
    for argv in &seen {
        assert!(
            !argv.iter().any(|a| a.contains(&password)),
            "password on a command line: {argv:?}"
        );
    }
    for argv in &dumps {
        assert!(argv.iter().any(|a| a.starts_with("--dbname=")), "{argv:?}");
        assert!(argv.iter().any(|a| a == "--no-password"), "{argv:?}");
    }
    assert!(!ended.stdout.contains(&password), "{ended:?}");
    assert!(!ended.stderr.contains(&password), "{ended:?}");
    // Nothing we wrote holds it: names, report, lock file.
    let report = env.report();
    assert_eq!(report["status"], "ok", "{report:#}");
    for rel in env.files() {
        assert!(!rel.to_string_lossy().contains(&password), "{rel:?}");
        let path = env.dir.join(&rel);
        if !rel.to_string_lossy().ends_with(".dump") {
            let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
            assert!(!text.contains(&password), "{} holds it", path.display());
        }
    }
    for g in report["groups"].as_array().unwrap() {
        assert_eq!(g["status"], "ok", "{g:#}");
        checked_file(g);
    }
}

/// (directories, files) under the backup dir (the root included) whose mode is not the one
/// wanted; the lock file is left out (always 0600).
fn wrong_modes(env: &Env, file_mode: u32, dir_mode: u32) -> (Vec<String>, Vec<String>, usize) {
    let (mut dirs, mut files, mut n) = (Vec::new(), Vec::new(), 0);
    for e in walkdir::WalkDir::new(&env.dir) {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
        let show = format!("{} {mode:04o}", e.path().display());
        if e.file_type().is_dir() {
            if mode != dir_mode {
                dirs.push(show);
            }
        } else if e.file_name() == ".pg_groupdump.lock" {
            assert_eq!(mode & 0o077, 0, "{show}");
        } else {
            n += 1;
            if mode != file_mode {
                files.push(show);
            }
        }
    }
    (dirs, files, n)
}

#[test]
fn files_are_0600_in_dirs_0700_by_default_and_file_mode_dir_mode_apply() {
    let db = fresh_db("faults_modes");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE TABLE u (id int);");

    let env = Env::new();
    env.config_for(&db).backup("globals", "true").write(&env);
    env.run(&["run"]).expect_code(0);
    let (dirs, files, n) = wrong_modes(&env, 0o600, 0o700);
    assert!(n >= 5, "dumps, globals and report: {:?}", env.files());
    assert!(dirs.is_empty() && files.is_empty(), "{dirs:#?} {files:#?}");

    let env = Env::new();
    env.config_for(&db)
        .backup("globals", "true")
        .backup("file_mode", &ts("0640"))
        .backup("dir_mode", &ts("0750"))
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let (dirs, files, n) = wrong_modes(&env, 0o640, 0o750);
    assert!(n >= 5, "{:?}", env.files());
    assert!(dirs.is_empty() && files.is_empty(), "{dirs:#?} {files:#?}");
}

// ---------------------------------------------------------------------------------------------
// 5. A database dropped mid-run
// ---------------------------------------------------------------------------------------------

#[test]
fn database_dropped_mid_run_fails_only_its_groups() {
    let a = clone_db("faults_drop_a");
    let b = fresh_db("faults_drop_b");
    b.sql(
        "CREATE TABLE b1 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 50000) g;
         CREATE TABLE b2 AS SELECT g AS id, md5(g::text) AS info FROM generate_series(1, 30000) g;
         ANALYZE;",
    );
    let env = Env::new();
    let mut groups: String = [
        ("a_big", "public.big"),
        ("a_mid1", "public.mid1"),
        ("a_mid2", "public.mid2"),
        ("a_mid3", "public.mid3"),
    ]
    .into_iter()
    .map(|(g, t)| group_cfg(&a.name, g, &[t]))
    .collect();
    groups.push_str(&group_cfg(&b.name, "b_one", &["public.b1"]));
    groups.push_str(&group_cfg(&b.name, "b_two", &["public.b2"]));
    groups.push_str(SKIP_UNGROUPED);
    // a_big is held still through its pg_dump child while its database is dropped.
    pg_dump_config(&env, &a)
        .backup("databases", &ta(&[&a.name, &b.name]))
        // One at a time: when a_big is caught, every other group of A is still to come.
        .backup("jobs", "1")
        .backup("retry_delay", &ts("200ms"))
        .extra(&groups)
        .write(&env);
    let mut pg = poller();
    let mut run = Running::start(&env, &["run"]);
    run.wait_until("a_big is copying", secs(60), || {
        copying(&mut pg, &a.name, "a_big")
    });
    let frozen = Frozen::dump_of(&run, "a_big");
    // With one job at a time and a_big holding it, nothing else starts or ends until the
    // drop: the groups of A without a final file now are the ones still to come.
    let a_dir = env.dir.join(encode_component(&a.name));
    let done_before: Vec<&str> = ["a_mid1", "a_mid2", "a_mid3"]
        .into_iter()
        .filter(|g| env.dumps().iter().any(|p| p.starts_with(a_dir.join(g))))
        .collect();
    psql(
        "postgres",
        &format!("DROP DATABASE {} WITH (FORCE)", qi(&a.name)),
    );
    frozen.thaw();
    let ended = run.wait(secs(60));
    assert_eq!(ended.status.code(), Some(1), "{ended:?}");
    assert_no_dump_process(&[env.dir.to_str().unwrap(), &a.name], Duration::ZERO);
    env.assert_no_ing();

    let report = env.report();
    assert_eq!(report["status"], "failed", "{report:#}");
    let gone = format!("database \"{}\" does not exist", a.name);
    let big = report_group(&report, "a_big");
    assert_eq!(big["status"], "failed", "{big:#}");
    let err = big["error"].as_str().unwrap();
    assert!(
        err.contains(&gone),
        "the error names the database and the cause: {big:#}"
    );
    assert!(ended.stderr.contains("does not exist"), "{ended:?}");
    // The attempt in flight lost its connection (retried), the next found no database.
    let attempts = big["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "connection_lost", "{big:#}");
    let first = attempts[0]["error"].as_str().unwrap();
    assert!(
        first.contains("server closed the connection") || first.contains("terminating connection"),
        "{big:#}"
    );
    assert_eq!(attempts.last().unwrap()["outcome"], "failed", "{big:#}");
    // The groups of A still to come fail at once (no point retrying); those done before the
    // drop are kept; those of B are not affected. (Which groups of A come before a_big is not
    // "largest first" as run.rs intends: each job's task races for the semaphore.)
    for g in ["a_mid1", "a_mid2", "a_mid3"] {
        let e = report_group(&report, g);
        if done_before.contains(&g) {
            assert_eq!(e["status"], "ok", "{e:#}");
            assert_archive_complete(&checked_file(e));
            continue;
        }
        assert_eq!(e["status"], "failed", "{g}: {report:#}\n{ended:?}");
        assert!(e["error"].as_str().unwrap().contains(&gone), "{e:#}");
        assert_eq!(e["attempts"].as_array().unwrap().len(), 1, "{e:#}");
        assert!(e["file"].is_null(), "{e:#}");
    }
    for (g, t) in [("b_one", "b1"), ("b_two", "b2")] {
        let e = report_group(&report, g);
        assert_eq!(e["status"], "ok", "{e:#}");
        let file = checked_file(e);
        restore_and_compare(&file, &b, t);
    }
    let b_schema = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "schema" && g["database"] == b.name.as_str())
        .expect("schema of b");
    assert_eq!(b_schema["status"], "ok", "{b_schema:#}");
}

// ---------------------------------------------------------------------------------------------
// 6. Server restarted mid-run
// ---------------------------------------------------------------------------------------------

#[test]
fn server_restart_mid_run_is_retried_and_every_group_restores() {
    let ps = private_server();
    let dbname = restart_db(&ps, "faults_restart", 200_000);
    let env = Env::new();
    // g_r1 is held still through its pg_dump child while the server restarts (the native
    // engine's counterpart: native_faults::native_server_restart_mid_copy_is_retried_…).
    Config::new(&env, &dbname)
        .backup("engine", &ts("pg_dump"))
        .connection("port", &ps.port.to_string())
        .backup("jobs", "1")
        .backup("lock_retries", "5")
        .backup("retry_delay", &ts("1s"))
        .extra(&restart_groups(&dbname))
        .write(&env);
    let mut pg = ps.session("postgres");
    let mut run = Running::start(&env, &["run"]);
    run.wait_until("g_r1 is copying", secs(60), || {
        copying(&mut pg, &dbname, "g_r1")
    });
    let frozen = Frozen::dump_of(&run, "g_r1");
    ps.restart();
    frozen.thaw();
    let ended = run.wait(secs(90));
    assert_retried_after_restart(&env, &ended, &ps, &dbname, Some("pg_dump"));
}

// ---------------------------------------------------------------------------------------------
// 7. Disk full
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted on a directory; unmounted on drop (lazily if busy).
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The backup dir is a 2 MiB tmpfs: the small group fits, the big one (≈4 MiB uncompressed)
/// does not. Needs root (mount): it fails unless run as root, as CI and scripts/test.sh do. (Without
/// mount, a full disk could be simulated with a file size limit — `ulimit -f` — but that
/// makes pg_dump die of SIGXFSZ rather than see ENOSPC, which is not the fault under test.)
#[test]
fn disk_full_fails_the_big_group_naming_the_path_and_keeps_the_small_one() {
    let db = fresh_db("faults_disk_full");
    db.sql(
        "CREATE TABLE big AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS info
           FROM generate_series(1, 60000) g;
         CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 100) g;
         ANALYZE;",
    );
    let env = Env::new();
    require_root("it mounts a tmpfs");
    let _tmpfs = Tmpfs::mount(&env.dir, "2m")
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs on {}: {e}", env.dir.display()));
    env.config_for(&db)
        .backup("jobs", "1")
        .backup("compress", "0")
        .extra(&one_table_groups(
            &db.name,
            &[("big", "public.big"), ("small", "public.small")],
        ))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(1);
    env.assert_no_ing();
    let report = env.report();
    let run_id = report["run_id"].as_str().unwrap();
    assert_eq!(report["status"], "failed", "{report:#}");
    let big = report_group(&report, "big");
    assert_eq!(big["status"], "failed", "{big:#}");
    let err = big["error"].as_str().unwrap();
    let path = expected_dump_path(&env.dir, &db.name, "big", run_id);
    assert!(err.contains("disk full"), "{big:#}");
    assert!(
        err.contains(path.to_str().unwrap()),
        "the error names {}: {big:#}",
        path.display()
    );
    assert!(out.stderr.contains("disk full"), "{out:?}");
    assert!(!path.exists());
    let small = report_group(&report, "small");
    assert_eq!(small["status"], "ok", "{small:#}");
    let file = checked_file(small);
    restore_and_compare(&file, &db, "small");
}
