//! The `pg_dump` and `pg_dumpall` binaries a run uses: where they are, which version they
//! are, and whether they can dump the server (a pg_dump must be at least the server's major
//! version).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// The pg_dump and pg_dumpall binaries to use, and their major version.
#[derive(Debug, Clone)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_dumpall: PathBuf,
    pub version: String,
    pub major: u32,
}

/// Problems with the pg_dump binaries.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("pg_dump not found on PATH; install the PostgreSQL client or set backup.pg_dump")]
    NotOnPath,
    #[error(
        "cannot run {path}: {source} (set backup.pg_dump / backup.pg_dumpall to a working binary)"
    )]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} --version printed {output:?}, which names no PostgreSQL version")]
    Version { path: PathBuf, output: String },
    #[error("{path} is version {version}, older than the server ({server}); a pg_dump must be at least the server's major version: set backup.pg_dump to a newer one (e.g. /usr/lib/postgresql/{server_major}/bin/pg_dump)")]
    TooOld {
        path: PathBuf,
        version: String,
        server: String,
        server_major: u32,
    },
}

/// Finds pg_dump (configured, else on PATH) and pg_dumpall (configured, else beside pg_dump).
pub fn locate(
    pg_dump: Option<&Path>,
    pg_dumpall: Option<&Path>,
) -> Result<(PathBuf, PathBuf), ToolError> {
    let dump = match pg_dump {
        Some(p) => p.to_path_buf(),
        None => find_on_path("pg_dump").ok_or(ToolError::NotOnPath)?,
    };
    let dumpall = match pg_dumpall {
        Some(p) => p.to_path_buf(),
        None => {
            let beside = dump.with_file_name("pg_dumpall");
            if beside.exists() {
                beside
            } else {
                find_on_path("pg_dumpall").unwrap_or(beside)
            }
        }
    };
    Ok((dump, dumpall))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `<binary> --version` and returns ("15.18", 15).
pub async fn binary_version(path: &Path) -> Result<(String, u32), ToolError> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ToolError::Spawn {
            path: path.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    parse_version(&text).ok_or(ToolError::Version {
        path: path.to_path_buf(),
        output: text,
    })
}

/// Parses "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" into ("15.18", 15).
pub fn parse_version(text: &str) -> Option<(String, u32)> {
    let word = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let version: String = word
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let mut parts = version.split('.');
    let major: u32 = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    // Before 10, the major version had two parts (9.6).
    let major = if major < 10 {
        let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        major * 100 + minor
    } else {
        major * 100
    };
    Some((version, major / 100))
}

/// Checks the binaries against the server's `server_version_num`.
pub async fn check_tools(
    pg_dump: &Path,
    pg_dumpall: &Path,
    server_version_num: i32,
) -> Result<Tools, ToolError> {
    let server_major = (server_version_num / 10000) as u32;
    let server = format!("{}.{}", server_major, server_version_num % 10000);
    let (version, major) = binary_version(pg_dump).await?;
    let old = |path: &Path, version: &str| ToolError::TooOld {
        path: path.to_path_buf(),
        version: version.to_string(),
        server: server.clone(),
        server_major,
    };
    if major < server_major || version.starts_with("9.") {
        return Err(old(pg_dump, &version));
    }
    Ok(Tools {
        pg_dump: pg_dump.to_path_buf(),
        pg_dumpall: pg_dumpall.to_path_buf(),
        version,
        major,
    })
}

/// A child's pipe (stdin or stdout, as `into_owned_fd` gives it) as a blocking file, for a
/// thread that feeds or drains it: tokio makes its pipes non-blocking.
pub fn blocking_pipe(fd: std::os::fd::OwnedFd) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(("15.18".into(), 15))
        );
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 9.6.24"),
            Some(("9.6.24".into(), 9))
        );
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 17beta1"),
            Some(("17beta1".into(), 17))
        );
        assert_eq!(parse_version("nothing here"), None);
    }
}
