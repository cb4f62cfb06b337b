//! From configuration and catalog to the list of groups to dump.
//!
//! Resolution happens per database: each `[[group]]` claims its tables (a partitioned table
//! with all its partitions, a schema with all its tables); a table claimed by two groups, or a
//! name that matches nothing, is an error naming the key. Every table no group claims becomes a
//! group of its own named `schema.table` (unless `[ungrouped] mode = "skip"` or an `exclude`
//! pattern matches). All of this happens before the first dump starts.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::catalog::{DatabaseCatalog, Table};
use crate::config::{Config, ConfigError, GroupConfig, TableRef, UngroupedMode};

/// The resolved plan for a run or for `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub databases: Vec<DatabasePlan>,
    pub warnings: Vec<String>,
}

/// One database's groups.
#[derive(Debug, Clone, Serialize)]
pub struct DatabasePlan {
    pub database: String,
    pub groups: Vec<GroupPlan>,
    /// Tables no group names, each dumped on its own (`ungrouped.mode = "table"`).
    pub ungrouped: Vec<String>,
    /// Ungrouped tables left out by `ungrouped.exclude`.
    pub excluded: Vec<String>,
    /// Every table of the database as (schema, table), grouped or not.
    #[serde(skip)]
    pub all_tables: Vec<(String, String)>,
    /// See [`DatabaseCatalog::schemas_with_own_data`].
    #[serde(skip)]
    pub schemas_with_own_data: std::collections::BTreeSet<String>,
    /// The oid of every table the catalog had when the plan was made: a table not among
    /// them at the end of a run was created during it ([`new_since_plan`]).
    #[serde(skip)]
    pub known_oids: HashSet<u32>,
}

impl DatabasePlan {
    /// Hands over the groups once a run has made its jobs, and lets go of what only the plan
    /// and the schema job needed: a run keeps the database's name and `known_oids` to the
    /// end. (With 10 000 groups the plan is ≈ 7 MB; the jobs free their share as they end.)
    pub fn take_groups(&mut self) -> Vec<GroupPlan> {
        self.ungrouped = Vec::new();
        self.excluded = Vec::new();
        self.all_tables = Vec::new();
        self.schemas_with_own_data = Default::default();
        std::mem::take(&mut self.groups)
    }

    /// `pg_dump --exclude-table-data` patterns that leave every table's data out of the
    /// schema archive. A schema whose only data is its tables' (its sequences all belong to
    /// tables, no materialized view) is one `"schema".*` pattern — pg_dump runs a catalog
    /// query per pattern, so one per table costs seconds with thousands of tables; the values
    /// of sequences owned by tables come with those tables' groups. Other schemas' tables are
    /// named one by one, so their sequences' values and views' contents stay in the archive.
    pub fn schema_data_exclusions(&self) -> Vec<String> {
        let quote = crate::text::quote_ident;
        let mut whole: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        let mut patterns = Vec::new();
        for (schema, table) in &self.all_tables {
            if self.schemas_with_own_data.contains(schema) {
                patterns.push(format!("{}.{}", quote(schema), quote(table)));
            } else {
                whole.insert(schema);
            }
        }
        patterns.extend(whole.into_iter().map(|s| format!("{}.*", quote(s))));
        patterns
    }
}

/// Where a group comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `[[group]]` of the configuration.
    Config,
    /// A table no group names, dumped on its own.
    Ungrouped,
}

/// One group: what one dump will contain.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    pub group: String,
    #[serde(skip)]
    pub database: String,
    pub origin: Origin,
    pub tables: Vec<PlannedTable>,
    /// Estimated bytes (see [`crate::catalog`]).
    pub bytes: i64,
}

/// A table in a group.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTable {
    /// `schema.table`, quoted where needed.
    pub table: String,
    #[serde(skip)]
    pub schema_name: String,
    #[serde(skip)]
    pub table_name: String,
    #[serde(skip)]
    pub oid: u32,
    pub bytes: i64,
    /// The partitioned table this one is a partition of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<String>,
}

impl GroupPlan {
    /// The tables' display names.
    pub fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.table.clone()).collect()
    }
}

/// Accumulates unmatched `exclude` patterns over all databases.
pub struct ExcludeMatcher {
    patterns: Vec<(String, globset::GlobMatcher)>,
    matched: Vec<bool>,
}

