//! The native engine: a group's archive written by pg_groupdump itself, without a `pg_dump`
//! process per group.
//!
//! `pg_dump -t` reads the whole catalog of the database whatever `-t` says, so one pg_dump per
//! group costs tens of milliseconds per group even for an empty table; with thousands of
//! groups that is the whole backup window. The native engine reads the catalog once per
//! database and run — the run's schema archive (`pg_dump -Fc` with no table data), taken in a
//! snapshot of ours, in which we also record which catalog objects belong to which table and a
//! fingerprint of each table's definition — and then, for each group, on a pooled session:
//!
//! 1. `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY` and `LOCK TABLE … IN ACCESS SHARE
//!    MODE` as the first statement, bounded by `lock_timeout`. LOCK takes no snapshot, so the
//!    group's snapshot is taken by the next statement, after every lock is held: no DDL can
//!    commit between the snapshot and the locks (a window `pg_dump` itself leaves open).
//! 2. Compares each table's fingerprint with the schema archive's. A table altered since then
//!    would be restored with the old definition, so that group falls back to `pg_dump`.
//! 3. `COPY … TO STDOUT` each table and reads the owned sequences, in that snapshot.
//! 4. Writes a custom-format archive ([`crate::archive`]): the schema archive's entries that
//!    belong to the group's tables — chosen as `pg_dump -t` chooses them — plus TABLE DATA and
//!    SEQUENCE SET entries. Stock `pg_restore` restores it like a `pg_dump -Fc -t` archive.
//!
//! Writing runs on blocking threads: a small group's data is held in memory and written,
//! compressed and fsynced after its transaction by one of a bounded set of writers; a large
//! group's streams to a writer thread through a small channel. Groups compress on all cores
//! and memory stays bounded whatever the table sizes.

use std::collections::HashMap;
use std::io::BufWriter;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt};
use tokio_postgres::Client;

use crate::archive::{self, ArchiveWriter, DataState, Entry, Toc};
use crate::connect::{application_name, ConnParams};
use crate::snapshot::SnapshotInfo;
use crate::store;

/// A table's definition, as far as its archive entries go: columns, constraints, indexes,
/// triggers, rules, policies, defaults, owned sequences, comments, grants, options. Two equal
/// fingerprints mean the schema archive's entries for the table still describe it.
const FINGERPRINT: &str = "pg_catalog.md5(pg_catalog.concat_ws('|',
    c.relname, c.relnamespace, c.relowner, c.relacl, c.relkind, c.relpersistence,
    c.relrowsecurity, c.relforcerowsecurity, c.reloptions, c.relreplident, c.relispartition,
    c.reltablespace, c.relam, c.relchecks, pg_catalog.pg_get_expr(c.relpartbound, c.oid),
    (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(':', a.attnum, a.attname, a.atttypid,
            a.atttypmod, a.attnotnull, a.atthasdef, a.attidentity, a.attgenerated,
            a.attisdropped, a.attcollation, a.attacl, a.attoptions, a.attstattarget,
            a.attstorage, a.attislocal, a.attinhcount, a.attfdwoptions), ',' ORDER BY a.attnum)
       FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0),
    (SELECT pg_catalog.string_agg(x.oid || ':' || x.xmin, ',' ORDER BY x.oid)
       FROM pg_catalog.pg_constraint x WHERE x.conrelid = c.oid),
    (SELECT pg_catalog.string_agg(x.indexrelid || ':' || x.xmin || ':' || i.relname, ',' ORDER BY x.indexrelid)
       FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
      WHERE x.indrelid = c.oid),
    (SELECT pg_catalog.string_agg(x.oid || ':' || x.xmin, ',' ORDER BY x.oid)
       FROM pg_catalog.pg_trigger x WHERE x.tgrelid = c.oid),
    (SELECT pg_catalog.string_agg(x.oid || ':' || x.xmin, ',' ORDER BY x.oid)
       FROM pg_catalog.pg_rewrite x WHERE x.ev_class = c.oid),
    (SELECT pg_catalog.string_agg(x.oid || ':' || x.xmin, ',' ORDER BY x.oid)
       FROM pg_catalog.pg_policy x WHERE x.polrelid = c.oid),
    (SELECT pg_catalog.string_agg(x.oid || ':' || x.xmin, ',' ORDER BY x.oid)
       FROM pg_catalog.pg_attrdef x WHERE x.adrelid = c.oid),
    (SELECT pg_catalog.string_agg(d.objid || ':' || s.relname || ':' || s.relacl::text || ':' || q.xmin, ',' ORDER BY d.objid)
       FROM pg_catalog.pg_depend d
       JOIN pg_catalog.pg_class s ON s.oid = d.objid
       JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
      WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = c.oid
        AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')),
    (SELECT pg_catalog.string_agg(x.objsubid || ':' || x.description, ',' ORDER BY x.objsubid)
       FROM pg_catalog.pg_description x
      WHERE x.objoid = c.oid AND x.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass),
    (SELECT pg_catalog.string_agg(x.inhparent::text, ',' ORDER BY x.inhseqno)
       FROM pg_catalog.pg_inherits x WHERE x.inhrelid = c.oid)))";

