//! Running `pg_dump` and `pg_dumpall`: argument building and one child process per dump.
//!
//! Table names go to `pg_dump -t` as double-quoted patterns (`"s"."a*b"`), inside which `*`,
//! `?`, `.` and upper case are literal, with `--strict-names` so a table dropped since planning
//! is an error rather than a silently smaller dump. No shell is involved anywhere: arguments
//! are passed as a vector. Children run in their own process group with stdin closed; their
//! stderr is kept (its tail) for the report.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::compression::Compression;
use crate::connect::ConnParams;
use crate::crypt::Recipients;
use crate::engine::job::Contents;
use crate::engine::native::archive::{self, Toc};
use crate::tools::Tools;

/// How much of a child's stderr is kept for the report.
const STDERR_TAIL: usize = 4000;

/// Settings shared by every dump of a run.
#[derive(Debug, Clone)]
pub struct DumpSettings {
    pub tools: Tools,
    pub conn: ConnParams,
    /// `--statistics` (pg_dump 18 and later).
    pub statistics: bool,
    /// `[encryption]`: every output is encrypted to these recipients as it is written.
    pub seal: Option<Recipients>,
}

/// A failed child: what it said.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    /// The child's output could not be encrypted into its file.
    #[error("cannot write {}: {}", path.display(), crate::text::io_message(source))]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a successful child left besides its file.
#[derive(Debug, Default)]
pub struct ChildOutput {
    /// Its stderr (warnings).
    pub warnings: String,
    /// With [`DumpRequest::read_toc`]: the archive's TOC, read as it streamed by, or why it
    /// could not be.
    pub toc: Option<Result<Toc, String>>,
}

/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// One child's task.
#[derive(Debug, Clone, Copy)]
pub struct DumpRequest<'a> {
    pub kind: &'a Contents,
    pub compression: Compression,
    pub database: &'a str,
    pub application_name: &'a str,
    pub lock_wait_timeout: Duration,
    /// An exported snapshot for `pg_dump --snapshot`.
    pub snapshot: Option<&'a str>,
    pub out: &'a Path,
    /// Encrypt the output to these recipients: the child writes to a pipe, and only the
    /// encrypted stream reaches `out`.
    pub seal: Option<&'a Recipients>,
    /// Read the archive's TOC from the stream (with `seal`: the file cannot be read back).
    pub read_toc: bool,
}

/// Builds the command line (without the password, which goes in the environment).
pub fn command_args(
    settings: &DumpSettings,
    req: &DumpRequest<'_>,
) -> (PathBuf, Vec<std::ffi::OsString>) {
    let DumpRequest {
        kind,
        compression,
        database,
        application_name,
        lock_wait_timeout,
        snapshot,
        out,
        seal,
        read_toc: _,
    } = *req;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let conninfo = settings.conn.conninfo(database, application_name);
    let program = match kind {
        Contents::Globals { role_passwords } => {
            args.push("--globals-only".into());
            if !role_passwords {
                args.push("--no-role-passwords".into());
            }
            settings.tools.pg_dumpall.clone()
        }
        Contents::Schema { .. } | Contents::SchemaOnly | Contents::Tables(_) => {
            args.push("--format=custom".into());
            if let Some(z) = compression.pg_dump_arg(settings.tools.major) {
                args.push(format!("--compress={z}").into());
            }
            args.push(
                format!(
                    "--lock-wait-timeout={}",
                    lock_wait_timeout.as_millis().max(1)
                )
                .into(),
            );
            if let Some(id) = snapshot {
                args.push(format!("--snapshot={id}").into());
            }
            if settings.statistics {
                args.push("--statistics".into());
            }
            if let Contents::Tables(tables) = kind {
                args.push("--strict-names".into());
                for (s, t) in tables {
                    args.push("--table".into());
                    args.push(crate::text::quote_qualified(s, t).into());
                }
            } else if let Contents::SchemaOnly = kind {
                // pg_dump 18 refuses --schema-only with --statistics: leave out every
                // table's data instead.
                if settings.statistics {
                    args.push("--exclude-table-data=*.*".into());
                } else {
                    args.push("--schema-only".into());
                }
            } else if let Contents::Schema { exclude_data } = kind {
                for pattern in exclude_data {
                    args.push("--exclude-table-data".into());
                    args.push(pattern.into());
                }
            }
            settings.tools.pg_dump.clone()
        }
    };
    args.push("--no-password".into());
    // Encrypted: the output goes to stdout, a pipe to the encryption.
    if seal.is_none() {
        let mut file_arg = std::ffi::OsString::from("--file=");
        file_arg.push(out.as_os_str());
        args.push(file_arg);
    }
    args.push(format!("--dbname={conninfo}").into());
    (program, args)
}

