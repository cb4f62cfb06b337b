//! Reading and writing pg_dump's custom-format archives (`pg_dump -Fc`), archive versions
//! 1.14 (pg_dump 12 to 15), 1.15 (pg_dump 16) and 1.16 (pg_dump 17 and 18).
//!
//! Why: a native dump engine takes the schema of a group of tables from a schema-only
//! `pg_dump -Fc` archive (its table of contents: every `CREATE`, `ALTER`, `COMMENT`, `ACL`, …
//! entry with its dependencies), streams each table's rows itself with `COPY … TO STDOUT`, and
//! writes one archive per group that stock `pg_restore` lists and restores (also with `-j`),
//! exactly as if `pg_dump` had written it. [`read_toc`] reads the TOC of the schema-only
//! archive; [`ArchiveWriter`] writes the group's archive from those entries plus the `TABLE
//! DATA` it streams.
//!
//! The format, as written by `pg_dump` 15 to 18 (`pg_backup_archiver.c`, `pg_backup_custom.c`,
//! `compress_*.c`):
//!
//! * An *int* is one sign byte (0 positive, 1 negative) and then the absolute value in
//!   `intSize` (4) bytes, little-endian. A *string* is an int length and that many bytes, no
//!   terminator; length -1 is NULL (distinct from the empty string, length 0).
//! * Header: `PGDMP`, then the bytes major, minor, revision (1, 14, 0), intSize (4), offSize
//!   (8), format (1 = custom); the compression: up to 1.14 the zlib level as an int (-1 zlib
//!   default, 0 none, 1–9), from 1.15 the algorithm as a byte (0 none, 1 gzip, 2 lz4, 3 zstd;
//!   the level is not recorded); seven ints of the creation time as the dumping machine's
//!   *local* `struct tm`
//!   (`tm_sec`, `tm_min`, `tm_hour`, `tm_mday`, `tm_mon` 0-based, `tm_year` since 1900,
//!   `tm_isdst`); the strings database name, server version and pg_dump version.
//! * TOC: an int entry count, then per entry: ints dump id and hadDumper (1 if the entry has
//!   data), strings tableoid and oid (decimal), tag, desc (`TABLE`, `TABLE DATA`, …), the int
//!   section ([`SECTION_NONE`] … [`SECTION_POST_DATA`]), strings defn, dropStmt, copyStmt,
//!   namespace, tablespace, tableam, from 1.16 the int relkind (the `pg_class.relkind` of a
//!   table's entry as a character code, else 0), owner and withOids (always `"false"`), the dump ids it
//!   depends on as decimal strings ended by a NULL string, and the data position: a flag byte
//!   (1 not set, 2 set, 3 no data) and offSize bytes of file offset, little-endian.
//! * Data, after the TOC: per entry with data, the byte 1 (`BLK_DATA`), the int dump id, the
//!   data as chunks (int length and bytes) of one compressed stream — a zlib stream, one LZ4
//!   frame, or one zstd frame — or of the raw bytes without compression, and an int 0. The data of a `TABLE DATA` entry is the text its
//!   `copyStmt` reads: the rows as `COPY … TO STDOUT` gives them, then [`COPY_END`].
//!
//! `pg_dump` writes the header and the TOC with every position unset, then the data, then
//! seeks back and rewrites the TOC with the positions, which `pg_restore` needs to restore
//! entries out of order (`-j`, `-L`) without scanning. [`ArchiveWriter`] does the same, so its
//! memory does not grow with the data: only the TOC is held.
//!
//! Large objects (`BLOBS` entries, block type 2) are not written by this module.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use crate::compression::Compression;

/// Section of entries outside the pre-data/data/post-data split (`SECTION_NONE`).
pub const SECTION_NONE: i32 = 1;
/// Section of definitions restored before the data (`CREATE TABLE`, types, functions, …).
pub const SECTION_PRE_DATA: i32 = 2;
/// Section of the data (`TABLE DATA`, `SEQUENCE SET`, …).
pub const SECTION_DATA: i32 = 3;
/// Section of definitions restored after the data (indexes, constraints, triggers, …).
pub const SECTION_POST_DATA: i32 = 4;

/// The archive versions this module reads and writes: 1.14.0, written by `pg_dump` 12 to 15
/// (1.14 added the table access method to TOC entries); 1.15.0, by `pg_dump` 16 (the header
/// names the compression algorithm instead of a zlib level; lz4 and zstd data); 1.16.0, by
/// `pg_dump` 17 and 18 (each TOC entry has a relkind). Checked against those pg_dumps.
pub const SUPPORTED_VERSIONS: [(u8, u8, u8); 3] = [V1_14, V1_15, V1_16];
/// Archive version 1.14.0 (pg_dump 12 to 15).
pub const V1_14: (u8, u8, u8) = (1, 14, 0);
/// Archive version 1.15.0 (pg_dump 16): the compression algorithm in the header.
pub const V1_15: (u8, u8, u8) = (1, 15, 0);
/// Archive version 1.16.0 (pg_dump 17, 18): relkind in TOC entries.
pub const V1_16: (u8, u8, u8) = (1, 16, 0);

/// The header's compression algorithm byte (archive 1.15 and later).
fn algorithm(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Gzip(_) => 1,
        Compression::Lz4(_) => 2,
        Compression::Zstd(_) => 3,
    }
}

/// The end of the COPY text of a `TABLE DATA` entry, as `pg_dump` 15 stores it after the rows:
/// the end-of-data line `\.` and two empty lines. Restoring into a database works without it
/// (`pg_restore` ends the COPY itself), but the SQL script of `pg_restore -f` needs it to end
/// the COPY, so data written with [`ArchiveWriter::write_data`] should end with it.
pub const COPY_END: &[u8] = b"\\.\n\n\n";

/// The start of every archive.
const MAGIC: &[u8; 5] = b"PGDMP";
/// `archCustom` in the header's format byte.
const FORMAT_CUSTOM: u8 = 1;
/// The only int and offset sizes handled (those of every 64-bit and most 32-bit platforms).
const INT_SIZE: u8 = 4;
const OFF_SIZE: u8 = 8;
/// Block type of table data.
const BLK_DATA: u8 = 1;
/// Data position flags (`K_OFFSET_*`).
const OFFSET_NOT_SET: u8 = 1;
const OFFSET_SET: u8 = 2;
const OFFSET_NO_DATA: u8 = 3;
/// Target size of a data chunk (compressed bytes, or raw bytes without compression).
const CHUNK_SIZE: usize = 64 * 1024;

/// An archive's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Archive version (major, minor, revision); one of [`SUPPORTED_VERSIONS`].
    pub version: (u8, u8, u8),
    /// Size of an int in bytes (4).
    pub int_size: u8,
    /// Size of a file offset in bytes (8).
    pub off_size: u8,
    /// Archive format (1 = custom).
    pub format: u8,
    /// How the data is compressed. An archive of version 1.15 or later records only the
    /// algorithm: its level reads as `None`.
    pub compression: Compression,
    /// Creation time as a local `struct tm`: sec, min, hour, mday, mon (0-based), year (since
    /// 1900), isdst. Written as given.
    pub created: [i32; 7],
    /// Name of the dumped database.
    pub database: Option<Text>,
    /// Version string of the server dumped from.
    pub server_version: Option<Text>,
    /// Version string of the pg_dump that wrote the archive.
    pub pg_dump_version: Option<Text>,
}

/// A string of an archive: bytes in the dumped database's encoding — UTF-8 in most, but
/// LATIN1, SQL_ASCII or another in some — kept exactly as they are.
///
/// Shared, not copied: a group's archive takes its entries from the schema archive's, and
/// the schema archive's owners, schemas and kinds repeat thousands of times ([`read_toc`]
/// keeps one copy of each).
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Text(Arc<[u8]>);

impl std::borrow::Borrow<[u8]> for Text {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl Text {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether it is exactly `s` (keywords such as entry kinds are ASCII in every encoding).
    pub fn is(&self, s: &str) -> bool {
        *self.0 == *s.as_bytes()
    }

    /// The text for messages, with bytes that are not UTF-8 replaced.
    pub fn lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Parses it as a decimal number (catalog OIDs, dump ids).
    pub fn parse<T: std::str::FromStr>(&self) -> Option<T> {
        std::str::from_utf8(&self.0).ok()?.parse().ok()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.lossy(), f)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Arc::from(s.as_bytes()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Arc::from(s.into_bytes()))
    }
}

impl From<Vec<u8>> for Text {
    fn from(b: Vec<u8>) -> Self {
        Text(Arc::from(b))
    }
}

impl Entry {
    /// Whether its kind (`desc`) is `kind`.
    pub fn desc_is(&self, kind: &str) -> bool {
        self.desc.as_ref().is_some_and(|d| d.is(kind))
    }
}

/// Where an entry's data is in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// The entry has data whose position was not recorded (`pg_restore` scans for it).
    NotSet,
    /// The entry's data block starts at this byte offset of the archive.
    At(u64),
    /// The entry has no data.
    NoData,
}

