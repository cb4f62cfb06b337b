//! Mail after a run: `[email]`, the message, and sending it over SMTP (lettre).
//!
//! (Being written: this file holds the interface the rest of the program uses.)

use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::report::RunReport;

/// `[email]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {}

/// The checked `[email]` settings.
#[derive(Debug, Clone)]
pub struct EmailConfig {}

/// A mail could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

/// Checks `[email]`; errors name the key (`email.port`).
pub fn check(_path: &Path, _raw: RawEmail) -> Result<EmailConfig, ConfigError> {
    Ok(EmailConfig {})
}

/// Sends the run's summary if `on` says so. `Ok(Some(reply))` when sent, `Ok(None)` when
/// there was nothing to send.
pub async fn notify_run(
    _cfg: &EmailConfig,
    _report: &RunReport,
    _report_path: &Path,
) -> Result<Option<String>, NotifyError> {
    Err(NotifyError("mail is not implemented yet".into()))
}

/// Sends the "run could not start" mail.
pub async fn notify_start_failure(
    _cfg: &EmailConfig,
    _config_path: &Path,
    _error: &str,
) -> Result<String, NotifyError> {
    Err(NotifyError("mail is not implemented yet".into()))
}

/// `pg_groupdump email-test`: sends a test message, returns what the server answered.
pub async fn email_test(_cfg: &EmailConfig) -> Result<String, NotifyError> {
    Err(NotifyError("mail is not implemented yet".into()))
}
