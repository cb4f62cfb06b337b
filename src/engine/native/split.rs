//! One table, several sessions: a table of at least `backup.split_above` is copied by as many
//! sessions as the group's attempt holds slots, each in the group's snapshot (exported by the
//! group's session, imported with `SET TRANSACTION SNAPSHOT`) and under its own ACCESS SHARE
//! lock (bounded by the group's lock timeout, so a DDL queued behind our locks makes the group
//! fail and retry rather than wait), each copying ranges of the table's blocks
//! (`COPY (SELECT … FROM ONLY t WHERE ctid >= '(a,0)' AND ctid < '(b,0)') TO STDOUT`, a TID
//! range scan).
//!
//! Ranges are handed out in block order to whichever session is free, and their data goes into
//! the table's one TABLE DATA entry in that order, so the rows are in physical order, as
//! `COPY t TO STDOUT` gives them. Each session compresses its data in pieces on the
//! compression threads ([`super::pieces`]); a session ahead of the archive waits once a couple
//! of its pieces are queued, so memory stays a few MiB per session.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures_util::{pin_mut, StreamExt};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio_postgres::Client;

use super::archive::{self, PIECE_SIZE};
use super::error::NativeError;
use super::pieces::{self, Pending};
use super::session::NativeSession;
use super::writer::{Chunk, Output};
use crate::compression::Compression;
use crate::connect::application_name;
use crate::text::quote_literal;

/// The smallest range, in blocks (8 MiB of heap with 8 kB blocks): a COPY per range costs a
/// round trip and a scan start.
const MIN_RANGE: i64 = 1024;
/// The largest range (64 MiB of heap): ranges are what sessions balance their work by.
const MAX_RANGE: i64 = 8192;

/// Which tables are copied by several sessions at once, and by how many.
pub struct Split<'a> {
    /// Tables of at least this heap size are split (`backup.split_above`).
    pub above: Option<u64>,
    /// Slots the attempt holds: sessions it may use without taking more.
    pub held: usize,
    /// The run's slots, for spare ones, and how many there are.
    pub slots: &'a std::sync::Arc<tokio::sync::Semaphore>,
    pub jobs: usize,
    /// Where the other sessions come from.
    pub pool: &'a super::session::Sessions,
    pub database: &'a str,
}

/// A range of blocks: from, and up to (excluded; `None` for the last: to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Range {
    from: i64,
    to: Option<i64>,
}

/// A table about to be split: its ranges, and the sessions beside ours that copy it, with
/// the spare slots taken for them.
pub(super) struct Prepared {
    pub ranges: Vec<Range>,
    helpers: usize,
    _spare: Option<OwnedSemaphorePermit>,
}

/// Whether `copy` is to be split, and how: a heap of at least `split_above`, columns to
/// select, at least two ranges of blocks, and a session more than ours — a slot the attempt
/// holds, or a spare one taken now (never waited for: the attempt holds its locks).
pub(super) fn prepare(
    split: &Split<'_>,
    has_columns: bool,
    blocks: i64,
    bytes: i64,
) -> Option<Prepared> {
    let above = split.above?;
    if u64::try_from(bytes).unwrap_or(0) < above || !has_columns {
        return None;
    }
    let ranges = cut(blocks, split.jobs);
    let wanted = (split.jobs.max(1) - 1).min(ranges.len() - 1);
    let held = split.held.max(1) - 1;
    let mut spare: Option<OwnedSemaphorePermit> = None;
    while held + spare.as_ref().map_or(0, |p| p.num_permits()) < wanted {
        let Ok(p) = split.slots.clone().try_acquire_owned() else {
            break;
        };
        match &mut spare {
            Some(s) => s.merge(p),
            None => spare = Some(p),
        }
    }
    let helpers = wanted.min(held + spare.as_ref().map_or(0, |p| p.num_permits()));
    (helpers > 0).then_some(Prepared {
        ranges,
        helpers,
        _spare: spare,
    })
}

/// `blocks` cut into ranges of [`MIN_RANGE`]..[`MAX_RANGE`] blocks, about eight per session.
fn cut(blocks: i64, sessions: usize) -> Vec<Range> {
    let size = (blocks / (8 * sessions as i64)).clamp(MIN_RANGE, MAX_RANGE);
    let mut out = Vec::new();
    let mut from = 0;
    while from + size < blocks {
        out.push(Range {
            from,
            to: Some(from + size),
        });
        from += size;
    }
    out.push(Range { from, to: None });
    out
}

