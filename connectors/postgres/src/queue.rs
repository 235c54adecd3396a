//! The statements on the queue table, each a short transaction of its own, and the rows
//! this consumer holds (leased and not yet settled), whose leases it extends.
//!
//! A lease is named by the row's `attempts` as it leased it (each lease adds one): a
//! statement about a lease matches only while the row still has that count, so a late
//! retry, release or extension from a consumer whose lease lapsed never touches the
//! lease another consumer took since.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use longshore::RetryPolicy;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Column, Row};

use crate::db::Db;
use crate::metrics::QueueMetrics;

/// The longest one statement may take before it counts as failed: a database that
/// stops answering must not hold the pipeline for as long as TCP takes to notice.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `last_error` kept, in characters.
const ERROR_KEPT: usize = 2000;

/// One queue of one table, as this consumer works it.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Connections for settling statements, one per fetch slot, taken in turn: the
    /// database commits them side by side (sharing its log flushes) as it runs the
    /// leases, not one after the other on one connection. Not the leases' own
    /// connections, where a delete would wait behind the next lease.
    pub(crate) settlers: Mutex<Vec<Arc<Db>>>,
    /// Which of `settlers` the next settling statement goes on.
    pub(crate) turn: AtomicUsize,
    /// Lease extensions, on a connection of their own so that no lease or delete
    /// delays them.
    pub(crate) side: Db,
    /// Depth readings, on a connection of their own too: a count over a large backlog
    /// may take long, and on the extensions' connection it would hold them back until
    /// leases lapse. One unanswered after [`STATEMENT_TIMEOUT`] is cancelled.
    pub(crate) depth: Db,
    pub(crate) table: String,
    pub(crate) name: Arc<str>,
    pub(crate) lease: Duration,
    /// Leases held here and not yet settled: extended while their rows are handled.
    pub(crate) held: Mutex<HashSet<Lease>>,
    /// Held leases the last extension could not extend, already warned of: a warning
    /// each, not one every tick.
    pub(crate) unextended: Mutex<HashSet<Lease>>,
    /// Held by an extension from its copy of `held` until its statement is answered (or
    /// cancelled, timed out): a retry or release waits for the extension under way,
    /// which may have copied its leases.
    pub(crate) extending: tokio::sync::Mutex<()>,
    /// Woken by the listener when rows are inserted.
    pub(crate) wake: Arc<Notify>,
    /// Whether the last lease statement was answered: `/readyz`.
    pub(crate) reachable: AtomicBool,
    pub(crate) metrics: QueueMetrics,
}

/// A row's lease: its id and its `attempts` when leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Lease {
    pub(crate) id: i64,
    pub(crate) token: i32,
}

/// A row as leased.
#[derive(Debug)]
pub(crate) struct Leased {
    pub(crate) lease: Lease,
    pub(crate) payload: Bytes,
    pub(crate) enqueued_at: SystemTime,
}

/// Runs `statement`, failing it after [`STATEMENT_TIMEOUT`].
async fn timed<T>(
    statement: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, statement).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(error)) => Err(Failed::Database(error)),
        Err(_) => Err(Failed::TimedOut),
    }
}

/// Why a statement did not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    /// The driver's own text of a server's refusal is only "db error": the server's
    /// words are shown instead.
    #[error("{}", .0.as_db_error().map_or_else(|| .0.to_string(), |db| format!("{} ({})", db.message(), db.code().code())))]
    Database(#[source] tokio_postgres::Error),
    #[error("no answer within {STATEMENT_TIMEOUT:?}")]
    TimedOut,
    /// The lease's columns do not read as the source's types: the table was altered
    /// since the start, which checked it. Nothing was leased.
    #[error("the queue table's column {column} is {found} now, expected {expected}; nothing leased")]
    Column {
        column: &'static str,
        found: String,
        expected: &'static str,
    },
}

/// How many times in all a settling statement may lose to another's locks and still be
/// tried again once its window has passed (see [`Queue::settle`]).
const CONTENDED_TRIES: u32 = 5;

