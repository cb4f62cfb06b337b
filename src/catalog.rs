//! What the server has: databases, schemas, tables, partitions, foreign keys, versions.
//!
//! Every query here reads system catalogs only and takes no lock on a user table, so listing
//! a database never queues behind (or in front of) an application's DDL. That is why sizes are
//! the planner's estimates from `pg_class.relpages` rather than `pg_total_relation_size()`,
//! which opens, and so locks, every relation it measures.

use std::collections::HashMap;

use tokio_postgres::Client;

/// A catalog query failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the catalog of database {database:?}: {message}")]
pub struct CatalogError {
    pub database: String,
    pub message: String,
}

fn cat_err(database: &str) -> impl Fn(tokio_postgres::Error) -> CatalogError + '_ {
    move |e| CatalogError {
        database: database.to_string(),
        message: crate::text::pg_error_text(&e),
    }
}

/// A table (ordinary or partitioned) of one database.
#[derive(Debug, Clone)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Estimated bytes of heap, TOAST and indexes.
    pub bytes: i64,
    /// The direct parent when this table is a partition.
    pub partition_parent: Option<u32>,
    /// Member of an extension (dumped by the extension, not on its own).
    pub extension_member: bool,
}

impl Table {
    /// `schema.table`, quoted where needed (see [`crate::text::display_name`]).
    pub fn display(&self) -> String {
        crate::text::display_name(&self.schema, &self.name)
    }
}

/// A foreign key between two tables.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    pub name: String,
    pub table: u32,
    pub references: u32,
}

/// The catalog of one database, as far as planning needs it.
#[derive(Debug, Clone)]
pub struct DatabaseCatalog {
    pub database: String,
    pub tables: Vec<Table>,
    pub schemas: Vec<String>,
    pub foreign_keys: Vec<ForeignKey>,
    /// Schemas holding data that only the schema archive carries: a materialized view, or a
    /// sequence no table owns.
    pub schemas_with_own_data: std::collections::BTreeSet<String>,
}

impl DatabaseCatalog {
    /// Tables by oid.
    pub fn by_oid(&self) -> HashMap<u32, &Table> {
        self.tables.iter().map(|t| (t.oid, t)).collect()
    }

    /// Direct partitions of each partitioned table.
    pub fn children(&self) -> HashMap<u32, Vec<u32>> {
        let mut m: HashMap<u32, Vec<u32>> = HashMap::new();
        for t in &self.tables {
            if let Some(p) = t.partition_parent {
                m.entry(p).or_default().push(t.oid);
            }
        }
        m
    }

    /// The top of a table's partition tree (itself when it is no partition).
    pub fn root_of(&self, by_oid: &HashMap<u32, &Table>, mut oid: u32) -> u32 {
        let mut guard = 0;
        while let Some(p) = by_oid.get(&oid).and_then(|t| t.partition_parent) {
            if !by_oid.contains_key(&p) || guard > 1000 {
                break;
            }
            oid = p;
            guard += 1;
        }
        oid
    }
}

/// `server_version_num`, e.g. 150018.
pub async fn server_version_num(client: &Client) -> Result<i32, CatalogError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(cat_err("(maintenance)"))?;
    Ok(row.get(0))
}

/// Databases that accept connections, templates excluded, by name.
pub async fn list_databases(client: &Client) -> Result<Vec<String>, CatalogError> {
    let rows = client
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database \
             WHERE datallowconn AND NOT datistemplate ORDER BY datname",
            &[],
        )
        .await
        .map_err(cat_err("(maintenance)"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether the session's role may read role passwords (pg_authid), which `pg_dumpall
/// --globals-only` needs unless told `--no-role-passwords`.
pub async fn can_read_role_passwords(client: &Client) -> Result<bool, CatalogError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
            &[],
        )
        .await
        .map_err(cat_err("(maintenance)"))?;
    Ok(row.get(0))
}

const SYSTEM_SCHEMA_FILTER: &str = "n.nspname <> 'information_schema' \
     AND n.nspname !~ '^pg_(catalog$|toast|temp_)'";

/// Reads the tables, schemas and foreign keys of the database `client` is connected to.
pub async fn read_database(
    client: &Client,
    database: &str,
) -> Result<DatabaseCatalog, CatalogError> {
    let e = cat_err(database);
    Ok(DatabaseCatalog {
        database: database.to_string(),
        tables: read_tables(client).await.map_err(&e)?,
        schemas: read_schemas(client).await.map_err(&e)?,
        foreign_keys: read_foreign_keys(client).await.map_err(&e)?,
        schemas_with_own_data: read_schemas_with_own_data(client).await.map_err(&e)?,
    })
}

/// Which relations [`read_tables`] reads (`c` a `pg_class`, `n` its `pg_namespace`).
const TABLE_FILTER: &str = "c.relkind IN ('r', 'p') AND c.relpersistence <> 't'";

/// Whether the database has a table (as [`read_tables`] sees them) whose oid is not among
/// `known`: one cheap query, where reading the catalog again costs as much as the plan did.
pub async fn has_table_not_in(
    client: &Client,
    known: &[u32],
) -> Result<bool, tokio_postgres::Error> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE {TABLE_FILTER} AND {SYSTEM_SCHEMA_FILTER}
            AND NOT EXISTS (SELECT 1 FROM unnest($1::pg_catalog.oid[]) k WHERE k = c.oid))"
    );
    Ok(client.query_one(&sql, &[&known]).await?.get(0))
}