/// The table being copied, as [`copy`] needs it.
pub(super) struct Copying<'a> {
    /// The group's session: holds the group's locks and snapshot.
    pub session: &'a NativeSession,
    pub oid: u32,
    /// Its TABLE DATA entry.
    pub dump_id: i32,
    /// `SELECT <columns> FROM ONLY <table>`, and the COPY options.
    pub select: &'a str,
    pub encoding: &'a str,
    /// `"schema"."name"`, to lock.
    pub quoted: &'a str,
    pub compression: Compression,
    pub lock_wait_timeout: std::time::Duration,
    pub group: &'a str,
}

/// Copies the table in `ranges` with the group's session and up to `split.sessions - 1`
/// more, into its data entry of `out`; returns its row count and the sessions that copied
/// it. `exported` keeps the group's
/// snapshot name once exported, for the group's other split tables.
pub(super) async fn copy(
    c: &Copying<'_>,
    split: &Split<'_>,
    prepared: Prepared,
    exported: &mut Option<String>,
    out: &mut Output,
) -> Result<(i64, usize), NativeError> {
    let ranges = &prepared.ranges[..];
    let snapshot = match exported {
        Some(s) => s.clone(),
        None => {
            let row = c
                .session
                .client
                .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
                .await?;
            exported.insert(row.get::<_, String>(0)).clone()
        }
    };
    let mut helpers = Vec::new();
    let tried =
        futures_util::future::join_all((0..prepared.helpers).map(|_| helper(c, split, &snapshot)))
            .await;
    for h in tried {
        match h {
            Ok(h) => helpers.push(h),
            // No session to be had (connection limit, server busy): copy with fewer.
            Err(NativeError::Session(e)) => tracing::warn!(
                "{}: copying {} with one session fewer: {e}",
                crate::text::printable(c.group),
                crate::text::printable(c.quoted)
            ),
            // A lock timeout (a DDL queued behind the group's lock) ends the attempt.
            Err(e) => return Err(e),
        }
    }
    out.put(Chunk::Begin(c.dump_id)).await;
    let queue = Queue::default();
    let clients = std::iter::once(&c.session.client).chain(helpers.iter().map(|h| &h.client));
    let workers =
        futures_util::future::try_join_all(clients.map(|client| work(client, c, ranges, &queue)));
    let ((), rows) = tokio::try_join!(
        async { workers.await.map(drop) },
        merge(&queue, ranges.len(), out)
    )?;
    // pg_dump ends each table's data so, and a `pg_restore -f` script needs it.
    out.put(Chunk::Data(bytes::Bytes::from_static(archive::COPY_END)))
        .await;
    out.put(Chunk::End).await;
    let sessions = 1 + helpers.len();
    for h in helpers {
        // Read-only: ending the transaction either way is the same.
        if h.client.batch_execute("ROLLBACK").await.is_ok() {
            split.pool.give(split.database, h);
        }
    }
    Ok((rows, sessions))
}

/// Another session in the group's snapshot, holding its own lock on the table.
async fn helper(
    c: &Copying<'_>,
    split: &Split<'_>,
    snapshot: &str,
) -> Result<NativeSession, NativeError> {
    let h = split
        .pool
        .take(split.database)
        .await
        .map_err(NativeError::Session)?;
    let sql = format!(
        "SET application_name = {}; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
         SET TRANSACTION SNAPSHOT {}; SET LOCAL lock_timeout = '{}ms';
         LOCK TABLE ONLY {} IN ACCESS SHARE MODE",
        quote_literal(&application_name(c.group)),
        quote_literal(snapshot),
        c.lock_wait_timeout.as_millis().max(1),
        c.quoted
    );
    match h.client.batch_execute(&sql).await {
        Ok(()) => Ok(h),
        // Behind a DDL queued behind the group's own lock: name it now, while it waits.
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            let blockers =
                crate::locks::conflicting_on(&c.session.client, split.database, &[c.oid]).await;
            Err(NativeError::SplitLockTimeout { error, blockers })
        }
        Err(e) => Err(e.into()),
    }
}

/// What a session sends of one range.
enum Msg {
    Piece(Pending),
    /// The range is complete, with this many rows.
    Done(i64),
}

