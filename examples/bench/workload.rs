//! The workloads: one database each, made once and reused while its description matches.
//!
//! - S8: eight tables `(id int, info text, crt_time timestamp)` of md5 text with 2, 1.5, 1, 3,
//!   4, 1, 1 and 5 million rows times the scale factor;
//! - S1000: 1000 tables of 1000 rows; S10000: 10 000 tables of 100 rows (same shape);
//! - big1: one such table of about `--big-gb` GB (14 million rows a GB), one
//!   `INSERT … SELECT … generate_series`.
//!
//! After loading, `VACUUM (FREEZE, ANALYZE)` and `CHECKPOINT`, so that no dump sets hint bits
//! (writing pages) and pg_groupdump's size estimates are right.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use tokio_postgres::{Client, Config, NoTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[clap(rename_all = "lower")]
pub enum Workload {
    S8,
    S1000,
    S10000,
    Big1,
}

/// The sizes of the workloads that have one: S8's scale factor, big1's gigabytes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub scale: f64,
    pub big_gb: f64,
}

/// Millions of rows of S8's tables at scale 1.
const S8_MILLIONS: [f64; 8] = [2.0, 1.5, 1.0, 3.0, 4.0, 1.0, 1.0, 5.0];

/// Rows of that shape in a GiB of heap: a tuple of 72 bytes (24 of header, the int, 33 of md5
/// text, the timestamp aligned to 8) and its 4-byte line pointer, 107 to an 8 kB page.
const BIG1_ROWS_PER_GB: f64 = 107.0 * 131072.0;

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::S8 => "S8",
            Workload::S1000 => "S1000",
            Workload::S10000 => "S10000",
            Workload::Big1 => "big1",
        }
    }

    pub fn database(self) -> &'static str {
        match self {
            Workload::S8 => "bench_s8",
            Workload::S1000 => "bench_s1000",
            Workload::S10000 => "bench_s10000",
            Workload::Big1 => "bench_big1",
        }
    }

    /// (table name, rows) of every table.
    pub fn tables(self, sizes: Sizes) -> Vec<(String, i64)> {
        let scale = sizes.scale;
        match self {
            Workload::S8 => S8_MILLIONS
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    (
                        format!("t{}", i + 1),
                        ((m * 1e6 * scale).round() as i64).max(1),
                    )
                })
                .collect(),
            Workload::S1000 => (1..=1000).map(|i| (format!("t{i:04}"), 1000)).collect(),
            Workload::S10000 => (1..=10000).map(|i| (format!("t{i:05}"), 100)).collect(),
            Workload::Big1 => vec![(
                "big".into(),
                ((sizes.big_gb * BIG1_ROWS_PER_GB).round() as i64).max(1),
            )],
        }
    }

    /// What is recorded as the database's comment once it is complete.
    pub fn description(self, sizes: Sizes) -> String {
        let t = self.tables(sizes);
        let rows: i64 = t.iter().map(|(_, r)| r).sum();
        format!(
            "pg_groupdump bench v1: {} tables, {} rows{}",
            t.len(),
            rows,
            match self {
                Workload::S8 => format!(", scale {}", sizes.scale),
                Workload::Big1 => format!(", {} GB", sizes.big_gb),
                _ => String::new(),
            }
        )
    }

    /// The "few groups" layout: group name and its tables (schema-qualified).
    pub fn few_groups(self, sizes: Sizes) -> Vec<(String, Vec<String>)> {
        let names: Vec<String> = self
            .tables(sizes)
            .into_iter()
            .map(|(t, _)| format!("public.{t}"))
            .collect();
        match self {
            // 5.5, 7 and 6 million rows at scale 1.
            Workload::S8 => [
                ("g1", vec![0, 1, 2, 5]),
                ("g2", vec![3, 4]),
                ("g3", vec![6, 7]),
            ]
            .into_iter()
            .map(|(g, ix)| {
                (
                    g.to_string(),
                    ix.iter().map(|&i| names[i].clone()).collect(),
                )
            })
            .collect(),
            // One table, one group.
            Workload::Big1 => vec![("g1".to_string(), names)],
            _ => names
                .chunks(names.len() / 10)
                .enumerate()
                .map(|(i, c)| (format!("g{:02}", i + 1), c.to_vec()))
                .collect(),
        }
    }
}

