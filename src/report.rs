//! The run report: a JSON document per run, the stable interface for scripts and monitoring,
//! and the human summary printed at the end of a run.
//!
//! Fields are only ever added, never renamed or removed.

use serde::{Deserialize, Serialize};

/// A session seen in `pg_stat_activity`: a blocker, or a session waiting behind a dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub pid: i32,
    pub user: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    /// Seconds since its transaction began.
    pub xact_age_s: Option<f64>,
    /// Seconds it has waited for its lock (waiters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_s: Option<f64>,
    /// The lock mode it holds or wants on the contended table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_mode: Option<String>,
    /// Its current or last statement, shortened.
    pub query: Option<String>,
}

impl Session {
    /// One line for logs and mail.
    pub fn describe(&self) -> String {
        let mut s = format!("pid {}", self.pid);
        if let Some(u) = &self.user {
            s.push_str(&format!(" user {u}"));
        }
        if let Some(a) = self.application_name.as_deref().filter(|a| !a.is_empty()) {
            s.push_str(&format!(" application {a:?}"));
        }
        if let Some(c) = &self.client_addr {
            s.push_str(&format!(" from {c}"));
        }
        if let Some(st) = &self.state {
            s.push_str(&format!(", {st}"));
        }
        if let Some(m) = &self.lock_mode {
            s.push_str(&format!(", {m}"));
        }
        if let Some(a) = self.xact_age_s {
            s.push_str(&format!(", transaction open {a:.1}s"));
        }
        if let Some(w) = self.waited_s {
            s.push_str(&format!(", waiting {w:.1}s"));
        }
        if let Some(q) = &self.query {
            s.push_str(&format!(": {q}"));
        }
        s
    }
}

/// Where and when a group's snapshot was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Server time when the snapshot was taken (UTC, RFC 3339).
    pub taken_at: String,
    /// WAL position at that moment (`pg_current_wal_lsn()`, or the replay position on a standby).
    pub wal_lsn: Option<String>,
}

/// What a dump contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tables,
    Schema,
    Globals,
}

/// Outcome of one dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    /// The run was stopped by SIGINT or SIGTERM (run status only).
    Interrupted,
    /// Every table of the group was dropped after the plan: nothing to dump, nothing failed
    /// (a group's status only).
    Gone,
}

/// What happened to a planned table before its group was dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Dropped: left out of the group's archive.
    Gone,
    /// Renamed or moved to another schema: dumped under its new name.
    Renamed,
    /// Not planned: a partition attached to a partitioned table of the group after the
    /// plan, dumped with it (`table` is its name then).
    Attached,
}

/// A planned table that was dropped or renamed before its group was dumped (matched by oid),
/// or a partition that joined the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChange {
    /// Its name in the plan (`schema.table`).
    pub table: String,
    pub oid: u32,
    pub change: Change,
    /// Its name when the group was dumped (renamed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// When the change was found (RFC 3339).
    pub found_at: String,
}

/// One dump of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupReport {
    pub kind: Kind,
    pub database: Option<String>,
    pub group: String,
    pub tables: Vec<String>,
    pub status: Status,
    pub file: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// Warnings pg_dump printed although it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<String>,
    /// When and at which WAL position the successful attempt's snapshot was taken.
    #[serde(default)]
    pub snapshot: Option<SnapshotInfo>,
    /// How long the successful attempt waited for its locks.
    #[serde(default)]
    pub lock_wait_ms: u64,
    /// Every attempt, failed ones with what they ran into.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The tables' oids in the source database, in the order of `tables`.
    #[serde(default)]
    pub table_oids: Option<Vec<u32>>,
    /// Rows of each table ("schema.table") in the dump's snapshot (`backup.count_rows`).
    #[serde(default)]
    pub row_counts: Option<RowCounts>,
    /// The engine that wrote the file (a group's dump only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::config::Engine>,
    /// Why the native engine handed this group to pg_dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Planned tables dropped or renamed before the dump; `tables` names what was dumped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub table_changes: Vec<TableChange>,
    /// With `[storage]`: the object the dump was uploaded to (`s3://bucket/key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// With `[storage]`: bytes uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_bytes: Option<u64>,
}

