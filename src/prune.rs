//! Retention: which old dumps to delete, and deleting them.
//!
//! Three steps, kept apart so that each can be checked on its own:
//!
//! 1. [`scan`] walks the backup directory (never following a symbolic link) and keeps only the
//!    files pg_groupdump itself writes: `store`, which names every file, reads each path back
//!    (`store::parse_path`) and accepts exactly the paths it gives (and the `.ing` beside them).
//!    Anything else — symbolic links, other files, near-miss names — is listed as ignored and
//!    never touched.
//! 2. [`plan`] is pure: dumps + policy + now → a keep or delete decision, with its rule and
//!    reason, for every file. It never deletes the newest `keep_min` complete dumps of a group.
//! 3. The executor deletes what the plan says, re-checking each file just before deleting it,
//!    keeps going past a failed delete, and counts what it freed.
//!
//! # Rules, per group (one group = one directory: `<db>/<group>`, `<db>/_schema`, `_globals`,
//! `reports`)
//!
//! * The age of a file comes from the run id in its name (copies and restores change mtimes);
//!   a file dated in the future (clock skew) counts as age zero, so it is kept, and it does not
//!   take the place of one of the newest `keep_min` dumps dated up to now.
//! * The newest `keep_min` complete files (final name, no `.ing`: only complete dumps are ever
//!   renamed to it) are kept whatever their age. Every other complete file is deleted once it
//!   is older than `max_age`.
//! * `.ing` files are what a crashed run left behind: deleted. Both callers hold the run lock
//!   (`prune` takes it, `run` prunes at its end under its own lock, after its dumps finished),
//!   so no `.ing` file is being written.
//! * A group whose dump failed in the current run (`protect`) loses nothing this time.
//! * A run report is also kept while a dump of its run is kept (it holds the dump's sha256).
//! * Groups no longer in the configuration are pruned like any other, with the `[retention]`
//!   defaults; overrides come from `[[group]] max_age` / `keep_min`.
//!
//! # Shortened directory names
//!
//! A name whose encoding is longer than a file name may be is stored shortened, with a hash
//! (see `store`); such a directory cannot be decoded back into the name, though `store` still
//! recognises its files exactly. The group's name is taken from the configuration when a
//! `[[group]]` maps to that directory; otherwise it is shown as the directory name
//! (`name_known: false`) and the `[retention]` defaults apply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Config, ConfigError, GroupConfig, GroupRetention, RetentionConfig};
use crate::report::{Action, FileSummary, GroupKind, GroupSummary, Ignored, PruneSummary, Rule};
use crate::store::bucket::{Bucket, Object};
use crate::store::{self, DirName, FileKind, StoredFile};

// ---------------------------------------------------------------------------------------------
// Policy

/// How long the dumps of one group are kept: `[retention]` with the group's overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_age: Duration,
    /// ≥ 1: a group's newest complete dump is never deleted.
    pub keep_min: u32,
}

impl Policy {
    /// The default policy (groups without overrides, `_schema`, `_globals`, `reports`).
    pub fn default_of(retention: &RetentionConfig) -> Policy {
        Policy {
            max_age: retention.max_age,
            keep_min: retention.keep_min,
        }
    }

    /// The policy of a configured group.
    pub fn of_group(retention: &RetentionConfig, g: &GroupRetention) -> Policy {
        Policy {
            max_age: g.max_age.unwrap_or(retention.max_age),
            keep_min: g.keep_min.unwrap_or(retention.keep_min),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What is on disk

/// Identifies the dumps of one group on disk: (database or None for globals, group name).
pub type GroupKey = (Option<String>, String);

/// One group's directory and, where known, its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupId {
    pub kind: GroupKind,
    /// Relative to the backup directory, `/`-separated: `shop/orders`, `_globals`, `reports`.
    pub dir: String,
    pub database: Option<String>,
    /// The group name (`_schema`, `_globals`, `reports` for those), or the directory name
    /// when the name cannot be known (a shortened directory, see the module documentation).
    pub group: String,
    pub name_known: bool,
}

/// A file pg_groupdump wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// Relative to the backup directory.
    pub rel: PathBuf,
    pub run_id: String,
    /// When its run started (from the run id).
    pub time: DateTime<Utc>,
    /// An unfinished `.ing` file.
    pub partial: bool,
    pub bytes: u64,
    /// (device, inode) when scanned: a file replaced since is not deleted.
    pub ino: Option<(u64, u64)>,
}

/// The files of one group directory.
#[derive(Debug, Clone)]
pub struct GroupFiles {
    pub id: GroupId,
    pub dumps: Vec<Dump>,
}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    pub groups: Vec<GroupFiles>,
    pub ignored: Vec<Ignored>,
    pub errors: Vec<String>,
}