/// Which table each catalog object of an archive entry belongs to: what `pg_dump -t` dumps
/// along with a table.
const OWNERS: &str = "
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::oid, c.oid, c.oid
      FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p')
    UNION ALL
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::oid, x.indexrelid, x.indrelid
      FROM pg_catalog.pg_index x
    UNION ALL
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass::oid, x.oid, x.conrelid
      FROM pg_catalog.pg_constraint x WHERE x.conrelid <> 0
    UNION ALL
    SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass::oid, x.oid, x.tgrelid
      FROM pg_catalog.pg_trigger x
    UNION ALL
    SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass::oid, x.oid, x.ev_class
      FROM pg_catalog.pg_rewrite x
    UNION ALL
    SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass::oid, x.oid, x.polrelid
      FROM pg_catalog.pg_policy x
    UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass::oid, x.oid, x.adrelid
      FROM pg_catalog.pg_attrdef x
    UNION ALL
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::oid, d.objid, d.refobjid
      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')";

/// Partition indexes by name, for INDEX ATTACH entries (which carry no catalog id).
const INDEX_OWNERS: &str = "
    SELECT n.nspname, i.relname, x.indrelid
      FROM pg_catalog.pg_index x
      JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace
     WHERE i.relispartition";

/// What the schema snapshot says about the database's tables.
#[derive(Debug, Default)]
pub struct Recorded {
    /// (catalog oid, object oid) → the table it belongs to.
    owners: HashMap<(u32, u32), u32>,
    /// (schema, partition index) → its table.
    index_owners: HashMap<(String, String), u32>,
    /// Table oid → fingerprint.
    fingerprints: HashMap<u32, String>,
    /// The database's encoding.
    encoding: String,
}

/// Reads, in the schema archive's snapshot (on the session that exported it), what the
/// native engine needs to cut that archive into groups.
pub async fn record(client: &Client) -> Result<Recorded, String> {
    let err = |e: tokio_postgres::Error| crate::text::pg_error_text(&e);
    let mut r = Recorded::default();
    for row in client.query(OWNERS, &[]).await.map_err(err)? {
        r.owners.insert((row.get(0), row.get(1)), row.get(2));
    }
    for row in client.query(INDEX_OWNERS, &[]).await.map_err(err)? {
        r.index_owners.insert((row.get(0), row.get(1)), row.get(2));
    }
    let sql = format!(
        "SELECT c.oid, {FINGERPRINT} FROM pg_catalog.pg_class c
          WHERE c.relkind IN ('r', 'p')
            AND c.relnamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace
                                        WHERE nspname IN ('pg_catalog', 'information_schema'))"
    );
    for row in client.query(&sql, &[]).await.map_err(err)? {
        r.fingerprints.insert(row.get(0), row.get(1));
    }
    r.encoding = client
        .query_one("SELECT pg_catalog.getdatabaseencoding()::text", &[])
        .await
        .map_err(err)?
        .get(0);
    Ok(r)
}

/// A database's schema archive, ready to be cut into group archives.
#[derive(Debug)]
pub struct SchemaToc {
    toc: Toc,
    recorded: Recorded,
    /// Table oid → index of its TABLE entry.
    tables: HashMap<u32, usize>,
    /// Setup entries every archive carries (encoding, search path, database).
    always: Vec<usize>,
    /// Table oid → the entries that belong to it, the TABLE entry included.
    owned: HashMap<u32, Vec<usize>>,
    /// Dump id → the comments, grants, labels and OWNED BY on that entry's object.
    annotations: HashMap<i32, Vec<usize>>,
    max_dump_id: i32,
}

/// What an entry of the schema archive is to a group.
enum Role {
    /// In every group archive.
    Always,
    /// Belongs to this table.
    Owned(u32),
    /// Goes wherever the entry with this dump id goes.
    Annotates(i32),
    /// In no group archive: data of the schema snapshot (groups bring their own), or an
    /// object `pg_dump -t` leaves out (types, functions, views, extended statistics, ...).
    Never,
}

impl SchemaToc {
    /// Reads the TOC of the schema archive at `path`. Fails (and the database's groups fall
    /// back to pg_dump) for an archive version this writer does not know or a database
    /// encoding other than UTF-8.
    pub fn load(path: &Path, recorded: Recorded) -> Result<SchemaToc, String> {
        if recorded.encoding != "UTF8" {
            return Err(format!(
                "the database encoding is {}; the native engine writes UTF-8 only",
                recorded.encoding
            ));
        }
        let toc = archive::read_toc_file(path)
            .map_err(|e| format!("cannot read the schema archive {}: {e}", path.display()))?;
        Self::new(toc, recorded)
    }