impl ExcludeMatcher {
    pub fn new(patterns: &[String]) -> Self {
        let patterns: Vec<_> = patterns
            .iter()
            .filter_map(|p| {
                globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()
                    .ok()
                    .map(|g| (p.clone(), g.compile_matcher()))
            })
            .collect();
        let matched = vec![false; patterns.len()];
        ExcludeMatcher { patterns, matched }
    }

    pub fn is_excluded(&mut self, name: &str) -> bool {
        let mut hit = false;
        for (i, (_, m)) in self.patterns.iter().enumerate() {
            if m.is_match(name) {
                self.matched[i] = true;
                hit = true;
            }
        }
        hit
    }

    /// Warnings for patterns that matched no table.
    pub fn unmatched_warnings(&self) -> Vec<String> {
        self.patterns
            .iter()
            .zip(&self.matched)
            .filter(|(_, m)| !**m)
            .map(|((p, _), _)| format!("ungrouped.exclude pattern {p:?} matched no table"))
            .collect()
    }
}

/// Resolves the groups of one database: the configuration's groups claim their tables first,
/// in file order, then every table left over becomes a group of its own (unless skipped or
/// excluded). Warnings (empty groups, foreign keys between groups) go to `warnings`.
pub fn resolve_database(
    config: &Config,
    catalog: &DatabaseCatalog,
    excludes: &mut ExcludeMatcher,
    warnings: &mut Vec<String>,
) -> Result<DatabasePlan, ConfigError> {
    let mut resolver = Resolver::new(config, catalog);
    for g in config
        .groups
        .iter()
        .filter(|g| g.database == catalog.database)
    {
        resolver.add_config_group(g, warnings)?;
    }
    let excluded = if config.ungrouped.mode == UngroupedMode::Table {
        resolver.add_ungrouped(excludes)?
    } else {
        Vec::new()
    };
    resolver.fill_tables();
    warnings.extend(resolver.cross_group_foreign_keys());
    Ok(resolver.finish(excluded))
}

/// One database's resolution in progress: which group claimed which table, and by which
/// configuration key (so a table claimed twice names both keys).
struct Resolver<'a> {
    config: &'a Config,
    catalog: &'a DatabaseCatalog,
    by_oid: HashMap<u32, &'a Table>,
    children: HashMap<u32, Vec<u32>>,
    by_name: HashMap<(&'a str, &'a str), &'a Table>,
    schemas: HashSet<&'a str>,
    /// oid -> (index in `groups`, key that claimed it)
    claimed: HashMap<u32, (usize, String)>,
    /// The groups, their tables still empty until [`Resolver::fill_tables`].
    groups: Vec<GroupPlan>,
    /// Each group's tables' oids in the order they were claimed (parallel to `groups`).
    members: Vec<Vec<u32>>,
}

impl<'a> Resolver<'a> {
    fn new(config: &'a Config, catalog: &'a DatabaseCatalog) -> Self {
        Resolver {
            config,
            catalog,
            by_oid: catalog.by_oid(),
            children: catalog.children(),
            by_name: catalog
                .tables
                .iter()
                .map(|t| ((t.schema.as_str(), t.name.as_str()), t))
                .collect(),
            schemas: catalog.schemas.iter().map(String::as_str).collect(),
            claimed: HashMap::new(),
            groups: Vec::new(),
            members: Vec::new(),
        }
    }

    fn err(&self, key: String, msg: String) -> ConfigError {
        ConfigError::new(&self.config.path, key, msg)
    }

    /// A table and all its partitions, at every level.
    fn with_descendants(&self, oid: u32) -> Vec<u32> {
        let mut out = vec![oid];
        let mut i = 0;
        while i < out.len() {
            if let Some(c) = self.children.get(&out[i]) {
                out.extend(c.iter().copied());
            }
            i += 1;
        }
        out
    }

