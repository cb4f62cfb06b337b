//! One group in one transaction: lock its tables, take the snapshot after the locks, check
//! the tables still match the schema archive, read the owned sequences, and COPY the data
//! into the group's archive ([`super::writer`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt};

use super::archive::{self, DataState, Entry};
use super::session::NativeSession;
use super::toc::{SchemaToc, Selection};
use super::writer::{created_now, Chunk, Output, Target};
use crate::connect::application_name;
use crate::report::SnapshotInfo;
use crate::text::{
    quote_literal, quote_literal_bytes, quote_qualified, quote_qualified_if_needed_bytes,
};

/// Bytes of COPY data handed to the writer at a time.
const BATCH: usize = 64 * 1024;

pub use super::error::NativeError;

/// What a native dump produced.
pub struct Dumped {
    pub snapshot: SnapshotInfo,
    /// Time the LOCK statement took.
    pub lock_wait: Duration,
    /// Rows per table, in the order of the request's tables.
    pub row_counts: Vec<i64>,
    /// Tables copied by several sessions: (oid, sessions, ranges).
    pub split: Vec<(u32, usize, usize)>,
    /// The file, to be completed ([`Output::complete`]) once the session is given back.
    pub file: Output,
}

/// One group's dump request.
pub struct Request<'a> {
    pub group: &'a str,
    pub table_oids: &'a [u32],
    pub lock_wait_timeout: Duration,
    /// How the archive's data is compressed.
    pub compression: crate::compression::Compression,
    /// The `.ing` file to write.
    pub out: &'a Path,
    /// Its name once complete.
    pub final_path: &'a Path,
    /// Which tables may be copied by several sessions, and with how many.
    pub split: super::split::Split<'a>,
    /// Encrypt the archive to these recipients (`[encryption]`).
    pub seal: Option<&'a crate::crypt::Recipients>,
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
    let result = dump_in_transaction(session, toc, &sel, req).await;
    // Read-only: ending it either way is the same; after an error this clears the abort.
    let end = session.client.batch_execute("ROLLBACK").await;
    match (result, end) {
        (Ok(d), Ok(())) => Ok(d),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), _) => Err(e),
    }
}

/// A group table as the group's snapshot sees it.
struct Current {
    relkind: String,
    /// `"schema"."name"`, quoted by the server: UTF-8 for our statements, and in the
    /// database's encoding for the archive's.
    quoted: String,
    quoted_db: Vec<u8>,
    /// The COPY column list (no generated or dropped columns), likewise; `None` for no
    /// columns.
    columns: Option<String>,
    columns_db: Option<Vec<u8>>,
    /// Blocks and bytes of its heap.
    blocks: i64,
    bytes: i64,
}

/// `"schema"."name"` of a table or sequence as the schema snapshot named it, UTF-8.
fn utf8_name(toc: &SchemaToc, oid: u32) -> Result<String, NativeError> {
    toc.name(oid)
        .map(|(s, n)| quote_qualified(s, n))
        .ok_or_else(|| {
            NativeError::Fallback(format!("relation {oid} has no name in the schema snapshot"))
        })
}

