//! Retention: `prune [--dry-run] [--json]` and the prune at the end of `run`, on real backup
//! directories made by real runs. Days of history are made by copying (or renaming) the real
//! files of a run to older run ids: the age of a dump comes from its name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::*;
use serde_json::Value;

const LOCK_FILE: &str = ".pg_groupdump.lock";

/// The run id of `days` days ago (negative: in the future).
fn rid_days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days))
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// Every file of the backup dir (relative) whose name carries `run_id`.
fn files_of_run(env: &Env, run_id: &str) -> Vec<PathBuf> {
    env.files()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(run_id))
        .collect()
}

fn renamed(rel: &Path, from: &str, to: &str) -> PathBuf {
    let name = rel.file_name().unwrap().to_str().unwrap().replace(from, to);
    rel.with_file_name(name)
}

/// Copies every file of run `from` to run `to` (same directories, run id replaced).
fn copy_run(env: &Env, from: &str, to: &str) {
    let files = files_of_run(env, from);
    assert!(!files.is_empty(), "no files of run {from}");
    for rel in files {
        fs::copy(env.dir.join(&rel), env.dir.join(renamed(&rel, from, to))).unwrap();
    }
}

/// Renames every file of run `from` to run `to`.
fn move_run(env: &Env, from: &str, to: &str) {
    let files = files_of_run(env, from);
    assert!(!files.is_empty(), "no files of run {from}");
    for rel in files {
        fs::rename(env.dir.join(&rel), env.dir.join(renamed(&rel, from, to))).unwrap();
    }
}

/// (relative path → sha256) of every file, symlink targets' contents included, lock excluded.
fn snapshot(env: &Env) -> BTreeMap<PathBuf, String> {
    env.files()
        .into_iter()
        .filter(|p| p != Path::new(LOCK_FILE))
        .map(|p| {
            let h = sha256_hex(&env.dir.join(&p));
            (p, h)
        })
        .collect()
}

/// Every file decision of a prune summary: relative path → (action, rule).
fn decisions(env: &Env, summary: &Value) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for g in summary["groups"].as_array().expect("groups") {
        for list in ["kept", "deleted"] {
            for f in g[list].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let file = PathBuf::from(f["file"].as_str().expect("file"));
                let rel = file
                    .strip_prefix(&env.dir)
                    .unwrap_or_else(|_| panic!("{} outside the backup dir", file.display()));
                let action = f["action"].as_str().unwrap().to_owned();
                assert_eq!(
                    action,
                    if list == "kept" { "keep" } else { "delete" },
                    "{f:#}"
                );
                let prev = out.insert(
                    rel.display().to_string(),
                    (action, f["rule"].as_str().unwrap().to_owned()),
                );
                assert!(prev.is_none(), "{} listed twice", rel.display());
            }
        }
    }
    out
}

/// The group entry of a summary by directory.
fn summary_group<'a>(summary: &'a Value, dir: &str) -> &'a Value {
    summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["dir"] == dir)
        .unwrap_or_else(|| panic!("no group {dir} in {summary:#}"))
}

/// The expected decisions of one group directory: (file name, rule).
fn expect_dir(want: &mut BTreeMap<String, (String, String)>, dir: &Path, files: &[(String, &str)]) {
    for (name, rule) in files {
        let action = if ["expired", "leftover"].contains(rule) {
            "delete"
        } else {
            "keep"
        };
        want.insert(
            dir.join(name).display().to_string(),
            (action.to_string(), rule.to_string()),
        );
    }
}

