//! Group snapshots: a session of ours opens a repeatable-read transaction, exports its
//! snapshot and hands it to `pg_dump --snapshot`, so that we know exactly when each group's
//! snapshot was taken and at which WAL position — the honest record of how far apart two
//! groups are in time.
//!
//! The exporting session takes no lock on any table (it only reads `now()` and the WAL
//! position), so it can never queue a dump behind a DDL statement (see the pitfall of
//! pre-locking in one session what another will lock). Idle sessions are kept per database
//! and reused by the next group.

use tokio_postgres::Client;

use super::pool::Pool;
use crate::connect::{application_name, ConnParams, ConnectError};
use crate::report::SnapshotInfo;

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

/// Why a snapshot could not be exported or its rows counted.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{}", crate::text::pg_error_text(.0))]
    Server(#[from] tokio_postgres::Error),
}

/// Exports snapshots, keeping idle sessions for the next group of their database.
#[derive(Clone)]
pub struct Snapshots {
    conn: ConnParams,
    idle: Pool<Client>,
}

impl Exported {
    /// The exporting session, inside the snapshot's transaction.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Snapshots {
    pub fn new(conn: ConnParams, max_idle: usize) -> Self {
        Snapshots {
            conn,
            idle: Pool::new(max_idle),
        }
    }

    /// An idle session of `database`, or a new one.
    async fn session(&self, database: &str) -> Result<Client, SnapshotError> {
        match self.idle.take(database) {
            Some(c) => Ok(c),
            None => Ok(self
                .conn
                .connect(database, &application_name("snapshot"))
                .await?),
        }
    }

    /// Opens a transaction on `database` and exports its snapshot.
    pub async fn export(&self, database: &str) -> Result<Exported, SnapshotError> {
        let client = self.session(database).await?;
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
            Err(e) => Err(e.into()),
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
    ) -> Result<Vec<i64>, SnapshotError> {
        let c = &exported.client;
        c.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            lock_timeout.as_millis().max(1)
        ))
        .await?;
        let mut counts = Vec::with_capacity(tables.len());
        for (schema, table) in tables {
            let sql = format!(
                "SELECT count(*) FROM ONLY {}.{}",
                crate::text::quote_ident(schema),
                crate::text::quote_ident(table)
            );
            let row = c.query_one(&sql, &[]).await?;
            counts.push(row.get(0));
        }
        Ok(counts)
    }

    /// What `oids` are called now (the latest catalog), on an idle session of `database`.
    pub async fn resolve(
        &self,
        database: &str,
        oids: &[u32],
    ) -> Result<super::follow::Names, SnapshotError> {
        let client = self.session(database).await?;
        let names = super::follow::resolve(&client, oids).await?;
        self.idle.give(database, client);
        Ok(names)
    }

    /// Ends the transaction and keeps the session for the next group of its database.
    pub async fn release(&self, exported: Exported) {
        if exported.client.batch_execute("COMMIT").await.is_ok() {
            self.idle.give(&exported.database, exported.client);
        }
    }
}
