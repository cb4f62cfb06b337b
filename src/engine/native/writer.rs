//! Writing a group's archive: the COPY data goes to memory while the group is small (one
//! blocking task writes and commits the file after the transaction, so small groups cost no
//! thread hand-off per chunk) and to a writer thread once it is not (memory stays bounded
//! whatever the table size). Either way the file is written as `.ing`, fsynced and renamed
//! by [`crate::store::commit`].

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use super::archive::{self, ArchiveError, ArchiveWriter, Entry, Piece, PIECE_SIZE};
use super::pieces::{self, InFlight, Pending};
use crate::store;

/// A group whose data fits in this much memory is written in one go after its transaction;
/// a larger one streams to a writer thread as it is copied.
const SPOOL: usize = 4 * 1024 * 1024;

/// Files being completed at once per slot (`jobs`), weighed by [`Output::weight`]: one per
/// file and one more per MiB of data it holds in memory. (64 at once, to have the file
/// system commit more fsyncs together, was measured slower with 10 000 small groups, and
/// took more memory.)
pub const FINISHING_PER_JOB: usize = 4;

/// Why a group's archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: ArchiveError,
    },
    #[error("cannot write {}: {source}", path.display())]
    Flush {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot finish {}: {}", path.display(), crate::text::io_message(source))]
    Commit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The COPY side gave up: its error is the one reported.
    #[error("incomplete archive")]
    Incomplete,
    #[error("the archive writer failed: {0}")]
    Panicked(String),
}

impl WriteError {
    /// Whether the disk was full.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            WriteError::Open { source, .. }
            | WriteError::Flush { source, .. }
            | WriteError::Commit { source, .. } => Some(source),
            WriteError::Archive {
                source: ArchiveError::Io(source),
                ..
            } => Some(source),
            _ => None,
        };
        io.is_some_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// A piece of a group's archive data, in the order it is written.
pub(super) enum Chunk {
    /// The data of the entry with this dump id begins.
    Begin(i32),
    Data(bytes::Bytes),
    /// A piece of that entry's data, compressed elsewhere (a range of a split table).
    Piece(Pending),
    /// That entry's data ends.
    End,
    /// Every entry is written: finish the file.
    Finish,
}

/// The archive file being made.
pub(super) struct Target {
    pub(super) partial: PathBuf,
    pub(super) final_path: PathBuf,
    pub(super) header: archive::Header,
    pub(super) entries: Vec<Entry>,
    /// Encrypt the archive as it is written (`[encryption]`).
    pub(super) seal: Option<crate::crypt::Recipients>,
}

/// Where a group's COPY data goes: memory while it is small, a writer thread once it is not.
pub struct Output {
    target: Option<Target>,
    spool: Vec<Chunk>,
    spooled: usize,
    stream: Option<(tokio::sync::mpsc::Sender<Chunk>, Completing)>,
}

/// A group's archive being completed on a blocking thread: written, fsynced, renamed.
type Completing = tokio::task::JoinHandle<Result<store::Finished, WriteError>>;

impl Output {
    pub(super) fn new(target: Target) -> Output {
        Output {
            target: Some(target),
            spool: Vec::new(),
            spooled: 0,
            stream: None,
        }
    }

