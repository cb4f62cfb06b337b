//! Idle database sessions kept for the next job of the same database, the one pool both
//! engines use: the pg_dump engine for the sessions that export its snapshots, the native
//! engine for the sessions that copy its groups.
//!
//! A pool only keeps and hands back sessions; opening and setting one up is its user's
//! business, since each engine sets up its sessions its own way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A session a pool can keep: it knows whether its connection has gone.
pub trait Pooled {
    fn is_closed(&self) -> bool;
}

impl Pooled for tokio_postgres::Client {
    fn is_closed(&self) -> bool {
        tokio_postgres::Client::is_closed(self)
    }
}

/// Idle sessions per database, at most `max_idle` of them over all databases (a run over
/// many databases must not hold `jobs` connections to each of them).
pub struct Pool<S> {
    idle: Arc<Mutex<HashMap<String, Vec<S>>>>,
    max_idle: usize,
}

impl<S> Clone for Pool<S> {
    fn clone(&self) -> Self {
        Pool {
            idle: self.idle.clone(),
            max_idle: self.max_idle,
        }
    }
}

impl<S: Pooled> Pool<S> {
    pub fn new(max_idle: usize) -> Self {
        Pool {
            idle: Arc::default(),
            max_idle: max_idle.max(1),
        }
    }

    /// An idle session of `database` whose connection is still open, if there is one.
    pub fn take(&self, database: &str) -> Option<S> {
        let mut idle = self.idle.lock().expect("session pool");
        let sessions = idle.get_mut(database)?;
        while let Some(s) = sessions.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Keeps a session whose transaction has ended. Beyond `max_idle` idle sessions, the
    /// oldest of other databases are closed first.
    pub fn give(&self, database: &str, s: S) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("session pool");
        idle.entry(database.to_string()).or_default().push(s);
        let mut total: usize = idle.values().map(Vec::len).sum();
        while total > self.max_idle {
            let victim = idle
                .iter()
                .filter(|(db, v)| db.as_str() != database && !v.is_empty())
                .map(|(db, _)| db.clone())
                .next()
                .unwrap_or_else(|| database.to_string());
            if let Some(v) = idle.get_mut(&victim) {
                v.remove(0);
            }
            idle.retain(|_, v| !v.is_empty());
            total -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct S(u32, Arc<AtomicBool>);
    impl Pooled for S {
        fn is_closed(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
    }
    fn open(n: u32) -> S {
        S(n, Arc::default())
    }

    #[test]
    fn sessions_come_back_per_database_and_closed_ones_are_dropped() {
        let pool = Pool::new(4);
        pool.give("a", open(1));
        let closed = open(2);
        closed.1.store(true, Ordering::Relaxed);
        let flag = closed.1.clone();
        flag.store(false, Ordering::Relaxed);
        pool.give("a", closed);
        flag.store(true, Ordering::Relaxed);
        assert!(pool.take("b").is_none());
        assert_eq!(
            pool.take("a").map(|s| s.0),
            Some(1),
            "the closed one is skipped"
        );
        assert!(pool.take("a").is_none());
    }

    #[test]
    fn other_databases_make_room_first() {
        let pool = Pool::new(2);
        pool.give("a", open(1));
        pool.give("b", open(2));
        pool.give("b", open(3));
        assert!(pool.take("a").is_none(), "a's session made room for b's");
        assert_eq!(pool.take("b").map(|s| s.0), Some(3));
        assert_eq!(pool.take("b").map(|s| s.0), Some(2));
    }
}