async fn dump_in_transaction(
    session: &NativeSession,
    toc: &SchemaToc,
    sel: &Selection,
    req: &Request<'_>,
) -> Result<Dumped, NativeError> {
    let (snapshot, lock_wait, now, prepared) = lock_and_check(session, toc, sel, req).await?;
    let seq_values = sequence_values(session, toc, sel).await?;
    let (entries, copies) = group_entries(toc, sel, &now, &seq_values);
    let mut header = toc.toc.header.clone();
    header.compression = req.compression;
    header.created = created_now();
    let mut out = Output::new(Target {
        partial: req.out.to_path_buf(),
        final_path: req.final_path.to_path_buf(),
        header,
        entries,
        seal: req.seal.cloned(),
    });
    let mut counts = HashMap::new();
    let mut exported = None;
    let mut split = Vec::new();
    for copy in &copies {
        let table = &now[&copy.oid];
        let rows = match super::split::prepare(
            &req.split,
            copy.select.is_some(),
            table.blocks,
            table.bytes,
        ) {
            Some(prepared) => {
                let copying = super::split::Copying {
                    session,
                    oid: copy.oid,
                    dump_id: copy.dump_id,
                    select: copy.select.as_deref().unwrap_or_default(),
                    encoding: &copy.encoding,
                    quoted: &table.quoted,
                    compression: req.compression,
                    lock_wait_timeout: req.lock_wait_timeout,
                    group: req.group,
                };
                let ranges = prepared.ranges.len();
                let (rows, sessions) =
                    super::split::copy(&copying, &req.split, prepared, &mut exported, &mut out)
                        .await?;
                split.push((copy.oid, sessions, ranges));
                rows
            }
            None => {
                let statement = prepared.get(&copy.oid).ok_or(NativeError::Unexpected(
                    "a table's COPY was not prepared with the group's locks",
                ))?;
                copy_table(session, copy, statement, table.bytes, &mut out).await?
            }
        };
        counts.insert(copy.oid, rows);
    }
    Ok(Dumped {
        snapshot,
        lock_wait,
        row_counts: req
            .table_oids
            .iter()
            .map(|o| counts.get(o).copied().unwrap_or(0))
            .collect(),
        split,
        file: out,
    })
}

/// What [`lock_and_check`] found: the snapshot, the time the locks took, the tables as the
/// snapshot sees them, and each table's COPY, prepared.
type Checked = (
    SnapshotInfo,
    Duration,
    HashMap<u32, Current>,
    HashMap<u32, tokio_postgres::Statement>,
);

