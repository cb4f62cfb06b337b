//! The backup directory: where each dump goes, how names become file names, and how a file
//! reaches its final name only when it is complete.
//!
//! Layout:
//! ```text
//! <dir>/<database>/<group>/<database>.<group>.<run id>.dump
//! <dir>/<database>/_schema/<database>._schema.<run id>.dump
//! <dir>/_globals/_globals.<run id>.sql
//! <dir>/reports/<run id>.json
//! ```
//! Database, schema and table names may contain anything PostgreSQL accepts, `/`, `..` and
//! newlines included, so every name is encoded ([`encode_component`]): reversible, unique, and
//! never a path separator, a hidden file or one of the reserved names above. An encoding too
//! long for a file name is shortened to a prefix and a hash of the name.
//!
//! This module is the one place that knows the layout, both ways: names → path for writing,
//! and path → (kind, database, group, run id) for reading back ([`parse_path`]), which accepts
//! exactly the paths it gives, so that `prune` never mistakes another file for a backup.
//!
//! A dump is written as `NAME.ing` (mode 0600) in its final directory, fsynced, renamed to
//! `NAME`, and the directory is fsynced; a file with the final name is therefore always
//! complete, even after a crash or power loss.

pub mod bucket;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

/// Suffix of a file being written.
pub const PARTIAL_SUFFIX: &str = ".ing";
/// Directory of the per-database schema dumps, and their "group" name.
pub const SCHEMA_GROUP: &str = "_schema";
/// Directory of the globals dumps, and their "group" name.
pub const GLOBALS_GROUP: &str = "_globals";
/// Directory of run reports.
pub const REPORTS_DIR: &str = "reports";
/// Longest file name component we create (most filesystems allow 255 bytes).
const MAX_NAME: usize = 240;

/// Encodes a name as one path component: bytes that are not safe in a file name become `%XX`
/// (UTF-8 bytes), `%` itself included, so decoding is exact. Safe: ASCII letters, digits and
/// `._+=@,-`, and non-ASCII characters that are neither control characters nor whitespace.
/// A leading `.` or `_`, and the reserved name `reports`, get their first byte encoded, so a
/// database can never be taken for `_globals` or `reports`, nor a group for `_schema`.
pub fn encode_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, ch) in name.char_indices() {
        let safe = is_safe(ch);
        let leading = i == 0 && (ch == '.' || ch == '_' || name == REPORTS_DIR);
        if safe && !leading {
            out.push(ch);
        } else {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// Whether [`encode_component`] keeps a character as it is.
fn is_safe(ch: char) -> bool {
    ch.is_ascii_alphanumeric()
        || matches!(ch, '.' | '_' | '+' | '=' | '@' | ',' | '-')
        || (!ch.is_ascii() && !ch.is_control() && !ch.is_whitespace())
}

/// Reverses [`encode_component`]. `None` if `s` is not an encoding of any name.
pub fn decode_component(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    if name == "\0" {
        return Some(String::new());
    }
    (encode_component(&name) == s).then_some(name)
}

/// Hex digits of [`short_hash`].
const HASH_HEX: usize = 16;
/// Bytes [`fit_cut`] leaves free after its cut: `~`, the hash, and one spare.
const FIT_RESERVE: usize = HASH_HEX + 2;
/// The most [`fit_cut`] backs off from `max - FIT_RESERVE`: to the start of a character (at
/// most 3 bytes back) or of a `%XX` escape (at most 2).
const FIT_BACKOFF: usize = 3;

/// A short stable hash of a name, for file names that would be too long.
fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..HASH_HEX / 2])
}

/// Where [`Component::fit`] cuts an encoding longer than `max`: never inside a multi-byte
/// character or a `%XX` escape, leaving room for `~` and the hash.
fn fit_cut(encoded: &str, max: usize) -> usize {
    let b = encoded.as_bytes();
    let mut cut = max.saturating_sub(FIT_RESERVE).min(b.len());
    while cut > 0
        && (!encoded.is_char_boundary(cut)
            || b[..cut].ends_with(b"%")
            || b[..cut.saturating_sub(1)].ends_with(b"%"))
    {
        cut -= 1;
    }
    cut
}

/// A database or group directory name, as this module writes it and reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    /// Not shortened: the encoding and the name it decodes to.
    Full { enc: String, name: String },
    /// An encoding too long for a file name, shortened to `<prefix>~<hash>`: the name it
    /// came from cannot be recovered.
    Short { prefix: String, hash: String },
}

