//! A backup run: lock the directory, read the catalog, plan, dump every group (several at a
//! time, largest first), write the report.
//!
//! A failing dump never stops the others: it is recorded as failed, its `.ing` file removed,
//! and the run goes on. Only problems that make every dump impossible (configuration, server
//! unreachable, pg_dump unusable, another run holding the lock) end a run early, and those
//! happen before the first dump starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::catalog;
use crate::config::Config;
use crate::connect::{application_name, ConnParams};
use crate::dump::{self, ChildError, DumpKind, DumpSettings};
use crate::locks::{self, Monitor, Session};
use crate::plan::{self, ExcludeMatcher, GroupPlan, Plan};
use crate::progress::Progress;
use crate::report::{now_rfc3339, Attempt, GroupReport, Kind, Outcome, RunReport, Status};
use crate::runlock::RunLock;
use crate::snapshot::{SnapshotInfo, Snapshots};
use crate::store;
use crate::Failure;

/// Options of `pg_groupdump run` beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub jobs: Option<usize>,
    pub groups: Vec<String>,
    pub databases: Vec<String>,
    pub report: Option<PathBuf>,
    /// Show the live progress display (on a terminal).
    pub progress: bool,
}

/// What the server told us while planning.
pub struct Planned {
    pub plan: Plan,
    pub conn: ConnParams,
    pub server_version_num: i32,
    pub role_passwords: bool,
    /// Databases whose catalog could not be read (name, error).
    pub unreadable: Vec<(String, String)>,
}

/// Connects, reads the catalogs of the selected databases and resolves the groups. With
/// `tolerate_unreadable`, a database whose catalog cannot be read is reported rather than
/// ending everything (a run still dumps the others).
pub async fn build_plan(
    config: &Config,
    only_databases: &[String],
    tolerate_unreadable: bool,
) -> Result<Planned, Failure> {
    let conn = ConnParams::resolve(&config.connection).map_err(|e| Failure::Start(e.into()))?;
    let maint = &config.connection.maintenance_database;
    let client = conn
        .connect(maint, &application_name("catalog"))
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    let server_version_num = catalog::server_version_num(&client)
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    let available = catalog::list_databases(&client)
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    let role_passwords = catalog::can_read_role_passwords(&client)
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    drop(client);
    let databases =
        plan::select_databases(config, &available, only_databases).map_err(Failure::Config)?;

    let mut excludes = ExcludeMatcher::new(&config.ungrouped.exclude);
    let mut warnings = Vec::new();
    let mut dbs = Vec::new();
    let mut unreadable = Vec::new();
    for db in &databases {
        let cat = async {
            let c = conn.connect(db, &application_name("catalog")).await?;
            Ok::<_, anyhow::Error>(catalog::read_database(&c, db).await?)
        }
        .await;
        match cat {
            Ok(cat) => dbs.push(
                plan::resolve_database(config, &cat, &mut excludes, &mut warnings)
                    .map_err(Failure::Config)?,
            ),
            Err(e) if tolerate_unreadable && !config.groups.iter().any(|g| &g.database == db) => {
                unreadable.push((db.clone(), format!("{e:#}")))
            }
            Err(e) => return Err(Failure::Start(e)),
        }
    }
    warnings.extend(excludes.unmatched_warnings());
    Ok(Planned {
        plan: Plan {
            databases: dbs,
            warnings,
        },
        conn,
        server_version_num,
        role_passwords,
        unreadable,
    })
}

/// One unit of work: a dump, tried up to `1 + lock_retries` times.
struct Job {
    kind: Kind,
    database: Option<String>,
    group: String,
    tables: Vec<String>,
    table_oids: Vec<u32>,
    dump: DumpKind,
    path: PathBuf,
    lock_wait_timeout: Duration,
    yield_after: Option<Duration>,
}

/// What every job of a run shares.
struct Ctx {
    settings: DumpSettings,
    maintenance: String,
    monitor: Monitor,
    snapshots: Snapshots,
    permits: Arc<Semaphore>,
    lock_retries: u32,
    retry_delay: Duration,
    /// Set to the signal number once SIGINT or SIGTERM arrives.
    shutdown: watch::Receiver<Option<i32>>,
    count_rows: bool,
    progress: Progress,
}