/// The group directory of a file `store` recognised at `rel`, and its names as far as they
/// can be known (see "Shortened directory names" above).
fn group_id(rel: &Path, file: &StoredFile) -> Option<GroupId> {
    let dir_path = rel.parent()?;
    let dir = dir_path.to_str()?.to_string();
    let dir_name = dir_path.file_name()?.to_str()?.to_string();
    let kind = match file.kind {
        FileKind::Group => GroupKind::Tables,
        FileKind::Schema => GroupKind::Schema,
        FileKind::Globals => GroupKind::Globals,
        FileKind::Report => GroupKind::Reports,
    };
    let database = match &file.database {
        None => None,
        Some(DirName::Name(n)) => Some(n.clone()),
        // A shortened database directory: shown by its directory name.
        Some(DirName::Shortened) => Some(dir.split('/').next()?.to_string()),
    };
    // A group is only known by name with its database: a group directory under a shortened
    // database directory could belong to any database (the schema directory aside).
    let group = match (&file.database, &file.group) {
        (None | Some(DirName::Name(_)), DirName::Name(g)) => Some(g.clone()),
        (_, DirName::Name(g)) if kind == GroupKind::Schema => Some(g.clone()),
        _ => None,
    };
    Some(GroupId {
        kind,
        dir,
        database,
        name_known: group.is_some(),
        group: group.unwrap_or(dir_name),
    })
}

/// Walks `root` (which should be canonical) and sorts what it finds into group directories of
/// pg_groupdump's files and everything else. Never follows a symbolic link.
pub fn scan(root: &Path) -> Scan {
    let mut out = Scan::default();
    let mut groups: BTreeMap<String, GroupFiles> = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .max_depth(3)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.errors
                    .push(format!("cannot read the backup directory: {e}"));
                continue;
            }
        };
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        let shown = rel.display().to_string();
        let ft = entry.file_type();
        if ft.is_dir() {
            if entry.depth() == 3 {
                out.ignored.push(Ignored {
                    path: shown,
                    reason: "a directory where pg_groupdump writes only files: not looked into"
                        .into(),
                });
            }
            continue;
        }
        if entry.depth() == 1 && entry.file_name() == crate::runlock::LOCK_FILE {
            continue;
        }
        let ignore = |why: &str| Ignored {
            path: shown.clone(),
            reason: why.to_string(),
        };
        if ft.is_symlink() {
            out.ignored
                .push(ignore("a symbolic link: never followed, never deleted"));
            continue;
        }
        if !ft.is_file() {
            out.ignored.push(ignore("not a regular file"));
            continue;
        }
        let recognised = store::parse_path(rel).and_then(|f| Some((group_id(rel, &f)?, f)));
        let Some((id, file)) = recognised else {
            out.ignored
                .push(ignore("not a file pg_groupdump writes (by place and name)"));
            continue;
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                out.errors.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let g = groups.entry(id.dir.clone()).or_insert_with(|| GroupFiles {
            id,
            dumps: Vec::new(),
        });
        g.dumps.push(Dump {
            rel: rel.to_path_buf(),
            run_id: file.run_id.as_str().to_string(),
            time: file.run_id.time(),
            partial: file.partial,
            bytes: meta.len(),
            ino: Some((meta.dev(), meta.ino())),
        });
    }
    out.groups = groups.into_values().collect();
    out
}

// ---------------------------------------------------------------------------------------------
// The plan

/// One group as the planner sees it.
#[derive(Debug, Clone)]
pub struct GroupInput {
    pub id: GroupId,
    pub policy: Policy,
    pub protected: bool,
    pub dumps: Vec<Dump>,
}

/// A decision about one file.
#[derive(Debug, Clone)]
pub struct Decision {
    pub dump: Dump,
    pub rule: Rule,
    pub reason: String,
}

/// The decisions about one group, newest file first.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub id: GroupId,
    pub policy: Policy,
    pub protected: bool,
    pub decisions: Vec<Decision>,
}

fn human_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// An age, to the minute (to the second below one).
fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    human_duration(Duration::from_secs(if s >= 60 { s - s % 60 } else { s }))
}

/// Decides, for every file of every group, whether it is kept or deleted, and why. Pure: no
/// I/O, `now` given. The newest `policy.keep_min` complete files dated up to `now` of every
/// group are always kept.
pub fn plan(groups: &[GroupInput], now: DateTime<Utc>) -> Vec<GroupPlan> {
    let mut plans: Vec<GroupPlan> = groups.iter().map(|g| plan_group(g, now)).collect();
    // A report is kept while any dump of its run is.
    let kept_runs: HashSet<String> = plans
        .iter()
        .filter(|p| p.id.kind != GroupKind::Reports)
        .flat_map(|p| &p.decisions)
        .filter(|d| !d.dump.partial && d.rule.action() == Action::Keep)
        .map(|d| d.dump.run_id.clone())
        .collect();
    for p in plans.iter_mut().filter(|p| p.id.kind == GroupKind::Reports) {
        for d in &mut p.decisions {
            if d.rule == Rule::Expired && kept_runs.contains(&d.dump.run_id) {
                d.rule = Rule::ReportOfKeptDumps;
                d.reason = format!(
                    "older than max_age, but the report of run {}, whose dumps are kept",
                    d.dump.run_id
                );
            }
        }
    }
    plans
}

/// Keeps the local files that are not in the bucket (`unsent`, relative to the backup
/// directory), whatever the rules said: their only copy.
fn keep_unsent(plans: &mut [GroupPlan], unsent: &std::collections::BTreeSet<PathBuf>) {
    let decisions = plans.iter_mut().flat_map(|p| &mut p.decisions);
    for d in decisions.filter(|d| d.rule.action() == Action::Delete && unsent.contains(&d.dump.rel))
    {
        d.rule = Rule::NotUploaded;
        d.reason = format!(
            "not in the bucket (its upload failed): kept until a run uploads it ({})",
            d.reason
        );
    }
}

