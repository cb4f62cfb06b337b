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
//! never a path separator, a hidden file or one of the reserved names above.
//!
//! A dump is written as `NAME.ing` (mode 0600) in its final directory, fsynced, renamed to
//! `NAME`, and the directory is fsynced; a file with the final name is therefore always
//! complete, even after a crash or power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

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
pub(crate) const MAX_NAME: usize = 240;

/// Encodes a name as one path component: bytes that are not safe in a file name become `%XX`
/// (UTF-8 bytes), `%` itself included, so decoding is exact. Safe: ASCII letters, digits and
/// `._+=@,-`, and non-ASCII characters that are neither control characters nor whitespace.
/// A leading `.` or `_`, and the reserved name `reports`, get their first byte encoded, so a
/// database can never be taken for `_globals` or `reports`, nor a group for `_schema`.
pub fn encode_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, ch) in name.char_indices() {
        let safe = ch.is_ascii_alphanumeric()
            || matches!(ch, '.' | '_' | '+' | '=' | '@' | ',' | '-')
            || (!ch.is_ascii() && !ch.is_control() && !ch.is_whitespace());
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

/// A short stable hash of a name, for file names that would be too long.
pub(crate) fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

/// Shortens an encoded component to fit `max` bytes, keeping it unique with a hash suffix.
fn fit(encoded: String, raw: &str, max: usize) -> String {
    if encoded.len() <= max {
        return encoded;
    }
    format!("{}~{}", &encoded[..fit_cut(&encoded, max)], short_hash(raw))
}

/// Where [`fit`] cuts an encoding longer than `max`: never inside a multi-byte character or a
/// `%XX` escape, leaving room for `~` and the hash.
pub(crate) fn fit_cut(encoded: &str, max: usize) -> usize {
    let b = encoded.as_bytes();
    let mut cut = max.saturating_sub(18).min(b.len());
    while cut > 0
        && (!encoded.is_char_boundary(cut)
            || b[..cut].ends_with(b"%")
            || b[..cut.saturating_sub(1)].ends_with(b"%"))
    {
        cut -= 1;
    }
    cut
}

/// Where the dumps of one group go.
pub fn group_dir(root: &Path, database: &str, group: &str) -> PathBuf {
    root.join(fit(encode_component(database), database, MAX_NAME))
        .join(fit(encode_component(group), group, MAX_NAME))
}

/// The final path of a group's (or `_schema`'s) dump for a run.
pub fn dump_path(root: &Path, database: &str, group: &str, run_id: &str) -> PathBuf {
    let dir = if group == SCHEMA_GROUP {
        root.join(fit(encode_component(database), database, MAX_NAME))
            .join(SCHEMA_GROUP)
    } else {
        group_dir(root, database, group)
    };
    let suffix = format!(".{run_id}.dump");
    let budget = MAX_NAME - suffix.len() - PARTIAL_SUFFIX.len();
    let db = encode_component(database);
    let g = if group == SCHEMA_GROUP {
        SCHEMA_GROUP.to_string()
    } else {
        encode_component(group)
    };
    let stem = format!("{db}.{g}");
    let stem = if stem.len() <= budget {
        stem
    } else {
        // Too long for one file name: the directories still carry the full names.
        let half = (budget - 1) / 2;
        format!("{}.{}", fit(db, database, half), fit(g, group, half))
    };
    dir.join(format!("{stem}{suffix}"))
}

/// The final path of the globals dump of a run.
pub fn globals_path(root: &Path, run_id: &str) -> PathBuf {
    root.join(GLOBALS_GROUP)
        .join(format!("{GLOBALS_GROUP}.{run_id}.sql"))
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
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    // The umask may have taken bits away: the configured mode is what was asked for.
    for dir in missing {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
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
            && name
                .strip_suffix(".dump")
                .and_then(|s| s.rsplit_once(SCHEMA_TOC))
                .is_some_and(|(_, id)| is_run_id(id));
        if toc && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path().to_path_buf());
            continue;
        }
        let Some(stem) = name.strip_suffix(PARTIAL_SUFFIX) else {
            continue;
        };
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

/// `yyyymmddThhmmssZ`.
pub fn is_run_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
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
    let (bytes, sha256) = hash_file(partial)?;
    File::open(partial)?.sync_all()?;
    if final_path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists; not replaced", final_path.display()),
        ));
    }
    fs::rename(partial, final_path)?;
    sync_dir(final_path.parent().unwrap_or(Path::new(".")))?;
    Ok(Finished { bytes, sha256 })
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

/// [`write_atomic`] with an explicit mode (e.g. 0644 for a file another service reads).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let partial = create_partial(path)?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(mode))?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&partial)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&partial, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
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
        assert_eq!(sweep_partials(dir.path()), vec![ours.clone()]);
        assert!(!ours.exists() && other.exists() && finished.exists() && target.exists());
        assert!(is_run_id("20261123T184501Z") && !is_run_id("2026112xT184501Z"));
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
        assert!(commit(&partial, &fin).is_err());
    }
}