impl Failed {
    /// Whether another statement's locks made the database refuse it: a deadlock or a
    /// serialization failure.
    fn is_contention(&self) -> bool {
        let Failed::Database(error) = self else {
            return false;
        };
        error.as_db_error().is_some_and(|db| {
            [
                &SqlState::T_R_DEADLOCK_DETECTED,
                &SqlState::T_R_SERIALIZATION_FAILURE,
            ]
            .contains(&db.code())
        })
    }

    /// Whether trying again may help: the database away or slow, not a statement it
    /// refused (a refused one would be refused again).
    fn is_transient(&self) -> bool {
        match self {
            Failed::Database(error) => error.as_db_error().is_none_or(|db| retried(db.code())),
            Failed::TimedOut => true,
            Failed::Column { .. } => false,
        }
    }
}

/// Whether the database asks for a statement it refused with `code` again: another
/// statement's timing (a deadlock, a serialization failure), or a database shutting
/// down, starting, failing over (read only for now) or short of connections.
fn retried(code: &tokio_postgres::error::SqlState) -> bool {
    let code = code.code();
    ["08", "53", "57P", "40001", "40P01", "25006"]
        .iter()
        .any(|class| code.starts_with(class))
}

impl Queue {
    /// The queue `queue` of `table` in the database of `config`, its connections not yet
    /// made, holding no lease; `wake` is woken by the listener.
    pub(crate) fn new(
        config: &tokio_postgres::Config,
        table: &str,
        queue: &str,
        lease: Duration,
        wake: Arc<Notify>,
    ) -> Self {
        Queue {
            settlers: Mutex::new(vec![Arc::new(Db::new(config.clone()))]),
            turn: AtomicUsize::new(0),
            side: Db::new(config.clone()),
            depth: Db::new(config.clone()),
            reachable: AtomicBool::new(true),
            table: table.to_owned(),
            name: Arc::from(queue),
            lease,
            held: Mutex::default(),
            unextended: Mutex::default(),
            extending: tokio::sync::Mutex::default(),
            wake,
            metrics: QueueMetrics::new(table, queue),
        }
    }

    /// Leases at most `limit` rows visible now, in the order they became visible; they
    /// are invisible to every consumer until the lease passes (or is extended, or the
    /// row is settled).
    pub(crate) async fn lease(&self, db: &Db, limit: usize) -> Result<Vec<Leased>, Failed> {
        let sql = format!(
            "WITH next AS (SELECT id FROM {t} WHERE queue = $1 AND failed_at IS NULL AND visible_at <= now() \
               ORDER BY visible_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE {t} q SET visible_at = now() + make_interval(secs => $3), attempts = q.attempts + 1 \
             FROM next WHERE q.id = next.id \
             RETURNING q.id, q.payload, q.attempts, q.enqueued_at",
            t = self.table
        );
        let params: [&(dyn ToSql + Sync); 3] = [&&*self.name, &(limit as i64), &self.lease.as_secs_f64()];
        // Checked before it runs, on the statement it runs (as prepared, it tells the
        // columns' types): a table altered since the start is refused with nothing leased.
        let rows =
            timed(db.query_checked(&sql, &params, |statement| unreadable_column(statement.columns()))).await;
        if matches!(rows, Err(Failed::TimedOut)) {
            // Still running on the server (waiting for a lock, say): cancelled, or it would
            // lease rows for nobody once it ran, each an attempt spent unhandled. (The
            // connection runs this receive's leases and its reading of when the next row
            // comes alone: at worst the next of those is cancelled, and tried again.)
            db.cancel().await;
        }
        self.reachable.store(rows.is_ok(), Ordering::Relaxed);
        let rows = match rows? {
            Ok(rows) => rows,
            Err((column, found)) => {
                return Err(Failed::Column {
                    column: column.name,
                    found,
                    expected: column.expected,
                })
            }
        };
        let mut leased = Vec::with_capacity(rows.len());
        let (mut unreadable, mut errors) = (Vec::new(), Vec::new());
        for row in &rows {
            match read_row(row) {
                Ok(row) => leased.push(row),
                Err((Some(lease), error)) => {
                    unreadable.push(lease);
                    errors.push(error);
                }
                Err((None, error)) => {
                    tracing::warn!(%error, table = %self.table, "postgres row that cannot be leased by its attempts; it comes back with each lease");
                }
            }
        }
        leased.sort_unstable_by_key(|row| row.lease.id);
        // Held (extended) before anything else is waited for.
        lock(&self.held).extend(leased.iter().map(|row| row.lease));
        if !unreadable.is_empty() {
            // A row with a value that cannot be read (a NULL where the migration allows
            // none) would be leased and fail again and again: kept failed, saying why.
            tracing::warn!(rows = unreadable.len(), first = %errors[0], table = %self.table, "postgres rows that cannot be read kept as failed");
            self.fail(&unreadable, &errors).await;
        }
        Ok(leased)
    }

