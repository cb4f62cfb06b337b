//! The oracle for the native dump engine (`[backup] engine = "native"`): every group's archive
//! must restore to exactly what a `pg_dump -Fc --strict-names -t …` of the same tables restores
//! to. The corpus (`tests/data/native_prereq.sql`, `tests/data/native_corpus.sql`) covers the
//! objects a table brings along in `pg_dump -t` (sequences, defaults, constraints, indexes,
//! triggers, rules, RLS, policies, comments, ACLs, partitions, inheritance) and data that is
//! hard to COPY (tabs, backslashes, `\N`, CR/LF, multi-byte text, bytea, arrays, no columns,
//! 300 000 rows in an order that is not the key's, some TOASTed). The run has `split_above`
//! low enough that `app.big` is copied by several sessions: its rows must come out in the
//! same (physical) order as `pg_dump`'s.
//!
//! Per group, the engine's archive and the reference archive (taken right after the run from
//! the unchanged database) are each restored with `pg_restore --exit-on-error` into a fresh
//! database prepared with the prerequisites (schemas, types, functions; a group with a foreign
//! key into another group gets that group restored first, from the same side). Then:
//! - `pg_dump` (schema and data: what `--schema-only` and `--data-only` print together) of
//!   the two targets is identical once the rows of each COPY block are sorted;
//! - every table has the source's rows (count and md5 of its rows ordered);
//! - `pg_restore --list` of the two archives shows the same (desc, namespace tag owner)
//!   entries.
//!
//! The same again for all groups restored, in order, into one database per side; and the
//! engine's archive of one group restored with `pg_restore -j 2` and through
//! `pg_restore -f - | psql`.
//!
//! `pg_dump_engine_passes_the_oracle` runs the harness against the pg_dump engine, whose files
//! are `pg_dump -t` archives themselves: a baseline that proves the harness.
//!
//! The oracle runs on the shared server here; tests/it/matrix.rs runs it ([`oracle_on`]) on a
//! server of each PostgreSQL version, with that version's corpus ([`corpus_for`]: 17 and 18
//! add tables, in groups `pg17` and `pg18`) and its own pg_dump and pg_restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;

use serde_json::Value;

use crate::util::*;

/// Rows of `app.big`, the group whose data spans many compressed chunks.
const BIG_ROWS: u64 = 300_000;

// ---------------------------------------------------------------------------------------------
// The corpus and its groups
// ---------------------------------------------------------------------------------------------

/// One group as configured (or ungrouped: its own group, named by the table's display name).
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub name: String,
    /// Every table the group dumps (a partitioned table with its partitions), as (schema, table).
    pub tables: Vec<(String, String)>,
    /// What `tables = […]` says in groups.toml (None: ungrouped).
    configured: Option<Vec<&'static str>>,
    /// Groups whose tables its foreign keys point to: restored before it.
    needs: Vec<&'static str>,
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect()
}

/// The configured groups of the corpus of PostgreSQL `major` ([`corpus_for`]), in restore
/// order (a group after those it needs).
fn configured_groups(major: u32) -> Vec<Group> {
    let g = |name: &str,
             configured: Vec<&'static str>,
             tables: &[(&str, &str)],
             needs: Vec<&'static str>| Group {
        name: name.to_owned(),
        tables: pairs(tables),
        configured: Some(configured),
        needs,
    };
    vec![
        g(
            "orders",
            vec!["app.customers", "app.orders", "app.orders_audit"],
            &[
                ("app", "customers"),
                ("app", "orders"),
                ("app", "orders_audit"),
            ],
            vec![],
        ),
        g(
            "ledger",
            vec!["app.ledger"],
            &[("app", "ledger")],
            vec!["orders"],
        ),
        g(
            "events",
            vec!["app.events"],
            &[
                ("app", "events"),
                ("app", "events_2024"),
                ("app", "events_2025"),
                ("app", "events_other"),
            ],
            vec![],
        ),
        g(
            "inherit",
            vec!["app.vehicles", "app.cars"],
            &[("app", "vehicles"), ("app", "cars")],
            vec![],
        ),
        g("big", vec!["app.big"], &[("app", "big")], vec![]),
        g(
            "misc",
            vec!["app.empty_one", "app.no_columns", "app.scratchpad"],
            &[
                ("app", "empty_one"),
                ("app", "no_columns"),
                ("app", "scratchpad"),
            ],
            vec![],
        ),
        // tests/data/native_corpus_pg17.sql
        g(
            "pg17",
            vec!["app.readings"],
            &[
                ("app", "readings"),
                ("app", "readings_new"),
                ("app", "readings_old"),
            ],
            vec![],
        ),
        // tests/data/native_corpus_pg18.sql
        g(
            "pg18",
            vec!["app.shapes"],
            &[("app", "shapes")],
            vec!["orders"],
        ),
    ]
    .into_iter()
    .filter(|g| match g.name.as_str() {
        "pg17" => major >= 17,
        "pg18" => major >= 18,
        _ => true,
    })
    .collect()
}