/// The ranges handed out so far, in order, each with the receiving end of its data.
#[derive(Default)]
struct Queue {
    state: Mutex<(usize, VecDeque<mpsc::Receiver<Msg>>)>,
    handed: Notify,
}

impl Queue {
    /// The next range to copy, and where its data goes; `None` once every range is handed out.
    fn take(&self, total: usize) -> Option<(usize, mpsc::Sender<Msg>)> {
        let mut state = self.state.lock().expect("range queue");
        let next = state.0;
        if next == total {
            return None;
        }
        // Two pieces queued per range: a session ahead of the archive waits, memory stays flat.
        let (tx, rx) = mpsc::channel(2);
        state.0 += 1;
        state.1.push_back(rx);
        drop(state);
        self.handed.notify_one();
        Some((next, tx))
    }

    /// The data of the next range, in range order, once it is handed out.
    async fn next(&self) -> mpsc::Receiver<Msg> {
        loop {
            let handed = self.handed.notified();
            if let Some(rx) = self.state.lock().expect("range queue").1.pop_front() {
                return rx;
            }
            handed.await;
        }
    }
}

/// One session's work: ranges, while there are any.
async fn work(
    client: &Client,
    c: &Copying<'_>,
    ranges: &[Range],
    queue: &Queue,
) -> Result<(), NativeError> {
    let select = c.select;
    while let Some((i, tx)) = queue.take(ranges.len()) {
        let r = ranges[i];
        let mut sql = format!(
            "COPY ({select} WHERE ctid >= '({},0)'::pg_catalog.tid",
            r.from
        );
        if let Some(to) = r.to {
            sql.push_str(&format!(" AND ctid < '({to},0)'::pg_catalog.tid"));
        }
        sql.push_str(&format!(") TO STDOUT{}", c.encoding));
        copy_range(client, &sql, c.compression, &tx).await?;
    }
    Ok(())
}

/// Copies one range, sending its data in pieces as they fill.
async fn copy_range(
    client: &Client,
    sql: &str,
    compression: Compression,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), NativeError> {
    let gone = || NativeError::Unexpected("the archive writer stopped taking data");
    let stream = client.copy_out(sql).await?;
    pin_mut!(stream);
    let mut rows = 0i64;
    let mut piece = Vec::with_capacity(PIECE_SIZE + (64 << 10));
    while let Some(bytes) = stream.next().await {
        let bytes = bytes?;
        rows += bytes.iter().filter(|b| **b == b'\n').count() as i64;
        piece.extend_from_slice(&bytes);
        if piece.len() >= PIECE_SIZE {
            let full = std::mem::replace(&mut piece, Vec::with_capacity(PIECE_SIZE + (64 << 10)));
            tx.send(Msg::Piece(pieces::compress(compression, full)))
                .await
                .map_err(|_| gone())?;
        }
    }
    if !piece.is_empty() {
        tx.send(Msg::Piece(pieces::compress(compression, piece)))
            .await
            .map_err(|_| gone())?;
    }
    tx.send(Msg::Done(rows)).await.map_err(|_| gone())
}

/// Hands the ranges' pieces to the archive in range order; returns the rows copied.
async fn merge(queue: &Queue, total: usize, out: &mut Output) -> Result<i64, NativeError> {
    let mut rows = 0;
    for _ in 0..total {
        let mut rx = queue.next().await;
        loop {
            match rx.recv().await {
                Some(Msg::Piece(p)) => out.put(Chunk::Piece(p)).await,
                Some(Msg::Done(n)) => {
                    rows += n;
                    break;
                }
                // Its session failed: that error ends the copy.
                None => std::future::pending::<()>().await,
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_block_in_order() {
        for (blocks, sessions) in [(0, 2), (1023, 2), (5000, 2), (262_144, 2), (1 << 24, 8)] {
            let r = cut(blocks, sessions);
            assert_eq!(r[0].from, 0);
            assert_eq!(r.last().unwrap().to, None, "the last is open-ended");
            for w in r.windows(2) {
                assert_eq!(w[0].to, Some(w[1].from));
                let size = w[1].from - w[0].from;
                assert!((MIN_RANGE..=MAX_RANGE).contains(&size), "{size}");
            }
        }
        assert_eq!(cut(1023, 2).len(), 1, "too small to split");
        assert_eq!(cut(262_144, 2).len(), 32);
    }
}
