//! pg_groupdump: back up PostgreSQL group by group.
//!
//! A run walks through these modules in order:
//! [`config`] (read `groups.toml`) → [`connect`] (connection settings) → [`catalog`] (what
//! the server has) → [`plan`] (which tables go in which group) → [`run`] (the scheduler:
//! slots, retries, signals) → [`engine`] (one `pg_dump` per job, or the native engine's own
//! archives) → [`store`] (atomic files in the backup directory) → [`report`] (the run
//! report) → [`prune`] → [`notify`].
//! [`runlock`] keeps runs on one directory from overlapping; [`text`] holds the small helpers
//! every module may use.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod connect;
pub mod engine;
pub mod exit;
pub mod locks;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod progress;
pub mod prune;
pub mod report;
pub mod restore;
pub mod run;
pub mod runlock;
pub mod store;
pub mod text;
pub mod tools;
pub mod verify;

/// Why a command could not do its work; [`Failure::outcome`] gives its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The configuration is wrong (including names that match nothing in the catalog).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// Nothing could be dumped: server unreachable, authentication, pg_dump unusable, …
    #[error("{0:#}")]
    Start(anyhow::Error),
    /// Another run holds the backup directory.
    #[error(transparent)]
    Locked(runlock::LockError),
    /// The backup ran but its report could not be written.
    #[error("{0:#}")]
    Report(anyhow::Error, Box<report::RunReport>),
}

impl Failure {
    /// How a command that failed this way ended (see [`exit`] for the codes).
    pub fn outcome(&self) -> exit::Outcome {
        match self {
            Failure::Config(_) | Failure::Usage(_) => exit::Outcome::Config,
            Failure::Start(_) => exit::Outcome::CannotStart,
            Failure::Locked(_) => exit::Outcome::Locked,
            Failure::Report(..) => exit::Outcome::NotReported,
        }
    }
}

/// Writes a line to stderr, ignoring errors: a run whose terminal went away (SIGHUP) must
/// finish its work, not panic on a failed write as `eprintln!` would.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes text to stderr as is, ignoring errors (see [`say!`]).
#[macro_export]
macro_rules! say_raw {
    ($text:expr) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), "{}", $text);
    }};
}