/// Locks the group's tables, then takes the snapshot and reads what the tables are now,
/// falling back when that is no longer what the schema archive says. Each table's COPY is
/// prepared in the same round trip ([`copy_statement`]).
async fn lock_and_check(
    session: &NativeSession,
    toc: &SchemaToc,
    sel: &Selection,
    req: &Request<'_>,
) -> Result<Checked, NativeError> {
    let c = &session.client;
    let lock_list = sel
        .tables
        .iter()
        .map(|(oid, ..)| Ok(format!("ONLY {}", utf8_name(toc, *oid)?)))
        .collect::<Result<Vec<_>, NativeError>>()?
        .join(", ");
    // LOCK, then the query that takes the snapshot, sent together: the server runs them in
    // order, so the snapshot still comes after every lock.
    let lock_sql = format!(
        "SET application_name = {}; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
         SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {lock_list} IN ACCESS SHARE MODE",
        quote_literal(&application_name(req.group)),
        req.lock_wait_timeout.as_millis().max(1)
    );
    let locking = async {
        let started = Instant::now();
        let r = c.batch_execute(&lock_sql).await;
        (r, started.elapsed())
    };
    let oids: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&req.table_oids];
    let copies = sel
        .tables
        .iter()
        .map(|(oid, ..)| Ok((*oid, copy_statement(toc, *oid)?)))
        .collect::<Result<Vec<_>, NativeError>>()?;
    let preparing = futures_util::future::join_all(copies.iter().map(|(_, sql)| c.prepare(sql)));
    // Sent in this order, one behind the other: the COPY statements are only parsed, which
    // reads no catalog (COPY looks up its table when it runs).
    let ((locked, lock_wait), rows, prepared) =
        tokio::join!(locking, c.query(&session.group_query, &oids), preparing);
    if let Err(e) = locked {
        return Err(match e.code() {
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                NativeError::Changed(crate::text::pg_error_text(&e))
            }
            _ => e.into(),
        });
    }
    let rows = rows?;
    // The names were resolved just before the LOCK. A table dropped, or renamed and its name
    // taken by another, in between: the name we locked is not the group's table any more.
    let Some(first) = rows.first() else {
        return Err(NativeError::Changed(
            "the group's tables were dropped as they were locked".into(),
        ));
    };
    let snapshot = SnapshotInfo {
        taken_at: first.get(5),
        wal_lsn: first.get(6),
    };
    let mut now = HashMap::new();
    for row in &rows {
        let oid: u32 = row.get(0);
        // What was locked is the schema archive's name of the oid: the table still has it,
        // or the name locked may be another table's (renamed, and its name taken).
        let (schema, name): (&str, &str) = (row.get(11), row.get(12));
        if toc
            .name(oid)
            .is_none_or(|(s, n)| (s.as_str(), n.as_str()) != (schema, name))
        {
            return Err(NativeError::Changed(format!(
                "{} was renamed as it was locked",
                crate::text::display_name(schema, name)
            )));
        }
        let fingerprint: String = row.get(4);
        if toc.fingerprint(oid) != Some(fingerprint.as_str()) {
            let name: String = row.get(2);
            return Err(NativeError::Fallback(format!(
                "{name} was altered after the schema archive was taken"
            )));
        }
        let current = Current {
            relkind: row.get(1),
            quoted: row.get(2),
            columns: row.get(3),
            quoted_db: row.get(7),
            columns_db: row.get(8),
            blocks: row.get::<_, i64>(10) / row.get::<_, i64>(9).max(1),
            bytes: row.get(10),
        };
        now.insert(oid, current);
    }
    if now.len() != req.table_oids.len() {
        return Err(NativeError::Changed(
            "a table of the group was dropped as it was locked".into(),
        ));
    }
    // ATTACH PARTITION does not conflict with our locks on the partitioned table: a partition
    // attached after the names were resolved belongs in the group as its snapshot sees it.
    if now.values().any(|t| t.relkind == "p") {
        let tree = crate::engine::follow::resolve(c, req.table_oids).await?;
        if tree.keys().any(|o| !now.contains_key(o)) {
            return Err(NativeError::Changed(
                "a partition was attached to a table of the group as it was locked".into(),
            ));
        }
    }
    let prepared = copies
        .iter()
        .zip(prepared)
        .map(|((oid, _), p)| Ok((*oid, p?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok((snapshot, lock_wait, now, prepared))
}

/// A table's COPY by the name the schema archive gives it and that was locked, without a
/// column list: COPY then sends every column but dropped and generated ones, in column
/// order — the list the archive's `COPY … FROM stdin` names, since the table still matches
/// the schema archive once checked. In the database's encoding, as pg_dump's session reads.
fn copy_statement(toc: &SchemaToc, oid: u32) -> Result<String, NativeError> {
    Ok(format!(
        "COPY {} TO STDOUT{}",
        utf8_name(toc, oid)?,
        copy_encoding(toc)
    ))
}

/// The COPY option that converts rows to the database's encoding (ours speaks UTF-8).
fn copy_encoding(toc: &SchemaToc) -> String {
    match toc.encoding() {
        "UTF8" => String::new(),
        other => format!(" (ENCODING {})", quote_literal(other)),
    }
}

/// The owned sequences' (last_value, is_called), in the snapshot (as pg_dump reads them).
async fn sequence_values(
    session: &NativeSession,
    toc: &SchemaToc,
    sel: &Selection,
) -> Result<Vec<(i64, bool)>, NativeError> {
    if sel.sequences.is_empty() {
        return Ok(Vec::new());
    }
    let sql = sel
        .sequences
        .iter()
        .map(|s| {
            Ok(format!(
                "(SELECT last_value, is_called FROM {})",
                utf8_name(toc, s.oid)?
            ))
        })
        .collect::<Result<Vec<_>, NativeError>>()?
        .join(" UNION ALL ");
    let values: Vec<(i64, bool)> = session
        .client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if values.len() != sel.sequences.len() {
        return Err(NativeError::Unexpected(
            "the sequences of the group did not all answer",
        ));
    }
    Ok(values)
}

/// One table's COPY: which table, the TABLE DATA entry it fills; and, for
/// copying it in ranges, `SELECT <columns> FROM ONLY <table>` (`None` for a table without
/// columns) and the COPY options.
pub(super) struct Copy {
    pub(super) oid: u32,
    pub(super) dump_id: i32,
    pub(super) select: Option<String>,
    pub(super) encoding: String,
}

/// The archive's entries — the group's share of the schema, then data, then sequences — and
/// the COPY statements that fill its data entries.
fn group_entries(
    toc: &SchemaToc,
    sel: &Selection,
    now: &HashMap<u32, Current>,
    seq_values: &[(i64, bool)],
) -> (Vec<Entry>, Vec<Copy>) {
    let mut next_id = toc.max_dump_id;
    let mut data_entries = Vec::new();
    let mut copies = Vec::new();
    // COPY converts the rows to the database's encoding, as pg_dump's session (whose
    // client_encoding is the database's) gets them; ours speaks UTF-8.
    let encoding = copy_encoding(toc);
    for (oid, table_dump_id, schema, name, owner) in &sel.tables {
        let table = &now[oid];
        if table.relkind != "r" {
            continue;
        }
        next_id += 1;
        let mut copy_stmt = b"COPY ".to_vec();
        copy_stmt.extend_from_slice(&table.quoted_db);
        copy_stmt.push(b' ');
        if let Some(cols) = &table.columns_db {
            copy_stmt.push(b'(');
            copy_stmt.extend_from_slice(cols);
            copy_stmt.push(b')');
        }
        copy_stmt.extend_from_slice(b" FROM stdin;\n");
        data_entries.push(Entry {
            dump_id: next_id,
            had_dumper: true,
            table_oid: Some("0".into()),
            oid: Some(oid.to_string().into()),
            tag: Some(name.clone()),
            desc: Some("TABLE DATA".into()),
            section: archive::SECTION_DATA,
            defn: None,
            drop_stmt: None,
            copy_stmt: Some(copy_stmt.into()),
            namespace: Some(schema.clone()),
            tablespace: None,
            tableam: None,
            relkind: 0,
            owner: owner.clone(),
            with_oids: Some("false".into()),
            deps: vec![*table_dump_id],
            data: DataState::NotSet,
        });
        let quoted = &table.quoted;
        copies.push(Copy {
            oid: *oid,
            dump_id: next_id,
            select: table
                .columns
                .as_ref()
                .map(|cols| format!("SELECT {cols} FROM ONLY {quoted}")),
            encoding: encoding.clone(),
        });
    }
    // The data entries in pg_dump's order, and the tables copied in that order with them (an
    // archive written without seeking, encrypted, holds its data blocks in TOC order).
    let mut paired: Vec<(Entry, Copy)> = data_entries.into_iter().zip(copies).collect();
    paired.sort_by(|(a, _), (b, _)| (&a.namespace, &a.tag).cmp(&(&b.namespace, &b.tag)));
    let (mut data_entries, copies): (Vec<Entry>, Vec<Copy>) = paired.into_iter().unzip();
    for (s, (last, called)) in sel.sequences.iter().zip(seq_values) {
        next_id += 1;
        let mut defn = b"SELECT pg_catalog.setval(".to_vec();
        defn.extend(quote_literal_bytes(&quote_qualified_if_needed_bytes(
            s.schema.as_bytes(),
            s.name.as_bytes(),
        )));
        defn.extend_from_slice(format!(", {last}, {called});\n").as_bytes());
        data_entries.push(Entry {
            dump_id: next_id,
            had_dumper: false,
            table_oid: Some("0".into()),
            oid: Some("0".into()),
            tag: Some(s.name.clone()),
            desc: Some("SEQUENCE SET".into()),
            section: archive::SECTION_DATA,
            defn: Some(defn.into()),
            drop_stmt: None,
            copy_stmt: None,
            namespace: Some(s.schema.clone()),
            tablespace: None,
            tableam: None,
            relkind: 0,
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
    (entries, copies)
}

/// Copies one table, of `heap_bytes` on disk, into its data entry with its COPY `statement`
/// ([`copy_statement`], prepared with the locks); returns its row count.
async fn copy_table(
    session: &NativeSession,
    copy: &Copy,
    statement: &tokio_postgres::Statement,
    heap_bytes: i64,
    out: &mut Output,
) -> Result<i64, NativeError> {
    out.put(Chunk::Begin(copy.dump_id)).await;
    let stream = session.client.copy_out(statement).await?;
    pin_mut!(stream);
    let mut rows = 0i64;
    // The server sends a message per row: hand them on in batches. A small table's text is
    // about its heap's size: a small buffer for it, not one of a batch's size.
    let first = usize::try_from(heap_bytes).unwrap_or(0).clamp(1024, BATCH);
    let mut batch = bytes::BytesMut::with_capacity(first);
    while let Some(bytes) = stream.next().await {
        let bytes = bytes?;
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
    Ok(rows)
}
