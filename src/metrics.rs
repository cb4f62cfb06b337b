//! Prometheus metrics for node_exporter's textfile collector (`[metrics] textfile`).
//!
//! At the end of every run the file is rewritten atomically (temp file, fsync, rename) so the
//! collector never reads half a file. Per-group figures that need history — the last
//! successful dump, consecutive failures — are carried over from the previous file, so a run
//! limited to some groups (`--group`) leaves the others' figures as they were.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::report::{Kind, RunReport, Status};

/// Identity of a group in the metrics: (database, group, kind).
type Key = (String, String, String);

#[derive(Debug, Clone, Default, PartialEq)]
struct GroupState {
    last_success: Option<f64>,
    last_duration: Option<f64>,
    last_size: Option<f64>,
    consecutive_failures: f64,
}

const GROUP_METRICS: [(&str, &str); 4] = [
    (
        "pg_groupdump_group_last_success_timestamp_seconds",
        "Unix time when the group's last successful dump finished.",
    ),
    (
        "pg_groupdump_group_last_duration_seconds",
        "Duration of the group's last dump, successful or not, all attempts included.",
    ),
    (
        "pg_groupdump_group_last_size_bytes",
        "Size of the group's last successful dump.",
    ),
    (
        "pg_groupdump_group_consecutive_failures",
        "Runs in a row in which the group's dump failed (0 after a success).",
    ),
];

/// Writes the metrics file after a run (`report`: `None` when the run could not start).
pub fn write(path: &Path, report: Option<&RunReport>, exit_code: i32) -> std::io::Result<()> {
    let mut groups = read_previous(path);
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    if let Some(r) = report {
        for g in &r.groups {
            let key = (
                g.database.clone().unwrap_or_default(),
                g.group.clone(),
                kind_name(g.kind).to_string(),
            );
            let st = groups.entry(key).or_default();
            st.last_duration = Some(g.duration_ms as f64 / 1000.0);
            if g.status == Status::Ok {
                st.last_success = Some(parse_time(&g.finished_at).unwrap_or(now));
                st.last_size = g.bytes.map(|b| b as f64);
                st.consecutive_failures = 0.0;
            } else if g.status == Status::Gone {
                // Dropped, not failing: no new dump, and no failure to alert on.
                st.consecutive_failures = 0.0;
            } else {
                st.consecutive_failures += 1.0;
            }
        }
    }
    let text = render(&groups, report, exit_code, now);
    // node_exporter runs as another user: the metrics (no secrets in them) are world-readable.
    crate::store::write_atomic_mode(path, text.as_bytes(), 0o644)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Tables => "tables",
        Kind::Schema => "schema",
        Kind::Globals => "globals",
    }
}

