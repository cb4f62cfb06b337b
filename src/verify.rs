//! `pg_groupdump verify`: proves a run's dumps are what the report says, and optionally that
//! they restore to the rows counted at dump time.
//!
//! For every successful dump of the run: the file exists, its size and sha256 match the
//! report, `pg_restore --list` reads it, and its tables are exactly the group's. With
//! `--restore`, each group is restored into a scratch database (created and dropped here,
//! named after the run and this process so it cannot collide) and each table's rows are
//! counted and compared with the counts recorded in the group's snapshot.

use std::path::{Path, PathBuf};

use crate::config::{parse_table_ref, Config};
use crate::connect::{application_name, ConnParams};
use crate::crypt::Identities;
use crate::exit::Outcome;
use crate::failure::Failure;
use crate::report::{GroupReport, Kind, Status};
use crate::restore::{
    compare_tables, list_archive, load_report, pg_restore_path, run_pg_restore, Archive,
};
use crate::text::quote_ident;

/// What `verify` was asked to check.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VerifyOptions {
    /// The run to check (default: the newest report in <dir>/reports).
    #[arg(long, value_name = "ID", conflicts_with = "report")]
    pub run: Option<String>,
    /// The run report to check.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Also restore every group into a scratch database and compare row counts.
    #[arg(long)]
    pub restore: bool,
    /// An age identity (secret key) file that decrypts encrypted dumps and reports, as
    /// `age-keygen` writes it; may be given several times.
    #[arg(long = "identity", value_name = "FILE")]
    pub identities: Vec<PathBuf>,
}

/// `pg_groupdump verify`; `SomeFailed` when anything does not match.
pub async fn verify(config: &Config, opts: &VerifyOptions) -> Result<Outcome, Failure> {
    let want = crate::store::bucket::Want {
        run: opts.run.as_deref(),
        ..Default::default()
    };
    let mirror = crate::store::bucket::Mirror::fetch(config, want, opts.report.is_none())
        .await
        .map_err(|e| Failure::Start(e.into()))?;
    let config = mirror.as_ref().map_or(config, |m| &m.config);
    let ids = Identities::load(&opts.identities)?;
    let (mut report, report_path) =
        load_report(config, &ids, opts.run.as_deref(), opts.report.as_deref())?;
    let mut metadata = vec![ObjectSha256::NotFromBucket; report.groups.len()];
    if let Some(m) = &mirror {
        // The report names the files where the run wrote them; their copies are here.
        let root = PathBuf::from(&report.dir);
        for (g, meta) in report.groups.iter_mut().zip(&mut metadata) {
            let Some(f) = g.file.take().map(PathBuf::from) else {
                continue;
            };
            *meta = match m.sha256_metadata(&root, &f) {
                None => ObjectSha256::NotFromBucket,
                Some(None) => ObjectSha256::Missing,
                Some(Some(sha)) => ObjectSha256::Is(sha.to_string()),
            };
            g.file = Some(m.local(&root, &f).display().to_string());
        }
    }
    let pg_restore = pg_restore_path(config)?;
    let conn = if opts.restore {
        Some(ConnParams::resolve(&config.connection).map_err(|e| Failure::Start(e.into()))?)
    } else {
        None
    };
    crate::say!(
        "verifying run {} ({})",
        report.run_id,
        report_path.display()
    );
    let report_bad = match mirror
        .as_ref()
        .map(|m| report_object_problem(m, &report_path))
    {
        Some(Some(problem)) => {
            crate::say!("BAD  the run report: {}", crate::text::printable(&problem));
            true
        }
        _ => false,
    };
    let mut bad = 0;
    let mut checked = 0;
    for (n, g) in report.groups.iter().enumerate() {
        let label = format!(
            "{}/{}",
            g.database.as_deref().unwrap_or("(cluster)"),
            g.group
        );
        if g.status != Status::Ok && !upload_failed(g) {
            let why = match g.status {
                Status::Gone => "every table of the group was dropped before its dump",
                _ => "the dump failed in this run",
            };
            crate::say!("skip {}: {why}", crate::text::printable(&label));
            continue;
        }
        checked += 1;
        let mut problems = check_file(&pg_restore, &ids, g).await;
        let mut notes = Vec::new();
        if upload_failed(g) {
            notes.push(
                "its upload failed in this run (failed in the report); the file was kept"
                    .to_string(),
            );
        }
        match &metadata[n] {
            ObjectSha256::NotFromBucket => {}
            ObjectSha256::Missing => notes.push(
                "the object has no sha256 metadata (uploaded by an older version): checked against the report only".to_string(),
            ),
            ObjectSha256::Is(sha) if Some(sha) != g.sha256.as_ref() => problems.push(format!(
                "the object's sha256 metadata is {sha}, the report says {}",
                g.sha256.as_deref().unwrap_or("nothing")
            )),
            ObjectSha256::Is(_) => {}
        }
        // A restore proves nothing about a file that is already wrong.
        if let (true, Some(conn), Kind::Tables) = (problems.is_empty(), &conn, g.kind) {
            let check = Check {
                config,
                conn,
                pg_restore: &pg_restore,
                ids: &ids,
            };
            problems.extend(restore_and_count(&check, &report.run_id, n, g).await);
        }
        if !problems.is_empty() {
            bad += 1;
        }
        print_verdict(&label, g, &problems, &notes);
    }
    crate::say!(
        "run {}: {} dumps checked, {} bad{}",
        report.run_id,
        checked,
        bad,
        if opts.restore { " (with restore)" } else { "" }
    );
    Ok(if bad > 0 || report_bad {
        Outcome::SomeFailed
    } else {
        Outcome::Ok
    })
}