    fn new(toc: Toc, recorded: Recorded) -> Result<SchemaToc, String> {
        if toc.header.version != archive::SUPPORTED_VERSION {
            let (a, b, c) = toc.header.version;
            return Err(format!(
                "the schema archive has format version {a}.{b}-{c}; the native engine writes {}.{}-{} only",
                archive::SUPPORTED_VERSION.0,
                archive::SUPPORTED_VERSION.1,
                archive::SUPPORTED_VERSION.2
            ));
        }
        let mut me = SchemaToc {
            toc,
            recorded,
            tables: HashMap::new(),
            always: Vec::new(),
            owned: HashMap::new(),
            annotations: HashMap::new(),
            max_dump_id: 0,
        };
        let mut table_names: HashMap<(String, String), u32> = HashMap::new();
        for (i, e) in me.toc.entries.iter().enumerate() {
            me.max_dump_id = me.max_dump_id.max(e.dump_id);
            if e.desc.as_deref() == Some("TABLE") {
                if let Some((_, oid)) = catalog_id(e) {
                    me.tables.insert(oid, i);
                    table_names.insert(
                        (
                            e.namespace.clone().unwrap_or_default(),
                            e.tag.clone().unwrap_or_default(),
                        ),
                        oid,
                    );
                }
            }
        }
        for i in 0..me.toc.entries.len() {
            match me.role(&me.toc.entries[i], &table_names) {
                Role::Always => me.always.push(i),
                Role::Owned(t) => me.owned.entry(t).or_default().push(i),
                Role::Annotates(d) => me.annotations.entry(d).or_default().push(i),
                Role::Never => {}
            }
        }
        Ok(me)
    }

    fn role(&self, e: &Entry, table_names: &HashMap<(String, String), u32>) -> Role {
        let name = || {
            (
                e.namespace.clone().unwrap_or_default(),
                e.tag.clone().unwrap_or_default(),
            )
        };
        if e.had_dumper {
            return Role::Never;
        }
        match e.desc.as_deref().unwrap_or("") {
            "ENCODING" | "STDSTRINGS" | "SEARCHPATH" | "DATABASE" | "DATABASE PROPERTIES" => {
                Role::Always
            }
            "TABLE DATA"
            | "SEQUENCE SET"
            | "MATERIALIZED VIEW DATA"
            | "BLOBS"
            | "BLOB"
            | "LARGE OBJECT" => Role::Never,
            "COMMENT" | "ACL" | "SECURITY LABEL" | "SEQUENCE OWNED BY"
                if catalog_id(e).is_none_or(|(c, _)| c == 0) =>
            {
                e.deps.first().map_or(Role::Never, |d| Role::Annotates(*d))
            }
            // A partition's attachment goes with the partition, as pg_dump -t does it.
            "TABLE ATTACH" => table_names
                .get(&name())
                .map_or(Role::Never, |t| Role::Owned(*t)),
            "INDEX ATTACH" => self
                .recorded
                .index_owners
                .get(&name())
                .map_or(Role::Never, |t| Role::Owned(*t)),
            "ROW SECURITY" => catalog_id(e).map_or(Role::Never, |(_, t)| Role::Owned(t)),
            _ => catalog_id(e)
                .and_then(|id| self.recorded.owners.get(&id))
                .map_or(Role::Never, |t| Role::Owned(*t)),
        }
    }

    /// The fingerprint of a table in the schema snapshot.
    pub fn fingerprint(&self, oid: u32) -> Option<&str> {
        self.recorded.fingerprints.get(&oid).map(String::as_str)
    }

    /// The entries `pg_dump -t` would write for these tables, in archive order, without
    /// data: each table, its sequences, defaults, constraints, indexes, triggers, rules,
    /// policies, partition attachments, and the comments, grants and labels on those; the
    /// archive's setup entries (encoding, search path, database). Returns the entries and
    /// where the data entries go. `None` if a table has no entry in the archive.
    pub fn select(&self, oids: &[u32]) -> Option<Selection> {
        if oids.iter().any(|o| !self.tables.contains_key(o)) {
            return None;
        }
        let mut picked: Vec<usize> = self.always.clone();
        for oid in oids {
            picked.extend(self.owned.get(oid).into_iter().flatten());
        }
        let objects = picked.len();
        for i in 0..objects {
            let id = self.toc.entries[picked[i]].dump_id;
            picked.extend(self.annotations.get(&id).into_iter().flatten());
        }
        picked.sort_unstable();
        picked.dedup();
        let entries: Vec<Entry> = picked
            .iter()
            .map(|&i| {
                let mut e = self.toc.entries[i].clone();
                e.data = DataState::NoData;
                e
            })
            .collect();
        let data_at = entries
            .iter()
            .position(|e| e.section >= archive::SECTION_DATA)
            .unwrap_or(entries.len());
        let sequences = entries
            .iter()
            .filter(|e| e.desc.as_deref() == Some("SEQUENCE"))
            .map(|e| Sequence {
                dump_id: e.dump_id,
                schema: e.namespace.clone().unwrap_or_default(),
                name: e.tag.clone().unwrap_or_default(),
                owner: e.owner.clone(),
            })
            .collect();
        let tables = oids
            .iter()
            .map(|oid| {
                let e = &self.toc.entries[self.tables[oid]];
                (
                    *oid,
                    e.dump_id,
                    e.namespace.clone().unwrap_or_default(),
                    e.tag.clone().unwrap_or_default(),
                    e.owner.clone(),
                )
            })
            .collect();
        Some(Selection {
            entries,
            data_at,
            tables,
            sequences,
        })
    }
}