/// One TOC entry. Strings are NULL (`None`) or text; `Some("")` is an empty string, which the
/// format keeps distinct from NULL (`pg_dump` gives `TABLE` entries the tablespace `""`,
/// `ENCODING` entries a NULL one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's id, positive; other entries' `deps` refer to it.
    pub dump_id: i32,
    /// Whether the entry has data (`TABLE DATA`, `BLOBS`).
    pub had_dumper: bool,
    /// OID of the catalog the object is in (`pg_class` for a table), in decimal; "0" if none.
    pub table_oid: Option<Text>,
    /// OID of the object, in decimal; "0" if none.
    pub oid: Option<Text>,
    /// The object's name (e.g. the table's), as `pg_restore -l` shows it.
    pub tag: Option<Text>,
    /// The kind of entry: `TABLE`, `TABLE DATA`, `INDEX`, `ACL`, `SEQUENCE SET`, …
    pub desc: Option<Text>,
    /// One of [`SECTION_NONE`], [`SECTION_PRE_DATA`], [`SECTION_DATA`], [`SECTION_POST_DATA`].
    pub section: i32,
    /// SQL that creates the object (or, for data entries, e.g. a `setval`); may be empty.
    pub defn: Option<Text>,
    /// SQL that drops the object (`pg_restore --clean`).
    pub drop_stmt: Option<Text>,
    /// For `TABLE DATA`: the `COPY … FROM stdin;` statement the data is fed to.
    pub copy_stmt: Option<Text>,
    /// Schema of the object.
    pub namespace: Option<Text>,
    /// Tablespace of the object.
    pub tablespace: Option<Text>,
    /// Table access method of the object (e.g. `heap`).
    pub tableam: Option<Text>,
    /// The relkind of a table's entry (`'r'`, `'p'`, … as a number; archive 1.16 and later),
    /// else 0.
    pub relkind: i32,
    /// Role that owns the object.
    pub owner: Option<Text>,
    /// Legacy WITH OIDS flag: `pg_dump` always writes "false".
    pub with_oids: Option<Text>,
    /// Dump ids of the entries this one depends on.
    pub deps: Vec<i32>,
    /// Where the entry's data is.
    pub data: DataState,
}

/// An archive's header and table of contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    /// The header.
    pub header: Header,
    /// The entries, in the archive's (restore) order.
    pub entries: Vec<Entry>,
}

/// Why an archive could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("archive I/O: {0}")]
    Io(#[from] io::Error),
    /// The input does not start with `PGDMP`: a plain SQL dump, a tar archive, another file.
    #[error("not a pg_dump archive: it does not start with \"PGDMP\"")]
    NotAnArchive,
    /// The archive version is not one of [`SUPPORTED_VERSIONS`].
    #[error(
        "archive version {}.{}-{} is not supported (only 1.14, 1.15 and 1.16, written by pg_dump 12 to 18)",
        found.0, found.1, found.2
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: (u8, u8, u8),
    },
    /// The archive is not in the custom format (the format byte found: 3 tar, 5 directory).
    #[error("archive format {0} is not the custom format (1)")]
    NotCustomFormat(u8),
    /// The archive (read, or about to be written) breaks the format, or the writer was misused
    /// (data for an entry without data, a block left open, …); the message says what and
    /// where.
    #[error("malformed archive: {0}")]
    Malformed(String),
}

fn malformed(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Malformed(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads the header and TOC (not the data) of a custom-format archive, leaving `r` just after
/// the TOC (where the data starts).
///
/// Archive versions other than [`SUPPORTED_VERSIONS`] are refused with
/// [`ArchiveError::UnsupportedVersion`] (callers fall back to `pg_dump`). The reader is
/// strict: whatever it accepts, [`ArchiveWriter`] writes back byte for byte; strings must be
/// UTF-8 without NUL bytes, and anything `pg_dump` would not write is
/// [`ArchiveError::Malformed`].
pub fn read_toc(r: &mut impl Read) -> Result<Toc, ArchiveError> {
    let mut input = Input {
        r,
        version: V1_14,
        pos: 0,
        at: String::from("header"),
        scratch: Vec::new(),
        shared: HashSet::new(),
    };
    let header = input.header()?;
    input.at = String::from("TOC");
    let count = input.int("entry count")?;
    if count < 0 {
        return Err(input.bad("entry count", &format!("{count} is negative")));
    }
    // The count is not trusted for an allocation: a corrupt one fails on reading instead.
    let mut entries = Vec::with_capacity(count.min(4096) as usize);
    for i in 1..=count {
        input.at = format!("TOC entry {i} of {count}");
        entries.push(input.entry()?);
    }
    // A database's schema TOC is kept for the whole run: without the room doubling left.
    entries.shrink_to_fit();
    Ok(Toc { header, entries })
}

/// [`read_toc`] on a file, buffered.
pub fn read_toc_file(path: &Path) -> Result<Toc, ArchiveError> {
    let mut r = BufReader::new(File::open(path)?);
    read_toc(&mut r)
}

/// A reader that knows where it is, for error messages.
struct Input<'a, R> {
    r: &'a mut R,
    /// The archive's version, once the header is read.
    version: (u8, u8, u8),
    /// Bytes read so far.
    pos: u64,
    /// What is being read ("header", "TOC entry 3 of 16 (dump id 42)").
    at: String,
    /// The string being read.
    scratch: Vec<u8>,
    /// Strings that repeat from entry to entry, one copy each ([`Input::shared_string`]).
    shared: HashSet<Text>,
}

impl<R: Read> Input<'_, R> {
    fn bad(&self, field: &str, problem: &str) -> ArchiveError {
        malformed(format!(
            "{}: {field}: {problem} (before byte {})",
            self.at, self.pos
        ))
    }

    fn bytes(&mut self, buf: &mut [u8], field: &str) -> Result<(), ArchiveError> {
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.bad(field, "the archive ends here (truncated?)"))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn byte(&mut self, field: &str) -> Result<u8, ArchiveError> {
        let mut b = [0u8; 1];
        self.bytes(&mut b, field)?;
        Ok(b[0])
    }

    fn int(&mut self, field: &str) -> Result<i32, ArchiveError> {
        let mut b = [0u8; 1 + INT_SIZE as usize];
        self.bytes(&mut b, field)?;
        let abs = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        let Ok(abs) = i32::try_from(abs) else {
            return Err(self.bad(field, &format!("int magnitude {abs} is out of range")));
        };
        match b[0] {
            0 => Ok(abs),
            1 if abs != 0 => Ok(-abs),
            sign => Err(self.bad(
                field,
                &format!("int with sign byte {sign} and magnitude {abs}"),
            )),
        }
    }

    fn string(&mut self, field: &str) -> Result<Option<Text>, ArchiveError> {
        Ok(self
            .read_string(field)?
            .then(|| Text(Arc::from(&self.scratch[..]))))
    }

    /// A string of a field whose values repeat (owner, schema, kind…): one copy of each.
    fn shared_string(&mut self, field: &str) -> Result<Option<Text>, ArchiveError> {
        if !self.read_string(field)? {
            return Ok(None);
        }
        if let Some(t) = self.shared.get(&self.scratch[..]) {
            return Ok(Some(t.clone()));
        }
        let t = Text(Arc::from(&self.scratch[..]));
        self.shared.insert(t.clone());
        Ok(Some(t))
    }

    /// Reads a string into `scratch`; false for NULL.
    fn read_string(&mut self, field: &str) -> Result<bool, ArchiveError> {
        let len = self.int(field)?;
        if len == -1 {
            return Ok(false);
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(self.bad(field, &format!("string length {len}")));
        };
        // Read through `take` so a corrupt length cannot allocate gigabytes up front.
        self.scratch.clear();
        let got = (&mut *self.r)
            .take(len as u64)
            .read_to_end(&mut self.scratch)?;
        self.pos += got as u64;
        if got < len {
            return Err(self.bad(
                field,
                &format!("the archive ends {got} bytes into a {len}-byte string (truncated?)"),
            ));
        }
        if self.scratch.contains(&0) {
            return Err(self.bad(field, "string contains a NUL byte"));
        }
        Ok(true)
    }

    fn header(&mut self) -> Result<Header, ArchiveError> {
        let mut magic = [0u8; 5];
        match self.r.read_exact(&mut magic) {
            Ok(()) => self.pos += 5,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ArchiveError::NotAnArchive)
            }
            Err(e) => return Err(e.into()),
        }
        if &magic != MAGIC {
            return Err(ArchiveError::NotAnArchive);
        }
        let mut v = [0u8; 3];
        self.bytes(&mut v, "version")?;
        let version = (v[0], v[1], v[2]);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(ArchiveError::UnsupportedVersion { found: version });
        }
        self.version = version;
        let int_size = self.byte("int size")?;
        if int_size != INT_SIZE {
            return Err(self.bad(
                "int size",
                &format!("{int_size} (only {INT_SIZE} is supported)"),
            ));
        }
        let off_size = self.byte("offset size")?;
        if off_size != OFF_SIZE {
            return Err(self.bad(
                "offset size",
                &format!("{off_size} (only {OFF_SIZE} is supported)"),
            ));
        }
        let format = self.byte("format")?;
        if format != FORMAT_CUSTOM {
            return Err(ArchiveError::NotCustomFormat(format));
        }
        let compression = if version >= V1_15 {
            match self.byte("compression algorithm")? {
                0 => Compression::None,
                1 => Compression::Gzip(None),
                2 => Compression::Lz4(None),
                3 => Compression::Zstd(None),
                a => {
                    return Err(self.bad(
                        "compression algorithm",
                        &format!("{a} is not 0 (none), 1 (gzip), 2 (lz4) or 3 (zstd)"),
                    ))
                }
            }
        } else {
            match self.int("compression")? {
                -1 => Compression::Gzip(None),
                0 => Compression::None,
                level @ 1..=9 => Compression::Gzip(Some(level.unsigned_abs())),
                level => {
                    return Err(self.bad("compression", &format!("level {level} is not -1 to 9")))
                }
            }
        };
        let mut created = [0i32; 7];
        for (field, c) in CREATED_FIELDS.iter().zip(created.iter_mut()) {
            *c = self.int(field)?;
        }
        Ok(Header {
            version,
            int_size,
            off_size,
            format,
            compression,
            created,
            database: self.string("database name")?,
            server_version: self.string("server version")?,
            pg_dump_version: self.string("pg_dump version")?,
        })
    }

    fn entry(&mut self) -> Result<Entry, ArchiveError> {
        let dump_id = self.int("dump id")?;
        if dump_id <= 0 {
            return Err(self.bad("dump id", &format!("{dump_id} is not positive")));
        }
        self.at = format!("{} (dump id {dump_id})", self.at);
        let had_dumper = match self.int("hadDumper")? {
            0 => false,
            1 => true,
            n => return Err(self.bad("hadDumper", &format!("{n} is not 0 or 1"))),
        };
        let table_oid = self.shared_string("tableoid")?;
        let oid = self.string("oid")?;
        let tag = self.string("tag")?;
        let desc = self.shared_string("desc")?;
        let section = self.int("section")?;
        if !(SECTION_NONE..=SECTION_POST_DATA).contains(&section) {
            return Err(self.bad("section", &format!("{section} is not 1 to 4")));
        }
        let defn = self.string("defn")?;
        let drop_stmt = self.string("dropStmt")?;
        let copy_stmt = self.string("copyStmt")?;
        let namespace = self.shared_string("namespace")?;
        let tablespace = self.shared_string("tablespace")?;
        let tableam = self.shared_string("tableam")?;
        let relkind = if self.version >= V1_16 {
            self.int("relkind")?
        } else {
            0
        };
        let owner = self.shared_string("owner")?;
        let with_oids = self.shared_string("withOids")?;
        let mut deps = Vec::new();
        while let Some(d) = self.string("dependency")? {
            match d.parse::<i32>() {
                Some(n) if n.to_string().as_bytes() == d.as_bytes() => deps.push(n),
                _ => {
                    return Err(self.bad("dependency", &format!("{d:?} is not a dump id")));
                }
            }
        }
        let flag = self.byte("data position flag")?;
        let mut off = [0u8; OFF_SIZE as usize];
        self.bytes(&mut off, "data position")?;
        let off = u64::from_le_bytes(off);
        let data = match (flag, off) {
            (OFFSET_NOT_SET, 0) => DataState::NotSet,
            (OFFSET_NO_DATA, 0) => DataState::NoData,
            (OFFSET_SET, o) if i64::try_from(o).is_ok() => DataState::At(o),
            (f, o) => return Err(self.bad("data position", &format!("flag {f} with offset {o}"))),
        };
        Ok(Entry {
            dump_id,
            had_dumper,
            table_oid,
            oid,
            tag,
            desc,
            section,
            defn,
            drop_stmt,
            copy_stmt,
            namespace,
            tablespace,
            tableam,
            relkind,
            owner,
            with_oids,
            deps,
            data,
        })
    }
}

