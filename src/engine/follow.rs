//! Groups follow their tables by oid, not by name.
//!
//! The plan is made from the catalog at the start of a run; a group may be dumped many
//! minutes later, and meanwhile another session may drop a table, rename it or move it to
//! another schema. A name taken from the plan then names nothing (`relation … does not
//! exist`), or names another table. The oid does not change under a rename, so right before
//! a group's locks each attempt asks the catalog what its oids are called now ([`resolve`],
//! one query on a session of ours) and the job follows ([`Job::follow`]):
//! - a table renamed or moved is dumped under its new name, in the same group (same
//!   directory and file name), and the report lists its old and new names;
//! - a dropped table is left out of the group's archive and reported `gone`; a group whose
//!   every table is gone has nothing to dump ([`AttemptError::Gone`]), which is no failure.
//!
//! - a partition attached to one of the group's partitioned tables after the plan is dumped
//!   with it; one detached stays in the group as the table of its own it now is; one dropped
//!   is gone like any table. The group is dumped as its snapshot sees it.
//!
//! Names are resolved before the locks and may change again before the locks are granted.
//! Each engine confirms after locking that the names it locked still belong to the group's
//! oids, and resolves again when they do not (see `native::copy` and `pg_dump`).

use std::collections::HashMap;

use tokio_postgres::Client;

use super::job::{AttemptError, Contents, Job};
use crate::report::{now_rfc3339, Change, TableChange};

/// The schema and name of each oid that still names a relation.
pub type Names = HashMap<u32, (String, String)>;

/// The relations `$1` and their partitions at every level, with their names.
const RESOLVE: &str = "WITH RECURSIVE tree(oid) AS (
        SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = ANY($1)
        UNION
        SELECT i.inhrelid FROM pg_catalog.pg_inherits i
          JOIN tree ON i.inhparent = tree.oid
          JOIN pg_catalog.pg_class k ON k.oid = i.inhrelid AND k.relispartition)
 SELECT c.oid, n.nspname::text, c.relname::text
   FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid
   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

