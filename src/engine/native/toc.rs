//! The schema archive as the native engine sees it: which of its entries belong to which
//! table, recorded in the schema snapshot, and the cut of it that `pg_dump -t` would write
//! for a group's tables.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use super::archive::{self, DataState, Entry, Text, Toc};

/// A table's definition, as far as its archive entries go: columns, constraints, indexes,
/// triggers, rules, policies, defaults, owned sequences, comments, grants, options. Two equal
/// fingerprints mean the schema archive's entries for the table still describe it.
pub(super) const FINGERPRINT: &str = "pg_catalog.md5(pg_catalog.concat_ws('|',
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

/// Partition indexes by name (in the database's encoding, as the archive has them), for
/// INDEX ATTACH entries (which carry no catalog id).
const INDEX_OWNERS: &str = "
    SELECT pg_catalog.convert_to(n.nspname::text, pg_catalog.getdatabaseencoding()),
           pg_catalog.convert_to(i.relname::text, pg_catalog.getdatabaseencoding()),
           x.indrelid
      FROM pg_catalog.pg_index x
      JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace
     WHERE i.relispartition";

/// Tables and sequences by oid: their schema and name (UTF-8, for statements we send).
const NAMES: &str = "
    SELECT c.oid, n.nspname::text, c.relname::text
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'S')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// What the schema snapshot says about the database's tables.
#[derive(Debug, Default)]
pub struct Recorded {
    /// (catalog oid, object oid) → the table it belongs to.
    owners: HashMap<(u32, u32), u32>,
    /// (schema, partition index), in the database's encoding → its table.
    index_owners: HashMap<(Text, Text), u32>,
    /// Table or sequence oid → (schema, name), UTF-8.
    names: HashMap<u32, (String, String)>,
    /// Table oid → fingerprint.
    fingerprints: HashMap<u32, String>,
    /// The database's encoding.
    pub(super) encoding: String,
}

/// Reads, in the schema archive's snapshot (on the session that exported it), what the
/// native engine needs to cut that archive into groups.
pub async fn record(client: &Client) -> Result<Recorded, tokio_postgres::Error> {
    let mut r = Recorded::default();
    for row in client.query(OWNERS, &[]).await? {
        r.owners.insert((row.get(0), row.get(1)), row.get(2));
    }
    for row in client.query(INDEX_OWNERS, &[]).await? {
        let (schema, name): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
        r.index_owners
            .insert((Text::from(schema), Text::from(name)), row.get(2));
    }
    for row in client.query(NAMES, &[]).await? {
        r.names.insert(row.get(0), (row.get(1), row.get(2)));
    }
    let sql = format!(
        "SELECT c.oid, {FINGERPRINT} FROM pg_catalog.pg_class c
          WHERE c.relkind IN ('r', 'p')
            AND c.relnamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace
                                        WHERE nspname IN ('pg_catalog', 'information_schema'))"
    );
    for row in client.query(&sql, &[]).await? {
        r.fingerprints.insert(row.get(0), row.get(1));
    }
    r.encoding = client
        .query_one("SELECT pg_catalog.getdatabaseencoding()::text", &[])
        .await?
        .get(0);
    Ok(r)
}

/// Why a schema archive cannot be cut into group archives.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("cannot read the schema archive {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: archive::ArchiveError,
    },
}

