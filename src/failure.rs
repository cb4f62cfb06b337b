//! Why a command could not do its work at all — as opposed to a run some of whose dumps
//! failed, which its report tells — each failure with its exit outcome.

use crate::{config, exit, report, runlock};

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

/// A file that cannot be decrypted: missing or wrong keys are usage errors (exit 2), a file
/// that cannot be read or is damaged is not.
impl From<crate::crypt::CryptError> for Failure {
    fn from(e: crate::crypt::CryptError) -> Self {
        if e.is_about_keys() {
            Failure::Usage(e.to_string())
        } else {
            Failure::Start(e.into())
        }
    }
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