/// Runs one dump child writing to `out` (through the encryption, with `seal`); returns its
/// stderr (warnings) on success. When
/// `cancel` completes first, the child's process group gets SIGTERM (SIGKILL after
/// [`KILL_GRACE`]) and the result is `Err` with what `cancel` gave.
pub async fn run_child<C>(
    settings: &DumpSettings,
    req: &DumpRequest<'_>,
    cancel: impl std::future::Future<Output = C>,
) -> Result<Result<ChildOutput, ChildError>, C> {
    let (program, args) = command_args(settings, req);
    let program_name = program.display().to_string();
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(if req.seal.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // If pg_groupdump dies (even by SIGKILL), its children get SIGTERM instead of writing on
    // as orphans. SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    for (k, v) in settings.conn.child_env() {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(source) => {
            return Ok(Err(ChildError::Spawn {
                program: program_name,
                source,
            }))
        }
    };
    let sealing = match (req.seal, child.stdout.take()) {
        (Some(recipients), Some(stdout)) => {
            let (recipients, out, read_toc) =
                (recipients.clone(), req.out.to_path_buf(), req.read_toc);
            let stdout = match stdout.into_owned_fd().and_then(crate::tools::blocking_pipe) {
                Ok(f) => f,
                Err(source) => {
                    stop_child(&mut child).await;
                    return Ok(Err(ChildError::Output { path: out, source }));
                }
            };
            Some(tokio::task::spawn_blocking(move || {
                seal_stream(stdout, &out, &recipients, read_toc)
            }))
        }
        _ => None,
    };
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Read stderr while the child runs, so a chatty child never blocks on a full pipe.
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    if all.len() > 4 * STDERR_TAIL {
                        all.drain(..all.len() - STDERR_TAIL);
                    }
                }
            }
        }
        all
    });
    let status = tokio::select! {
        status = child.wait() => status,
        reason = cancel => {
            stop_child(&mut child).await;
            reader.abort();
            return Err(reason);
        }
    };
    let status = match status {
        Ok(s) => s,
        Err(source) => {
            return Ok(Err(ChildError::Spawn {
                program: program_name,
                source,
            }))
        }
    };
    let err_bytes = reader.await.unwrap_or_default();
    let text = tail(&String::from_utf8_lossy(&err_bytes));
    let sealed = match sealing {
        None => Ok(None),
        Some(task) => match task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        },
    };
    // The encryption failing (a full disk) is why a child writing into it failed.
    let toc = match sealed {
        Ok(toc) => toc,
        Err(source) => {
            return Ok(Err(ChildError::Output {
                path: req.out.to_path_buf(),
                source,
            }))
        }
    };
    Ok(if status.success() {
        Ok(ChildOutput {
            warnings: text,
            toc,
        })
    } else {
        let status = match status.code() {
            Some(c) => format!("exit code {c}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("killed by signal {}", status.signal().unwrap_or(0))
            }
        };
        Err(ChildError::Failed {
            program: program_name,
            status,
            stderr: text,
        })
    })
}

/// Encrypts what the child writes into `out` (its `.ing`, already created with the file
/// mode) as it arrives. With `read_toc`, the archive's TOC is read from the stream's head,
/// which is kept in memory only until the TOC is complete.
fn seal_stream(
    mut input: std::fs::File,
    out: &Path,
    recipients: &Recipients,
    read_toc: bool,
) -> std::io::Result<Option<Result<Toc, String>>> {
    use std::io::{Read, Write};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(out)?;
    let mut sealed = recipients.seal(file)?;
    let mut head = read_toc.then(TocHead::default);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sealed.write_all(&buf[..n])?;
        if let Some(h) = &mut head {
            h.feed(&buf[..n]);
        }
    }
    sealed.finish()?;
    Ok(head.map(TocHead::end))
}

/// The head of an archive stream, kept until its TOC can be read. Parsing is tried each time
/// the head has doubled, so a large TOC costs linear time.
#[derive(Default)]
struct TocHead {
    bytes: Vec<u8>,
    next_try: usize,
    done: Option<Result<Toc, String>>,
}