const CREATED_FIELDS: [&str; 7] = [
    "creation tm_sec",
    "creation tm_min",
    "creation tm_hour",
    "creation tm_mday",
    "creation tm_mon",
    "creation tm_year",
    "creation tm_isdst",
];

/// One entry's data, read back from an archive's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataBlock {
    pub dump_id: i32,
    /// The data, decompressed.
    pub data: Vec<u8>,
    /// How many length-prefixed chunks it was stored in.
    pub chunks: usize,
}

/// Reads the data block that starts at byte `pos` of `archive` (an entry's
/// [`DataState::At`]) and decompresses it per the archive's `compression`.
pub fn read_data_block(
    archive: &[u8],
    pos: u64,
    compression: Compression,
) -> Result<DataBlock, ArchiveError> {
    let mut r = archive
        .get(usize::try_from(pos).unwrap_or(usize::MAX)..)
        .ok_or_else(|| {
            malformed(format!(
                "no data block at byte {pos}: the archive is shorter"
            ))
        })?;
    let mut input = Input {
        r: &mut r,
        version: V1_14,
        pos,
        at: format!("data block at byte {pos}"),
        scratch: Vec::new(),
        shared: HashSet::new(),
    };
    let kind = input.byte("block type")?;
    if kind != BLK_DATA {
        return Err(input.bad("block type", &format!("{kind} is not a data block (1)")));
    }
    let dump_id = input.int("dump id")?;
    let mut stored = Vec::new();
    let mut chunks = 0;
    loop {
        let len = input.int("chunk length")?;
        let Ok(len) = usize::try_from(len) else {
            return Err(input.bad("chunk length", &format!("{len} is negative")));
        };
        if len == 0 {
            break;
        }
        let start = stored.len();
        stored.resize(start + len, 0);
        input.bytes(&mut stored[start..], "chunk")?;
        chunks += 1;
    }
    let mut data = Vec::new();
    let decoded = match compression {
        Compression::None => {
            data = stored;
            Ok(0)
        }
        Compression::Gzip(_) => flate2::read::ZlibDecoder::new(&stored[..]).read_to_end(&mut data),
        Compression::Lz4(_) => {
            // Frame after frame, as pg_restore reads them.
            let mut rest = &stored[..];
            let mut read = Ok(0);
            while !rest.is_empty() && read.is_ok() {
                read = lz4_flex::frame::FrameDecoder::new(&mut rest).read_to_end(&mut data);
            }
            read
        }
        Compression::Zstd(_) => {
            zstd::stream::read::Decoder::new(&stored[..]).and_then(|mut d| d.read_to_end(&mut data))
        }
    };
    decoded.map_err(|e| malformed(format!("data of dump id {dump_id}: {compression}: {e}")))?;
    Ok(DataBlock {
        dump_id,
        data,
        chunks,
    })
}

// ---------------------------------------------------------------------------------------------
// Serializing

fn put_int(buf: &mut Vec<u8>, v: i32) {
    buf.extend_from_slice(&int_bytes(v));
}

/// An int as the archive writes it: the sign byte, then the absolute value, little-endian.
fn int_bytes(v: i32) -> [u8; 5] {
    let mut b = [u8::from(v < 0), 0, 0, 0, 0];
    b[1..].copy_from_slice(&v.unsigned_abs().to_le_bytes());
    b
}

fn put_str(
    buf: &mut Vec<u8>,
    s: Option<&[u8]>,
    what: &dyn Fn() -> String,
) -> Result<(), ArchiveError> {
    let Some(s) = s else {
        put_int(buf, -1);
        return Ok(());
    };
    if s.contains(&0) {
        return Err(malformed(format!("{}: string contains a NUL byte", what())));
    }
    let Ok(len) = i32::try_from(s.len()) else {
        return Err(malformed(format!(
            "{}: string of {} bytes is too long",
            what(),
            s.len()
        )));
    };
    put_int(buf, len);
    buf.extend_from_slice(s);
    Ok(())
}

/// The header's bytes, refusing what this module does not write.
fn header_bytes(h: &Header) -> Result<Vec<u8>, ArchiveError> {
    if !SUPPORTED_VERSIONS.contains(&h.version) {
        return Err(ArchiveError::UnsupportedVersion { found: h.version });
    }
    if h.int_size != INT_SIZE || h.off_size != OFF_SIZE {
        return Err(malformed(format!(
            "header: int size {} and offset size {} (only {INT_SIZE} and {OFF_SIZE} are supported)",
            h.int_size, h.off_size
        )));
    }
    if h.format != FORMAT_CUSTOM {
        return Err(ArchiveError::NotCustomFormat(h.format));
    }
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&[h.version.0, h.version.1, h.version.2]);
    buf.extend_from_slice(&[h.int_size, h.off_size, h.format]);
    if h.version >= V1_15 {
        buf.push(algorithm(h.compression));
    } else {
        let level = match h.compression {
            Compression::None => 0,
            Compression::Gzip(None) => -1,
            Compression::Gzip(Some(l @ 1..=9)) => l as i32,
            other => {
                return Err(malformed(format!(
                    "header: archive version 1.14 cannot record compression {other} (zlib levels 1 to 9 only)"
                )))
            }
        };
        put_int(&mut buf, level);
    }
    for (field, &c) in CREATED_FIELDS.iter().zip(h.created.iter()) {
        if c == i32::MIN {
            return Err(malformed(format!("header: {field} {c} is out of range")));
        }
        put_int(&mut buf, c);
    }
    put_str(&mut buf, h.database.as_ref().map(Text::as_bytes), &|| {
        "header: database name".into()
    })?;
    put_str(
        &mut buf,
        h.server_version.as_ref().map(Text::as_bytes),
        &|| "header: server version".into(),
    )?;
    put_str(
        &mut buf,
        h.pg_dump_version.as_ref().map(Text::as_bytes),
        &|| "header: pg_dump version".into(),
    )?;
    Ok(buf)
}