impl GroupReport {
    /// A report for a dump that starts now.
    pub fn new(
        kind: Kind,
        database: Option<String>,
        group: String,
        tables: Vec<String>,
        started_at: String,
    ) -> Self {
        GroupReport {
            kind,
            database,
            group,
            tables,
            status: Status::Ok,
            file: None,
            bytes: None,
            sha256: None,
            finished_at: started_at.clone(),
            started_at,
            duration_ms: 0,
            error: None,
            warnings: None,
            snapshot: None,
            lock_wait_ms: 0,
            attempts: Vec::new(),
            table_oids: None,
            row_counts: None,
            engine: None,
            fallback: None,
            table_changes: Vec::new(),
            object: None,
            uploaded_bytes: None,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Its locks were not granted within the lock-wait timeout.
    LockTimeout,
    /// Cancelled because a session waited too long for a lock it held.
    Yielded,
    /// The connection to the server was lost or refused (a restart, a terminated backend).
    ConnectionLost,
    /// Stopped by SIGINT or SIGTERM.
    Interrupted,
    /// A table was dropped or renamed between reading the catalog and locking it.
    TableChanged,
    /// Every table of the group was dropped: nothing to dump.
    Gone,
    /// Anything else.
    Failed,
}

impl Outcome {
    /// Lock trouble, lost connections and tables that changed under the attempt are worth
    /// another attempt later in the run.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Outcome::LockTimeout
                | Outcome::Yielded
                | Outcome::ConnectionLost
                | Outcome::TableChanged
        )
    }
}

/// One attempt at a dump.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub outcome: Outcome,
    pub error: Option<String>,
    /// Sessions that held or queued for conflicting locks (lock timeouts).
    #[serde(default)]
    pub blockers: Vec<Session>,
    /// The session this attempt yielded to.
    #[serde(default)]
    pub yielded_to: Option<Box<Session>>,
    pub lock_wait_ms: u64,
    pub snapshot: Option<SnapshotInfo>,
    /// Tables copied by several sessions at once (`backup.split_above`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitTable>,
    #[serde(skip)]
    pub warnings: Option<String>,
    #[serde(skip)]
    pub row_counts: Option<RowCounts>,
}

impl Attempt {
    pub fn new(number: u32, started_at: String) -> Self {
        Attempt {
            number,
            finished_at: started_at.clone(),
            started_at,
            duration_ms: 0,
            outcome: Outcome::Ok,
            error: None,
            blockers: Vec::new(),
            yielded_to: None,
            lock_wait_ms: 0,
            snapshot: None,
            split: Vec::new(),
            warnings: None,
            row_counts: None,
        }
    }
}

/// A table copied by several sessions, each a range of its blocks, in the group's snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SplitTable {
    pub table: String,
    pub sessions: usize,
    pub ranges: usize,
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub status: Status,
    pub host: String,
    pub server: String,
    pub dir: String,
    pub config: String,
    pub pg_dump_version: String,
    pub groups: Vec<GroupReport>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// What the prune at the end of the run did (absent when it did not run).
    #[serde(default)]
    pub prune: Option<PruneSummary>,
    /// Whether the mail about this run went out.
    #[serde(default)]
    pub notification: Option<Notification>,
    /// The signal that stopped the run ("SIGINT", "SIGTERM"), when `status` is `interrupted`.
    #[serde(default)]
    pub signal: Option<String>,
    /// Tables created while the run dumped, found by its last pass over the catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_since_plan: Vec<NewTable>,
    /// With `[storage]`: the files of earlier runs whose upload had failed, uploaded again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retried_uploads: Vec<crate::store::bucket::RetriedUpload>,
}

/// A table created after the run's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTable {
    pub database: String,
    /// `schema.table`.
    pub table: String,
    pub oid: u32,
    /// Dumped at the end of the run, as an ungrouped table of its own (the group of that
    /// name in the report); otherwise the next run dumps it.
    pub dumped: bool,
}

/// The outcome of mailing a run's summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub sent: bool,
    /// The SMTP server's reply, when sent.
    pub reply: Option<String>,
    /// Why it could not be sent.
    pub error: Option<String>,
}

