//! The statements on the queue table, each a short transaction of its own, and the rows
//! this consumer holds (leased and not yet settled), whose leases it extends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use longshore::RetryPolicy;
use tokio::sync::Notify;
use tokio_postgres::Row;

use crate::db::Db;
use crate::metrics::QueueMetrics;

/// One queue of one table, as this consumer works it.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) db: Db,
    pub(crate) table: String,
    pub(crate) name: Arc<str>,
    pub(crate) lease: Duration,
    /// Rows leased here and not yet deleted, failed or released: their leases are
    /// extended while they are handled.
    pub(crate) held: Mutex<HashSet<i64>>,
    /// Woken by the listener when rows are inserted.
    pub(crate) wake: Arc<Notify>,
    pub(crate) metrics: QueueMetrics,
}

/// A row as leased.
#[derive(Debug)]
pub(crate) struct Leased {
    pub(crate) id: i64,
    pub(crate) payload: Bytes,
    pub(crate) attempts: u32,
    pub(crate) enqueued_at: SystemTime,
}

impl Queue {
    /// Leases at most `limit` rows visible now, oldest first; they are invisible to every
    /// consumer until the lease passes (or is extended, or the row is settled).
    pub(crate) async fn lease(&self, limit: usize) -> Result<Vec<Leased>, tokio_postgres::Error> {
        let sql = format!(
            "WITH next AS (SELECT id FROM {t} WHERE queue = $1 AND failed_at IS NULL AND visible_at <= now() \
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE {t} q SET visible_at = now() + make_interval(secs => $3), attempts = q.attempts + 1 \
             FROM next WHERE q.id = next.id \
             RETURNING q.id, q.payload, q.attempts, q.enqueued_at",
            t = self.table
        );
        let client = self.db.client().await?;
        let rows = client
            .query(&sql, &[&&*self.name, &(limit as i64), &self.lease.as_secs_f64()])
            .await?;
        let mut leased: Vec<Leased> = rows.iter().map(leased).collect();
        // RETURNING keeps no order: the table's is the ids'.
        leased.sort_unstable_by_key(|row| row.id);
        self.hold(leased.iter().map(|row| row.id));
        Ok(leased)
    }

    fn hold(&self, ids: impl IntoIterator<Item = i64>) {
        lock(&self.held).extend(ids);
    }

    /// No longer held here: their leases are no longer extended.
    pub(crate) fn let_go(&self, ids: &[i64]) {
        let mut held = lock(&self.held);
        for id in ids {
            held.remove(id);
        }
    }

    /// Rows handled (or dead-lettered elsewhere): gone.
    pub(crate) async fn delete(&self, ids: &[i64]) {
        let sql = format!("DELETE FROM {} WHERE id = ANY($1)", self.table);
        self.settle("deleting handled rows", ids, &sql, &[&ids]).await;
    }

    /// Rows to be tried again after their delays.
    pub(crate) async fn retry_later(&self, ids: &[i64], delays: &[f64]) {
        let sql = format!(
            "UPDATE {t} SET visible_at = now() + make_interval(secs => d.delay) \
             FROM unnest($1::bigint[], $2::float8[]) AS d(id, delay) WHERE {t}.id = d.id",
            t = self.table
        );
        self.settle("scheduling retries", ids, &sql, &[&ids, &delays])
            .await;
    }

    /// Rows failed for good with no dead-letter destination: kept, never delivered again.
    pub(crate) async fn fail(&self, ids: &[i64], errors: &[String]) {
        let sql = format!(
            "UPDATE {t} SET failed_at = now(), last_error = d.error \
             FROM unnest($1::bigint[], $2::text[]) AS d(id, error) WHERE {t}.id = d.id",
            t = self.table
        );
        self.settle("keeping failed rows", ids, &sql, &[&ids, &errors])
            .await;
    }

    /// Rows not handled, for another consumer at once.
    pub(crate) async fn release(&self, ids: &[i64]) {
        let sql = format!("UPDATE {} SET visible_at = now() WHERE id = ANY($1)", self.table);
        self.settle("releasing rows", ids, &sql, &[&ids]).await;
    }

    /// Runs a statement settling `ids`, trying again while the database is away for as
    /// long as their lease; then lets them go, settled or not. A statement that never
    /// ran loses nothing: the rows come back when their lease passes (handled twice).
    async fn settle(
        &self,
        doing: &str,
        ids: &[i64],
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) {
        if ids.is_empty() {
            return;
        }
        let backoff = RetryPolicy::new(u32::MAX)
            .initial_backoff(Duration::from_millis(50))
            .max_backoff(Duration::from_secs(2));
        let give_up = tokio::time::Instant::now() + self.lease;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let done = match self.db.client().await {
                Ok(client) => client.execute(sql, params).await.map(drop),
                Err(error) => Err(error),
            };
            match done {
                Ok(()) => break,
                Err(error) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(%error, rows = ids.len(), "postgres {doing} failed; trying again");
                    tokio::time::sleep(backoff.backoff(attempt)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, rows = ids.len(), "postgres {doing} failed for the whole lease; the rows come back when it passes");
                    break;
                }
            }
        }
        self.let_go(ids);
    }

    /// Extends the leases of the rows held here.
    pub(crate) async fn extend(&self) -> Result<(), tokio_postgres::Error> {
        let ids: Vec<i64> = lock(&self.held).iter().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE {} SET visible_at = now() + make_interval(secs => $2) WHERE id = ANY($1) AND failed_at IS NULL",
            self.table
        );
        let client = self.db.client().await?;
        client.execute(&sql, &[&ids, &self.lease.as_secs_f64()]).await?;
        Ok(())
    }

    /// Reads the queue's depth into the gauges.
    pub(crate) async fn measure(&self) -> Result<(), tokio_postgres::Error> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE failed_at IS NULL AND visible_at <= now()), \
                    count(*) FILTER (WHERE failed_at IS NULL AND visible_at > now()), \
                    count(*) FILTER (WHERE failed_at IS NOT NULL), \
                    COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE failed_at IS NULL)), 0)::float8 \
             FROM {} WHERE queue = $1",
            self.table
        );
        let client = self.db.client().await?;
        let row = client.query_one(&sql, &[&&*self.name]).await?;
        self.metrics.ready.set(row.get(0));
        self.metrics.leased.set(row.get(1));
        self.metrics.failed.set(row.get(2));
        self.metrics.oldest_age.set(row.get::<_, f64>(3) as i64);
        Ok(())
    }
}

fn leased(row: &Row) -> Leased {
    Leased {
        id: row.get(0),
        payload: Bytes::from(row.get::<_, Vec<u8>>(1)),
        attempts: row.get::<_, i32>(2).max(1) as u32,
        enqueued_at: row.get(3),
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