    /// A `[[group]]`: its `tables` and then its `schemas` claim their tables.
    fn add_config_group(
        &mut self,
        g: &GroupConfig,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let db = &self.catalog.database;
        let gi = self.groups.len();
        let mut mine: Vec<u32> = Vec::new();
        for (j, r) in g.tables.iter().enumerate() {
            let key = format!("{}.tables[{j}]", g.key());
            let table = self.find_table(r, &key)?;
            self.claim(g, gi, self.with_descendants(table.oid), key, &mut mine)?;
        }
        for (j, s) in g.schemas.iter().enumerate() {
            let key = format!("{}.schemas[{j}]", g.key());
            if !self.schemas.contains(s.as_str()) {
                return Err(self.err(
                    key,
                    format!("schema {s:?} does not exist in database {db:?}"),
                ));
            }
            // A partition whose parent is in the same schema comes with its parent.
            let roots: Vec<u32> = self
                .catalog
                .tables
                .iter()
                .filter(|t| &t.schema == s)
                .filter(|t| {
                    t.partition_parent
                        .and_then(|p| self.by_oid.get(&p))
                        .is_none_or(|p| &p.schema != s)
                })
                .map(|t| t.oid)
                .collect();
            for oid in roots {
                self.claim(g, gi, self.with_descendants(oid), key.clone(), &mut mine)?;
            }
        }
        if mine.is_empty() {
            warnings.push(format!(
                "{} ({:?} in database {db:?}) has no tables: its schemas are empty; nothing to dump",
                g.key(),
                g.name
            ));
        }
        self.groups.push(GroupPlan {
            group: g.name.clone(),
            database: db.clone(),
            origin: Origin::Config,
            tables: Vec::new(),
            bytes: 0,
        });
        self.members.push(mine);
        Ok(())
    }