    /// How long until a row of the queue not visible now becomes visible (a retry's
    /// backoff ending, a lapsed lease), if any will: a consumer that found nothing to
    /// lease waits that long at most, as no `NOTIFY` tells of it.
    pub(crate) async fn next_visible(&self, db: &Db) -> Result<Option<Duration>, Failed> {
        let sql = format!(
            "SELECT EXTRACT(EPOCH FROM min(visible_at) - now())::float8 FROM {} \
             WHERE queue = $1 AND failed_at IS NULL AND visible_at > now() AND isfinite(visible_at)",
            self.table
        );
        let rows = timed(db.query(&sql, &[&&*self.name])).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let seconds: Option<f64> = row.try_get(0).map_err(Failed::Database)?;
        Ok(seconds.and_then(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).ok()))
    }

    /// Rows handled (or dead-lettered elsewhere): gone, whoever holds them now (a late
    /// delete is a row handled twice, never one lost).
    pub(crate) async fn delete(&self, leases: &[Lease]) {
        let sql = format!("DELETE FROM {} WHERE id = ANY($1)", self.table);
        let ids: Vec<i64> = leases.iter().map(|lease| lease.id).collect();
        // No wait for an extension under way: one landing after the delete matches nothing.
        self.settle("deleting handled rows", leases, false, &sql, &[&ids])
            .await;
    }

    /// Rows to be tried again after their delays.
    pub(crate) async fn retry_later(&self, leases: &[Lease], delays: &[f64]) {
        let sql = format!(
            "UPDATE {t} SET visible_at = now() + make_interval(secs => d.delay) \
             FROM unnest($1::bigint[], $2::int[], $3::float8[]) AS d(id, token, delay) \
             WHERE {t}.id = d.id AND {t}.attempts = d.token",
            t = self.table
        );
        let (ids, tokens) = split(leases);
        self.settle(
            "scheduling retries",
            leases,
            true,
            &sql,
            &[&ids, &tokens, &delays],
        )
        .await;
        // The consumers waiting for a NOTIFY look again, then wait only until the first
        // of them is visible: this one's at once, the others' through the channel.
        if !leases.is_empty() {
            self.wake.notify_one();
            let notified = timed(
                self.next_settler()
                    .execute("SELECT pg_notify($1, $2)", &[&self.table, &&*self.name]),
            )
            .await;
            if let Err(error) = notified {
                tracing::debug!(%error, "postgres NOTIFY of retries failed; other consumers see them at their next poll");
            }
        }
    }

    /// Rows failed for good with no dead-letter destination: kept, never delivered again.
    pub(crate) async fn fail(&self, leases: &[Lease], errors: &[String]) {
        let sql = format!(
            "UPDATE {t} SET failed_at = now(), last_error = d.error \
             FROM unnest($1::bigint[], $2::int[], $3::text[]) AS d(id, token, error) \
             WHERE {t}.id = d.id AND {t}.attempts = d.token",
            t = self.table
        );
        let (ids, tokens) = split(leases);
        let errors: Vec<String> = errors.iter().map(|error| kept_error(error)).collect();
        // No wait: an extension skips failed rows.
        self.settle(
            "keeping failed rows",
            leases,
            false,
            &sql,
            &[&ids, &tokens, &errors],
        )
        .await;
    }

    /// Rows for another consumer at once. Those never handed to the pipeline (`unused`)
    /// get their attempt back: a lease nobody worked on uses up no retry.
    pub(crate) async fn release(&self, leases: &[Lease], unused: bool) {
        let sql = format!(
            "UPDATE {t} SET visible_at = now(), attempts = {t}.attempts - $3 \
             FROM unnest($1::bigint[], $2::int[]) AS d(id, token) \
             WHERE {t}.id = d.id AND {t}.attempts = d.token",
            t = self.table
        );
        let (ids, tokens) = split(leases);
        let give_back = i32::from(unused);
        self.settle("releasing rows", leases, true, &sql, &[&ids, &tokens, &give_back])
            .await;
    }

    /// Runs a statement settling `leases`, which are no longer extended from now on.
    /// With `after_extension` (a statement that makes a row visible sooner, which an
    /// extension landing after it would undo, pushing the row a lease out), it runs once
    /// the extension under way, which may have copied its leases, is done. A statement
    /// the database is away for is tried again for a third of a lease (one that lost to
    /// another's locks also past it, after each of its first five such losses), then
    /// given up: its rows come back when their lease passes, to be handled again.
    async fn settle(
        &self,
        doing: &str,
        leases: &[Lease],
        after_extension: bool,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) {
        if leases.is_empty() {
            return;
        }
        {
            let mut held = lock(&self.held);
            for lease in leases {
                held.remove(lease);
            }
        }
        // No longer extended past the extension under way: the window starts now,
        // before any wait for it.
        let give_up = tokio::time::Instant::now() + self.lease / 3;
        if after_extension {
            // An extension starting from now on does not see them.
            drop(self.extending.lock().await);
        }
        let backoff = RetryPolicy::new(u32::MAX)
            .initial_backoff(Duration::from_millis(50))
            .max_backoff(Duration::from_secs(2));
        let (mut attempt, mut contended) = (0, 0);
        loop {
            attempt += 1;
            let Err(error) = timed(self.next_settler().execute(sql, params)).await else {
                return;
            };
            // A statement that lost to another's locks is tried again past the window,
            // a few times: the database answered, and its deadlock check alone
            // (`deadlock_timeout`, a second by default) may outlast a short lease's third.
            let contention = error.is_contention();
            contended += u32::from(contention);
            let again = error.is_transient()
                && (tokio::time::Instant::now() < give_up || contention && contended <= CONTENDED_TRIES);
            if !again {
                tracing::warn!(%error, rows = leases.len(), "postgres {doing} failed; the rows come back when their lease passes");
                return;
            }
            tracing::debug!(%error, rows = leases.len(), "postgres {doing} failed; trying again");
            tokio::time::sleep(backoff.backoff(attempt)).await;
        }
    }

    /// One more connection for settling statements, with one more fetch slot.
    pub(crate) fn add_settler(&self, db: Db) {
        lock(&self.settlers).push(Arc::new(db));
    }

    fn next_settler(&self) -> Arc<Db> {
        let settlers = lock(&self.settlers);
        settlers[self.turn.fetch_add(1, Ordering::Relaxed) % settlers.len()].clone()
    }

    /// Extends the leases held here.
    pub(crate) async fn extend(&self) -> Result<(), Failed> {
        let _extending = self.extending.lock().await;
        let mut leases: Vec<Lease> = lock(&self.held).iter().copied().collect();
        leases.sort_unstable_by_key(|lease| lease.id);
        if leases.is_empty() {
            return Ok(());
        }
        // Rows locked by another statement are skipped, never waited for: a settling
        // statement of this consumer has them (being deleted, released or failed, they
        // need no more time), or another transaction does. Waiting, the extension
        // deadlocked with a delete taking its rows in another order, held every other
        // lease back until the deadlock was found (a second, by default), and the delete
        // could lose: its rows, handled, were handled again. `NO KEY`: the lock an update
        // of `visible_at` takes anyway, which a row referenced by a foreign key being
        // written elsewhere does not block.
        let sql = format!(
            "UPDATE {t} SET visible_at = now() + make_interval(secs => $3) \
             WHERE id IN (SELECT q.id FROM {t} q \
                          JOIN unnest($1::bigint[], $2::int[]) AS d(id, token) ON q.id = d.id \
                          WHERE q.attempts = d.token AND q.failed_at IS NULL \
                          FOR NO KEY UPDATE OF q SKIP LOCKED) \
             RETURNING id",
            t = self.table
        );
        let (ids, tokens) = split(&leases);
        let extended = match timed(self.side.query(&sql, &[&ids, &tokens, &self.lease.as_secs_f64()])).await {
            // Cancelled at the server before the settles waiting for it go on: left
            // running, it could land after them. (Not yet started when the cancel comes,
            // it still may: a delay of a lease for the rows settled meanwhile, never a
            // row lost.)
            Err(Failed::TimedOut) => {
                self.side.cancel().await;
                return Err(Failed::TimedOut);
            }
            extended => extended?,
        };
        let extended = extended
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<HashSet<i64>, _>>()
            .map_err(Failed::Database)?;
        // Not extended and still held (not settled meanwhile): a lease about to lapse
        // while its row is handled, never silently; said once a lease.
        let missed: HashSet<Lease> = {
            let held = lock(&self.held);
            leases
                .iter()
                .filter(|lease| !extended.contains(&lease.id) && held.contains(lease))
                .copied()
                .collect()
        };
        let new = {
            let mut unextended = lock(&self.unextended);
            let new: Vec<i64> = missed
                .iter()
                .filter(|lease| !unextended.contains(lease))
                .map(|lease| lease.id)
                .collect();
            *unextended = missed;
            new
        };
        if let Some(first) = new.iter().min() {
            tracing::warn!(
                rows = new.len(),
                first,
                queue = %self.name,
                "postgres leases not extended: their rows are locked by another transaction, or were leased again once their lease lapsed; if it lapses, a row is handled again"
            );
        }
        Ok(())
    }

    /// Reads the queue's depth into the gauges.
    pub(crate) async fn measure(&self) -> Result<(), Failed> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE failed_at IS NULL AND visible_at <= now()), \
                    count(*) FILTER (WHERE failed_at IS NULL AND visible_at > now()), \
                    count(*) FILTER (WHERE failed_at IS NOT NULL), \
                    COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE failed_at IS NULL)), 0)::float8 \
             FROM {} WHERE queue = $1",
            self.table
        );
        let rows = match timed(self.depth.query(&sql, &[&&*self.name])).await {
            // Cancelled at the server too: counts left running would pile up behind each
            // other on this connection, one more every lag_interval.
            Err(Failed::TimedOut) => {
                self.depth.cancel().await;
                return Err(Failed::TimedOut);
            }
            rows => rows?,
        };
        let Some(row) = rows.first() else {
            return Ok(());
        };
        self.metrics.ready.set(row.get(0));
        self.metrics.leased.set(row.get(1));
        self.metrics.failed.set(row.get(2));
        self.metrics.oldest_age.set(row.get::<_, f64>(3) as i64);
        Ok(())
    }
}

