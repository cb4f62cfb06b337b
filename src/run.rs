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
use crate::config::{Config, Engine};
use crate::connect::{application_name, ConnParams};
use crate::dump::{self, ChildError, DumpKind, DumpSettings};
use crate::locks::{self, Monitor, Session};
use crate::native::{self, SchemaToc};
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
    engine: Engine,
    /// A schema job whose archive native groups cut: where it publishes the TOC.
    toc: Option<Arc<TocSlot>>,
}

/// What the native engine knows of a database once its schema archive is taken.
type TocResult = Result<Arc<SchemaToc>, String>;

/// Where a schema job hands its archive's TOC to the native groups of its database.
struct TocSlot {
    /// What the schema snapshot said, recorded by the successful attempt.
    recorded: Mutex<Option<native::Recorded>>,
    tx: watch::Sender<Option<TocResult>>,
}

/// How the native groups of a database get its TOC.
#[derive(Clone)]
enum TocSource {
    /// From the run's schema job.
    Job(watch::Receiver<Option<TocResult>>),
    /// From a `pg_dump --schema-only` of our own, taken by the first group that needs it
    /// (the run takes no schema dump of that database).
    Private(Arc<tokio::sync::OnceCell<TocResult>>),
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
    native: native::Sessions,
    /// Native files being written and fsynced at once.
    finishing: Arc<Semaphore>,
    tocs: std::collections::HashMap<String, TocSource>,
    /// zlib level of native archives (-1: default).
    compression: i32,
    root: PathBuf,
    run_id: String,
    lock_wait_timeout: Duration,
    yield_after: Option<Duration>,
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
    let tocs = toc_sources(&jobs);
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
        native: native::Sessions::new(
            planned.conn.clone(),
            opts.jobs.unwrap_or(config.backup.jobs),
        ),
        finishing: Arc::new(Semaphore::new(
            (2 * opts.jobs.unwrap_or(config.backup.jobs)).max(4),
        )),
        tocs,
        compression: config.backup.compress.map(i32::from).unwrap_or(-1),
        root: root.clone(),
        run_id: run_id.clone(),
        lock_wait_timeout: config.backup.lock_wait_timeout,
        yield_after: config.backup.yield_after,
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
        // A native group waits for its database's schema archive before it takes a slot:
        // the schema job may need slots for its retries.
        if let (Engine::Native, Some(TocSource::Job(rx))) = (
            job.engine,
            job.database.as_ref().and_then(|d| ctx.tocs.get(d)),
        ) {
            let mut rx = rx.clone();
            tokio::select! {
                _ = rx.wait_for(Option::is_some) => {}
                _ = stopped(shutdown.clone()) => {}
            }
        }
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
            engine: Engine::PgDump,
            toc: None,
        });
    }
    let mut groups: Vec<GroupPlan> = planned
        .plan
        .databases
        .iter()
        .flat_map(|d| d.groups.iter().cloned())
        .filter(|g| opts.groups.is_empty() || opts.groups.contains(&g.group))
        .collect();
    plan::by_size_desc(&mut groups);
    let own = |g: &GroupPlan| {
        config
            .groups
            .iter()
            .find(|c| c.database == g.database && c.name == g.group)
    };
    let engine = |g: &GroupPlan| own(g).and_then(|c| c.engine).unwrap_or(b.engine);
    let native_dbs: HashSet<&str> = groups
        .iter()
        .filter(|g| engine(g) == Engine::Native)
        .map(|g| g.database.as_str())
        .collect();
    if b.schema && opts.groups.is_empty() {
        for db in &planned.plan.databases {
            let toc = native_dbs.contains(db.database.as_str()).then(|| {
                Arc::new(TocSlot {
                    recorded: Mutex::new(None),
                    tx: watch::channel(None).0,
                })
            });
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
                    exclude_data: db.schema_data_exclusions(),
                },
                path: store::dump_path(root, &db.database, store::SCHEMA_GROUP, run_id),
                lock_wait_timeout: b.lock_wait_timeout,
                yield_after: b.yield_after,
                engine: Engine::PgDump,
                toc,
            });
        }
    }
    for g in groups {
        let engine = engine(&g);
        let own = own(&g);
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
            engine,
            toc: None,
        });
    }
    jobs
}