/// The tables the corpus leaves ungrouped (each is its own group).
const UNGROUPED: &[(&str, &str)] = &[("My Schema.v2", "Mixed.Case*\"T\""), ("app", "texts")];

/// Every group of the run: the configured ones, then the ungrouped tables. Checks that the
/// source holds no other table, so that corpus and configuration cannot drift apart.
fn all_groups(src: &TestDb) -> Vec<Group> {
    let mut groups = configured_groups(src.server().major);
    for (s, t) in UNGROUPED {
        groups.push(Group {
            name: display(s, t),
            tables: pairs(&[(s, t)]),
            configured: None,
            needs: vec![],
        });
    }
    let want: BTreeSet<(String, String)> = groups
        .iter()
        .flat_map(|g| g.tables.iter().cloned())
        .collect();
    assert_eq!(
        src.user_tables(),
        want,
        "the corpus's tables are not those the test's groups list"
    );
    groups
}

/// The `[[group]]` tables of `groups` and `[ungrouped] mode = "table"`; a group named in
/// `keys` (group, `key = value` line) gets that line too.
fn groups_toml(db: &TestDb, groups: &[Group], keys: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for g in groups {
        if let Some(tables) = &g.configured {
            out.push_str(&format!(
                "[[group]]\nname = {}\ndatabase = {}\ntables = {}\n",
                ts(&g.name),
                ts(&db.name),
                ta(tables)
            ));
            for (_, line) in keys.iter().filter(|(name, _)| *name == g.name) {
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
    }
    out.push_str("[ungrouped]\nmode = \"table\"\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Where the oracle runs; client programs (pg_dump -t, plain pg_dump, pg_restore)
// ---------------------------------------------------------------------------------------------

/// Where the oracle runs, with which programs, and what the run is told besides its groups.
pub(crate) struct Setup {
    /// The server of the source database.
    pub server: &'static Server,
    /// The server of the restore targets: [`Setup::server`], or a newer one when the clients
    /// are newer than the server (pg_restore restores into its own version).
    pub targets: &'static Server,
    /// The bin dir of the pg_dump and pg_restore the run uses (`backup.pg_dump`,
    /// `backup.pg_restore`) and of the test's own: the reference `pg_dump -t`, `pg_restore`,
    /// the `pg_dump` of the targets.
    pub clients: PathBuf,
    /// `backup.engine`.
    pub engine: &'static str,
}

impl Setup {
    /// The shared server with its own programs.
    fn shared(engine: &'static str) -> Setup {
        Setup {
            server: server(),
            targets: server(),
            clients: server().bindir.clone(),
            engine,
        }
    }

    /// A client program of [`Setup::clients`] for database `db`: connecting to its server as
    /// postgres over TCP, `-d db` given.
    fn client(&self, prog: &str, db: &TestDb) -> Command {
        let mut c = db.server().client(&self.clients, prog);
        c.arg("-d").arg(conninfo_db(&db.name));
        c
    }

    /// The configuration of a run of `groups` of `src` (its `[[group]]` tables and
    /// `[ungrouped]`) with `jobs = 4`, the engine and the clients.
    pub fn config(&self, env: &Env, src: &TestDb, groups: &[Group]) -> Config {
        self.config_with(env, src, groups, &[])
    }

    /// [`Setup::config`] with more keys for some groups: (group, `key = value` line).
    pub fn config_with(
        &self,
        env: &Env,
        src: &TestDb,
        groups: &[Group],
        group_keys: &[(&str, &str)],
    ) -> Config {
        env.config_for(src)
            .clients(&self.clients)
            .backup("jobs", "4")
            .backup("engine", &ts(self.engine))
            .backup("split_above", "\"1MB\"")
            .extra(&groups_toml(src, groups, group_keys))
    }
}

/// Runs `c`; panics with its stderr unless it succeeded; returns stdout.
fn output(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output is not UTF-8: {e}"))
}

/// `pg_dump -Fc --strict-names -t '"s"."t"' …` of `tables` in `db` into `out`: the reference.
fn reference_dump(pg: &Setup, db: &TestDb, tables: &[(String, String)], out: &Path) {
    let mut c = pg.client("pg_dump", db);
    c.args(["-Fc", "--strict-names"]);
    for (s, t) in tables {
        c.arg("-t").arg(format!(
            "\"{}\".\"{}\"",
            s.replace('"', "\"\""),
            t.replace('"', "\"\"")
        ));
    }
    c.arg("-f").arg(out);
    output(c, &format!("pg_dump -t {tables:?}"));
}

/// `pg_restore --exit-on-error [extra] -d target file`.
fn restore_with(pg: &Setup, file: &Path, target: &TestDb, extra: &[&str]) {
    let mut c = pg.client("pg_restore", target);
    c.arg("--exit-on-error").args(extra).arg(file);
    output(
        c,
        &format!(
            "pg_restore {extra:?} {} into {}",
            file.display(),
            target.name
        ),
    );
}

/// `pg_restore -f - file`: the archive as an SQL script.
fn restore_script(pg: &Setup, file: &Path) -> String {
    let mut c = Command::new(pg.clients.join("pg_restore"));
    c.args(["-f", "-"]).arg(file);
    output(c, &format!("pg_restore -f - {}", file.display()))
}

/// `pg_dump` (plain: schema and data) of `db`, with the rows of every COPY block sorted (a
/// restore may store them in another order) and without `\restrict` / `\unrestrict` lines
/// (their key differs on every dump). Nothing else is changed.
pub(crate) fn plain_dump(pg: &Setup, db: &TestDb) -> String {
    let c = pg.client("pg_dump", db);
    let text = output(c, &format!("pg_dump {}", db.name));
    let mut out = String::new();
    let mut rows: Option<Vec<&str>> = None;
    for line in text.lines() {
        if let Some(block) = rows.as_mut() {
            if line == "\\." {
                block.sort_unstable();
                for r in block.iter() {
                    out.push_str(r);
                    out.push('\n');
                }
                rows = None;
            } else {
                block.push(line);
                continue;
            }
        } else if line.starts_with("\\restrict") || line.starts_with("\\unrestrict") {
            continue;
        } else if line.starts_with("COPY ") && line.ends_with(" FROM stdin;") {
            rows = Some(Vec::new());
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(rows.is_none(), "unterminated COPY block in:\n{text}");
    out
}

/// `pg_restore --list`: a line "desc | namespace tag owner" per entry, sorted.
fn toc_keys(pg: &Setup, file: &Path) -> String {
    let mut keys: Vec<String> = toc_with(&pg.clients.join("pg_restore"), file)
        .into_iter()
        .map(|e| format!("{} | {}\n", e.desc, e.rest))
        .collect();
    keys.sort();
    keys.concat()
}

/// Per table: row count and md5 of its own rows (`ONLY`), ordered by their text.
type Digests = BTreeMap<(String, String), (String, String)>;

/// [`Digests`] of `tables` in `db`, in one query.
fn digests<'a>(db: &TestDb, tables: impl IntoIterator<Item = &'a (String, String)>) -> Digests {
    let tables: Vec<&(String, String)> = tables.into_iter().collect();
    let sql = tables
        .iter()
        .enumerate()
        .map(|(i, (s, t))| {
            format!(
                "SELECT {i}, count(*), \
                 coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '-') FROM ONLY {} t",
                qt(s, t)
            )
        })
        .collect::<Vec<_>>()
        .join("\nUNION ALL ")
        + "\nORDER BY 1";
    let rows = db.query(&sql);
    assert_eq!(rows.len(), tables.len(), "{sql}");
    tables
        .into_iter()
        .zip(rows)
        .map(|(t, r)| (t.clone(), (r[1].clone(), r[2].clone())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Comparison with readable failures
// ---------------------------------------------------------------------------------------------

/// Panics unless `a == b`, showing where they first differ and which lines only one side has.
pub(crate) fn assert_same_text(what: &str, a_name: &str, a: &str, b_name: &str, b: &str) {
    if a == b {
        return;
    }
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    let first = al
        .iter()
        .zip(&bl)
        .position(|(x, y)| x != y)
        .unwrap_or(al.len().min(bl.len()));
    let window = |lines: &[&str]| -> String {
        let from = first.saturating_sub(3);
        lines[from..lines.len().min(first + 12)]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let n = from + i;
                let mark = if n == first { '>' } else { ' ' };
                format!("{mark}{:5} {l}\n", n + 1)
            })
            .collect()
    };
    let only = |x: &[&str], y: &[&str]| -> String {
        let ys: BTreeSet<&str> = y.iter().copied().collect();
        let mut v: Vec<&str> = x.iter().copied().filter(|l| !ys.contains(l)).collect();
        let n = v.len();
        v.truncate(25);
        let mut s: String = v.iter().map(|l| format!("  {l}\n")).collect();
        if n > v.len() {
            s.push_str(&format!("  … {} more\n", n - v.len()));
        }
        s
    };
    panic!(
        "{what}: {a_name} and {b_name} differ, first at line {} ({} vs {} lines)\n\
         --- {a_name} ---\n{}--- {b_name} ---\n{}\
         --- lines only in {a_name} ---\n{}--- lines only in {b_name} ---\n{}",
        first + 1,
        al.len(),
        bl.len(),
        window(&al),
        window(&bl),
        only(&al, &bl),
        only(&bl, &al),
    );
}

/// The two targets hold the same schema and the same rows: their `pg_dump` (schema and data,
/// see [`plain_dump`]) is the same.
fn assert_same_db(pg: &Setup, what: &str, engine: &TestDb, reference: &TestDb) {
    assert_same_text(
        &format!("{what}: pg_dump (schema and data, COPY rows sorted)"),
        &format!("engine side ({})", engine.name),
        &plain_dump(pg, engine),
        &format!("pg_dump -t side ({})", reference.name),
        &plain_dump(pg, reference),
    );
}

/// Every table of `tables` has the source's rows in `target`.
fn assert_rows_as_source(
    what: &str,
    source: &Digests,
    target: &TestDb,
    tables: &[(String, String)],
) {
    let got = digests(target, tables);
    for (t, d) in got {
        assert_eq!(
            d,
            source[&t],
            "{what}: rows (count, md5) of {} in {} differ from the source",
            qt(&t.0, &t.1),
            target.name
        );
    }
}

/// The message of a caught panic.
fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(panic without a message)".into())
}

/// Checks that do not depend on each other: each runs even when another failed, and their
/// failures are reported together.
#[derive(Default)]
pub(crate) struct Failures(Vec<String>);

impl Failures {
    /// Runs `f`; records its panic, prefixed with `context`. Returns whether it passed.
    pub fn check(&mut self, context: &str, f: impl FnOnce()) -> bool {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(()) => true,
            Err(e) => {
                self.0.push(format!("[{context}] {}", panic_message(&*e)));
                false
            }
        }
    }

    pub fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// Runs `f` for every item on its own thread; panics with every failure's message at once.
fn each_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let results: Vec<thread::Result<R>> = thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut ok = Vec::new();
    let mut failures = Failures::default();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => failures.0.push(panic_message(&*e)),
        }
    }
    failures.assert_none();
    ok
}

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

/// A group with its two archives.
struct Archives<'a> {
    group: &'a Group,
    /// Written by the engine under test (the run's file).
    engine: PathBuf,
    /// `pg_dump -Fc --strict-names -t …`, taken by the test after the run.
    reference: PathBuf,
}

/// What one thread of the comparison does.
enum Task {
    /// Restore one group (after those it needs) on both sides and compare.
    Group(usize),
    /// Restore every group, in order, into one database per side and compare.
    Whole,
}

/// What an oracle leaves for more checks: the source database, the run's workspace and report,
/// the groups of the run.
pub(crate) struct Oracled {
    pub src: TestDb,
    pub env: Env,
    pub report: Value,
    pub groups: Vec<Group>,
}

/// Runs the whole oracle on the shared server with `engine` (`[backup] engine`).
fn oracle(engine: &'static str) {
    oracle_on(&Setup::shared(engine));
}

/// Runs the whole oracle as `pg` says: the corpus of the server's version, a run of all its
/// groups, each group's archive against `pg_dump -t` of its tables (every group `ok`, with
/// `pg.engine` and no fallback in the report).
pub(crate) fn oracle_on(pg: &Setup) -> Oracled {
    let engine = pg.engine;
    let major = pg.server.major;
    let roles = Roles::create_on(pg.server);
    if !std::ptr::eq(pg.targets, pg.server) {
        roles.also_on(pg.targets);
    }
    // Restore targets: per group two, the whole database two, `-j 2` and `-f -` one each for
    // two groups. Creating databases is slow, so they are made while the corpus loads and the
    // run goes.
    let targets = 2 * (configured_groups(major).len() + UNGROUPED.len()) + 6;
    let template = roles.prepared_db_on(pg.targets, "oracle_template");
    let src = if std::ptr::eq(pg.targets, pg.server) {
        pg.server.copy_of(&template.name, "oracle_src")
    } else {
        roles.prepared_db("oracle_src")
    };
    let (made, pool) = std::sync::mpsc::channel();
    let maker = thread::spawn(move || {
        for _ in 0..targets {
            let target = template.server().copy_of(&template.name, "oracle_target");
            if made.send(target).is_err() {
                break;
            }
        }
    });
    src.sql(&roles.fill(&corpus_for(major)));
    let groups = all_groups(&src);

    // The run.
    let env = Env::new();
    pg.config(&env, &src, &groups).write(&env);
    let out = env.run(&["run"]);
    assert_eq!(
        out.code, 0,
        "run with engine {engine:?} did not exit 0:\n{out:?}"
    );
    let report = env.report();
    let entries = report_groups(&report, &src.name);
    assert_eq!(
        entries.keys().cloned().collect::<BTreeSet<_>>(),
        groups.iter().map(|g| g.name.clone()).collect(),
        "the report's groups: {report:#}"
    );

    // The reference archives, from the unchanged database; the source's rows.
    let refs = env.path().join("reference");
    std::fs::create_dir(&refs).unwrap();
    let indexed: Vec<(usize, &Group)> = groups.iter().enumerate().collect();
    let archives: Vec<Archives> = each_parallel(&indexed, |(i, g)| {
        let entry = &entries[&g.name];
        assert_eq!(entry["status"], "ok", "group {}: {entry:#}", g.name);
        assert_eq!(
            sorted(strings(&entry["tables"])),
            sorted(g.tables.iter().map(|(s, t)| display(s, t)).collect()),
            "group {}: the report's tables",
            g.name
        );
        check_engine_field(engine, &g.name, entry);
        let reference = refs.join(format!("{i}.{}.dump", encode_component(&g.name)));
        reference_dump(pg, &src, &g.tables, &reference);
        Archives {
            group: g,
            engine: checked_file(entry),
            reference,
        }
    });
    let source = digests(&src, groups.iter().flat_map(|g| &g.tables));

    // (1), (2): restored, each side into its own prepared database.
    let pool = Mutex::new(pool);
    let target = || {
        pool.lock()
            .unwrap()
            .recv()
            .expect("a restore target (see the panic of the thread making them)")
    };
    let archive = |name: &str| -> &Archives {
        archives
            .iter()
            .find(|a| a.group.name == name)
            .unwrap_or_else(|| panic!("no group {name}"))
    };
    let tasks: Vec<Task> = std::iter::once(Task::Whole)
        .chain((0..archives.len()).map(Task::Group))
        .collect();
    each_parallel(&tasks, |task| match task {
        Task::Whole => {
            let what = "all groups restored, in order, into one database";
            let (e, r) = (target(), target());
            for a in &archives {
                restore_with(pg, &a.engine, &e, &[]);
                restore_with(pg, &a.reference, &r, &[]);
            }
            assert_same_db(pg, what, &e, &r);
            let all: Vec<(String, String)> = groups.iter().flat_map(|g| g.tables.clone()).collect();
            assert_rows_as_source(what, &source, &e, &all);
        }
        Task::Group(i) => {
            let a = &archives[*i];
            let name = &a.group.name;
            let what = format!("group {name:?}");
            let mut failures = Failures::default();
            // (3) The same entries in both archives.
            failures.check(&what, || {
                assert_same_text(
                    &format!("{what}: pg_restore --list (desc | namespace tag owner, sorted)"),
                    &a.engine.display().to_string(),
                    &toc_keys(pg, &a.engine),
                    &a.reference.display().to_string(),
                    &toc_keys(pg, &a.reference),
                )
            });
            // (1), (2) Each side restored into its own prepared database: the same result,
            // with the source's rows. A group with a foreign key into another group: that
            // group first, from the same side.
            let r = target();
            let restored = failures.check(&what, || {
                let e = target();
                for need in &a.group.needs {
                    restore_with(pg, &archive(need).engine, &e, &[]);
                    restore_with(pg, &archive(need).reference, &r, &[]);
                }
                restore_with(pg, &a.engine, &e, &[]);
                restore_with(pg, &a.reference, &r, &[]);
                assert_same_db(pg, &what, &e, &r);
                assert_rows_as_source(&what, &source, &e, &a.group.tables);
                if name == "big" {
                    check_big(&src, &e, &a.engine);
                    assert_same_text(
                        &format!("{what}: the COPY rows, in stored order"),
                        &a.engine.display().to_string(),
                        &copy_rows(&restore_script(pg, &a.engine)),
                        &a.reference.display().to_string(),
                        &copy_rows(&restore_script(pg, &a.reference)),
                    );
                    if engine == "native" {
                        check_split(&entries[name]);
                    }
                }
            });
            // The engine's archive also restores in parallel, and as an SQL script.
            if restored && (name == "orders" || name == "big") {
                failures.check(&what, || {
                    let j = target();
                    restore_with(pg, &a.engine, &j, &["-j", "2"]);
                    assert_same_db(pg, &format!("{what} restored with pg_restore -j 2"), &j, &r);
                });
                failures.check(&what, || {
                    let t = target();
                    t.sql(&restore_script(pg, &a.engine));
                    assert_same_db(
                        pg,
                        &format!("{what} through pg_restore -f - | psql"),
                        &t,
                        &r,
                    );
                });
            }
            failures.assert_none();
        }
    });
    maker.join().expect("making the restore targets");
    Oracled {
        src,
        env,
        report,
        groups,
    }
}

/// The report's `engine` / `fallback` of one group.
pub(crate) fn check_engine_field(engine: &str, group: &str, entry: &Value) {
    assert_eq!(
        entry["engine"], engine,
        "group {group}: the report's engine (fallback: {})",
        entry["fallback"]
    );
    assert!(
        entry["fallback"].is_null(),
        "group {group}: fell back: {entry:#}"
    );
}

/// The COPY blocks of an SQL script, rows in the order stored.
fn copy_rows(script: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in script.lines() {
        if line.starts_with("COPY ") && line.ends_with(" FROM stdin;") {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line == "\\." {
            inside = false;
        }
    }
    out
}

/// The big group's report entry: app.big was copied by several sessions, in several ranges.
fn check_split(entry: &Value) {
    let split = &entry["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .expect("an attempt")["split"];
    assert_eq!(split[0]["table"], "app.big", "the split tables: {entry:#}");
    let sessions = split[0]["sessions"].as_u64().unwrap_or(0);
    let ranges = split[0]["ranges"].as_u64().unwrap_or(0);
    assert!(
        sessions >= 2 && ranges >= sessions,
        "app.big: {sessions} sessions, {ranges} ranges: {entry:#}"
    );
}

/// The big group: all rows back, in a file large enough to be many compressed chunks.
fn check_big(src: &TestDb, target: &TestDb, file: &Path) {
    let q = "SELECT count(*), md5(string_agg(b::text, E'\\n' ORDER BY id)) FROM app.big b";
    let want = src.query(q);
    assert_eq!(
        want[0][0],
        BIG_ROWS.to_string(),
        "rows of app.big in the source"
    );
    assert_eq!(
        target.query(q),
        want,
        "app.big (count, md5 ordered by id) in {} differs from the source",
        target.name
    );
    let bytes = std::fs::metadata(file).unwrap().len();
    assert!(
        bytes > 1 << 20,
        "{} holds 300 000 rows in only {bytes} bytes",
        file.display()
    );
}

#[test]
fn pg_dump_engine_passes_the_oracle() {
    oracle("pg_dump");
}

#[test]
fn native_engine_matches_pg_dump_t() {
    oracle("native");
}