impl Component {
    fn of(name: &str) -> Component {
        Component::Full {
            enc: encode_component(name),
            name: name.to_string(),
        }
    }

    /// A group's component: `_schema` stands for itself (the schema dumps' directory; no
    /// configured group may take that name), every other name is encoded.
    fn group(name: &str) -> Component {
        if name == SCHEMA_GROUP {
            Component::Full {
                enc: SCHEMA_GROUP.to_string(),
                name: SCHEMA_GROUP.to_string(),
            }
        } else {
            Component::of(name)
        }
    }

    /// Reads a directory name back: `None` unless it is exactly what [`Component::fit`]
    /// makes of some name with `max` = [`MAX_NAME`].
    fn parse(s: &str) -> Option<Component> {
        if let Some(name) = decode_component(s) {
            return (s.len() <= MAX_NAME).then(|| Component::Full {
                enc: s.to_string(),
                name,
            });
        }
        let (prefix, hash) = s.rsplit_once('~')?;
        let hex =
            hash.len() == HASH_HEX && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let cut = MAX_NAME - FIT_RESERVE;
        let len_ok = (cut - FIT_BACKOFF..=cut).contains(&prefix.len());
        (hex && len_ok && is_encoding_prefix(prefix)).then(|| Component::Short {
            prefix: prefix.to_string(),
            hash: hash.to_string(),
        })
    }

    /// The component shortened to at most `max` bytes, kept unique by the hash of the name.
    fn fit(&self, max: usize) -> String {
        match self {
            Component::Full { enc, name } if enc.len() > max => {
                format!("{}~{}", &enc[..fit_cut(enc, max)], short_hash(name))
            }
            Component::Full { enc, .. } => enc.clone(),
            Component::Short { prefix, hash } => {
                format!("{}~{hash}", &prefix[..fit_cut(prefix, max)])
            }
        }
    }

    /// The length of the full encoding.
    fn len(&self) -> usize {
        match self {
            Component::Full { enc, .. } => enc.len(),
            // Only ever made from an encoding longer than MAX_NAME: only that matters.
            Component::Short { .. } => usize::MAX / 4,
        }
    }
}

/// Whether `s` is a run of what [`encode_component`] emits (safe characters and complete
/// `%XX` escapes), not starting with `.` or `_`: the start of some name's encoding.
fn is_encoding_prefix(s: &str) -> bool {
    if s.is_empty() || s.starts_with('.') || s.starts_with('_') {
        return false;
    }
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let hex = |c: Option<char>| c.is_some_and(|c| matches!(c, '0'..='9' | 'A'..='F'));
            if !(hex(chars.next()) && hex(chars.next())) {
                return false;
            }
        } else if !is_safe(c) {
            return false;
        }
    }
    true
}

/// `<dir>/<database>/<group>` from the components.
fn dir_of(root: &Path, database: &Component, group: &Component) -> PathBuf {
    root.join(database.fit(MAX_NAME)).join(group.fit(MAX_NAME))
}

/// The file name of a dump of (database, group) for `run_id`. When `<database>.<group>` does
/// not fit in a file name beside the suffixes, each half is shortened: the directories still
/// carry the full names.
fn dump_file_name(database: &Component, group: &Component, run_id: &str) -> String {
    let suffix = format!(".{run_id}.dump");
    let budget = MAX_NAME - suffix.len() - PARTIAL_SUFFIX.len();
    let stem = if database.len() + 1 + group.len() <= budget {
        format!("{}.{}", database.fit(usize::MAX), group.fit(usize::MAX))
    } else {
        let half = (budget - 1) / 2;
        format!("{}.{}", database.fit(half), group.fit(half))
    };
    format!("{stem}{suffix}")
}

/// The directory of a database's groups.
pub fn database_dir(root: &Path, database: &str) -> PathBuf {
    root.join(Component::of(database).fit(MAX_NAME))
}

/// Where the dumps of one group go.
pub fn group_dir(root: &Path, database: &str, group: &str) -> PathBuf {
    dir_of(root, &Component::of(database), &Component::of(group))
}

/// The directory of a group's (or, for [`SCHEMA_GROUP`], the schema's) dumps.
pub fn dump_dir(root: &Path, database: &str, group: &str) -> PathBuf {
    dir_of(root, &Component::of(database), &Component::group(group))
}

