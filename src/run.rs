//! A backup run: lock the directory, read the catalog, plan, dump every job (several at a
//! time, largest first), write the report.
//!
//! This module is the scheduler: it owns the slots (`jobs` at once), the order, the retries
//! with their delays, the signals, the progress display and the report. How a job becomes a
//! file is the [`engine`](crate::engine)s' business; the scheduler sees each attempt as a
//! [`Tried`].
//!
//! A failing dump never stops the others: it is recorded as failed, its `.ing` file removed,
//! and the run goes on. Only problems that make every dump impossible (configuration, server
//! unreachable, pg_dump unusable, another run holding the lock) end a run early, and those
//! happen before the first dump starts.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::catalog;
use crate::config::{Config, Engine};
use crate::connect::{application_name, ConnParams};
use crate::engine::{self, stopped, Contents, Engines, Job, Shared, Tried};
use crate::exit::signal_name;
use crate::failure::Failure;
use crate::locks::Monitor;
use crate::plan::{self, ExcludeMatcher, GroupPlan, Plan};
use crate::progress::Progress;
use crate::report::{now_rfc3339, Attempt, GroupReport, Kind, Outcome, RunReport, Status};
use crate::runlock::RunLock;
use crate::store;
use crate::store::bucket::Bucket;
use crate::tools::{self, Tools};

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

/// What the scheduler of a run holds.
struct Ctx {
    engines: Engines,
    permits: Arc<Semaphore>,
    /// How many permits there are (`jobs`).
    slots: usize,
    lock_retries: u32,
    retry_delay: Duration,
    /// Set to the signal number once SIGINT or SIGTERM arrives.
    shutdown: watch::Receiver<Option<i32>>,
    progress: Arc<Progress>,
    /// `[storage]`: where each finished dump is uploaded.
    bucket: Option<Arc<Bucket>>,
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

/// What a run has found out before its first dump: the plan, the tools, where it writes.
struct Started {
    planned: Planned,
    tools: Tools,
    root: PathBuf,
    run_id: String,
    bucket: Option<Arc<Bucket>>,
    /// Files of earlier runs not in the bucket, uploaded after this run's dumps.
    unsent: Vec<PathBuf>,
    /// Held until the run ends.
    _lock: RunLock,
}

/// Runs a backup and returns its report (already written to disk).
pub async fn run(config: &Config, opts: &RunOptions) -> Result<(RunReport, PathBuf), Failure> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let shutdown = listen_for_signals();
    let mut s = start(config, opts).await?;
    let jobs = make_jobs(config, opts, &mut s.planned, &s.root, &s.run_id);
    // The display outlives the scheduler: its final line stays below the last log lines.
    let progress = Arc::new(Progress::new(jobs.len() as u64, opts.progress));
    let ctx = Arc::new(context(
        config,
        &s,
        &shutdown,
        &jobs,
        progress.clone(),
        opts.jobs,
    ));
    let mut group_reports = schedule(ctx.clone(), jobs, &shutdown).await;
    let new_since_plan = match shutdown.borrow().is_none() && opts.groups.is_empty() {
        true => new_since_plan(config, &s).await,
        false => Vec::new(),
    };
    let late: Vec<Job> = new_since_plan
        .iter()
        .filter(|(_, n)| n.dump_alone)
        .map(|(db, n)| new_table_job(config, &s, db, n))
        .collect();
    if !late.is_empty() {
        group_reports.extend(schedule(ctx, late, &shutdown).await);
    }
    group_reports.extend(unreadable_reports(&s.planned));
    // A new partition attached to a group's partitioned table was dumped with it.
    let dumped: HashSet<(Option<&str>, u32)> = group_reports
        .iter()
        .filter(|g| g.status == Status::Ok)
        .flat_map(|g| {
            let db = g.database.as_deref();
            g.table_oids.iter().flatten().map(move |o| (db, *o))
        })
        .collect();
    let new_since_plan: Vec<crate::report::NewTable> = new_since_plan
        .iter()
        .map(|(db, n)| crate::report::NewTable {
            database: db.clone(),
            table: n.table.display(),
            oid: n.table.oid,
            dumped: dumped.contains(&(Some(db.as_str()), n.table.oid)),
        })
        .collect();

