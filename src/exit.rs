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

pub const OK: i32 = 0;
pub const SOME_FAILED: i32 = 1;
pub const CONFIG: i32 = 2;
pub const CANNOT_START: i32 = 3;
pub const LOCKED: i32 = 4;
pub const NOT_REPORTED: i32 = 5;
pub const SIGINT: i32 = 130;
pub const SIGTERM: i32 = 143;