fn parse_time(s: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

fn render(
    groups: &BTreeMap<Key, GroupState>,
    report: Option<&RunReport>,
    exit_code: i32,
    now: f64,
) -> String {
    let mut s = String::new();
    for (i, (name, help)) in GROUP_METRICS.iter().enumerate() {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for ((db, group, kind), st) in groups {
            let value = match i {
                0 => st.last_success,
                1 => st.last_duration,
                2 => st.last_size,
                _ => Some(st.consecutive_failures),
            };
            if let Some(v) = value {
                let _ = writeln!(
                    s,
                    "{name}{{database=\"{}\",group=\"{}\",kind=\"{}\"}} {v}",
                    escape(db),
                    escape(group),
                    escape(kind)
                );
            }
        }
    }
    let mut run = |name: &str, help: &str, value: f64| {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        let _ = writeln!(s, "{name} {value}");
    };
    run(
        "pg_groupdump_run_timestamp_seconds",
        "Unix time when the last run ended.",
        now,
    );
    run(
        "pg_groupdump_run_exit_status",
        "Exit status of the last run (0 ok, 1 some groups failed, see the README for the others).",
        exit_code as f64,
    );
    if let Some(r) = report {
        let duration = match (parse_time(&r.started_at), parse_time(&r.finished_at)) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        run(
            "pg_groupdump_run_duration_seconds",
            "Duration of the last run.",
            duration,
        );
        run(
            "pg_groupdump_run_bytes",
            "Bytes written by the last run's successful dumps.",
            r.bytes() as f64,
        );
        run(
            "pg_groupdump_run_uploaded_bytes",
            "Bytes the last run uploaded to [storage].",
            r.uploaded_bytes() as f64,
        );
        let _ = writeln!(
            s,
            "# HELP pg_groupdump_run_dumps Dumps of the last run by outcome."
        );
        let _ = writeln!(s, "# TYPE pg_groupdump_run_dumps gauge");
        let failed = r.failed();
        let gone = r.groups.iter().filter(|g| g.status == Status::Gone).count();
        let _ = writeln!(
            s,
            "pg_groupdump_run_dumps{{status=\"ok\"}} {}",
            r.groups.len() - failed - gone
        );
        let _ = writeln!(s, "pg_groupdump_run_dumps{{status=\"failed\"}} {failed}");
        let _ = writeln!(s, "pg_groupdump_run_dumps{{status=\"gone\"}} {gone}");
    }
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reads the per-group state out of a file this module wrote before.
fn read_previous(path: &Path) -> BTreeMap<Key, GroupState> {
    let mut out: BTreeMap<Key, GroupState> = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    for line in text.lines() {
        let Some((i, rest)) = GROUP_METRICS
            .iter()
            .enumerate()
            .find_map(|(i, (name, _))| line.strip_prefix(name).map(|r| (i, r)))
        else {
            continue;
        };
        let Some((labels, value)) = parse_labels(rest) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let st = out
            .entry((get("database"), get("group"), get("kind")))
            .or_default();
        match i {
            0 => st.last_success = Some(value),
            1 => st.last_duration = Some(value),
            2 => st.last_size = Some(value),
            _ => st.consecutive_failures = value,
        }
    }
    out
}

/// Parses `{a="x",b="y"} value` into the labels and the rest.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut chars = s.char_indices().peekable();
    if chars.next()?.1 != '{' {
        return None;
    }
    let mut labels = BTreeMap::new();
    loop {
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' if key.is_empty() => return Some((labels, &s[i + 1..])),
                '=' => break,
                ',' => {}
                c => key.push(c),
            }
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        if let Some(&(i, '}')) = chars.peek() {
            return Some((labels, &s[i + 1..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose group `g` ended with `status`.
    fn report(status: &str) -> RunReport {
        serde_json::from_value(serde_json::json!({
            "run_id": "20260301T120000Z", "started_at": "", "finished_at": "",
            "status": "ok", "host": "", "server": "", "dir": "", "config": "",
            "pg_dump_version": "",
            "groups": [{
                "kind": "tables", "database": "d", "group": "g", "tables": [],
                "status": status, "file": null, "bytes": null, "sha256": null,
                "started_at": "", "finished_at": "", "duration_ms": 0, "error": null
            }]
        }))
        .unwrap()
    }

    #[test]
    fn a_group_whose_tables_are_gone_is_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.prom");
        let key = ("d".to_string(), "g".to_string(), "tables".to_string());
        write(&p, Some(&report("failed")), 1).unwrap();
        assert_eq!(read_previous(&p)[&key].consecutive_failures, 1.0);
        write(&p, Some(&report("gone")), 0).unwrap();
        assert_eq!(read_previous(&p)[&key].consecutive_failures, 0.0);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("pg_groupdump_run_dumps{status=\"gone\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pg_groupdump_run_dumps{status=\"ok\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn state_survives_a_round_trip() {
        let mut groups = BTreeMap::new();
        groups.insert(
            (
                "we\"ird\ndb".to_string(),
                "a\\b".to_string(),
                "tables".to_string(),
            ),
            GroupState {
                last_success: Some(1700000000.5),
                last_duration: Some(1.25),
                last_size: Some(4096.0),
                consecutive_failures: 2.0,
            },
        );
        let text = render(&groups, None, 1, 1700000100.0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.prom");
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read_previous(&p), groups);
        assert!(text.contains("pg_groupdump_run_exit_status 1"), "{text}");
    }
}
