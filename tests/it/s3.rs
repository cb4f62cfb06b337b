//! `[storage]`: every dump uploaded to an S3 bucket (a real S3 server, s3s-fs, on loopback),
//! atomically, under the names it has below `backup.dir`; verify, restore and prune reading
//! the bucket; uploads that fail, wrong credentials, a run killed mid-upload.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::s3::*;
use crate::util::*;

/// `orders` (two tables) and `customers`, grouped.
fn shop_db(hint: &str) -> TestDb {
    let db = fresh_db(hint);
    db.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 300) g;
         CREATE TABLE orders (id int PRIMARY KEY, customer int);
         INSERT INTO orders SELECT g, g % 300 + 1 FROM generate_series(1, 2000) g;
         CREATE TABLE order_items (order_id int REFERENCES orders (id), qty int);
         INSERT INTO order_items SELECT g % 2000 + 1, g FROM generate_series(1, 5000) g;",
    );
    db
}

fn shop_groups(db: &TestDb) -> String {
    format!(
        "[[group]]\nname = \"orders\"\ndatabase = {d}\ntables = [\"public.orders\", \"public.order_items\"]\n\n\
         [[group]]\nname = \"customers\"\ndatabase = {d}\ntables = [\"public.customers\"]\n",
        d = ts(&db.name)
    )
}

fn sha256_of(path: &Path) -> String {
    sha256_hex(path)
}

/// The path of a report entry's file relative to the backup directory.
fn relative(env: &Env, g: &Value) -> PathBuf {
    let file = PathBuf::from(g["file"].as_str().expect("file"));
    file.strip_prefix(&env.dir)
        .expect("below dir")
        .to_path_buf()
}

fn assert_no_secret(out: &Output) {
    assert!(
        !out.stdout.contains(SECRET_KEY) && !out.stderr.contains(SECRET_KEY),
        "the secret key was printed:\n{out:?}"
    );
}