fn catalog_id(e: &Entry) -> Option<(u32, u32)> {
    Some((
        e.table_oid.as_deref()?.parse().ok()?,
        e.oid.as_deref()?.parse().ok()?,
    ))
}

/// A group's share of the schema archive.
#[derive(Debug)]
pub struct Selection {
    entries: Vec<Entry>,
    /// Index in `entries` before which the data entries go.
    data_at: usize,
    /// (oid, TABLE entry dump id, schema, name, owner) of each group table.
    tables: Vec<(u32, i32, String, String, Option<String>)>,
    sequences: Vec<Sequence>,
}

#[derive(Debug)]
struct Sequence {
    dump_id: i32,
    schema: String,
    name: String,
    owner: Option<String>,
}

/// A session kept for native dumps, set up as pg_dump sets up its own.
pub struct NativeSession {
    client: Client,
    pub pid: i32,
    /// [`GROUP_QUERY`], prepared once: planning it costs more than running it.
    group_query: tokio_postgres::Statement,
}

/// Per group table: oid, relkind, quoted name, COPY column list, fingerprint; and when the
/// snapshot was taken (the query takes it).
const GROUP_QUERY: &str = "SELECT c.oid, c.relkind::text,
        pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
           FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attgenerated = ''),
        FINGERPRINT,
        to_char(pg_catalog.statement_timestamp() AT TIME ZONE 'UTC',
                'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        (CASE WHEN pg_catalog.pg_is_in_recovery()
              THEN pg_catalog.pg_last_wal_replay_lsn()
              ELSE pg_catalog.pg_current_wal_lsn() END)::text
   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = ANY($1)";

/// Idle native sessions, per database.
#[derive(Clone)]
pub struct Sessions {
    conn: ConnParams,
    idle: Arc<Mutex<HashMap<String, Vec<NativeSession>>>>,
    /// Most idle sessions kept, all databases together (a run over many databases must not
    /// hold `jobs` connections to each of them).
    max_idle: usize,
}

impl Sessions {
    pub fn new(conn: ConnParams, max_idle: usize) -> Self {
        Sessions {
            conn,
            idle: Arc::default(),
            max_idle: max_idle.max(1),
        }
    }

