//! What the backup directory holds, group by group: `pg_groupdump list`, and the dumps
//! `restore --at` chooses from.
//!
//! Two steps, so that another store can be plugged in: [`inventory`] is pure — it takes the
//! group directories a store holds (as [`prune::scan`] finds them) and the run reports read
//! from it, and returns every group's complete dumps, newest first, each with the time its
//! snapshot was taken and the engine that wrote it (from its run's report). [`local`] feeds
//! it from the local backup directory, [`everywhere`] from that and `[storage]`'s bucket. [`listing`] then adds what the configuration expects
//! (configured groups with no dump at all) and the last failed attempt of each group.
//!
//! The JSON of `list --json` ([`Listing`]) is an interface for scripts: fields are only ever
//! added, never renamed or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::crypt::Identities;
use crate::prune::{self, GroupFiles};
use crate::report::{GroupKind, Kind, RunReport, Status};
use crate::store;

/// A complete dump of a group.
#[derive(Debug, Clone)]
pub struct Stored {
    pub run_id: String,
    /// When the dump's snapshot was taken (the report's `snapshot.taken_at`), or, when its
    /// run's report does not say, when its run started (the run id).
    pub time: DateTime<Utc>,
    /// Relative to the backup directory.
    pub rel: PathBuf,
    pub bytes: u64,
    /// The engine that wrote it, when its run's report says.
    pub engine: Option<String>,
}

/// The complete dumps of one group (or of a database's schema), newest first.
#[derive(Debug, Clone)]
pub struct History {
    pub kind: GroupKind,
    pub database: String,
    /// The group's name, or its directory name when that was shortened (`name_known`).
    pub group: String,
    pub name_known: bool,
    pub dumps: Vec<Stored>,
}

impl History {
    /// The newest dump taken at or before `t`.
    pub fn at(&self, t: DateTime<Utc>) -> Option<&Stored> {
        self.dumps
            .iter()
            .filter(|d| d.time <= t)
            .max_by_key(|d| d.time)
    }
}

/// What a store holds: group and schema histories, and the run reports by run id.
#[derive(Debug, Default)]
pub struct Inventory {
    pub groups: Vec<History>,
    pub reports: BTreeMap<String, RunReport>,
    /// Reports or directories that could not be read.
    pub errors: Vec<String>,
    /// Encrypted run reports not read for want of `--identity`: their dumps are listed from
    /// their file names and sizes only (time of the run, no engine, no failures).
    pub sealed_reports: usize,
}

impl Inventory {
    /// The history of a group (or, with `store::SCHEMA_GROUP`, of the schema) of a database.
    pub fn group(&self, kind: GroupKind, database: &str, group: &str) -> Option<&History> {
        self.groups
            .iter()
            .find(|h| h.kind == kind && h.database == database && h.group == group)
    }
}

/// The inventory of what a store holds: its group directories (tables and schema ones; the
/// others are left out) and its run reports. `known` (database, group) names give a directory
/// whose name was shortened (see `store`) the name of the group it belongs to.
pub fn inventory(
    mut files: Vec<GroupFiles>,
    reports: BTreeMap<String, RunReport>,
    known: &[(String, String)],
) -> Inventory {
    name_shortened(&mut files, known);
    let mut groups = Vec::new();
    for g in files {
        let kind = g.id.kind;
        let (Some(database), GroupKind::Tables | GroupKind::Schema) = (g.id.database, kind) else {
            continue;
        };
        let mut dumps: Vec<Stored> = g
            .dumps
            .iter()
            .filter(|d| !d.partial)
            .map(|d| {
                let entry = report_entry(&reports, &d.run_id, kind, &database, &g.id.group);
                Stored {
                    run_id: d.run_id.clone(),
                    time: entry
                        .and_then(|e| e.snapshot.as_ref())
                        .and_then(|s| DateTime::parse_from_rfc3339(&s.taken_at).ok())
                        .map_or(d.time, |t| t.with_timezone(&Utc)),
                    rel: d.rel.clone(),
                    bytes: d.bytes,
                    engine: entry.and_then(|e| e.engine).map(|e| e.name().to_string()),
                }
            })
            .collect();
        if dumps.is_empty() {
            continue;
        }
        dumps.sort_by(|a, b| b.run_id.cmp(&a.run_id));
        groups.push(History {
            kind,
            database,
            group: g.id.group,
            name_known: g.id.name_known,
            dumps,
        });
    }
    Inventory {
        groups,
        reports,
        errors: Vec::new(),
        sealed_reports: 0,
    }
}