    /// The table a group's `tables` entry names: `schema.table` exactly, or a bare name that
    /// must be unique in the database.
    fn find_table(&self, r: &TableRef, key: &str) -> Result<&'a Table, ConfigError> {
        let db = &self.catalog.database;
        if let Some(s) = &r.schema {
            return self
                .by_name
                .get(&(s.as_str(), r.table.as_str()))
                .copied()
                .ok_or_else(|| {
                    let hint = if self.schemas.contains(s.as_str()) {
                        String::new()
                    } else {
                        format!(" (there is no schema {s:?})")
                    };
                    self.err(
                        key.to_string(),
                        format!("table {r} does not exist in database {db:?}{hint}"),
                    )
                });
        }
        let catalog = self.catalog;
        let found: Vec<&'a Table> = catalog
            .tables
            .iter()
            .filter(|t| t.name == r.table)
            .collect();
        match found[..] {
            [one] => Ok(one),
            [] => Err(self.err(
                key.to_string(),
                format!("table {r} does not exist in database {db:?}"),
            )),
            _ => {
                let list: Vec<String> = found.iter().map(|t| t.display()).collect();
                Err(self.err(
                    key.to_string(),
                    format!(
                        "{r} is ambiguous in database {db:?}: {}; write schema.table",
                        list.join(", ")
                    ),
                ))
            }
        }
    }

    /// Claims `oids` for group `gi` (config group `g`) under `key`, adding the new ones to
    /// `mine`. A table another group claimed already is an error naming both groups.
    fn claim(
        &mut self,
        g: &GroupConfig,
        gi: usize,
        oids: Vec<u32>,
        key: String,
        mine: &mut Vec<u32>,
    ) -> Result<(), ConfigError> {
        let db = &self.catalog.database;
        for oid in oids {
            match self.claimed.get(&oid) {
                Some((other, _)) if *other == gi => {}
                Some((_, other_key)) => {
                    let t = self.by_oid[&oid];
                    return Err(self.err(
                        key,
                        format!(
                            "table {} of database {db:?} is in two groups: {:?} ({other_key}) and {:?}",
                            t.display(),
                            groups_name(self.config, other_key),
                            g.name
                        ),
                    ));
                }
                None => {
                    self.claimed.insert(oid, (gi, key.clone()));
                    mine.push(oid);
                }
            }
        }
        Ok(())
    }

    /// Every table no group claimed: a group of its own, keyed by the root of its partition
    /// tree, unless an `exclude` pattern matches it. Returns the excluded tables.
    fn add_ungrouped(&mut self, excludes: &mut ExcludeMatcher) -> Result<Vec<String>, ConfigError> {
        let db = &self.catalog.database;
        let names: HashSet<String> = self.groups.iter().map(|g| g.group.clone()).collect();
        let mut excluded = Vec::new();
        for t in &self.catalog.tables {
            if t.extension_member || self.claimed.contains_key(&t.oid) {
                continue;
            }
            if t.partition_parent
                .is_some_and(|p| self.by_oid.contains_key(&p))
            {
                continue; // comes with its parent
            }
            let name = t.display();
            if excludes.is_excluded(&name) {
                excluded.push(name);
                continue;
            }
            if names.contains(&name) {
                return Err(self.err(
                    "group".into(),
                    format!(
                        "a group of database {db:?} is named {name:?}, which is also the name of the ungrouped table {name}; rename the group or put the table in it"
                    ),
                ));
            }
            let gi = self.groups.len();
            let mine: Vec<u32> = self
                .with_descendants(t.oid)
                .into_iter()
                .filter(|o| !self.claimed.contains_key(o))
                .collect();
            for o in &mine {
                self.claimed.insert(*o, (gi, "ungrouped".into()));
            }
            self.groups.push(GroupPlan {
                group: name,
                database: db.clone(),
                origin: Origin::Ungrouped,
                tables: Vec::new(),
                bytes: 0,
            });
            self.members.push(mine);
        }
        Ok(excluded)
    }

    /// Turns each group's claimed oids into its tables and size.
    fn fill_tables(&mut self) {
        let by_oid = &self.by_oid;
        for (g, oids) in self.groups.iter_mut().zip(&self.members) {
            g.tables = oids
                .iter()
                .map(|o| {
                    let t = by_oid[o];
                    PlannedTable {
                        table: t.display(),
                        schema_name: t.schema.clone(),
                        table_name: t.name.clone(),
                        oid: t.oid,
                        bytes: t.bytes,
                        partition_of: t
                            .partition_parent
                            .and_then(|p| by_oid.get(&p))
                            .map(|p| p.display()),
                    }
                })
                .collect();
            g.bytes = g.tables.iter().map(|t| t.bytes).sum();
        }
    }

    /// Warnings for foreign keys that cross groups: restoring one group without the other may
    /// fail. One per pair of partition trees and groups, not one per partition.
    fn cross_group_foreign_keys(&self) -> Vec<String> {
        let db = &self.catalog.database;
        let mut warnings = Vec::new();
        let mut seen = HashSet::new();
        for fk in &self.catalog.foreign_keys {
            let (Some((ga, _)), Some((gb, _))) = (
                self.claimed.get(&fk.table),
                self.claimed.get(&fk.references),
            ) else {
                continue;
            };
            if ga == gb {
                continue;
            }
            let ta = self.catalog.root_of(&self.by_oid, fk.table);
            let tb = self.catalog.root_of(&self.by_oid, fk.references);
            if !seen.insert((ta, tb, *ga, *gb)) {
                continue;
            }
            warnings.push(format!(
                "database {db:?}: foreign key {:?} of {} references {}, but they are in different groups ({:?} and {:?}): restoring one without the other may fail",
                fk.name,
                self.by_oid[&ta].display(),
                self.by_oid[&tb].display(),
                self.groups[*ga].group,
                self.groups[*gb].group,
            ));
        }
        warnings
    }

    /// The database's plan: the groups that have tables (an empty `[[group]]` was warned about).
    fn finish(self, excluded: Vec<String>) -> DatabasePlan {
        let mut groups = self.groups;
        groups.retain(|g| !g.tables.is_empty());
        DatabasePlan {
            database: self.catalog.database.clone(),
            ungrouped: groups
                .iter()
                .filter(|g| g.origin == Origin::Ungrouped)
                .map(|g| g.group.clone())
                .collect(),
            groups,
            excluded,
            all_tables: self
                .catalog
                .tables
                .iter()
                .map(|t| (t.schema.clone(), t.name.clone()))
                .collect(),
            schemas_with_own_data: self.catalog.schemas_with_own_data.clone(),
            known_oids: self.catalog.tables.iter().map(|t| t.oid).collect(),
        }
    }
}