    // Files whose upload failed in earlier runs: after this run's own dumps, which come
    // first, and before the prune (which keeps them when their upload fails again).
    let interrupted = *shutdown.borrow();
    let retried_uploads = match (&s.bucket, interrupted) {
        (Some(b), None) => b.retry_unsent(s.unsent.clone()).await,
        _ => Vec::new(),
    };
    // Prune under the same lock; a group whose dump failed in this run loses nothing.
    let prune = match interrupted {
        None => prune_after(config, &group_reports, s.bucket.clone()).await,
        Some(_) => None,
    };
    let failed = group_reports.iter().any(|g| g.status == Status::Failed)
        || retried_uploads.iter().any(|r| !r.ok);
    let report = RunReport {
        run_id: s.run_id.clone(),
        started_at,
        finished_at: now_rfc3339(),
        status: match (interrupted, failed) {
            (Some(_), _) => Status::Interrupted,
            (None, true) => Status::Failed,
            (None, false) => Status::Ok,
        },
        host: crate::report::host_name(),
        server: s.planned.conn.target(),
        dir: absolute(&s.root),
        config: absolute(&config.path),
        pg_dump_version: s.tools.version.clone(),
        groups: group_reports,
        warnings: s.planned.plan.warnings.clone(),
        prune,
        notification: None,
        signal: interrupted.map(|s| signal_name(s).to_string()),
        new_since_plan,
        retried_uploads,
    };
    let report_path = crate::crypt::written_path(
        opts.report
            .clone()
            .unwrap_or_else(|| store::report_path(&s.root, &s.run_id)),
        config.encryption.as_ref(),
    );
    if let Err(e) = report.write(&report_path, config.encryption.as_ref()) {
        return Err(Failure::Report(
            anyhow::anyhow!("cannot write the run report {}: {e}", report_path.display()),
            Box::new(report),
        ));
    }
    if let Some(bucket) = &s.bucket {
        if report_path.starts_with(&s.root) {
            let (_, sha256) = store::hash_file(&report_path).unwrap_or_default();
            if let Err(e) = bucket.upload(&report_path, &sha256).await {
                return Err(Failure::Report(e.into(), Box::new(report)));
            }
        }
        // Not reached by a run that ends in error: the next one compares the bucket with dir.
        bucket.end_run();
    }
    tracing::info!(
        "run {} finished in {:.1}s",
        s.run_id,
        started.elapsed().as_secs_f64()
    );
    drop(progress);
    Ok((report, report_path))
}

/// Everything before the first dump: the tools run, the catalog read, the plan checked
/// against it, then — and only then — the backup directory created and locked, a crashed
/// run's leftovers swept, the run id chosen.
async fn start(config: &Config, opts: &RunOptions) -> Result<Started, Failure> {
    let (pg_dump, pg_dumpall) = tools::locate(
        config.backup.pg_dump.as_deref(),
        config.backup.pg_dumpall.as_deref(),
    )
    .map_err(|e| Failure::Start(e.into()))?;
    // The binary must run at all before we bother the server.
    tools::binary_version(&pg_dump)
        .await
        .map_err(|e| Failure::Start(e.into()))?;

    let planned = build_plan(config, &opts.databases, true).await?;
    let tools = tools::check_tools(&pg_dump, &pg_dumpall, planned.server_version_num)
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    check_pg_dump_version(config, &tools)?;
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
    let (bucket, unsent) = open_bucket(config, &root).await?;
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
    Ok(Started {
        planned,
        tools,
        root,
        run_id,
        bucket,
        unsent,
        _lock: lock,
    })
}

/// The bucket of `[storage]`, and the files of earlier runs not in it.
type Opened = (Option<Arc<Bucket>>, Vec<PathBuf>);

/// Opens `[storage]`'s bucket, checks that it can be listed (credentials, bucket name,
/// endpoint), aborts the uploads a killed run left and finds the files of earlier runs whose
/// upload failed.
async fn open_bucket(config: &Config, root: &Path) -> Result<Opened, Failure> {
    let Some(cfg) = &config.storage else {
        return Ok((None, Vec::new()));
    };
    if cfg.insecure {
        tracing::warn!(
            "storage.endpoint {}: plain http, the dumps and the requests travel unencrypted",
            cfg.endpoint.as_deref().unwrap_or_default()
        );
    }
    let start = |e: store::bucket::BucketError| Failure::Start(e.into());
    let bucket = Bucket::open(cfg, root).map_err(start)?;
    bucket.check().await.map_err(start)?;
    for key in bucket.abort_stale().await.map_err(start)? {
        tracing::info!("aborted the upload of {key}, left by an interrupted run");
    }
    let unsent = bucket
        .begin_run(|| committed_files(root))
        .await
        .map_err(start)?;
    if !unsent.is_empty() {
        tracing::info!(
            "{} of earlier runs not in the bucket: uploaded after this run's dumps",
            crate::text::plural(unsent.len(), "file")
        );
    }
    Ok((Some(Arc::new(bucket)), unsent))
}