/// The TOC's bytes (count and entries, with their data states as they are).
fn toc_bytes(entries: &[Entry], version: (u8, u8, u8)) -> Result<Vec<u8>, ArchiveError> {
    let Ok(count) = i32::try_from(entries.len()) else {
        return Err(malformed(format!(
            "{} TOC entries are too many",
            entries.len()
        )));
    };
    let mut buf = Vec::with_capacity(entries.len() * 256);
    put_int(&mut buf, count);
    for e in entries {
        let what = |field: &str| format!("TOC entry (dump id {}): {field}", e.dump_id);
        if e.dump_id <= 0 {
            return Err(malformed(what("dump id is not positive")));
        }
        if !(SECTION_NONE..=SECTION_POST_DATA).contains(&e.section) {
            return Err(malformed(what(&format!(
                "section {} is not 1 to 4",
                e.section
            ))));
        }
        put_int(&mut buf, e.dump_id);
        put_int(&mut buf, i32::from(e.had_dumper));
        put_str(&mut buf, e.table_oid.as_ref().map(Text::as_bytes), &|| {
            what("tableoid")
        })?;
        put_str(&mut buf, e.oid.as_ref().map(Text::as_bytes), &|| {
            what("oid")
        })?;
        put_str(&mut buf, e.tag.as_ref().map(Text::as_bytes), &|| {
            what("tag")
        })?;
        put_str(&mut buf, e.desc.as_ref().map(Text::as_bytes), &|| {
            what("desc")
        })?;
        put_int(&mut buf, e.section);
        put_str(&mut buf, e.defn.as_ref().map(Text::as_bytes), &|| {
            what("defn")
        })?;
        put_str(&mut buf, e.drop_stmt.as_ref().map(Text::as_bytes), &|| {
            what("dropStmt")
        })?;
        put_str(&mut buf, e.copy_stmt.as_ref().map(Text::as_bytes), &|| {
            what("copyStmt")
        })?;
        put_str(&mut buf, e.namespace.as_ref().map(Text::as_bytes), &|| {
            what("namespace")
        })?;
        put_str(&mut buf, e.tablespace.as_ref().map(Text::as_bytes), &|| {
            what("tablespace")
        })?;
        put_str(&mut buf, e.tableam.as_ref().map(Text::as_bytes), &|| {
            what("tableam")
        })?;
        if version >= V1_16 {
            put_int(&mut buf, e.relkind);
        }
        put_str(&mut buf, e.owner.as_ref().map(Text::as_bytes), &|| {
            what("owner")
        })?;
        put_str(&mut buf, e.with_oids.as_ref().map(Text::as_bytes), &|| {
            what("withOids")
        })?;
        for d in &e.deps {
            put_str(&mut buf, Some(d.to_string().as_bytes()), &|| {
                what("dependency")
            })?;
        }
        put_int(&mut buf, -1);
        let (flag, off) = match e.data {
            DataState::NotSet => (OFFSET_NOT_SET, 0),
            DataState::At(o) if i64::try_from(o).is_ok() => (OFFSET_SET, o),
            DataState::At(o) => return Err(malformed(what(&format!("data offset {o}")))),
            DataState::NoData => (OFFSET_NO_DATA, 0),
        };
        buf.push(flag);
        buf.extend_from_slice(&off.to_le_bytes());
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes an archive: header + TOC with positions unset at creation; data blocks; then, on a
/// seekable output ([`ArchiveWriter::new`]), the TOC rewritten with positions.
///
/// On an output that cannot seek (an encrypted stream: [`ArchiveWriter::streaming`]) the TOC
/// keeps every position unset, as `pg_dump -Fc` writes to a pipe, and the data blocks must
/// come in TOC order: `pg_restore` reading such an archive from a pipe finds each block by
/// reading on from the last one (on a file it can seek in, it scans for them, so `-j` works
/// too).
///
/// Memory stays flat in the data size: data is compressed as it comes and written in chunks
/// of about 64 KiB. The writer writes small pieces (ints of five bytes): give it a buffered
/// `out` (a `BufWriter` on a file, or memory). Data positions are counted from where `out` stood when the writer was
/// created, so `out` should be at the start of an empty file. Until [`ArchiveWriter::finish`]
/// returns, the output is not a complete archive: write it to a temporary name.
pub struct ArchiveWriter<W: Write> {
    sink: Sink<W>,
    /// Without seeking: the indexes in `entries` of the entries with data, in TOC order, and
    /// how many of them have been written (the next block must be the next of them).
    in_order: Option<(Vec<usize>, usize)>,
    compression: Compression,
    version: (u8, u8, u8),
    entries: Vec<Entry>,
    /// Dump id → index in `entries`.
    index: HashMap<i32, usize>,
    /// Where the TOC starts and its length (to rewrite it in place).
    toc_at: u64,
    toc_len: usize,
    open: Option<Block>,
}

/// The output and the number of bytes written to it.
struct Sink<W: Write> {
    out: W,
    /// Where the archive starts in `out`.
    base: u64,
    /// Bytes written since `base`.
    pos: u64,
}

impl<W: Write> Sink<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn int(&mut self, v: i32) -> io::Result<()> {
        self.put(&int_bytes(v))
    }

    /// One data chunk: its length, then its bytes. Never empty (a 0 length ends the block).
    fn chunk(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        debug_assert!(!bytes.is_empty());
        let len = i32::try_from(bytes.len())
            .map_err(|_| malformed(format!("data chunk of {} bytes", bytes.len())))?;
        self.int(len)?;
        self.put(bytes)?;
        Ok(())
    }
}

/// The data block being written.
struct Block {
    /// Index in `entries`.
    index: usize,
    /// Uncompressed bytes so far.
    raw: u64,
    /// Uncompressed bytes not yet compressed (less than a piece).
    pending: Vec<u8>,
    /// Compressed bytes waiting to fill a chunk.
    out: Vec<u8>,
    /// Pieces written so far.
    pieces: usize,
    /// Adler-32 of the uncompressed bytes so far (gzip).
    adler: u32,
    /// A piece ended the compressed stream (gzip's final deflate block is written).
    ended: bool,
}

/// Uncompressed bytes compressed as one [`Piece`]: the unit of compression on several
/// threads, small enough that pieces in flight cost little memory, large enough that
/// compressing pieces on their own costs little ratio.
pub const PIECE_SIZE: usize = 1 << 20;

/// A part of a data block's data compressed on its own, so that the parts of one block can be
/// compressed on several threads — or come from several sessions — and still join into the
/// stream `pg_restore` reads:
///
/// - gzip: raw deflate ending in a sync flush (byte-aligned, not final), so pieces join into
///   one deflate stream; the block adds the zlib header, a final empty deflate block when no
///   piece was the last, and the Adler-32 of the whole data, combined from the pieces'.
/// - zstd: one frame. pg_restore's zstd reader drops the rest of a chunk after a frame ends,
///   so every frame ends at the end of a chunk.
/// - lz4: one frame; pg_restore's reader goes on to the next frame.
/// - none: the bytes.
pub struct Piece {
    bytes: Vec<u8>,
    raw: u64,
    adler: u32,
    last: bool,
}

impl Piece {
    /// Compresses `data`. With `last`, a gzip piece ends the deflate stream (nothing may
    /// follow it in its block).
    pub fn compress(compression: Compression, data: &[u8], last: bool) -> io::Result<Piece> {
        let bytes = match compression {
            Compression::None => data.to_vec(),
            Compression::Gzip(level) => deflate(data, level, last)?,
            Compression::Lz4(_) => {
                let mut info = lz4_flex::frame::FrameInfo::new();
                // Blocks link to their predecessors, as liblz4's default; level is liblz4's
                // notion (lz4_flex compresses at its one level, which restores the same).
                info.block_mode = lz4_flex::frame::BlockMode::Linked;
                let mut z = lz4_flex::frame::FrameEncoder::with_frame_info(
                    info,
                    Vec::with_capacity(data.len() / 2 + 64),
                );
                z.write_all(data)?;
                z.finish().map_err(io::Error::other)?
            }
            Compression::Zstd(level) => {
                zstd_compress(data, level.unwrap_or(zstd::DEFAULT_COMPRESSION_LEVEL))?
            }
        };
        let adler = match compression {
            Compression::Gzip(_) => zlib_rs::adler32::adler32(1, data),
            _ => 1,
        };
        Ok(Piece {
            bytes,
            raw: data.len() as u64,
            adler,
            last,
        })
    }

    /// Uncompressed bytes in the piece.
    pub fn raw_len(&self) -> u64 {
        self.raw
    }
}

/// Raw deflate of `data` at `level`: ending the stream when `last`, else ending in a sync
/// flush so that more deflate data can follow.
fn deflate(data: &[u8], level: Option<u32>, last: bool) -> io::Result<Vec<u8>> {
    use flate2::Compress;
    // A compressor's state is a few hundred KiB: a few are kept, reset between pieces,
    // rather than allocated (and page-faulted) again for every small table.
    let mut z = match DEFLATERS.take(|(l, _)| *l == level) {
        Some((_, mut z)) => {
            z.reset();
            z
        }
        None => Compress::new(
            level.map_or(flate2::Compression::default(), flate2::Compression::new),
            false,
        ),
    };
    let out = deflate_with(&mut z, data, last);
    DEFLATERS.give((level, z));
    out
}

/// Compressors kept for the next piece: as many as threads compress at once, at most.
struct Kept<T> {
    kept: std::sync::Mutex<Vec<T>>,
}

impl<T> Kept<T> {
    const fn new() -> Self {
        Kept {
            kept: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn take(&self, fits: impl Fn(&T) -> bool) -> Option<T> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let i = kept.iter().position(fits)?;
        Some(kept.swap_remove(i))
    }

    fn give(&self, t: T) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < 2 * cores() {
            kept.push(t);
        }
    }
}

/// The cores this process may use, read once (std reads the cgroup's quota each time): the
/// compression threads ([`super::pieces`]) and the compressors kept.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

static DEFLATERS: Kept<(Option<u32>, flate2::Compress)> = Kept::new();
static ZSTDS: Kept<(i32, zstd::bulk::Compressor<'static>)> = Kept::new();

fn deflate_with(z: &mut flate2::Compress, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    use flate2::{FlushCompress, Status};
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 64);
    loop {
        let from = usize::try_from(z.total_in()).expect("within data");
        let status = z
            .compress_vec(&data[from..], &mut out, flush)
            .map_err(io::Error::other)?;
        let consumed = z.total_in() == data.len() as u64;
        let room = out.len() < out.capacity();
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError if !last && consumed && room => break,
            _ => out.reserve(out.capacity().max(64 * 1024)),
        }
    }
    Ok(out)
}