/// The final path of a group's (or `_schema`'s) dump for a run.
pub fn dump_path(root: &Path, database: &str, group: &str, run_id: &str) -> PathBuf {
    let (db, g) = (Component::of(database), Component::group(group));
    dir_of(root, &db, &g).join(dump_file_name(&db, &g, run_id))
}

/// The directory of the globals dumps.
pub fn globals_dir(root: &Path) -> PathBuf {
    root.join(GLOBALS_GROUP)
}

/// The final path of the globals dump of a run.
pub fn globals_path(root: &Path, run_id: &str) -> PathBuf {
    globals_dir(root).join(format!("{GLOBALS_GROUP}.{run_id}.sql"))
}

/// The default report path of a run.
pub fn report_path(root: &Path, run_id: &str) -> PathBuf {
    root.join(REPORTS_DIR).join(format!("{run_id}.json"))
}

/// The `.ing` path beside a final path.
pub fn partial_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_owned();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

static FILE_MODE: AtomicU32 = AtomicU32::new(0o600);
static DIR_MODE: AtomicU32 = AtomicU32::new(0o700);

/// Sets the modes of the files and directories created from now on (`backup.file_mode`,
/// `backup.dir_mode`; defaults 0600 and 0700: dumps hold the data of every table).
pub fn set_modes(file: u32, dir: u32) {
    FILE_MODE.store(file, Ordering::Relaxed);
    DIR_MODE.store(dir, Ordering::Relaxed);
}

/// Creates a directory and its parents with the directory mode (what already exists is left
/// as it is).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mode = DIR_MODE.load(Ordering::Relaxed);
    let mut missing = Vec::new();
    let mut p = path;
    while !p.as_os_str().is_empty() && !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    // The umask may have taken bits away: the configured mode is what was asked for.
    for dir in &missing {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    new_dirs().extend(missing);
    Ok(())
}

/// Directories this process created whose entry in their parent is not fsynced yet: the
/// first file committed below one makes it durable ([`sync_dir_and_new_parents`]), off the
/// path that creates it.
fn new_dirs() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<PathBuf>> {
    static NEW: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    NEW.lock().unwrap_or_else(|e| e.into_inner())
}

/// fsyncs `dir` (after a rename in it) and, for each directory from `dir` up that this process
/// created and has not made durable yet, its parent: a new file's name survives a crash only
/// with the names of the directories it is in.
pub fn sync_dir_and_new_parents(dir: &Path) -> io::Result<()> {
    sync_dir(dir)?;
    let mut d = dir.to_path_buf();
    while new_dirs().contains(&d) {
        let parent = d.parent().unwrap_or(Path::new(".")).to_path_buf();
        sync_dir(&parent)?;
        new_dirs().remove(&d);
        d = parent;
    }
    Ok(())
}

/// Where a run that takes no schema dump of `database` puts the `--schema-only` archive the
/// native engine reads (and removes). In the backup directory itself, so no directory appears
/// for a dump the run does not keep.
pub fn schema_toc_path(root: &Path, database: &str, run_id: &str) -> PathBuf {
    root.join(format!(
        "{}{SCHEMA_TOC}{run_id}.dump",
        encode_component(database)
    ))
}

const SCHEMA_TOC: &str = ".schema-toc.";

/// Removes the `.ing` files a crashed or killed run left under `root`. Only regular files
/// whose name is one of ours plus `.ing` are touched; symlinks are never followed. The caller
/// holds the run lock, so no run is writing them. A native run's private schema archive
/// ([`schema_toc_path`]) left behind is removed too.
pub fn sweep_partials(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .max_depth(4)
        .into_iter()
        .flatten()
    {
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        // A native run's private schema archive, left by a crash before it was read.
        let toc = entry.depth() == 1
            && crate::crypt::plain_name(&name)
                .0
                .strip_suffix(".dump")
                .and_then(|s| s.rsplit_once(SCHEMA_TOC))
                .is_some_and(|(_, id)| is_run_id(id));
        if toc && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path().to_path_buf());
            continue;
        }
        // A decrypted copy left by a killed `restore` or `verify`: plaintext, removed.
        if crate::crypt::is_stale_decrypted_copy(&name) && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path().to_path_buf());
            continue;
        }
        let Some(stem) = name.strip_suffix(PARTIAL_SUFFIX) else {
            continue;
        };
        let stem = crate::crypt::plain_name(stem).0;
        let ours = [".dump", ".sql", ".json"].iter().any(|ext| {
            stem.strip_suffix(ext)
                .and_then(|s| s.rsplit('.').next())
                .is_some_and(is_run_id)
        });
        if ours && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path().to_path_buf());
        }
    }
    removed
}

