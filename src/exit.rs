//! Exit codes, the contract with systemd units, cron wrappers and monitoring.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every dump of the run succeeded |
//! | 1 | some dumps failed; the others were written and kept |
//! | 2 | bad configuration or command line; nothing was dumped |
//! | 3 | the run could not start: server unreachable, authentication failed, pg_dump missing or older than the server, backup directory unusable |
//! | 4 | another run holds the lock on the backup directory |
//! | 5 | the dumps succeeded but the run could not be reported: the run report could not be written, or the `[email]` mail could not be sent |
//! | 130 | stopped by SIGINT: running dumps cancelled, their `.ing` files removed, report written |
//! | 143 | stopped by SIGTERM: likewise |
//!
//! Commands say how they ended with an [`Outcome`]; [`Outcome::code`] is the only place that
//! turns one into a number, so the table above and the code cannot drift apart. This module
//! is a leaf (it imports nothing of the crate), so every other module may use it.

/// How a command ended, as far as its exit code is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done.
    Ok,
    /// Some of the work failed; the rest was done and kept.
    SomeFailed,
    /// Bad configuration or command line; nothing was done.
    Config,
    /// The work could not start (server, authentication, pg_dump, backup directory).
    CannotStart,
    /// Another run holds the backup directory.
    Locked,
    /// The work was done but could not be reported (report file or mail).
    NotReported,
    /// Stopped by this signal (its number).
    Signal(i32),
}

impl Outcome {
    /// The process exit code (see the table in the module documentation). A signal is
    /// reported the way shells do, 128 + its number: 130 for SIGINT, 143 for SIGTERM.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::SomeFailed => 1,
            Outcome::Config => 2,
            Outcome::CannotStart => 3,
            Outcome::Locked => 4,
            Outcome::NotReported => 5,
            Outcome::Signal(sig) => 128 + sig,
        }
    }
}

/// The signals that stop a run, with the names the run report records them by.
const STOP_SIGNALS: [(i32, &str); 2] = [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")];

/// The name a run report records for a signal that stopped the run ("signal" for one that
/// does not stop runs).
pub fn signal_name(sig: i32) -> &'static str {
    STOP_SIGNALS
        .iter()
        .find(|(n, _)| *n == sig)
        .map_or("signal", |(_, name)| name)
}

/// The signal a run report's name stands for, if it is one that stops runs.
pub fn signal_number(name: &str) -> Option<i32> {
    STOP_SIGNALS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(sig, _)| *sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_documented_table() {
        let table = [
            (Outcome::Ok, 0),
            (Outcome::SomeFailed, 1),
            (Outcome::Config, 2),
            (Outcome::CannotStart, 3),
            (Outcome::Locked, 4),
            (Outcome::NotReported, 5),
            (Outcome::Signal(libc::SIGINT), 130),
            (Outcome::Signal(libc::SIGTERM), 143),
        ];
        for (outcome, code) in table {
            assert_eq!(outcome.code(), code, "{outcome:?}");
        }
    }

    /// A run's outcome comes from its report as written: the signal read back from its name.
    #[test]
    fn run_outcome_from_the_report() {
        let report = |status: &str, signal: Option<&str>, group_status: &str| {
            let json = serde_json::json!({
                "run_id": "20260301T120000Z", "started_at": "", "finished_at": "",
                "status": status, "host": "", "server": "", "dir": "", "config": "",
                "pg_dump_version": "", "signal": signal,
                "groups": [{
                    "kind": "tables", "database": "d", "group": "g", "tables": [],
                    "status": group_status, "file": null, "bytes": null, "sha256": null,
                    "started_at": "", "finished_at": "", "duration_ms": 0, "error": null
                }]
            });
            serde_json::from_value::<crate::report::RunReport>(json).unwrap()
        };
        let code = |status, signal, group| report(status, signal, group).outcome().code();
        assert_eq!(code("ok", None, "ok"), 0);
        assert_eq!(code("ok", None, "gone"), 0);
        assert_eq!(code("failed", None, "failed"), 1);
        assert_eq!(code("interrupted", Some("SIGINT"), "ok"), 130);
        assert_eq!(code("interrupted", Some("SIGTERM"), "failed"), 143);
        assert_eq!(code("interrupted", None, "ok"), 143);
    }

    #[test]
    fn signal_names_round_trip() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            assert_eq!(signal_number(signal_name(sig)), Some(sig));
        }
        assert_eq!(signal_name(libc::SIGHUP), "signal");
        assert_eq!(signal_number("signal"), None);
    }
}
