//! Benchmark: pg_groupdump (both engines, `pg_dump` and `native`) side by side with `pg_dump -Fd -j N`, `pg_dump -Fc` and the
//! per-table shell loop, on the same data, in the same run, each contender run several times
//! in turn. Prints (and with `--markdown` writes) medians and ratios.
//!
//! Usually started by `scripts/bench.sh`, which builds everything and runs this against a
//! throwaway PostgreSQL; it can also be pointed at any server it may create databases on
//! (`bench_s8`, `bench_s1000`, `bench_s10000`, `bench_big1`, dropped and recreated when they do
//! not hold the expected workload): see `--help`.

mod locks;
mod measure;
mod workload;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use workload::{Sizes, Workload};

/// Benchmark pg_groupdump (engines pg_dump and native) against pg_dump -Fd -j N, pg_dump -Fc
/// and the per-table loop.
///
/// Connection: --host/--port/--user (or PGHOST, PGPORT, PGUSER, PGPASSWORD). The server must
/// let this user create databases; `max_locks_per_transaction` must be large enough for one
/// session to lock 10 000 tables (scripts/bench.sh sets 1024).
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Workloads to run, in this order (big1: one table of --big-gb, not in the default run).
    #[arg(long, value_delimiter = ',', default_value = "s8,s1000,s10000")]
    workloads: Vec<Workload>,
    /// Contenders to run, on every workload. Default: on S8, S1000 and S10000
    /// groupdump-tables, groupdump-groups, groupdump-native-tables, groupdump-native-groups,
    /// pg_dump-fd, pg_dump-fc, loop and groupdump-stub; on big1 groupdump-native-tables (the
    /// table split across the sessions), groupdump-nosplit, pg_dump-fd and loop (there one
    /// `pg_dump -Fc -t`).
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<Kind>,
    /// Runs of each contender (in turn: every contender once, then again, ...).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Scale factor of S8 (1 = 2, 1.5, 1, 3, 4, 1, 1 and 5 million rows).
    #[arg(long, default_value_t = 0.2)]
    scale: f64,
    /// Size of big1's one table in GB (of heap: 14 million rows of S8's shape a GB).
    #[arg(long, default_value_t = 2.0)]
    big_gb: f64,
    /// pg_groupdump's `jobs` and pg_dump's `-j`.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// On workloads with more than --sample-above tables, the per-table contenders (the loop and
    /// pg_groupdump with every table its own group, pg_dump engine) dump only this many tables,
    /// evenly spread, and their time, CPU and bytes are extrapolated linearly. 0: skip them
    /// there. The native engine's contenders always dump every table.
    #[arg(long, default_value_t = 100)]
    sample: usize,
    /// See --sample.
    #[arg(long, default_value_t = 2000)]
    sample_above: usize,
    /// Like --sample-above, for the per-table loop alone (plain pg_dump processes one after
    /// another: its cost is linear in the tables dumped, so a sample predicts it well).
    #[arg(long, default_value_t = 500)]
    loop_sample_above: usize,
    /// Never sample: run every contender on every table (S10000 then takes hours).
    #[arg(long)]
    full: bool,
    /// Interval between two polls of pg_locks, in milliseconds.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// The pg_groupdump binary.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Directory of pg_dump (default: PG_BINDIR, else pg_dump on PATH).
    #[arg(long)]
    pg_bindir: Option<PathBuf>,
    /// Server host or socket directory (default: PGHOST, else 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Server port (default: PGPORT, else 5432).
    #[arg(long)]
    port: Option<u16>,
    /// User, who must be allowed to create databases (default: PGUSER, else postgres).
    #[arg(long)]
    user: Option<String>,
    /// Where configurations and dumps go (default: a new temporary directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Drop and recreate the workload databases even if they hold the workload already.
    #[arg(long)]
    recreate: bool,
    /// Also write the result tables (Markdown) to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write every run's raw figures (JSON) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A line added to the [backup] section of every pg_groupdump configuration, e.g.
    /// `--backup-set 'count_rows = false'` (repeatable; shown in the result's details). Not
    /// `engine`: each contender sets its own.
    #[arg(long, value_name = "TOML")]
    backup_set: Vec<String>,
    /// Compression of every contender, in pg_dump's `-Z` spelling (`gzip`, `gzip:6`, `zstd`,
    /// `zstd:3`, `lz4`, `none`): `compression = "SPEC"` in every pg_groupdump configuration,
    /// `--compress=SPEC` for every pg_dump (zstd and lz4 need pg_dump 16; before 16 gzip:N is
    /// passed as N, none as 0). Several, comma-separated: each contender runs once per
    /// method, all of them in turn in the same rounds, one table per workload and method, its
    /// ratios against `pg_dump -Fd` at the same method. Default: nobody is told anything
    /// (gzip at zlib's default level, pg_dump's default and pg_groupdump's).
    #[arg(long, value_delimiter = ',', value_name = "SPEC")]
    compression: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
enum Kind {
    /// pg_groupdump, engine "pg_dump", every table its own group (no [[group]], ungrouped
    /// mode "table").
    #[value(name = "groupdump-tables")]
    GroupdumpTables,
    /// pg_groupdump, engine "pg_dump", with a few groups (S8: 3, others: 10).
    #[value(name = "groupdump-groups")]
    GroupdumpGroups,
    /// pg_groupdump, engine "native", every table its own group. Never sampled.
    #[value(name = "groupdump-native-tables")]
    GroupdumpNativeTables,
    /// pg_groupdump, engine "native", with a few groups (as groupdump-groups).
    #[value(name = "groupdump-native-groups")]
    GroupdumpNativeGroups,
    /// As groupdump-native-tables with `split_above = "off"`: every table copied by one
    /// session, however big.
    #[value(name = "groupdump-nosplit")]
    GroupdumpNativeNosplit,
    /// pg_dump -Fd -j N of the whole database.
    #[value(name = "pg_dump-fd")]
    DumpDir,
    /// pg_dump -Fc of the whole database.
    #[value(name = "pg_dump-fc")]
    DumpCustom,
    /// for each table, one after another: pg_dump -Fc -t schema.table.
    #[value(name = "loop")]
    Loop,
    /// Not a contender but a probe: pg_groupdump with every table its own group and a stub
    /// in place of pg_dump that writes an empty file. What is left is pg_groupdump's own cost
    /// per group (planning, snapshots, lock monitor, process start, files, report) and its
    /// memory with that many groups, in minutes even on S10000.
    #[value(name = "groupdump-stub")]
    GroupdumpStub,
}

impl Kind {
    fn is_native(self) -> bool {
        matches!(
            self,
            Kind::GroupdumpNativeTables
                | Kind::GroupdumpNativeGroups
                | Kind::GroupdumpNativeNosplit
        )
    }