/// A pg_dump (or pg_dumpall) stand-in: `--version` from the real one; every dump fails,
/// or with `only`, only the dumps of tables whose names contain `only` fail (the rest run the
/// real one).
fn failing_tool(env: &Env, real: &Path, only: Option<&str>) -> PathBuf {
    let name = format!("failing_{}", real.file_name().unwrap().to_string_lossy());
    let path = env.path().join(name);
    let real = real.display();
    let body = match only {
        None => format!(
            "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then exec '{real}' --version; fi\n\
             echo 'pg_dump: error: simulated failure' >&2\nexit 1\n"
        ),
        Some(word) => format!(
            "#!/bin/sh\ncase \"$*\" in *--table*{word}*) echo 'pg_dump: error: simulated failure' >&2; \
             exit 1;; esac\nexec '{real}' \"$@\"\n"
        ),
    };
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn retention(max_age: &str, keep_min: Option<u32>, extra: &str) -> String {
    let mut s = format!("[retention]\nmax_age = {}\n", ts(max_age));
    if let Some(k) = keep_min {
        s.push_str(&format!("keep_min = {k}\n"));
    }
    s.push_str(extra);
    s
}

fn prune_json(env: &Env, dry_run: bool) -> Value {
    let mut args = vec!["prune", "--json"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = env.run(&args);
    out.expect_code(0);
    out.json()
}

#[test]
fn prune_by_age_keep_min_clock_skew_and_group_overrides() {
    let db = fresh_db("prune_rules");
    db.sql(
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 100);
         CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 100);
         CREATE TABLE misc (v text); INSERT INTO misc VALUES ('m');
         CREATE TABLE gone (v text); INSERT INTO gone VALUES ('g');",
    );
    let env = Env::new();
    let groups = format!(
        "[[group]]\nname = \"orders\"\ndatabase = {}\ntables = [\"public.orders\", \"public.items\"]\n",
        ts(&db.name)
    );
    env.config_for(&db).extra(&groups).write(&env);
    env.run(&["run"]).expect_code(0);
    let r = env.report()["run_id"].as_str().unwrap().to_owned();

    // History: 2, 5, 10, 20 and 30 days old, and a dump of misc from ten years ahead.
    let days = [2, 5, 10, 20, 30];
    for d in days {
        copy_run(&env, &r, &rid_days_ago(d));
    }
    let future = rid_days_ago(-3650);
    let misc_dir = env.dir.join(&db.name).join("public.misc");
    let misc_now = format!("{}.public.misc.{r}.dump", db.name);
    fs::copy(
        misc_dir.join(&misc_now),
        misc_dir.join(misc_now.replace(&r, &future)),
    )
    .unwrap();
    // The table "gone" is dropped: its group exists no more, its newest dump is 10 days old.
    db.sql("DROP TABLE gone");
    for d in [0, 2, 5] {
        let rid = if d == 0 { r.clone() } else { rid_days_ago(d) };
        let f = env
            .dir
            .join(&db.name)
            .join("public.gone")
            .join(format!("{}.public.gone.{rid}.dump", db.name));
        fs::remove_file(&f).unwrap();
    }

    let groups = format!("{groups}max_age = \"25d\"\nkeep_min = 4\n");
    env.config_for(&db)
        .extra(&groups)
        .extra(&retention("7d", None, ""))
        .write(&env);

    let name = |g: &str, rid: &str| format!("{}.{g}.{rid}.dump", db.name);
    let d = |n: i64| rid_days_ago(n);
    let mut want = BTreeMap::new();
    let dbdir = PathBuf::from(&db.name);
    expect_dir(
        &mut want,
        &dbdir.join("orders"),
        &[
            (name("orders", &r), "newest"),
            (name("orders", &d(2)), "newest"),
            (name("orders", &d(5)), "newest"),
            (name("orders", &d(10)), "newest"),
            (name("orders", &d(20)), "young"),
            (name("orders", &d(30)), "expired"),
        ],
    );
    expect_dir(
        &mut want,
        &dbdir.join("public.misc"),
        &[
            (name("public.misc", &future), "future"),
            (name("public.misc", &r), "newest"),
            (name("public.misc", &d(2)), "young"),
            (name("public.misc", &d(5)), "young"),
            (name("public.misc", &d(10)), "expired"),
            (name("public.misc", &d(20)), "expired"),
            (name("public.misc", &d(30)), "expired"),
        ],
    );
    expect_dir(
        &mut want,
        &dbdir.join("public.gone"),
        &[
            (name("public.gone", &d(10)), "newest"),
            (name("public.gone", &d(20)), "expired"),
            (name("public.gone", &d(30)), "expired"),
        ],
    );
    expect_dir(
        &mut want,
        &dbdir.join("_schema"),
        &[
            (name("_schema", &r), "newest"),
            (name("_schema", &d(2)), "young"),
            (name("_schema", &d(5)), "young"),
            (name("_schema", &d(10)), "expired"),
            (name("_schema", &d(20)), "expired"),
            (name("_schema", &d(30)), "expired"),
        ],
    );
    expect_dir(
        &mut want,
        Path::new("reports"),
        &[
            (format!("{r}.json"), "newest"),
            (format!("{}.json", d(2)), "young"),
            (format!("{}.json", d(5)), "young"),
            // Dumps of that run are kept (orders, gone): so is its report.
            (format!("{}.json", d(10)), "report_of_kept_dumps"),
            (format!("{}.json", d(20)), "report_of_kept_dumps"),
            (format!("{}.json", d(30)), "expired"),
        ],
    );
    let to_delete: BTreeSet<String> = want
        .iter()
        .filter(|(_, (a, _))| a == "delete")
        .map(|(p, _)| p.clone())
        .collect();
    let bytes: u64 = to_delete
        .iter()
        .map(|p| fs::metadata(env.dir.join(p)).unwrap().len())
        .sum();

    // Dry run: the decisions, nothing deleted.
    let before = snapshot(&env);
    let dry = prune_json(&env, true);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(decisions(&env, &dry), want, "{dry:#}");
    assert_eq!(dry["deleted_files"].as_u64(), Some(to_delete.len() as u64));
    assert_eq!(dry["freed_bytes"].as_u64(), Some(bytes));
    assert_eq!(snapshot(&env), before, "a dry run deleted something");
    let orders = summary_group(&dry, &format!("{}/orders", db.name));
    assert_eq!(orders["group"], "orders");
    assert_eq!(orders["database"], db.name.as_str());
    assert_eq!(orders["keep_min"], 4);
    assert_eq!(orders["max_age"], "25days");
    let misc = summary_group(&dry, &format!("{}/public.misc", db.name));
    assert_eq!(
        (&misc["keep_min"], &misc["max_age"]),
        (&1.into(), &"7days".into())
    );
    assert_eq!(dry["ignored"].as_array().unwrap().len(), 0, "{dry:#}");

    // The text form says the same, per group, with reasons.
    let text = env.run(&["prune", "--dry-run"]);
    text.expect_code(0);
    assert!(text.stdout.contains("dry run"), "{text:?}");
    assert!(
        text.stdout
            .contains(&format!("{} / orders: keep 5, would delete 1", db.name)),
        "{text:?}"
    );
    assert!(text.stdout.contains("older than max_age 7days"), "{text:?}");
    assert!(text.stdout.contains("one of the newest 4"), "{text:?}");
    assert!(text.stdout.contains("counts as age zero"), "{text:?}");
    assert!(
        text.stdout
            .contains(&format!("would delete {} files", to_delete.len())),
        "{text:?}"
    );
    assert_eq!(snapshot(&env), before);

    // The real thing.
    let done = prune_json(&env, false);
    assert_eq!(done["dry_run"], false);
    assert_eq!(decisions(&env, &done), want, "{done:#}");
    assert_eq!(done["deleted_files"].as_u64(), Some(to_delete.len() as u64));
    assert_eq!(done["freed_bytes"].as_u64(), Some(bytes));
    assert_eq!(done["errors"].as_array().unwrap().len(), 0, "{done:#}");
    let mut expected = before.clone();
    expected.retain(|p, _| !to_delete.contains(&p.display().to_string()));
    assert_eq!(snapshot(&env), expected);
    for g in done["groups"].as_array().unwrap() {
        for f in g["deleted"].as_array().unwrap() {
            assert_eq!(f["deleted"], true, "{f:#}");
        }
    }

    // Again: nothing left to delete.
    let again = prune_json(&env, false);
    assert_eq!(again["deleted_files"], 0, "{again:#}");
    assert_eq!(snapshot(&env), expected);
}