/// One zstd frame of `data` at `level`, with a kept compression context (a context is
/// about a MiB at the default level).
fn zstd_compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut z = match ZSTDS.take(|(l, _)| *l == level) {
        Some((_, z)) => z,
        None => zstd::bulk::Compressor::new(level)?,
    };
    let out = z.compress(data);
    ZSTDS.give((level, z));
    out
}

/// The zlib header pg_dump's zlib writes at `level` (deflate, 32K window, level hint).
fn zlib_header(compression: Compression) -> [u8; 2] {
    let Compression::Gzip(level) = compression else {
        return [0x78, 0x9c];
    };
    match level {
        Some(0..=1) => [0x78, 0x01],
        Some(2..=5) => [0x78, 0x5e],
        None | Some(6) => [0x78, 0x9c],
        Some(_) => [0x78, 0xda],
    }
}

/// A final, empty deflate block (fixed Huffman codes, just the end-of-block code).
const DEFLATE_END: [u8; 2] = [0x03, 0x00];

impl<W: Write + Seek> ArchiveWriter<W> {
    /// Starts an archive in `out`, a seekable output: writes the header and the TOC with
    /// every data position unset, to be rewritten with the positions by
    /// [`finish`](Self::finish).
    ///
    /// `entries` is the complete TOC in restore order; entries with `had_dumper` get data
    /// later, through [`begin_data`](Self::begin_data). Their `data` fields are ignored: the
    /// writer sets them (unset, then the position; no data for entries without `had_dumper`).
    /// The header is written as given (including its creation time); its version must be one
    /// of [`SUPPORTED_VERSIONS`], its format custom, its sizes 4 and 8, and its compression
    /// one that version can record. Dump ids must be unique.
    pub fn new(mut out: W, header: Header, entries: Vec<Entry>) -> Result<Self, ArchiveError> {
        let base = out.stream_position()?;
        Self::start(out, base, header, entries, false)
    }

    /// Rewrites the TOC with every data position and returns the writer, flushed (not
    /// fsynced) and positioned at the end of the archive. A `had_dumper` entry without data,
    /// or a block not ended, is an error.
    pub fn finish(self) -> Result<W, ArchiveError> {
        if self.in_order.is_some() {
            return self.finish_streaming();
        }
        self.check_complete()?;
        let toc = toc_bytes(&self.entries, self.version)?;
        if toc.len() != self.toc_len {
            // Cannot happen: only fixed-size data positions changed.
            return Err(malformed(format!(
                "the final TOC is {} bytes, the first {}",
                toc.len(),
                self.toc_len
            )));
        }
        let mut sink = self.sink;
        let end = sink.pos;
        sink.out.seek(SeekFrom::Start(sink.base + self.toc_at))?;
        sink.out.write_all(&toc)?;
        sink.out.seek(SeekFrom::Start(sink.base + end))?;
        let mut out = sink.out;
        out.flush()?;
        Ok(out)
    }
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive in `out`, an output that cannot seek: the TOC is written once, with
    /// every data position unset, and the data blocks must be written in TOC order (as
    /// `pg_dump -Fc` to a pipe writes them). Finish with
    /// [`finish_streaming`](Self::finish_streaming).
    pub fn streaming(out: W, header: Header, entries: Vec<Entry>) -> Result<Self, ArchiveError> {
        Self::start(out, 0, header, entries, true)
    }

    /// Ends a streaming archive: checks every entry's data was written, flushes, and returns
    /// the output (for the caller to finish, e.g. an encryption's last chunk).
    pub fn finish_streaming(self) -> Result<W, ArchiveError> {
        self.check_complete()?;
        let mut out = self.sink.out;
        out.flush()?;
        Ok(out)
    }

    fn start(
        out: W,
        base: u64,
        header: Header,
        mut entries: Vec<Entry>,
        streaming: bool,
    ) -> Result<Self, ArchiveError> {
        let mut index = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter_mut().enumerate() {
            if index.insert(e.dump_id, i).is_some() {
                return Err(malformed(format!(
                    "dump id {} appears twice in the TOC",
                    e.dump_id
                )));
            }
            e.data = if e.had_dumper {
                DataState::NotSet
            } else {
                DataState::NoData
            };
        }
        let head = header_bytes(&header)?;
        let toc = toc_bytes(&entries, header.version)?;
        let mut sink = Sink { out, base, pos: 0 };
        let in_order = streaming.then(|| {
            let with_data = entries.iter().enumerate().filter(|(_, e)| e.had_dumper);
            (with_data.map(|(i, _)| i).collect(), 0)
        });
        sink.put(&head)?;
        let toc_at = sink.pos;
        sink.put(&toc)?;
        Ok(ArchiveWriter {
            sink,
            in_order,
            compression: header.compression,
            version: header.version,
            entries,
            index,
            toc_at,
            toc_len: toc.len(),
            open: None,
        })
    }

    /// Starts the data block of entry `dump_id`, which must be a `had_dumper` entry of the TOC
    /// whose data is not written yet, with no other block open. Blocks may come in any order.
    pub fn begin_data(&mut self, dump_id: i32) -> Result<(), ArchiveError> {
        if let Some(b) = &self.open {
            return Err(malformed(format!(
                "cannot start the data of dump id {dump_id}: the data of dump id {} is not ended",
                self.entries[b.index].dump_id
            )));
        }
        let Some(&index) = self.index.get(&dump_id) else {
            return Err(malformed(format!(
                "cannot write data for dump id {dump_id}: not in the TOC"
            )));
        };
        let e = &self.entries[index];
        let name = entry_name(e);
        if !e.had_dumper {
            return Err(malformed(format!(
                "cannot write data for {name}: the entry has no data (hadDumper is false)"
            )));
        }
        if e.desc_is("BLOBS") {
            return Err(malformed(format!(
                "cannot write data for {name}: large objects are not supported"
            )));
        }
        if e.data != DataState::NotSet {
            return Err(malformed(format!("the data of {name} is already written")));
        }
        if let Some((order, done)) = &mut self.in_order {
            if order.get(*done) != Some(&index) {
                return Err(malformed(format!(
                    "the data of {name} comes out of TOC order, which an archive without data positions cannot have"
                )));
            }
            *done += 1;
        }
        self.entries[index].data = DataState::At(self.sink.pos);
        self.sink.put(&[BLK_DATA])?;
        self.sink.int(dump_id)?;
        self.open = Some(Block {
            index,
            raw: 0,
            pending: Vec::new(),
            out: Vec::new(),
            pieces: 0,
            adler: 1,
            ended: false,
        });
        Ok(())
    }