/// Names a shortened group directory after the group of `known` whose dumps go there.
fn name_shortened(files: &mut [GroupFiles], known: &[(String, String)]) {
    for g in files.iter_mut().filter(|g| !g.id.name_known) {
        let dir_of = |db: &str, name: &str| store::dump_dir(Path::new(""), db, name);
        if let Some((db, name)) = known
            .iter()
            .find(|(db, name)| dir_of(db, name).to_str() == Some(g.id.dir.as_str()))
        {
            g.id.database = Some(db.clone());
            g.id.group = name.clone();
            g.id.name_known = true;
        }
    }
}

/// The entry of a group's (or the schema's) dump in a run's report.
fn report_entry<'a>(
    reports: &'a BTreeMap<String, RunReport>,
    run_id: &str,
    kind: GroupKind,
    database: &str,
    group: &str,
) -> Option<&'a crate::report::GroupReport> {
    let kind = match kind {
        GroupKind::Schema => Kind::Schema,
        _ => Kind::Tables,
    };
    reports
        .get(run_id)?
        .groups
        .iter()
        .find(|e| e.kind == kind && e.database.as_deref() == Some(database) && e.group == group)
}

/// What a store holds: its group directories and its run reports.
#[derive(Default)]
struct Holdings {
    groups: Vec<GroupFiles>,
    reports: BTreeMap<String, RunReport>,
    errors: Vec<String>,
    sealed_reports: usize,
}

impl Holdings {
    /// A scan's groups, and the run reports `read` gives for its report files (`None`: not
    /// wanted).
    fn of(
        scan: prune::Scan,
        mut read: impl FnMut(&prune::Dump) -> Result<Option<RunReport>, ReportError>,
    ) -> Holdings {
        let mut errors = scan.errors;
        let mut reports = BTreeMap::new();
        let mut sealed_reports = 0;
        for d in report_files(&scan.groups) {
            match read(d) {
                Ok(Some(r)) => {
                    reports.insert(d.run_id.clone(), r);
                }
                Ok(None) => {}
                Err(ReportError::Sealed) => sealed_reports += 1,
                Err(ReportError::Other(e)) => errors.push(e),
            }
        }
        Holdings {
            groups: scan.groups,
            reports,
            errors,
            sealed_reports,
        }
    }

    fn into_inventory(self, known: &[(String, String)]) -> Inventory {
        let mut inv = inventory(self.groups, self.reports, known);
        inv.errors = self.errors;
        inv.sealed_reports = self.sealed_reports;
        inv
    }

    /// Both stores' dumps of each group (one entry per file, wherever it is) and reports.
    fn merge(mut self, other: Holdings) -> Holdings {
        for g in other.groups {
            match self.groups.iter_mut().find(|h| h.id.dir == g.id.dir) {
                Some(h) => {
                    for d in g.dumps {
                        if !h.dumps.iter().any(|x| x.rel == d.rel) {
                            h.dumps.push(d);
                        }
                    }
                }
                None => self.groups.push(g),
            }
        }
        for (run, r) in other.reports {
            self.reports.entry(run).or_insert(r);
        }
        self.errors.extend(other.errors);
        self.sealed_reports += other.sealed_reports;
        self
    }
}

/// The inventory of the local backup directory `root` (nothing when it does not exist);
/// `known` as for [`inventory`]; `ids` decrypt encrypted run reports.
pub fn local(root: &Path, ids: &Identities, known: &[(String, String)]) -> Inventory {
    local_holdings(root, ids).into_inventory(known)
}

