//! A backup run: lock the directory, read the catalog, plan, dump every group (several at a
//! time, largest first), write the report.
//!
//! A failing dump never stops the others: it is recorded as failed, its `.ing` file removed,
//! and the run goes on. Only problems that make every dump impossible (configuration, server
//! unreachable, pg_dump unusable, another run holding the lock) end a run early, and those
//! happen before the first dump starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::catalog;
use crate::config::Config;
use crate::connect::{application_name, ConnParams};
use crate::dump::{self, DumpKind, DumpSettings};
use crate::plan::{self, ExcludeMatcher, GroupPlan, Plan};
use crate::report::{now_rfc3339, GroupReport, Kind, RunReport, Status};
use crate::runlock::RunLock;
use crate::store;
use crate::Failure;

/// Options of `pg_groupdump run` beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub jobs: Option<usize>,
    pub groups: Vec<String>,
    pub databases: Vec<String>,
    pub report: Option<PathBuf>,
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

/// One unit of work.
struct Job {
    kind: Kind,
    database: Option<String>,
    group: String,
    tables: Vec<String>,
    dump: DumpKind,
    path: PathBuf,
}

/// Runs a backup and returns its report (already written to disk).
pub async fn run(config: &Config, opts: &RunOptions) -> Result<(RunReport, PathBuf), Failure> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let root = config.backup.dir.clone();
    store::create_dir_all(&root).map_err(|e| {
        Failure::Start(anyhow::anyhow!(
            "cannot create backup.dir {}: {e}",
            root.display()
        ))
    })?;
    let mut lock = RunLock::acquire(&root).map_err(Failure::Locked)?;

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

    let filtered = !opts.groups.is_empty() || !opts.databases.is_empty();
    let mut jobs: Vec<Job> = Vec::new();
    if config.backup.globals && !filtered {
        jobs.push(Job {
            kind: Kind::Globals,
            database: None,
            group: store::GLOBALS_GROUP.into(),
            tables: Vec::new(),
            dump: DumpKind::Globals {
                role_passwords: planned.role_passwords,
            },
            path: store::globals_path(&root, &run_id),
        });
    }
    if config.backup.schema && opts.groups.is_empty() {
        for db in &planned.plan.databases {
            jobs.push(Job {
                kind: Kind::Schema,
                database: Some(db.database.clone()),
                group: store::SCHEMA_GROUP.into(),
                tables: Vec::new(),
                dump: DumpKind::Schema,
                path: store::dump_path(&root, &db.database, store::SCHEMA_GROUP, &run_id),
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
        jobs.push(Job {
            kind: Kind::Tables,
            path: store::dump_path(&root, &g.database, &g.group, &run_id),
            database: Some(g.database.clone()),
            tables: g.table_names(),
            dump: DumpKind::Tables(
                g.tables
                    .iter()
                    .map(|t| (t.schema_name.clone(), t.table_name.clone()))
                    .collect(),
            ),
            group: g.group,
        });
    }

    let settings = Arc::new(DumpSettings {
        tools: tools.clone(),
        conn: planned.conn.clone(),
        lock_wait_timeout: config.backup.lock_wait_timeout,
        compress: config.backup.compress,
    });
    let maintenance = config.connection.maintenance_database.clone();
    let permits = Arc::new(Semaphore::new(
        opts.jobs.unwrap_or(config.backup.jobs).max(1),
    ));
    let mut set = JoinSet::new();
    let total = jobs.len();
    for (i, job) in jobs.into_iter().enumerate() {
        let permits = permits.clone();
        let settings = settings.clone();
        let maintenance = maintenance.clone();
        set.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            (i, execute(&settings, &maintenance, job).await)
        });
    }
    let mut results: Vec<(usize, GroupReport)> = Vec::with_capacity(total);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!("a dump task panicked: {e}"),
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let mut group_reports: Vec<GroupReport> = results.into_iter().map(|(_, r)| r).collect();
    for (db, err) in &planned.unreadable {
        let now = now_rfc3339();
        group_reports.push(GroupReport {
            kind: Kind::Schema,
            database: Some(db.clone()),
            group: store::SCHEMA_GROUP.into(),
            tables: Vec::new(),
            status: Status::Failed,
            file: None,
            bytes: None,
            sha256: None,
            started_at: now.clone(),
            finished_at: now,
            duration_ms: 0,
            error: Some(format!("cannot read the catalog of database {db:?}: {err}")),
            warnings: None,
        });
    }

    let failed = group_reports.iter().any(|g| g.status == Status::Failed);
    let report = RunReport {
        run_id: run_id.clone(),
        started_at,
        finished_at: now_rfc3339(),
        status: if failed { Status::Failed } else { Status::Ok },
        host: crate::report::host_name(),
        server: planned.conn.target(),
        dir: absolute(&root),
        config: absolute(&config.path),
        pg_dump_version: tools.version.clone(),
        groups: group_reports,
        warnings: planned.plan.warnings.clone(),
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

/// A run id (UTC `yyyymmddThhmmssZ`) later than the previous run's, waiting for the next
/// second if the previous run started in this one.
async fn new_run_id(previous: Option<&str>) -> String {
    loop {
        let id = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        match previous {
            Some(p) if id.as_str() <= p => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            _ => return id,
        }
    }
}

async fn execute(settings: &DumpSettings, maintenance: &str, job: Job) -> GroupReport {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let label = format!(
        "{}/{}",
        job.database.as_deref().unwrap_or("(cluster)"),
        job.group
    );
    let database = job
        .database
        .clone()
        .unwrap_or_else(|| maintenance.to_string());
    let result = dump_one(settings, &database, &job).await;
    let finished_at = now_rfc3339();
    let duration_ms = started.elapsed().as_millis() as u64;
    let mut report = GroupReport {
        kind: job.kind,
        database: job.database.clone(),
        group: job.group.clone(),
        tables: job.tables.clone(),
        status: Status::Ok,
        file: None,
        bytes: None,
        sha256: None,
        started_at,
        finished_at,
        duration_ms,
        error: None,
        warnings: None,
    };
    match result {
        Ok((finished, warnings)) => {
            let what = match job.kind {
                Kind::Tables => format!("{}, ", crate::plural(job.tables.len(), "table")),
                _ => String::new(),
            };
            tracing::info!(
                "ok {} ({what}{}) in {:.1}s",
                crate::printable(&label),
                crate::plan::human_bytes(finished.bytes),
                duration_ms as f64 / 1000.0
            );
            report.file = Some(job.path.display().to_string());
            report.bytes = Some(finished.bytes);
            report.sha256 = Some(finished.sha256);
            report.warnings = (!warnings.is_empty()).then_some(warnings);
        }
        Err(e) => {
            tracing::error!("FAILED {}: {e}", crate::printable(&label));
            report.status = Status::Failed;
            report.error = Some(e);
        }
    }
    report
}

/// Writes one dump to its `.ing` file and commits it; on any failure the `.ing` is removed.
async fn dump_one(
    settings: &DumpSettings,
    database: &str,
    job: &Job,
) -> Result<(store::Finished, String), String> {
    let partial = store::create_partial(&job.path).map_err(|e| {
        format!(
            "cannot create {}: {}",
            store::partial_path(&job.path).display(),
            io_message(&e)
        )
    })?;
    let app = application_name(&job.group);
    let outcome = match dump::run_child(settings, &job.dump, database, &app, &partial).await {
        Ok(warnings) => {
            let (p, f) = (partial.clone(), job.path.clone());
            match tokio::task::spawn_blocking(move || store::commit(&p, &f)).await {
                Ok(Ok(finished)) => Ok((finished, warnings)),
                Ok(Err(e)) => Err(format!(
                    "cannot finish {}: {}",
                    job.path.display(),
                    io_message(&e)
                )),
                Err(e) => Err(format!("cannot finish {}: {e}", job.path.display())),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    if outcome.is_err() {
        remove_quietly(&partial);
    }
    outcome
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