#[test]
fn s3_run_uploads_every_dump_and_verify_and_restore_read_the_bucket() {
    let s3 = S3::start();
    let db = shop_db("s3_up");
    let env = Env::new();
    let metrics = env.path().join("m.prom");
    let storage = s3.storage(&env, "host1/pg", None, "keep_local = false");
    env.config_for(&db)
        .backup("schema", "true")
        .extra(&shop_groups(&db))
        .extra(&format!(
            "[metrics]\ntextfile = {}",
            ts(metrics.to_str().unwrap())
        ))
        .extra(&storage)
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(0);
    assert_no_secret(&out);
    assert!(
        out.stderr.contains("plain http"),
        "an http:// endpoint is warned about: {out:?}"
    );
    // Nothing kept locally but the state of the uploads and the lock.
    let local: Vec<PathBuf> = env
        .files()
        .into_iter()
        .filter(|p| !p.to_string_lossy().starts_with(".pg_groupdump."))
        .collect();
    assert!(local.is_empty(), "local files left: {local:?}");
    let objects = s3.objects("host1/pg");
    let run_id = objects
        .iter()
        .find(|p| p.starts_with("reports"))
        .and_then(|p| p.file_stem())
        .expect("a report in the bucket")
        .to_string_lossy()
        .into_owned();
    let report =
        read_json(&s3.object("host1/pg", &PathBuf::from(format!("reports/{run_id}.json"))));
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{report:#}");
    let mut uploaded = 0;
    for g in groups {
        assert_eq!(g["status"], "ok", "{g:#}");
        let rel = relative(&env, g);
        assert!(objects.contains(&rel), "{rel:?} not in {objects:?}");
        let object = s3.object("host1/pg", &rel);
        assert_eq!(sha256_of(&object), g["sha256"].as_str().unwrap(), "{rel:?}");
        assert_eq!(
            g["object"].as_str().unwrap(),
            format!("s3://{BUCKET}/host1/pg/{}", rel.display())
        );
        assert_eq!(g["uploaded_bytes"], g["bytes"]);
        uploaded += g["bytes"].as_u64().unwrap();
    }
    assert_eq!(objects.len(), 4, "three dumps and the report: {objects:?}");
    // Every object carries its file's SHA-256 as metadata: the report's for the dumps.
    for g in groups {
        assert_eq!(
            s3.user_metadata("host1/pg", &relative(&env, g), "sha256")
                .as_deref(),
            g["sha256"].as_str(),
            "{g:#}"
        );
    }
    let report_rel = PathBuf::from(format!("reports/{run_id}.json"));
    assert_eq!(
        s3.user_metadata("host1/pg", &report_rel, "sha256"),
        Some(sha256_of(&s3.object("host1/pg", &report_rel)))
    );
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    let prom = fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains(&format!("pg_groupdump_run_uploaded_bytes {uploaded}")),
        "{prom}"
    );

    // list sees the bucket's dumps (nothing is left locally), with their run's report.
    let out = env.run(&["list", "--json"]);
    out.expect_code(0);
    let listing: Value = serde_json::from_str(&out.stdout).expect("list --json");
    for name in ["orders", "customers"] {
        let g = listing["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == name && g["kind"] == "tables")
            .unwrap_or_else(|| panic!("{name} not listed: {listing:#}"));
        let want = groups.iter().find(|r| r["group"] == name).unwrap();
        assert_eq!(g["status"], "ok", "{g:#}");
        assert_eq!(g["kept"], 1, "{g:#}");
        assert_eq!(g["newest"]["run_id"], run_id.as_str(), "{g:#}");
        assert_eq!(g["newest"]["bytes"], want["bytes"], "{g:#}");
        assert_eq!(g["newest"]["engine"], "native", "{g:#}");
    }

    // verify --restore reads the bucket (nothing is left locally).
    let out = env.run(&["verify", "--restore"]);
    out.expect_code(0);
    assert!(out.stderr.contains("3 dumps checked, 0 bad"), "{out:?}");

    // A bad object in the bucket is found.
    let orders = relative(&env, report_group(&report, "orders"));
    let obj = s3.object("host1/pg", &orders);
    let good = fs::read(&obj).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10] ^= 0xff;
    fs::write(&obj, &bad).unwrap();
    env.run(&["verify"]).expect_code(1);
    fs::write(&obj, &good).unwrap();

    // An object whose metadata is not the report's sha256 is bad; one without (uploaded by
    // an older version) is checked against the report only, with a note.
    let sha = report_group(&report, "orders")["sha256"].as_str().unwrap();
    let wrong = "0".repeat(64);
    s3.set_user_metadata("host1/pg", &orders, "sha256", &wrong);
    let out = env.run(&["verify"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "the object's sha256 metadata is {wrong}, the report says {sha}"
        )),
        "{out:?}"
    );
    fs::remove_file(s3.metadata_file("host1/pg", &orders)).unwrap();
    let out = env.run(&["verify"]);
    out.expect_code(0);
    assert!(out.stderr.contains("no sha256 metadata"), "{out:?}");
    s3.set_user_metadata("host1/pg", &orders, "sha256", sha);
    // The report object is checked against its own metadata.
    let report_sha = sha256_of(&s3.object("host1/pg", &report_rel));
    s3.set_user_metadata("host1/pg", &report_rel, "sha256", &wrong);
    let out = env.run(&["verify"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "BAD  the run report: the object's sha256 metadata is {wrong}, its bytes hash to {report_sha}"
        )),
        "{out:?}"
    );
    s3.set_user_metadata("host1/pg", &report_rel, "sha256", &report_sha);

    // restore of one group from the bucket into a new database.
    let target = unique_name("s3_up_target");
    let out = env.run(&["restore", "--group", "orders", "--target", &target]);
    out.expect_code(0);
    let target = db_named(&target);
    // The foreign key to customers cannot be restored without it; the rows are there.
    for t in ["orders", "order_items"] {
        assert_same_rows(&db, &target, "public", t);
    }

    // A whole database from the run, from the bucket.
    let whole = unique_name("s3_up_whole");
    let out = env.run(&[
        "restore",
        "--run",
        &run_id,
        "--database",
        &db.name,
        "--target",
        &whole,
    ]);
    out.expect_code(0);
    let whole = db_named(&whole);
    for t in ["customers", "orders", "order_items"] {
        assert_same_rows(&db, &whole, "public", t);
    }
    assert!(env.files().iter().all(|p| !p.starts_with(".from-bucket")));
}