    /// The contenders run on a workload when --contenders is not given.
    fn defaults(w: Workload) -> Vec<Kind> {
        match w {
            Workload::Big1 => vec![
                Kind::GroupdumpNativeTables,
                Kind::GroupdumpNativeNosplit,
                Kind::DumpDir,
                Kind::Loop,
            ],
            _ => vec![
                Kind::GroupdumpTables,
                Kind::GroupdumpGroups,
                Kind::GroupdumpNativeTables,
                Kind::GroupdumpNativeGroups,
                Kind::DumpDir,
                Kind::DumpCustom,
                Kind::Loop,
                Kind::GroupdumpStub,
            ],
        }
    }

    /// The "few groups" layout rather than every table its own group.
    fn few_groups(self) -> bool {
        matches!(self, Kind::GroupdumpGroups | Kind::GroupdumpNativeGroups)
    }
}

/// A contender ready to run on one workload.
struct Contender {
    kind: Kind,
    /// `--compression`'s method this contender runs with (None: nobody is told).
    compression: Option<String>,
    label: String,
    /// (tables dumped, tables in the workload) when sampled.
    sample: Option<(usize, usize)>,
    config: Option<PathBuf>,
    /// The tables the loop dumps, or the groups `run --group` selects when sampled.
    list: Vec<String>,
    /// pg_groupdump: the table groups a run dumps (its run report must list as many).
    groups: usize,
    /// The tables in the workload.
    tables: usize,
    list_file: Option<PathBuf>,
}

impl Contender {
    fn factor(&self) -> f64 {
        self.sample
            .map_or(1.0, |(n, total)| total as f64 / n as f64)
    }
}

struct Ctx {
    args: Args,
    host: String,
    port: u16,
    user: String,
    bin: PathBuf,
    pg_dump: PathBuf,
    /// pg_dump's major version (from `pg_dump --version`).
    pg_dump_major: u32,
    work: PathBuf,
    pg: tokio_postgres::Config,
}

impl Ctx {
    fn sizes(&self) -> Sizes {
        Sizes {
            scale: self.args.scale,
            big_gb: self.args.big_gb,
        }
    }

    /// The contenders on workload `w`: --contenders, else that workload's defaults.
    fn contenders(&self, w: Workload) -> Vec<Kind> {
        contenders_for(&self.args, w)
    }
}

