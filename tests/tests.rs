//! Integration tests: the real `pg_groupdump` binary against a real PostgreSQL server
//! (started once per test process, see `util`). Every test uses its own database(s) and
//! workspace, so they run in parallel.

mod util;

#[path = "it/archive.rs"]
mod archive;
#[path = "it/config_errors.rs"]
mod config_errors;
#[path = "it/consistency.rs"]
mod consistency;
#[path = "it/ddl_storm.rs"]
mod ddl_storm;
#[path = "it/email.rs"]
mod email;
#[path = "it/encryption.rs"]
mod encryption;
#[path = "it/failure.rs"]
mod failure;
#[path = "it/faults.rs"]
mod faults;
#[path = "it/layout.rs"]
mod layout;
#[path = "it/list.rs"]
mod list;
#[path = "it/locks.rs"]
mod locks;
#[path = "it/matrix.rs"]
mod matrix;
#[path = "it/names.rs"]
mod names;
#[path = "it/native.rs"]
mod native;
#[path = "it/native_faults.rs"]
mod native_faults;
#[path = "it/ops.rs"]
mod ops;
#[path = "it/plan.rs"]
mod plan;
#[path = "it/prune.rs"]
mod prune;
#[path = "it/restore_at.rs"]
mod restore_at;
#[path = "it/run.rs"]
mod run;
#[path = "it/s3.rs"]
mod s3;
#[path = "it/scheduler.rs"]
mod scheduler;
#[path = "it/smoke.rs"]
mod smoke;
#[path = "it/split.rs"]
mod split;
#[path = "it/startup.rs"]
mod startup;
#[path = "it/suggest.rs"]
mod suggest;
#[path = "it/tls.rs"]
mod tls;
#[path = "it/verify.rs"]
mod verify;
