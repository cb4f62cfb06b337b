//! One run at a time per backup directory.
//!
//! `run` and `prune` take an exclusive `flock` on `<dir>/.pg_groupdump.lock`. The lock
//! is released by the kernel when the process ends, however it ends, so a crashed run never
//! leaves a stale lock. The file records the holder's pid (for the message a second run
//! prints) and the last run id, so that two runs in the same second still get distinct ids.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the backup directory.
pub const LOCK_FILE: &str = ".pg_groupdump.lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another pg_groupdump run (pid {pid}) holds the lock on {dir}")]
    Held { dir: PathBuf, pid: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A held run lock; released on drop.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    previous_run_id: Option<String>,
}

impl RunLock {
    /// Takes the lock on `dir` without waiting.
    pub fn acquire(dir: &Path) -> Result<RunLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: flock on a valid descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = field(&text, "pid").unwrap_or_else(|| "unknown".into());
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            return Err(io_err(err));
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io_err)?;
        let previous_run_id = field(&text, "run");
        let mut lock = RunLock {
            file,
            previous_run_id,
        };
        lock.record(None).map_err(io_err)?;
        Ok(lock)
    }

    /// The id of the last run that held this lock.
    pub fn previous_run_id(&self) -> Option<&str> {
        self.previous_run_id.as_deref()
    }

    /// Records our pid and, once known, our run id.
    pub fn record(&mut self, run_id: Option<&str>) -> io::Result<()> {
        let run = run_id.or(self.previous_run_id.as_deref()).unwrap_or("");
        let text = format!("pid {}\nrun {}\n", std::process::id(), run);
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }
}

fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_names_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = RunLock::acquire(dir.path()).unwrap();
        a.record(Some("20260101T000000Z")).unwrap();
        match RunLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(a);
        let b = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(b.previous_run_id(), Some("20260101T000000Z"));
    }
}