fn contenders_for(a: &Args, w: Workload) -> Vec<Kind> {
    if a.contenders.is_empty() {
        Kind::defaults(w)
    } else {
        a.contenders.clone()
    }
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    workload: &'static str,
    contender: Kind,
    compression: Option<String>,
    label: String,
    rep: usize,
    sample: Option<(usize, usize)>,
    #[serde(flatten)]
    measured: measure::Measured,
    /// What the backends that ended during the run used, plus the io workers' (below).
    server_cpu_s: Option<f64>,
    /// CPU the server's io workers (PostgreSQL 18, `io_method = worker`: they read data files
    /// for the backends) used during the run; included in `server_cpu_s`.
    io_worker_cpu_s: Option<f64>,
    /// CPU the lock poller's backend used during the run.
    poll_cpu_s: Option<f64>,
    /// pg_groupdump: first table dump's start to the last one's end, from its run report.
    dump_span_s: Option<f64>,
    /// pg_groupdump: how long its schema dump took, from its run report.
    schema_dump_s: Option<f64>,
    /// Native contenders: table groups their run report shows dumped by the native engine
    /// (a run in which any group was not is an error of the whole benchmark).
    native_groups: Option<usize>,
    /// Native contenders: (tables, most sessions on one) the run report shows copied by
    /// several sessions (`backup.split_above`).
    split: Option<(usize, u64)>,
    /// The machine's 1-minute load average when the run started (other work on the machine).
    load_before: Option<f64>,
    output_bytes: u64,
    output_files: u64,
    report_bytes: u64,
    locks: locks::LockStats,
    error: Option<String>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(args) {
        eprintln!("bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(mut args: Args) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    args.pg_bindir = args
        .pg_bindir
        .or_else(|| env("PG_BINDIR").map(PathBuf::from));
    let host = args
        .host
        .clone()
        .or_else(|| env("PGHOST"))
        .unwrap_or("127.0.0.1".into());
    let port = match (args.port, env("PGPORT")) {
        (Some(p), _) => p,
        (None, Some(p)) => p.parse().context("PGPORT")?,
        (None, None) => 5432,
    };
    let user = args
        .user
        .clone()
        .or_else(|| env("PGUSER"))
        .unwrap_or("postgres".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = args.bin.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("target"))
            .join("release/pg_groupdump")
    });
    if !bin.is_file() {
        bail!(
            "{} not found: cargo build --release, or --bin PATH",
            bin.display()
        );
    }
    let pg_dump = match &args.pg_bindir {
        Some(d) => d.join("pg_dump"),
        None => which("pg_dump").context("pg_dump not on PATH; set --pg-bindir")?,
    };
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let pg_dump_version = command_output(Command::new(&pg_dump).arg("--version"));
    let pg_dump_major = pg_dump_major(&pg_dump_version)
        .with_context(|| format!("{}: no version in {pg_dump_version:?}", pg_dump.display()))?;
    for spec in &args.compression {
        pg_dump_compress(spec, pg_dump_major)?;
    }
    if !args.compression.is_empty()
        && args
            .backup_set
            .iter()
            .any(|l| l.trim_start().starts_with("compress"))
    {
        bail!("--backup-set: give the compression with --compression (it sets pg_dump's too)");
    }
    if args
        .backup_set
        .iter()
        .any(|l| l.trim_start().starts_with("engine"))
    {
        bail!("--backup-set: each pg_groupdump contender sets its own `engine` (groupdump-native-* are the native engine)");
    }
    if args
        .backup_set
        .iter()
        .any(|l| l.trim_start().starts_with("split_above"))
        && args
            .workloads
            .iter()
            .any(|&w| contenders_for(&args, w).contains(&Kind::GroupdumpNativeNosplit))
    {
        bail!("--backup-set: groupdump-nosplit sets its own `split_above` (\"off\"); leave it out of --contenders to set another");
    }
    if args.big_gb.is_nan() || args.big_gb <= 0.0 {
        bail!("--big-gb must be more than 0");
    }
    let (work, _tmp) = match &args.work_dir {
        Some(d) => {
            fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("pg_groupdump-bench.")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut pg = tokio_postgres::Config::new();
    if host.starts_with('/') {
        pg.host_path(&host);
    } else {
        pg.host(&host);
    }
    pg.port(port)
        .user(&user)
        .application_name("bench")
        .dbname("postgres");
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        pg.password(pw);
    }
    let ctx = Ctx {
        args,
        host,
        port,
        user,
        bin,
        pg_dump,
        pg_dump_major,
        work,
        pg,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let details = rt.block_on(details(&ctx))?;
    eprintln!("{details}");
    let mut results: Vec<RunResult> = Vec::new();
    let mut contenders_by_workload: Vec<(Workload, Vec<Contender>, String)> = Vec::new();
    for &w in &ctx.args.workloads {
        rt.block_on(workload::ensure(&ctx.pg, w, ctx.sizes(), ctx.args.recreate))?;
        let (db_oid, names, size) = rt.block_on(workload::tables(&ctx.pg, w))?;
        let contenders = prepare(&ctx, w, &names)?;
        let watch = locks::LockWatch::start(
            {
                let mut c = ctx.pg.clone();
                c.dbname(w.database()).application_name("bench/locks");
                c
            },
            db_oid,
            names.clone(),
            Duration::from_millis(ctx.args.poll_ms),
        )?;
        let postmaster = rt.block_on(postmaster_pid(&ctx.pg))?;
        let io_workers = measure::io_workers(postmaster);
        let info = format!(
            "{} tables, {} (pg_total_relation_size)",
            names.len(),
            mib(size as f64)
        );
        eprintln!("bench: {} ({info})", w.name());
        for rep in 0..ctx.args.reps {
            let n = contenders.len();
            for i in 0..n {
                let c = &contenders[(i + rep) % n];
                // The probe measures pg_groupdump's own overhead, which hardly varies: once.
                if c.kind == Kind::GroupdumpStub && rep > 0 {
                    continue;
                }
                let r = run_one(&ctx, w, c, rep + 1, &watch, postmaster, &io_workers)?;
                eprintln!(
                    "bench: {}{} rep {} {:<45} wall {:>7.2}s cpu {:>6.2}s (itself {:.2}s) srv {:>6.2}s rss {:>7} ({}) out {:>9} lock {:.2}s {} ({} tables; w/o schema dump {:.2}s {}, {} tables; {} polls, {:.1} ms, {:.2}s CPU){}",
                    w.name(),
                    c.compression.as_deref().map(|z| format!(" [{z}]")).unwrap_or_default(),
                    rep + 1,
                    c.label,
                    r.measured.wall_s,
                    r.measured.cpu_s,
                    r.measured.self_cpu_s.unwrap_or(f64::NAN),
                    r.server_cpu_s.unwrap_or(f64::NAN),
                    r.measured.self_rss_kib.map_or("?".into(), |k| mib(k as f64 * 1024.0)),
                    r.measured.self_rss_method,
                    mib(r.output_bytes as f64),
                    r.locks.longest_s,
                    r.locks.longest_table.as_deref().unwrap_or("-"),
                    r.locks.tables_seen,
                    r.locks.longest_data_s,
                    r.locks.longest_data_table.as_deref().unwrap_or("-"),
                    r.locks.tables_seen_data,
                    r.locks.polls,
                    r.locks.median_interval_ms,
                    r.poll_cpu_s.unwrap_or(f64::NAN),
                    r.error.as_deref().map(|e| format!("  FAILED: {e}")).unwrap_or_default()
                );
                results.push(r);
            }
        }
        drop(watch);
        contenders_by_workload.push((w, contenders, info));
    }

    let mut md = String::new();
    md.push_str(&details);
    md.push('\n');
    for (w, contenders, info) in &contenders_by_workload {
        for z in compressions(&ctx.args) {
            let these: Vec<&Contender> = contenders.iter().filter(|c| c.compression == z).collect();
            md.push_str(&table(&ctx, *w, info, z.as_deref(), &these, &results));
        }
    }
    for z in compressions(&ctx.args) {
        md.push_str(&growth(&contenders_by_workload, z.as_deref(), &results));
    }
    println!("{md}");
    if let Some(p) = &ctx.args.markdown {
        fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &ctx.args.json {
        fs::write(p, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The compressions contenders run with: each `--compression`, or one run where nobody is
/// told anything (None).
fn compressions(a: &Args) -> Vec<Option<String>> {
    if a.compression.is_empty() {
        vec![None]
    } else {
        a.compression.iter().cloned().map(Some).collect()
    }
}

/// The major version in `pg_dump (PostgreSQL) 18.6` or `pg_dump (PostgreSQL) 15.18 (Debian …)`.
fn pg_dump_major(version: &str) -> Option<u32> {
    let v = version.split(") ").nth(1)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// pg_dump's `--compress` value for a `--compression` SPEC (None: pg_dump's default, which
/// is what gzip means before pg_dump 16).
fn pg_dump_compress(spec: &str, major: u32) -> anyhow::Result<Option<String>> {
    let (method, level) = match spec.split_once(':') {
        Some((m, l)) => (m, Some(l.strip_prefix("level=").unwrap_or(l))),
        None => (spec, None),
    };
    if !matches!(method, "gzip" | "zstd" | "lz4" | "none")
        || level.is_some_and(|l| l.parse::<u32>().is_err())
    {
        bail!("--compression {spec:?}: write gzip, gzip:N, zstd, zstd:N, lz4, lz4:N or none");
    }
    if major >= 16 {
        return Ok(Some(spec.to_string()));
    }
    match (method, level) {
        ("gzip", None) => Ok(None),
        ("gzip", Some(l)) => Ok(Some(l.to_string())),
        ("none", None) => Ok(Some("0".into())),
        _ => bail!("--compression {spec:?}: pg_dump {major} knows gzip (a level 1-9) and none only; zstd and lz4 need pg_dump 16"),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1048576.0)
}

async fn postmaster_pid(pg: &tokio_postgres::Config) -> anyhow::Result<i32> {
    let c = workload::connect(pg, "postgres").await?;
    let backend: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    measure::parent_pid(backend).context("cannot read the server's processes in /proc (run the benchmark on the server's machine, as root or the server's user)")
}

/// A command's standard output, its lines joined with "; ".
fn command_output(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// The run's circumstances, as a Markdown list.
async fn details(ctx: &Ctx) -> anyhow::Result<String> {
    let c = workload::connect(&ctx.pg, "postgres").await?;
    let version: String = c.query_one("SELECT version()", &[]).await?.get(0);
    let mut settings = Vec::new();
    for s in [
        "shared_buffers",
        "max_locks_per_transaction",
        "autovacuum",
        "fsync",
    ] {
        let v: String = c.query_one(&format!("SHOW {s}"), &[]).await?.get(0);
        settings.push(format!("{s}={v}"));
    }
    // Defaults that matter for reading data since PostgreSQL 18 (data checksums on, reads by
    // io workers); io_method is unknown before 18.
    for s in ["data_checksums", "io_method", "io_workers"] {
        let v: Option<String> = c
            .query_one("SELECT pg_catalog.current_setting($1, true)", &[&s])
            .await?
            .get(0);
        if let Some(v) = v {
            settings.push(format!("{s}={v}"));
        }
    }
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".into(), |k| format!("{:.1} GiB", k / 1048576.0));
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let rev =
        command_output(Command::new("git").args(["-C", manifest, "rev-parse", "--short", "HEAD"]));
    let dirty = !command_output(Command::new("git").args([
        "-C",
        manifest,
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]))
    .is_empty();
    let a = &ctx.args;
    let mut s = String::new();
    writeln!(
        s,
        "## Run of {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    )?;
    writeln!(
        s,
        "- machine: {nproc} CPUs ({cpu}), {mem} memory, Linux {}; load average at start: {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    writeln!(s, "- server: {version}; {}", settings.join(", "))?;
    writeln!(
        s,
        "- pg_dump: {}",
        command_output(Command::new(&ctx.pg_dump).arg("--version"))
    )?;
    writeln!(
        s,
        "- pg_groupdump: {} (git {rev}{})",
        command_output(Command::new(&ctx.bin).arg("--version"))
            .split("; ")
            .next()
            .unwrap_or_default(),
        if dirty {
            ", with uncommitted changes in src/"
        } else {
            ""
        }
    )?;
    if !a.backup_set.is_empty() {
        writeln!(
            s,
            "- added to pg_groupdump's `[backup]`: `{}`",
            a.backup_set.join("`, `")
        )?;
    }
    if !a.compression.is_empty() {
        let pg_dump: Vec<String> = a
            .compression
            .iter()
            .map(|z| match pg_dump_compress(z, ctx.pg_dump_major) {
                Ok(Some(arg)) => format!("`--compress={arg}`"),
                _ => "no `--compress`".into(),
            })
            .collect();
        writeln!(
            s,
            "- compression: {} — every contender runs with each, in the same rounds (pg_groupdump `compression = \"…\"`; pg_dump {})",
            a.compression.iter().map(|z| format!("`{z}`")).collect::<Vec<_>>().join(", "),
            pg_dump.join(", ")
        )?;
    }
    writeln!(
        s,
        "- {} runs of each contender, in turn; jobs = {} (pg_groupdump `jobs`, pg_dump `-j`); S8 scale {}{}; lock polls every {} ms",
        a.reps,
        a.jobs,
        a.scale,
        if a.workloads.contains(&Workload::Big1) {
            format!("; big1 {} GB", a.big_gb)
        } else {
            String::new()
        },
        a.poll_ms
    )?;
    Ok(s)
}

/// Writes the configurations and lists a workload's contenders need.
fn prepare(ctx: &Ctx, w: Workload, names: &HashMap<u32, String>) -> anyhow::Result<Vec<Contender>> {
    let a = &ctx.args;
    let dir = ctx.work.join(w.database());
    fs::create_dir_all(&dir)?;
    let mut all: Vec<String> = names.values().cloned().collect();
    all.sort();
    let total = all.len();
    let n = a.sample.min(total);
    let sample: Vec<String> = (0..n).map(|i| all[i * total / n].clone()).collect();
    let mut out = Vec::new();
    for kind in ctx.contenders(w) {
        for z in compressions(a) {
            if let Some(c) = prepare_one(ctx, w, &dir, kind, z, &all, &sample)? {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// One contender at one compression (None when it is skipped on this workload).
fn prepare_one(
    ctx: &Ctx,
    w: Workload,
    dir: &Path,
    kind: Kind,
    compression: Option<String>,
    all: &[String],
    sample: &[String],
) -> anyhow::Result<Option<Contender>> {
    let a = &ctx.args;
    let total = all.len();
    let n = sample.len();
    // The native contenders are never sampled: they are what must hold up on every table.
    let per_table = matches!(kind, Kind::Loop | Kind::GroupdumpTables);
    let above = if kind == Kind::Loop {
        a.loop_sample_above
    } else {
        a.sample_above
    };
    let sampled = per_table && !a.full && total > above;
    if sampled && n == 0 {
        eprintln!(
            "bench: {}: skipping {kind:?} (--sample 0 on more than {above} tables)",
            w.name(),
        );
        return Ok(None);
    }
    let sample_info = sampled.then_some((sample.len(), total));
    let list = if sampled {
        sample.to_vec()
    } else if kind == Kind::Loop {
        all.to_vec()
    } else {
        Vec::new()
    };
    let name = file_stem(kind, compression.as_deref());
    let mut c = Contender {
        kind,
        compression,
        label: String::new(),
        sample: sample_info,
        config: None,
        list,
        list_file: None,
        groups: 0,
        tables: total,
    };
    match kind {
        Kind::GroupdumpTables
        | Kind::GroupdumpGroups
        | Kind::GroupdumpNativeTables
        | Kind::GroupdumpNativeGroups
        | Kind::GroupdumpNativeNosplit
        | Kind::GroupdumpStub => {
            let groups = if kind.few_groups() {
                w.few_groups(ctx.sizes())
            } else {
                Vec::new()
            };
            let engine = if kind.is_native() {
                "native"
            } else {
                "pg_dump"
            };
            c.groups = if kind.few_groups() {
                groups.len()
            } else {
                total
            };
            c.label = match kind {
                Kind::GroupdumpStub => {
                    "probe: pg_groupdump, every table its own group, stub pg_dump".into()
                }
                _ if kind.few_groups() => {
                    format!("pg_groupdump ({engine} engine), {} groups", groups.len())
                }
                Kind::GroupdumpNativeTables if w == Workload::Big1 => format!(
                    "pg_groupdump (native engine), jobs = {}: the table split across the sessions",
                    a.jobs
                ),
                Kind::GroupdumpNativeNosplit if w == Workload::Big1 => {
                    "pg_groupdump (native engine), split_above = \"off\": one session".into()
                }
                Kind::GroupdumpNativeNosplit => {
                    "pg_groupdump (native engine), every table its own group, split_above = \"off\""
                        .into()
                }
                _ => format!("pg_groupdump ({engine} engine), every table its own group"),
            };
            let pg_dump = if kind == Kind::GroupdumpStub {
                stub_pg_dump(ctx)?
            } else {
                ctx.pg_dump.clone()
            };
            let path = dir.join(format!("{name}.toml"));
            fs::write(
                &path,
                groupdump_config(
                    ctx,
                    w,
                    &out_dir(ctx, w, &c),
                    &pg_dump,
                    kind,
                    c.compression.as_deref(),
                    &groups,
                ),
            )?;
            c.config = Some(path);
        }
        Kind::DumpDir => c.label = format!("pg_dump -Fd -j {}", a.jobs),
        Kind::DumpCustom => c.label = "pg_dump -Fc".into(),
        Kind::Loop => {
            c.label = if total == 1 {
                format!("pg_dump -Fc -t {} (the per-table loop: one table)", all[0])
            } else {
                "per-table loop: pg_dump -Fc -t, one by one".into()
            };
            let path = dir.join(format!("{name}.tables"));
            fs::write(&path, c.list.join("\n") + "\n")?;
            c.list_file = Some(path);
        }
    }
    Ok(Some(c))
}

/// A contender's name in file names: `groupdumpnativetables`, `loop-zstd_3`, ...
fn file_stem(kind: Kind, compression: Option<&str>) -> String {
    let kind = format!("{kind:?}").to_lowercase();
    match compression {
        Some(z) => format!("{kind}-{}", z.replace([':', '='], "_")),
        None => kind,
    }
}

/// A stand-in for pg_dump that answers `--version` like the real one and otherwise writes an
/// empty `--file`.
fn stub_pg_dump(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let version = command_output(Command::new(&ctx.pg_dump).arg("--version"));
    let path = ctx.work.join("stub-pg_dump");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\n# benchmark stub: no dump, an empty file\nfor a; do\n  case $a in\n    --version) echo '{}'; exit 0 ;;\n    --file=*) : > \"${{a#--file=}}\" ;;\n  esac\ndone\n",
            version.replace('\'', "")
        ),
    )?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn groupdump_config(
    ctx: &Ctx,
    w: Workload,
    out: &Path,
    pg_dump: &Path,
    kind: Kind,
    compression: Option<&str>,
    groups: &[(String, Vec<String>)],
) -> String {
    let a = &ctx.args;
    let engine = if kind.is_native() {
        "native"
    } else {
        "pg_dump"
    };
    // Only groupdump-nosplit: the others split at the default.
    let split_above = (kind == Kind::GroupdumpNativeNosplit).then_some("off");
    let mut s = String::new();
    let _ = writeln!(s, "# written by the benchmark (examples/bench)");
    let _ = writeln!(s, "[connection]");
    let _ = writeln!(s, "host = {}", toml_str(&ctx.host));
    let _ = writeln!(s, "port = {}", ctx.port);
    let _ = writeln!(s, "user = {}", toml_str(&ctx.user));
    let _ = writeln!(s, "\n[backup]");
    let _ = writeln!(s, "dir = {}", toml_str(&out.display().to_string()));
    let _ = writeln!(s, "jobs = {}", a.jobs);
    let _ = writeln!(s, "databases = [{}]", toml_str(w.database()));
    let _ = writeln!(s, "pg_dump = {}", toml_str(&pg_dump.display().to_string()));
    let _ = writeln!(s, "engine = {}", toml_str(engine));
    let _ = writeln!(
        s,
        "# like pg_dump, which does not dump roles; the schema dump stays (users get it)"
    );
    let _ = writeln!(s, "globals = false");
    if let Some(z) = compression {
        let _ = writeln!(s, "compression = {}", toml_str(z));
    }
    if let Some(v) = split_above {
        let _ = writeln!(s, "split_above = {}", toml_str(v));
    }
    for line in &a.backup_set {
        let _ = writeln!(s, "{line}");
    }
    for (name, tables) in groups {
        let _ = writeln!(s, "\n[[group]]");
        let _ = writeln!(s, "name = {}", toml_str(name));
        let _ = writeln!(s, "database = {}", toml_str(w.database()));
        let list: Vec<String> = tables.iter().map(|t| toml_str(t)).collect();
        let _ = writeln!(s, "tables = [{}]", list.join(", "));
    }
    let _ = writeln!(s, "\n[ungrouped]");
    let _ = writeln!(s, "mode = \"table\"");
    s
}

fn out_dir(ctx: &Ctx, w: Workload, c: &Contender) -> PathBuf {
    ctx.work.join(w.database()).join(format!(
        "out-{}",
        file_stem(c.kind, c.compression.as_deref())
    ))
}

fn command(ctx: &Ctx, w: Workload, c: &Contender, out: &Path) -> Command {
    let a = &ctx.args;
    // pg_dump's --compress (checked in real_main); pg_groupdump has it in its configuration.
    let compress: Vec<String> = c
        .compression
        .as_deref()
        .and_then(|z| pg_dump_compress(z, ctx.pg_dump_major).ok().flatten())
        .map(|z| format!("--compress={z}"))
        .into_iter()
        .collect();
    let mut cmd;
    match c.kind {
        Kind::GroupdumpTables
        | Kind::GroupdumpGroups
        | Kind::GroupdumpNativeTables
        | Kind::GroupdumpNativeGroups
        | Kind::GroupdumpNativeNosplit
        | Kind::GroupdumpStub => {
            cmd = Command::new(&ctx.bin);
            cmd.arg("-c")
                .arg(c.config.as_ref().expect("config"))
                .arg("run");
            if c.sample.is_some() {
                for g in &c.list {
                    cmd.arg("--group").arg(g);
                }
            }
        }
        Kind::DumpDir => {
            cmd = Command::new(&ctx.pg_dump);
            cmd.arg("-Fd")
                .arg("-j")
                .arg(a.jobs.to_string())
                .args(&compress)
                .arg("-f")
                .arg(out.join("dump"))
                .arg("-d")
                .arg(w.database());
        }
        Kind::DumpCustom => {
            cmd = Command::new(&ctx.pg_dump);
            cmd.arg("-Fc")
                .args(&compress)
                .arg("-f")
                .arg(out.join(format!("{}.dump", w.database())))
                .arg("-d")
                .arg(w.database());
        }
        Kind::Loop => {
            // "$4" is the --compress option or nothing.
            cmd = Command::new("bash");
            cmd.arg("-c")
                .arg(r#"set -e; while IFS= read -r t; do "$0" -Fc ${4:+"$4"} -t "$t" -f "$1/$t.dump" -d "$2"; done < "$3""#)
                .arg(&ctx.pg_dump)
                .arg(out)
                .arg(w.database())
                .arg(c.list_file.as_ref().expect("list file"))
                .args(&compress);
        }
    }
    cmd.env("PGHOST", &ctx.host)
        .env("PGPORT", ctx.port.to_string())
        .env("PGUSER", &ctx.user);
    cmd
}

fn run_one(
    ctx: &Ctx,
    w: Workload,
    c: &Contender,
    rep: usize,
    watch: &locks::LockWatch,
    postmaster: i32,
    io_workers: &[i32],
) -> anyhow::Result<RunResult> {
    let out = out_dir(ctx, w, c);
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    let log = out.with_extension("stderr");
    let mut cmd = command(ctx, w, c, &out);
    // Start from a clean slate: no dirty pages of the previous run being written meanwhile.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(200));
    let load_before = load_average();
    let cpu0 = measure::reaped_children_cpu_s(postmaster);
    let io0 = measure::processes_cpu_s(io_workers);
    let poll0 = watch.backend_pid().and_then(measure::process_cpu_s);
    watch.begin();
    let measured = measure::run(&mut cmd, &log).with_context(|| format!("running {}", c.label))?;
    let locks = watch.end();
    // Let the server reap the backends of the contender's sessions.
    std::thread::sleep(Duration::from_millis(300));
    let cpu1 = measure::reaped_children_cpu_s(postmaster);
    let io1 = measure::processes_cpu_s(io_workers);
    let poll1 = watch.backend_pid().and_then(measure::process_cpu_s);
    let (dump_span_s, schema_dump_s) = measure::report_spans(&out);
    let (output_bytes, output_files, report_bytes) = measure::output_size(&out);
    let (native_groups, split) = if c.kind.is_native() {
        let n = check_native(c, &out, measured.exit_code == 0)?;
        (Some(n.groups), Some((n.split_tables, n.split_sessions)))
    } else {
        (None, None)
    };
    let error = (measured.exit_code != 0).then(|| {
        format!(
            "exit code {}: {}",
            measured.exit_code,
            measure::tail(&log, 600)
        )
    });
    fs::remove_dir_all(&out)?;
    Ok(RunResult {
        workload: w.name(),
        contender: c.kind,
        compression: c.compression.clone(),
        label: c.label.clone(),
        rep,
        sample: c.sample,
        measured,
        server_cpu_s: cpu0
            .zip(cpu1)
            .map(|(a, b)| b - a + io1.unwrap_or(0.0) - io0.unwrap_or(0.0)),
        io_worker_cpu_s: io0.zip(io1).map(|(a, b)| b - a),
        poll_cpu_s: poll0.zip(poll1).map(|(a, b)| b - a),
        dump_span_s,
        schema_dump_s,
        native_groups,
        split,
        load_before,
        output_bytes,
        output_files,
        report_bytes,
        locks,
        error,
    })
}

/// A native contender's run must have dumped every group with the native engine: no group
/// with another `engine`, none with a `fallback`, as many groups as planned (a failed run may
/// have fewer; its failure is reported anyway). Anything else stops the benchmark: its figures
/// would be pg_dump's under the native engine's name; so does a table split by
/// groupdump-nosplit. Returns how many groups were checked and which tables were split.
fn check_native(c: &Contender, out: &Path, succeeded: bool) -> anyhow::Result<NativeCheck> {
    let groups = match measure::report_groups(out) {
        Ok(g) => g,
        Err(e) if succeeded => bail!(
            "{}: cannot check which engine dumped the groups: {e}",
            c.label
        ),
        Err(_) => return Ok(NativeCheck::default()),
    };
    let split: Vec<u64> = groups
        .iter()
        .flat_map(|g| g.split.iter().copied())
        .collect();
    if c.kind == Kind::GroupdumpNativeNosplit && !split.is_empty() {
        bail!(
            "{}: split_above = \"off\", yet the run report shows {} tables copied by several sessions",
            c.label,
            split.len()
        );
    }
    let bad: Vec<String> = groups
        .iter()
        .filter(|g| g.engine.as_deref() != Some("native") || g.fallback.is_some())
        .map(|g| {
            format!(
                "{} (status {}, engine {}{})",
                g.group,
                g.status,
                g.engine.as_deref().unwrap_or("absent"),
                g.fallback
                    .as_deref()
                    .map(|f| format!(", fallback: {f}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    if !bad.is_empty() {
        bail!(
            "{}: NOT THE NATIVE ENGINE: {} of {} groups in the run report were not dumped natively: {}{}",
            c.label,
            bad.len(),
            groups.len(),
            bad.iter().take(10).cloned().collect::<Vec<_>>().join("; "),
            if bad.len() > 10 { "; …" } else { "" }
        );
    }
    if succeeded && groups.len() != c.groups {
        bail!(
            "{}: the run report lists {} table groups, {} were planned",
            c.label,
            groups.len(),
            c.groups
        );
    }
    Ok(NativeCheck {
        groups: groups.len(),
        split_tables: split.len(),
        split_sessions: split.iter().copied().max().unwrap_or(0),
    })
}

/// What `check_native` found in a run report.
#[derive(Debug, Default, PartialEq)]
struct NativeCheck {
    groups: usize,
    /// Tables copied by several sessions, and the most sessions on one.
    split_tables: usize,
    split_sessions: u64,
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one contender's successful runs on one workload, extrapolated when sampled.
#[derive(Debug, Clone, Copy)]
struct Summary {
    runs: usize,
    failed: usize,
    wall: f64,
    wall_min: f64,
    wall_max: f64,
    cpu: f64,
    self_cpu: f64,
    server_cpu: f64,
    self_rss_mib: f64,

    bytes: f64,
    lock: f64,
    /// The longest lock leaving out pg_groupdump's schema dump.
    lock_data: f64,
    /// Native contenders: table groups checked native in every run.
    native_groups: Option<usize>,
}

fn summarize(results: &[RunResult], w: Workload, c: &Contender) -> Option<Summary> {
    let all: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.workload == w.name() && r.contender == c.kind)
        .filter(|r| r.compression == c.compression)
        .collect();
    let ok: Vec<&RunResult> = all.iter().copied().filter(|r| r.error.is_none()).collect();
    if all.is_empty() {
        return None;
    }
    let f = c.factor();
    let m = |g: &dyn Fn(&RunResult) -> f64| median(ok.iter().map(|r| g(r)).collect());
    // pg_groupdump's fixed cost per run (start, catalog, plan, report) is not multiplied: only
    // the span of its table dumps is. The loop has no fixed cost to speak of.
    let walls: Vec<f64> = ok
        .iter()
        .map(|r| match r.dump_span_s {
            Some(span) if f != 1.0 => r.measured.wall_s - span + span * f,
            _ => r.measured.wall_s * f,
        })
        .collect();
    Some(Summary {
        runs: all.len(),
        failed: all.len() - ok.len(),
        wall: median(walls.clone()),
        wall_min: walls.iter().copied().fold(f64::NAN, f64::min),
        wall_max: walls.iter().copied().fold(f64::NAN, f64::max),
        cpu: m(&|r| r.measured.cpu_s) * f,
        self_cpu: m(&|r| r.measured.self_cpu_s.unwrap_or(f64::NAN)) * f,
        server_cpu: m(&|r| r.server_cpu_s.unwrap_or(f64::NAN)) * f,
        self_rss_mib: m(&|r| {
            r.measured
                .self_rss_kib
                .map_or(f64::NAN, |k| k as f64 / 1024.0)
        }),

        bytes: m(&|r| r.output_bytes as f64) * f,
        lock: m(&|r| r.locks.longest_s),
        lock_data: m(&|r| r.locks.longest_data_s),
        native_groups: ok.iter().filter_map(|r| r.native_groups).min(),
    })
}

fn fmt_s(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn table(
    ctx: &Ctx,
    w: Workload,
    info: &str,
    compression: Option<&str>,
    contenders: &[&Contender],
    results: &[RunResult],
) -> String {
    let mut s = String::new();
    match compression {
        Some(z) => {
            let _ = writeln!(s, "### {}, compression {z} — {info}\n", w.name());
        }
        None => {
            let _ = writeln!(s, "### {} — {info}\n", w.name());
        }
    }
    // The runs of this table: its workload, its compression.
    let mine = |r: &&RunResult| r.workload == w.name() && r.compression.as_deref() == compression;
    let _ = writeln!(
        s,
        "| contender | wall s (median) | min–max | × {} | CPU s (client) | of which itself | CPU s (server) | RSS MB (itself) | output MB | longest lock s | lock ÷ wall | longest lock w/o schema dump s |",
        format_args!("pg_dump -Fd -j {}", ctx.args.jobs)
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let base = contenders
        .iter()
        .find(|c| c.kind == Kind::DumpDir)
        .and_then(|c| summarize(results, w, c))
        .map(|b| b.wall);
    let mut notes = Vec::new();
    for c in contenders {
        let Some(m) = summarize(results, w, c) else {
            continue;
        };
        let x = if c.sample.is_some() { "~" } else { "" };
        let mut label = c.label.clone();
        if let Some((n, total)) = c.sample {
            label.push_str(" †");
            notes.push(format!(
                "† {}: run on {n} of the {total} tables (evenly spread{}), then extrapolated ×{:.0}: {}; CPU and output linearly; RSS and the longest lock as measured on the sample; lock ÷ wall against the extrapolated wall.",
                c.label,
                if c.kind == Kind::GroupdumpTables {
                    ", selected with `run --group …`, which also skips the schema dump"
                } else {
                    ""
                },
                c.factor(),
                if c.kind == Kind::GroupdumpTables {
                    "the wall time of the table dumps (first start to last end, from the run report) multiplied, the rest of the run (start, catalog, plan, report) added once"
                } else {
                    "wall time linearly"
                },
            ));
        }
        if m.failed > 0 {
            label.push_str(&format!(" ({} of {} runs FAILED)", m.failed, m.runs));
        }
        let probe = c.kind == Kind::GroupdumpStub;
        let ratio = match base {
            Some(b) if !probe => format!("{x}{:.2}", m.wall / b),
            _ => "–".into(),
        };
        let (lock, lock_ratio, lock_data) = if probe {
            ("–".to_string(), "–".to_string(), "–".to_string())
        } else {
            (
                fmt_s(m.lock),
                format!("{x}{:.3}", m.lock / m.wall),
                fmt_s(m.lock_data),
            )
        };
        let _ = writeln!(
            s,
            "| {label} | {x}{} | {x}{}–{} | {ratio} | {x}{} | {x}{} | {x}{} | {} | {x}{:.1} | {lock} | {lock_ratio} | {lock_data} |",
            fmt_s(m.wall),
            fmt_s(m.wall_min),
            fmt_s(m.wall_max),
            fmt_s(m.cpu),
            fmt_s(m.self_cpu),
            fmt_s(m.server_cpu),
            fmt_s(m.self_rss_mib),
            m.bytes / 1048576.0,
        );
    }
    // The split's point: how much shorter a table's lock is when several sessions copy it.
    let summary = |k: Kind| {
        contenders
            .iter()
            .find(|c| c.kind == k)
            .and_then(|c| summarize(results, w, c))
    };
    if let (Some(split), Some(one)) = (
        summary(Kind::GroupdumpNativeTables),
        summary(Kind::GroupdumpNativeNosplit),
    ) {
        let _ = writeln!(
            s,
            "\n**lock window, jobs = {} split ÷ one session: {:.2}** ({} s ÷ {} s, the medians of *longest lock w/o schema dump*; wall {:.2}, {} s ÷ {} s)",
            ctx.args.jobs,
            split.lock_data / one.lock_data,
            fmt_s(split.lock_data),
            fmt_s(one.lock_data),
            split.wall / one.wall,
            fmt_s(split.wall),
            fmt_s(one.wall),
        );
    }
    let native: Vec<String> = contenders
        .iter()
        .filter(|c| c.kind.is_native())
        .filter_map(|c| {
            let m = summarize(results, w, c)?;
            let seen = median(
                results
                    .iter()
                    .filter(mine)
                    .filter(|r| r.contender == c.kind)
                    .filter(|r| r.error.is_none())
                    .map(|r| r.locks.tables_seen_data as f64)
                    .collect(),
            );
            // (tables, most sessions) copied by several sessions, the most in any run.
            let (split_tables, split_sessions) = results
                .iter()
                .filter(mine)
                .filter(|r| r.contender == c.kind)
                .filter_map(|r| r.split)
                .fold((0, 0), |(t, n), (t2, n2)| (t.max(t2), n.max(n2)));
            Some(format!(
                "{} ({} groups; the lock poller saw {seen:.0} of the {} tables locked by their group's session{}; {})",
                c.label,
                m.native_groups.map_or("?".into(), |n| n.to_string()),
                c.tables,
                if seen < c.tables as f64 {
                    ", the others' locks beginning and ending between two polls"
                } else {
                    ""
                },
                if split_tables == 0 {
                    "no table copied by several sessions".to_string()
                } else {
                    format!("{split_tables} tables copied by several sessions, up to {split_sessions} on one")
                },
            ))
        })
        .collect();
    if !native.is_empty() {
        notes.push(format!(
            "Native engine checked in every run's report: every group of {} has `\"engine\": \"native\"` and no `fallback` (the benchmark stops otherwise).",
            native.join(" and ")
        ));
    }
    notes.push("*longest lock w/o schema dump*: the longest lock on one table leaving out pg_groupdump's schema dump (`pg_groupdump/_schema`, which locks every table while it runs), i.e. the lock a table is held under while its own data is dumped (for pg_groupdump: its group's dump and row count); for `pg_dump` and the loop the same as *longest lock*.".into());
    if contenders.iter().any(|c| c.kind == Kind::GroupdumpStub) {
        notes.push("The probe is no contender: pg_groupdump with every table its own group and a stub that writes an empty file in place of pg_dump, so what it measures is pg_groupdump's own cost per group (planning, snapshot, lock monitor, child process, file, report) and its memory with that many groups.".into());
    }
    let io_max = results
        .iter()
        .filter(mine)
        .filter_map(|r| r.io_worker_cpu_s)
        .fold(f64::NAN, f64::max);
    if io_max > 0.0 {
        notes.push(format!(
            "*CPU s (server)* includes the server's io workers (`io_method = worker`, PostgreSQL 18's default: they read the data files into shared buffers for the backends; long-lived, so their CPU is read from `/proc` before and after each run): at most {} s in any run.",
            fmt_s(io_max)
        ));
    }
    let poll_max = results
        .iter()
        .filter(mine)
        .filter_map(|r| Some(r.poll_cpu_s? / r.measured.wall_s))
        .fold(0.0f64, f64::max);
    let loads: Vec<f64> = results
        .iter()
        .filter(mine)
        .filter_map(|r| r.load_before)
        .collect();
    notes.push(format!(
        "Lock polling (not counted in the CPU columns) took at most {:.0}% of a core during any run. The machine's load average (1 min) when a run started: {:.1} to {:.1}.",
        poll_max * 100.0,
        loads.iter().copied().fold(f64::NAN, f64::min),
        loads.iter().copied().fold(f64::NAN, f64::max),
    ));
    for n in notes {
        let _ = writeln!(s, "\n{n}");
    }
    s.push('\n');
    s
}

fn growth(
    done: &[(Workload, Vec<Contender>, String)],
    compression: Option<&str>,
    results: &[RunResult],
) -> String {
    let find = |w: Workload| done.iter().find(|(x, _, _)| *x == w);
    let (Some((_, small, _)), Some((_, big, _))) = (find(Workload::S1000), find(Workload::S10000))
    else {
        return String::new();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Growth from S1000 to S10000 (10× the tables, the same 1 million rows){}\n",
        compression
            .map(|z| format!(", compression {z}"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "| contender | wall s S1000 | wall s S10000 | growth | ms per table S1000 | ms per table S10000 | CPU growth (client) | CPU growth (server) |");
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for c in small
        .iter()
        .filter(|c| c.compression.as_deref() == compression)
    {
        let Some(b) = big
            .iter()
            .find(|b| b.kind == c.kind && b.compression == c.compression)
        else {
            continue;
        };
        let (Some(m1), Some(m2)) = (
            summarize(results, Workload::S1000, c),
            summarize(results, Workload::S10000, b),
        ) else {
            continue;
        };
        let x1 = if c.sample.is_some() { "~" } else { "" };
        let x = if b.sample.is_some() || c.sample.is_some() {
            "~"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| {}{} | {x1}{} | {x}{} | {x}{:.1}× | {x1}{:.1} | {x}{:.1} | {x}{:.1}× | {x}{:.1}× |",
            c.label,
            if x.is_empty() { "" } else { " †" },
            fmt_s(m1.wall),
            fmt_s(m2.wall),
            m2.wall / m1.wall,
            m1.wall * 1000.0 / 1000.0,
            m2.wall * 1000.0 / 10000.0,
            m2.cpu / m1.cpu,
            m2.server_cpu / m1.server_cpu,
        );
    }
    let _ = writeln!(
        s,
        "\n† extrapolated from a sample (see the notes under the tables above)."
    );
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contender(groups: usize) -> Contender {
        Contender {
            kind: Kind::GroupdumpNativeTables,
            compression: None,
            label: "native".into(),
            sample: None,
            config: None,
            list: Vec::new(),
            list_file: None,
            groups,
            tables: groups,
        }
    }

    fn report(dir: &Path, groups: &str) {
        fs::create_dir_all(dir.join("reports")).unwrap();
        fs::write(
            dir.join("reports/20261123T000000Z.json"),
            format!(r#"{{"run_id": "x", "groups": [{{"kind": "schema", "group": "_schema"}}, {groups}]}}"#),
        )
        .unwrap();
    }

    #[test]
    fn pg_dump_versions_and_compress_options() {
        assert_eq!(pg_dump_major("pg_dump (PostgreSQL) 18.6"), Some(18));
        assert_eq!(
            pg_dump_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(pg_dump_major(""), None);
        let z = |spec: &str, major| pg_dump_compress(spec, major).map_err(|e| e.to_string());
        assert_eq!(z("zstd", 18).unwrap().as_deref(), Some("zstd"));
        assert_eq!(z("gzip:6", 16).unwrap().as_deref(), Some("gzip:6"));
        assert_eq!(z("gzip", 15).unwrap(), None);
        assert_eq!(z("gzip:6", 15).unwrap().as_deref(), Some("6"));
        assert_eq!(z("none", 14).unwrap().as_deref(), Some("0"));
        assert!(z("zstd", 15).unwrap_err().contains("need pg_dump 16"));
        assert!(z("brotli", 18).is_err());
        assert!(z("zstd:x", 18).is_err());
    }

    #[test]
    fn native_check() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        // No report: an error for a run that succeeded, nothing to check for one that failed.
        assert!(check_native(&contender(1), d, true).is_err());
        assert_eq!(check_native(&contender(1), d, false).unwrap().groups, 0);

        let ok = r#"{"kind": "tables", "group": "a", "status": "ok", "engine": "native"}"#;
        report(d, ok);
        assert_eq!(check_native(&contender(1), d, true).unwrap().groups, 1);
        // Fewer groups than planned.
        assert!(check_native(&contender(2), d, true).is_err());

        for bad in [
            r#"{"kind": "tables", "group": "b", "status": "ok", "engine": "pg_dump", "fallback": "t was altered"}"#,
            r#"{"kind": "tables", "group": "b", "status": "ok", "engine": "native", "fallback": "x"}"#,
            r#"{"kind": "tables", "group": "b", "status": "ok", "engine": "pg_dump"}"#,
            r#"{"kind": "tables", "group": "b", "status": "ok"}"#,
        ] {
            report(d, &format!("{ok}, {bad}"));
            let e = check_native(&contender(2), d, true)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("NOT THE NATIVE ENGINE") && e.contains("b (status ok"),
                "{e}"
            );
            // A failed run is checked as well.
            assert!(check_native(&contender(2), d, false).is_err());
        }

        // A table split in the last attempt; none of that for groupdump-nosplit.
        report(
            d,
            r#"{"kind": "tables", "group": "a", "status": "ok", "engine": "native", "attempts": [{"split": [{"table": "public.x", "sessions": 3, "ranges": 3}]}, {"split": [{"table": "public.big", "sessions": 2, "ranges": 2}]}]}"#,
        );
        assert_eq!(
            check_native(&contender(1), d, true).unwrap(),
            NativeCheck {
                groups: 1,
                split_tables: 1,
                split_sessions: 2
            }
        );
        let mut nosplit = contender(1);
        nosplit.kind = Kind::GroupdumpNativeNosplit;
        let e = check_native(&nosplit, d, true).unwrap_err().to_string();
        assert!(e.contains("split_above"), "{e}");
        report(d, ok);
        assert_eq!(check_native(&nosplit, d, true).unwrap().split_tables, 0);
    }
}