/// A table created after the plan, found by a run's last pass over the catalog.
#[derive(Debug, Clone)]
pub struct NewTable {
    pub table: Table,
    /// Its partitions at every level, when it is partitioned: they come with it.
    pub descendants: Vec<Table>,
    /// Whether the run dumps it at its end, on its own: it would be an ungrouped table of
    /// its own (`[ungrouped] mode = "table"`, no group's `tables` or `schemas` claims it, no
    /// `exclude` pattern matches it, not a partition).
    pub dump_alone: bool,
}

/// The tables of `catalog` (read at the end of a run) that `plan` did not know, in catalog
/// order. A plan is made once per run; the next run plans these like any other table.
pub fn new_since_plan(
    config: &Config,
    plan: &DatabasePlan,
    catalog: &DatabaseCatalog,
) -> Vec<NewTable> {
    let by_oid = catalog.by_oid();
    let children = catalog.children();
    let mut excludes = ExcludeMatcher::new(&config.ungrouped.exclude);
    let groups: Vec<&GroupConfig> = config
        .groups
        .iter()
        .filter(|g| g.database == plan.database)
        .collect();
    let claimed = |t: &Table| {
        groups.iter().any(|g| {
            g.schemas.contains(&t.schema)
                || g.tables
                    .iter()
                    .any(|r| r.table == t.name && r.schema.as_ref().is_none_or(|s| s == &t.schema))
        })
    };
    let mut out = Vec::new();
    for t in &catalog.tables {
        if plan.known_oids.contains(&t.oid) || t.extension_member {
            continue;
        }
        let partition = t.partition_parent.is_some_and(|p| by_oid.contains_key(&p));
        let mut descendants = Vec::new();
        let mut next: Vec<u32> = children.get(&t.oid).cloned().unwrap_or_default();
        while let Some(o) = next.pop() {
            descendants.push(by_oid[&o].clone());
            next.extend(children.get(&o).into_iter().flatten());
        }
        let dump_alone = config.ungrouped.mode == UngroupedMode::Table
            && !partition
            && !claimed(t)
            && !excludes.is_excluded(&t.display());
        out.push(NewTable {
            table: t.clone(),
            descendants,
            dump_alone,
        });
    }
    out
}