    pub(super) async fn put(&mut self, chunk: Chunk) {
        if let Some((tx, _)) = &self.stream {
            // A writer that has gone has failed: its error is reported at the end.
            let _ = tx.send(chunk).await;
            return;
        }
        match &chunk {
            Chunk::Data(b) => self.spooled += b.len(),
            // Its compressed bytes are not known yet: count it as large as it may be.
            Chunk::Piece(_) => self.spooled += PIECE_SIZE,
            _ => {}
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

    /// The share of the files completing at once ([`FINISHING_PER_JOB`] per slot) this file
    /// takes: one, and one more per MiB of data held in memory.
    pub fn weight(&self) -> u32 {
        if self.stream.is_some() {
            1
        } else {
            1 + u32::try_from(self.spooled >> 20).unwrap_or(0)
        }
    }

    /// Completes and commits the file on a blocking thread, holding `slot` (one of the
    /// slots that bound how many files are written and fsynced at once) until it is done.
    pub async fn complete(
        mut self,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<store::Finished, WriteError> {
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
            .map_err(|e| WriteError::Panicked(e.to_string()))?;
        drop(slot);
        done
    }
}

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
/// - A spooled (small) archive is made in memory and written with one call, hashed as it
///   is written.
/// - A streamed one is written through a buffer and read back to be hashed (its TOC is
///   rewritten at the end).
/// - An encrypted one cannot seek back to record its data positions: it is written as
///   `pg_dump -Fc` writes to a pipe ([`ArchiveWriter::streaming`]).
fn write_archive(t: Target, source: Source) -> Result<store::Finished, WriteError> {
    let path = &t.partial;
    let io = |source: ArchiveError| WriteError::Archive {
        path: path.clone(),
        source,
    };
    let flush = |source: std::io::Error| WriteError::Flush {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|source| WriteError::Open {
            path: path.clone(),
            source,
        })?;
    let compression = t.header.compression;
    let hashed = match (&t.seal, &source) {
        (None, Source::Spool(_)) => {
            let memory = std::io::Cursor::new(Vec::new());
            let mut w = ArchiveWriter::new(memory, t.header, t.entries).map_err(io)?;
            write_data(&mut w, source, compression).map_err(|e| e.at(path))?;
            let bytes = w.finish().map_err(io)?.into_inner();
            file.write_all(&bytes).map_err(flush)?;
            Some(store::hash_bytes(&bytes))
        }
        (None, Source::Channel(_)) => {
            let out = BufWriter::with_capacity(1 << 16, file);
            let mut w = ArchiveWriter::new(out, t.header, t.entries).map_err(io)?;
            write_data(&mut w, source, compression).map_err(|e| e.at(path))?;
            let out = w.finish().map_err(io)?;
            file = out.into_inner().map_err(|e| flush(e.into_error()))?;
            None
        }
        (Some(recipients), _) => {
            // The encryption writes in chunks of its own: no buffer in front of the file.
            let sealed = recipients.seal(file).map_err(flush)?;
            let mut w = ArchiveWriter::streaming(sealed, t.header, t.entries).map_err(io)?;
            write_data(&mut w, source, compression).map_err(|e| e.at(path))?;
            let sealed = w.finish_streaming().map_err(io)?;
            file = sealed.finish().map_err(flush)?;
            None
        }
    };
    store::commit_written(&file, path, &t.final_path, hashed).map_err(|source| WriteError::Commit {
        path: t.final_path.clone(),
        source,
    })
}

/// Why [`write_data`] stopped: the archive refused something, or the COPY side gave up.
enum DataError {
    Archive(ArchiveError),
    Incomplete,
}

impl DataError {
    fn at(self, path: &std::path::Path) -> WriteError {
        match self {
            DataError::Archive(source) => WriteError::Archive {
                path: path.to_path_buf(),
                source,
            },
            DataError::Incomplete => WriteError::Incomplete,
        }
    }
}

impl From<ArchiveError> for DataError {
    fn from(e: ArchiveError) -> Self {
        DataError::Archive(e)
    }
}

/// Writes the data blocks from the COPY side's chunks, until [`Chunk::Finish`].
fn write_data<W: std::io::Write>(
    w: &mut ArchiveWriter<W>,
    mut source: Source,
    compression: crate::compression::Compression,
) -> Result<(), DataError> {
    // The open block's data not yet handed to the compression threads, and the pieces they
    // are compressing, in order. A small block is compressed here, in one piece.
    let mut raw: Vec<u8> = Vec::new();
    let mut inflight = InFlight::default();
    let put = |w: &mut ArchiveWriter<W>, p: Pending| -> Result<(), ArchiveError> {
        w.write_piece(p.wait()?)
    };
    loop {
        match source.next() {
            Some(Chunk::Begin(id)) => w.begin_data(id)?,
            Some(Chunk::Data(b)) => {
                raw.extend_from_slice(&b);
                if raw.len() >= PIECE_SIZE {
                    let p = pieces::compress(compression, std::mem::take(&mut raw));
                    for done in inflight.push(p) {
                        put(w, done)?;
                    }
                }
            }
            Some(Chunk::Piece(p)) => {
                if !raw.is_empty() {
                    let before = pieces::compress(compression, std::mem::take(&mut raw));
                    for done in inflight.push(before) {
                        put(w, done)?;
                    }
                }
                for done in inflight.push(p) {
                    put(w, done)?;
                }
            }
            Some(Chunk::End) => {
                for done in inflight.drain() {
                    put(w, done)?;
                }
                // The rest, compressed here as the piece that ends the stream.
                let last = Piece::compress(compression, &raw, true).map_err(ArchiveError::from)?;
                w.write_piece(last)?;
                raw.clear();
                w.end_data()?;
            }
            Some(Chunk::Finish) => return Ok(()),
            None => return Err(DataError::Incomplete),
        }
    }
}

/// The creation time as pg_dump records it (local time, `struct tm` fields).
pub(super) fn created_now() -> [i32; 7] {
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