fn plan_group(g: &GroupInput, now: DateTime<Utc>) -> GroupPlan {
    let mut dumps = g.dumps.clone();
    // Newest first; the run id orders like the time.
    dumps.sort_by(|a, b| (&b.run_id, &b.rel).cmp(&(&a.run_id, &a.rel)));
    let Policy { max_age, keep_min } = g.policy;
    let what = match g.id.kind {
        GroupKind::Reports => "reports",
        _ => "complete dumps",
    };
    let mut newest_left = keep_min;
    let mut decisions = Vec::with_capacity(dumps.len());
    for dump in dumps {
        let age = (now - dump.time).to_std().unwrap_or(Duration::ZERO);
        let (rule, reason) = if g.protected {
            (
                Rule::Protected,
                "this group's dump failed in this run: it loses nothing this time".to_string(),
            )
        } else if dump.partial {
            (
                Rule::Leftover,
                "a partial file left by an interrupted run (no run is in progress)".to_string(),
            )
        } else if dump.time > now {
            (
                Rule::Future,
                format!(
                    "dated in the future ({} is after now; clock skew?): counts as age zero",
                    dump.run_id
                ),
            )
        } else if newest_left > 0 {
            newest_left -= 1;
            (
                Rule::Newest,
                format!(
                    "one of the newest {keep_min} {what} (kept whatever its age; age {})",
                    human_age(age)
                ),
            )
        } else if age <= max_age {
            (
                Rule::Young,
                format!(
                    "not older than max_age {} (age {})",
                    human_duration(max_age),
                    human_age(age)
                ),
            )
        } else {
            (
                Rule::Expired,
                format!(
                    "older than max_age {} (age {}) and not one of the newest {keep_min} {what}",
                    human_duration(max_age),
                    human_age(age)
                ),
            )
        };
        decisions.push(Decision { dump, rule, reason });
    }
    GroupPlan {
        id: g.id.clone(),
        policy: g.policy,
        protected: g.protected,
        decisions,
    }
}

// ---------------------------------------------------------------------------------------------
// Deleting

/// Why a planned file was not deleted.
#[derive(Debug, thiserror::Error)]
enum DeleteError {
    #[error("not a plain relative path; not deleted")]
    NotRelative,
    #[error("no parent directory")]
    NoParent,
    #[error("its directory now resolves to {}; not deleted", .0.display())]
    DirectoryMoved(PathBuf),
    #[error("no longer a regular file; not deleted")]
    NotAFile,
    #[error("replaced since it was scanned; not deleted")]
    Replaced,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Deletes one planned file, re-checking first that it is still the regular file scanned, in
/// the directory scanned (no symbolic link has appeared on the way). Returns the bytes freed.
fn remove_checked(root: &Path, dump: &Dump) -> Result<u64, DeleteError> {
    if !dump
        .rel
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(DeleteError::NotRelative);
    }
    let path = root.join(&dump.rel);
    let parent = path.parent().ok_or(DeleteError::NoParent)?;
    let resolved = parent.canonicalize()?;
    if resolved != parent {
        return Err(DeleteError::DirectoryMoved(resolved));
    }
    let meta = fs::symlink_metadata(&path)?;
    if !meta.file_type().is_file() {
        return Err(DeleteError::NotAFile);
    }
    if dump.ino.is_some_and(|i| i != (meta.dev(), meta.ino())) {
        return Err(DeleteError::Replaced);
    }
    fs::remove_file(&path)?;
    Ok(meta.len())
}

/// Carries out `plans` (deleting nothing with `dry_run`) and summarises.
fn execute(
    root: &Path,
    shown_root: &Path,
    plans: Vec<GroupPlan>,
    dry_run: bool,
    summary: &mut PruneSummary,
) {
    let mut delete = |d: &Dump| remove_checked(root, d).map_err(|e| e.to_string());
    execute_with(shown_root, plans, dry_run, summary, &mut delete);
}

/// [`execute`] with the deleting left to `delete` (a file's or an object's).
fn execute_with(
    shown_root: &Path,
    plans: Vec<GroupPlan>,
    dry_run: bool,
    summary: &mut PruneSummary,
    delete: &mut dyn FnMut(&Dump) -> Result<u64, String>,
) {
    for p in plans {
        let mut g = GroupSummary {
            kind: p.id.kind,
            database: p.id.database.clone(),
            group: p.id.group.clone(),
            dir: p.id.dir.clone(),
            name_known: p.id.name_known,
            max_age: human_duration(p.policy.max_age),
            keep_min: p.policy.keep_min,
            protected: p.protected,
            kept_files: 0,
            deleted_files: 0,
            freed_bytes: 0,
            kept: Vec::new(),
            deleted: Vec::new(),
        };
        for d in p.decisions {
            let action = d.rule.action();
            let mut f = FileSummary {
                file: shown_root.join(&d.dump.rel).display().to_string(),
                run_id: d.dump.run_id.clone(),
                partial: d.dump.partial,
                bytes: d.dump.bytes,
                action,
                rule: d.rule,
                reason: d.reason,
                deleted: false,
                error: None,
            };
            match action {
                Action::Keep => {
                    g.kept_files += 1;
                    g.kept.push(f);
                    continue;
                }
                Action::Delete if dry_run => {
                    g.deleted_files += 1;
                    g.freed_bytes += f.bytes;
                }
                Action::Delete => match delete(&d.dump) {
                    Ok(bytes) => {
                        tracing::debug!("deleted {}", f.file);
                        f.deleted = true;
                        f.bytes = bytes;
                        g.deleted_files += 1;
                        g.freed_bytes += bytes;
                    }
                    Err(e) => {
                        let msg = format!("cannot delete {}: {e}", f.file);
                        tracing::warn!("{msg}");
                        summary.errors.push(msg);
                        f.error = Some(e);
                        // Still there: counted as kept.
                        g.kept_files += 1;
                    }
                },
            }
            g.deleted.push(f);
        }
        summary.kept_files += g.kept_files;
        summary.deleted_files += g.deleted_files;
        summary.freed_bytes += g.freed_bytes;
        summary.groups.push(g);
    }
}