/// The run report read from the bucket against its object's sha256 metadata (`None`: they
/// agree, or the object has none).
fn report_object_problem(m: &crate::store::bucket::Mirror, report_path: &Path) -> Option<String> {
    let meta = m.sha256_metadata(&m.config.backup.dir, report_path)??;
    match crate::store::hash_file(report_path) {
        Ok((_, sha)) if sha == meta => None,
        Ok((_, sha)) => Some(format!(
            "the object's sha256 metadata is {meta}, its bytes hash to {sha}"
        )),
        Err(e) => Some(format!("cannot read {}: {e}", report_path.display())),
    }
}

/// A group whose dump was written, and whose upload to `[storage]` failed: the only failed
/// group with a file and its hash in the report. A later run uploads its file.
fn upload_failed(g: &GroupReport) -> bool {
    g.status == Status::Failed && g.file.is_some() && g.sha256.is_some()
}

/// A checked dump's [`crate::store::bucket::SHA256_METADATA`] in the bucket.
#[derive(Debug, Clone)]
enum ObjectSha256 {
    /// The file was not read from the bucket.
    NotFromBucket,
    /// The object has none (uploaded by an older version).
    Missing,
    Is(String),
}

/// "ok" or "BAD" for one dump, with its problems (or notes) below.
fn print_verdict(label: &str, g: &GroupReport, problems: &[String], notes: &[String]) {
    let file = g.file.as_deref().unwrap_or("(no file)");
    if problems.is_empty() {
        crate::say!("ok   {} {file}", crate::text::printable(label));
    } else {
        crate::say!("BAD  {} {file}", crate::text::printable(label));
        for p in problems {
            crate::say!("     {}", crate::text::printable(p));
        }
    }
    for n in notes {
        crate::say!("     note: {}", crate::text::printable(n));
    }
}

/// The group's tables as (schema, table), read back from the report's display names.
fn report_tables(g: &GroupReport) -> Vec<(String, String)> {
    g.tables
        .iter()
        .filter_map(|t| parse_table_ref(t).ok())
        .filter_map(|r| r.schema.map(|s| (s, r.table)))
        .collect()
}

/// Checks one dump file against its report entry: size and sha256, then (but for globals,
/// which are SQL) that pg_restore reads it and that it holds exactly the group's tables — or,
/// for a schema dump, no table data.
async fn check_file(pg_restore: &Path, ids: &Identities, g: &GroupReport) -> Vec<String> {
    let Some(file) = g.file.as_deref().map(PathBuf::from) else {
        return vec!["the report names no file".into()];
    };
    let problems = check_size_and_hash(&file, g).await;
    if !problems.is_empty() {
        return problems;
    }
    if g.kind == Kind::Globals {
        // SQL: nothing for pg_restore to read; an encrypted one must decrypt.
        if !crate::crypt::is_sealed(&file) {
            return Vec::new();
        }
        let ids = ids.clone();
        let checked = tokio::task::spawn_blocking(move || ids.check(&file)).await;
        return match checked {
            Ok(Ok(())) => Vec::new(),
            Ok(Err(e)) => vec![e.to_string()],
            Err(e) => vec![e.to_string()],
        };
    }
    let archive = match Archive::in_order(ids, &file) {
        Ok(a) => a,
        Err(e) => return vec![e.to_string()],
    };
    match list_archive(pg_restore, &archive).await {
        Err(e) => vec![e.to_string()],
        Ok(entries) => match g.kind {
            Kind::Tables => compare_tables(&entries, &report_tables(g), g.table_oids.as_deref()),
            _ => entries
                .iter()
                .filter(|e| e.desc == "TABLE DATA")
                .map(|e| format!("the schema dump holds table data: {}", e.rest))
                .collect(),
        },
    }
}