/// What the catalog calls `oids` now, and the partitions of those that are partitioned, as
/// `client`'s snapshot sees it (outside a transaction: the latest committed catalog).
pub async fn resolve(client: &Client, oids: &[u32]) -> Result<Names, tokio_postgres::Error> {
    let rows = client.query(RESOLVE, &[&oids]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// `schema.table` as the plan and the report write it.
fn display(schema: &str, table: &str) -> String {
    crate::text::display_name(schema, table)
}

impl Job {
    /// Makes the job's tables what `now` says: renamed tables take their new names, dropped
    /// ones leave the job; each change is recorded once (a second rename updates the first).
    /// Returns [`AttemptError::Gone`] when no table is left.
    pub fn follow(&mut self, now: &Names) -> Result<(), AttemptError> {
        let Contents::Tables(pairs) = &mut self.contents else {
            return Ok(());
        };
        let mut kept = (Vec::new(), Vec::new(), Vec::new());
        for ((oid, name), pair) in self.table_oids.iter().zip(&self.tables).zip(pairs.iter()) {
            let Some(current) = now.get(oid) else {
                tracing::warn!(
                    "{}/{}: table {} was dropped after the plan; left out of the group's archive",
                    self.database.as_deref().unwrap_or_default(),
                    self.group,
                    crate::text::printable(name)
                );
                record(&mut self.changes, *oid, name, Change::Gone, None);
                continue;
            };
            if current != pair {
                let new = display(&current.0, &current.1);
                tracing::warn!(
                    "{}/{}: table {} was renamed to {} after the plan; dumped under its new name",
                    self.database.as_deref().unwrap_or_default(),
                    self.group,
                    crate::text::printable(name),
                    crate::text::printable(&new)
                );
                record(
                    &mut self.changes,
                    *oid,
                    name,
                    Change::Renamed,
                    Some(new.clone()),
                );
                kept.0.push(*oid);
                kept.1.push(new);
                kept.2.push(current.clone());
            } else {
                kept.0.push(*oid);
                kept.1.push(name.clone());
                kept.2.push(pair.clone());
            }
        }
        let mut attached: Vec<(&u32, &(String, String))> = now
            .iter()
            .filter(|(oid, _)| !self.table_oids.contains(oid))
            .collect();
        attached.sort();
        for (oid, pair) in attached {
            let name = display(&pair.0, &pair.1);
            tracing::warn!(
                "{}/{}: partition {} was attached after the plan; dumped with the group",
                self.database.as_deref().unwrap_or_default(),
                self.group,
                crate::text::printable(&name)
            );
            record(&mut self.changes, *oid, &name, Change::Attached, None);
            kept.0.push(*oid);
            kept.1.push(name);
            kept.2.push(pair.clone());
        }
        (self.table_oids, self.tables, *pairs) = kept;
        if self.table_oids.is_empty() {
            Err(AttemptError::Gone)
        } else {
            Ok(())
        }
    }
}

/// Records a change of the table `oid`, keeping its planned name when it changed before.
fn record(
    changes: &mut Vec<TableChange>,
    oid: u32,
    name: &str,
    change: Change,
    now: Option<String>,
) {
    let found_at = now_rfc3339();
    match changes.iter_mut().find(|c| c.oid == oid) {
        Some(c) => {
            c.change = change;
            c.now = now;
            c.found_at = found_at;
        }
        None => changes.push(TableChange {
            table: name.to_string(),
            oid,
            change,
            now,
            found_at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Engine;
    use crate::report::Kind;

    fn job(tables: &[(u32, &str, &str)]) -> Job {
        Job {
            kind: Kind::Tables,
            database: Some("db".into()),
            group: "g".into(),
            tables: tables.iter().map(|(_, s, t)| display(s, t)).collect(),
            table_oids: tables.iter().map(|(o, ..)| *o).collect(),
            contents: Contents::Tables(
                tables
                    .iter()
                    .map(|(_, s, t)| (s.to_string(), t.to_string()))
                    .collect(),
            ),
            path: "x".into(),
            lock_wait_timeout: std::time::Duration::from_secs(1),
            yield_after: None,
            engine: Engine::Native,
            compression: Default::default(),
            changes: Vec::new(),
            expects_split: false,
        }
    }

    fn names(tables: &[(u32, &str, &str)]) -> Names {
        tables
            .iter()
            .map(|(o, s, t)| (*o, (s.to_string(), t.to_string())))
            .collect()
    }

    #[test]
    fn a_renamed_table_takes_its_new_name_and_a_dropped_one_leaves() {
        let mut j = job(&[(1, "public", "a"), (2, "public", "b"), (3, "public", "c")]);
        j.follow(&names(&[(1, "public", "a"), (2, "other", "b2")]))
            .unwrap();
        assert_eq!(j.table_oids, vec![1, 2]);
        assert_eq!(j.tables, vec!["public.a", "other.b2"]);
        let Contents::Tables(pairs) = &j.contents else {
            panic!()
        };
        assert_eq!(pairs[1], ("other".to_string(), "b2".to_string()));
        let kinds: Vec<_> = j
            .changes
            .iter()
            .map(|c| (c.table.as_str(), c.change, c.now.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("public.b", Change::Renamed, Some("other.b2")),
                ("public.c", Change::Gone, None)
            ]
        );
    }

    #[test]
    fn a_table_renamed_then_dropped_is_one_change_under_its_planned_name() {
        let mut j = job(&[(1, "public", "a"), (2, "public", "b")]);
        j.follow(&names(&[(1, "public", "a"), (2, "public", "b2")]))
            .unwrap();
        j.follow(&names(&[(1, "public", "a")])).unwrap();
        assert_eq!(j.changes.len(), 1);
        assert_eq!(j.changes[0].table, "public.b");
        assert_eq!(j.changes[0].change, Change::Gone);
    }

    #[test]
    fn a_partition_attached_after_the_plan_joins_the_group() {
        let mut j = job(&[(1, "public", "parted"), (2, "public", "p1")]);
        j.follow(&names(&[
            (1, "public", "parted"),
            (2, "public", "p1"),
            (3, "public", "p2"),
        ]))
        .unwrap();
        assert_eq!(j.table_oids, vec![1, 2, 3]);
        assert_eq!(j.tables, vec!["public.parted", "public.p1", "public.p2"]);
        assert_eq!(j.changes.len(), 1);
        assert_eq!(
            (j.changes[0].table.as_str(), j.changes[0].change),
            ("public.p2", Change::Attached)
        );
    }

    #[test]
    fn a_group_whose_every_table_is_gone_is_gone() {
        let mut j = job(&[(1, "public", "a")]);
        assert!(matches!(j.follow(&Names::new()), Err(AttemptError::Gone)));
        assert!(j.tables.is_empty());
    }
}