/// Whether `s` has the shape of a run id, `yyyymmddThhmmssZ` (digits, not checked as a date).
pub fn is_run_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == RUN_ID_LEN
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
}

/// Length of a run id.
const RUN_ID_LEN: usize = 16;
/// A run id as a `chrono` format.
const RUN_ID_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A run id, `yyyymmddThhmmssZ`: when its run started, in UTC. Names of dumps and reports
/// carry it, so a file's age can be read from its name (copies and restores change mtimes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId {
    id: String,
    time: DateTime<Utc>,
}

impl RunId {
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// When the run started.
    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }
}

/// Parses a run id: its shape ([`is_run_id`]) and a real date and time, written the one way
/// a run writes it.
pub fn parse_run_id(s: &str) -> Option<RunId> {
    if !is_run_id(s) {
        return None;
    }
    let t = NaiveDateTime::parse_from_str(s, RUN_ID_FORMAT).ok()?;
    (t.format(RUN_ID_FORMAT).to_string() == s).then(|| RunId {
        id: s.to_string(),
        time: t.and_utc(),
    })
}

// ---------------------------------------------------------------------------------------------
// Reading paths back

/// What kind of file of pg_groupdump's a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A group's dump: `<database>/<group>/…dump`.
    Group,
    /// A database's schema dump: `<database>/_schema/…dump`.
    Schema,
    /// `_globals/_globals.<run id>.sql`.
    Globals,
    /// `reports/<run id>.json`.
    Report,
}

/// A database or group name read back from its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirName {
    Name(String),
    /// The directory holds a shortened encoding (`<prefix>~<hash>`): the name is not known.
    Shortened,
}

/// A file pg_groupdump writes, read back from its path ([`parse_path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub kind: FileKind,
    /// The database of a group or schema dump; `None` for globals and reports.
    pub database: Option<DirName>,
    /// The group: its name, or [`SCHEMA_GROUP`], [`GLOBALS_GROUP`], [`REPORTS_DIR`].
    pub group: DirName,
    pub run_id: RunId,
    /// The `.ing` file of an unfinished write.
    pub partial: bool,
    /// Encrypted ([`crate::crypt`]): the name ends in `.age` (before any `.ing`).
    pub encrypted: bool,
}

/// Reads a path relative to the backup directory back into what it is: `Some` exactly for
/// the paths [`dump_path`], [`globals_path`] and [`report_path`] give, their encrypted forms
/// ([`crate::crypt::sealed_path`]), and the `.ing` beside each, so that whatever else lies in the directory is never taken for a backup.
pub fn parse_path(rel: &Path) -> Option<StoredFile> {
    let parts: Vec<&str> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let last = *parts.last()?;
    let (name, partial) = match last.strip_suffix(PARTIAL_SUFFIX) {
        Some(n) => (n, true),
        None => (last, false),
    };
    let (name, encrypted) = crate::crypt::plain_name(name);
    let (kind, database, group, run_id) = match parts[..] {
        [d, _] if d == GLOBALS_GROUP => {
            let (stem, run_id) = split_name(name, "sql")?;
            let ours = stem == GLOBALS_GROUP
                && globals_path(Path::new(""), run_id.as_str()) == Path::new(d).join(name);
            ours.then_some((FileKind::Globals, None, GLOBALS_GROUP, run_id))?
        }
        [d, _] if d == REPORTS_DIR => {
            let run_id = parse_run_id(name.strip_suffix(".json")?)?;
            let ours = report_path(Path::new(""), run_id.as_str()) == Path::new(d).join(name);
            ours.then_some((FileKind::Report, None, REPORTS_DIR, run_id))?
        }
        [d, g, _] => {
            return parse_dump_path(d, g, name, partial).map(|f| StoredFile { encrypted, ..f })
        }
        _ => return None,
    };
    Some(StoredFile {
        kind,
        database,
        group: DirName::Name(group.to_string()),
        run_id,
        partial,
        encrypted,
    })
}