/// What the configuration asks of pg_dump's version: statistics need pg_dump 18, compression
/// methods other than gzip pg_dump 16 (archive 1.15). A configuration that asks for more
/// than its pg_dump does is an error before anything is written.
fn check_pg_dump_version(config: &Config, tools: &Tools) -> Result<(), Failure> {
    if config.backup.statistics && tools.major < 18 {
        return Err(Failure::Config(crate::config::ConfigError::new(
            &config.path,
            "backup.statistics",
            format!(
                "true: {} is version {}, and only pg_dump 18 or later dumps statistics (set backup.pg_dump to a newer pg_dump, or leave statistics out)",
                tools.pg_dump.display(),
                tools.version
            ),
        )));
    }
    if tools.major >= 16 {
        return Ok(());
    }
    let wanted = std::iter::once(("backup.compression".to_string(), config.backup.compression))
        .chain(config.groups.iter().filter_map(|g| {
            g.compression
                .map(|c| (format!("group[{}].compression", g.index), c))
        }));
    for (key, c) in wanted {
        if !c.before_pg16() {
            return Err(Failure::Config(crate::config::ConfigError::new(
                &config.path,
                key,
                format!(
                    "{c}: {} is version {}, and only pg_dump 16 or later writes lz4 or zstd (set backup.pg_dump to a newer pg_dump, or use gzip)",
                    tools.pg_dump.display(),
                    tools.version
                ),
            )));
        }
    }
    Ok(())
}

/// The scheduler's state and the run's engines.
fn context(
    config: &Config,
    s: &Started,
    shutdown: &watch::Receiver<Option<i32>>,
    jobs: &[Job],
    progress: Arc<Progress>,
    slots: Option<usize>,
) -> Ctx {
    let b = &config.backup;
    let slots = slots.unwrap_or(b.jobs);
    let conn = s.planned.conn.clone();
    let maintenance = config.connection.maintenance_database.clone();
    let shared = Arc::new(Shared {
        monitor: Monitor::start(
            conn.clone(),
            maintenance.clone(),
            s.planned.server_version_num,
        ),
        slots: Arc::new(Semaphore::new(slots.max(1))),
        jobs: slots.max(1),
        shutdown: shutdown.clone(),
        lock_retries: b.lock_retries,
        retry_delay: b.retry_delay,
    });
    let settings = engine::Settings {
        tools: s.tools.clone(),
        conn,
        maintenance,
        jobs: slots,
        count_rows: b.count_rows,
        statistics: b.statistics,
        split_above: b.split_above,
        root: s.root.clone(),
        run_id: s.run_id.clone(),
        lock_wait_timeout: b.lock_wait_timeout,
        yield_after: b.yield_after,
        seal: config.encryption.clone(),
    };
    Ctx {
        permits: shared.slots.clone(),
        slots: shared.jobs,
        engines: Engines::new(settings, shared, jobs),
        lock_retries: b.lock_retries,
        retry_delay: b.retry_delay,
        shutdown: shutdown.clone(),
        progress,
        bucket: s.bucket.clone(),
    }
}

