//! Groups suggested from the catalog: `plan --suggest-groups` and `init`.
//!
//! Tables that a foreign key ties must share a snapshot, or a restore of both may find rows
//! whose referenced row is missing; so must a table and the tables it inherits from, and the
//! tables one view reads. The suggestion is the connected components of those ties
//! ([`suggest`], pure), each component with two tables or more a `[[group]]` (a partitioned
//! table stands for its partitions, as in a group). Sizes are the catalog's estimates
//! (`pg_class.relpages`, see [`crate::catalog`]): measuring exact sizes would lock every table.
//!
//! With a configuration, the foreign keys whose two tables it dumps apart (different
//! `[[group]]`s, or a grouped and an ungrouped table, or two ungrouped tables) are listed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::{self, DatabaseCatalog, Tie};
use crate::config::{Config, ConnectionConfig};
use crate::connect::{application_name, ConnParams};
use crate::exit::Outcome;
use crate::failure::Failure;
use crate::plan::{DatabasePlan, Origin};

/// A component holding at least this share of the database's estimated bytes is flagged.
const LARGE_SHARE: f64 = 0.5;

/// The suggestion for one database.
#[derive(Debug, Serialize)]
pub struct Suggestion {
    pub database: String,
    /// Tables (a partitioned table counts once, with its partitions' bytes).
    pub tables: usize,
    /// Estimated bytes of every table.
    pub bytes: i64,
    pub groups: Vec<SuggestedGroup>,
    /// Tables tied to no other: each is dumped on its own with `[ungrouped] mode = "table"`.
    pub alone: Vec<String>,
    /// Foreign keys between tables the configuration dumps apart (empty without one).
    pub crossing_foreign_keys: Vec<CrossingKey>,
}

/// One proposed `[[group]]`.
#[derive(Debug, Serialize)]
pub struct SuggestedGroup {
    pub name: String,
    pub tables: Vec<SuggestedTable>,
    pub bytes: i64,
    /// Its share of the database's estimated bytes (0 when the database has none yet).
    pub share: f64,
    /// Why it is worth a second look (most of the database, or all of it, in one snapshot).
    pub warning: Option<String>,
    /// What ties its tables: "foreign key NAME: A → B", "view V reads A, B", "A inherits B".
    pub ties: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SuggestedTable {
    pub table: String,
    pub bytes: i64,
}

/// A foreign key whose two tables are dumped apart as configured; a group is `null` for an
/// ungrouped table (dumped on its own).
#[derive(Debug, Serialize)]
pub struct CrossingKey {
    pub name: String,
    pub table: String,
    pub references: String,
    pub table_group: Option<String>,
    pub references_group: Option<String>,
}

/// Tables of the catalog as the suggestion sees them: partition trees by their root.
struct Roots<'a> {
    cat: &'a DatabaseCatalog,
    by_oid: HashMap<u32, &'a catalog::Table>,
}

impl<'a> Roots<'a> {
    fn new(cat: &'a DatabaseCatalog) -> Self {
        Roots {
            cat,
            by_oid: cat.by_oid(),
        }
    }

    /// The root of a table's partition tree, if it is a table pg_groupdump dumps.
    fn root(&self, oid: u32) -> Option<u32> {
        let t = self.by_oid.get(&oid)?;
        if t.extension_member {
            return None;
        }
        Some(self.cat.root_of(&self.by_oid, oid))
    }

    fn name(&self, oid: u32) -> String {
        self.by_oid[&oid].display()
    }

    /// Bytes of every root, its partitions included.
    fn sizes(&self) -> BTreeMap<u32, i64> {
        let mut m = BTreeMap::new();
        for t in self.cat.tables.iter().filter(|t| !t.extension_member) {
            *m.entry(self.cat.root_of(&self.by_oid, t.oid)).or_insert(0) += t.bytes.max(0);
        }
        m
    }
}

/// Union-find over root oids.
struct Components(BTreeMap<u32, u32>);

impl Components {
    fn find(&mut self, x: u32) -> u32 {
        let p = *self.0.entry(x).or_insert(x);
        if p == x {
            return x;
        }
        let r = self.find(p);
        self.0.insert(x, r);
        r
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0.insert(ra.max(rb), ra.min(rb));
        }
    }
}