    /// An idle session on `database`, or a new one.
    pub async fn take(&self, database: &str) -> Result<NativeSession, String> {
        loop {
            let pooled = self
                .idle
                .lock()
                .expect("session pool")
                .get_mut(database)
                .and_then(Vec::pop);
            match pooled {
                Some(s) if !s.client.is_closed() => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let client = self
            .conn
            .connect(database, &application_name("native"))
            .await
            .map_err(|e| format!("{e:#}"))?;
        // What pg_dump sets: output that any server restores the same way, no timeouts, and
        // an error rather than silently filtered rows under row-level security.
        client
            .batch_execute(
                "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3;
                 SET synchronize_seqscans = off; SET statement_timeout = 0;
                 SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0;
                 SET row_security = off; SET plan_cache_mode = force_generic_plan;
                 SELECT pg_catalog.set_config('search_path', '', false)",
            )
            .await
            .map_err(|e| crate::text::pg_error_text(&e))?;
        let pid = client
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await
            .map_err(|e| crate::text::pg_error_text(&e))?
            .get(0);
        let group_query = client
            .prepare(&GROUP_QUERY.replace("FINGERPRINT", FINGERPRINT))
            .await
            .map_err(|e| crate::text::pg_error_text(&e))?;
        Ok(NativeSession {
            client,
            pid,
            group_query,
        })
    }

    /// Returns a session whose transaction has ended. Beyond `max_idle` idle sessions, those
    /// of other databases are closed first.
    pub fn give(&self, database: &str, s: NativeSession) {
        if s.client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("session pool");
        idle.entry(database.to_string()).or_default().push(s);
        let mut total: usize = idle.values().map(Vec::len).sum();
        while total > self.max_idle {
            let victim = idle
                .iter()
                .filter(|(db, v)| db.as_str() != database && !v.is_empty())
                .map(|(db, _)| db.clone())
                .next()
                .unwrap_or_else(|| database.to_string());
            if let Some(v) = idle.get_mut(&victim) {
                v.remove(0);
            }
            idle.retain(|_, v| !v.is_empty());
            total -= 1;
        }
    }
}

/// Why a native dump did not produce an archive.
#[derive(Debug)]
pub enum NativeError {
    /// The schema archive no longer describes the group: dump it with pg_dump instead.
    Fallback(String),
    /// The server said no (lock timeout, permission, lost connection...).
    Server(String),
    /// Writing the file failed.
    Io(String),
}

/// What a native dump produced.
pub struct Dumped {
    pub snapshot: SnapshotInfo,
    /// Time the LOCK statement took.
    pub lock_wait: Duration,
    /// Rows per table, in the order of the request's tables.
    pub row_counts: Vec<i64>,
    /// The file, to be completed ([`Output::complete`]) once the session is given back.
    pub file: Output,
}

/// One group's dump request.
pub struct Request<'a> {
    pub group: &'a str,
    pub table_oids: &'a [u32],
    pub lock_wait_timeout: Duration,
    /// zlib level; -1 for the default, 0 for none.
    pub compression: i32,
    /// The `.ing` file to write.
    pub out: &'a Path,
    /// Its name once complete.
    pub final_path: &'a Path,
}

/// Dumps a group on `session`. On error the session's transaction is rolled back when
/// possible; the caller drops the session if it is closed.
pub async fn dump_group(
    session: &NativeSession,
    toc: &SchemaToc,
    req: &Request<'_>,
) -> Result<Dumped, NativeError> {
    let Some(sel) = toc.select(req.table_oids) else {
        return Err(NativeError::Fallback(
            "a table of the group is not in the schema archive (created since?)".into(),
        ));
    };
    let c = &session.client;
    let result = dump_in_transaction(session, toc, &sel, req).await;
    // Read-only: ending it either way is the same; after an error this clears the abort.
    let end = c.batch_execute("ROLLBACK").await;
    match (result, end) {
        (Ok(d), Ok(())) => Ok(d),
        (Ok(_), Err(e)) => Err(NativeError::Server(crate::text::pg_error_text(&e))),
        (Err(e), _) => Err(e),
    }
}

async fn dump_in_transaction(
    session: &NativeSession,
    toc: &SchemaToc,
    sel: &Selection,
    req: &Request<'_>,
) -> Result<Dumped, NativeError> {
    let c = &session.client;
    let server = |e: tokio_postgres::Error| NativeError::Server(crate::text::pg_error_text(&e));
    let lock_list = sel
        .tables
        .iter()
        .map(|(_, _, s, t, _)| format!("ONLY {}", crate::text::quote_qualified(s, t)))
        .collect::<Vec<_>>()
        .join(", ");
    // LOCK, then the query that takes the snapshot, sent together: the server runs them in
    // order, so the snapshot still comes after every lock.
    let lock_sql = format!(
        "SET application_name = {}; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
         SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {lock_list} IN ACCESS SHARE MODE",
        crate::text::quote_literal(&application_name(req.group)),
        req.lock_wait_timeout.as_millis().max(1)
    );
    let locking = async {
        let started = Instant::now();
        let r = c.batch_execute(&lock_sql).await;
        (r, started.elapsed())
    };
    let oids: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&req.table_oids];
    let ((locked, lock_wait), rows) = tokio::join!(locking, c.query(&session.group_query, &oids));
    locked.map_err(server)?;
    let rows = rows.map_err(server)?;
    let Some(first) = rows.first() else {
        return Err(NativeError::Fallback(
            "the group's tables were dropped after the schema archive was taken".into(),
        ));
    };
    let snapshot = SnapshotInfo {
        taken_at: first.get(5),
        wal_lsn: first.get(6),
    };
    let mut now: HashMap<u32, (String, String, Option<String>)> = HashMap::new();
    for row in &rows {
        let oid: u32 = row.get(0);
        let fingerprint: String = row.get(4);
        if toc.fingerprint(oid) != Some(fingerprint.as_str()) {
            let name: String = row.get(2);
            return Err(NativeError::Fallback(format!(
                "{name} was altered after the schema archive was taken"
            )));
        }
        now.insert(oid, (row.get(1), row.get(2), row.get(3)));
    }
    if now.len() != req.table_oids.len() {
        return Err(NativeError::Fallback(
            "a table of the group was dropped after the schema archive was taken".into(),
        ));
    }