/// Where the native groups of each database get their TOC: from the run's schema job, or
/// from a private schema dump when the run takes none of that database.
fn toc_sources(jobs: &[Job]) -> std::collections::HashMap<String, TocSource> {
    let mut tocs = std::collections::HashMap::new();
    for j in jobs {
        if let (Some(slot), Some(db)) = (&j.toc, &j.database) {
            tocs.insert(db.clone(), TocSource::Job(slot.tx.subscribe()));
        }
    }
    for j in jobs {
        if let (Engine::Native, Some(db)) = (j.engine, &j.database) {
            tocs.entry(db.clone())
                .or_insert_with(|| TocSource::Private(Arc::default()));
        }
    }
    tocs
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
    let label = crate::text::printable(&format!(
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
    let mut native = job.engine == Engine::Native && job.kind == Kind::Tables;
    for number in 1..=max_attempts {
        let slot = match first.take() {
            Some(given) => given,
            None => tokio::select! {
                p = ctx.permits.clone().acquire_owned() => Some(p.expect("semaphore is never closed")),
                _ = stopped(ctx.shutdown.clone()) => None,
            },
        };
        let mut permit = match slot {
            Some(p) if ctx.shutdown.borrow().is_none() => Some(p),
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
        let (attempt, outcome) = if native {
            match native_attempt(ctx, &job, number, &mut permit).await {
                NativeTry::Done(a, outcome) => (*a, outcome),
                NativeTry::Fallback { why, quiet } => {
                    native = false;
                    if quiet {
                        tracing::debug!("{label}: dumped with pg_dump: {why}");
                    } else {
                        tracing::warn!("{label}: dumped with pg_dump: {why}");
                    }
                    report.fallback = Some(why);
                    attempt(ctx, &job, number).await
                }
            }
        } else {
            attempt(ctx, &job, number).await
        };
        drop(permit);
        if job.kind == Kind::Tables {
            report.engine = Some(if native {
                Engine::Native
            } else {
                Engine::PgDump
            });
        }
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
                    Kind::Tables => format!("{}, ", crate::text::plural(job.tables.len(), "table")),
                    _ => String::new(),
                };
                tracing::info!(
                    "ok {label} ({what}{}) in {:.1}s{}",
                    crate::text::human_bytes(finished.bytes),
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
    if let (Some(slot), Some(db)) = (&job.toc, &job.database) {
        let recorded = slot.recorded.lock().expect("toc slot").take();
        let toc = if report.status == Status::Ok {
            load_toc(job.path.clone(), recorded).await
        } else {
            Err(format!(
                "the schema dump failed: {}",
                report.error.as_deref().unwrap_or("unknown error")
            ))
        };
        warn_if_unusable(db, &toc);
        slot.tx.send_replace(Some(toc));
    }
    report
}

/// The one log line for a database whose groups the native engine cannot dump.
fn warn_if_unusable(database: &str, toc: &TocResult) {
    if let Err(e) = toc {
        tracing::warn!(
            "{}: the native engine cannot use the schema archive ({e}); the groups of this database are dumped with pg_dump",
            crate::text::printable(database)
        );
    }
}

/// Reads a schema archive's TOC for the native engine.
async fn load_toc(path: PathBuf, recorded: Option<native::Recorded>) -> TocResult {
    let recorded =
        recorded.ok_or_else(|| "the catalog could not be read in its snapshot".to_string())?;
    tokio::task::spawn_blocking(move || SchemaToc::load(&path, recorded))
        .await
        .map_err(|e| e.to_string())?
        .map(Arc::new)
}

/// The schema TOC of `database` for its native groups: the run's schema archive, or one
/// taken now for the purpose (and removed once read).
async fn schema_toc(ctx: &Ctx, database: &str) -> TocResult {
    match ctx.tocs.get(database) {
        None => Err("no schema archive is planned".into()),
        Some(TocSource::Job(rx)) => {
            let mut rx = rx.clone();
            let result = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().expect("waited for Some"),
                Err(_) => Err("the schema dump ended without a result".into()),
            };
            result
        }
        Some(TocSource::Private(cell)) => cell
            .get_or_init(|| private_toc(ctx, database))
            .await
            .clone(),
    }
}

/// Takes a `pg_dump --schema-only` archive of `database` in a snapshot of ours, reads its TOC
/// and removes it. Its name ends in `.ing`, so a crash leaves nothing the next run keeps.
async fn private_toc(ctx: &Ctx, database: &str) -> TocResult {
    // In the backup directory itself: no directory appears for a dump the run does not keep.
    let schema = store::schema_toc_path(&ctx.root, database, &ctx.run_id);
    let slot = Arc::new(TocSlot {
        recorded: Mutex::new(None),
        tx: watch::channel(None).0,
    });
    let job = Job {
        kind: Kind::Schema,
        database: Some(database.to_string()),
        group: store::SCHEMA_GROUP.into(),
        tables: Vec::new(),
        table_oids: Vec::new(),
        dump: DumpKind::SchemaOnly,
        path: schema,
        lock_wait_timeout: ctx.lock_wait_timeout,
        yield_after: ctx.yield_after,
        engine: Engine::PgDump,
        toc: Some(slot.clone()),
    };
    let mut last = String::new();
    for number in 1..=1 + ctx.lock_retries {
        let (a, result) = attempt(ctx, &job, number).await;
        match result {
            Ok(_) => {
                let recorded = slot.recorded.lock().expect("toc slot").take();
                let toc = load_toc(job.path.clone(), recorded).await;
                remove_quietly(&job.path);
                warn_if_unusable(database, &toc);
                return toc;
            }
            Err(e) if a.outcome.is_retryable() && ctx.shutdown.borrow().is_none() => {
                last = e;
                tokio::time::sleep(ctx.retry_delay * number).await;
            }
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    tracing::warn!(
        "{}: no schema archive for the native engine ({last}); the groups of this database are dumped with pg_dump",
        crate::text::printable(database)
    );
    Err(format!("the schema-only dump failed: {last}"))
}

/// The result of trying a group with the native engine.
enum NativeTry {
    Done(Box<Attempt>, Result<store::Finished, String>),
    /// Dump it with pg_dump instead; `quiet` when the reason was logged for the database.
    Fallback {
        why: String,
        quiet: bool,
    },
}

/// One attempt with the native engine (see [`native`]): the same lock window, yield and
/// retry rules as a pg_dump attempt, on a pooled session of ours.
///
/// The slot (`permit`) is given back as soon as the database work is done: fsyncing the file
/// need not keep the next group waiting.
async fn native_attempt(
    ctx: &Ctx,
    job: &Job,
    number: u32,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> NativeTry {
    let database = job.database.clone().expect("a group has a database");
    let toc = match schema_toc(ctx, &database).await {
        Ok(t) => t,
        Err(why) => return NativeTry::Fallback { why, quiet: true },
    };
    let started = Instant::now();
    let mut a = Attempt::new(number, now_rfc3339());
    let finish = |mut a: Attempt, result: Result<store::Finished, String>| {
        close_attempt(&mut a, &result, started);
        NativeTry::Done(Box::new(a), result)
    };
    let partial = match store::create_partial(&job.path) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!(
                "cannot create {}: {}",
                store::partial_path(&job.path).display(),
                io_message(&e)
            );
            return finish(a, Err(msg));
        }
    };
    let session = match ctx.native.take(&database).await {
        Ok(s) => s,
        Err(text) => {
            remove_quietly(&partial);
            let msg = classify_failure(
                ctx,
                job,
                &database,
                &mut a,
                &locks::Observed::default(),
                text,
                &partial,
            )
            .await;
            return finish(a, Err(msg));
        }
    };
    let mut watch = ctx.monitor.watch_pid(session.pid, job.yield_after);
    let yield_rx = std::mem::replace(&mut watch.yield_rx, tokio::sync::oneshot::channel().1);
    let req = native::Request {
        group: &job.group,
        table_oids: &job.table_oids,
        lock_wait_timeout: job.lock_wait_timeout,
        compression: ctx.compression,
        out: &partial,
        final_path: &job.path,
    };
    let cancelled = async {
        tokio::select! {
            Ok(s) = yield_rx => Ok(s),
            sig = stopped(ctx.shutdown.clone()) => Err(sig),
        }
    };
    let dumped = tokio::select! {
        r = native::dump_group(&session, &toc, &req) => Ok(r),
        c = cancelled => Err(c),
    };
    let observed = watch.finish();
    a.lock_wait_ms = observed.lock_wait.as_millis() as u64;
    let result = match dumped {
        Err(cancel) => {
            // Mid-statement or between two: ending the backend releases its locks at once.
            ctx.monitor.terminate(session.pid).await;
            drop(session);
            match cancel {
                Ok(s) => {
                    tracing::warn!(
                        "{}/{}: yielded to pid {}: {}",
                        crate::text::printable(&database),
                        crate::text::printable(&job.group),
                        s.pid,
                        s.query.as_deref().unwrap_or("(query not visible)")
                    );
                    let why = format!("yielded to a session waiting for a lock: {}", s.describe());
                    a.yielded_to = Some(s);
                    a.outcome = Outcome::Yielded;
                    Err(why)
                }
                Err(sig) => {
                    a.outcome = Outcome::Interrupted;
                    Err(format!("interrupted by {}", signal_name(sig)))
                }
            }
        }
        Ok(Ok(d)) => {
            ctx.native.give(&database, session);
            // The group's slot goes once its file has a writing slot: spooled data never piles
            // up in memory when files are written slower than groups are copied.
            let writing = ctx
                .finishing
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            drop(permit.take());
            a.snapshot = Some(d.snapshot);
            a.lock_wait_ms = d.lock_wait.as_millis() as u64;
            a.row_counts = Some(job.tables.iter().cloned().zip(d.row_counts).collect());
            match d.file.complete(writing).await {
                Ok(finished) => Ok(finished),
                Err(text) => Err(classify_failure(
                    ctx, job, &database, &mut a, &observed, text, &partial,
                )
                .await),
            }
        }
        Ok(Err(native::NativeError::Fallback(why))) => {
            ctx.native.give(&database, session);
            remove_quietly(&partial);
            return NativeTry::Fallback { why, quiet: false };
        }
        Ok(Err(native::NativeError::Server(text) | native::NativeError::Io(text))) => {
            ctx.native.give(&database, session);
            Err(classify_failure(ctx, job, &database, &mut a, &observed, text, &partial).await)
        }
    };
    if result.is_err() {
        remove_quietly(&partial);
    }
    finish(a, result)
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
                        crate::text::printable(&job.group)
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
        // For native groups, the schema snapshot's session records, while pg_dump runs, what
        // the native engine needs to cut this archive into groups.
        let child = match (&job.toc, &exported) {
            (Some(slot), Some(e)) => {
                let (child, recorded) = tokio::join!(
                    dump::run_child(&ctx.settings, &req, cancel),
                    native::record(e.client())
                );
                match recorded {
                    Ok(r) => *slot.recorded.lock().expect("toc slot") = Some(r),
                    Err(err) => tracing::warn!(
                        "{}: cannot read the catalog in the schema snapshot: {err}",
                        crate::text::printable(&database)
                    ),
                }
                child
            }
            _ => dump::run_child(&ctx.settings, &req, cancel).await,
        };
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
                        tracing::warn!(
                            "{}: rows not counted: {err}",
                            crate::text::printable(&job.group)
                        )
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
                        crate::text::printable(&database),
                        crate::text::printable(&job.group),
                        s.pid,
                        s.query.as_deref().unwrap_or("(query not visible)")
                    );
                }
                Err(why)
            }
            Err(e) => Err(classify_failure(
                ctx,
                job,
                &database,
                &mut a,
                &observed,
                e.to_string(),
                &partial,
            )
            .await),
        };
        if outcome.is_err() {
            remove_quietly(&partial);
        }
        outcome
    }
    .await;
    close_attempt(&mut a, &result, started);
    (a, result)
}