pub async fn connect(config: &Config, db: &str) -> anyhow::Result<Client> {
    let mut c = config.clone();
    c.dbname(db);
    let (client, conn) = c
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to database {db}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("bench: connection closed: {e}");
        }
    });
    Ok(client)
}

/// Makes the workload's database unless it already holds this very workload.
pub async fn ensure(
    config: &Config,
    w: Workload,
    sizes: Sizes,
    recreate: bool,
) -> anyhow::Result<()> {
    let admin = connect(config, "postgres").await?;
    let want = w.description(sizes);
    let have: Option<Option<String>> = admin
        .query_opt(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = $1",
            &[&w.database()],
        )
        .await?
        .map(|r| r.get(0));
    if !recreate && have.as_ref().and_then(|d| d.as_deref()) == Some(want.as_str()) {
        eprintln!(
            "bench: {} already in database {}: {want}",
            w.name(),
            w.database()
        );
        return Ok(());
    }
    let started = Instant::now();
    eprintln!(
        "bench: creating {} in database {} ({want})",
        w.name(),
        w.database()
    );
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {}", w.database()))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", w.database()))
        .await?;
    let db = connect(config, w.database()).await?;
    let tables = w.tables(sizes);
    match w {
        Workload::S8 | Workload::Big1 => {
            for (t, rows) in &tables {
                db.batch_execute(&format!(
                    "CREATE TABLE public.{t} (id int, info text, crt_time timestamp);
                     INSERT INTO public.{t} SELECT id, md5(random()::text), clock_timestamp()
                       FROM generate_series(1, {rows}) AS id;"
                ))
                .await?;
            }
        }
        _ => {
            let width = if w == Workload::S1000 { 4 } else { 5 };
            let rows = tables[0].1;
            let n = tables.len();
            // 500 tables per transaction: each new table holds a lock until commit.
            for from in (1..=n).step_by(500) {
                let to = (from + 499).min(n);
                db.batch_execute(&format!(
                    "DO $$ DECLARE t text; BEGIN
                       FOR i IN {from}..{to} LOOP
                         t := 't' || lpad(i::text, {width}, '0');
                         EXECUTE format('CREATE TABLE public.%I (id int, info text, crt_time timestamp)', t);
                         EXECUTE format('INSERT INTO public.%I SELECT id, md5(random()::text), clock_timestamp() FROM generate_series(1, {rows}) AS id', t);
                       END LOOP;
                     END $$;"
                ))
                .await?;
            }
        }
    }
    db.batch_execute("VACUUM (FREEZE, ANALYZE)").await?;
    db.batch_execute("CHECKPOINT").await?;
    admin
        .batch_execute(&format!(
            "COMMENT ON DATABASE {} IS '{}'",
            w.database(),
            want.replace('\'', "''")
        ))
        .await?;
    eprintln!(
        "bench: {} created in {:.0}s",
        w.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The database's oid and its workload tables (oid to `schema.table`), with their total size.
pub async fn tables(
    config: &Config,
    w: Workload,
) -> anyhow::Result<(u32, HashMap<u32, String>, i64)> {
    let db = connect(config, w.database()).await?;
    let oid: u32 = db
        .query_one(
            "SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    let rows = db
        .query(
            "SELECT c.oid, n.nspname || '.' || c.relname, pg_catalog.pg_total_relation_size(c.oid)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind = 'r'",
            &[],
        )
        .await?;
    let size = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
    Ok((
        oid,
        rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        size,
    ))
}