impl RunReport {
    /// Writes the report as pretty JSON to `path`, atomically, streamed to the file (a run
    /// of 10 000 groups makes a report of about 12 MB) and through the encryption to `seal`
    /// when given (`path` is then the encrypted file's, [`crate::crypt::written_path`]).
    pub fn write(
        &self,
        path: &std::path::Path,
        seal: Option<&crate::crypt::Recipients>,
    ) -> std::io::Result<()> {
        crate::store::write_atomic_with(path, crate::store::file_mode(), |w| match seal {
            Some(recipients) => {
                let mut sealed = recipients.seal(w)?;
                serde_json::to_writer_pretty(&mut sealed, self)?;
                sealed.finish().map(drop)
            }
            None => serde_json::to_writer_pretty(w, self).map_err(std::io::Error::from),
        })
    }

    /// Number of failed dumps.
    pub fn failed(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| g.status == Status::Failed)
            .count()
    }

    /// How the run ended, for its exit code (see [`crate::exit`]). The stopping signal is
    /// read back from its recorded name; an interrupted run whose name is missing or unknown
    /// counts as stopped by SIGTERM.
    pub fn outcome(&self) -> crate::exit::Outcome {
        use crate::exit::{signal_number, Outcome};
        match self.status {
            Status::Interrupted => Outcome::Signal(
                self.signal
                    .as_deref()
                    .and_then(signal_number)
                    .unwrap_or(libc::SIGTERM),
            ),
            _ if self.failed() > 0 => Outcome::SomeFailed,
            _ => Outcome::Ok,
        }
    }

    /// Bytes written by successful dumps.
    pub fn bytes(&self) -> u64 {
        self.groups.iter().filter_map(|g| g.bytes).sum()
    }

    /// Bytes uploaded to `[storage]` by the run (its dumps, and the files of earlier runs it
    /// uploaded again).
    pub fn uploaded_bytes(&self) -> u64 {
        let retried = self.retried_uploads.iter().filter_map(|r| r.bytes);
        self.groups
            .iter()
            .filter_map(|g| g.uploaded_bytes)
            .chain(retried)
            .sum()
    }

    /// The human summary for stderr.
    pub fn summary(&self, report_path: &str) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for g in self.groups.iter().filter(|g| g.status == Status::Failed) {
            let db = g.database.as_deref().unwrap_or("(cluster)");
            let _ = writeln!(
                s,
                "FAILED {db} / {}: {}",
                crate::text::printable(&g.group),
                g.error.as_deref().unwrap_or("").replace('\n', "\n    ")
            );
        }
        for r in self.retried_uploads.iter().filter(|r| !r.ok) {
            let _ = writeln!(
                s,
                "FAILED the upload of {}, retried: {}",
                r.file,
                r.error.as_deref().unwrap_or("")
            );
        }
        let gone = self
            .groups
            .iter()
            .filter(|g| g.status == Status::Gone)
            .count();
        let _ = writeln!(
            s,
            "run {}: {} of {} dumps ok, {} failed, {}{} written; report {}",
            self.run_id,
            self.groups.len() - self.failed() - gone,
            self.groups.len(),
            self.failed(),
            match gone {
                0 => String::new(),
                n => format!("{n} gone (every table dropped), "),
            },
            crate::text::human_bytes(self.bytes()),
            report_path
        );
        s
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The host name, for reports and mail.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

// ---------------------------------------------------------------------------------------------
// The prune summary: what `prune` did, part of the run report and `prune --json`'s output.
// Defined here with the rest of the report's format; `prune` fills it in.

/// What a group directory of the backup directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    Tables,
    Schema,
    Globals,
    Reports,
}

/// A file or link under the backup directory that prune does not consider (not pg_groupdump's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignored {
    /// Relative to the backup directory.
    pub path: String,
    pub reason: String,
}

/// Keep or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// One of the newest `keep_min` complete files of its group.
    Newest,
    /// Not older than `max_age`.
    Young,
    /// Dated in the future: age zero.
    Future,
    /// Its group's dump failed in this run.
    Protected,
    /// A run report of a run whose dumps are kept.
    ReportOfKeptDumps,
    /// Older than `max_age` and not one of the newest `keep_min`.
    Expired,
    /// An `.ing` file left by an interrupted run.
    Leftover,
    /// A local file not in `[storage]`'s bucket (its upload failed): kept until a run
    /// uploads it.
    NotUploaded,
}