/// The directory of a (database, group) as `store` names it, relative to the backup directory.
fn key_dir(key: &GroupKey) -> Option<String> {
    let p = match key {
        (Some(db), g) => store::dump_dir(Path::new(""), db, g),
        (None, g) if g == store::GLOBALS_GROUP => store::globals_dir(Path::new("")),
        _ => return None,
    };
    Some(p.to_str()?.to_string())
}

/// Display order: by database (schema first), then globals, then reports.
fn order(g: &GroupSummary) -> (u8, Option<String>, bool, String) {
    let rank = match g.kind {
        GroupKind::Tables | GroupKind::Schema => 0,
        GroupKind::Globals => 1,
        GroupKind::Reports => 2,
    };
    (
        rank,
        g.database.clone(),
        g.kind != GroupKind::Schema,
        g.group.clone(),
    )
}

/// Scans, plans and executes, with every file's decision in the summary.
pub fn prune_at(
    config: &Config,
    retention: &RetentionConfig,
    protect: &HashSet<GroupKey>,
    dry_run: bool,
    now: DateTime<Utc>,
) -> PruneSummary {
    let dir = &config.backup.dir;
    let shown_root = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
    let mut summary = PruneSummary {
        dry_run,
        dir: shown_root.display().to_string(),
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ..PruneSummary::default()
    };
    let root = match dir.canonicalize() {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return summary,
        Err(e) => {
            summary.errors.push(format!(
                "cannot resolve the backup directory {}: {e}",
                dir.display()
            ));
            return summary;
        }
    };
    let scan = scan(&root);
    summary.errors.extend(scan.errors);
    summary.ignored = scan.ignored;
    let mut plans = plan(&inputs(config, retention, protect, scan.groups), now);
    keep_unsent(&mut plans, &crate::store::bucket::unsent_files(&root));
    execute(&root, &shown_root, plans, dry_run, &mut summary);
    summary.groups.sort_by_key(order);
    summary
}

/// The planner's input: each group directory with its policy and protection.
fn inputs(
    config: &Config,
    retention: &RetentionConfig,
    protect: &HashSet<GroupKey>,
    groups: Vec<GroupFiles>,
) -> Vec<GroupInput> {
    let configured: HashMap<String, &GroupConfig> = config
        .groups
        .iter()
        .filter_map(|g| Some((key_dir(&(Some(g.database.clone()), g.name.clone()))?, g)))
        .collect();
    let protected: HashSet<String> = protect.iter().filter_map(key_dir).collect();
    groups
        .into_iter()
        .map(|g| {
            let mut id = g.id;
            let policy = match configured.get(&id.dir) {
                Some(c) => {
                    if !id.name_known {
                        id.group = c.name.clone();
                        id.database = Some(c.database.clone());
                        id.name_known = true;
                    }
                    Policy::of_group(retention, &c.retention)
                }
                None => Policy::default_of(retention),
            };
            GroupInput {
                protected: protected.contains(&id.dir),
                id,
                policy,
                dumps: g.dumps,
            }
        })
        .collect()
}

/// The group directories of the objects in `[storage]`'s bucket, sorted like [`scan`]'s
/// (objects that are not pg_groupdump's files are ignored).
pub fn scan_bucket(objects: Vec<Object>) -> Scan {
    let mut out = Scan::default();
    let mut groups: BTreeMap<String, GroupFiles> = BTreeMap::new();
    for o in objects {
        let recognised =
            store::parse_path(&o.relative).and_then(|f| Some((group_id(&o.relative, &f)?, f)));
        let Some((id, file)) = recognised else {
            out.ignored.push(Ignored {
                path: o.relative.display().to_string(),
                reason: "not an object pg_groupdump writes (by place and name)".into(),
            });
            continue;
        };
        let g = groups.entry(id.dir.clone()).or_insert_with(|| GroupFiles {
            id,
            dumps: Vec::new(),
        });
        g.dumps.push(Dump {
            rel: o.relative,
            run_id: file.run_id.as_str().to_string(),
            time: file.run_id.time(),
            partial: file.partial,
            bytes: o.size,
            ino: None,
        });
    }
    out.groups = groups.into_values().collect();
    out
}