#[test]
fn s3_prune_deletes_old_objects_by_the_same_rules() {
    let s3 = S3::start();
    let db = shop_db("s3_prune");
    let env = Env::new();
    let storage = s3.storage(&env, "p", None, "");
    env.config_for(&db)
        .extra(&shop_groups(&db))
        .extra("[retention]\nmax_age = \"7d\"\nkeep_min = 1\nprune_after_run = false")
        .extra(&storage)
        .write(&env);
    let report = env.run_ok(&[]);
    let orders = relative(&env, report_group(&report, "orders"));
    let dir = orders.parent().unwrap().to_path_buf();
    let name = orders.file_name().unwrap().to_string_lossy().into_owned();
    let run_id = report["run_id"].as_str().unwrap();
    // Older dumps of the group in the bucket, one ten days old and one a day old, and an
    // object that is not ours.
    let old = |days: i64| {
        (chrono::Utc::now() - chrono::Duration::days(days))
            .format("%Y%m%dT%H%M%SZ")
            .to_string()
    };
    let (ten, one) = (old(10), old(1));
    for id in [&ten, &one] {
        let p = s3.object("p", &dir.join(name.replace(run_id, id)));
        fs::copy(s3.object("p", &orders), &p).unwrap();
    }
    let notes = s3.object("p", &dir.join("notes.txt"));
    fs::write(&notes, b"keep me").unwrap();
    // The local copies of the old dumps are not there: the bucket is pruned on its own terms.
    let out = env.run(&["prune", "--json"]);
    out.expect_code(0);
    let objects = s3.objects("p");
    let has = |id: &str| objects.contains(&dir.join(name.replace(run_id, id)));
    assert!(
        !has(&ten),
        "the 10-day-old dump is still there: {objects:?}"
    );
    assert!(has(&one) && has(run_id), "{objects:?}");
    assert!(notes.exists());
    let json = out.json();
    assert!(
        json["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["deleted_files"] == 1 && g["dir"] == dir.to_str().unwrap()),
        "{json:#}"
    );
}

#[test]
fn s3_wrong_credentials_end_the_run_before_any_dump_with_exit_3() {
    let s3 = S3::start();
    let db = shop_db("s3_creds");
    let env = Env::new();
    let storage = s3.storage(&env, "x", Some("wrong-secret-key"), "");
    env.config_for(&db)
        .extra(&shop_groups(&db))
        .extra(&storage)
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(3);
    assert_no_secret(&out);
    assert!(!out.stderr.contains("wrong-secret-key"), "{out:?}");
    assert!(
        out.stderr.contains("storage.url s3://backups/x"),
        "the error names the storage: {out:?}"
    );
    assert!(env.dumps().is_empty(), "{:?}", env.files());
    assert!(s3.objects("x").is_empty());
}

/// A database whose one group's archive is about 40 MB (random text, no compression): its
/// upload takes several parts of 5 MiB, long enough to be caught.
fn big_db(hint: &str) -> TestDb {
    let db = fresh_db(hint);
    db.sql(
        "CREATE TABLE big AS SELECT g AS id,
           md5(random()::text) || md5(random()::text) || md5(random()::text) AS a
         FROM generate_series(1, 400000) g;
         CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 10) g;",
    );
    db
}

fn big_config(env: &Env, db: &TestDb, s3: &S3, prefix: &str, extra: &str) {
    let groups = format!(
        "[[group]]\nname = \"big\"\ndatabase = {d}\ntables = [\"public.big\"]\n\n\
         [[group]]\nname = \"small\"\ndatabase = {d}\ntables = [\"public.small\"]\n",
        d = ts(&db.name)
    );
    let storage = s3.storage(env, prefix, None, &format!("part_size = \"5MiB\"\n{extra}"));
    env.config_for(db)
        .backup("compression", &ts("none"))
        .backup("jobs", "1")
        .extra(&groups)
        .extra(&storage)
        .write(env);
}

/// Starts `pg_groupdump run` in the background.
/// Waits until the run's upload of the big group has started (its id is recorded).
fn wait_for_big_upload(env: &Env) {
    wait_until(
        "the big group's upload starts",
        Duration::from_secs(120),
        || {
            fs::read_to_string(env.dir.join(".pg_groupdump.uploads"))
                .is_ok_and(|s| s.contains("/big/"))
        },
    );
}