/// The file's size and sha256 against the report's (hashed on a blocking thread).
async fn check_size_and_hash(file: &Path, g: &GroupReport) -> Vec<String> {
    let path = file.to_path_buf();
    let (bytes, sha) =
        match tokio::task::spawn_blocking(move || crate::store::hash_file(&path)).await {
            Ok(Ok(hashed)) => hashed,
            Ok(Err(e)) => return vec![format!("cannot read {}: {e}", file.display())],
            Err(e) => return vec![format!("cannot read {}: {e}", file.display())],
        };
    let mut problems = Vec::new();
    if Some(bytes) != g.bytes {
        problems.push(format!(
            "size is {bytes} bytes, the report says {}",
            g.bytes
                .map_or("nothing".to_string(), |b| format!("{b} bytes"))
        ));
    }
    if Some(&sha) != g.sha256.as_ref() {
        problems.push(format!(
            "sha256 is {sha}, the report says {}",
            g.sha256.as_deref().unwrap_or("nothing")
        ));
    }
    problems
}

/// What restoring a group into a scratch database needs.
struct Check<'a> {
    config: &'a Config,
    conn: &'a ConnParams,
    pg_restore: &'a Path,
    ids: &'a Identities,
}

/// Restores one group into a scratch database and compares row counts with the report's.
/// The scratch database is dropped afterwards whatever happened.
async fn restore_and_count(
    check: &Check<'_>,
    run_id: &str,
    n: usize,
    g: &GroupReport,
) -> Vec<String> {
    let (config, conn) = (check.config, check.conn);
    let maintenance = &config.connection.maintenance_database;
    let scratch = format!(
        "pg_groupdump_verify_{}_{}_{n}",
        run_id.to_ascii_lowercase(),
        std::process::id()
    );
    let admin = match conn.connect(maintenance, &application_name("verify")).await {
        Ok(c) => c,
        Err(e) => return vec![e.to_string()],
    };
    if let Err(e) = admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&scratch)
        ))
        .await
    {
        return vec![format!(
            "cannot create the scratch database {scratch}: {}",
            crate::text::pg_error_text(&e)
        )];
    }
    let problems = restore_into(check, run_id, &scratch, g).await;
    if let Err(e) = admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&scratch)
        ))
        .await
    {
        tracing::warn!(
            "cannot drop the scratch database {scratch}: {}",
            crate::text::pg_error_text(&e)
        );
    }
    problems
}

/// Restores the group's dump into `scratch` (after the prerequisites from the run's schema
/// archive) and compares the row counts.
async fn restore_into(
    check: &Check<'_>,
    run_id: &str,
    scratch: &str,
    g: &GroupReport,
) -> Vec<String> {
    let (conn, pg_restore) = (check.conn, check.pg_restore);
    let mut problems = Vec::new();
    if let Some(schema) = g
        .database
        .as_deref()
        .and_then(|db| crate::restore::schema_archive_for(&check.config.backup.dir, db, run_id))
    {
        match Archive::in_order(check.ids, &schema) {
            Err(e) => problems.push(e.to_string()),
            Ok(schema) => {
                if let Err(e) =
                    crate::restore::restore_prerequisites(pg_restore, conn, scratch, &schema).await
                {
                    problems.push(e.to_string());
                }
            }
        }
    }
    let file = PathBuf::from(g.file.clone().unwrap_or_default());
    let archive = match Archive::in_order(check.ids, &file) {
        Ok(a) => a,
        Err(e) => {
            problems.push(e.to_string());
            return problems;
        }
    };
    let args: Vec<std::ffi::OsString> = vec!["--no-owner".into(), "--no-privileges".into()];
    let stderr = match run_pg_restore(pg_restore, conn, scratch, &args, &archive).await {
        Err(e) => {
            problems.push(e.to_string());
            return problems;
        }
        Ok((ok, stderr)) => {
            if !ok {
                // Foreign keys to tables of other groups cannot be restored alone; the counts
                // decide whether the data came back.
                tracing::debug!("pg_restore into {scratch}: {stderr}");
            }
            stderr
        }
    };
    match conn.connect(scratch, &application_name("verify")).await {
        Err(e) => problems.push(e.to_string()),
        Ok(c) => problems.extend(compare_counts(&c, g, &stderr).await),
    }
    problems
}

/// Counts each of the group's tables in the restored database and compares with the counts
/// recorded at dump time; a table that cannot be counted was not restored (`stderr`, what
/// pg_restore said, tells why).
async fn compare_counts(c: &tokio_postgres::Client, g: &GroupReport, stderr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for ((schema, table), shown) in report_tables(g).iter().zip(&g.tables) {
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            quote_ident(schema),
            quote_ident(table)
        );
        let got: i64 = match c.query_one(&sql, &[]).await {
            Ok(row) => row.get(0),
            Err(e) => {
                problems.push(format!(
                    "{shown}: not restored ({}){}",
                    crate::text::pg_error_text(&e),
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!("; pg_restore: {stderr}")
                    }
                ));
                continue;
            }
        };
        match g.row_counts.as_ref().and_then(|m| m.get(shown)) {
            Some(&want) if want != got => problems.push(format!(
                "{shown}: {got} rows restored, {want} counted at dump time"
            )),
            Some(_) => {}
            None => tracing::info!("{shown}: {got} rows restored (no count recorded at dump time)"),
        }
    }
    problems
}
