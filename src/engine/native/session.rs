//! The native engine's sessions: set up as pg_dump sets up its own, with the group query
//! prepared once, and kept in the engines' [`Pool`] between groups.

use tokio_postgres::Client;

use super::toc::FINGERPRINT;
use crate::connect::{application_name, ConnParams, ConnectError};
use crate::engine::pool::{Pool, Pooled};

/// Why a session could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{}", crate::text::pg_error_text(.0))]
    Setup(#[from] tokio_postgres::Error),
}

/// A session kept for native dumps.
pub struct NativeSession {
    pub(super) client: Client,
    pub pid: i32,
    /// [`GROUP_QUERY`], prepared once: planning it costs more than running it.
    pub(super) group_query: tokio_postgres::Statement,
}

impl Pooled for NativeSession {
    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Per group table: oid, relkind, quoted name, COPY column list, fingerprint, when the
/// snapshot was taken (the query takes it) and at which WAL position; then the quoted name
/// and column list again in the database's encoding, for the archive; the block size and its
/// heap's bytes; the schema and name, unquoted.
const GROUP_QUERY: &str = "SELECT c.oid, c.relkind::text,
        pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
           FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attgenerated = ''),
        FINGERPRINT,
        to_char(pg_catalog.statement_timestamp() AT TIME ZONE 'UTC',
                'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        (CASE WHEN pg_catalog.pg_is_in_recovery()
              THEN pg_catalog.pg_last_wal_replay_lsn()
              ELSE pg_catalog.pg_current_wal_lsn() END)::text,
        pg_catalog.convert_to(pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname),
                              pg_catalog.getdatabaseencoding()),
        pg_catalog.convert_to(
          (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
             FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              AND a.attgenerated = ''),
          pg_catalog.getdatabaseencoding()),
        pg_catalog.current_setting('block_size')::int8,
        pg_catalog.pg_relation_size(c.oid),
        n.nspname::text, c.relname::text
   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = ANY($1)";

/// Native sessions: idle ones per database, new ones opened and set up on demand.
#[derive(Clone)]
pub struct Sessions {
    conn: ConnParams,
    idle: Pool<NativeSession>,
}

impl Sessions {
    pub fn new(conn: ConnParams, max_idle: usize) -> Self {
        Sessions {
            conn,
            idle: Pool::new(max_idle),
        }
    }

    /// An idle session on `database`, or a new one.
    pub async fn take(&self, database: &str) -> Result<NativeSession, SessionError> {
        if let Some(s) = self.idle.take(database) {
            return Ok(s);
        }
        let client = self
            .conn
            .connect(database, &application_name("native"))
            .await?;
        // What pg_dump sets: output that any server restores the same way, no timeouts, and
        // an error rather than silently filtered rows under row-level security.
        client
            .batch_execute(
                "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3;
                 SET synchronize_seqscans = off; SET statement_timeout = 0;
                 SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0;
                 SET row_security = off; SET plan_cache_mode = force_generic_plan;
                 SELECT pg_catalog.set_config('search_path', '', false)",
            )
            .await?;
        let pid = client
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await?
            .get(0);
        let group_query = client
            .prepare(&GROUP_QUERY.replace("FINGERPRINT", FINGERPRINT))
            .await?;
        Ok(NativeSession {
            client,
            pid,
            group_query,
        })
    }

    /// Returns a session whose transaction has ended.
    pub fn give(&self, database: &str, s: NativeSession) {
        self.idle.give(database, s);
    }
}
