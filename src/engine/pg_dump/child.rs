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
use crate::engine::job::Contents;
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
    let mut file_arg = std::ffi::OsString::from("--file=");
    file_arg.push(out.as_os_str());
    args.push(file_arg);
    args.push(format!("--dbname={conninfo}").into());
    (program, args)
}

/// Runs one dump child writing to `out`; returns its stderr (warnings) on success. When
/// `cancel` completes first, the child's process group gets SIGTERM (SIGKILL after
/// [`KILL_GRACE`]) and the result is `Err` with what `cancel` gave.
pub async fn run_child<C>(
    settings: &DumpSettings,
    req: &DumpRequest<'_>,
    cancel: impl std::future::Future<Output = C>,
) -> Result<Result<String, ChildError>, C> {
    let (program, args) = command_args(settings, req);
    let program_name = program.display().to_string();
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
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
    Ok(if status.success() {
        Ok(text)
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