/// The name of the group a claim key ("group[3].tables[0]") belongs to.
fn groups_name(config: &Config, key: &str) -> String {
    key.strip_prefix("group[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|i| config.groups.get(i))
        .map(|g| g.name.clone())
        .unwrap_or_else(|| key.to_string())
}

/// Checks the databases named in the configuration against those the server has, and returns
/// the databases to back up, in order: the server's, narrowed by `backup.databases` and
/// `backup.exclude_databases`, then by `--database` (`only`).
pub fn select_databases(
    config: &Config,
    available: &[String],
    only: &[String],
) -> Result<Vec<String>, ConfigError> {
    let have: HashSet<&str> = available.iter().map(String::as_str).collect();
    if let Some(list) = &config.backup.databases {
        for (i, d) in list.iter().enumerate() {
            if !have.contains(d.as_str()) {
                return Err(ConfigError::new(
                    &config.path,
                    format!("backup.databases[{i}]"),
                    format!("database {d:?} does not exist (or does not allow connections)"),
                ));
            }
        }
    }
    let mut selected: Vec<String> = available
        .iter()
        .filter(|d| {
            config
                .backup
                .databases
                .as_ref()
                .is_none_or(|l| l.contains(d))
        })
        .filter(|d| !config.backup.exclude_databases.contains(d))
        .cloned()
        .collect();
    check_group_databases(config, &have, &selected)?;
    if !only.is_empty() {
        if let Some(d) = only.iter().find(|d| !selected.contains(d)) {
            return Err(ConfigError::new(
                &config.path,
                "--database",
                format!("database {d:?} is not among the databases this configuration backs up"),
            ));
        }
        selected.retain(|d| only.contains(d));
    }
    Ok(selected)
}

/// Every `[[group]]`'s database must exist and be one this configuration backs up.
fn check_group_databases(
    config: &Config,
    have: &HashSet<&str>,
    selected: &[String],
) -> Result<(), ConfigError> {
    for g in &config.groups {
        let why = if !have.contains(g.database.as_str()) {
            "does not exist (or does not allow connections)"
        } else if !selected.contains(&g.database) {
            "is left out by backup.databases / backup.exclude_databases"
        } else {
            continue;
        };
        return Err(ConfigError::new(
            &config.path,
            format!("{}.database", g.key()),
            format!("database {:?} of group {:?} {why}", g.database, g.name),
        ));
    }
    Ok(())
}

/// Human-readable plan, for `pg_groupdump plan`.
pub fn render_text(plan: &Plan) -> String {
    let mut s = String::new();
    for db in &plan.databases {
        render_database(&mut s, db);
    }
    s
}

/// One database of the plan: its totals, each group with its tables, then the single-table
/// ungrouped groups in one list (there may be thousands) and what `exclude` left out.
fn render_database(s: &mut String, db: &DatabasePlan) {
    use std::fmt::Write;
    let total: i64 = db.groups.iter().map(|g| g.bytes).sum();
    let tables: usize = db.groups.iter().map(|g| g.tables.len()).sum();
    let _ = writeln!(
        s,
        "database {}: {}, {}, ~{}",
        crate::text::printable(&db.database),
        crate::text::plural(db.groups.len(), "group"),
        crate::text::plural(tables, "table"),
        crate::text::human_bytes(total.max(0) as u64)
    );
    let (ungrouped, groups): (Vec<&GroupPlan>, Vec<&GroupPlan>) = db
        .groups
        .iter()
        .partition(|g| g.origin == Origin::Ungrouped && g.tables.len() == 1);
    for g in groups {
        render_group(s, g);
    }
    if !ungrouped.is_empty() {
        let _ = writeln!(
            s,
            "  ungrouped, one dump each ({}):",
            crate::text::plural(ungrouped.len(), "table")
        );
        for g in ungrouped {
            let _ = writeln!(
                s,
                "    {} (~{})",
                crate::text::printable(&g.group),
                crate::text::human_bytes(g.bytes.max(0) as u64)
            );
        }
    }
    if !db.excluded.is_empty() {
        let _ = writeln!(
            s,
            "  excluded by ungrouped.exclude: {}",
            db.excluded.join(", ")
        );
    }
}

/// A group and its tables.
fn render_group(s: &mut String, g: &GroupPlan) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "  group {} ({}, ~{}{})",
        crate::text::printable(&g.group),
        crate::text::plural(g.tables.len(), "table"),
        crate::text::human_bytes(g.bytes.max(0) as u64),
        if g.origin == Origin::Ungrouped {
            ", ungrouped"
        } else {
            ""
        }
    );
    for t in &g.tables {
        let part = t
            .partition_of
            .as_ref()
            .map(|p| format!(", partition of {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "    {} (~{}{part})",
            crate::text::printable(&t.table),
            crate::text::human_bytes(t.bytes.max(0) as u64)
        );
    }
}

/// Groups in the order they should start: largest first, so the long ones do not start last.
pub fn by_size_desc(groups: &mut [GroupPlan]) {
    groups.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.group.cmp(&b.group)));
}