/// [`parse_path`] for `<d>/<g>/<name>` (`name` without `.ing`): a group's or schema dump.
fn parse_dump_path(d: &str, g: &str, name: &str, partial: bool) -> Option<StoredFile> {
    if d == GLOBALS_GROUP || d == REPORTS_DIR {
        return None;
    }
    let (_, run_id) = split_name(name, "dump")?;
    let db = Component::parse(d)?;
    let schema = g == SCHEMA_GROUP;
    let group = if schema {
        Component::group(SCHEMA_GROUP)
    } else {
        match Component::parse(g)? {
            // dump_path puts a group of that name in the `_schema` directory, never here.
            Component::Full { name, .. } if name == SCHEMA_GROUP => return None,
            c => c,
        }
    };
    let expected =
        dir_of(Path::new(""), &db, &group).join(dump_file_name(&db, &group, run_id.as_str()));
    if expected != Path::new(d).join(g).join(name) {
        return None;
    }
    let read = |c: Component| match c {
        Component::Full { name, .. } => DirName::Name(name),
        Component::Short { .. } => DirName::Shortened,
    };
    Some(StoredFile {
        kind: if schema {
            FileKind::Schema
        } else {
            FileKind::Group
        },
        database: Some(read(db)),
        group: read(group),
        run_id,
        partial,
        encrypted: false,
    })
}

/// Splits `<stem>.<run id>.<ext>` into the stem and the run id.
fn split_name<'a>(name: &'a str, ext: &str) -> Option<(&'a str, RunId)> {
    let body = name.strip_suffix(ext)?.strip_suffix('.')?;
    let (stem, run_id) = body.split_at_checked(body.len().checked_sub(RUN_ID_LEN)?)?;
    let stem = stem.strip_suffix('.')?;
    Some((stem, parse_run_id(run_id)?))
}

/// Creates (or empties) the `.ing` file for `final_path`, mode 0600, so that a child process
/// writing to it by name inherits those permissions.
pub fn create_partial(final_path: &Path) -> io::Result<PathBuf> {
    if let Some(parent) = final_path.parent() {
        create_dir_all(parent)?;
    }
    let partial = partial_path(final_path);
    let mode = FILE_MODE.load(Ordering::Relaxed);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&partial)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(partial)
}

/// Size and sha256 of a finished file.
#[derive(Debug, Clone)]
pub struct Finished {
    pub bytes: u64,
    pub sha256: String,
}

/// Hashes the `.ing` file, fsyncs it, renames it to `final_path` and fsyncs the directory.
/// Refuses to replace an existing file.
pub fn commit(partial: &Path, final_path: &Path) -> io::Result<Finished> {
    commit_written(&File::open(partial)?, partial, final_path, None)
}

/// [`commit`] of a `.ing` file through `file`, a descriptor of it, with its size and hash
/// when its writer knows them (the file is read back otherwise).
pub fn commit_written(
    file: &File,
    partial: &Path,
    final_path: &Path,
    hashed: Option<Finished>,
) -> io::Result<Finished> {
    let finished = match hashed {
        Some(f) => f,
        None => {
            let (bytes, sha256) = hash_file(partial)?;
            Finished { bytes, sha256 }
        }
    };
    file.sync_all()?;
    rename_new(partial, final_path)?;
    sync_dir_and_new_parents(final_path.parent().unwrap_or(Path::new(".")))?;
    Ok(finished)
}

/// Size and hash of bytes about to be written as a file.
pub fn hash_bytes(data: &[u8]) -> Finished {
    Finished {
        bytes: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
    }
}

/// Renames `from` to `to`, refusing to replace an existing `to`: atomically where the file
/// system can (`renameat2` with `RENAME_NOREPLACE`), else checked just before.
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let exists = || {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists; not replaced", to.display()),
        )
    };
    let (Ok(f), Ok(t)) = (
        std::ffi::CString::new(from.as_os_str().as_bytes()),
        std::ffi::CString::new(to.as_os_str().as_bytes()),
    ) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Err(exists()),
        Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP) => {
            if to.exists() {
                return Err(exists());
            }
            fs::rename(from, to)
        }
        _ => Err(e),
    }
}

/// Size and hex sha256 of a file.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(h.finalize())))
}

/// Writes `data` to `path` atomically (temp file, fsync, rename, directory fsync), with the
/// file mode (`backup.file_mode`).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, FILE_MODE.load(Ordering::Relaxed))
}

/// The file mode (`backup.file_mode`).
pub fn file_mode() -> u32 {
    FILE_MODE.load(Ordering::Relaxed)
}

/// [`write_atomic`] with an explicit mode (e.g. 0644 for a file another service reads).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |f| f.write_all(data))
}

