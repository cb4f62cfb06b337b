//! Running it unattended: metrics, logs, the progress display, systemd units, completions.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// A database with two one-table groups, one of which the role `bk_*` may not read.
fn one_readable_one_not(hint: &str) -> (TestDb, String) {
    let db = fresh_db(hint);
    let role = unique_name("bk");
    db.sql(&format!(
        "CREATE TABLE good (id int); INSERT INTO good SELECT generate_series(1, 50);
         CREATE TABLE secret (id int); INSERT INTO secret VALUES (1);
         CREATE ROLE {r} LOGIN;
         GRANT CONNECT ON DATABASE {d} TO {r};
         GRANT USAGE ON SCHEMA public TO {r};
         GRANT SELECT ON good TO {r};",
        r = qi(&role),
        d = qi(&db.name)
    ));
    (db, role)
}

fn gauge(
    samples: &[prometheus_parse::Sample],
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{metric} is not a gauge: {other:?}"),
        })
}

fn parse_prom(path: &Path) -> Vec<prometheus_parse::Sample> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}\n{text}", path.display()))
        .samples
}

#[test]
fn metrics_textfile_after_a_run_with_a_failing_group() {
    let (db, role) = one_readable_one_not("metrics");
    let env = Env::new();
    let prom = env.path().join("textfile").join("pg_groupdump.prom");
    // The default engine. The schema-only dump it takes first (`schema = false`) cannot lock
    // `secret` (no privilege), so every group of the database is dumped with pg_dump (a
    // fallback, with a warning); what is tested here holds either way.
    env.config_for(&db)
        .connection("user", &ts(&role))
        .backup("schema", "false")
        .extra(&format!(
            "[metrics]\ntextfile = {}\n",
            ts(prom.to_str().unwrap())
        ))
        .write(&env);
    let before = chrono::Utc::now().timestamp() as f64;
    env.run(&["run"]).expect_code(1);
    let s = parse_prom(&prom);
    let good = [
        ("database", db.name.as_str()),
        ("group", "public.good"),
        ("kind", "tables"),
    ];
    let bad = [
        ("database", db.name.as_str()),
        ("group", "public.secret"),
        ("kind", "tables"),
    ];
    let last_ok = gauge(
        &s,
        "pg_groupdump_group_last_success_timestamp_seconds",
        &good,
    )
    .unwrap();
    assert!(last_ok >= before - 1.0, "{last_ok} < {before}");
    assert!(gauge(&s, "pg_groupdump_group_last_size_bytes", &good).unwrap() > 0.0);
    assert!(gauge(&s, "pg_groupdump_group_last_duration_seconds", &good).is_some());
    assert_eq!(
        gauge(&s, "pg_groupdump_group_consecutive_failures", &good),
        Some(0.0)
    );
    assert_eq!(
        gauge(&s, "pg_groupdump_group_consecutive_failures", &bad),
        Some(1.0)
    );
    assert_eq!(
        gauge(
            &s,
            "pg_groupdump_group_last_success_timestamp_seconds",
            &bad
        ),
        None
    );
    assert_eq!(gauge(&s, "pg_groupdump_run_exit_status", &[]), Some(1.0));
    assert_eq!(
        gauge(&s, "pg_groupdump_run_dumps", &[("status", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        gauge(&s, "pg_groupdump_run_dumps", &[("status", "ok")]),
        Some(1.0)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter must be able to read it");

    // A second failing run counts up; the good group's last success moves on.
    std::thread::sleep(Duration::from_millis(1100));
    env.run(&["run"]).expect_code(1);
    let s2 = parse_prom(&prom);
    assert_eq!(
        gauge(&s2, "pg_groupdump_group_consecutive_failures", &bad),
        Some(2.0)
    );
    let last_ok2 = gauge(
        &s2,
        "pg_groupdump_group_last_success_timestamp_seconds",
        &good,
    )
    .unwrap();
    assert!(last_ok2 > last_ok, "{last_ok2} <= {last_ok}");

    // Once it succeeds, its failure count resets.
    db.sql(&format!("GRANT SELECT ON secret TO {}", qi(&role)));
    std::thread::sleep(Duration::from_millis(1100));
    env.run(&["run"]).expect_code(0);
    let s3 = parse_prom(&prom);
    assert_eq!(
        gauge(&s3, "pg_groupdump_group_consecutive_failures", &bad),
        Some(0.0)
    );
    assert_eq!(gauge(&s3, "pg_groupdump_run_exit_status", &[]), Some(0.0));
}

#[test]
fn plain_logs_have_no_escape_codes_and_json_logs_parse() {
    let db = fresh_db("plainlog");
    db.sql("CREATE TABLE a (id int); INSERT INTO a VALUES (1); CREATE TABLE b (id int);");
    let env = Env::new();
    env.cfg(&db, "[ungrouped]\nexclude = [\"nothing_matches_*\"]\n");
    let out = env.run(&["run"]);
    out.expect_code(0);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "escape codes in a non-terminal log:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("ok "), "{}", out.stderr);
    assert!(
        out.stderr.lines().all(|l| !l.contains('\r')),
        "{}",
        out.stderr
    );

    std::thread::sleep(Duration::from_millis(1100));
    let out = env.run(&["--log-format", "json", "run"]);
    out.expect_code(0);
    let mut events = 0;
    for line in out.stderr.lines() {
        if line.starts_with("run ") || line.trim().is_empty() {
            continue; // the closing human summary
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", out.stderr));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        events += 1;
    }
    assert!(events >= 3, "{}", out.stderr);
}

#[test]
fn progress_display_on_a_terminal() {
    require_tool("tmux", "-V", "tmux");
    let db = fresh_db("progress");
    let mut sql = String::new();
    for i in 0..6 {
        sql.push_str(&format!(
            "CREATE TABLE p{i} (id int, info text); INSERT INTO p{i} SELECT g, md5(g::text) FROM generate_series(1, 20000) g;\n"
        ));
    }
    db.sql(&sql);
    let env = Env::new();
    env.cfg(&db, "");
    let session = unique_name("pgd_progress");
    let done = env.path().join("exit-code");
    let script = format!(
        "{} -c {} run; echo $? > {}",
        shell_quote(env!("CARGO_BIN_EXE_pg_groupdump")),
        shell_quote(env.config.to_str().unwrap()),
        shell_quote(done.to_str().unwrap())
    );
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "120", "-y", "40"])
        .arg(format!(
            "TERM=xterm-256color sh -c {}; sleep 60",
            shell_quote(&script)
        ))
        .env_remove("TMUX")
        .status()
        .expect("tmux");
    assert!(status.success());
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _kill = Kill(session.clone());
    let start = Instant::now();
    while !done.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run in tmux did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let screen = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", &session])
        .output()
        .expect("capture-pane");
    let screen = String::from_utf8_lossy(&screen.stdout);
    assert_eq!(
        std::fs::read_to_string(&done).unwrap().trim(),
        "0",
        "{screen}"
    );
    // The final screen: the progress line at 7/7 (6 groups + the schema), then the summary.
    assert!(screen.contains("7/7 dumps"), "{screen}");
    assert!(screen.contains("written"), "{screen}");
    assert!(screen.contains("7 of 7 dumps ok"), "{screen}");
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn systemd_units_verify() {
    require_tool("systemd-analyze", "--version", "systemd");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_pg_groupdump");
    let mut files = Vec::new();
    for (from, to) in [
        ("pg_groupdump.service", "pg_groupdump.service"),
        ("pg_groupdump.timer", "pg_groupdump.timer"),
        ("pg_groupdump@.service", "pg_groupdump@main.service"),
        ("pg_groupdump@.timer", "pg_groupdump@main.timer"),
    ] {
        let text = std::fs::read_to_string(src.join(from)).unwrap();
        assert!(text.contains("/usr/local/bin/pg_groupdump") || from.ends_with(".timer"));
        let text = text.replace("/usr/local/bin/pg_groupdump", bin);
        let p = tmp.path().join(to);
        std::fs::write(&p, text).unwrap();
        files.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The man page is installed separately (README); everything else must be clean.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("Command 'man ") && !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{text}");
    let service = std::fs::read_to_string(src.join("pg_groupdump.service")).unwrap();
    for key in [
        "Type=oneshot",
        "User=postgres",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/backups/postgresql",
    ] {
        assert!(service.contains(key), "pg_groupdump.service lacks {key}");
    }
}

#[test]
fn completions_man_page_and_version() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_bin(&["completions", shell], tmp.path());
        out.expect_code(0);
        assert!(
            out.stdout.contains("pg_groupdump") && out.stdout.contains("prune"),
            "{shell}: {out:?}"
        );
    }
    let out = run_bin(&["man"], tmp.path());
    out.expect_code(0);
    assert!(out.stdout.contains(".TH pg_groupdump 1"), "{out:?}");
    assert!(out.stdout.contains("verify"), "{out:?}");

    let pg_dump = server().bin("pg_dump");
    let version = Command::new(&pg_dump).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    let number = version.split_whitespace().nth(2).unwrap().to_string();
    let cfg = tmp.path().join("groups.toml");
    std::fs::write(
        &cfg,
        format!(
            "[backup]\ndir = \"/nonexistent\"\npg_dump = {}\n",
            ts(pg_dump.to_str().unwrap())
        ),
    )
    .unwrap();
    let out = run_bin(&["-c", cfg.to_str().unwrap(), "--version"], tmp.path());
    out.expect_code(0);
    assert!(
        out.stdout
            .starts_with(&format!("pg_groupdump {}", env!("CARGO_PKG_VERSION"))),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(&number) && out.stdout.contains(pg_dump.to_str().unwrap()),
        "{out:?}"
    );
}