    /// Appends uncompressed data (e.g. `COPY` text) to the open block: compressed per the
    /// header's compression, in pieces of [`PIECE_SIZE`], and written as length-prefixed
    /// chunks of about 64 KiB (small writes are collected, never one chunk each). For a
    /// `TABLE DATA` entry, the rows in the format of its `copyStmt` and then [`COPY_END`], as
    /// `pg_dump` stores them.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        let compression = self.compression;
        if self.open.is_none() {
            return Err(malformed("write_data with no data block started"));
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let block = self.open.as_mut().expect("checked above");
            let take = (PIECE_SIZE - block.pending.len()).min(rest.len());
            block.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if block.pending.len() == PIECE_SIZE {
                let piece = Piece::compress(compression, &block.pending, false)?;
                block.pending.clear();
                self.put_piece(piece)?;
            }
        }
        Ok(())
    }

    /// Appends a piece compressed elsewhere (with the header's compression) to the open
    /// block, after the data written so far.
    pub fn write_piece(&mut self, piece: Piece) -> Result<(), ArchiveError> {
        let compression = self.compression;
        let Some(block) = &mut self.open else {
            return Err(malformed("write_piece with no data block started"));
        };
        if !block.pending.is_empty() {
            let before = Piece::compress(compression, &block.pending, false)?;
            block.pending.clear();
            self.put_piece(before)?;
        }
        self.put_piece(piece)
    }

    fn put_piece(&mut self, piece: Piece) -> Result<(), ArchiveError> {
        let gzip = matches!(self.compression, Compression::Gzip(_));
        let Some(block) = &mut self.open else {
            return Err(malformed("no data block started"));
        };
        if block.ended {
            return Err(malformed(format!(
                "data after the end of the compressed stream of {}",
                entry_name(&self.entries[block.index])
            )));
        }
        if gzip {
            if block.pieces == 0 {
                block.out.extend_from_slice(&zlib_header(self.compression));
            }
            block.adler = zlib_rs::adler32::adler32_combine(block.adler, piece.adler, piece.raw);
            block.ended = piece.last;
        }
        block.pieces += 1;
        block.raw += piece.raw;
        block.out.extend_from_slice(&piece.bytes);
        let frame_ends = matches!(self.compression, Compression::Zstd(_));
        while block.out.len() >= CHUNK_SIZE || (frame_ends && !block.out.is_empty()) {
            let n = block.out.len().min(CHUNK_SIZE);
            self.sink.chunk(&block.out[..n])?;
            block.out.drain(..n);
        }
        Ok(())
    }

    /// Ends the open block: compresses what is left, ends the compressed stream and writes
    /// the 0 terminator. Returns the uncompressed byte count of the block.
    pub fn end_data(&mut self) -> Result<u64, ArchiveError> {
        let compression = self.compression;
        let Some(block) = &mut self.open else {
            return Err(malformed("end_data with no data block started"));
        };
        // The last piece ends the stream; an empty block still has one (an empty stream),
        // except without compression, where it is no bytes at all.
        let pending = std::mem::take(&mut block.pending);
        let empty_raw = matches!(compression, Compression::None) && block.pieces == 0;
        if !pending.is_empty() || (block.pieces == 0 && !empty_raw) {
            let piece = Piece::compress(compression, &pending, true)?;
            self.put_piece(piece)?;
        }
        let block = self.open.take().expect("open above");
        let mut out = block.out;
        if matches!(compression, Compression::Gzip(_)) {
            if !block.ended {
                out.extend_from_slice(&DEFLATE_END);
            }
            out.extend_from_slice(&block.adler.to_be_bytes());
        }
        for piece in out.chunks(CHUNK_SIZE) {
            self.sink.chunk(piece)?;
        }
        self.sink.int(0)?;
        Ok(block.raw)
    }

    /// Whether every entry with data got it and no block is open.
    fn check_complete(&self) -> Result<(), ArchiveError> {
        if let Some(b) = &self.open {
            return Err(malformed(format!(
                "the data of {} is not ended",
                entry_name(&self.entries[b.index])
            )));
        }
        let missing: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.data == DataState::NotSet)
            .map(entry_name)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let shown = missing
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = missing.len().saturating_sub(5);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Err(malformed(format!("no data written for {shown}{more}")))
    }
}