/// The inventory of the backup directory and, with `[storage]`, of the bucket too. Runs on a
/// blocking thread of the runtime (it waits for the bucket's requests).
pub fn everywhere(config: &Config, ids: &Identities, known: &[(String, String)]) -> Inventory {
    let here = local_holdings(&config.backup.dir, ids);
    let Some(storage) = &config.storage else {
        return here.into_inventory(known);
    };
    let there = match store::bucket::Bucket::open(storage, &config.backup.dir) {
        Ok(bucket) => bucket_holdings(&bucket, ids, &here.reports),
        Err(e) => Holdings {
            errors: vec![format!("{e}")],
            ..Holdings::default()
        },
    };
    here.merge(there).into_inventory(known)
}

fn local_holdings(root: &Path, ids: &Identities) -> Holdings {
    let root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Holdings::default(),
        Err(e) => {
            return Holdings {
                errors: vec![format!(
                    "cannot resolve the backup directory {}: {e}",
                    root.display()
                )],
                ..Holdings::default()
            }
        }
    };
    Holdings::of(prune::scan(&root), |d| {
        read_report(&root.join(&d.rel), ids).map(Some)
    })
}

/// The bucket's group directories, and the run reports in it that `have` does not hold
/// (downloaded to a temporary file each, read and removed).
fn bucket_holdings(
    bucket: &store::bucket::Bucket,
    ids: &Identities,
    have: &BTreeMap<String, RunReport>,
) -> Holdings {
    let rt = tokio::runtime::Handle::current();
    let objects = match rt.block_on(bucket.list()) {
        Ok(o) => o,
        Err(e) => {
            return Holdings {
                errors: vec![format!("{e}")],
                ..Holdings::default()
            }
        }
    };
    Holdings::of(prune::scan_bucket(objects), |d| {
        if have.contains_key(&d.run_id) {
            return Ok(None);
        }
        let name = d.rel.file_name().unwrap_or_default().to_string_lossy();
        if crate::crypt::plain_name(&name).1 && ids.is_empty() {
            return Err(ReportError::Sealed);
        }
        // Named like the object, so that an encrypted report is read as one.
        let tmp =
            std::env::temp_dir().join(format!("pg_groupdump-list-{}-{name}", std::process::id(),));
        let read = rt
            .block_on(bucket.download(&d.rel, &tmp))
            .map_err(|e| ReportError::Other(format!("{e}")))
            .and_then(|_| read_report(&tmp, ids));
        let _ = std::fs::remove_file(&tmp);
        read.map(Some)
    })
}

/// The complete run reports among `groups`.
fn report_files(groups: &[GroupFiles]) -> impl Iterator<Item = &prune::Dump> {
    groups
        .iter()
        .filter(|g| g.id.kind == GroupKind::Reports)
        .flat_map(|g| &g.dumps)
        .filter(|d| !d.partial)
}

/// Why a run report was not read.
enum ReportError {
    /// It is encrypted and no `--identity` was given.
    Sealed,
    Other(String),
}

fn read_report(path: &Path, ids: &Identities) -> Result<RunReport, ReportError> {
    if crate::crypt::is_sealed(path) && ids.is_empty() {
        return Err(ReportError::Sealed);
    }
    let text = ids.read(path).map_err(|e| match e {
        crate::crypt::CryptError::Io { source, .. } => ReportError::Other(format!(
            "cannot read the run report {}: {source}",
            path.display()
        )),
        e => ReportError::Other(e.to_string()),
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| ReportError::Other(format!("{} is not a run report: {e}", path.display())))
}

// ---------------------------------------------------------------------------------------------
// The listing

/// `list --json`: every group the store or the configuration knows, per database.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// The backup directory.
    pub dir: String,
    /// When ages were measured (RFC 3339).
    pub now: String,
    pub groups: Vec<GroupListing>,
    /// Reports or directories that could not be read.
    pub errors: Vec<String>,
    /// Encrypted run reports not read (no `--identity`): the dumps of their runs are listed
    /// without engine, snapshot time or failures.
    pub encrypted_reports_unread: usize,
}