/// The suggested groups of a database. `configured`: the `[[group]]` of every table as the
/// configuration has it (tables it leaves ungrouped are not in it); `None`: no configuration.
pub fn suggest(
    cat: &DatabaseCatalog,
    ties: &[Tie],
    configured: Option<&HashMap<u32, String>>,
) -> Suggestion {
    let roots = Roots::new(cat);
    let sizes = roots.sizes();
    let mut comps = Components(sizes.keys().map(|k| (*k, *k)).collect());
    // Every tie, on the component of its first table: (its tables, its description).
    let mut described: Vec<(u32, String)> = Vec::new();
    // Named after its most referenced table, else one that references fewest, else the oldest.
    let mut in_refs: HashMap<u32, usize> = HashMap::new();
    let mut out_refs: HashMap<u32, usize> = HashMap::new();
    for fk in &cat.foreign_keys {
        let (Some(a), Some(b)) = (roots.root(fk.table), roots.root(fk.references)) else {
            continue;
        };
        if a != b {
            *in_refs.entry(b).or_default() += 1;
            *out_refs.entry(a).or_default() += 1;
            comps.union(a, b);
            described.push((
                a,
                format!(
                    "foreign key {}: {} → {}",
                    crate::text::printable(&fk.name),
                    roots.name(a),
                    roots.name(b)
                ),
            ));
        }
    }
    for tie in ties {
        let (members, text) = match tie {
            Tie::Inherits { child, parent } => {
                if let Some(p) = roots.root(*parent) {
                    *in_refs.entry(p).or_default() += 1;
                }
                let m: Vec<u32> = [*child, *parent]
                    .iter()
                    .filter_map(|o| roots.root(*o))
                    .collect();
                let text = format!("{} inherits {}", roots.name(*child), roots.name(*parent));
                (m, text)
            }
            Tie::View { name, tables } => {
                let m: BTreeSet<u32> = tables.iter().filter_map(|o| roots.root(*o)).collect();
                let names: BTreeSet<String> = m.iter().map(|o| roots.name(*o)).collect();
                let names: Vec<String> = names.into_iter().collect();
                let text = format!("view {} reads {}", name, names.join(", "));
                (m.into_iter().collect(), text)
            }
        };
        if members.len() < 2 || members.iter().all(|m| *m == members[0]) {
            continue;
        }
        for m in &members[1..] {
            comps.union(members[0], *m);
        }
        described.push((members[0], text));
    }
    let total: i64 = sizes.values().sum();
    let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for r in sizes.keys() {
        let c = comps.find(*r);
        members.entry(c).or_default().push(*r);
    }
    let mut tie_text: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (first, text) in described {
        let c = comps.find(first);
        tie_text.entry(c).or_default().push(text);
    }
    let mut taken: BTreeSet<String> = cat.tables.iter().map(|t| t.display()).collect();
    let mut groups = Vec::new();
    let mut alone = Vec::new();
    let whole = members.len() == 1 && sizes.len() >= 3;
    for (c, roots_of) in &members {
        if roots_of.len() < 2 {
            alone.push(roots.name(roots_of[0]));
            continue;
        }
        let bytes: i64 = roots_of.iter().map(|r| sizes[r]).sum();
        let share = if total > 0 {
            bytes as f64 / total as f64
        } else {
            0.0
        };
        let warning = if whole {
            Some("every table of the database is tied to the others: one snapshot and one lock window for the whole database, as with a plain pg_dump".to_string())
        } else if share >= LARGE_SHARE {
            Some(format!(
                "holds {:.0}% of the database's estimated size: one snapshot and one lock window for most of it",
                share * 100.0
            ))
        } else {
            None
        };
        let hub = *roots_of
            .iter()
            .max_by_key(|r| {
                let count = |m: &HashMap<u32, usize>| m.get(r).copied().unwrap_or(0);
                (
                    count(&in_refs),
                    std::cmp::Reverse(count(&out_refs)),
                    std::cmp::Reverse(**r),
                )
            })
            .expect("two tables or more");
        let mut tables: Vec<SuggestedTable> = roots_of
            .iter()
            .map(|r| SuggestedTable {
                table: roots.name(*r),
                bytes: sizes[r],
            })
            .collect();
        tables.sort_by(|a, b| a.table.cmp(&b.table));
        groups.push(SuggestedGroup {
            name: unique_name(&roots.by_oid[&hub].name, &mut taken),
            tables,
            bytes,
            share,
            warning,
            ties: tie_text.remove(c).unwrap_or_default(),
        });
    }
    groups.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    Suggestion {
        database: cat.database.clone(),
        tables: sizes.len(),
        bytes: total,
        groups,
        alone,
        crossing_foreign_keys: configured
            .map(|c| crossing(cat, &roots, c))
            .unwrap_or_default(),
    }
}

