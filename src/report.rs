//! The run report: a JSON document per run, the stable interface for scripts and monitoring,
//! and the human summary printed at the end of a run.
//!
//! Fields are only ever added, never renamed or removed.

use serde::{Deserialize, Serialize};

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
}

impl RunReport {
    /// Number of failed dumps.
    pub fn failed(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| g.status == Status::Failed)
            .count()
    }

    /// Bytes written by successful dumps.
    pub fn bytes(&self) -> u64 {
        self.groups.iter().filter_map(|g| g.bytes).sum()
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
                crate::printable(&g.group),
                g.error.as_deref().unwrap_or("").replace('\n', "\n    ")
            );
        }
        let _ = writeln!(
            s,
            "run {}: {} of {} dumps ok, {} failed, {} written; report {}",
            self.run_id,
            self.groups.len() - self.failed(),
            self.groups.len(),
            self.failed(),
            crate::plan::human_bytes(self.bytes()),
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