/// One group (or a database's schema dumps, `kind = "schema"`).
#[derive(Debug, Serialize)]
pub struct GroupListing {
    pub kind: GroupKind,
    pub database: String,
    pub group: String,
    /// False when the directory name was shortened and `group` is that name.
    pub name_known: bool,
    /// A `[[group]]` of the configuration (false: an ungrouped table's, or a group no longer
    /// configured).
    pub configured: bool,
    /// `ok`: its newest attempt gave the newest dump; `failed`: an attempt failed after its
    /// newest dump (or it has none); `none`: no dump and no attempt on record.
    pub status: ListStatus,
    pub newest: Option<NewestDump>,
    /// Complete dumps kept, and their bytes.
    pub kept: usize,
    pub kept_bytes: u64,
    /// The newest failed attempt, when it is newer than the newest dump.
    pub last_failure: Option<FailedAttempt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListStatus {
    Ok,
    Failed,
    None,
}

/// A group's newest complete dump.
#[derive(Debug, Serialize)]
pub struct NewestDump {
    pub run_id: String,
    /// When its snapshot was taken (its run's start when the report does not say), RFC 3339.
    pub taken_at: String,
    pub age_s: i64,
    pub bytes: u64,
    /// `native` or `pg_dump`; null when its run's report is gone.
    pub engine: Option<String>,
    /// Relative to the backup directory.
    pub file: String,
}

/// A failed attempt, from its run's report.
#[derive(Debug, Serialize)]
pub struct FailedAttempt {
    pub run_id: String,
    pub finished_at: String,
    pub error: Option<String>,
}

/// What `list` shows: `database` and `groups` narrow it (empty: everything).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub databases: Vec<String>,
    pub groups: Vec<String>,
}

impl Filter {
    fn wants(&self, database: &str, group: &str) -> bool {
        (self.databases.is_empty() || self.databases.iter().any(|d| d == database))
            && (self.groups.is_empty() || self.groups.iter().any(|g| g == group))
    }
}

/// The listing of an inventory: its groups, the configured groups it has nothing of, and
/// each group's last failure, as of `now`.
pub fn listing(
    inv: &Inventory,
    config: &Config,
    filter: &Filter,
    now: DateTime<Utc>,
) -> Vec<GroupListing> {
    let configured: BTreeSet<(&str, &str)> = config
        .groups
        .iter()
        .map(|g| (g.database.as_str(), g.name.as_str()))
        .collect();
    let failures = failures(&inv.reports);
    let mut keys: BTreeSet<(GroupKind, String, String)> = BTreeSet::new();
    keys.extend(
        inv.groups
            .iter()
            .map(|h| (h.kind, h.database.clone(), h.group.clone())),
    );
    keys.extend(failures.keys().cloned());
    keys.extend(
        configured
            .iter()
            .map(|(d, g)| (GroupKind::Tables, d.to_string(), g.to_string())),
    );
    keys.into_iter()
        .filter(|(_, d, g)| filter.wants(d, g))
        .map(|(kind, database, group)| {
            let history = inv.group(kind, &database, &group);
            let failure = failures.get(&(kind, database.clone(), group.clone()));
            let is_configured =
                kind == GroupKind::Tables && configured.contains(&(&*database, &*group));
            group_listing(
                history,
                failure,
                (kind, database, group),
                is_configured,
                now,
            )
        })
        .collect()
}

fn group_listing(
    history: Option<&History>,
    failure: Option<&(String, String, Option<String>)>,
    (kind, database, group): (GroupKind, String, String),
    configured: bool,
    now: DateTime<Utc>,
) -> GroupListing {
    let newest = history.and_then(|h| h.dumps.first());
    let last_failure = failure
        .filter(|(run, _, _)| newest.is_none_or(|n| *run > n.run_id))
        .map(|(run_id, finished_at, error)| FailedAttempt {
            run_id: run_id.clone(),
            finished_at: finished_at.clone(),
            error: error.clone(),
        });
    let status = match (&last_failure, newest) {
        (Some(_), _) => ListStatus::Failed,
        (None, Some(_)) => ListStatus::Ok,
        (None, None) => ListStatus::None,
    };
    GroupListing {
        kind,
        name_known: history.is_none_or(|h| h.name_known),
        configured,
        status,
        newest: newest.map(|d| NewestDump {
            run_id: d.run_id.clone(),
            taken_at: d.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            age_s: (now - d.time).num_seconds().max(0),
            bytes: d.bytes,
            engine: d.engine.clone(),
            file: d.rel.display().to_string(),
        }),
        kept: history.map_or(0, |h| h.dumps.len()),
        kept_bytes: history.map_or(0, |h| h.dumps.iter().map(|d| d.bytes).sum()),
        last_failure,
        database,
        group,
    }
}

