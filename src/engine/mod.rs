//! Engines: each turns one [`Job`] — a group's tables, a database's schema, the cluster's
//! globals — into one finished file in the backup directory, or a typed [`AttemptError`].
//!
//! The scheduler ([`crate::run`]) decides when a job runs, how many run at once, and whether
//! a failed attempt is tried again; it sees an attempt only as a [`Tried`]. An engine decides
//! how the file is made:
//! - [`pg_dump`]: a `pg_dump`/`pg_dumpall` child per job, in a snapshot exported by a session
//!   of ours ([`snapshot`]);
//! - [`native`]: the group's archive written by pg_groupdump itself, cut from the run's
//!   schema archive, with the data copied on a pooled session.
//!
//! [`Engines`] is what the scheduler holds: it picks the engine a job asked for, hands a
//! group to pg_dump when the native engine cannot write it, and lets the native engine watch
//! the schema dumps it cuts. Both engines share the run's lock [`Monitor`]: a lock timeout is
//! reported with who was in the way, and a session of ours yields to DDL that waits on it.
//!
//! To add an engine: a module here that turns a `Job` into a `Tried`, and a branch in
//! [`Engines::attempt`]. An archive version or a compression method is the native engine's
//! business alone ([`native::archive`]).

pub mod follow;
pub mod job;
pub mod native;
pub mod pg_dump;
pub mod pool;
pub mod snapshot;

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::config::Engine;
use crate::report::Kind;
pub use job::{stopped, AttemptError, Cancel, Contents, Job, Settings, Shared, Tried};

/// The engines of a run, as the scheduler sees them.
pub struct Engines {
    pg_dump: Arc<pg_dump::PgDump>,
    native: native::Native,
}

impl Engines {
    /// Sets up both engines for these jobs.
    pub fn new(settings: Settings, shared: Arc<Shared>, jobs: &[Job]) -> Self {
        let pg_dump = Arc::new(pg_dump::PgDump::new(&settings, shared.clone()));
        let native = native::Native::new(&settings, shared, pg_dump.clone(), jobs);
        Engines { pg_dump, native }
    }

    /// Whether the job can start now. A native group waits for its database's schema
    /// archive, which the run's schema job is still taking.
    pub fn ready(&self, job: &Job) -> bool {
        job.engine != Engine::Native || job.kind != Kind::Tables || self.native.ready(job)
    }

    /// Changes whenever a job that was not [`ready`](Self::ready) may have become so.
    pub fn readiness(&self) -> watch::Receiver<u64> {
        self.native.readiness()
    }

    /// One attempt at the job, holding `slot` (which an engine may give back early, once
    /// the database work is done).
    pub async fn attempt(
        &self,
        job: &mut Job,
        number: u32,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) -> Tried {
        let group = (job.kind == Kind::Tables).then_some(());
        if job.engine == Engine::Native && group.is_some() {
            match self.native.attempt(job, number, slot).await {
                native::NativeTry::Done(attempt, result) => {
                    return Tried {
                        attempt: *attempt,
                        result,
                        engine: Some(Engine::Native),
                        fallback: None,
                    }
                }
                native::NativeTry::Fallback { why, quiet } => {
                    if quiet {
                        tracing::debug!("{}: dumped with pg_dump: {why}", job.label());
                    } else {
                        tracing::warn!("{}: dumped with pg_dump: {why}", job.label());
                    }
                    job.engine = Engine::PgDump;
                    let (attempt, result) = self.pg_dump.attempt(job, number, None).await;
                    return Tried {
                        attempt,
                        result,
                        engine: Some(Engine::PgDump),
                        fallback: Some(why),
                    };
                }
            }
        }
        let recorder = self.native.recorder_for(job);
        let (attempt, result) = self.pg_dump.attempt(job, number, recorder.as_deref()).await;
        Tried {
            attempt,
            result,
            engine: group.map(|()| Engine::PgDump),
            fallback: None,
        }
    }

    /// Tells the engines a job has ended (after its last attempt): the native engine takes
    /// a schema dump's archive for its groups.
    pub async fn finished(&self, job: &Job, result: Result<(), &str>) {
        self.native.schema_finished(job, result).await;
    }
}
