//! pg_groupdump: back up PostgreSQL group by group.
//!
//! A run walks through these modules in order:
//! [`config`] (read `groups.toml`) → [`connect`] (connection settings) → [`catalog`] (what
//! the server has) → [`plan`] (which tables go in which group) → [`run`] (the scheduler:
//! slots, retries, signals) → [`engine`] (a group's archive written by the native engine, the
//! default, or by a `pg_dump` of its own; schema and globals by pg_dump / pg_dumpall) →
//! [`store`] (atomic files in the backup directory) → [`report`] (the run report) →
//! [`prune`] → [`notify`].
//! [`runlock`] keeps runs on one directory from overlapping; [`text`] holds the small helpers
//! every module may use.

pub mod catalog;
pub mod cli;
pub mod compression;
pub mod config;
pub mod connect;
pub mod crypt;
pub mod engine;
pub mod exit;
pub mod failure;
pub mod list;
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
pub mod suggest;
pub mod text;
pub mod tools;
pub mod verify;

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
