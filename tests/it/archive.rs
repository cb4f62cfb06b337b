//! `pg_groupdump::archive` against stock pg_dump archives: the corpus database (`tests/data`)
//! dumped by the harness server's pg_dump — whole, schema only, data only, uncompressed, at
//! level 9, and six single tables — read back, written again with `ArchiveWriter` from their
//! own data, and compared with pg_restore.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use pg_groupdump::compression::Compression;
use pg_groupdump::engine::native::archive::{
    read_data_block, read_toc, read_toc_file, ArchiveError, ArchiveWriter, DataState, Entry, Toc,
};
use pg_groupdump::text::quote_ident;

use crate::util::*;

/// Runs `cmd` (exit status 0) and returns its stdout.
fn run(cmd: &mut Command) -> Vec<u8> {
    clean_pg_env(cmd);
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// pg_dump -Fc of database `db` of the harness server, with `args`: to `file`, or to a pipe
/// (stdout) if `file` is None.
fn pg_dump(db: &TestDb, args: &[&str], file: Option<&Path>) -> Vec<u8> {
    let s = server();
    let mut c = Command::new(s.bin("pg_dump"));
    c.args(["-Fc", "-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(s.port.to_string())
        .args(args)
        .arg("-d")
        .arg(conninfo_db(&db.name));
    if let Some(f) = file {
        c.arg("-f").arg(f);
    }
    run(&mut c)
}

fn pg_restore(args: &[&str], file: &Path) -> String {
    let out = run(Command::new(server().bin("pg_restore"))
        .args(args)
        .arg(file));
    String::from_utf8(out).unwrap()
}

/// (dump id, data, chunks) of the data block at `pos`.
fn read_block(archive: &[u8], pos: u64, compression: Compression) -> (i32, Vec<u8>, usize) {
    let b = read_data_block(archive, pos, compression).unwrap();
    (b.dump_id, b.data, b.chunks)
}

/// The entries with their data positions as an unseekable output leaves them: unset for
/// entries with data, none for the others.
fn unpositioned(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .cloned()
        .map(|mut e| {
            e.data = match e.data {
                DataState::At(_) | DataState::NotSet => DataState::NotSet,
                DataState::NoData => DataState::NoData,
            };
            e
        })
        .collect()
}

/// `bytes`' header and TOC, and how many bytes they take.
fn toc_of(bytes: &[u8]) -> (Toc, usize) {
    let mut rest = bytes;
    let toc = read_toc(&mut rest).unwrap();
    (toc, bytes.len() - rest.len())
}

/// Header and TOC, data positions unset, as `ArchiveWriter::new` writes them (it writes them
/// at once; dropping the writer flushes them).
fn written_head(toc: &Toc) -> Vec<u8> {
    let mut out = Vec::new();
    let w = ArchiveWriter::new(
        Cursor::new(&mut out),
        toc.header.clone(),
        toc.entries.clone(),
    )
    .unwrap();
    drop(w);
    out
}

/// Recent minor releases (15.14+) fence pg_restore's script with \restrict and a random key.
fn unkeyed(sql: String) -> String {
    sql.lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// pg_dump archives of the corpus (whole, schema, data, uncompressed, level 9, single tables)
/// read back and re-serialized to the very same header and TOC bytes; rewritten with
/// ArchiveWriter from their own data, they give pg_restore the same SQL and list.
///
/// The header and TOC bytes are compared as pg_dump writes them to a pipe (data positions
/// unset: an unseekable output is never rewritten) against what `ArchiveWriter::new` writes
/// for that TOC; the same dump to a file has the same TOC, positions set.
#[test]
fn pg_dump_archives_round_trip() {
    let roles = Roles::create();
    let db = roles.prepared_db("archive_pg_dump");
    // app.big with a tenth of its rows: its data blocks still span many chunks.
    let all_rows = "FROM generate_series(1, 300000) g";
    assert!(CORPUS.contains(all_rows), "the corpus fills app.big so");
    db.sql(&roles.fill(&CORPUS.replace(all_rows, "FROM generate_series(1, 20000) g")));
    let dir = tempfile::tempdir().unwrap();
    let pg_dump_bin = server().bin("pg_dump");
    let dump = |name: &str, args: &[&str]| -> (PathBuf, Vec<String>) {
        let path = dir.path().join(name);
        pg_dump(&db, args, Some(&path));
        (path, args.iter().map(|a| a.to_string()).collect())
    };
    let whole = dump("whole.dump", &[]);
    let toc = match read_toc_file(&whole.0) {
        Err(ArchiveError::UnsupportedVersion { found }) => panic!(
            "{} writes archive version {found:?}, which pg_groupdump::archive does not read \
             (pg_dump 12 to 15 only): run the tests with PG_BINDIR set to PostgreSQL 12-15",
            pg_dump_bin.display()
        ),
        r => r.unwrap(),
    };
    let mut archives = vec![
        whole,
        dump("schema.dump", &["--schema-only"]),
        dump("data.dump", &["--data-only"]),
        dump("nocomp.dump", &["--compress=0"]),
        dump("z9.dump", &["-Z", "9"]),
    ];
    let tables = toc.entries.iter().filter(|e| e.desc_is("TABLE"));
    for (i, t) in tables.take(6).enumerate() {
        let pattern = format!(
            "{}.{}",
            quote_ident(&t.namespace.as_ref().unwrap().lossy()),
            quote_ident(&t.tag.as_ref().unwrap().lossy())
        );
        archives.push(dump(&format!("t{i}.dump"), &["-t", &pattern]));
    }
    assert_eq!(archives.len(), 11, "six tables in the corpus: {toc:#?}");
    let mut chunks_in_a_block = 0;
    for (path, args) in &archives {
        let bytes = std::fs::read(path).unwrap();
        let (toc, _) = toc_of(&bytes);
        // Header and TOC written back: the same bytes as pg_dump's.
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let piped = pg_dump(&db, &args, None);
        let (piped_toc, head_len) = toc_of(&piped);
        assert_eq!(
            piped_toc.entries,
            unpositioned(&toc.entries),
            "{}: the TOC of the same dump to a pipe",
            path.display()
        );
        let again = written_head(&piped_toc);
        assert_eq!(again.len(), head_len, "{}", path.display());
        assert!(
            piped.starts_with(&again),
            "{}: header and TOC differ when written back",
            path.display()
        );
        // Rewritten with its own data, the archive restores to the same SQL.
        let mut w = ArchiveWriter::new(
            Cursor::new(Vec::new()),
            toc.header.clone(),
            toc.entries.clone(),
        )
        .unwrap();
        let mut blocks = 0;
        let mut most_chunks = 0;
        for e in &toc.entries {
            if let DataState::At(p) = e.data {
                let (id, raw, chunks) = read_block(&bytes, p, toc.header.compression);
                assert_eq!(id, e.dump_id);
                most_chunks = most_chunks.max(chunks);
                chunks_in_a_block = chunks_in_a_block.max(chunks);
                w.begin_data(id).unwrap();
                w.write_data(&raw).unwrap();
                w.end_data().unwrap();
                blocks += 1;
            }
        }
        let ours = dir.path().join("ours.dump");
        std::fs::write(&ours, w.finish().unwrap().into_inner()).unwrap();
        let ours_toc = read_toc_file(&ours).unwrap();
        assert_eq!(ours_toc.header, toc.header, "{}", path.display());
        assert_eq!(
            unpositioned(&ours_toc.entries),
            unpositioned(&toc.entries),
            "{}",
            path.display()
        );
        for args in [&["-l"][..], &["-f", "-"][..]] {
            let theirs = unkeyed(pg_restore(args, path));
            let mine = unkeyed(pg_restore(args, &ours));
            if let Some((n, (a, b))) = theirs
                .lines()
                .zip(mine.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b)
            {
                panic!(
                    "{}: pg_restore {args:?} differs at line {}:\n pg_dump's: {a}\n ours:      {b}",
                    path.display(),
                    n + 1
                );
            }
            assert_eq!(theirs, mine, "{}: pg_restore {args:?}", path.display());
        }
        eprintln!(
            "{}: {} entries, {blocks} data blocks (up to {most_chunks} chunks), {} header+TOC \
             bytes identical",
            path.display(),
            toc.entries.len(),
            again.len()
        );
    }
    assert!(
        chunks_in_a_block > 1,
        "app.big's data spans many chunks in a block"
    );
}