/// Runs every job and returns their reports, in the order of `jobs`.
///
/// First attempts start in the order of `jobs` (largest groups first): each takes its slot
/// here, in turn, before its task exists. A job that is not ready yet (a native group whose
/// database's schema archive is still being taken) lets the jobs behind it go first, and
/// takes the next free slot once it is ready. Retries queue for slots on their own.
async fn schedule(
    ctx: Arc<Ctx>,
    jobs: Vec<Job>,
    shutdown: &watch::Receiver<Option<i32>>,
) -> Vec<GroupReport> {
    let total = jobs.len();
    let mut pending: VecDeque<(usize, Job)> = jobs.into_iter().enumerate().collect();
    let mut readiness = ctx.engines.readiness();
    let mut set = JoinSet::new();
    let mut results: Vec<(usize, GroupReport)> = Vec::with_capacity(total);
    let collect = |r: Result<(usize, GroupReport), tokio::task::JoinError>,
                   results: &mut Vec<(usize, GroupReport)>| match r {
        Ok(r) => results.push(r),
        Err(e) => tracing::error!("a dump task panicked: {e}"),
    };
    while !pending.is_empty() {
        let stopping = shutdown.borrow().is_some();
        let Some(next) = pending
            .iter()
            .position(|(_, j)| stopping || ctx.engines.ready(j))
        else {
            readiness.borrow_and_update();
            if pending.iter().all(|(_, j)| !ctx.engines.ready(j)) {
                tokio::select! {
                    _ = readiness.changed() => {}
                    _ = stopped(shutdown.clone()) => {}
                }
            }
            continue;
        };
        let (i, job) = pending.remove(next).expect("found above");
        let first = tokio::select! {
            p = ctx.permits.clone().acquire_many_owned(job.slots(ctx.slots)) => Some(p.expect("semaphore is never closed")),
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
    // The indices are distinct: an unstable sort is the same order, without a copy of them all.
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// One more pass over the catalog of each planned database, after every planned dump: the
/// tables created during the run, logged. A database whose catalog cannot be read now is
/// logged and passed over.
async fn new_since_plan(config: &Config, s: &Started) -> Vec<(String, plan::NewTable)> {
    let mut out = Vec::new();
    for db in &s.planned.plan.databases {
        let cat = async {
            let c = s
                .planned
                .conn
                .connect(&db.database, &application_name("catalog"))
                .await?;
            // Mostly there is none: asked first, the catalog is read again only if there is.
            let known: Vec<u32> = db.known_oids.iter().copied().collect();
            if !catalog::has_table_not_in(&c, &known).await? {
                return Ok(None);
            }
            Ok::<_, anyhow::Error>(Some(catalog::read_database(&c, &db.database).await?))
        }
        .await;
        let cat = match cat {
            Ok(Some(cat)) => cat,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(
                    "{}: cannot look for tables created during the run: {e:#}",
                    crate::text::printable(&db.database)
                );
                continue;
            }
        };
        for n in plan::new_since_plan(config, db, &cat) {
            tracing::warn!(
                "{}: table {} is new since the plan; {}",
                crate::text::printable(&db.database),
                crate::text::printable(&n.table.display()),
                if n.dump_alone {
                    "dumped on its own at the end of the run"
                } else {
                    "the next run dumps it"
                }
            );
            out.push((db.database.clone(), n));
        }
    }
    out
}

/// The job of a table created during the run, dumped on its own as an ungrouped table.
fn new_table_job(config: &Config, s: &Started, database: &str, n: &plan::NewTable) -> Job {
    let b = &config.backup;
    let tables: Vec<&catalog::Table> = std::iter::once(&n.table).chain(&n.descendants).collect();
    let group = n.table.display();
    Job {
        kind: Kind::Tables,
        path: crate::crypt::written_path(
            store::dump_path(&s.root, database, &group, &s.run_id),
            config.encryption.as_ref(),
        ),
        database: Some(database.to_string()),
        tables: tables.iter().map(|t| t.display()).collect(),
        table_oids: tables.iter().map(|t| t.oid).collect(),
        contents: Contents::Tables(
            tables
                .iter()
                .map(|t| (t.schema.clone(), t.name.clone()))
                .collect(),
        ),
        group,
        lock_wait_timeout: b.lock_wait_timeout,
        yield_after: b.yield_after,
        engine: b.engine,
        compression: b.compression,
        changes: Vec::new(),
        expects_split: false,
    }
}

/// A failed schema entry for each database whose catalog could not be read.
fn unreadable_reports(planned: &Planned) -> Vec<GroupReport> {
    planned
        .unreadable
        .iter()
        .map(|(db, err)| {
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
            r
        })
        .collect()
}

/// Applies `[retention]` after the run, when it asks for that: groups that failed in this
/// run are protected.
async fn prune_after(
    config: &Config,
    reports: &[GroupReport],
    bucket: Option<Arc<Bucket>>,
) -> Option<crate::report::PruneSummary> {
    let r = config.retention.as_ref().filter(|r| r.prune_after_run)?;
    let protect: HashSet<crate::prune::GroupKey> = reports
        .iter()
        .filter(|g| g.status == Status::Failed)
        .map(|g| (g.database.clone(), g.group.clone()))
        .collect();
    let (config, r) = (config.clone(), r.clone());
    tokio::task::spawn_blocking(move || {
        crate::prune::prune(&config, &r, &protect, false, bucket.as_deref())
    })
    .await
    .ok()
}

/// The run's work list: globals, then each database's schema, then the groups, largest first.
fn make_jobs(
    config: &Config,
    opts: &RunOptions,
    planned: &mut Planned,
    root: &Path,
    run_id: &str,
) -> Vec<Job> {
    let b = &config.backup;
    let seal = config.encryption.as_ref();
    let filtered = !opts.groups.is_empty() || !opts.databases.is_empty();
    let mut jobs: Vec<Job> = Vec::new();
    if b.globals && !filtered {
        jobs.push(Job {
            kind: Kind::Globals,
            database: None,
            group: store::GLOBALS_GROUP.into(),
            tables: Vec::new(),
            table_oids: Vec::new(),
            contents: Contents::Globals {
                role_passwords: planned.role_passwords,
            },
            path: crate::crypt::written_path(store::globals_path(root, run_id), seal),
            lock_wait_timeout: b.lock_wait_timeout,
            yield_after: None,
            engine: Engine::PgDump,
            compression: b.compression,
            changes: Vec::new(),
            expects_split: false,
        });
    }
    let own = |g: &GroupPlan| {
        config
            .groups
            .iter()
            .find(|c| c.database == g.database && c.name == g.group)
    };
    let engine = |g: &GroupPlan| own(g).and_then(|c| c.engine).unwrap_or(b.engine);
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
                contents: Contents::Schema {
                    exclude_data: db.schema_data_exclusions(),
                },
                path: crate::crypt::written_path(
                    store::dump_path(root, &db.database, store::SCHEMA_GROUP, run_id),
                    seal,
                ),
                lock_wait_timeout: b.lock_wait_timeout,
                yield_after: b.yield_after,
                engine: Engine::PgDump,
                compression: b.compression,
                changes: Vec::new(),
                expects_split: false,
            });
        }
    }
    // Moved out of the plan, which the run keeps to its end.
    let mut groups: Vec<GroupPlan> = planned
        .plan
        .databases
        .iter_mut()
        .flat_map(|d| d.take_groups())
        .filter(|g| opts.groups.is_empty() || opts.groups.contains(&g.group))
        .collect();
    plan::by_size_desc(&mut groups);
    for g in groups {
        let engine = engine(&g);
        let own = own(&g);
        // Only the native engine splits a table, and only with a slot to spare.
        let expects_split = match b.split_above {
            Some(above) if engine == Engine::Native && b.jobs > 1 => g
                .tables
                .iter()
                .any(|t| u64::try_from(t.bytes).unwrap_or(0) >= above),
            _ => false,
        };
        jobs.push(Job {
            kind: Kind::Tables,
            path: crate::crypt::written_path(
                store::dump_path(root, &g.database, &g.group, run_id),
                seal,
            ),
            database: Some(g.database.clone()),
            tables: g.table_names(),
            table_oids: g.tables.iter().map(|t| t.oid).collect(),
            contents: Contents::Tables(
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
            compression: own.and_then(|c| c.compression).unwrap_or(b.compression),
            changes: Vec::new(),
            expects_split,
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
async fn run_job(ctx: &Ctx, mut job: Job, first: Option<OwnedSemaphorePermit>) -> GroupReport {
    let label = job.label();
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
                p = ctx.permits.clone().acquire_many_owned(job.slots(ctx.slots)) => Some(p.expect("semaphore is never closed")),
                _ = stopped(ctx.shutdown.clone()) => None,
            },
        };
        let mut permit = match slot {
            Some(p) if ctx.shutdown.borrow().is_none() => Some(p),
            _ => {
                let sig = stopped(ctx.shutdown.clone()).await;
                not_started(&mut report, number, sig);
                break;
            }
        };
        let shown = ctx.progress.started(&label);
        let tried = ctx.engines.attempt(&mut job, number, &mut permit).await;
        drop(permit);
        let Tried {
            attempt,
            result,
            engine,
            fallback,
        } = tried;
        if engine.is_some() {
            report.engine = engine;
        }
        if fallback.is_some() {
            report.fallback = fallback;
        }
        let retry = attempt.outcome.is_retryable() && number < max_attempts;
        ctx.progress.finished(
            shown,
            !retry,
            matches!(result, Ok(_) | Err(engine::AttemptError::Gone)),
            result.as_ref().map(|f| f.bytes).unwrap_or(0),
        );
        report.attempts.push(attempt);
        match result {
            Ok(finished) => {
                succeeded(&mut report, &job, finished, number);
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
            Err(engine::AttemptError::Gone) => {
                gone(&mut report, &job);
                break;
            }
            Err(e) => {
                let error = if report.attempts.len() > 1 {
                    format!(
                        "{e} (after {} attempts; see attempts for each)",
                        report.attempts.len()
                    )
                } else {
                    e.to_string()
                };
                tracing::error!("FAILED {label}: {error}");
                report.status = Status::Failed;
                report.error = Some(error);
                break;
            }
        }
    }
    // What was dumped, under the names it had then; what changed since the plan.
    report.tables = job.tables.clone();
    report.table_changes = job.changes.clone();
    report.finished_at = now_rfc3339();
    report.duration_ms = started.elapsed().as_millis() as u64;
    // Kept until the run ends, one per group: not with the room for four attempts a first
    // push makes (≈ 1.3 KB a group).
    report.attempts.shrink_to_fit();
    let result = match report.status {
        Status::Ok => Ok(()),
        _ => Err(report.error.as_deref().unwrap_or("unknown error")),
    };
    ctx.engines.finished(&job, result).await;
    // After the engines had the file (the native engine reads the schema dump's).
    if let (Some(bucket), Status::Ok) = (&ctx.bucket, report.status) {
        upload(bucket, &mut report, &job).await;
    }
    report
}

/// Uploads a job's committed file; a failed upload fails the job, its local file kept.
async fn upload(bucket: &Bucket, report: &mut GroupReport, job: &Job) {
    let sha256 = report.sha256.clone().unwrap_or_default();
    match bucket.upload(&job.path, &sha256).await {
        Ok(up) => {
            tracing::info!(
                "uploaded {} ({})",
                up.url,
                crate::text::human_bytes(up.bytes)
            );
            report.object = Some(up.url);
            report.uploaded_bytes = Some(up.bytes);
        }
        Err(e) => {
            let error = format!("{e} (the local file {} is kept)", job.path.display());
            tracing::error!("FAILED {}: {error}", job.label());
            report.status = Status::Failed;
            report.error = Some(error);
        }
    }
}

/// Records a group whose every table was dropped after the plan: no file, no failure.
fn gone(report: &mut GroupReport, job: &Job) {
    tracing::warn!(
        "{}: every table of the group was dropped after the plan; nothing to dump",
        job.label()
    );
    report.status = Status::Gone;
}

/// Records a job the run was stopped before it started (or restarted).
fn not_started(report: &mut GroupReport, number: u32, sig: i32) {
    let mut a = Attempt::new(number, now_rfc3339());
    a.outcome = Outcome::Interrupted;
    a.error = Some(format!(
        "interrupted by {} before it started",
        signal_name(sig)
    ));
    report.status = Status::Failed;
    report.error = a.error.clone();
    report.attempts.push(a);
}

/// Records a job's successful attempt, the last in the report, and logs it.
fn succeeded(report: &mut GroupReport, job: &Job, finished: store::Finished, number: u32) {
    let last = report.attempts.last_mut().expect("just pushed");
    report.snapshot = last.snapshot.clone();
    // Moved, not copied: the attempt's are not in the report, and the report is kept in
    // memory until the run ends.
    report.row_counts = last.row_counts.take();
    report.table_oids = (job.kind == Kind::Tables).then(|| job.table_oids.clone());
    report.lock_wait_ms = last.lock_wait_ms;
    report.warnings = last.warnings.take();
    let what = match job.kind {
        Kind::Tables => format!("{}, ", crate::text::plural(job.tables.len(), "table")),
        _ => String::new(),
    };
    tracing::info!(
        "ok {} ({what}{}) in {:.1}s{}",
        job.label(),
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
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The complete files of the backup directory (dumps, schema dumps, globals, reports; never
/// `.ing`), relative to it, as prune sees them.
fn committed_files(root: &Path) -> Vec<PathBuf> {
    crate::prune::scan(root)
        .groups
        .into_iter()
        .flat_map(|g| g.dumps)
        .filter(|d| !d.partial)
        .map(|d| d.rel)
        .collect()
}