fn split(leases: &[Lease]) -> (Vec<i64>, Vec<i32>) {
    leases.iter().map(|lease| (lease.id, lease.token)).unzip()
}

/// A failure's text as the table keeps it: no NUL (PostgreSQL's text refuses it), at
/// most [`ERROR_KEPT`] characters.
fn kept_error(error: &str) -> String {
    error.chars().filter(|&c| c != '\0').take(ERROR_KEPT).collect()
}

/// A column a lease reads: its name, whether the source's type reads it, and the type
/// the migration gives it.
pub(crate) struct ReadColumn {
    pub(crate) name: &'static str,
    accepts: fn(&Type) -> bool,
    pub(crate) expected: &'static str,
}

/// The lease's columns, in the order it returns them.
pub(crate) const READ_COLUMNS: [ReadColumn; 4] = [
    ReadColumn {
        name: "id",
        accepts: <i64 as FromSql>::accepts,
        expected: "bigint",
    },
    ReadColumn {
        name: "payload",
        accepts: <Vec<u8> as FromSql>::accepts,
        expected: "bytea",
    },
    ReadColumn {
        name: "attempts",
        accepts: <i32 as FromSql>::accepts,
        expected: "integer",
    },
    ReadColumn {
        name: "enqueued_at",
        accepts: <SystemTime as FromSql>::accepts,
        expected: "timestamptz",
    },
];