/// Ordinary and partitioned tables outside the system schemas (temporary ones left out), with
/// their estimated size: heap, TOAST and indexes.
async fn read_tables(client: &Client) -> Result<Vec<Table>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text,
                (greatest(c.relpages, 0)::bigint
                 + coalesce((SELECT greatest(t.relpages, 0) FROM pg_catalog.pg_class t WHERE t.oid = c.reltoastrelid), 0)
                 + coalesce((SELECT sum(greatest(i.relpages, 0)) FROM pg_catalog.pg_index x
                             JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
                             WHERE x.indrelid = c.oid), 0)::bigint
                ) * current_setting('block_size')::bigint,
                (SELECT h.inhparent FROM pg_catalog.pg_inherits h
                  WHERE c.relispartition AND h.inhrelid = c.oid LIMIT 1),
                EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                         WHERE d.classid = 'pg_catalog.pg_class'::regclass
                           AND d.objid = c.oid AND d.deptype = 'e')
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE {TABLE_FILTER} AND {SYSTEM_SCHEMA_FILTER}
          ORDER BY n.nspname, c.relname"
    );
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| Table {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            bytes: r.get(3),
            partition_parent: r.get(4),
            extension_member: r.get(5),
        })
        .collect())
}

/// Schemas outside the system ones, by name.
async fn read_schemas(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER} ORDER BY 1"
    );
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Every foreign key between two tables.
async fn read_foreign_keys(client: &Client) -> Result<Vec<ForeignKey>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT conname::text, conrelid, confrelid FROM pg_catalog.pg_constraint \
             WHERE contype = 'f' AND conrelid <> 0 AND confrelid <> 0",
            &[],
        )
        .await?
        .iter()
        .map(|r| ForeignKey {
            name: r.get(0),
            table: r.get(1),
            references: r.get(2),
        })
        .collect())
}

/// See [`DatabaseCatalog::schemas_with_own_data`]: schemas with a materialized view or a
/// sequence no table owns (neither an auto nor an internal dependency on a table).
async fn read_schemas_with_own_data(
    client: &Client,
) -> Result<std::collections::BTreeSet<String>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT DISTINCT n.nspname::text
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE {SYSTEM_SCHEMA_FILTER}
            AND (c.relkind = 'm'
                 OR (c.relkind = 'S' AND NOT EXISTS (
                        SELECT 1 FROM pg_catalog.pg_depend d
                         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                           AND d.refclassid = 'pg_catalog.pg_class'::regclass
                           AND d.deptype IN ('a', 'i'))))"
    );
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What ties tables together besides a foreign key (see [`read_ties`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tie {
    /// `child` inherits from `parent` (table inheritance, not partitioning).
    Inherits { child: u32, parent: u32 },
    /// A view or materialized view reading several tables (directly or through other views).
    View { name: String, tables: Vec<u32> },
}

/// Table inheritance (partitions left out: they come with their partitioned table) and views
/// (and materialized views) that read two tables or more, through other views too — from
/// `pg_inherits`, and `pg_depend` on `pg_rewrite`. Catalogs only, like everything here.
pub async fn read_ties(client: &Client, database: &str) -> Result<Vec<Tie>, CatalogError> {
    let e = cat_err(database);
    let mut ties: Vec<Tie> = client
        .query(
            "SELECT i.inhrelid, i.inhparent FROM pg_catalog.pg_inherits i
               JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
              WHERE NOT c.relispartition AND c.relkind IN ('r', 'p')
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(&e)?
        .iter()
        .map(|r| Tie::Inherits {
            child: r.get(0),
            parent: r.get(1),
        })
        .collect();
    let sql = format!(
        "SELECT v.oid, n.nspname::text, v.relname::text, d.refobjid, t.relkind IN ('r', 'p')
           FROM pg_catalog.pg_rewrite r
           JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
           JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
           JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass
                AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass
                AND d.refobjid <> v.oid
           JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
          WHERE v.relkind IN ('v', 'm') AND t.relkind IN ('r', 'p', 'v', 'm')
            AND {SYSTEM_SCHEMA_FILTER}
          ORDER BY 2, 3, 4"
    );
    let rows = client.query(&sql, &[]).await.map_err(&e)?;
    let mut views = ViewReads::new();
    for r in &rows {
        let (schema, name): (String, String) = (r.get(1), r.get(2));
        views
            .entry(r.get(0))
            .or_insert_with(|| (crate::text::display_name(&schema, &name), Vec::new()))
            .1
            .push((r.get(3), r.get(4)));
    }
    for (oid, (name, _)) in &views {
        let tables = tables_read_by(&views, *oid);
        if tables.len() >= 2 {
            ties.push(Tie::View {
                name: name.clone(),
                tables: tables.into_iter().collect(),
            });
        }
    }
    Ok(ties)
}

/// View oid → (its name, the relations it reads: (oid, whether it is a table)).
type ViewReads = std::collections::BTreeMap<u32, (String, Vec<(u32, bool)>)>;

/// The tables a view reads, through the views it reads.
fn tables_read_by(views: &ViewReads, view: u32) -> std::collections::BTreeSet<u32> {
    let mut tables = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::from([view]);
    let mut todo = vec![view];
    while let Some(v) = todo.pop() {
        for (oid, is_table) in views.get(&v).map(|(_, r)| r.as_slice()).unwrap_or(&[]) {
            if *is_table {
                tables.insert(*oid);
            } else if seen.insert(*oid) {
                todo.push(*oid);
            }
        }
    }
    tables
}
