//! Encryption at rest (issue #18, item 6): with `[encryption]`, every file a run writes is an
//! age file, with either engine and to the bucket too; `verify`, `restore` and `list` read
//! them back with `--identity`; the stock `age -d` decrypts them for stock `pg_restore`; a
//! missing or wrong identity is a clear error; prune treats `.age` names like plain ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use age::secrecy::ExposeSecret;
use serde_json::Value;

use crate::util::s3::*;
use crate::util::*;

/// Rows whose text would show in any unencrypted dump of the table.
const MARKER: &str = "plaintext-marker-4b1d";

/// An age key pair: the identity file (as `age-keygen` writes it) and the recipient.
struct Key {
    file: PathBuf,
    recipient: String,
}

fn new_key(env: &Env, name: &str) -> Key {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let file = env.path().join(name);
    fs::write(
        &file,
        format!(
            "# created: now\n# public key: {recipient}\n{}\n",
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    Key { file, recipient }
}

/// `order_items` has `items` rows (200 000: ≈ 12 MB of heap, enough to be split).
fn shop_db(hint: &str, items: u32) -> TestDb {
    let db = fresh_db(hint);
    db.sql(&format!(
        "CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO customers SELECT g, '{MARKER}-' || g FROM generate_series(1, 300) g;
         CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers (id));
         INSERT INTO orders SELECT g, g % 300 + 1 FROM generate_series(1, 2000) g;
         CREATE TABLE order_items (order_id int REFERENCES orders (id), note text);
         INSERT INTO order_items SELECT g % 2000 + 1, '{MARKER}' FROM generate_series(1, {items}) g;
         VACUUM ANALYZE;"
    ));
    db
}

fn groups(db: &TestDb, engine: &str) -> String {
    format!(
        "[[group]]\nname = \"orders\"\ndatabase = {d}\nengine = {e}\ntables = [\"public.orders\", \"public.order_items\"]\n\n\
         [[group]]\nname = \"customers\"\ndatabase = {d}\nengine = {e}\ntables = [\"public.customers\"]\n",
        d = ts(&db.name),
        e = ts(engine)
    )
}

fn encryption(key: &Key) -> String {
    format!("[encryption]\nrecipients = [{}]\n", ts(&key.recipient))
}

/// Every file under `dir` is an age file holding nothing readable: no archive magic, no
/// table data, no JSON of a report. The run lock and the bucket's upload state are ours and
/// hold no data.
fn assert_all_encrypted(dir: &Path) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = list_files(dir)
        .into_iter()
        .filter(|p| !p.to_string_lossy().starts_with(".pg_groupdump."))
        .collect();
    assert!(!files.is_empty(), "nothing written under {}", dir.display());
    for f in &files {
        assert!(
            f.to_string_lossy().ends_with(".age"),
            "{f:?} is not an encrypted file (all: {files:?})"
        );
        let data = fs::read(dir.join(f)).unwrap();
        assert!(
            data.starts_with(b"age-encryption.org/v1\n"),
            "{f:?} is not an age file"
        );
        for needle in [&b"PGDMP"[..], MARKER.as_bytes(), b"\"run_id\"", b"CREATE"] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{f:?} holds {:?} in the clear",
                String::from_utf8_lossy(needle)
            );
        }
    }
    files
}

/// The report of the only run, decrypted with the stock `age`.
fn decrypted_report(env: &Env, key: &Key) -> Value {
    let reports: Vec<PathBuf> = list_files(&env.dir.join("reports"));
    assert_eq!(reports.len(), 1, "{reports:?}");
    let text = age_decrypt(key, &env.dir.join("reports").join(&reports[0]));
    serde_json::from_slice(&text).expect("the decrypted report is JSON")
}