/// The first of the lease's columns (`columns`, in [`READ_COLUMNS`]'s order) whose type
/// the source cannot read, and that type.
pub(crate) fn unreadable_column(columns: &[Column]) -> Option<(&'static ReadColumn, String)> {
    READ_COLUMNS
        .iter()
        .zip(columns)
        .find(|(column, found)| !(column.accepts)(found.type_()))
        .map(|(column, found)| (column, found.type_().name().to_owned()))
}

/// The lease of a row as leased: its id (the primary key) and `attempts`, NULL only
/// where a table made by hand allows it.
fn lease_of(row: &Row) -> Option<Lease> {
    Some(Lease {
        id: row.try_get(0).ok()?,
        token: row.try_get(2).ok()?,
    })
}

/// A leased row, its columns' types readable; one with a value that still does not read
/// (a NULL) is its lease, to keep it failed, and why. No lease names a row whose
/// attempts is NULL (which a table made by hand allows): it cannot be kept failed.
fn read_row(row: &Row) -> Result<Leased, (Option<Lease>, String)> {
    let Some(lease) = lease_of(row) else {
        let id: i64 = row.try_get(0).unwrap_or_default();
        return Err((None, format!("the queue table's row {id} has no attempts")));
    };
    let unread = |column: &str, error: tokio_postgres::Error| {
        let cause = std::error::Error::source(&error).map_or_else(|| error.to_string(), ToString::to_string);
        (
            Some(lease),
            format!("the queue table's column {column} does not read: {cause}"),
        )
    };
    Ok(Leased {
        lease,
        payload: Bytes::from(
            row.try_get::<_, Vec<u8>>(1)
                .map_err(|error| unread("payload", error))?,
        ),
        enqueued_at: row.try_get(3).map_err(|error| unread("enqueued_at", error))?,
    })
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A server of its own for the tests below.
#[cfg(test)]
#[path = "../../../test-support/postgres.rs"]
mod test_postgres;

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_postgres as postgres;
    use futures_util::FutureExt;

    /// A queue of the table in the server at `url`, as a source makes it, with nothing
    /// running on its own (no extension ticks).
    fn queue(url: &str, lease: Duration) -> Queue {
        let config: tokio_postgres::Config = url.parse().expect("a url");
        Queue::new(
            &config,
            "longshore_queue",
            "queue-tests",
            lease,
            Arc::new(Notify::new()),
        )
    }

    /// A server of its own with the queue table, and a plain client of it.
    async fn started() -> (postgres::Postgres, tokio_postgres::Client) {
        let server = postgres::Postgres::start();
        crate::PgQueueSource::migrate(&crate::PgQueueConfig::new(server.url()))
            .await
            .expect("the table");
        let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
            .await
            .expect("a client");
        tokio::spawn(connection);
        (server, client)
    }

    /// An extension that copied the held leases before a release or a retry of one of
    /// them, and reached the database after it, pushed the row a lease out: it must not.
    #[tokio::test]
    async fn an_extension_under_way_does_not_undo_a_release_or_a_retry_made_meanwhile() {
        let (server, client) = started().await;
        let queue = queue(&server.url(), Duration::from_secs(60));
        let fetch = Db::new(server.url().parse().expect("a url"));
        for retry in [false, true] {
            client
                .execute(
                    "INSERT INTO longshore_queue (queue, payload) VALUES ('queue-tests', 'x')",
                    &[],
                )
                .await
                .expect("a row");
            let leased = [queue.lease(&fetch, 1).await.expect("a lease")[0].lease];
            // The extension copies the held leases, then waits for its connection, busy.
            let busy = queue.side.hold().await;
            let mut extending = Box::pin(queue.extend());
            assert!((&mut extending).now_or_never().is_none());
            // The row is settled meanwhile, to be visible again at once.
            let mut settling = match retry {
                false => queue.release(&leased, false).boxed(),
                true => queue.retry_later(&leased, &[0.0]).boxed(),
            };
            let settled_first = tokio::time::timeout(Duration::from_secs(1), settling.as_mut())
                .await
                .is_ok();
            drop(busy);
            extending.await.expect("the extension");
            if !settled_first {
                settling.await;
            }
            let visible_in: f64 = client
                .query_one(
                    "SELECT EXTRACT(EPOCH FROM visible_at - now())::float8 FROM longshore_queue WHERE id = $1",
                    &[&leased[0].id],
                )
                .await
                .expect("the row")
                .get(0);
            let settled = if retry { "retried" } else { "released" };
            assert!(
                visible_in <= 0.0,
                "the {settled} row is visible only in {visible_in:.0} s: the extension under way pushed it a lease out"
            );
            client
                .execute("DELETE FROM longshore_queue", &[])
                .await
                .expect("emptied");
        }
    }

    /// A delete that loses to another statement's locks (here a trigger refusing it as
    /// a serialization failure, as a deadlock's loser is refused) is tried again past its
    /// window, a bounded number of times: its handled row is not handled again for a
    /// refusal the next try would not meet, and a refusal that lasts is given up.
    #[tokio::test]
    async fn a_settle_that_loses_to_other_locks_is_tried_again_past_its_window_a_bounded_number_of_times() {
        let (server, client) = started().await;
        // Refuses the first `refusals` deletes; a sequence, which a refusal's rollback
        // does not undo, counts the tries.
        client
            .batch_execute(
                "CREATE SEQUENCE tries; CREATE TABLE refusals (n bigint); \
                 CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF nextval('tries') <= (SELECT n FROM refusals) THEN \
                 RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001'; \
                 END IF; RETURN OLD; END $$; \
                 CREATE TRIGGER refuse BEFORE DELETE ON longshore_queue FOR EACH ROW EXECUTE FUNCTION refuse();",
            )
            .await
            .expect("the trigger");
        // A lease of 150 ms: the window, a third of it, is over after the first try.
        let queue = queue(&server.url(), Duration::from_millis(150));
        let fetch = Db::new(server.url().parse().expect("a url"));
        for (refusals, deleted, tries) in [(3, true, 4), (100, false, i64::from(CONTENDED_TRIES) + 1)] {
            client
                .batch_execute(&format!(
                    "DELETE FROM refusals; INSERT INTO refusals VALUES ({refusals}); \
                     ALTER SEQUENCE tries RESTART; \
                     INSERT INTO longshore_queue (queue, payload) VALUES ('queue-tests', 'x');"
                ))
                .await
                .expect("a row");
            let leased = [queue.lease(&fetch, 1).await.expect("a lease")[0].lease];
            queue.delete(&leased).await;
            let left: i64 = client
                .query_one("SELECT count(*) FROM longshore_queue", &[])
                .await
                .expect("the count")
                .get(0);
            let tried: i64 = client
                .query_one("SELECT last_value FROM tries", &[])
                .await
                .expect("the tries")
                .get(0);
            assert_eq!(
                (left == 0, tried),
                (deleted, tries),
                "{refusals} refusals: (deleted, tries)"
            );
            client
                .batch_execute("ALTER TABLE longshore_queue DISABLE TRIGGER refuse; DELETE FROM longshore_queue; ALTER TABLE longshore_queue ENABLE TRIGGER refuse;")
                .await
                .expect("emptied");
        }
    }

    #[test]
    fn a_kept_error_has_no_nul_and_a_bounded_length() {
        assert_eq!(kept_error("bad\0byte"), "badbyte");
        assert_eq!(kept_error(&"é".repeat(5000)).chars().count(), ERROR_KEPT);
    }

    #[test]
    fn a_database_going_away_or_busy_is_tried_again_and_a_refusal_is_not() {
        use tokio_postgres::error::SqlState;
        for code in [
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::CONNECTION_FAILURE,
        ] {
            assert!(retried(&code), "{code:?} not tried again");
        }
        for code in [
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNIQUE_VIOLATION,
            SqlState::QUERY_CANCELED,
        ] {
            assert!(!retried(&code), "{code:?} tried again");
        }
    }
}