/// Names of groups per database, for `--group` selection.
pub fn group_index(plan: &Plan) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for db in &plan.databases {
        for g in &db.groups {
            m.entry(g.group.clone())
                .or_default()
                .push(db.database.clone());
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ForeignKey;
    use std::path::Path;

    fn table(oid: u32, schema: &str, name: &str, parent: Option<u32>) -> Table {
        Table {
            oid,
            schema: schema.into(),
            name: name.into(),
            bytes: oid as i64 * 10,
            partition_parent: parent,
            extension_member: false,
        }
    }

    fn catalog() -> DatabaseCatalog {
        DatabaseCatalog {
            database: "d".into(),
            tables: vec![
                table(1, "public", "orders", None),
                table(2, "public", "items", None),
                table(3, "public", "events", None),
                table(4, "public", "events_2026", Some(3)),
                table(5, "audit", "log", None),
                table(6, "public", "tmp_x", None),
            ],
            schemas: vec!["public".into(), "audit".into(), "empty".into()],
            foreign_keys: vec![ForeignKey {
                name: "fk".into(),
                table: 2,
                references: 1,
            }],
            schemas_with_own_data: ["audit".to_string()].into(),
        }
    }

    #[test]
    fn schema_archive_leaves_out_every_table_s_data_with_few_patterns() {
        let (p, _) = resolve("").unwrap();
        // public has no data of its own: one pattern; audit has (a standalone sequence, say):
        // its tables one by one, so the rest of its data stays.
        assert_eq!(
            p.schema_data_exclusions(),
            ["\"audit\".\"log\"", "\"public\".*"]
        );
    }

    fn resolve(extra: &str) -> Result<(DatabasePlan, Vec<String>), ConfigError> {
        let text = format!("[backup]\ndir = \"/b\"\n{extra}");
        let config = crate::config::parse(Path::new("g.toml"), &text)?;
        let mut ex = ExcludeMatcher::new(&config.ungrouped.exclude);
        let mut w = Vec::new();
        let p = resolve_database(&config, &catalog(), &mut ex, &mut w)?;
        w.extend(ex.unmatched_warnings());
        Ok((p, w))
    }

    fn names(p: &DatabasePlan) -> Vec<(String, Vec<String>)> {
        p.groups
            .iter()
            .map(|g| (g.group.clone(), g.table_names()))
            .collect()
    }

    #[test]
    fn groups_partitions_and_ungrouped() {
        let (p, w) = resolve(
            "[[group]]\nname = \"o\"\ndatabase = \"d\"\ntables = [\"public.orders\", \"items\"]\n\
             [[group]]\nname = \"a\"\ndatabase = \"d\"\nschemas = [\"audit\"]\n\
             [ungrouped]\nexclude = [\"public.tmp_*\", \"nothing.*\"]\n",
        )
        .unwrap();
        let n = names(&p);
        assert_eq!(
            n[0],
            (
                "o".into(),
                vec!["public.orders".into(), "public.items".into()]
            )
        );
        assert_eq!(n[1], ("a".into(), vec!["audit.log".into()]));
        assert_eq!(
            n[2],
            (
                "public.events".into(),
                vec!["public.events".into(), "public.events_2026".into()]
            )
        );
        assert_eq!(n.len(), 3);
        assert_eq!(p.excluded, vec!["public.tmp_x".to_string()]);
        assert!(w.iter().any(|w| w.contains("nothing.*")), "{w:?}");
        assert!(!w.iter().any(|w| w.contains("foreign key")), "{w:?}");
    }

    #[test]
    fn cross_group_foreign_key_warns() {
        let (_, w) =
            resolve("[[group]]\nname = \"o\"\ndatabase = \"d\"\ntables = [\"public.orders\"]\n")
                .unwrap();
        assert!(
            w.iter()
                .any(|w| w.contains("public.items") && w.contains("public.orders")),
            "{w:?}"
        );
    }

    #[test]
    fn resolution_errors_name_the_key() {
        let two = "[[group]]\nname = \"x\"\ndatabase = \"d\"\ntables = [\"public.orders\"]\n\
                   [[group]]\nname = \"y\"\ndatabase = \"d\"\ntables = [\"public.orders\"]\n";
        assert_eq!(resolve(two).unwrap_err().key, "group[1].tables[0]");
        let missing = "[[group]]\nname = \"x\"\ndatabase = \"d\"\ntables = [\"public.nope\"]\n";
        let e = resolve(missing).unwrap_err();
        assert!(e.to_string().contains("public.nope"), "{e}");
        let schema = "[[group]]\nname = \"x\"\ndatabase = \"d\"\nschemas = [\"nope\"]\n";
        assert_eq!(resolve(schema).unwrap_err().key, "group[0].schemas[0]");
        let part_twice = "[[group]]\nname = \"x\"\ndatabase = \"d\"\ntables = [\"public.events\"]\n\
                          [[group]]\nname = \"y\"\ndatabase = \"d\"\ntables = [\"public.events_2026\"]\n";
        assert!(resolve(part_twice).is_err());
        let clash =
            "[[group]]\nname = \"public.tmp_x\"\ndatabase = \"d\"\ntables = [\"public.orders\"]\n";
        assert!(resolve(clash).is_err());
    }

    #[test]
    fn skip_mode_and_empty_schema() {
        let (p, w) = resolve(
            "[[group]]\nname = \"e\"\ndatabase = \"d\"\nschemas = [\"empty\"]\n[ungrouped]\nmode = \"skip\"\n",
        )
        .unwrap();
        assert!(p.groups.is_empty());
        assert!(w.iter().any(|w| w.contains("no tables")), "{w:?}");
    }
}