impl Rule {
    pub fn action(self) -> Action {
        match self {
            Rule::Expired | Rule::Leftover => Action::Delete,
            _ => Action::Keep,
        }
    }
}

/// One file in a [`PruneSummary`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileSummary {
    /// Absolute path.
    pub file: String,
    pub run_id: String,
    #[serde(default)]
    pub partial: bool,
    pub bytes: u64,
    pub action: Action,
    pub rule: Rule,
    pub reason: String,
    /// Whether it was deleted (false in a dry run and when deleting failed).
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One group in a [`PruneSummary`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSummary {
    pub kind: GroupKind,
    pub database: Option<String>,
    pub group: String,
    /// The group's directory, relative to the backup directory.
    pub dir: String,
    /// False for a shortened directory name that matches no `[[group]]` (`group` is then the
    /// directory name).
    #[serde(default)]
    pub name_known: bool,
    pub max_age: String,
    pub keep_min: u32,
    /// Its dump failed in this run: nothing of it was deleted.
    #[serde(default)]
    pub protected: bool,
    pub kept_files: u64,
    pub deleted_files: u64,
    pub freed_bytes: u64,
    /// The files kept (only in `prune`'s own output; left out of run reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<FileSummary>,
    /// The files deleted (or, in a dry run, to be deleted).
    #[serde(default)]
    pub deleted: Vec<FileSummary>,
}

/// What a prune did (or would do, with `dry_run`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneSummary {
    /// Files deleted (in a dry run: that would be deleted).
    pub deleted_files: u64,
    /// Bytes freed (in a dry run: that would be freed).
    pub freed_bytes: u64,
    pub errors: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// The backup directory.
    #[serde(default)]
    pub dir: String,
    /// The time ages were measured from (RFC 3339).
    #[serde(default)]
    pub now: String,
    #[serde(default)]
    pub kept_files: u64,
    #[serde(default)]
    pub groups: Vec<GroupSummary>,
    /// Files and links under the directory that are not pg_groupdump's: never touched.
    #[serde(default)]
    pub ignored: Vec<Ignored>,
}

/// Rows per table ("schema.table"), as a JSON object with the names in order. A sorted vector
/// rather than a map: a run keeps one per group in memory, mostly of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowCounts(Vec<(String, i64)>);

impl RowCounts {
    /// The count of `table`.
    pub fn get(&self, table: &str) -> Option<&i64> {
        let i = self
            .0
            .binary_search_by(|(t, _)| t.as_str().cmp(table))
            .ok()?;
        Some(&self.0[i].1)
    }
}

impl FromIterator<(String, i64)> for RowCounts {
    /// As a map collects: in name order, the last count of a name repeated.
    fn from_iter<I: IntoIterator<Item = (String, i64)>>(iter: I) -> Self {
        let mut v: Vec<(String, i64)> = iter.into_iter().collect();
        v.reverse();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, first| later.0 == first.0);
        v.shrink_to_fit();
        RowCounts(v)
    }
}

impl Serialize for RowCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(t, n)| (t, n)))
    }
}

impl<'de> Deserialize<'de> for RowCounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, i64>::deserialize(d)?;
        Ok(RowCounts(m.into_iter().collect()))
    }
}

#[cfg(test)]
mod row_counts_tests {
    use super::RowCounts;

    #[test]
    fn a_map_in_json_in_name_order() {
        let c: RowCounts = [
            ("s.b".to_string(), 2),
            ("s.a".to_string(), 1),
            ("s.b".to_string(), 3),
        ]
        .into_iter()
        .collect();
        assert_eq!(c.get("s.b"), Some(&3));
        assert_eq!(c.get("s.a"), Some(&1));
        assert_eq!(c.get("s.c"), None);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"s.a":1,"s.b":3}"#);
        assert_eq!(serde_json::from_str::<RowCounts>(&json).unwrap(), c);
    }
}
