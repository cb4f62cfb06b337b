//! Why a native dump did not produce an archive: the one error type of the native engine's
//! group dumps ([`super::copy`], [`super::split`]).

/// Why a native dump did not produce an archive.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// The schema archive no longer describes the group: dump it with pg_dump instead.
    #[error("{0}")]
    Fallback(String),
    /// The server said no (lock timeout, permission, lost connection...).
    #[error("{}", crate::text::pg_error_text(.0))]
    Server(#[from] tokio_postgres::Error),
    /// The server's answer was not what the query promises.
    #[error("{0}")]
    Unexpected(&'static str),
    /// A table was dropped or renamed between resolving its name and locking it (the LOCK
    /// found no relation of that name, or the snapshot shows the name no longer ours):
    /// resolve the names again.
    #[error("{0}")]
    Changed(String),
    /// Another session of a split table timed out waiting for its lock; who was in the way,
    /// seen while the group still held its locks.
    #[error("{}", crate::text::pg_error_text(.error))]
    SplitLockTimeout {
        error: tokio_postgres::Error,
        blockers: Vec<crate::report::Session>,
    },
    /// Another session for a split table could not be had.
    #[error(transparent)]
    Session(super::session::SessionError),
    /// Every table of the group was dropped after the plan.
    #[error("every table of the group was dropped after the plan")]
    Gone,
}