/// (kind, database, group) → its newest failed dump: (run id, finished at, error).
type Failures = BTreeMap<(GroupKind, String, String), (String, String, Option<String>)>;

/// The newest failed dump of every group in the reports.
fn failures(reports: &BTreeMap<String, RunReport>) -> Failures {
    let mut out = BTreeMap::new();
    // Oldest run first, so the newest failure is the one left.
    for (run_id, report) in reports {
        for e in report.groups.iter().filter(|e| e.status == Status::Failed) {
            let kind = match e.kind {
                Kind::Tables => GroupKind::Tables,
                Kind::Schema => GroupKind::Schema,
                Kind::Globals => continue,
            };
            let Some(db) = &e.database else { continue };
            out.insert(
                (kind, db.clone(), e.group.clone()),
                (run_id.clone(), e.finished_at.clone(), e.error.clone()),
            );
        }
    }
    out
}

/// An age to two units: "45s", "12m", "3h 05m", "2d 04h".
pub fn short_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The listing as an aligned table, then each failure's error on a line of its own.
pub fn render_text(groups: &[GroupListing]) -> String {
    let header = [
        "DATABASE", "GROUP", "STATUS", "NEWEST", "AGE", "SIZE", "ENGINE", "KEPT",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for g in groups {
        let n = g.newest.as_ref();
        let dash = || "-".to_string();
        rows.push(vec![
            crate::text::printable(&g.database),
            shown_group(g),
            match g.status {
                ListStatus::Ok => "ok",
                ListStatus::Failed => "FAILED",
                ListStatus::None => "no dump",
            }
            .to_string(),
            n.map_or_else(dash, |n| n.run_id.clone()),
            n.map_or_else(dash, |n| short_age(n.age_s)),
            n.map_or_else(dash, |n| crate::text::human_bytes(n.bytes)),
            n.and_then(|n| n.engine.clone()).unwrap_or_else(dash),
            g.kept.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for g in groups {
        if let Some(f) = &g.last_failure {
            out.push_str(&format!(
                "{}/{}: run {} failed: {}\n",
                crate::text::printable(&g.database),
                shown_group(g),
                f.run_id,
                crate::text::printable(f.error.as_deref().unwrap_or("(no error recorded)"))
            ));
        }
    }
    out
}

/// A group's name as the table shows it (`(schema)` for a database's schema dumps).
fn shown_group(g: &GroupListing) -> String {
    match g.kind {
        GroupKind::Schema => "(schema)".to_string(),
        _ => crate::text::printable(&g.group),
    }
}

/// `pg_groupdump list`.
pub fn command(
    config: &Config,
    filter: &Filter,
    identities: &[PathBuf],
    json: bool,
) -> Result<crate::exit::Outcome, crate::failure::Failure> {
    let ids = Identities::load(identities)?;
    let inv = everywhere(config, &ids, &configured_names(config));
    let now = Utc::now();
    let groups = listing(&inv, config, filter, now);
    check_filter(config, filter, &inv, &groups)?;
    if json {
        let out = Listing {
            dir: std::path::absolute(&config.backup.dir)
                .unwrap_or_else(|_| config.backup.dir.clone())
                .display()
                .to_string(),
            now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            groups,
            errors: inv.errors.clone(),
            encrypted_reports_unread: inv.sealed_reports,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("listing serializes")
        );
    } else {
        print!("{}", render_text(&groups));
    }
    for e in &inv.errors {
        crate::say!("pg_groupdump: list: {e}");
    }
    if inv.sealed_reports > 0 {
        crate::say!(
            "pg_groupdump: list: {} run reports are encrypted and no --identity was given: dumps are listed from their file names and sizes (ages from the run ids; no engines or failures)",
            inv.sealed_reports
        );
    }
    Ok(crate::exit::Outcome::Ok)
}

/// The (database, group) of every `[[group]]`.
pub fn configured_names(config: &Config) -> Vec<(String, String)> {
    config
        .groups
        .iter()
        .map(|g| (g.database.clone(), g.name.clone()))
        .collect()
}

/// A `--group` or `--database` that names nothing the store or the configuration knows is a
/// usage error naming it.
fn check_filter(
    config: &Config,
    filter: &Filter,
    inv: &Inventory,
    groups: &[GroupListing],
) -> Result<(), crate::failure::Failure> {
    let known_db = |d: &str| {
        inv.groups.iter().any(|h| h.database == d)
            || config.groups.iter().any(|g| g.database == d)
            || config
                .backup
                .databases
                .as_ref()
                .is_some_and(|l| l.iter().any(|x| x == d))
    };
    if let Some(d) = filter.databases.iter().find(|d| !known_db(d)) {
        return Err(crate::failure::Failure::Usage(format!(
            "--database {d:?}: no dump of that database in {} and no [[group]] of it in {}",
            config.backup.dir.display(),
            config.path.display()
        )));
    }
    if let Some(g) = filter
        .groups
        .iter()
        .find(|g| !groups.iter().any(|l| &l.group == *g))
    {
        return Err(crate::failure::Failure::Usage(format!(
            "--group {g:?}: no such group{} in {} or {}",
            if filter.databases.is_empty() {
                String::new()
            } else {
                format!(" in database {}", filter.databases.join(", "))
            },
            config.backup.dir.display(),
            config.path.display()
        )));
    }
    Ok(())
}

/// A point in time as `restore --at` takes it: RFC 3339 (`2026-03-01T12:00:00Z`,
/// `2026-03-01T13:00:00+01:00`), or `YYYY-MM-DD HH:MM[:SS]` in the local time zone (`TZ`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s.trim(), f).ok())
        .ok_or_else(|| {
            format!(
                "{s:?} is not a time: give RFC 3339 (2026-03-01T12:00:00Z) or \
                 \"YYYY-MM-DD HH:MM[:SS]\" in the local time zone"
            )
        })?;
    use chrono::TimeZone as _;
    chrono::Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("{s:?} does not exist in the local time zone (a clock change)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(short_age(-5), "0s");
        assert_eq!(short_age(59), "59s");
        assert_eq!(short_age(61), "1m");
        assert_eq!(short_age(3 * 3600 + 5 * 60), "3h 05m");
        assert_eq!(short_age(2 * 86400 + 4 * 3600 + 59), "2d 04h");
    }

    #[test]
    fn a_shortened_directory_takes_its_groups_name() {
        let dir = tempfile::tempdir().unwrap();
        let long = "g".repeat(300);
        let run = "20260301T120000Z";
        let file = store::dump_path(dir.path(), "shop", &long, run);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"x").unwrap();
        let inv = local(dir.path(), &Identities::default(), &[]);
        assert!(!inv.groups[0].name_known);
        assert!(inv.group(GroupKind::Tables, "shop", &long).is_none());
        let known = [("shop".to_string(), long.clone())];
        let inv = local(dir.path(), &Identities::default(), &known);
        let h = inv.group(GroupKind::Tables, "shop", &long).unwrap();
        assert!(h.name_known);
        assert_eq!(h.dumps[0].run_id, run);
        // Its time comes from the run id when there is no report.
        assert_eq!(h.dumps[0].time, parse_time("2026-03-01T12:00:00Z").unwrap());
    }

    #[test]
    fn times_in_rfc3339_or_local() {
        let utc = parse_time("2026-03-01T12:00:00Z").unwrap();
        assert_eq!(parse_time("2026-03-01T13:00:00+01:00").unwrap(), utc);
        let local = parse_time("2026-03-01 12:00").unwrap();
        assert_eq!(parse_time("2026-03-01 12:00:00").unwrap(), local);
        use chrono::TimeZone as _;
        let want = chrono::Local
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .unwrap();
        assert_eq!(local, want.with_timezone(&Utc));
        for bad in ["yesterday", "2026-03-01", "2026-13-01 12:00", ""] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