fn spawn_run(env: &Env) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pg_groupdump"));
    c.arg("-c")
        .arg(&env.config)
        .arg("run")
        .current_dir(env.path());
    clean_pg_env(&mut c);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pg_groupdump")
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn s3_server_gone_mid_upload_fails_the_group_and_keeps_its_local_file() {
    let mut s3 = S3::start();
    let db = big_db("s3_gone");
    let env = Env::new();
    big_config(&env, &db, &s3, "g", "keep_local = false");
    let run = spawn_run(&env);
    wait_for_big_upload(&env);
    s3.kill();
    let out = run.wait_with_output().unwrap();
    // Its report could not go up either; it is kept locally.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = env.newest_report();
    let big = report_group(&report, "big");
    assert_eq!(big["status"], "failed", "{big:#}");
    let error = big["error"].as_str().unwrap();
    assert!(
        error.contains("upload of") && error.contains("the local file"),
        "{error}"
    );
    // The local file is kept, complete.
    let file = PathBuf::from(big["file"].as_str().unwrap());
    assert_eq!(sha256_of(&file), big["sha256"].as_str().unwrap());
    // No object under the final key.
    s3.restart();
    let rel = relative(&env, big);
    assert!(!s3.object("g", &rel).exists(), "{:?}", s3.objects("g"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(SECRET_KEY));
    // Every file of the run is recorded as not in the bucket, its report too.
    let run1 = report["run_id"].as_str().unwrap();
    let unsent: Value = read_json(&env.dir.join(".pg_groupdump.unsent"));
    let unsent: Vec<PathBuf> = unsent["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap()))
        .collect();
    let report1_rel = PathBuf::from(format!("reports/{run1}.json"));
    assert!(
        unsent.contains(&rel) && unsent.contains(&report1_rel),
        "{unsent:?}"
    );

    // The next run, the server up, uploads them after its own dumps, and says so.
    let out = env.run(&["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains("whose upload had failed"), "{out:?}");
    let objects = s3.objects("g");
    let run2 = objects
        .iter()
        .filter(|p| p.starts_with("reports"))
        .filter_map(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .max()
        .unwrap();
    assert_ne!(run2, run1);
    let report2 = read_json(&s3.object("g", &PathBuf::from(format!("reports/{run2}.json"))));
    let retried = report2["retried_uploads"]
        .as_array()
        .expect("retried_uploads");
    let files: Vec<PathBuf> = retried
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "{r:#}");
            relative(&env, r)
        })
        .collect();
    let (mut want, mut got) = (unsent.clone(), files.clone());
    want.sort();
    got.sort();
    assert_eq!(got, want, "{report2:#}");
    let r = retried.iter().find(|r| relative(&env, r) == rel).unwrap();
    assert_eq!(r["bytes"], big["bytes"], "{r:#}");
    assert_eq!(
        r["object"].as_str().unwrap(),
        format!("s3://{BUCKET}/g/{}", rel.display())
    );
    for f in &unsent {
        assert!(objects.contains(f), "{f:?} not in {objects:?}");
        assert_eq!(
            s3.user_metadata("g", f, "sha256"),
            Some(sha256_of(&s3.object("g", f))),
            "{f:?}"
        );
    }
    assert_eq!(
        sha256_of(&s3.object("g", &rel)),
        big["sha256"].as_str().unwrap()
    );
    // keep_local = false: up, so no longer kept locally; nothing left to send.
    assert!(env.dumps().is_empty(), "{:?}", env.files());
    let state = read_json(&env.dir.join(".pg_groupdump.unsent"));
    assert_eq!(state["files"], serde_json::json!([]), "{state:#}");
    assert_eq!(state["run_in_progress"], false, "{state:#}");
    // The failed run, read from the bucket, restores.
    let out = env.run(&["verify", "--restore", "--run", run1]);
    out.expect_code(0);
    assert!(
        out.stderr.contains("dumps checked, 0 bad") && !out.stderr.contains(": 0 dumps checked"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("its upload failed in this run"),
        "{out:?}"
    );
}

/// The paths in `retried_uploads` of the newest report in the bucket under `prefix`.
fn retried_in_bucket(env: &Env, s3: &S3, prefix: &str) -> Vec<PathBuf> {
    let run = s3
        .objects(prefix)
        .into_iter()
        .filter(|p| p.starts_with("reports"))
        .max()
        .expect("a report in the bucket");
    let report = read_json(&s3.object(prefix, &run));
    let mut files: Vec<PathBuf> = report["retried_uploads"]
        .as_array()
        .unwrap_or_else(|| panic!("no retried_uploads: {report:#}"))
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "{r:#}");
            relative(env, r)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn s3_unsent_state_is_trusted_and_a_lost_one_is_rebuilt_from_a_listing() {
    let mut s3 = S3::start();
    let db = big_db("s3_unsent");
    let env = Env::new();
    big_config(&env, &db, &s3, "u", "keep_local = false");
    let run = spawn_run(&env);
    wait_for_big_upload(&env);
    s3.kill();
    run.wait_with_output().unwrap();
    s3.restart();
    let report1 = env.newest_report();
    let big = relative(&env, report_group(&report1, "big"));
    let state = env.dir.join(".pg_groupdump.unsent");
    let mut left: Vec<PathBuf> = read_json(&state)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| PathBuf::from(f.as_str().unwrap()))
        .filter(|f| *f != big)
        .collect();
    left.sort();
    assert!(!left.is_empty(), "only the big dump was not uploaded");
    // A sound state (no run under way) is trusted: only what it names goes up, no listing.
    fs::write(
        &state,
        serde_json::to_vec(&serde_json::json!({"run_in_progress": false, "files": [big]})).unwrap(),
    )
    .unwrap();
    env.run(&["run"]).expect_code(0);
    assert_eq!(retried_in_bucket(&env, &s3, "u"), vec![big.clone()]);
    for f in &left {
        assert!(env.dir.join(f).is_file(), "{f:?} was not kept");
        assert!(!s3.object("u", f).exists(), "{f:?} went up unasked");
    }
    // A lost state is rebuilt by comparing the bucket with the backup directory.
    fs::remove_file(&state).unwrap();
    env.run(&["run"]).expect_code(0);
    assert_eq!(retried_in_bucket(&env, &s3, "u"), left);
    for f in &left {
        assert!(s3.object("u", f).exists(), "{f:?} not uploaded");
        assert!(!env.dir.join(f).exists(), "{f:?} still local");
    }
}

#[test]
fn s3_run_killed_mid_upload_leaves_no_object_and_the_next_run_aborts_its_upload() {
    let s3 = S3::start();
    let db = big_db("s3_kill");
    let env = Env::new();
    big_config(&env, &db, &s3, "k", "");
    let run = spawn_run(&env);
    let pid = run.id();
    // Caught while the big group's parts go up: the server held still, the run killed.
    wait_for_big_upload(&env);
    s3.freeze();
    signal(pid, "KILL");
    let _ = run.wait_with_output();
    s3.thaw();
    let stale = s3.open_uploads();
    assert!(!stale.is_empty(), "no upload left open by the killed run");
    let big_dir = PathBuf::from(encode_component(&db.name)).join("big");
    assert!(
        s3.objects("k").iter().all(|p| !p.starts_with(&big_dir)),
        "an object of the killed run: {:?}",
        s3.objects("k")
    );
    let killed_dump: Vec<PathBuf> = env
        .files()
        .into_iter()
        .filter(|p| p.starts_with(&big_dir))
        .collect();
    assert_eq!(killed_dump.len(), 1, "{:?}", env.files());
    // The next run aborts it, uploads its own dumps, then the killed run's committed dump:
    // the killed run left the state of the unsent files saying a run was under way, so the
    // next one compared the bucket with the backup directory.
    let out = env.run(&["run"]);
    out.expect_code(0);
    assert!(out.stderr.contains("aborted the upload of"), "{out:?}");
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    let report = env.newest_report();
    let big = report_group(&report, "big");
    let object = s3.object("k", &relative(&env, big));
    assert_eq!(sha256_of(&object), big["sha256"].as_str().unwrap());
    let retried = report["retried_uploads"]
        .as_array()
        .expect("retried_uploads");
    let killed = retried
        .iter()
        .find(|r| relative(&env, r) == killed_dump[0])
        .unwrap_or_else(|| panic!("the killed run's dump was not retried: {report:#}"));
    assert_eq!(killed["ok"], true, "{killed:#}");
    let killed_object = s3.object("k", &killed_dump[0]);
    assert_eq!(
        sha256_of(&killed_object),
        sha256_of(&env.dir.join(&killed_dump[0]))
    );
    let mut in_bucket: Vec<PathBuf> = s3
        .objects("k")
        .into_iter()
        .filter(|p| p.starts_with(&big_dir))
        .collect();
    in_bucket.sort();
    let mut want = vec![killed_dump[0].clone(), relative(&env, big)];
    want.sort();
    assert_eq!(in_bucket, want);
}

#[test]
fn s3_storage_errors_name_the_key() {
    let env = Env::new();
    for (storage, key, needle) in [
        ("endpoint = \"x\"", "storage.url", "is required"),
        ("url = \"gs://b/p\"", "storage.url", "only s3://"),
        (
            "url = \"s3://Bad_Bucket/p\"",
            "storage.url",
            "not a bucket name",
        ),
        (
            "url = \"s3://backups/p\"\nendpoint = \"ftp://h\"",
            "storage.endpoint",
            "https://",
        ),
        (
            "url = \"s3://backups/p\"\npart_size = \"1MiB\"",
            "storage.part_size",
            "between 5MiB and 5GiB",
        ),
        (
            "url = \"s3://backups/p\"\ncredentials_file = \"creds\"",
            "storage.credentials_file",
            "absolute",
        ),
        (
            "url = \"s3://backups/p\"\nsecret_key = \"x\"",
            "secret_key",
            "unknown field",
        ),
    ] {
        Config::offline(&env, "db")
            .extra(&format!("[storage]\n{storage}"))
            .write(&env);
        config_error(&env, &[key, needle]);
    }
}