impl TocHead {
    fn feed(&mut self, data: &[u8]) {
        if self.done.is_some() {
            return;
        }
        self.bytes.extend_from_slice(data);
        if self.bytes.len() >= self.next_try {
            self.next_try = (self.bytes.len() * 2).max(1 << 16);
            self.attempt(false);
        }
    }

    /// Reads the TOC if the head holds it; at the end of the stream, whatever the result.
    fn attempt(&mut self, at_end: bool) {
        let mut r = UpToEnd {
            rest: &self.bytes,
            ran_out: false,
        };
        match archive::read_toc(&mut r) {
            Ok(toc) => self.done = Some(Ok(toc)),
            // It needs more than has come so far.
            Err(_) if r.ran_out && !at_end => {}
            Err(e) => self.done = Some(Err(e.to_string())),
        }
        if self.done.is_some() {
            self.bytes = Vec::new();
        }
    }

    fn end(mut self) -> Result<Toc, String> {
        if self.done.is_none() {
            self.attempt(true);
        }
        self.done.expect("attempted at the end")
    }
}

/// A reader of a byte slice that records whether a read went past its end.
struct UpToEnd<'a> {
    rest: &'a [u8],
    ran_out: bool,
}

impl std::io::Read for UpToEnd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.ran_out = true;
        }
        std::io::Read::read(&mut self.rest, buf)
    }
}

/// SIGTERM to the child's process group, then SIGKILL if it has not exited within the grace
/// period.
pub async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGTERM);
        }
    }
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        if let Some(pid) = child.id() {
            // SAFETY: as above.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
    }
}

fn tail(s: &str) -> String {
    let s = s.trim();
    if s.len() <= STDERR_TAIL {
        return s.to_string();
    }
    let mut start = s.len() - STDERR_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use archive::{ArchiveWriter, DataState, Entry, Header, SECTION_PRE_DATA};

    /// A schema archive as pg_dump writes it to a pipe: `n` TABLE entries, no data.
    fn schema_archive(n: i32) -> Vec<u8> {
        let header = Header {
            version: archive::V1_16,
            int_size: 4,
            off_size: 8,
            format: 1,
            compression: Compression::None,
            created: [0, 0, 0, 1, 0, 126, 0],
            database: Some("shop".into()),
            server_version: Some("18.1".into()),
            pg_dump_version: Some("18.1".into()),
        };
        let entries = (1..=n)
            .map(|i| Entry {
                dump_id: i,
                had_dumper: false,
                table_oid: Some("1259".into()),
                oid: Some(format!("{}", 16384 + i).into()),
                tag: Some(format!("t{i}").into()),
                desc: Some("TABLE".into()),
                section: SECTION_PRE_DATA,
                defn: Some(format!("CREATE TABLE public.t{i} (id integer);\n").into()),
                drop_stmt: Some(format!("DROP TABLE public.t{i};\n").into()),
                copy_stmt: None,
                namespace: Some("public".into()),
                tablespace: Some("".into()),
                tableam: Some("heap".into()),
                relkind: i32::from(b'r'),
                owner: Some("postgres".into()),
                with_oids: Some("false".into()),
                deps: vec![],
                data: DataState::NoData,
            })
            .collect();
        ArchiveWriter::streaming(Vec::new(), header, entries)
            .unwrap()
            .finish_streaming()
            .unwrap()
    }

    #[test]
    fn the_toc_is_read_from_a_stream_in_pieces_of_any_size() {
        let bytes = schema_archive(3000);
        assert!(bytes.len() > 4 << 16, "several reads' worth");
        let whole = archive::read_toc(&mut &bytes[..]).unwrap();
        for piece in [1, 7, 1000, 1 << 16, bytes.len()] {
            let mut head = TocHead::default();
            for p in bytes.chunks(piece) {
                head.feed(p);
            }
            assert_eq!(head.end().unwrap(), whole, "pieces of {piece}");
        }
        // A stream that is not an archive, or ends inside the TOC, says why.
        let mut head = TocHead::default();
        head.feed(b"-- a plain SQL dump\n");
        assert!(head.end().unwrap_err().contains("PGDMP"));
        let mut head = TocHead::default();
        head.feed(&bytes[..bytes.len() / 2]);
        assert!(head.end().is_err());
    }
}