/// A group name from a table's name: valid as a group name (see `config`), and neither a
/// table's display name (an ungrouped table's group) nor a name already suggested.
fn unique_name(table: &str, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = table
        .chars()
        .filter(|c| !c.is_control())
        .take(150)
        .collect();
    if base.is_empty() || base.starts_with('_') {
        base = format!("g{base}");
    }
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}_{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// Foreign keys whose tables the configuration dumps apart; one per pair of partition trees.
fn crossing(
    cat: &DatabaseCatalog,
    roots: &Roots<'_>,
    configured: &HashMap<u32, String>,
) -> Vec<CrossingKey> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for fk in &cat.foreign_keys {
        let (Some(a), Some(b)) = (roots.root(fk.table), roots.root(fk.references)) else {
            continue;
        };
        let group = |oid: u32| configured.get(&oid).cloned();
        let (ga, gb) = (group(fk.table), group(fk.references));
        let apart = match (&ga, &gb) {
            (Some(x), Some(y)) => x != y,
            (None, None) => a != b,
            _ => true,
        };
        if apart && seen.insert((a, b)) {
            out.push(CrossingKey {
                name: fk.name.clone(),
                table: roots.name(a),
                references: roots.name(b),
                table_group: ga,
                references_group: gb,
            });
        }
    }
    out
}