#[test]
fn ten_days_of_failing_backups_keep_the_last_good_dump_of_every_group() {
    let db = fresh_db("prune_failing");
    db.sql(
        "CREATE TABLE a (id int); INSERT INTO a VALUES (1);
         CREATE TABLE b (id int); INSERT INTO b VALUES (2);
         CREATE TABLE c (id int); INSERT INTO c VALUES (3);",
    );
    let env = Env::new();
    let groups = format!(
        "[[group]]\nname = \"ab\"\ndatabase = {}\ntables = [\"public.a\", \"public.b\"]\n",
        ts(&db.name)
    );
    env.config_for(&db)
        .backup("globals", "true")
        .extra(&groups)
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let r = env.report()["run_id"].as_str().unwrap().to_owned();

    // The last good run was 11 days ago; older ones 15 and 20 days ago.
    let last_good = rid_days_ago(11);
    move_run(&env, &r, &last_good);
    copy_run(&env, &last_good, &rid_days_ago(15));
    copy_run(&env, &last_good, &rid_days_ago(20));
    let good: BTreeMap<PathBuf, String> = snapshot(&env)
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains(&last_good))
        .collect();
    let group_dirs: BTreeSet<PathBuf> = good
        .keys()
        .filter(|p| !p.starts_with("reports"))
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    assert_eq!(
        group_dirs.len(),
        4,
        "ab, public.c, _schema, _globals: {group_dirs:?}"
    );

    // From now on every dump fails; the runs prune at their end.
    let s = server();
    let pg_dump = failing_tool(&env, &s.bin("pg_dump"), None);
    let pg_dumpall = failing_tool(&env, &s.bin("pg_dumpall"), None);
    // The failures come from the pg_dump engine's own children. (With the native engine the
    // groups would fail only by way of its fallback to pg_dump, once the schema dump failed.)
    env.config_for(&db)
        .backup("engine", &ts("pg_dump"))
        .backup("globals", "true")
        .backup("pg_dump", &ts(pg_dump.to_str().unwrap()))
        .backup("pg_dumpall", &ts(pg_dumpall.to_str().unwrap()))
        .extra(&groups)
        .extra(&retention("7d", None, ""))
        .write(&env);
    let mut failed_runs = Vec::new();
    for _ in 0..3 {
        let out = env.run(&["run"]);
        out.expect_code(1);
        let newest = fs::read_dir(env.dir.join("reports"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .max()
            .unwrap();
        let report = read_json(&env.dir.join("reports").join(&newest));
        assert_eq!(report["status"], "failed");
        for g in report["groups"].as_array().unwrap() {
            assert_eq!(g["status"], "failed", "{g:#}");
        }
        let prune = &report["prune"];
        assert_eq!(prune["deleted_files"], 0, "{report:#}");
        for g in prune["groups"].as_array().unwrap() {
            if g["kind"] != "reports" {
                assert_eq!(g["protected"], true, "{g:#}");
            }
        }
        failed_runs.push(newest);
    }
    // Every failed group lost nothing in its own run.
    for (p, h) in &good {
        assert_eq!(sha256_hex(&env.dir.join(p)), *h, "{}", p.display());
    }

    // Days later, a prune outside any run: only the last good dump of each group stays.
    let done = prune_json(&env, false);
    assert_eq!(done["errors"].as_array().unwrap().len(), 0, "{done:#}");
    for dir in &group_dirs {
        let left: Vec<PathBuf> = env
            .files()
            .into_iter()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .collect();
        assert_eq!(left.len(), 1, "{}: {left:?}", dir.display());
        assert!(left[0].to_string_lossy().contains(&last_good), "{left:?}");
        assert_eq!(sha256_hex(&env.dir.join(&left[0])), good[&left[0]]);
        let g = summary_group(&done, dir.to_str().unwrap());
        assert_eq!(g["deleted_files"], 2, "{g:#}");
        assert_eq!(g["kept"][0]["rule"], "newest", "{g:#}");
    }
    // Reports: the failed runs' are young, the last good run's goes with its dumps.
    let reports: BTreeSet<String> = fs::read_dir(env.dir.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut want: BTreeSet<String> = failed_runs.iter().cloned().collect();
    want.insert(format!("{last_good}.json"));
    assert_eq!(reports, want);

    // And more failures and prunes change nothing.
    let before = snapshot(&env);
    env.run(&["run"]).expect_code(1);
    prune_json(&env, false);
    let after: BTreeMap<PathBuf, String> = snapshot(&env)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("reports"))
        .collect();
    let before: BTreeMap<PathBuf, String> = before
        .into_iter()
        .filter(|(p, _)| !p.starts_with("reports"))
        .collect();
    assert_eq!(after, before);
}

#[test]
fn run_prunes_at_its_end_but_never_a_group_that_failed_in_it() {
    let db = fresh_db("prune_run");
    db.sql(
        "CREATE TABLE a (id int); INSERT INTO a VALUES (1);
         CREATE TABLE secret (id int); INSERT INTO secret VALUES (2);",
    );
    let env = Env::new();
    env.config_for(&db).write(&env);
    env.run(&["run"]).expect_code(0);
    let r = env.report()["run_id"].as_str().unwrap().to_owned();
    let (d10, d20) = (rid_days_ago(10), rid_days_ago(20));
    move_run(&env, &r, &d10);
    copy_run(&env, &d10, &d20);
    let history = snapshot(&env);

    // The dump of public.secret fails from now on; the others succeed.
    // The pg_dump engine: the failure is injected into the group's own pg_dump (`--table`).
    let pg_dump = failing_tool(&env, &server().bin("pg_dump"), Some("secret"));
    env.config_for(&db)
        .backup("engine", &ts("pg_dump"))
        .backup("pg_dump", &ts(pg_dump.to_str().unwrap()))
        .extra(&retention("7d", None, ""))
        .write(&env);
    env.run(&["run"]).expect_code(1);
    let reports: Vec<String> = fs::read_dir(env.dir.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let newest = reports.iter().max().unwrap().clone();
    let report = read_json(&env.dir.join("reports").join(&newest));
    let status: BTreeMap<String, String> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_owned(),
                g["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(status["public.secret"], "failed", "{report:#}");
    assert_eq!(status["public.a"], "ok", "{report:#}");
    assert_eq!(status["_schema"], "ok", "{report:#}");

    let prune = &report["prune"];
    assert_eq!(prune["dry_run"], false);
    // public.a and _schema lose their 10- and 20-day-old dumps; public.secret keeps everything.
    let mut deleted = BTreeSet::new();
    for g in prune["groups"].as_array().unwrap() {
        assert!(
            g.get("kept").is_none(),
            "run reports list only deletions: {g:#}"
        );
        for f in g["deleted"].as_array().unwrap() {
            assert_eq!(f["deleted"], true);
            let p = PathBuf::from(f["file"].as_str().unwrap());
            deleted.insert(p.strip_prefix(&env.dir).unwrap().to_path_buf());
        }
        let secret = g["group"] == "public.secret";
        assert_eq!(g["protected"], secret, "{g:#}");
    }
    let dbdir = PathBuf::from(&db.name);
    let mut want = BTreeSet::new();
    for rid in [&d10, &d20] {
        for g in ["public.a", "_schema"] {
            want.insert(dbdir.join(g).join(format!("{}.{g}.{rid}.dump", db.name)));
        }
    }
    // Both old reports stay: public.secret's dumps of those runs are kept.
    assert_eq!(deleted, want, "{prune:#}");
    assert_eq!(prune["deleted_files"].as_u64(), Some(want.len() as u64));
    let expected_freed: u64 = prune["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["deleted"].as_array().unwrap().clone())
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(prune["freed_bytes"].as_u64(), Some(expected_freed));
    assert!(expected_freed > 0);
    for p in &want {
        assert!(!env.dir.join(p).exists(), "{} still there", p.display());
    }
    for rid in [&d10, &d20] {
        let f = dbdir
            .join("public.secret")
            .join(format!("{}.public.secret.{rid}.dump", db.name));
        assert_eq!(
            sha256_hex(&env.dir.join(&f)),
            history[&f],
            "{}",
            f.display()
        );
    }

    // prune_after_run = false: the run prunes nothing and reports no prune.
    let d30 = rid_days_ago(30);
    copy_run(&env, &d10, &d30);
    env.config_for(&db)
        .extra(&retention("7d", None, "prune_after_run = false\n"))
        .write(&env);
    let before = snapshot(&env);
    env.run(&["run"]).expect_code(0);
    let newest = fs::read_dir(env.dir.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .max()
        .unwrap();
    let report = read_json(&env.dir.join("reports").join(&newest));
    assert!(report["prune"].is_null(), "{report:#}");
    for p in before.keys() {
        assert!(env.dir.join(p).exists(), "{} deleted", p.display());
    }
}

#[test]
fn files_the_tool_did_not_write_are_never_touched() {
    let db = fresh_db("prune_foreign");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let env = Env::new();
    env.config_for(&db).write(&env);
    env.run(&["run"]).expect_code(0);
    let r = env.report()["run_id"].as_str().unwrap().to_owned();
    let old = rid_days_ago(30);
    let older = rid_days_ago(40);
    copy_run(&env, &r, &old);

    let dbdir = env.dir.join(&db.name);
    let gdir = dbdir.join("public.t");
    let stem = |g: &str, rid: &str| format!("{}.{g}.{rid}.dump", db.name);
    let outside = env.path().join("outside");
    fs::create_dir_all(outside.join("grp")).unwrap();
    fs::create_dir_all(outside.join("db/g")).unwrap();
    let precious = outside.join("precious.dump");
    fs::write(&precious, b"precious").unwrap();
    fs::write(outside.join("grp").join(stem("public.zzz", &older)), b"o").unwrap();
    fs::write(outside.join("db/g/other.g.20200101T000000Z.dump"), b"o").unwrap();

    let mut planted: Vec<PathBuf> = Vec::new();
    let mut plant = |p: PathBuf, data: &[u8]| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        planted.push(p);
    };
    plant(env.dir.join("notes.txt"), b"notes");
    plant(dbdir.join("notes.txt"), b"notes");
    plant(gdir.join("notes.txt"), b"notes");
    plant(gdir.join(format!("{}.bak", stem("public.t", &older))), b"x");
    plant(gdir.join(format!("{}~", stem("public.t", &older))), b"x");
    plant(
        gdir.join(stem("public.t", &older).replace(".dump", ".DUMP")),
        b"x",
    );
    plant(gdir.join(stem("public.u", &older)), b"wrong group");
    plant(
        gdir.join(format!("x{}", stem("public.t", &older))),
        b"wrong db",
    );
    plant(
        gdir.join(format!(".{}", stem("public.t", &older))),
        b"hidden",
    );
    plant(gdir.join(stem("public.t", "20200101T000000")), b"bad id");
    plant(gdir.join("sub").join(stem("public.t", &older)), b"too deep");
    plant(dbdir.join(stem("public.t", &older)), b"too shallow");
    plant(
        env.dir
            .join("_globals")
            .join(format!("_globals.{older}.dump")),
        b"x",
    );
    plant(
        env.dir.join("reports").join(format!("{older}.json.bak")),
        b"x",
    );
    plant(env.dir.join("reports").join(format!("x{older}.json")), b"x");
    plant(gdir.join("foo.ing"), b"not ours");
    // Symbolic links: one with exactly a dump's name pointing at a file outside, a group
    // directory and a database directory pointing outside.
    let link = gdir.join(stem("public.t", &older));
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    std::os::unix::fs::symlink(outside.join("grp"), dbdir.join("public.zzz")).unwrap();
    std::os::unix::fs::symlink(outside.join("db"), env.dir.join("other")).unwrap();
    // A directory with a dump's name.
    let dir_named_like_a_dump = gdir.join(stem("public.t", &rid_days_ago(50)));
    fs::create_dir_all(&dir_named_like_a_dump).unwrap();

    let outside_before = list_files(&outside);
    let planted_before: Vec<(PathBuf, Vec<u8>)> = planted
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    let check_untouched = || {
        for (p, data) in &planted_before {
            assert_eq!(&fs::read(p).unwrap(), data, "{} changed", p.display());
        }
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::symlink_metadata(dbdir.join("public.zzz"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::symlink_metadata(env.dir.join("other"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&precious).unwrap(), b"precious");
        assert_eq!(list_files(&outside), outside_before);
        assert!(dir_named_like_a_dump.is_dir());
    };

    env.config_for(&db)
        .extra(&retention("7d", None, ""))
        .write(&env);
    let done = prune_json(&env, false);
    check_untouched();
    // Our own 30-day-old files did go.
    assert_eq!(done["deleted_files"], 3, "{done:#}"); // dump, schema dump, report
    assert!(!gdir.join(stem("public.t", &old)).exists());
    assert!(gdir.join(stem("public.t", &r)).exists());
    let ignored: BTreeMap<String, String> = done["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_owned(),
                i["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for p in &planted {
        // Listed itself, or a directory above it that was not looked into.
        let listed = p.ancestors().take_while(|a| *a != env.dir).any(|a| {
            ignored.contains_key(&a.strip_prefix(&env.dir).unwrap().display().to_string())
        });
        assert!(listed, "{} not listed: {ignored:#?}", p.display());
    }
    for l in [&link, &dbdir.join("public.zzz"), &env.dir.join("other")] {
        let rel = l.strip_prefix(&env.dir).unwrap().display().to_string();
        assert!(
            ignored
                .get(&rel)
                .is_some_and(|r| r.contains("symbolic link")),
            "{rel}: {ignored:#?}"
        );
    }

    // A run that prunes leaves them alone too.
    copy_run(&env, &r, &old);
    env.run(&["run"]).expect_code(0);
    check_untouched();
    assert!(!gdir.join(stem("public.t", &old)).exists());
}

#[test]
fn leftover_partial_files_go_only_when_no_run_holds_the_lock() {
    let db = fresh_db("prune_ing");
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    let env = Env::new();
    env.config_for(&db)
        .extra(&retention("7d", None, ""))
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let r = env.report()["run_id"].as_str().unwrap().to_owned();
    let crashed = rid_days_ago(1);
    let gdir = env.dir.join(&db.name).join("public.t");
    let dump = gdir.join(format!("{}.public.t.{r}.dump", db.name));
    let ing = [
        gdir.join(format!("{}.public.t.{crashed}.dump.ing", db.name)),
        env.dir.join("reports").join(format!("{crashed}.json.ing")),
    ];
    let plant_ing = || {
        for p in &ing {
            fs::copy(&dump, p).unwrap();
        }
    };
    plant_ing();
    let not_ours = gdir.join("foo.dump.ing");
    fs::write(&not_ours, b"x").unwrap();
    let old = rid_days_ago(30);
    copy_run(&env, &r, &old);
    let before = snapshot(&env);

    // A run holds the directory: prune refuses (exit 4), dry run or not, and touches nothing.
    {
        let _held = pg_groupdump::runlock::RunLock::acquire(&env.dir).unwrap();
        for args in [
            &["prune"][..],
            &["prune", "--dry-run"],
            &["prune", "--json"],
        ] {
            let out = env.run(args);
            out.expect_code(4);
            assert!(out.stderr.contains("lock"), "{out:?}");
            assert!(out.stdout.is_empty(), "{out:?}");
        }
        assert_eq!(snapshot(&env), before);
    }

    // Free: the leftovers go (and the expired dumps), the stranger stays.
    let done = prune_json(&env, false);
    let rules = decisions(&env, &done);
    for p in &ing {
        let rel = p.strip_prefix(&env.dir).unwrap().display().to_string();
        assert_eq!(
            rules.get(&rel),
            Some(&("delete".to_string(), "leftover".to_string())),
            "{done:#}"
        );
        assert!(!p.exists(), "{} still there", p.display());
    }
    assert!(not_ours.exists());
    assert!(dump.exists());
    assert!(!gdir
        .join(format!("{}.public.t.{old}.dump", db.name))
        .exists());

    // A run removes them at its end as well (it holds the lock itself).
    plant_ing();
    env.run(&["run"]).expect_code(0);
    for p in &ing {
        assert!(!p.exists(), "{} still there after a run", p.display());
    }
    assert!(not_ours.exists());
}

#[test]
fn shortened_directory_names_are_recognised_and_pruned() {
    let db = fresh_db("prune_long");
    // Encoded, "schema.table" is far longer than a file name: its directory is shortened.
    let schema = format!("s{}", " ".repeat(60));
    let table = format!("t{}", "!".repeat(60));
    let long_group = format!("g{}", "?".repeat(150));
    db.sql(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {st} (id int); INSERT INTO {st} VALUES (1);
         CREATE TABLE a (id int); INSERT INTO a VALUES (2);",
        s = qi(&schema),
        st = qt(&schema, &table)
    ));
    let env = Env::new();
    let groups = format!(
        "[[group]]\nname = {}\ndatabase = {}\ntables = [\"public.a\"]\n",
        ts(&long_group),
        ts(&db.name)
    );
    env.config_for(&db)
        .backup("schema", "false")
        .extra(&groups)
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let report = env.report();
    let r = report["run_id"].as_str().unwrap().to_owned();
    let groups_in_report = report_groups(&report, &db.name);
    assert_eq!(groups_in_report.len(), 2, "{report:#}");
    let mut dirs = BTreeMap::new();
    for (name, g) in &groups_in_report {
        let file = checked_file(g);
        let dir = file.parent().unwrap().to_path_buf();
        assert!(
            dir.file_name().unwrap().to_string_lossy().contains('~'),
            "{name}: directory not shortened: {}",
            dir.display()
        );
        dirs.insert(name.clone(), (dir, file));
    }
    for d in [5, 10, 20] {
        copy_run(&env, &r, &rid_days_ago(d));
    }
    // A near miss in a shortened directory: another hash.
    let (_, (_, table_file)) = dirs.iter().find(|(n, _)| **n != long_group).unwrap();
    let name = table_file.file_name().unwrap().to_str().unwrap().to_owned();
    let old_name = name.replace(&r, &rid_days_ago(30));
    let i = old_name.rfind('~').unwrap() + 1;
    let mut near = old_name.clone();
    let c = if &near[i..i + 1] == "0" { "1" } else { "0" };
    near.replace_range(i..i + 1, c);
    let near = table_file.with_file_name(near);
    fs::write(&near, b"near miss").unwrap();

    env.config_for(&db)
        .backup("schema", "false")
        .extra(&format!("{groups}keep_min = 3\n"))
        .extra(&retention("7d", None, ""))
        .write(&env);
    let done = prune_json(&env, false);
    assert_eq!(done["errors"].as_array().unwrap().len(), 0, "{done:#}");
    let rules = decisions(&env, &done);
    for (name, (dir, _)) in &dirs {
        let rel = dir.strip_prefix(&env.dir).unwrap().display().to_string();
        let g = summary_group(&done, &rel);
        let configured = *name == long_group;
        // The configured group is known by its name and gets its keep_min; the ungrouped
        // table's name cannot be recovered from the directory.
        assert_eq!(g["name_known"], configured, "{g:#}");
        if configured {
            assert_eq!(g["group"], long_group.as_str());
            assert_eq!(g["keep_min"], 3);
        }
        let kept = if configured { 3 } else { 2 };
        assert_eq!(g["kept_files"], kept, "{g:#}");
        assert_eq!(g["deleted_files"], 4 - kept, "{g:#}");
        let left = list_files(dir);
        assert_eq!(left.len(), kept + usize::from(!configured), "{left:?}");
    }
    assert!(near.exists());
    assert!(rules.keys().all(|k| !k.contains("near")));
    let near_rel = near.strip_prefix(&env.dir).unwrap().display().to_string();
    assert!(
        done["ignored"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["path"] == near_rel.as_str()),
        "{done:#}"
    );
}

#[test]
fn retention_config_errors_name_the_key() {
    let env = Env::new();
    let cases: [(&str, &[&str]); 6] = [
        ("[retention]\nmax_age = \"4d\"\nkeep_min = 0\n", &["retention.keep_min", "0 is not ≥ 1"]),
        ("[retention]\nkeep_min = 2\n", &["retention.max_age", "required"]),
        ("[retention]\nmax_age = \"soon\"\n", &["retention.max_age", "\"soon\""]),
        ("[retention]\nmax_age = \"4d\"\nkeepmin = 1\n", &["retention", "keepmin"]),
        (
            "[retention]\nmax_age = \"4d\"\n[[group]]\nname = \"g\"\ndatabase = \"d\"\n\
             tables = [\"t\"]\nkeep_min = -1\n",
            &["group[0].keep_min", "-1"],
        ),
        (
            "[[group]]\nname = \"g\"\ndatabase = \"d\"\ntables = [\"t\"]\nmax_age = \"1 fortnight\"\n",
            &["group[0].max_age", "fortnight"],
        ),
    ];
    for (extra, needles) in cases {
        Config::offline(&env, "d").extra(extra).write(&env);
        config_error(&env, needles);
    }
    assert!(env.files().is_empty());

    // Without [retention], prune has nothing to go by.
    Config::offline(&env, "d").write(&env);
    let out = env.run(&["prune"]);
    out.expect_code(2);
    assert!(out.stderr.contains("[retention]"), "{out:?}");

    // With it but no backup directory yet: nothing to do.
    Config::offline(&env, "d")
        .extra(&retention("4d", Some(2), ""))
        .write(&env);
    let out = env.run(&["prune", "--json"]);
    out.expect_code(0);
    assert_eq!(out.json()["deleted_files"], 0);
    assert!(!env.dir.exists());
}
