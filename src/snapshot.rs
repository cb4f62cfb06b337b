//! Group snapshots: a session of ours opens a repeatable-read transaction, exports its
//! snapshot and hands it to `pg_dump --snapshot`, so that we know exactly when each group's
//! snapshot was taken and at which WAL position — the honest record of how far apart two
//! groups are in time.
//!
//! The exporting session takes no lock on any table (it only reads `now()` and the WAL
//! position), so it can never queue a dump behind a DDL statement (see the pitfall of
//! pre-locking in one session what another will lock). Idle sessions are kept per database
//! and reused by the next group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::connect::{application_name, ConnParams};

/// Where and when a group's snapshot was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Server time when the snapshot was taken (UTC, RFC 3339).
    pub taken_at: String,
    /// WAL position at that moment (`pg_current_wal_lsn()`, or the replay position on a standby).
    pub wal_lsn: Option<String>,
}

/// An open transaction whose snapshot a child process is using.
pub struct Exported {
    client: Client,
    database: String,
    /// The snapshot id for `pg_dump --snapshot`.
    pub id: String,
    /// The exporting session's backend pid.
    pub pid: i32,
    pub info: SnapshotInfo,
}

/// Per-database pools of idle sessions.
#[derive(Clone)]
pub struct Snapshots {
    conn: ConnParams,
    idle: Arc<Mutex<HashMap<String, Vec<Client>>>>,
}

impl Exported {
    /// The exporting session, inside the snapshot's transaction.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Snapshots {
    pub fn new(conn: ConnParams) -> Self {
        Snapshots {
            conn,
            idle: Arc::default(),
        }
    }

    /// Opens a transaction on `database` and exports its snapshot.
    pub async fn export(&self, database: &str) -> Result<Exported, String> {
        let pooled = self
            .idle
            .lock()
            .expect("snapshot pool")
            .get_mut(database)
            .and_then(Vec::pop);
        let client = match pooled {
            Some(c) if !c.is_closed() => c,
            _ => self
                .conn
                .connect(database, &application_name("snapshot"))
                .await
                .map_err(|e| e.to_string())?,
        };
        let run = async {
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await?;
            client
                .query_one(
                    "SELECT pg_catalog.pg_export_snapshot(), pg_catalog.pg_backend_pid(),
                            to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                            (CASE WHEN pg_catalog.pg_is_in_recovery()
                                  THEN pg_catalog.pg_last_wal_replay_lsn()
                                  ELSE pg_catalog.pg_current_wal_lsn() END)::text",
                    &[],
                )
                .await
        };
        match run.await {
            Ok(row) => Ok(Exported {
                id: row.get(0),
                pid: row.get(1),
                info: SnapshotInfo {
                    taken_at: row.get(2),
                    wal_lsn: row.get(3),
                },
                client,
                database: database.to_string(),
            }),
            Err(e) => Err(crate::text::pg_error_text(&e)),
        }
    }

    /// Counts the rows of each (schema, table), `ONLY` that table (partitions are counted on
    /// their own), in the exported snapshot — the rows the dump that used it contains. Runs
    /// after the dump has finished, so it takes its own short ACCESS SHARE locks, bounded by
    /// `lock_timeout`.
    pub async fn count_rows(
        &self,
        exported: &Exported,
        tables: &[(String, String)],
        lock_timeout: std::time::Duration,
    ) -> Result<Vec<i64>, String> {
        let c = &exported.client;
        c.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            lock_timeout.as_millis().max(1)
        ))
        .await
        .map_err(|e| crate::text::pg_error_text(&e))?;
        let mut counts = Vec::with_capacity(tables.len());
        for (schema, table) in tables {
            let sql = format!(
                "SELECT count(*) FROM ONLY {}.{}",
                crate::text::quote_ident(schema),
                crate::text::quote_ident(table)
            );
            let row = c
                .query_one(&sql, &[])
                .await
                .map_err(|e| crate::text::pg_error_text(&e))?;
            counts.push(row.get(0));
        }
        Ok(counts)
    }

    /// Ends the transaction and keeps the session for the next group of its database.
    pub async fn release(&self, exported: Exported) {
        if exported.client.batch_execute("COMMIT").await.is_ok() {
            self.idle
                .lock()
                .expect("snapshot pool")
                .entry(exported.database)
                .or_default()
                .push(exported.client);
        }
    }
}