/// A database's schema archive, ready to be cut into group archives.
#[derive(Debug)]
pub struct SchemaToc {
    pub(super) toc: Toc,
    recorded: Recorded,
    /// Table oid → index of its TABLE entry.
    tables: HashMap<u32, usize>,
    /// Setup entries every archive carries (encoding, search path, database).
    always: Vec<usize>,
    /// Table oid → the entries that belong to it, the TABLE entry included.
    owned: HashMap<u32, Vec<usize>>,
    /// Dump id → the comments, grants, labels and OWNED BY on that entry's object.
    annotations: HashMap<i32, Vec<usize>>,
    pub(super) max_dump_id: i32,
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
    pub fn load(path: &Path, recorded: Recorded) -> Result<SchemaToc, TocError> {
        let toc = archive::read_toc_file(path).map_err(|source| TocError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(toc, recorded)
    }

    /// The TOC of a schema archive (read from its stream) with what its snapshot recorded.
    pub fn new(toc: Toc, recorded: Recorded) -> Result<SchemaToc, TocError> {
        let mut me = SchemaToc {
            toc,
            recorded,
            tables: HashMap::new(),
            always: Vec::new(),
            owned: HashMap::new(),
            annotations: HashMap::new(),
            max_dump_id: 0,
        };
        let mut table_names: HashMap<(Text, Text), u32> = HashMap::new();
        for (i, e) in me.toc.entries.iter().enumerate() {
            me.max_dump_id = me.max_dump_id.max(e.dump_id);
            if e.desc_is("TABLE") {
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
        let dump_ids: HashSet<i32> = me.toc.entries.iter().map(|e| e.dump_id).collect();
        for i in 0..me.toc.entries.len() {
            match me.role(&me.toc.entries[i], &table_names, &dump_ids) {
                Role::Always => me.always.push(i),
                Role::Owned(t) => me.owned.entry(t).or_default().push(i),
                Role::Annotates(d) => me.annotations.entry(d).or_default().push(i),
                Role::Never => {}
            }
        }
        Ok(me)
    }

    fn role(
        &self,
        e: &Entry,
        table_names: &HashMap<(Text, Text), u32>,
        dump_ids: &HashSet<i32>,
    ) -> Role {
        let name = || {
            (
                e.namespace.clone().unwrap_or_default(),
                e.tag.clone().unwrap_or_default(),
            )
        };
        if e.had_dumper {
            return Role::Never;
        }
        let desc = e.desc.as_ref().map(|d| d.lossy()).unwrap_or_default();
        match desc.as_ref() {
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
            // A table's or an index's statistics (pg_dump 18 --statistics) go with it: with
            // the first of their dependencies that is an entry (an index that backs a
            // constraint has none of its own; the constraint's entry stands for it).
            "STATISTICS DATA" => e
                .deps
                .iter()
                .find(|d| dump_ids.contains(d))
                .map_or(Role::Never, |d| Role::Annotates(*d)),
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

    /// The schema and name (UTF-8) of a table or sequence in the schema snapshot.
    pub fn name(&self, oid: u32) -> Option<&(String, String)> {
        self.recorded.names.get(&oid)
    }

    /// The database's encoding (`LATIN1`, `UTF8`, …).
    pub fn encoding(&self) -> &str {
        &self.recorded.encoding
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
            .filter(|e| e.desc_is("SEQUENCE"))
            .map(|e| Sequence {
                dump_id: e.dump_id,
                oid: catalog_id(e).map_or(0, |(_, o)| o),
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
    Some((e.table_oid.as_ref()?.parse()?, e.oid.as_ref()?.parse()?))
}

/// A group's share of the schema archive.
#[derive(Debug)]
pub struct Selection {
    pub(super) entries: Vec<Entry>,
    /// Index in `entries` before which the data entries go.
    pub(super) data_at: usize,
    /// (oid, TABLE entry dump id, schema, name, owner) of each group table.
    pub(super) tables: Vec<(u32, i32, Text, Text, Option<Text>)>,
    pub(super) sequences: Vec<Sequence>,
}

#[derive(Debug)]
pub(super) struct Sequence {
    pub(super) dump_id: i32,
    pub(super) oid: u32,
    pub(super) schema: Text,
    pub(super) name: Text,
    pub(super) owner: Option<Text>,
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
            defn: Some(Text::default()),
            drop_stmt: None,
            copy_stmt: None,
            namespace: (!ns.is_empty()).then(|| ns.into()),
            tablespace: None,
            tableam: None,
            relkind: 0,
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
        toc_of(archive::V1_14, entries, recorded)
    }

    /// A SchemaToc of these entries, in an archive of `version`.
    fn toc_of(version: (u8, u8, u8), entries: Vec<Entry>, recorded: Recorded) -> SchemaToc {
        SchemaToc::new(
            Toc {
                header: archive::Header {
                    version,
                    int_size: 4,
                    off_size: 8,
                    format: 1,
                    compression: crate::compression::Compression::Gzip(None),
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
        assert!(sel.sequences[0].name.is("a_id_seq"));
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

    /// pg_dump 18 `--statistics`: a table's statistics depend on its TABLE entry, an index's
    /// on its INDEX entry, a constraint's index's on an index object that has no entry and
    /// then on the CONSTRAINT entry; all also on a dump id of no entry.
    #[test]
    fn statistics_go_with_their_table_or_index() {
        use archive::{SECTION_DATA as D, SECTION_POST_DATA as POST, SECTION_PRE_DATA as PRE};
        let entries = vec![
            entry(1, "ENCODING", ("0", "0"), "", "ENCODING", PRE, &[]),
            entry(10, "TABLE", (PG_CLASS, "100"), "app", "a", PRE, &[]),
            entry(20, "TABLE", (PG_CLASS, "200"), "app", "b", PRE, &[]),
            entry(
                15,
                "STATISTICS DATA",
                ("0", "0"),
                "app",
                "a",
                D,
                &[10, 9999],
            ),
            entry(
                25,
                "STATISTICS DATA",
                ("0", "0"),
                "app",
                "b",
                D,
                &[20, 9999],
            ),
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
                47,
                "STATISTICS DATA",
                ("0", "0"),
                "app",
                "a_pkey",
                POST,
                &[9998, 40, 9999],
            ),
            entry(41, "INDEX", (PG_CLASS, "410"), "app", "b_x", POST, &[20]),
            entry(
                48,
                "STATISTICS DATA",
                ("0", "0"),
                "app",
                "b_x",
                POST,
                &[41, 9999],
            ),
        ];
        let mut recorded = Recorded::default();
        for (cat, oid, owner) in [
            (1259, 100, 100),
            (1259, 200, 200),
            (2606, 400, 100),
            (1259, 410, 200),
        ] {
            recorded.owners.insert((cat, oid), owner);
        }
        let toc = toc_of(archive::V1_16, entries, recorded);
        assert_eq!(ids(&toc.select(&[100]).unwrap()), [1, 10, 15, 40, 47]);
        assert_eq!(ids(&toc.select(&[200]).unwrap()), [1, 20, 25, 41, 48]);
    }

    #[test]
    fn an_unknown_table_is_no_selection() {
        assert!(schema().select(&[100, 999]).is_none());
    }
}