/// Listens for SIGINT and SIGTERM (stop: no new dump starts, running ones are cancelled) and
/// SIGHUP (ignored: a run whose terminal goes away finishes its work).
fn listen_for_signals() -> watch::Receiver<Option<i32>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(None);
    let streams = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    );
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = streams else {
        tracing::warn!("cannot install signal handlers; SIGINT/SIGTERM will end the run abruptly");
        return rx;
    };
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: ignored, the run goes on (send SIGTERM to stop it)");
                    continue;
                }
            };
            if tx.borrow().is_none() {
                tracing::warn!(
                    "{}: starting no new dump, cancelling the running ones",
                    signal_name(sig)
                );
                let _ = tx.send(Some(sig));
            }
        }
    });
    rx
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Resolves when the run is told to stop; returns the signal.
async fn stopped(mut rx: watch::Receiver<Option<i32>>) -> i32 {
    loop {
        if let Some(sig) = *rx.borrow_and_update() {
            return sig;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Runs a backup and returns its report (already written to disk).
pub async fn run(config: &Config, opts: &RunOptions) -> Result<(RunReport, PathBuf), Failure> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let shutdown = listen_for_signals();
    let (pg_dump, pg_dumpall) = dump::locate(
        config.backup.pg_dump.as_deref(),
        config.backup.pg_dumpall.as_deref(),
    )
    .map_err(|e| Failure::Start(e.into()))?;
    // The binary must run at all before we bother the server.
    dump::binary_version(&pg_dump)
        .await
        .map_err(|e| Failure::Start(e.into()))?;

    let planned = build_plan(config, &opts.databases, true).await?;
    let tools = dump::check_tools(&pg_dump, &pg_dumpall, planned.server_version_num)
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    for w in &planned.plan.warnings {
        tracing::warn!("{w}");
    }

    // --group: every name must be a group of the selected databases.
    let index = plan::group_index(&planned.plan);
    for g in &opts.groups {
        if !index.contains_key(g) {
            return Err(Failure::Usage(format!(
                "--group {g:?}: no such group in the selected databases (see `pg_groupdump plan`)"
            )));
        }
    }

    // Only now, with the configuration checked against the catalog, is anything written.
    let root = config.backup.dir.clone();
    store::create_dir_all(&root).map_err(|e| {
        Failure::Start(anyhow::anyhow!(
            "cannot create backup.dir {}: {e}",
            root.display()
        ))
    })?;
    let mut lock = RunLock::acquire(&root).map_err(Failure::Locked)?;
    // With the lock held, no other run is writing: `.ing` files are a crashed run's leftovers.
    for p in store::sweep_partials(&root) {
        tracing::info!("removed {}, left by an interrupted run", p.display());
    }

    let run_id = new_run_id(lock.previous_run_id()).await;
    lock.record(Some(&run_id)).map_err(|e| {
        Failure::Start(anyhow::anyhow!(
            "cannot write the lock file in {}: {e}",
            root.display()
        ))
    })?;
    tracing::info!(
        "run {run_id}: pg_dump {} against server {}, {} databases",
        tools.version,
        planned.server_version_num,
        planned.plan.databases.len()
    );

    let jobs = make_jobs(config, opts, &planned, &root, &run_id);
    let ctx = Arc::new(Ctx {
        settings: DumpSettings {
            tools: tools.clone(),
            conn: planned.conn.clone(),
            compress: config.backup.compress,
        },
        maintenance: config.connection.maintenance_database.clone(),
        monitor: Monitor::start(
            planned.conn.clone(),
            config.connection.maintenance_database.clone(),
            planned.server_version_num,
        ),
        snapshots: Snapshots::new(planned.conn.clone()),
        permits: Arc::new(Semaphore::new(
            opts.jobs.unwrap_or(config.backup.jobs).max(1),
        )),
        lock_retries: config.backup.lock_retries,
        retry_delay: config.backup.retry_delay,
        shutdown: shutdown.clone(),
        count_rows: config.backup.count_rows,
        progress: Progress::new(jobs.len() as u64, opts.progress),
    });
    let mut set = JoinSet::new();
    let total = jobs.len();
    let mut results: Vec<(usize, GroupReport)> = Vec::with_capacity(total);
    let collect = |r: Result<(usize, GroupReport), tokio::task::JoinError>,
                   results: &mut Vec<(usize, GroupReport)>| match r {
        Ok(r) => results.push(r),
        Err(e) => tracing::error!("a dump task panicked: {e}"),
    };
    // First attempts start in the order of `jobs` (largest groups first): each takes its slot
    // here, in turn, before its task exists. Retries queue for slots on their own.
    for (i, job) in jobs.into_iter().enumerate() {
        let first = tokio::select! {
            p = ctx.permits.clone().acquire_owned() => Some(p.expect("semaphore is never closed")),
            _ = stopped(shutdown.clone()) => None,
        };
        let ctx = ctx.clone();
        set.spawn(async move { (i, run_job(&ctx, job, first).await) });
        // Finished tasks keep their (large) futures' memory until joined: join them as we go,
        // so memory stays flat however many groups there are.
        while let Some(r) = set.try_join_next() {
            collect(r, &mut results);
        }
    }
    while let Some(r) = set.join_next().await {
        collect(r, &mut results);
    }
    ctx.progress.finish();
    results.sort_by_key(|(i, _)| *i);
    let mut group_reports: Vec<GroupReport> = results.into_iter().map(|(_, r)| r).collect();
    for (db, err) in &planned.unreadable {
        let now = now_rfc3339();
        let mut r = GroupReport::new(
            Kind::Schema,
            Some(db.clone()),
            store::SCHEMA_GROUP.into(),
            Vec::new(),
            now.clone(),
        );
        r.finished_at = now;
        r.status = Status::Failed;
        r.error = Some(format!("cannot read the catalog of database {db:?}: {err}"));
        group_reports.push(r);
    }

    // Prune under the same lock; a group whose dump failed in this run loses nothing.
    let interrupted = *shutdown.borrow();
    let prune = match &config.retention {
        Some(r) if r.prune_after_run && interrupted.is_none() => {
            let protect: HashSet<crate::prune::GroupKey> = group_reports
                .iter()
                .filter(|g| g.status == Status::Failed)
                .map(|g| (g.database.clone(), g.group.clone()))
                .collect();
            let (config, r) = (config.clone(), r.clone());
            tokio::task::spawn_blocking(move || crate::prune::prune(&config, &r, &protect, false))
                .await
                .ok()
        }
        _ => None,
    };

    let failed = group_reports.iter().any(|g| g.status == Status::Failed);
    let report = RunReport {
        run_id: run_id.clone(),
        started_at,
        finished_at: now_rfc3339(),
        status: match (interrupted, failed) {
            (Some(_), _) => Status::Interrupted,
            (None, true) => Status::Failed,
            (None, false) => Status::Ok,
        },
        host: crate::report::host_name(),
        server: planned.conn.target(),
        dir: absolute(&root),
        config: absolute(&config.path),
        pg_dump_version: tools.version.clone(),
        groups: group_reports,
        warnings: planned.plan.warnings.clone(),
        prune,
        notification: None,
        signal: interrupted.map(|s| signal_name(s).to_string()),
    };
    let report_path = opts
        .report
        .clone()
        .unwrap_or_else(|| store::report_path(&root, &run_id));
    let json = serde_json::to_vec_pretty(&report).expect("report serializes");
    if let Err(e) = store::write_atomic(&report_path, &json) {
        return Err(Failure::Report(
            anyhow::anyhow!("cannot write the run report {}: {e}", report_path.display()),
            Box::new(report),
        ));
    }
    tracing::info!(
        "run {run_id} finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok((report, report_path))
}

/// The run's work list: globals, then each database's schema, then the groups, largest first.
fn make_jobs(
    config: &Config,
    opts: &RunOptions,
    planned: &Planned,
    root: &Path,
    run_id: &str,
) -> Vec<Job> {
    let b = &config.backup;
    let filtered = !opts.groups.is_empty() || !opts.databases.is_empty();
    let mut jobs: Vec<Job> = Vec::new();
    if b.globals && !filtered {
        jobs.push(Job {
            kind: Kind::Globals,
            database: None,
            group: store::GLOBALS_GROUP.into(),
            tables: Vec::new(),
            table_oids: Vec::new(),
            dump: DumpKind::Globals {
                role_passwords: planned.role_passwords,
            },
            path: store::globals_path(root, run_id),
            lock_wait_timeout: b.lock_wait_timeout,
            yield_after: None,
        });
    }
    if b.schema && opts.groups.is_empty() {
        for db in &planned.plan.databases {
            jobs.push(Job {
                kind: Kind::Schema,
                database: Some(db.database.clone()),
                group: store::SCHEMA_GROUP.into(),
                tables: Vec::new(),
                table_oids: db
                    .groups
                    .iter()
                    .flat_map(|g| g.tables.iter().map(|t| t.oid))
                    .collect(),
                dump: DumpKind::Schema {
                    exclude_data: db.all_tables.clone(),
                },
                path: store::dump_path(root, &db.database, store::SCHEMA_GROUP, run_id),
                lock_wait_timeout: b.lock_wait_timeout,
                yield_after: b.yield_after,
            });
        }
    }
    let mut groups: Vec<GroupPlan> = planned
        .plan
        .databases
        .iter()
        .flat_map(|d| d.groups.iter().cloned())
        .filter(|g| opts.groups.is_empty() || opts.groups.contains(&g.group))
        .collect();
    plan::by_size_desc(&mut groups);
    for g in groups {
        let own = config
            .groups
            .iter()
            .find(|c| c.database == g.database && c.name == g.group);
        jobs.push(Job {
            kind: Kind::Tables,
            path: store::dump_path(root, &g.database, &g.group, run_id),
            database: Some(g.database.clone()),
            tables: g.table_names(),
            table_oids: g.tables.iter().map(|t| t.oid).collect(),
            dump: DumpKind::Tables(
                g.tables
                    .iter()
                    .map(|t| (t.schema_name.clone(), t.table_name.clone()))
                    .collect(),
            ),
            lock_wait_timeout: own
                .and_then(|c| c.lock_wait_timeout)
                .unwrap_or(b.lock_wait_timeout),
            yield_after: own.and_then(|c| c.yield_after).unwrap_or(b.yield_after),
            group: g.group,
        });
    }
    jobs
}

/// A run id (UTC `yyyymmddThhmmssZ`) later than the previous run's, waiting for the next
/// second if the previous run started in this one.
async fn new_run_id(previous: Option<&str>) -> String {
    loop {
        let id = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        match previous {
            Some(p) if id.as_str() <= p => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return id,
        }
    }
}

/// Runs a job to its end: attempts until one succeeds, one fails for a reason retrying will
/// not mend, or the lock retries are spent. Between attempts the job gives its slot to others.
async fn run_job(ctx: &Ctx, job: Job, first: Option<OwnedSemaphorePermit>) -> GroupReport {
    let label = crate::printable(&format!(
        "{}/{}",
        job.database.as_deref().unwrap_or("(cluster)"),
        job.group
    ));
    let mut report = GroupReport::new(
        job.kind,
        job.database.clone(),
        job.group.clone(),
        job.tables.clone(),
        now_rfc3339(),
    );
    let started = Instant::now();
    let max_attempts = 1 + ctx.lock_retries;
    let mut first = Some(first);
    for number in 1..=max_attempts {
        let slot = match first.take() {
            Some(given) => given,
            None => tokio::select! {
                p = ctx.permits.clone().acquire_owned() => Some(p.expect("semaphore is never closed")),
                _ = stopped(ctx.shutdown.clone()) => None,
            },
        };
        let permit = match slot {
            Some(p) if ctx.shutdown.borrow().is_none() => p,
            _ => {
                let sig = stopped(ctx.shutdown.clone()).await;
                let mut a = Attempt::new(number, now_rfc3339());
                a.outcome = Outcome::Interrupted;
                a.error = Some(format!(
                    "interrupted by {} before it started",
                    signal_name(sig)
                ));
                report.status = Status::Failed;
                report.error = a.error.clone();
                report.attempts.push(a);
                break;
            }
        };
        let shown = ctx.progress.started(&label);
        let (attempt, outcome) = attempt(ctx, &job, number).await;
        drop(permit);
        let retry = attempt.outcome.is_retryable() && number < max_attempts;
        ctx.progress.finished(
            shown,
            !retry,
            outcome.is_ok(),
            outcome.as_ref().map(|f| f.bytes).unwrap_or(0),
        );
        report.attempts.push(attempt);
        match outcome {
            Ok(finished) => {
                let last = report.attempts.last().expect("just pushed");
                report.snapshot = last.snapshot.clone();
                report.row_counts = last.row_counts.clone();
                report.table_oids = (job.kind == Kind::Tables).then(|| job.table_oids.clone());
                report.lock_wait_ms = last.lock_wait_ms;
                let what = match job.kind {
                    Kind::Tables => format!("{}, ", crate::plural(job.tables.len(), "table")),
                    _ => String::new(),
                };
                tracing::info!(
                    "ok {label} ({what}{}) in {:.1}s{}",
                    crate::plan::human_bytes(finished.bytes),
                    last.duration_ms as f64 / 1000.0,
                    if number > 1 {
                        format!(", attempt {number}")
                    } else {
                        String::new()
                    }
                );
                report.file = Some(job.path.display().to_string());
                report.bytes = Some(finished.bytes);
                report.sha256 = Some(finished.sha256);
                report.warnings = last.warnings.clone();
                break;
            }
            Err(e) if retry => {
                let delay = ctx.retry_delay * number;
                tracing::warn!(
                    "{label}: attempt {number} of {max_attempts}: {e}; retrying in {}",
                    humantime::format_duration(delay)
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    sig = stopped(ctx.shutdown.clone()) => {
                        report.status = Status::Failed;
                        report.error = Some(format!("{e} (then interrupted by {} before the next attempt)", signal_name(sig)));
                        break;
                    }
                }
            }
            Err(e) => {
                let error = if report.attempts.len() > 1 {
                    format!(
                        "{e} (after {} attempts; see attempts for each)",
                        report.attempts.len()
                    )
                } else {
                    e
                };
                tracing::error!("FAILED {label}: {error}");
                report.status = Status::Failed;
                report.error = Some(error);
                break;
            }
        }
    }
    report.finished_at = now_rfc3339();
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

/// One attempt at a dump: write the `.ing`, watch the lock window, commit or clean up.
async fn attempt(ctx: &Ctx, job: &Job, number: u32) -> (Attempt, Result<store::Finished, String>) {
    let started = Instant::now();
    let mut a = Attempt::new(number, now_rfc3339());
    let database = job
        .database
        .clone()
        .unwrap_or_else(|| ctx.maintenance.clone());
    let app = application_name(&job.group);
    let result: Result<store::Finished, String> = async {
        let partial = store::create_partial(&job.path).map_err(|e| {
            format!(
                "cannot create {}: {}",
                store::partial_path(&job.path).display(),
                io_message(&e)
            )
        })?;
        // Globals take no table locks: nothing to watch.
        let watch = (job.kind != Kind::Globals)
            .then(|| ctx.monitor.watch(&database, &app, job.yield_after));
        let yielded_to: Arc<Mutex<Option<Session>>> = Arc::default();
        let (watch, yield_rx) = match watch {
            Some(mut w) => {
                let (_tx, dummy) = tokio::sync::oneshot::channel();
                let rx = std::mem::replace(&mut w.yield_rx, dummy);
                (Some(w), Some(rx))
            }
            None => (None, None),
        };
        let shutdown = ctx.shutdown.clone();
        let cancel = {
            let yielded_to = yielded_to.clone();
            let yielded = async move {
                match yield_rx {
                    Some(rx) => match rx.await {
                        Ok(s) => {
                            let why = format!(
                                "yielded to a session waiting for a lock: {}",
                                s.describe()
                            );
                            *yielded_to.lock().expect("yield slot") = Some(s);
                            why
                        }
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            async move {
                tokio::select! {
                    why = yielded => why,
                    sig = stopped(shutdown) => format!("interrupted by {}", signal_name(sig)),
                }
            }
        };
        // The group's snapshot, exported by a session of ours that locks nothing.
        let exported = match job.kind {
            Kind::Globals => None,
            _ => match ctx.snapshots.export(&database).await {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::debug!(
                        "no exported snapshot for {}: {e}",
                        crate::printable(&job.group)
                    );
                    None
                }
            },
        };
        a.snapshot = exported.as_ref().map(|e| e.info.clone());
        let req = dump::DumpRequest {
            kind: &job.dump,
            database: &database,
            application_name: &app,
            lock_wait_timeout: job.lock_wait_timeout,
            snapshot: exported.as_ref().map(|e| e.id.as_str()),
            out: &partial,
        };
        let child = dump::run_child(&ctx.settings, &req, cancel).await;
        if let Some(e) = exported {
            if let (Ok(_), DumpKind::Tables(pairs), true) = (&child, &job.dump, ctx.count_rows) {
                // Counting takes ACCESS SHARE again: it yields to DDL like the dump did.
                let mut w = ctx.monitor.watch_pid(e.pid, job.yield_after);
                let counted = tokio::select! {
                    r = ctx.snapshots.count_rows(&e, pairs, job.lock_wait_timeout) => r,
                    Ok(s) = &mut w.yield_rx => {
                        ctx.monitor.cancel(e.pid).await;
                        Err(format!("cancelled, yielding to a waiting session: {}", s.describe()))
                    }
                };
                drop(w);
                match counted {
                    Ok(counts) => {
                        a.row_counts = Some(job.tables.iter().cloned().zip(counts).collect());
                    }
                    Err(err) => {
                        tracing::warn!("{}: rows not counted: {err}", crate::printable(&job.group))
                    }
                }
            }
            ctx.snapshots.release(e).await;
        }
        let observed = watch.map(|w| w.finish()).unwrap_or_default();
        if a.snapshot.is_none() {
            a.snapshot = observed.snapshot_at.clone().map(|t| SnapshotInfo {
                taken_at: t,
                wal_lsn: None,
            });
        }
        a.lock_wait_ms = observed.lock_wait.as_millis() as u64;
        let outcome = match child {
            Ok(warnings) => {
                a.warnings = (!warnings.is_empty()).then_some(warnings);
                let (p, f) = (partial.clone(), job.path.clone());
                match tokio::task::spawn_blocking(move || store::commit(&p, &f)).await {
                    Ok(Ok(finished)) => Ok(finished),
                    Ok(Err(e)) => Err(format!(
                        "cannot finish {}: {}",
                        job.path.display(),
                        io_message(&e)
                    )),
                    Err(e) => Err(format!("cannot finish {}: {e}", job.path.display())),
                }
            }
            Err(ChildError::Cancelled(why)) => {
                if let Some(pid) = observed.backend_pid {
                    ctx.monitor.terminate(pid).await;
                }
                a.yielded_to = yielded_to.lock().expect("yield slot").take();
                a.outcome = if a.yielded_to.is_some() {
                    Outcome::Yielded
                } else {
                    Outcome::Interrupted
                };
                if let Some(s) = &a.yielded_to {
                    tracing::warn!(
                        "{}/{}: yielded to pid {}: {}",
                        crate::printable(&database),
                        crate::printable(&job.group),
                        s.pid,
                        s.query.as_deref().unwrap_or("(query not visible)")
                    );
                }
                Err(why)
            }
            Err(e) => {
                let text = e.to_string();
                if locks::is_lock_failure(&text) {
                    a.outcome = Outcome::LockTimeout;
                    a.blockers = if observed.blockers.is_empty() {
                        ctx.monitor
                            .conflicting_sessions(&database, &job.table_oids)
                            .await
                    } else {
                        observed.blockers.clone()
                    };
                    let who = if a.blockers.is_empty() {
                        "no blocking session was seen".to_string()
                    } else {
                        format!(
                            "blocked by {}",
                            a.blockers
                                .iter()
                                .map(Session::describe)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    };
                    Err(format!(
                        "could not lock the tables within {} ({who}): {text}",
                        humantime::format_duration(job.lock_wait_timeout)
                    ))
                } else if locks::is_connection_failure(&text) {
                    a.outcome = Outcome::ConnectionLost;
                    Err(text)
                } else if text.contains("No space left on device") {
                    Err(format!(
                        "disk full: could not write {} (No space left on device): {text}",
                        partial.display()
                    ))
                } else {
                    Err(text)
                }
            }
        };
        if outcome.is_err() {
            remove_quietly(&partial);
        }
        outcome
    }
    .await;
    if let Err(e) = &result {
        if a.outcome == Outcome::Ok {
            a.outcome = Outcome::Failed;
        }
        a.error = Some(e.clone());
    }
    a.finished_at = now_rfc3339();
    a.duration_ms = started.elapsed().as_millis() as u64;
    (a, result)
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

fn io_message(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        format!("disk full ({e})")
    } else {
        e.to_string()
    }
}

fn remove_quietly(p: &Path) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", p.display()),
    }
}