    // Sequence values, in the snapshot (as pg_dump reads them).
    let mut seq_values = Vec::with_capacity(sel.sequences.len());
    if !sel.sequences.is_empty() {
        let sql = sel
            .sequences
            .iter()
            .map(|s| {
                format!(
                    "(SELECT last_value, is_called FROM {})",
                    crate::text::quote_qualified(&s.schema, &s.name)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in c.query(&sql, &[]).await.map_err(server)? {
            seq_values.push((row.get::<_, i64>(0), row.get::<_, bool>(1)));
        }
        if seq_values.len() != sel.sequences.len() {
            return Err(NativeError::Server(
                "the sequences of the group did not all answer".into(),
            ));
        }
    }

    // The archive's entries: the group's share of the schema, then data, then sequences.
    let mut next_id = toc.max_dump_id;
    let mut data_entries = Vec::new();
    let mut copies = Vec::new();
    for (oid, table_dump_id, schema, name, owner) in &sel.tables {
        let (relkind, qualified_name, columns) = &now[oid];
        if relkind != "r" {
            continue;
        }
        next_id += 1;
        let cols = columns
            .as_deref()
            .map(|c| format!("({c})"))
            .unwrap_or_default();
        data_entries.push(Entry {
            dump_id: next_id,
            had_dumper: true,
            table_oid: Some("0".into()),
            oid: Some(oid.to_string()),
            tag: Some(name.clone()),
            desc: Some("TABLE DATA".into()),
            section: archive::SECTION_DATA,
            defn: None,
            drop_stmt: None,
            copy_stmt: Some(format!("COPY {qualified_name} {cols} FROM stdin;\n")),
            namespace: Some(schema.clone()),
            tablespace: None,
            tableam: None,
            owner: owner.clone(),
            with_oids: Some("false".into()),
            deps: vec![*table_dump_id],
            data: DataState::NotSet,
        });
        copies.push((
            *oid,
            next_id,
            if columns.is_some() {
                format!("COPY {qualified_name} {cols} TO STDOUT")
            } else {
                format!("COPY {qualified_name} TO STDOUT")
            },
        ));
    }
    data_entries.sort_by(|a, b| (&a.namespace, &a.tag).cmp(&(&b.namespace, &b.tag)));
    for (s, (last, called)) in sel.sequences.iter().zip(&seq_values) {
        next_id += 1;
        data_entries.push(Entry {
            dump_id: next_id,
            had_dumper: false,
            table_oid: Some("0".into()),
            oid: Some("0".into()),
            tag: Some(s.name.clone()),
            desc: Some("SEQUENCE SET".into()),
            section: archive::SECTION_DATA,
            defn: Some(format!(
                "SELECT pg_catalog.setval({}, {last}, {called});\n",
                crate::text::quote_literal(&crate::text::quote_qualified_if_needed(
                    &s.schema, &s.name
                ))
            )),
            drop_stmt: None,
            copy_stmt: None,
            namespace: Some(s.schema.clone()),
            tablespace: None,
            tableam: None,
            owner: s.owner.clone(),
            with_oids: Some("false".into()),
            deps: vec![s.dump_id],
            data: DataState::NoData,
        });
    }
    let mut entries = Vec::with_capacity(sel.entries.len() + data_entries.len());
    entries.extend_from_slice(&sel.entries[..sel.data_at]);
    entries.extend(data_entries);
    entries.extend_from_slice(&sel.entries[sel.data_at..]);

    let mut header = toc.toc.header.clone();
    header.compression = req.compression;
    header.created = created_now();
    let mut out = Output {
        target: Some(Target {
            partial: req.out.to_path_buf(),
            final_path: req.final_path.to_path_buf(),
            header,
            entries,
        }),
        spool: Vec::new(),
        spooled: 0,
        stream: None,
    };
    let mut counts = HashMap::new();
    for (oid, dump_id, sql) in &copies {
        out.put(Chunk::Begin(*dump_id)).await;
        let stream = c.copy_out(sql.as_str()).await.map_err(server)?;
        pin_mut!(stream);
        let mut rows = 0i64;
        // The server sends a message per row: hand them on in batches.
        let mut batch = bytes::BytesMut::with_capacity(BATCH);
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(server)?;
            rows += bytes.iter().filter(|b| **b == b'\n').count() as i64;
            batch.extend_from_slice(&bytes);
            if batch.len() >= BATCH {
                out.put(Chunk::Data(batch.split().freeze())).await;
            }
        }
        if !batch.is_empty() {
            out.put(Chunk::Data(batch.freeze())).await;
        }
        // pg_dump ends each table's data so, and a `pg_restore -f` script needs it.
        out.put(Chunk::Data(bytes::Bytes::from_static(archive::COPY_END)))
            .await;
        out.put(Chunk::End).await;
        counts.insert(*oid, rows);
    }
    Ok(Dumped {
        snapshot,
        lock_wait,
        row_counts: req
            .table_oids
            .iter()
            .map(|o| counts.get(o).copied().unwrap_or(0))
            .collect(),
        file: out,
    })
}

/// Bytes of COPY data handed to the writer at a time.
const BATCH: usize = 64 * 1024;

/// A group whose data fits in this much memory is written in one go after its transaction;
/// a larger one streams to a writer thread as it is copied.
const SPOOL: usize = 4 * 1024 * 1024;

enum Chunk {
    Begin(i32),
    Data(bytes::Bytes),
    End,
    Finish,
}

/// The archive file being made.
struct Target {
    partial: std::path::PathBuf,
    final_path: std::path::PathBuf,
    header: archive::Header,
    entries: Vec<Entry>,
}

/// Where a group's COPY data goes: memory while it is small (one blocking task writes and
/// commits the file at the end: small groups cost no thread hand-off per chunk), a writer
/// thread once it is not (memory stays bounded whatever the table size).
pub struct Output {
    target: Option<Target>,
    spool: Vec<Chunk>,
    spooled: usize,
    stream: Option<(tokio::sync::mpsc::Sender<Chunk>, Pending)>,
}

impl Output {
    async fn put(&mut self, chunk: Chunk) {
        if let Some((tx, _)) = &self.stream {
            // A writer that has gone has failed: its error is reported at the end.
            let _ = tx.send(chunk).await;
            return;
        }
        if let Chunk::Data(b) = &chunk {
            self.spooled += b.len();
        }
        self.spool.push(chunk);
        if self.spooled > SPOOL {
            let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(8);
            let target = self.target.take().expect("one writer");
            let writer =
                tokio::task::spawn_blocking(move || write_archive(target, Source::Channel(rx)));
            for c in self.spool.drain(..) {
                let _ = tx.send(c).await;
            }
            self.stream = Some((tx, writer));
        }
    }

    /// Completes and commits the file on a blocking thread, holding `slot` (one of the
    /// slots that bound how many files are written and fsynced at once) until it is done.
    pub async fn complete(
        mut self,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<store::Finished, String> {
        let pending = match self.stream.take() {
            Some((tx, writer)) => {
                let _ = tx.send(Chunk::Finish).await;
                writer
            }
            None => {
                let target = self.target.take().expect("one writer");
                let spool = std::mem::take(&mut self.spool);
                tokio::task::spawn_blocking(move || {
                    write_archive(target, Source::Spool(spool.into_iter()))
                })
            }
        };
        let done = pending
            .await
            .map_err(|e| format!("the archive writer failed: {e}"))?;
        drop(slot);
        done
    }
}

/// A group's archive being completed on a blocking thread: written, fsynced, renamed.
type Pending = tokio::task::JoinHandle<Result<store::Finished, String>>;

enum Source {
    Spool(std::vec::IntoIter<Chunk>),
    Channel(tokio::sync::mpsc::Receiver<Chunk>),
}

impl Source {
    fn next(&mut self) -> Option<Chunk> {
        match self {
            Source::Spool(it) => Some(it.next().unwrap_or(Chunk::Finish)),
            Source::Channel(rx) => rx.blocking_recv(),
        }
    }
}

/// Writes the archive from the COPY data, then commits it (fsync, rename, directory fsync).
/// Runs on a blocking thread.
fn write_archive(t: Target, mut source: Source) -> Result<store::Finished, String> {
    let path = &t.partial;
    let io = |e: archive::ArchiveError| format!("cannot write {}: {e}", path.display());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut w = ArchiveWriter::new(BufWriter::with_capacity(1 << 16, file), t.header, t.entries)
        .map_err(io)?;
    loop {
        match source.next() {
            Some(Chunk::Begin(id)) => w.begin_data(id).map_err(io)?,
            Some(Chunk::Data(b)) => w.write_data(&b).map_err(io)?,
            Some(Chunk::End) => {
                w.end_data().map_err(io)?;
            }
            Some(Chunk::Finish) => break,
            // The COPY side gave up: its error is the one reported.
            None => return Err("incomplete archive".into()),
        }
    }
    let out = w.finish().map_err(io)?;
    out.into_inner()
        .map_err(|e| format!("cannot write {}: {}", path.display(), e.error()))?;
    store::commit(path, &t.final_path).map_err(|e| {
        format!(
            "cannot finish {}: {}",
            t.final_path.display(),
            if e.raw_os_error() == Some(libc::ENOSPC) {
                format!("disk full ({e})")
            } else {
                e.to_string()
            }
        )
    })
}

/// The creation time as pg_dump records it (local time, `struct tm` fields).
fn created_now() -> [i32; 7] {
    use chrono::{Datelike, Local, Timelike};
    let t = Local::now();
    [
        t.second() as i32,
        t.minute() as i32,
        t.hour() as i32,
        t.day() as i32,
        t.month0() as i32,
        t.year() - 1900,
        0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG_CLASS: &str = "1259";
    const PG_CONSTRAINT: &str = "2606";

    fn entry(
        id: i32,
        desc: &str,
        cat: (&str, &str),
        ns: &str,
        tag: &str,
        section: i32,
        deps: &[i32],
    ) -> Entry {
        Entry {
            dump_id: id,
            had_dumper: false,
            table_oid: Some(cat.0.into()),
            oid: Some(cat.1.into()),
            tag: Some(tag.into()),
            desc: Some(desc.into()),
            section,
            defn: Some(String::new()),
            drop_stmt: None,
            copy_stmt: None,
            namespace: (!ns.is_empty()).then(|| ns.into()),
            tablespace: None,
            tableam: None,
            owner: Some("postgres".into()),
            with_oids: Some("false".into()),
            deps: deps.to_vec(),
            data: DataState::NoData,
        }
    }

    /// A schema TOC of two tables (100: app.a with a sequence, PK, comment, FK to b;
    /// 200: app.b, partitioned, with partition 201), a standalone sequence and a function.
    fn schema() -> SchemaToc {
        use archive::{
            SECTION_DATA as D, SECTION_NONE as N, SECTION_POST_DATA as POST,
            SECTION_PRE_DATA as PRE,
        };
        let entries = vec![
            entry(1, "ENCODING", ("0", "0"), "", "ENCODING", PRE, &[]),
            entry(2, "DATABASE", ("1262", "5"), "", "db", PRE, &[]),
            entry(3, "FUNCTION", ("1255", "50"), "app", "f()", PRE, &[]),
            entry(10, "TABLE", (PG_CLASS, "100"), "app", "a", PRE, &[]),
            entry(11, "COMMENT", ("0", "0"), "app", "TABLE a", N, &[10]),
            entry(
                12,
                "SEQUENCE",
                (PG_CLASS, "101"),
                "app",
                "a_id_seq",
                PRE,
                &[10],
            ),
            entry(
                13,
                "SEQUENCE OWNED BY",
                ("0", "0"),
                "app",
                "a_id_seq",
                PRE,
                &[12],
            ),
            entry(14, "ACL", ("0", "0"), "app", "SEQUENCE a_id_seq", N, &[12]),
            entry(20, "TABLE", (PG_CLASS, "200"), "app", "b", PRE, &[]),
            entry(21, "TABLE", (PG_CLASS, "201"), "app", "b_1", PRE, &[20]),
            entry(22, "TABLE ATTACH", ("0", "0"), "app", "b_1", PRE, &[20, 21]),
            entry(
                30,
                "SEQUENCE",
                (PG_CLASS, "300"),
                "app",
                "standalone",
                PRE,
                &[],
            ),
            entry(
                31,
                "SEQUENCE SET",
                ("0", "0"),
                "app",
                "standalone",
                D,
                &[30],
            ),
            entry(32, "SEQUENCE SET", ("0", "0"), "app", "a_id_seq", D, &[12]),
            entry(
                40,
                "CONSTRAINT",
                (PG_CONSTRAINT, "400"),
                "app",
                "a a_pkey",
                POST,
                &[10],
            ),
            entry(
                41,
                "INDEX",
                (PG_CLASS, "410"),
                "app",
                "b_1_x_idx",
                POST,
                &[21],
            ),
            entry(
                42,
                "INDEX ATTACH",
                ("0", "0"),
                "app",
                "b_1_x_idx",
                POST,
                &[99, 41],
            ),
            entry(
                43,
                "FK CONSTRAINT",
                (PG_CONSTRAINT, "430"),
                "app",
                "a a_b_fkey",
                POST,
                &[10, 20],
            ),
            entry(
                44,
                "COMMENT",
                ("0", "0"),
                "app",
                "CONSTRAINT a_b_fkey ON a",
                N,
                &[43],
            ),
            entry(45, "ROW SECURITY", ("0", "200"), "app", "b", POST, &[20]),
            entry(
                46,
                "STATISTICS",
                ("3381", "460"),
                "app",
                "a_stats",
                POST,
                &[10],
            ),
        ];
        let mut recorded = Recorded {
            encoding: "UTF8".into(),
            ..Recorded::default()
        };
        for (cat, oid, owner) in [
            (1259, 100, 100),
            (1259, 101, 100),
            (1259, 200, 200),
            (1259, 201, 201),
            (2606, 400, 100),
            (1259, 410, 201),
            (2606, 430, 100),
        ] {
            recorded.owners.insert((cat, oid), owner);
        }
        recorded
            .index_owners
            .insert(("app".into(), "b_1_x_idx".into()), 201);
        SchemaToc::new(
            Toc {
                header: archive::Header {
                    version: archive::SUPPORTED_VERSION,
                    int_size: 4,
                    off_size: 8,
                    format: 1,
                    compression: -1,
                    created: [0; 7],
                    database: None,
                    server_version: None,
                    pg_dump_version: None,
                },
                entries,
            },
            recorded,
        )
        .unwrap()
    }

    fn ids(sel: &Selection) -> Vec<i32> {
        sel.entries.iter().map(|e| e.dump_id).collect()
    }

    #[test]
    fn a_table_takes_what_pg_dump_t_takes() {
        let sel = schema().select(&[100]).unwrap();
        // Not the function, the other tables, the standalone sequence, any SEQUENCE SET (the
        // group brings its own) or the extended statistics (pg_dump 15 -t leaves them out).
        assert_eq!(ids(&sel), [1, 2, 10, 11, 12, 13, 14, 40, 43, 44]);
        assert_eq!(sel.data_at, 7, "data goes before the first post-data entry");
        assert_eq!(sel.sequences.len(), 1);
        assert_eq!(sel.sequences[0].name, "a_id_seq");
        assert_eq!(sel.tables[0].1, 10);
    }

    #[test]
    fn partitions_bring_their_attachments() {
        let sel = schema().select(&[200, 201]).unwrap();
        assert_eq!(ids(&sel), [1, 2, 20, 21, 22, 41, 42, 45]);
        // The parent alone: no attachment of a partition it does not dump.
        let sel = schema().select(&[200]).unwrap();
        assert_eq!(ids(&sel), [1, 2, 20, 45]);
        assert!(sel.sequences.is_empty());
    }

    #[test]
    fn an_unknown_table_is_no_selection() {
        assert!(schema().select(&[100, 999]).is_none());
    }

    #[test]
    fn names_are_quoted_where_sql_needs_it() {
        assert_eq!(
            crate::text::quote_qualified_if_needed("app", "orders"),
            "app.orders"
        );
        assert_eq!(
            crate::text::quote_qualified_if_needed("Odd Schema", "Mixed.Case*Table"),
            "\"Odd Schema\".\"Mixed.Case*Table\""
        );
        assert_eq!(
            crate::text::quote_qualified_if_needed("public", "select"),
            "public.select"
        );
        assert_eq!(
            crate::text::quote_qualified_if_needed("public", "a\"b"),
            "public.\"a\"\"b\""
        );
        assert_eq!(
            crate::text::quote_qualified_if_needed("public", "t1_x"),
            "public.t1_x"
        );
        assert_eq!(
            crate::text::quote_qualified_if_needed("public", "1t"),
            "public.\"1t\""
        );
    }
}