/// [`write_atomic`] of what `write` writes, through a buffer: a large file (a run report of
/// many groups) is never held in memory whole.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let partial = create_partial(path)?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(mode))?;
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&partial)?;
        let mut w = io::BufWriter::with_capacity(64 * 1024, f);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&partial, path)?;
        sync_dir_and_new_parents(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// fsync a directory, so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_safe_unique_and_reversible() {
        let names = [
            "public.t1",
            "My Table",
            "a/b",
            "..",
            ".",
            "_schema",
            "_globals",
            "reports",
            "x%41",
            "new\nline",
            "quote\"s'",
            "*?$",
            "ünïcödé",
            "tab\t",
            "",
            "reports2",
            "a\u{2028}b",
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let e = encode_component(n);
            assert!(
                !e.contains('/') && !e.starts_with('.') && !e.starts_with('_'),
                "{n:?} -> {e}"
            );
            assert!(
                !e.chars().any(|c| c.is_control() || c.is_whitespace()),
                "{n:?} -> {e}"
            );
            assert_ne!(e, "reports");
            assert_eq!(decode_component(&e).as_deref(), Some(n), "{n:?} -> {e}");
            assert!(seen.insert(e));
        }
        assert_eq!(encode_component("public.t1"), "public.t1");
        assert_eq!(decode_component("%4"), None);
        assert_eq!(decode_component("a%2Fb%"), None);
    }

    #[test]
    fn cuts_never_split_a_character() {
        for n in 50..130 {
            let p = dump_path(
                Path::new("/b"),
                &"d".repeat(40),
                &"ü".repeat(n),
                "20261123T184501Z",
            );
            assert!(p.to_str().is_some());
        }
    }

    #[test]
    fn long_names_fit() {
        let db = "д".repeat(31);
        let group = format!("{}.{}", "\n".repeat(63), "x".repeat(63));
        let p = dump_path(Path::new("/b"), &db, &group, "20261123T184501Z");
        for c in p.components() {
            assert!(c.as_os_str().len() + PARTIAL_SUFFIX.len() <= 255, "{p:?}");
        }
        let other = format!("{}.{}", "\n".repeat(63), "y".repeat(63));
        assert_ne!(
            p,
            dump_path(Path::new("/b"), &db, &other, "20261123T184501Z")
        );
    }

    #[test]
    fn sweep_removes_only_our_partials() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("db").join("g");
        fs::create_dir_all(&d).unwrap();
        let ours = d.join("db.g.20261123T184501Z.dump.ing");
        let other = d.join("notes.ing");
        let finished = d.join("db.g.20261123T184501Z.dump");
        for p in [&ours, &other, &finished] {
            fs::write(p, b"x").unwrap();
        }
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("x.20261123T184501Z.dump.ing");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, d.join("link.20261123T184501Z.dump.ing")).unwrap();
        let sealed = d.join("db.g.20261123T184501Z.dump.age.ing");
        fs::write(&sealed, b"x").unwrap();
        // A decrypted copy of a process that is gone (pid 2^22 + 1 is above pid_max's
        // default), and one of this process, in use.
        let stale = d.join(".db.g.20261123T184501Z.dump.4194305.0.decrypted");
        let in_use = d.join(format!(
            ".db.g.20261123T184501Z.dump.{}.0.decrypted",
            std::process::id()
        ));
        fs::write(&stale, b"x").unwrap();
        fs::write(&in_use, b"x").unwrap();
        let mut removed = sweep_partials(dir.path());
        removed.sort();
        let mut want = vec![ours.clone(), sealed.clone(), stale.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(!ours.exists() && other.exists() && finished.exists() && target.exists());
        assert!(in_use.exists());
        assert!(is_run_id("20261123T184501Z") && !is_run_id("2026112xT184501Z"));
    }

    #[test]
    fn run_ids() {
        let r = parse_run_id("20260301T120000Z").unwrap();
        assert_eq!(r.as_str(), "20260301T120000Z");
        assert_eq!(r.time().to_rfc3339(), "2026-03-01T12:00:00+00:00");
        for bad in [
            "20260301T120000",
            "20261301T120000Z",
            "20260230T120000Z",
            "2026031T120000Z",
            "+2026031T120000Z",
            "20260301t120000Z",
            "20260301T250000Z",
        ] {
            assert_eq!(parse_run_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths_read_back_exactly_what_is_written() {
        let r = "20260101T000000Z";
        let root = Path::new("");
        let names = [
            ("shop", "orders"),
            ("shop", "public.order_items"),
            ("My DB", "a/b"),
            ("_x", "..\n"),
            ("shop", "_schema"),
            ("д", "ünï %"),
            // Cut inside the stem's halves, next to multi-byte characters.
            (&"d".repeat(40), &"ü".repeat(100)),
        ];
        for (db, g) in names {
            let p = dump_path(root, db, g, r);
            let got = parse_path(&p).unwrap_or_else(|| panic!("{p:?}"));
            assert_eq!(got.database, Some(DirName::Name(db.to_string())));
            assert_eq!(got.group, DirName::Name(g.to_string()));
            let kind = if g == SCHEMA_GROUP {
                FileKind::Schema
            } else {
                FileKind::Group
            };
            assert_eq!(got.kind, kind);
            assert_eq!(got.run_id.as_str(), r);
            assert!(!got.partial);
            assert!(parse_path(&partial_path(&p)).unwrap().partial);
        }
        let g = parse_path(&globals_path(root, r)).unwrap();
        assert_eq!((g.kind, g.database), (FileKind::Globals, None));
        // Encrypted files are the same files, marked so; `.age` goes before `.ing`.
        for p in [
            dump_path(root, "shop", "orders", r),
            dump_path(root, "shop", SCHEMA_GROUP, r),
            globals_path(root, r),
            report_path(root, r),
        ] {
            let plain = parse_path(&p).unwrap();
            let sealed = parse_path(&crate::crypt::sealed_path(&p)).unwrap();
            assert!(sealed.encrypted && !plain.encrypted);
            assert_eq!(
                StoredFile {
                    encrypted: false,
                    ..sealed
                },
                plain
            );
            let partial = parse_path(&partial_path(&crate::crypt::sealed_path(&p))).unwrap();
            assert!(partial.partial && partial.encrypted);
            assert_eq!(
                parse_path(&partial_path(&p).with_extension("ing.age")),
                None
            );
        }
        let rep = parse_path(&report_path(root, r)).unwrap();
        assert_eq!(rep.kind, FileKind::Report);
        assert!(parse_path(&partial_path(&report_path(root, r))).is_some());

        // Near misses: never ours.
        for bad in [
            "notes.txt",
            ".pg_groupdump.lock",
            "shop/orders/notes.txt",
            "shop/orders/shop.orders.20260101T000000Z.dump.bak",
            "shop/orders/shop.orders.20260101T000000Z.dump~",
            "shop/orders/shop.orders.20260101T000000Z.DUMP",
            "shop/orders/shop.orders.20260101T000000Z.sql",
            "shop/orders/shop.orders.2026011T000000Z.dump",
            "shop/orders/shop.orders.20261301T000000Z.dump",
            "shop/orders/shop.orders.20260101T000000Z.dump.ing.ing",
            "shop/orders/shop.other.20260101T000000Z.dump",
            "shop/orders/other.orders.20260101T000000Z.dump",
            "shop/orders/.shop.orders.20260101T000000Z.dump",
            "shop/orders/shop.orders..20260101T000000Z.dump",
            "shop/orders/20260101T000000Z.dump",
            "shop/orders/x/shop.orders.20260101T000000Z.dump",
            "shop/shop.orders.20260101T000000Z.dump",
            "shop/My%20Tab/shop.My Tab.20260101T000000Z.dump",
            "shop/My Tab/shop.My Tab.20260101T000000Z.dump",
            "shop/%6Frders/shop.%6Frders.20260101T000000Z.dump",
            "shop/_globals/shop._globals.20260101T000000Z.dump",
            "shop/%5Fschema/shop.%5Fschema.20260101T000000Z.dump",
            "shop/_schema/shop.%5Fschema.20260101T000000Z.dump",
            ".hidden/orders/.hidden.orders.20260101T000000Z.dump",
            "_globals/_globals.20260101T000000Z.dump",
            "_globals/x._globals.20260101T000000Z.sql",
            "_globals/_globals.20260101T000000Z.sql.bak",
            "_globals/sub/_globals.20260101T000000Z.sql",
            "reports/20260101T000000Z.json.bak",
            "reports/x.20260101T000000Z.json",
            "reports/2026010T000000Z.json",
            "reports/sub/20260101T000000Z.json",
            "_globals/_globals/_globals._globals.20260101T000000Z.dump",
            "reports/reports/reports.reports.20260101T000000Z.dump",
        ] {
            assert_eq!(parse_path(Path::new(bad)), None, "{bad}");
        }
    }

    /// Names long enough to be shortened, with escapes and multi-byte characters at every
    /// offset around the cuts.
    fn long_names() -> Vec<(String, String)> {
        let mut out = Vec::new();
        let pads = ["", "a", "ab", "abc", "ü", "aü", "%", " ", "a ", "ab "];
        for pad in pads {
            for body in [" ", "x", "ü", "€", "𝄞", "a b"] {
                let long_group = format!("{pad}{}", body.repeat(120));
                let mid_group = format!("{pad}{}", body.repeat(40));
                for db in ["shop", &format!("{pad}{}", "d".repeat(60)), &"%".repeat(63)] {
                    out.push((db.to_string(), long_group.clone()));
                    out.push((db.to_string(), mid_group.clone()));
                    out.push((db.to_string(), SCHEMA_GROUP.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn shortened_names_are_read_back_exactly() {
        let r = "20260101T000000Z";
        let mut shortened = 0;
        for (db, g) in long_names() {
            let p = dump_path(Path::new(""), &db, &g, r);
            let parts: Vec<&str> = p.iter().map(|c| c.to_str().unwrap()).collect();
            let got = parse_path(&p).unwrap_or_else(|| panic!("not recognised: {p:?}"));
            assert_eq!(got.database, Some(DirName::Name(db.clone())));
            if g != SCHEMA_GROUP && encode_component(&g).len() > MAX_NAME {
                shortened += 1;
                assert_eq!(got.group, DirName::Shortened, "{p:?}");
            } else {
                assert_eq!(got.group, DirName::Name(g.clone()), "{p:?}");
            }
            // A changed hash in the file name is not ours.
            if let Some(i) = parts[2].rfind('~') {
                let mut bad = parts[2].to_string();
                bad.replace_range(
                    i + 1..i + 2,
                    if &bad[i + 1..i + 2] == "0" { "1" } else { "0" },
                );
                let q = Path::new(parts[0]).join(parts[1]).join(&bad);
                assert_eq!(parse_path(&q), None, "{bad}");
            }
            // A file of another group in this directory is not ours here.
            let other = dump_path(Path::new(""), &db, &format!("{g}z"), r);
            let name = other.file_name().unwrap();
            if name != parts[2] {
                let q = Path::new(parts[0]).join(parts[1]).join(name);
                assert_eq!(parse_path(&q), None, "{q:?}");
            }
        }
        assert!(shortened > 20, "only {shortened} shortened names tested");
    }

    #[test]
    fn a_commit_makes_the_directories_it_created_durable() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("db").join("group").join("x.dump");
        let partial = create_partial(&fin).unwrap();
        let (db, group) = (dir.path().join("db"), dir.path().join("db").join("group"));
        assert!(new_dirs().contains(&db) && new_dirs().contains(&group));
        fs::write(&partial, b"abc").unwrap();
        commit(&partial, &fin).unwrap();
        assert!(
            !new_dirs().contains(&db) && !new_dirs().contains(&group),
            "their parents were fsynced"
        );
        assert!(!new_dirs().contains(dir.path()), "it existed before");
    }

    #[test]
    fn commit_renames_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("sub").join("x.dump");
        let partial = create_partial(&fin).unwrap();
        fs::write(&partial, b"abc").unwrap();
        let f = commit(&partial, &fin).unwrap();
        assert_eq!(f.bytes, 3);
        assert_eq!(
            f.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!partial.exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&fin).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Never replaces a finished dump.
        let partial = create_partial(&fin).unwrap();
        let e = commit(&partial, &fin).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(fs::read(&fin).unwrap(), b"abc");
        assert!(partial.exists(), "left for the caller to remove");
    }

    #[test]
    fn commit_written_takes_the_writers_hash() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("y.dump");
        let partial = create_partial(&fin).unwrap();
        let data = b"archive bytes";
        let mut f = OpenOptions::new().write(true).open(&partial).unwrap();
        f.write_all(data).unwrap();
        let done = commit_written(&f, &partial, &fin, Some(hash_bytes(data))).unwrap();
        assert_eq!(done.bytes, data.len() as u64);
        assert_eq!(done.sha256, hash_file(&fin).unwrap().1);
        assert_eq!(fs::read(&fin).unwrap(), data);
        assert!(!partial.exists());
    }
}