/// [`prune_at`] for the bucket of `[storage]`: the same planner and rules on the objects under
/// its prefix. Runs on a blocking thread of the runtime (it waits for the bucket's requests).
pub fn prune_bucket_at(
    config: &Config,
    retention: &RetentionConfig,
    protect: &HashSet<GroupKey>,
    dry_run: bool,
    now: DateTime<Utc>,
    bucket: &Bucket,
) -> PruneSummary {
    let rt = tokio::runtime::Handle::current();
    let mut summary = PruneSummary {
        dry_run,
        dir: bucket.url().to_string(),
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ..PruneSummary::default()
    };
    let objects = match rt.block_on(bucket.list()) {
        Ok(o) => o,
        Err(e) => {
            summary.errors.push(e.to_string());
            return summary;
        }
    };
    let scan = scan_bucket(objects);
    summary.ignored = scan.ignored;
    let plans = plan(&inputs(config, retention, protect, scan.groups), now);
    let mut delete = |d: &Dump| {
        rt.block_on(bucket.delete(&d.rel))
            .map(|()| d.bytes)
            .map_err(|e| e.to_string())
    };
    let shown = PathBuf::from(bucket.url());
    execute_with(&shown, plans, dry_run, &mut summary, &mut delete);
    summary.groups.sort_by_key(order);
    summary
}

/// Adds the bucket's prune summary to the backup directory's.
fn merge(into: &mut PruneSummary, other: PruneSummary) {
    into.kept_files += other.kept_files;
    into.deleted_files += other.deleted_files;
    into.freed_bytes += other.freed_bytes;
    into.groups.extend(other.groups);
    into.errors.extend(other.errors);
    into.ignored.extend(other.ignored);
}

/// Prunes `config.backup.dir` by the retention rules. The caller holds the run lock (so `.ing`
/// files are leftovers, not dumps being written). Groups in `protect` (their dump failed in
/// this run) lose nothing. The summary lists, per group, the files deleted (not those kept).
/// With `bucket` (`[storage]`), the bucket is pruned by the same rules too.
pub fn prune(
    config: &Config,
    retention: &RetentionConfig,
    protect: &HashSet<GroupKey>,
    dry_run: bool,
    bucket: Option<&Bucket>,
) -> PruneSummary {
    let now = Utc::now();
    let mut s = prune_at(config, retention, protect, dry_run, now);
    if let Some(b) = bucket {
        merge(
            &mut s,
            prune_bucket_at(config, retention, protect, dry_run, now, b),
        );
    }
    for g in &mut s.groups {
        g.kept.clear();
    }
    if s.deleted_files > 0 || !s.errors.is_empty() {
        tracing::info!(
            "pruned {}, {} freed{}",
            crate::text::plural(s.deleted_files as usize, "file"),
            crate::text::human_bytes(s.freed_bytes),
            if s.errors.is_empty() {
                String::new()
            } else {
                format!(", {}", crate::text::plural(s.errors.len(), "error"))
            }
        );
    }
    s
}

/// The text `prune` prints.
pub fn render_text(s: &PruneSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "prune {}{}",
        s.dir,
        if s.dry_run {
            " (dry run: nothing is deleted)"
        } else {
            ""
        }
    );
    for g in &s.groups {
        write_group(&mut out, g, s.dry_run);
    }
    for i in &s.ignored {
        let _ = writeln!(
            out,
            "ignored: {}: {}",
            crate::text::printable(&i.path),
            i.reason
        );
    }
    let _ = writeln!(
        out,
        "{} {}, {} {}; kept {}{}",
        if s.dry_run { "would delete" } else { "deleted" },
        crate::text::plural(s.deleted_files as usize, "file"),
        if s.dry_run { "would free" } else { "freed" },
        crate::text::human_bytes(s.freed_bytes),
        crate::text::plural(s.kept_files as usize, "file"),
        if s.errors.is_empty() {
            String::new()
        } else {
            format!("; {}", crate::text::plural(s.errors.len(), "error"))
        }
    );
    out
}