/// Records an attempt's end: its error (an error with no more specific outcome is `failed`),
/// when it finished and how long it took.
fn close_attempt(a: &mut Attempt, result: &Result<store::Finished, String>, started: Instant) {
    if let Err(e) = result {
        if a.outcome == Outcome::Ok {
            a.outcome = Outcome::Failed;
        }
        a.error = Some(e.clone());
    }
    a.finished_at = now_rfc3339();
    a.duration_ms = started.elapsed().as_millis() as u64;
}

/// Turns a failed dump's error text into the attempt's outcome and the message reported: a
/// lock timeout names the sessions in the way.
async fn classify_failure(
    ctx: &Ctx,
    job: &Job,
    database: &str,
    a: &mut Attempt,
    observed: &locks::Observed,
    text: String,
    partial: &Path,
) -> String {
    if locks::is_lock_failure(&text) {
        a.outcome = Outcome::LockTimeout;
        a.blockers = if observed.blockers.is_empty() {
            ctx.monitor
                .conflicting_sessions(database, &job.table_oids)
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
        format!(
            "could not lock the tables within {} ({who}): {text}",
            humantime::format_duration(job.lock_wait_timeout)
        )
    } else if locks::is_connection_failure(&text) {
        a.outcome = Outcome::ConnectionLost;
        text
    } else if text.contains("No space left on device") {
        format!(
            "disk full: could not write {} (No space left on device): {text}",
            partial.display()
        )
    } else {
        text
    }
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