/// "TABLE DATA app customers (dump id 3398)", for messages.
fn entry_name(e: &Entry) -> String {
    let parts: Vec<String> = [&e.desc, &e.namespace, &e.tag]
        .into_iter()
        .filter_map(|s| s.as_ref().map(|t| t.lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .collect();
    format!("{} (dump id {})", parts.join(" "), e.dump_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::path::PathBuf;
    use std::process::Command;

    /// (dump id, data, chunks) of the data block at `pos`.
    fn read_block(archive: &[u8], pos: u64, compression: Compression) -> (i32, Vec<u8>, usize) {
        let b = read_data_block(archive, pos, compression).unwrap();
        (b.dump_id, b.data, b.chunks)
    }

    fn s(v: &str) -> Option<Text> {
        Some(Text::from(v))
    }

    /// The compressions each version can record, as the tests cover them.
    const CASES: [((u8, u8, u8), Compression); 12] = [
        (V1_14, Compression::Gzip(None)),
        (V1_14, Compression::None),
        (V1_14, Compression::Gzip(Some(1))),
        (V1_14, Compression::Gzip(Some(9))),
        (V1_15, Compression::Gzip(None)),
        (V1_15, Compression::None),
        (V1_15, Compression::Lz4(None)),
        (V1_15, Compression::Zstd(None)),
        (V1_16, Compression::Gzip(None)),
        (V1_16, Compression::None),
        (V1_16, Compression::Lz4(None)),
        (V1_16, Compression::Zstd(None)),
    ];

    fn header(compression: Compression) -> Header {
        versioned(V1_14, compression)
    }

    fn versioned(version: (u8, u8, u8), compression: Compression) -> Header {
        Header {
            version,
            int_size: 4,
            off_size: 8,
            format: 1,
            compression,
            created: [11, 15, 21, 23, 10, 126, 0],
            database: s("corpus"),
            server_version: s("15.18 (Debian 15.18-0+deb12u1)"),
            pg_dump_version: None,
        }
    }

    fn entry(dump_id: i32, desc: &str, tag: &str, section: i32) -> Entry {
        Entry {
            dump_id,
            had_dumper: false,
            table_oid: s("0"),
            oid: s("0"),
            tag: s(tag),
            desc: s(desc),
            section,
            defn: s(""),
            drop_stmt: s(""),
            copy_stmt: None,
            namespace: s("app"),
            tablespace: s(""),
            tableam: s(""),
            relkind: 0,
            owner: s("postgres"),
            with_oids: s("false"),
            deps: vec![],
            data: DataState::NoData,
        }
    }

    /// A small TOC like pg_dump's: settings entries, a table with odd text, data, an index.
    fn sample_entries() -> Vec<Entry> {
        let mut enc = entry(1, "ENCODING", "ENCODING", SECTION_PRE_DATA);
        enc.defn = s("SET client_encoding = 'UTF8';\n");
        enc.drop_stmt = None;
        enc.namespace = None;
        enc.tablespace = None;
        enc.tableam = None;
        enc.owner = None;
        let mut schema = entry(2, "SCHEMA", "app", SECTION_PRE_DATA);
        schema.table_oid = s("2615");
        schema.oid = s("16385");
        schema.defn = s("CREATE SCHEMA app;\n");
        schema.drop_stmt = s("DROP SCHEMA app;\n");
        schema.namespace = s("");
        let mut table = entry(3, "TABLE", "t", SECTION_PRE_DATA);
        table.table_oid = s("1259");
        table.oid = s("16390");
        table.defn =
            s("CREATE TABLE app.t (\n    id integer,\n    \"名前\" text -- é 日本 🐘\n);\n");
        table.drop_stmt = s("DROP TABLE app.t;\n");
        table.tableam = s("heap");
        table.relkind = i32::from(b'r');
        table.deps = vec![2];
        let mut data = entry(4, "TABLE DATA", "t", SECTION_DATA);
        data.had_dumper = true;
        data.oid = s("16390");
        data.copy_stmt = s("COPY app.t (id, \"名前\") FROM stdin;\n");
        data.deps = vec![3];
        let mut other = entry(5, "TABLE", "u", SECTION_PRE_DATA);
        other.table_oid = s("1259");
        other.oid = s("16400");
        other.defn = s("CREATE TABLE app.u (\n    v text\n);\n");
        other.drop_stmt = s("DROP TABLE app.u;\n");
        other.tableam = s("heap");
        other.deps = vec![2];
        let mut other_data = entry(6, "TABLE DATA", "u", SECTION_DATA);
        other_data.had_dumper = true;
        other_data.oid = s("16400");
        other_data.copy_stmt = s("COPY app.u (v) FROM stdin;\n");
        other_data.deps = vec![5];
        let mut index = entry(7, "INDEX", "t_id", SECTION_POST_DATA);
        index.table_oid = s("1259");
        index.oid = s("16395");
        index.defn = s("CREATE INDEX t_id ON app.t USING btree (id);\n");
        index.drop_stmt = s("DROP INDEX app.t_id;\n");
        index.deps = vec![3, 2, 2_000_000_000];
        vec![enc, schema, table, data, other, other_data, index]
    }

    /// Rows for `app.t`: enough text to need several 64 KiB chunks even compressed.
    fn big_copy_text() -> Vec<u8> {
        let mut text = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        // Over two pieces' worth: the block is compressed in several.
        for i in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(format!("{i}\tnom {x:016x} é日本\\t\n").as_bytes());
        }
        text
    }

    fn write_sample(
        compression: Compression,
        t_data: &[u8],
        u_data: &[u8],
        piece: usize,
    ) -> Vec<u8> {
        write_versioned(V1_14, compression, t_data, u_data, piece)
    }

    fn write_versioned(
        version: (u8, u8, u8),
        compression: Compression,
        t_data: &[u8],
        u_data: &[u8],
        piece: usize,
    ) -> Vec<u8> {
        let mut w = ArchiveWriter::new(
            Cursor::new(Vec::new()),
            versioned(version, compression),
            sample_entries(),
        )
        .unwrap();
        // Out of TOC order on purpose: positions make the order free.
        write_u(&mut w, u_data);
        write_t(&mut w, compression, t_data, piece);
        let out = w.finish().unwrap();
        assert_eq!(out.position(), out.get_ref().len() as u64);
        out.into_inner()
    }

    /// [`write_versioned`] without seeking (into a `Vec`, which cannot): positions unset, the
    /// blocks in TOC order.
    fn write_streaming(
        version: (u8, u8, u8),
        compression: Compression,
        t_data: &[u8],
        u_data: &[u8],
        piece: usize,
    ) -> Vec<u8> {
        let mut w = ArchiveWriter::streaming(
            Vec::new(),
            versioned(version, compression),
            sample_entries(),
        )
        .unwrap();
        write_t(&mut w, compression, t_data, piece);
        write_u(&mut w, u_data);
        w.finish_streaming().unwrap()
    }

    fn write_u<W: Write>(w: &mut ArchiveWriter<W>, u_data: &[u8]) {
        w.begin_data(6).unwrap();
        w.write_data(u_data).unwrap();
        assert_eq!(w.end_data().unwrap(), u_data.len() as u64);
    }

    /// t's data: written, then pieces compressed elsewhere (of uneven sizes, as the ranges
    /// of a split table come), then written again.
    fn write_t<W: Write>(
        w: &mut ArchiveWriter<W>,
        compression: Compression,
        t_data: &[u8],
        piece: usize,
    ) {
        w.begin_data(4).unwrap();
        let (a, rest) = t_data.split_at(t_data.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        for p in a.chunks(piece) {
            w.write_data(p).unwrap();
        }
        let (b1, b2) = b.split_at(b.len().div_ceil(3));
        for part in [b1, b2] {
            let compressed = Piece::compress(compression, part, false).unwrap();
            assert_eq!(compressed.raw_len(), part.len() as u64);
            w.write_piece(compressed).unwrap();
        }
        for p in c.chunks(piece) {
            w.write_data(p).unwrap();
        }
        assert_eq!(w.end_data().unwrap(), t_data.len() as u64);
    }

    /// The length of the data block at the start of `b`: type, dump id, chunks, 0.
    fn block_len(b: &[u8]) -> usize {
        let int = |at: usize| u32::from_le_bytes(b[at + 1..at + 5].try_into().unwrap()) as usize;
        let mut at = 1 + 5;
        loop {
            let len = int(at);
            at += 5 + len;
            if len == 0 {
                return at;
            }
        }
    }

    #[test]
    fn streaming_writes_positions_unset_and_blocks_in_toc_order() {
        let t_data = big_copy_text();
        let u_data = "x\n\\N\n日本\n".as_bytes();
        for (version, compression) in CASES {
            let bytes = write_streaming(version, compression, &t_data, u_data, 1 << 20);
            let mut r = &bytes[..];
            let toc = read_toc(&mut r).unwrap();
            let states: Vec<DataState> = toc.entries.iter().map(|e| e.data).collect();
            use DataState::{NoData, NotSet};
            assert_eq!(
                states,
                [NoData, NoData, NoData, NotSet, NoData, NotSet, NoData]
            );
            // The blocks follow the TOC, in its order, and hold the same data as a seeking
            // writer's.
            let start = bytes.len() - r.len();
            let t = read_data_block(&bytes, start as u64, compression).unwrap();
            assert_eq!((t.dump_id, &t.data[..]), (4, &t_data[..]));
            let u_at = start + block_len(&bytes[start..]);
            let u = read_data_block(&bytes, u_at as u64, compression).unwrap();
            assert_eq!((u.dump_id, &u.data[..]), (6, u_data));
            assert_eq!(
                u_at + block_len(&bytes[u_at..]),
                bytes.len(),
                "nothing follows"
            );
        }
        // Out of TOC order is refused: pg_restore could not find the earlier block.
        let mut w =
            ArchiveWriter::streaming(Vec::new(), header(Compression::None), sample_entries())
                .unwrap();
        let err = w.begin_data(6).unwrap_err().to_string();
        assert!(err.contains("out of TOC order"), "{err}");
        // Nor may a block be missing at the end.
        let mut w =
            ArchiveWriter::streaming(Vec::new(), header(Compression::None), sample_entries())
                .unwrap();
        w.begin_data(4).unwrap();
        w.end_data().unwrap();
        assert!(w.finish_streaming().is_err());
    }

    #[test]
    fn round_trip() {
        let t_data = big_copy_text();
        let u_data = "x\n\\N\n日本\n".as_bytes();
        for (version, compression) in CASES {
            // Tiny writes must still make few, large chunks.
            for piece in [7, 1 << 20] {
                let bytes = write_versioned(version, compression, &t_data, u_data, piece);
                let toc = read_toc(&mut &bytes[..]).unwrap();
                // From 1.15 the header records the algorithm, not the level.
                assert_eq!(toc.header, versioned(version, compression));
                let mut expected = sample_entries();
                for e in &mut expected {
                    e.data = DataState::NoData;
                    if version < V1_16 {
                        e.relkind = 0;
                    }
                }
                let pos_of = |id: i32| match toc.entries.iter().find(|e| e.dump_id == id) {
                    Some(Entry {
                        data: DataState::At(p),
                        ..
                    }) => *p,
                    other => panic!("dump id {id}: {other:?}"),
                };
                let (t_pos, u_pos) = (pos_of(4), pos_of(6));
                expected[3].data = DataState::At(t_pos);
                expected[5].data = DataState::At(u_pos);
                assert_eq!(toc.entries, expected);
                // Blocks lie in the order written (dump id 6 first), not in TOC order.
                assert!(u_pos < t_pos);
                let (id, raw, u_chunks) = read_block(&bytes, u_pos, compression);
                assert_eq!((id, &raw[..], u_chunks), (6, u_data, 1));
                let (id, raw, chunks) = read_block(&bytes, t_pos, compression);
                assert_eq!(id, 4);
                assert!(
                    raw == t_data,
                    "data of dump id 4 differs ({compression}: {} of {} bytes)",
                    raw.len(),
                    t_data.len()
                );
                let stored = if compression == Compression::None {
                    t_data.len()
                } else {
                    bytes.len() - t_pos as usize
                };
                // A zstd frame (one per piece) ends its chunk; t's data is in 4 pieces or so.
                let frames = if matches!(compression, Compression::Zstd(_)) {
                    t_data.len().div_ceil(PIECE_SIZE) + 2
                } else {
                    0
                };
                let most = stored.div_ceil(CHUNK_SIZE) + 1 + frames;
                assert!(
                    chunks >= 1 && chunks <= most,
                    "{version:?} {compression}, pieces of {piece}: {chunks} chunks for {stored} bytes"
                );
                if compression == Compression::None {
                    assert!(chunks > 1);
                } else {
                    assert!(stored < t_data.len() * 3 / 4, "{stored} bytes compressed");
                }
            }
        }
    }

    #[test]
    fn header_and_toc_bytes_round_trip() {
        for (version, compression) in CASES {
            let bytes = write_versioned(version, compression, b"1\ta\n", b"", 100);
            let toc = read_toc(&mut &bytes[..]).unwrap();
            let mut again = header_bytes(&toc.header).unwrap();
            again.extend(toc_bytes(&toc.entries, version).unwrap());
            assert_eq!(
                &bytes[..again.len()],
                &again[..],
                "{version:?} {compression}"
            );
        }
        let bytes = write_sample(Compression::Gzip(None), b"1\ta\n", b"", 100);
        // What pg_dump 15 writes for the header of such an archive.
        assert_eq!(
            &bytes[..16],
            b"PGDMP\x01\x0e\x00\x04\x08\x01\x01\x01\x00\x00\x00"
        );
    }

    #[test]
    fn empty_block_uncompressed_has_no_chunks() {
        let bytes = write_sample(Compression::None, b"", b"", 10);
        let toc = read_toc(&mut &bytes[..]).unwrap();
        let DataState::At(p) = toc.entries[3].data else {
            panic!()
        };
        assert_eq!(read_block(&bytes, p, Compression::None), (4, vec![], 0));
        assert_eq!(
            &bytes[p as usize..],
            b"\x01\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00"
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let good = write_sample(Compression::Gzip(None), b"1\ta\n", b"", 100);
        let err = |bytes: &[u8]| read_toc(&mut &bytes[..]).unwrap_err();
        assert!(matches!(
            err(b"--\n-- PostgreSQL database dump\n"),
            ArchiveError::NotAnArchive
        ));
        assert!(matches!(err(b"PGD"), ArchiveError::NotAnArchive));
        let mut v = good.clone();
        v[6] = 17;
        let e = err(&v);
        assert!(matches!(
            e,
            ArchiveError::UnsupportedVersion { found: (1, 17, 0) }
        ));
        assert!(e.to_string().contains("1.17-0"), "{e}");
        let mut v = good.clone();
        v[10] = 5;
        assert!(matches!(err(&v), ArchiveError::NotCustomFormat(5)));
        for cut in [20, 100, good.len() / 2] {
            let e = err(&good[..cut.min(good.len() - 1)]);
            assert!(
                matches!(&e, ArchiveError::Malformed(m) if m.contains("ends")),
                "{e}"
            );
        }
        // A string in another encoding than UTF-8 (a LATIN1 database's name "corp\xfcs") is
        // kept byte for byte.
        let at = good.windows(6).position(|w| w == b"corpus").unwrap();
        let mut v = good.clone();
        v[at + 4] = 0xfc;
        let toc = read_toc(&mut &v[..]).unwrap();
        assert_eq!(
            toc.header.database.as_ref().unwrap().as_bytes(),
            b"corp\xfcs"
        );
        assert!(header_bytes(&toc.header)
            .unwrap()
            .windows(6)
            .any(|w| w == b"corp\xfcs"));
        // A NUL byte in a string is not pg_dump's.
        let mut v = good.clone();
        v[at + 4] = 0;
        let e = err(&v);
        assert!(
            matches!(&e, ArchiveError::Malformed(m) if m.contains("database name") && m.contains("NUL")),
            "{e}"
        );
        // A section out of range names the entry.
        let toc = read_toc(&mut &good[..]).unwrap();
        let mut entries = toc.entries.clone();
        entries[2].section = 9;
        let e = toc_bytes(&entries, V1_14).unwrap_err();
        assert!(e.to_string().contains("dump id 3"), "{e}");
    }

    #[test]
    fn writer_misuse_is_an_error() {
        let w = || {
            ArchiveWriter::new(
                Cursor::new(Vec::new()),
                header(Compression::default()),
                sample_entries(),
            )
            .unwrap()
        };
        let mut a = w();
        assert!(a.begin_data(3).is_err(), "entry without data");
        assert!(a.begin_data(99).is_err(), "not in the TOC");
        assert!(a.write_data(b"x").is_err(), "no block open");
        assert!(a.end_data().is_err(), "no block open");
        a.begin_data(4).unwrap();
        assert!(a.begin_data(6).is_err(), "a block is open");
        a.end_data().unwrap();
        assert!(a.begin_data(4).is_err(), "written twice");
        let e = a.finish().unwrap_err();
        assert!(
            e.to_string().contains("TABLE DATA app u (dump id 6)"),
            "{e}"
        );
        let mut b = w();
        b.begin_data(4).unwrap();
        assert!(b.finish().is_err(), "block not ended");
        let mut dup = sample_entries();
        dup[1].dump_id = 1;
        assert!(
            ArchiveWriter::new(Cursor::new(Vec::new()), header(Compression::default()), dup)
                .is_err()
        );
        // Archive 1.14 can only say "zlib level N".
        let h = header(Compression::Zstd(None));
        assert!(ArchiveWriter::new(Cursor::new(Vec::new()), h, sample_entries()).is_err());
        let mut nul = sample_entries();
        nul[2].defn = s("a\0b");
        assert!(
            ArchiveWriter::new(Cursor::new(Vec::new()), header(Compression::None), nul).is_err()
        );
    }

    /// A PostgreSQL program: from `PG_BINDIR`, else the newest /usr/lib/postgresql/*/bin.
    fn pg_program(name: &str) -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            let p = PathBuf::from(dir).join(name);
            return p.exists().then_some(p);
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|d| {
                let d = d.ok()?;
                let major = d.file_name().to_str()?.parse().ok()?;
                let p = d.path().join("bin").join(name);
                p.exists().then_some((major, p))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, p)| p)
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every pg_restore the tests are given: PG_BINDIR's (or the newest installed) and those
    /// of PG_MATRIX ("14=BINDIR 15=BINDIR ...").
    fn every_pg_restore() -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = pg_program("pg_restore").into_iter().collect();
        for spec in std::env::var("PG_MATRIX")
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Some((_, dir)) = spec.split_once('=') {
                let p = PathBuf::from(dir).join("pg_restore");
                if !all.contains(&p) {
                    all.push(p);
                }
            }
        }
        all
    }

    #[test]
    fn stock_pg_restore_reads_written_archives() {
        let all = every_pg_restore();
        assert!(
            !all.is_empty(),
            "this test needs pg_restore: set PG_BINDIR, or install PostgreSQL under \
             /usr/lib/postgresql (scripts/test.sh does)"
        );
        for pg_restore in all {
            stock_pg_restore_reads(&pg_restore);
        }
    }

    fn stock_pg_restore_reads(pg_restore: &Path) {
        let dir = tempfile::tempdir().unwrap();
        // COPY text as pg_dump stores it: the rows, then COPY_END.
        let mut t_data = big_copy_text();
        t_data.extend_from_slice(COPY_END);
        let u_data = "x\n\\N\n日本\n\\.\n\n\n".as_bytes();
        let version = run(Command::new(pg_restore).arg("--version"));
        let major: u32 = version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{version}"));
        // Each archive version this pg_restore reads (1.15 from 16, 1.16 from 17).
        let readable = |v: (u8, u8, u8)| v == V1_14 || (v == V1_15 && major >= 16) || major >= 17;
        for (version, compression) in CASES.into_iter().filter(|(v, _)| readable(*v)) {
            // What `pg_restore -l` says of it: the zlib level before 16, the algorithm since.
            let level = match compression {
                Compression::Gzip(None) if major < 16 => "-1".to_string(),
                Compression::Gzip(Some(l)) if major < 16 => l.to_string(),
                Compression::None if major < 16 => "0".to_string(),
                Compression::Gzip(_) => "gzip".to_string(),
                other => other.to_string(),
            };
            for streaming in [false, true] {
                let bytes = if streaming {
                    write_streaming(version, compression, &t_data, u_data, 1000)
                } else {
                    write_versioned(version, compression, &t_data, u_data, 1000)
                };
                let path = dir.path().join(format!(
                    "c{}-{level}{}.dump",
                    version.1,
                    if streaming { "-stream" } else { "" }
                ));
                std::fs::write(&path, &bytes).unwrap();
                stock_pg_restore_reads_one(pg_restore, &path, &level, &t_data);
                if streaming {
                    // From a pipe, as `age -d … | pg_restore` gives it: read in order.
                    stock_pg_restore_reads_piped(pg_restore, &bytes, &t_data, u_data);
                }
            }
        }
    }

    fn stock_pg_restore_reads_one(pg_restore: &Path, path: &Path, level: &str, t_data: &[u8]) {
        let dir = path.parent().unwrap();
        let list = run(Command::new(pg_restore).arg("-l").arg(path));
        let entries: Vec<&str> = list.lines().filter(|l| !l.starts_with(';')).collect();
        assert_eq!(
            entries,
            [
                // (pg_restore -l leaves out ENCODING, STDSTRINGS and SEARCHPATH.)
                "2; 2615 16385 SCHEMA  app postgres",
                "3; 1259 16390 TABLE app t postgres",
                "4; 0 16390 TABLE DATA app t postgres",
                "5; 1259 16400 TABLE app u postgres",
                "6; 0 16400 TABLE DATA app u postgres",
                "7; 1259 16395 INDEX app t_id postgres",
            ],
            "{list}"
        );
        assert!(
            list.contains(&format!(";     Compression: {level}\n")),
            "{list}"
        );
        let sql = run(Command::new(pg_restore).arg("-f").arg("-").arg(path));
        let t_copy = format!(
            "COPY app.t (id, \"名前\") FROM stdin;\n{}",
            String::from_utf8(t_data.to_vec()).unwrap()
        );
        assert!(sql.contains(&t_copy), "COPY of app.t missing or altered");
        assert!(
            sql.contains("COPY app.u (v) FROM stdin;\nx\n\\N\n日本\n\\.\n\n\n"),
            "{sql}"
        );
        assert!(sql.contains("\"名前\" text -- é 日本 🐘"), "{sql}");
        // A restore list of one data entry finds it through its position.
        let one = run(Command::new(pg_restore)
            .args(["-f", "-", "-L"])
            .arg({
                let l = dir.join("only-u.list");
                std::fs::write(&l, "6; 0 16400 TABLE DATA app u postgres\n").unwrap();
                l
            })
            .arg(path));
        assert!(
            one.contains("COPY app.u (v) FROM stdin;\nx\n\\N\n日本\n\\.\n\n\n"),
            "{one}"
        );
        assert!(!one.contains("COPY app.t"), "{one}");
    }

    /// `pg_restore` reading the archive from its standard input (a pipe): it cannot seek, so
    /// it finds each block by reading on; the whole SQL and the restore list of one entry.
    fn stock_pg_restore_reads_piped(pg_restore: &Path, bytes: &[u8], t_data: &[u8], u_data: &[u8]) {
        let piped = |args: &[&str]| -> String {
            use std::io::Write as _;
            let mut child = Command::new(pg_restore)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let data = bytes.to_vec();
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
            let out = child.wait_with_output().unwrap();
            feeder.join().unwrap();
            assert!(
                out.status.success(),
                "{pg_restore:?} {args:?} < archive: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert!(piped(&["-l"]).contains("6; 0 16400 TABLE DATA app u postgres"));
        let sql = piped(&["-f", "-"]);
        let mut t_copy = b"COPY app.t (id, \"\xe5\x90\x8d\xe5\x89\x8d\") FROM stdin;\n".to_vec();
        t_copy.extend_from_slice(t_data);
        assert!(
            sql.as_bytes().windows(t_copy.len()).any(|w| w == t_copy),
            "COPY of app.t missing or altered (from a pipe)"
        );
        let u_copy = format!(
            "COPY app.u (v) FROM stdin;\n{}",
            String::from_utf8_lossy(u_data)
        );
        assert!(sql.contains(&u_copy), "{sql}");
        let list =
            std::env::temp_dir().join(format!("pg_groupdump-only-u-{}.list", std::process::id()));
        std::fs::write(&list, "6; 0 16400 TABLE DATA app u postgres\n").unwrap();
        let one = piped(&["-f", "-", "-L", list.to_str().unwrap()]);
        let _ = std::fs::remove_file(&list);
        assert!(
            one.contains(&u_copy) && !one.contains("COPY app.t"),
            "{one}"
        );
    }
}