/// One group of [`render_text`]: its counts and policy, then each file with its reason.
fn write_group(out: &mut String, g: &GroupSummary, dry_run: bool) {
    use std::fmt::Write;
    let who = match (&g.database, g.kind) {
        (Some(db), _) => format!(
            "{} / {}",
            crate::text::printable(db),
            crate::text::printable(&g.group)
        ),
        (None, _) => crate::text::printable(&g.group),
    };
    let _ = writeln!(
        out,
        "{who}: keep {}, {} {} ({}){}   [max_age {}, keep_min {}]",
        g.kept_files,
        if dry_run { "would delete" } else { "delete" },
        g.deleted_files,
        crate::text::human_bytes(g.freed_bytes),
        if g.protected {
            " — its dump failed in this run"
        } else {
            ""
        },
        g.max_age,
        g.keep_min
    );
    let mut files: Vec<&FileSummary> = g.kept.iter().chain(&g.deleted).collect();
    files.sort_by(|a, b| b.run_id.cmp(&a.run_id).then(a.file.cmp(&b.file)));
    for f in files {
        let name = Path::new(&f.file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let what = match (f.action, f.deleted, &f.error) {
            (Action::Keep, ..) => "keep  ",
            (Action::Delete, _, Some(_)) => "FAILED",
            (Action::Delete, true, _) => "delete",
            (Action::Delete, false, _) => "delete",
        };
        let _ = writeln!(
            out,
            "  {what}  {}  {}  {}{}",
            crate::text::printable(&name),
            crate::text::human_bytes(f.bytes),
            f.reason,
            f.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}

/// `pg_groupdump prune [--dry-run] [--json]`: takes the run lock, prunes, prints per group what
/// is kept and deleted and why, and the bytes freed. Returns how it ended: `Ok`, or
/// `SomeFailed` when some file could not be deleted; `Failure::Config` without `[retention]`;
/// `Failure::Locked` while a run holds the backup directory.
pub fn command(
    config: &Config,
    dry_run: bool,
    json: bool,
) -> Result<crate::exit::Outcome, crate::failure::Failure> {
    let Some(retention) = &config.retention else {
        return Err(crate::failure::Failure::Config(ConfigError::new(
            &config.path,
            "retention",
            "there is no [retention] table, so nothing is ever pruned (add one with max_age)",
        )));
    };
    let dir = &config.backup.dir;
    // Nothing there yet: nothing to prune (and no lock file to create).
    let _lock = if dir.is_dir() {
        Some(crate::runlock::RunLock::acquire(dir).map_err(crate::failure::Failure::Locked)?)
    } else {
        None
    };
    let now = Utc::now();
    let mut summary = prune_at(config, retention, &HashSet::new(), dry_run, now);
    if let Some(storage) = &config.storage {
        let bucket =
            Bucket::open(storage, dir).map_err(|e| crate::failure::Failure::Start(e.into()))?;
        let none = HashSet::new();
        merge(
            &mut summary,
            prune_bucket_at(config, retention, &none, dry_run, now, &bucket),
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        print!("{}", render_text(&summary));
    }
    for e in &summary.errors {
        eprintln!("pg_groupdump: prune: {e}");
    }
    Ok(if summary.errors.is_empty() {
        crate::exit::Outcome::Ok
    } else {
        crate::exit::Outcome::SomeFailed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn now() -> DateTime<Utc> {
        store::parse_run_id("20260301T120000Z").unwrap().time()
    }

    fn rid(days_ago: i64) -> String {
        (now() - chrono::Duration::days(days_ago))
            .format("%Y%m%dT%H%M%SZ")
            .to_string()
    }

    fn dump(run_id: &str, partial: bool) -> Dump {
        let mut name = format!("db.g.{run_id}.dump");
        if partial {
            name.push_str(".ing");
        }
        Dump {
            rel: PathBuf::from("db/g").join(name),
            run_id: run_id.to_string(),
            time: store::parse_run_id(run_id).unwrap().time(),
            partial,
            bytes: 10,
            ino: None,
        }
    }

    fn id(kind: GroupKind, dir: &str) -> GroupId {
        GroupId {
            kind,
            dir: dir.into(),
            database: Some("db".into()),
            group: "g".into(),
            name_known: true,
        }
    }

    fn group(dumps: Vec<Dump>, max_age_days: u64, keep_min: u32) -> GroupInput {
        GroupInput {
            id: id(GroupKind::Tables, "db/g"),
            policy: Policy {
                max_age: Duration::from_secs(max_age_days * DAY),
                keep_min,
            },
            protected: false,
            dumps,
        }
    }

    /// (run id, rule) of a plan, newest first.
    fn rules(p: &GroupPlan) -> Vec<(String, Rule)> {
        p.decisions
            .iter()
            .map(|d| (d.dump.run_id.clone(), d.rule))
            .collect()
    }

    #[test]
    fn group_overrides_replace_the_defaults() {
        let p = Path::new("groups.toml");
        let text = "[backup]\ndir = \"/b\"\n[retention]\nmax_age = \"4d\"\nkeep_min = 2\n\
                    [[group]]\nname = \"g\"\ndatabase = \"d\"\ntables = [\"t\"]\n\
                    max_age = \"30d\"\nkeep_min = 5\n";
        let c = crate::config::parse(p, text).unwrap();
        let r = c.retention.as_ref().unwrap();
        assert_eq!(
            Policy::of_group(r, &c.groups[0].retention),
            Policy {
                max_age: Duration::from_secs(30 * DAY),
                keep_min: 5
            }
        );
        assert_eq!(
            Policy::of_group(r, &GroupRetention::default()),
            Policy::default_of(r)
        );
        assert_eq!(
            Policy::default_of(r),
            Policy {
                max_age: Duration::from_secs(4 * DAY),
                keep_min: 2
            }
        );
    }

    #[test]
    fn rule_age() {
        let g = group(
            vec![
                dump(&rid(1), false),
                dump(&rid(5), false),
                dump(&rid(3), false),
            ],
            4,
            1,
        );
        let p = &plan(&[g], now())[0];
        assert_eq!(
            rules(p),
            vec![
                (rid(1), Rule::Newest),
                (rid(3), Rule::Young),
                (rid(5), Rule::Expired)
            ]
        );
        assert_eq!(p.decisions[2].rule.action(), Action::Delete);
        assert!(p.decisions[2].reason.contains("older than max_age 4days"));
        // Exactly max_age old is not older.
        let g = group(vec![dump(&rid(0), false), dump(&rid(4), false)], 4, 1);
        assert_eq!(plan(&[g], now())[0].decisions[1].rule, Rule::Young);
    }

    #[test]
    fn a_file_not_in_the_bucket_is_kept_whatever_the_rules() {
        let (unsent, sent, partial) = (
            dump(&rid(10), false),
            dump(&rid(9), false),
            dump(&rid(8), true),
        );
        let g = group(
            vec![dump(&rid(1), false), unsent.clone(), sent, partial.clone()],
            4,
            1,
        );
        let mut plans = plan(&[g], now());
        let set = [unsent.rel.clone(), partial.rel.clone()]
            .into_iter()
            .collect();
        keep_unsent(&mut plans, &set);
        assert_eq!(
            rules(&plans[0]),
            vec![
                (rid(1), Rule::Newest),
                (rid(8), Rule::NotUploaded),
                (rid(9), Rule::Expired),
                (rid(10), Rule::NotUploaded),
            ]
        );
        assert_eq!(plans[0].decisions[3].rule.action(), Action::Keep);
        assert!(plans[0].decisions[3].reason.contains("its upload failed"));
    }

    #[test]
    fn rule_keep_min_keeps_the_newest_whatever_their_age() {
        let old: Vec<Dump> = [30, 20, 40, 50]
            .iter()
            .map(|d| dump(&rid(*d), false))
            .collect();
        let p = &plan(&[group(old.clone(), 4, 2)], now())[0];
        assert_eq!(
            rules(p),
            vec![
                (rid(20), Rule::Newest),
                (rid(30), Rule::Newest),
                (rid(40), Rule::Expired),
                (rid(50), Rule::Expired)
            ]
        );
        // keep_min larger than what there is: everything kept.
        let p = &plan(&[group(old, 4, 10)], now())[0];
        assert!(p.decisions.iter().all(|d| d.rule == Rule::Newest));
        // A partial file never counts as one of the newest.
        let p = &plan(
            &[group(
                vec![dump(&rid(10), false), dump(&rid(9), true)],
                4,
                1,
            )],
            now(),
        )[0];
        assert_eq!(
            rules(p),
            vec![(rid(9), Rule::Leftover), (rid(10), Rule::Newest)]
        );
    }

    #[test]
    fn rule_clock_skew_counts_as_age_zero_and_does_not_displace_the_newest() {
        let future = (now() + chrono::Duration::days(400))
            .format("%Y%m%dT%H%M%SZ")
            .to_string();
        let g = group(
            vec![
                dump(&future, false),
                dump(&rid(10), false),
                dump(&rid(12), false),
            ],
            4,
            1,
        );
        let p = &plan(&[g], now())[0];
        assert_eq!(
            rules(p),
            vec![
                (future.clone(), Rule::Future),
                (rid(10), Rule::Newest),
                (rid(12), Rule::Expired)
            ]
        );
        assert!(p.decisions[0].reason.contains("age zero"));
    }

    #[test]
    fn rule_empty_group_plans_nothing() {
        let p = plan(&[group(Vec::new(), 4, 1)], now());
        assert_eq!(p.len(), 1);
        assert!(p[0].decisions.is_empty());
        assert!(plan(&[], now()).is_empty());
    }

    #[test]
    fn rule_failed_run_protects_the_whole_group() {
        let mut g = group(
            vec![
                dump(&rid(10), false),
                dump(&rid(20), false),
                dump(&rid(0), true),
            ],
            4,
            1,
        );
        g.protected = true;
        let p = &plan(&[g], now())[0];
        assert!(p.decisions.iter().all(|d| d.rule == Rule::Protected));
        assert!(p.decisions.iter().all(|d| d.rule.action() == Action::Keep));
    }

    #[test]
    fn rule_reports_are_kept_with_their_dumps() {
        let report = |r: &str| Dump {
            rel: PathBuf::from(format!("reports/{r}.json")),
            ..dump(r, false)
        };
        let dumps = group(vec![dump(&rid(10), false), dump(&rid(20), false)], 4, 1);
        let reports = GroupInput {
            id: id(GroupKind::Reports, "reports"),
            policy: dumps.policy,
            protected: false,
            dumps: vec![report(&rid(1)), report(&rid(10)), report(&rid(20))],
        };
        let p = plan(&[dumps, reports], now());
        assert_eq!(
            rules(&p[1]),
            vec![
                (rid(1), Rule::Newest),
                (rid(10), Rule::ReportOfKeptDumps),
                (rid(20), Rule::Expired)
            ]
        );
    }

    fn write(p: &Path, data: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    #[test]
    fn scan_ignores_unknown_files_and_symlinks_pointing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("backup");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let old = "20200101T000000Z";
        let victim = outside.join("precious");
        write(&victim, b"not a backup");
        // An old, expired dump of our own, to show the rest is not spared by accident.
        let ours = store::dump_path(&root, "shop", "orders", old);
        write(&ours, b"dump");
        let newest = store::dump_path(&root, "shop", "orders", "20200102T000000Z");
        write(&newest, b"dump2");
        // A symlink with exactly our name, pointing outside.
        let link = store::dump_path(&root, "shop", "orders", "20190101T000000Z");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        // A symlinked group directory pointing outside, holding a file named like ours.
        let out_group = outside.join("g");
        std::os::unix::fs::symlink(&out_group, root.join("shop").join("g")).unwrap();
        write(&out_group.join(format!("shop.g.{old}.dump")), b"outside");
        // Unknown files.
        write(&root.join("notes.txt"), b"hello");
        write(
            &root
                .join("shop/orders")
                .join(format!("shop.orders.{old}.dump.bak")),
            b"bak",
        );

        let s = scan(&root.canonicalize().unwrap());
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].id.dir, "shop/orders");
        assert_eq!(s.groups[0].dumps.len(), 2);
        let ignored: Vec<&str> = s.ignored.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            ignored,
            vec![
                "notes.txt",
                "shop/g",
                "shop/orders/shop.orders.20190101T000000Z.dump",
                &format!("shop/orders/shop.orders.{old}.dump.bak"),
            ]
        );
        assert!(s.ignored[1].reason.contains("symbolic link"));
        assert!(s.ignored[2].reason.contains("symbolic link"));
        assert!(s.ignored[3]
            .reason
            .contains("not a file pg_groupdump writes"));

        // Prune all of it with a policy that would delete everything but the newest.
        let inputs: Vec<GroupInput> = s
            .groups
            .into_iter()
            .map(|g| GroupInput {
                id: g.id,
                policy: Policy {
                    max_age: Duration::from_secs(1),
                    keep_min: 1,
                },
                protected: false,
                dumps: g.dumps,
            })
            .collect();
        let root_c = root.canonicalize().unwrap();
        let mut summary = PruneSummary::default();
        execute(
            &root_c,
            &root,
            plan(&inputs, Utc::now()),
            false,
            &mut summary,
        );
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        assert_eq!((summary.deleted_files, summary.freed_bytes), (1, 4));
        assert!(!ours.exists());
        assert!(newest.exists());
        assert_eq!(fs::read(&victim).unwrap(), b"not a backup");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(out_group.join(format!("shop.g.{old}.dump")).exists());
        assert!(root.join("notes.txt").exists());
    }

    #[test]
    fn executor_keeps_going_past_a_failed_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let ids = [
            "20200101T000000Z",
            "20200102T000000Z",
            "20200103T000000Z",
            "20200104T000000Z",
        ];
        for r in ids {
            write(&store::dump_path(&root, "db", "g", r), b"12345");
        }
        let s = scan(&root);
        let inputs = vec![GroupInput {
            id: s.groups[0].id.clone(),
            policy: Policy {
                max_age: Duration::from_secs(1),
                keep_min: 1,
            },
            protected: false,
            dumps: s.groups[0].dumps.clone(),
        }];
        let plans = plan(&inputs, Utc::now());
        // Between scan and delete: one file vanishes, one is replaced by a directory.
        fs::remove_file(store::dump_path(&root, "db", "g", ids[1])).unwrap();
        let replaced = store::dump_path(&root, "db", "g", ids[2]);
        fs::remove_file(&replaced).unwrap();
        fs::create_dir(&replaced).unwrap();
        let mut summary = PruneSummary::default();
        execute(&root, &root, plans, false, &mut summary);
        assert_eq!(summary.errors.len(), 2, "{:?}", summary.errors);
        assert_eq!((summary.deleted_files, summary.freed_bytes), (1, 5));
        assert!(!store::dump_path(&root, "db", "g", ids[0]).exists());
        assert!(replaced.is_dir());
        assert!(store::dump_path(&root, "db", "g", ids[3]).exists());
        let g = &summary.groups[0];
        assert_eq!(g.deleted.iter().filter(|f| f.error.is_some()).count(), 2);
    }

    #[test]
    fn dry_run_deletes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        for r in ["20200101T000000Z", "20200102T000000Z"] {
            write(&store::dump_path(&root, "db", "g", r), b"123");
        }
        let s = scan(&root);
        let inputs: Vec<GroupInput> = s
            .groups
            .into_iter()
            .map(|g| GroupInput {
                id: g.id,
                policy: Policy {
                    max_age: Duration::from_secs(1),
                    keep_min: 1,
                },
                protected: false,
                dumps: g.dumps,
            })
            .collect();
        let mut summary = PruneSummary {
            dry_run: true,
            ..Default::default()
        };
        execute(&root, &root, plan(&inputs, Utc::now()), true, &mut summary);
        assert_eq!((summary.deleted_files, summary.freed_bytes), (1, 3));
        assert!(!summary.groups[0].deleted[0].deleted);
        assert!(store::dump_path(&root, "db", "g", "20200101T000000Z").exists());
    }

    #[test]
    fn shortened_group_directories_are_named_by_their_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let long = "x".repeat(300);
        let p = store::dump_path(&root, "shop", &long, "20200101T000000Z");
        write(&p, b"1");
        write(
            &store::dump_path(&root, "shop", store::SCHEMA_GROUP, "20200101T000000Z"),
            b"2",
        );
        let s = scan(&root);
        assert!(s.ignored.is_empty(), "{:?}", s.ignored);
        let ids: Vec<&GroupId> = s.groups.iter().map(|g| &g.id).collect();
        let dir = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(ids.len(), 2);
        // Sorted by directory: `shop/_schema` first.
        assert_eq!(ids[0].kind, GroupKind::Schema);
        assert!(ids[0].name_known);
        assert_eq!(ids[1].kind, GroupKind::Tables);
        assert_eq!(ids[1].database.as_deref(), Some("shop"));
        assert_eq!((ids[1].group.as_str(), ids[1].name_known), (dir, false));
        assert_eq!(
            key_dir(&(Some("shop".into()), long)),
            Some(ids[1].dir.clone())
        );
    }
}