/// `age -d -i KEY FILE`: the plaintext.
fn age_decrypt(key: &Key, file: &Path) -> Vec<u8> {
    require_tool("age", "--version", "age");
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key.file)
        .arg(file)
        .output()
        .expect("run age");
    assert!(
        out.status.success(),
        "age -d {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `age -d -i KEY FILE | pg_restore ARGS`, as a shell pipeline: pg_restore's stdout.
fn age_pipe_pg_restore(key: &Key, file: &Path, args: &str) -> String {
    require_tool("age", "--version", "age");
    let script = format!(
        // Not pipefail: `pg_restore --list` stops reading after the TOC, and age then dies
        // of SIGPIPE. A failing age leaves pg_restore an archive it cannot read.
        "age -d -i '{}' '{}' | '{}' -h 127.0.0.1 -p {} -U postgres {args}",
        key.file.display(),
        file.display(),
        server().bin("pg_restore").display(),
        server().port
    );
    let mut c = Command::new("bash");
    c.arg("-c").arg(&script);
    clean_pg_env(&mut c);
    let out = c.stdin(Stdio::null()).output().expect("run bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn file_of(report: &Value, group: &str) -> PathBuf {
    let g = report_group(report, group);
    assert_eq!(g["status"], "ok", "{g:#}");
    PathBuf::from(g["file"].as_str().expect("file"))
}

fn encrypted_round_trip(engine: &str) {
    let db = shop_db(&format!("enc_{engine}"), 200_000);
    let env = Env::new();
    let key = new_key(&env, "key.txt");
    env.config_for(&db)
        .backup("schema", "true")
        .backup("globals", "true")
        .backup("jobs", "3")
        // order_items (≈ 12 MB) is copied by several sessions with the native engine.
        .backup("split_above", &ts("1MB"))
        .extra(&groups(&db, engine))
        .extra(&encryption(&key))
        .write(&env);
    let out = env.run(&["run"]);
    out.expect_code(0);
    let files = assert_all_encrypted(&env.dir);
    let report = decrypted_report(&env, &key);
    let run_id = report["run_id"].as_str().unwrap().to_string();
    for g in report["groups"].as_array().unwrap() {
        assert_eq!(g["status"], "ok", "{g:#}");
        if g["kind"] == "tables" {
            assert_eq!(g["engine"], engine, "{g:#}");
        }
        let file = PathBuf::from(g["file"].as_str().unwrap());
        assert!(file.to_string_lossy().ends_with(".age"), "{g:#}");
        assert_eq!(sha256_hex(&file), g["sha256"].as_str().unwrap());
    }
    assert!(
        files.iter().any(|f| f.starts_with("_globals")),
        "the globals are written too: {files:?}"
    );

    if engine == "native" {
        let attempts = report_group(&report, "orders")["attempts"]
            .as_array()
            .unwrap();
        let split = attempts.last().unwrap()["split"].as_array().cloned();
        assert!(
            split.is_some_and(|s| s.iter().any(|t| t["table"] == "public.order_items")),
            "order_items was split: {report:#}"
        );
    }

    // The stock age decrypts every archive for the stock pg_restore, from a pipe.
    let orders = file_of(&report, "orders");
    let listed = age_pipe_pg_restore(&key, &orders, "--list");
    assert!(listed.contains("TABLE DATA public order_items"), "{listed}");
    let schema = PathBuf::from(
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["kind"] == "schema")
            .expect("a schema dump")["file"]
            .as_str()
            .unwrap(),
    );
    assert!(age_pipe_pg_restore(&key, &schema, "--list").contains("TABLE public customers"));
    // Restored from a pipe into a database: the rows are back.
    let piped = fresh_db(&format!("enc_{engine}_piped"));
    age_pipe_pg_restore(
        &key,
        &schema,
        &format!("--section=pre-data -d \"{}\"", conninfo_db(&piped.name)),
    );
    for g in ["customers", "orders"] {
        age_pipe_pg_restore(
            &key,
            &file_of(&report, g),
            &format!("--data-only -d \"{}\"", conninfo_db(&piped.name)),
        );
    }
    for t in ["customers", "orders", "order_items"] {
        assert_same_rows(&db, &piped, "public", t);
    }
    // Decrypted to a file first, `pg_restore -j` reads it (positions unset: it scans).
    let plain = env.path().join("orders.dump");
    fs::write(&plain, age_decrypt(&key, &orders)).unwrap();
    let parallel = fresh_db(&format!("enc_{engine}_j"));
    let mut c = server().client(&server().bindir, "pg_restore");
    c.args(["-j", "2", "--no-owner", "-d", &conninfo_db(&parallel.name)])
        .arg(&plain);
    // The foreign key to customers cannot be restored without it (an error pg_restore
    // reports); the rows are there.
    c.output().expect("run pg_restore -j");
    for t in ["orders", "order_items"] {
        assert_same_rows(&db, &parallel, "public", t);
    }

    // verify --restore and restore decrypt with --identity.
    let id = key.file.to_str().unwrap();
    let out = env.run(&["verify", "--restore", "--identity", id]);
    out.expect_code(0);
    assert!(out.stderr.contains("dumps checked, 0 bad"), "{out:?}");
    // `restore` into a new database, decrypting with --identity.
    let restore = |target: &str, args: &[&str]| {
        let mut all = vec!["restore", "--target", target, "--identity", id];
        all.extend_from_slice(args);
        env.run(&all).expect_code(0);
    };
    // customers first: the foreign key of orders to it is restored too.
    let target = unique_name(&format!("enc_{engine}_target"));
    for g in ["customers", "orders"] {
        restore(&target, &["--group", g]);
    }
    let target = db_named(&target);
    for t in ["customers", "orders", "order_items"] {
        assert_same_rows(&db, &target, "public", t);
    }
    let whole = unique_name(&format!("enc_{engine}_whole"));
    restore(
        &whole,
        &["--run", &run_id, "--database", &db.name, "--jobs", "2"],
    );
    let whole = db_named(&whole);
    for t in ["customers", "orders", "order_items"] {
        assert_same_rows(&db, &whole, "public", t);
    }
    let at = unique_name(&format!("enc_{engine}_at"));
    restore(
        &at,
        &["--at", "2100-01-01T00:00:00Z", "--database", &db.name],
    );
    assert_same_rows(&db, &db_named(&at), "public", "customers");

    // list reads the encrypted reports with --identity (the engine comes from them).
    let out = env.run(&["list", "--json", "--identity", id]);
    out.expect_code(0);
    let listing = out.json();
    let g = listing["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "orders")
        .unwrap_or_else(|| panic!("{listing:#}"));
    assert_eq!(g["newest"]["engine"], engine, "{g:#}");
    assert_eq!(listing["encrypted_reports_unread"], 0, "{listing:#}");
    // Nothing decrypted is left behind, and nothing readable was ever written.
    assert_all_encrypted(&env.dir);
}

#[test]
fn encrypted_run_native_engine_writes_only_age_files_that_restore() {
    encrypted_round_trip("native");
}

#[test]
fn encrypted_run_pg_dump_engine_writes_only_age_files_that_restore() {
    encrypted_round_trip("pg_dump");
}

#[test]
fn encryption_a_missing_or_wrong_identity_is_a_clear_error() {
    let db = shop_db("enc_keys", 5000);
    let env = Env::new();
    let key = new_key(&env, "key.txt");
    let wrong = new_key(&env, "wrong.txt");
    env.config_for(&db)
        .backup("schema", "true")
        .extra(&groups(&db, "native"))
        .extra(&encryption(&key))
        .write(&env);
    env.run(&["run"]).expect_code(0);

    // No --identity: exit 2, naming the file and the option.
    for args in [
        vec!["verify"],
        vec!["restore", "--group", "orders", "--target", "enc_keys_never"],
    ] {
        let out = env.run(&args);
        out.expect_code(2);
        assert!(
            out.stderr.contains(".age is encrypted") && out.stderr.contains("--identity"),
            "{out:?}"
        );
    }

    // The wrong identity: exit 2, naming the file; nothing restored.
    let target = unique_name("enc_keys_target");
    let w = wrong.file.to_str().unwrap();
    let out = env.run(&[
        "restore",
        "--group",
        "orders",
        "--target",
        &target,
        "--identity",
        w,
    ]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("no identity given with --identity matches the recipients of")
            && out.stderr.contains(".dump.age"),
        "{out:?}"
    );
    assert!(
        !server().database_exists(&target) || db_named(&target).user_tables().is_empty(),
        "nothing is restored with the wrong key"
    );
    let out = env.run(&["verify", "--identity", w]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("no identity given with --identity matches"),
        "{out:?}"
    );

    // An identity file that is not one.
    fs::write(env.path().join("junk.txt"), "age1notasecret\n").unwrap();
    let out = env.run(&[
        "verify",
        "--identity",
        env.path().join("junk.txt").to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(out.stderr.contains("not an age X25519 identity"), "{out:?}");

    // list without an identity still lists the dumps, from their names and sizes.
    let out = env.run(&["list", "--json"]);
    out.expect_code(0);
    let listing = out.json();
    let g = listing["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "orders")
        .unwrap_or_else(|| panic!("{listing:#}"));
    assert_eq!(g["status"], "ok", "{g:#}");
    assert_eq!(g["kept"], 1, "{g:#}");
    assert_eq!(listing["encrypted_reports_unread"], 1, "{listing:#}");
    assert!(
        g["newest"]["file"].as_str().unwrap().ends_with(".dump.age"),
        "{g:#}"
    );
    assert!(out.stderr.contains("--identity"), "{out:?}");
}

#[test]
fn encryption_bad_recipients_are_config_errors_naming_the_key() {
    let env = Env::new();
    let good = new_key(&env, "key.txt");
    let secret = fs::read_to_string(&good.file).unwrap();
    let secret = secret.lines().last().unwrap().to_string();
    let file = env.path().join("recipients.txt");
    fs::write(
        &file,
        format!("# ops team\n\n{}\nage1bad\n", good.recipient),
    )
    .unwrap();
    let cases = [
        (
            "recipients = [\"age1nope\"]".to_string(),
            "encryption.recipients[0]",
        ),
        (
            format!("recipients = [{}, {}]", ts(&good.recipient), ts(&secret)),
            "encryption.recipients[1]",
        ),
        ("recipients = []".to_string(), "encryption.recipients"),
        (
            format!("recipients_file = {}", ts(file.to_str().unwrap())),
            "encryption.recipients_file",
        ),
        (
            "recipients_file = \"/nonexistent/recipients\"".to_string(),
            "encryption.recipients_file",
        ),
        ("identity = \"x\"".to_string(), "identity"),
    ];
    for (toml, needle) in cases {
        Config::offline(&env, "db")
            .extra(&format!("[encryption]\n{toml}\n"))
            .write(&env);
        let out = env.run(&["list"]);
        out.expect_code(2);
        assert!(
            out.stderr.contains(needle) && out.stderr.contains("groups.toml"),
            "{toml}: {out:?}"
        );
        assert!(
            !out.stderr.contains(&secret),
            "the secret key is never printed: {out:?}"
        );
    }
    // The recipients file without its bad line is good.
    fs::write(&file, format!("# ops team\n\n{}\n", good.recipient)).unwrap();
    Config::offline(&env, "db")
        .extra(&format!(
            "[encryption]\nrecipients_file = {}\n",
            ts(file.to_str().unwrap())
        ))
        .write(&env);
    env.run(&["list"]).expect_code(0);
}

#[test]
fn encryption_prune_keeps_the_newest_encrypted_dump() {
    let db = shop_db("enc_prune", 5000);
    let env = Env::new();
    let key = new_key(&env, "key.txt");
    env.config_for(&db)
        .extra(&groups(&db, "native"))
        .extra(&encryption(&key))
        .extra("[retention]\nmax_age = \"7d\"\nkeep_min = 1\nprune_after_run = false")
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let report = decrypted_report(&env, &key);
    let newest = file_of(&report, "orders");
    let run_id = report["run_id"].as_str().unwrap();
    let dated = |days: i64| {
        let id = (chrono::Utc::now() - chrono::Duration::days(days))
            .format("%Y%m%dT%H%M%SZ")
            .to_string();
        PathBuf::from(newest.to_string_lossy().replace(run_id, &id))
    };
    let (old, older) = (dated(10), dated(20));
    fs::copy(&newest, &old).unwrap();
    fs::copy(&newest, &older).unwrap();
    env.run(&["prune"]).expect_code(0);
    assert!(newest.exists(), "the newest dump is kept");
    assert!(
        !old.exists() && !older.exists(),
        "old encrypted dumps are pruned"
    );

    // Every dump old: the newest of them is kept all the same.
    let customers = file_of(&report, "customers");
    let old = PathBuf::from(
        customers
            .to_string_lossy()
            .replace(run_id, "20200101T000000Z"),
    );
    fs::rename(&customers, &old).unwrap();
    let older = PathBuf::from(
        customers
            .to_string_lossy()
            .replace(run_id, "20190101T000000Z"),
    );
    fs::copy(&old, &older).unwrap();
    env.run(&["prune"]).expect_code(0);
    assert!(old.exists(), "a group's newest dump is never pruned");
    assert!(!older.exists());
}

#[test]
fn encryption_s3_round_trip_and_wrong_identity() {
    let s3 = S3::start();
    let db = shop_db("enc_s3", 5000);
    let env = Env::new();
    let key = new_key(&env, "key.txt");
    let wrong = new_key(&env, "wrong.txt");
    let storage = s3.storage(&env, "enc", None, "keep_local = false");
    env.config_for(&db)
        .backup("schema", "true")
        .extra(&groups(&db, "native"))
        .extra(&encryption(&key))
        .extra(&storage)
        .write(&env);
    env.run(&["run"]).expect_code(0);
    let objects = s3.objects("enc");
    assert_eq!(objects.len(), 4, "three dumps and the report: {objects:?}");
    let bucket_dir = s3.object("enc", Path::new(""));
    assert_all_encrypted(&bucket_dir);
    // Nothing readable stays locally either.
    let local: Vec<PathBuf> = env
        .files()
        .into_iter()
        .filter(|p| !p.to_string_lossy().starts_with(".pg_groupdump."))
        .collect();
    assert!(local.is_empty(), "{local:?}");

    let id = key.file.to_str().unwrap();
    let out = env.run(&["verify", "--restore", "--identity", id]);
    out.expect_code(0);
    assert!(out.stderr.contains("3 dumps checked, 0 bad"), "{out:?}");
    let target = unique_name("enc_s3_target");
    env.run(&[
        "restore",
        "--group",
        "customers",
        "--target",
        &target,
        "--identity",
        id,
    ])
    .expect_code(0);
    assert_same_rows(&db, &db_named(&target), "public", "customers");

    let never = unique_name("enc_s3_never");
    let out = env.run(&[
        "restore",
        "--group",
        "customers",
        "--target",
        &never,
        "--identity",
        wrong.file.to_str().unwrap(),
    ]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("no identity given with --identity matches the recipients of"),
        "{out:?}"
    );
    assert!(env.files().iter().all(|p| !p.starts_with(".from-bucket")));
}

/// A full disk while encrypting: with either engine, the big group fails naming a full disk,
/// no `.ing` is left, the small group is complete. Needs root (it mounts a 2 MiB tmpfs).
#[test]
fn encryption_disk_full_fails_the_group_cleanly() {
    require_root("it mounts a tmpfs");
    let db = fresh_db("enc_disk_full");
    db.sql(
        "CREATE TABLE big AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS info
           FROM generate_series(1, 60000) g;
         CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 100) g;
         ANALYZE;",
    );
    for engine in ["pg_dump", "native"] {
        let env = Env::new();
        let key = new_key(&env, "key.txt");
        let _tmpfs = crate::faults::Tmpfs::mount(&env.dir, "2m")
            .unwrap_or_else(|e| panic!("cannot mount a tmpfs on {}: {e}", env.dir.display()));
        env.config_for(&db)
            .backup("jobs", "1")
            .backup("compression", &ts("none"))
            .backup("engine", &ts(engine))
            .extra(&format!(
                "[[group]]\nname = \"big\"\ndatabase = {d}\ntables = [\"public.big\"]\n\n\
                 [[group]]\nname = \"small\"\ndatabase = {d}\ntables = [\"public.small\"]\n",
                d = ts(&db.name)
            ))
            .extra(&encryption(&key))
            .write(&env);
        let out = env.run(&["run"]);
        out.expect_code(1);
        env.assert_no_ing();
        assert!(out.stderr.contains("disk full"), "{engine}: {out:?}");
        let report = decrypted_report(&env, &key);
        let big = report_group(&report, "big");
        assert_eq!(big["status"], "failed", "{engine}: {big:#}");
        assert!(
            big["error"].as_str().unwrap().contains("disk full"),
            "{engine}: {big:#}"
        );
        let small = file_of(&report, "small");
        assert!(age_pipe_pg_restore(&key, &small, "--list").contains("TABLE DATA public small"));
        assert_all_encrypted(&env.dir);
    }
}