/// The `[[group]]` of every table of a database's plan (its `[[group]]`s only).
pub fn configured_groups(plan: &DatabasePlan) -> HashMap<u32, String> {
    plan.groups
        .iter()
        .filter(|g| g.origin == Origin::Config)
        .flat_map(|g| g.tables.iter().map(move |t| (t.oid, g.group.clone())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Text: TOML to paste

/// A TOML string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The `[[group]]` blocks of a suggestion, each preceded by comments (size, warning, ties).
pub fn group_blocks(s: &Suggestion) -> String {
    let mut out = String::new();
    for g in &s.groups {
        let _ = writeln!(
            out,
            "# {}, ~{} estimated ({:.0}% of the database)",
            crate::text::plural(g.tables.len(), "table"),
            crate::text::human_bytes(g.bytes as u64),
            g.share * 100.0
        );
        if let Some(w) = &g.warning {
            let _ = writeln!(out, "# WARNING: {w}");
        }
        for t in &g.ties {
            let _ = writeln!(out, "#   tied by {}", crate::text::printable(t));
        }
        let _ = writeln!(out, "[[group]]");
        let _ = writeln!(out, "name = {}", toml_str(&g.name));
        let _ = writeln!(out, "database = {}", toml_str(&s.database));
        let _ = writeln!(out, "tables = [");
        for t in &g.tables {
            let _ = writeln!(
                out,
                "    {},  # ~{}",
                toml_str(&t.table),
                crate::text::human_bytes(t.bytes as u64)
            );
        }
        let _ = writeln!(out, "]\n");
    }
    out
}

/// The suggestion as comments and `[[group]]` blocks ready to paste into groups.toml.
pub fn render_text(s: &Suggestion) -> String {
    let mut out = format!(
        "# database {}: {}, ~{} estimated (pg_class.relpages), {} suggested, {} tied to no other\n\n",
        toml_str(&s.database),
        crate::text::plural(s.tables, "table"),
        crate::text::human_bytes(s.bytes.max(0) as u64),
        crate::text::plural(s.groups.len(), "group"),
        crate::text::plural(s.alone.len(), "table"),
    );
    out.push_str(&group_blocks(s));
    if !s.alone.is_empty() {
        let _ = writeln!(
            out,
            "# Tied to no other table (each dumped on its own with [ungrouped] mode = \"table\"):\n#   {}\n",
            s.alone
                .iter()
                .map(|t| crate::text::printable(t))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !s.crossing_foreign_keys.is_empty() {
        let _ = writeln!(
            out,
            "# Foreign keys between tables dumped apart as configured today (restoring one side without the other may fail):"
        );
        let side = |g: &Option<String>| match g {
            Some(g) => format!("group {}", toml_str(g)),
            None => "ungrouped".to_string(),
        };
        for k in &s.crossing_foreign_keys {
            let _ = writeln!(
                out,
                "#   {} → {} ({}): {} / {}",
                k.table,
                k.references,
                crate::text::printable(&k.name),
                side(&k.table_group),
                side(&k.references_group)
            );
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Reads what [`suggest`] needs from one database.
async fn read(
    conn: &ConnParams,
    database: &str,
) -> Result<(DatabaseCatalog, Vec<Tie>), anyhow::Error> {
    let c = conn.connect(database, &application_name("catalog")).await?;
    let cat = catalog::read_database(&c, database).await?;
    let ties = catalog::read_ties(&c, database).await?;
    Ok((cat, ties))
}

/// `plan --suggest-groups`: the suggestion for every database of the configuration, with the
/// foreign keys it dumps apart today.
pub async fn command(config: &Config, json: bool) -> Result<Outcome, Failure> {
    let planned = crate::run::build_plan(config, &[], false).await?;
    let mut all = Vec::new();
    for db in &planned.plan.databases {
        let (cat, ties) = read(&planned.conn, &db.database)
            .await
            .map_err(Failure::Start)?;
        all.push(suggest(&cat, &ties, Some(&configured_groups(db))));
    }
    let text = if json {
        serde_json::to_string_pretty(&serde_json::json!({ "databases": all }))
            .expect("suggestion serializes")
            + "\n"
    } else {
        all.iter().map(render_text).collect()
    };
    print!("{text}");
    Ok(Outcome::Ok)
}

/// What `init` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct InitOptions {
    /// The database to read (the connection comes from PGHOST, PGPORT, PGUSER, PGPASSWORD…).
    #[arg(short, long, value_name = "DB")]
    pub database: String,
    /// The file to write; never overwritten.
    #[arg(short, long, value_name = "FILE", default_value = "groups.toml")]
    pub output: PathBuf,
    /// The backup directory the file names.
    #[arg(long, value_name = "DIR", default_value = "/var/backups/postgresql")]
    pub dir: PathBuf,
}

/// `pg_groupdump init`: a starter groups.toml for one database, with the suggested groups.
pub async fn init(opts: &InitOptions) -> Result<Outcome, Failure> {
    if opts.output.exists() || opts.output.is_symlink() {
        return Err(Failure::Usage(format!(
            "{} already exists; not overwritten (remove it, or name another file with --output)",
            opts.output.display()
        )));
    }
    let cfg = ConnectionConfig {
        maintenance_database: "postgres".into(),
        ..ConnectionConfig::default()
    };
    let conn = ConnParams::resolve(&cfg).map_err(|e| Failure::Start(e.into()))?;
    let (cat, ties) = read(&conn, &opts.database).await.map_err(Failure::Start)?;
    let s = suggest(&cat, &ties, None);
    let text = starter_file(&s, &conn, &opts.dir);
    write_new(&opts.output, &text)?;
    crate::say!(
        "wrote {}: {} suggested for database {} ({} tied to no other); check it with: pg_groupdump -c {} plan",
        opts.output.display(),
        crate::text::plural(s.groups.len(), "group"),
        crate::text::printable(&s.database),
        crate::text::plural(s.alone.len(), "table"),
        opts.output.display()
    );
    Ok(Outcome::Ok)
}

/// The starter configuration's text.
fn starter_file(s: &Suggestion, conn: &ConnParams, dir: &Path) -> String {
    let mut out = format!(
        "# groups.toml for database {db}, written by pg_groupdump init {version}.\n\
         # Every key with its default: groups.toml.example. Check this file with\n\
         #   pg_groupdump -c FILE plan\n\
         # The groups below are the tables that foreign keys, inheritance or views tie together:\n\
         # each group is dumped in one snapshot. Sizes are the catalog's estimates.\n\n\
         [connection]\n\
         host = {host}\n\
         port = {port}\n\
         user = {user}\n\
         # password_file = \"/etc/pg_groupdump/password\"   # else PGPASSWORD or ~/.pgpass\n\n\
         [backup]\n\
         dir = {dir}\n\
         databases = [{db}]\n\
         # jobs = 2\n\
         # lock_wait_timeout = \"10s\"\n\n\
         # [retention]                 # without it nothing is ever pruned\n\
         # max_age = \"14d\"\n\
         # keep_min = 1\n\
         # prune_after_run = true\n\n\
         [ungrouped]\n\
         mode = \"table\"                # every table in no group is dumped on its own\n\n",
        db = toml_str(&s.database),
        version = env!("CARGO_PKG_VERSION"),
        host = toml_str(&conn.host),
        port = conn.port,
        user = toml_str(&conn.user),
        dir = toml_str(&dir.to_string_lossy()),
    );
    out.push_str(&render_text(s));
    out
}

/// Writes a file that must not exist yet (created exclusively: never overwritten).
fn write_new(path: &Path, text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::Usage(format!(
                "{} already exists; not overwritten",
                path.display()
            )),
            _ => Failure::Usage(format!("cannot create {}: {e}", path.display())),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Failure::Start(anyhow::anyhow!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ForeignKey, Table};

    fn table(oid: u32, name: &str, bytes: i64, parent: Option<u32>) -> Table {
        Table {
            oid,
            schema: "public".into(),
            name: name.into(),
            bytes,
            partition_parent: parent,
            extension_member: false,
        }
    }

    fn fk(name: &str, table: u32, references: u32) -> ForeignKey {
        ForeignKey {
            name: name.into(),
            table,
            references,
        }
    }

    #[test]
    fn components_of_keys_views_inheritance_and_partitions() {
        let cat = DatabaseCatalog {
            database: "shop".into(),
            tables: vec![
                table(1, "orders", 100, None),
                table(2, "order_items", 300, None),
                table(3, "events", 10, None),
                table(4, "events_2026", 50, Some(3)),
                table(5, "customers", 20, None),
                table(6, "log", 5, None),
                table(7, "base", 1, None),
                table(8, "derived", 1, None),
            ],
            schemas: vec!["public".into()],
            foreign_keys: vec![
                fk("items_order", 2, 1),
                fk("ev_customer", 4, 5), // on a partition: ties its root
                fk("self", 6, 6),
            ],
            schemas_with_own_data: Default::default(),
        };
        let ties = vec![
            Tie::View {
                name: "public.v".into(),
                tables: vec![1, 5],
            },
            Tie::Inherits {
                child: 8,
                parent: 7,
            },
        ];
        let configured: HashMap<u32, String> = [
            (1, "a".to_string()),
            (2, "b".to_string()),
            (4, "a".to_string()),
        ]
        .into();
        let s = suggest(&cat, &ties, Some(&configured));
        assert_eq!(s.tables, 7);
        assert_eq!(s.groups.len(), 2, "{s:#?}");
        let big = &s.groups[0];
        let names: Vec<&str> = big.tables.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(
            names,
            [
                "public.customers",
                "public.events",
                "public.order_items",
                "public.orders"
            ]
        );
        assert_eq!(big.bytes, 480);
        assert!(big
            .warning
            .as_deref()
            .unwrap()
            .contains("% of the database"));
        assert_eq!(big.ties.len(), 3, "{:?}", big.ties);
        assert_eq!(s.groups[1].name, "base");
        assert_eq!(s.alone, ["public.log"]);
        // items_order: groups a and b; ev_customer: group a / ungrouped.
        let crossing: Vec<(&str, Option<&str>, Option<&str>)> = s
            .crossing_foreign_keys
            .iter()
            .map(|k| {
                (
                    k.name.as_str(),
                    k.table_group.as_deref(),
                    k.references_group.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            crossing,
            [
                ("items_order", Some("b"), Some("a")),
                ("ev_customer", Some("a"), None)
            ]
        );
        let text = render_text(&s);
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(parsed["group"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn names_are_valid_and_unique() {
        let mut taken = BTreeSet::from(["public.x".to_string(), "x".to_string()]);
        assert_eq!(unique_name("x", &mut taken), "x_2");
        assert_eq!(unique_name("_t", &mut taken), "g_t");
        assert_eq!(unique_name("a\nb", &mut taken), "ab");
    }
}
