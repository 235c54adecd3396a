//! The queue table source: rows leased only for the demand, woken by `NOTIFY`.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use longshore::source::{every, FetchSlots, KeptFetch, Redelivery, Source, SourceSettings};
use longshore::{BoxError, Message};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::acknowledge::PgQueueAcknowledger;
use crate::config::PgQueueConfig;
use crate::db::{listen, Db};
use crate::error::PgQueueError;
use crate::metadata::{PgQueueMessage, PgQueueMetadata};
use crate::queue::{lock, unreadable_column, Lease, Leased, Queue, READ_COLUMNS};

/// Consumes one queue of a PostgreSQL queue table (see [`migration`](crate::migration)).
///
/// Each `receive` leases at most the demand (`SELECT ... FOR UPDATE SKIP LOCKED LIMIT`
/// in one short `UPDATE`): leased rows are invisible to other consumers for
/// [`lease`](PgQueueConfig::lease), extended while they are handled, so any number of
/// consumers share a queue and a killed one's rows come back. A handled row is deleted;
/// a failed one is made visible again after the retry policy's backoff (its `attempts`
/// column is the attempt); one failed for good is deleted if the pipeline's dead-letter
/// destination took it, else kept with `failed_at` and `last_error`, never delivered
/// again. Rows not started at shutdown are released at once. With nothing to lease, the
/// source waits for a `NOTIFY` (an insert's, or a retry's), at most until the next row
/// becomes visible or `poll_interval`.
///
/// ```no_run
/// use longshore::decode::Json;
/// use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
/// use longshore_postgres::{PgQueueMessage, PgQueueMetadata, PgQueueConfig, PgQueueSource};
///
/// #[derive(serde::Deserialize)]
/// struct Invoice { id: u64 }
///
/// struct Send;
/// impl Handler for Send {
///     type Item = Invoice;
///     type Metadata = PgQueueMetadata;
///     async fn handle_message(&self, message: &mut PgQueueMessage<Invoice>) -> Result<(), BoxError> {
///         println!("invoice {} (row {})", message.data().id, message.metadata().id());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), BoxError> {
/// let config = PgQueueConfig::new("host=db user=app dbname=shop").queue("invoices");
/// PgQueueSource::migrate(&config).await?;
/// let source = PgQueueSource::connect(config).await?;
/// let pipeline = Pipeline::builder(source, Send)
///     .decode(Json::new())
///     .processors(Processors::new(8))
///     .retry(RetryPolicy::new(5))
///     .start()?;
/// pipeline.run_until_signal().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgQueueSource {
    queue: Arc<Queue>,
    /// One per `receive` under way at once (the pipeline's `source_concurrency`), each
    /// leasing on a connection of its own: the database runs their leases side by side.
    /// Each slot adds a connection for settling statements too.
    lessees: FetchSlots<Lessee>,
    db_config: tokio_postgres::Config,
    poll_interval: Duration,
    /// Stops the listener, the lease extender and the depth reader.
    stop: CancellationToken,
}

/// A lease connection, and what its leases brought and were not handed out (kept across a
/// dropped `receive`, so that no leased row is left behind).
#[derive(Debug)]
struct Lessee {
    db: Arc<Db>,
    fetch: KeptFetch<Leased>,
}

impl PgQueueSource {
    /// Connects (checking that the table is there) and starts listening for inserts.
    ///
    /// # Errors
    ///
    /// A [`PgQueueError`]: an invalid setting (naming it), a database that cannot be
    /// reached, a table that is not there (run [`PgQueueSource::migrate`]).
    pub async fn connect(config: PgQueueConfig) -> Result<Self, PgQueueError> {
        config.validate()?;
        let db_config = db_config(&config.url)?;
        let wake = Arc::new(Notify::new());
        let first = Arc::new(Db::new(db_config.clone()));
        let queue = Arc::new(Queue::new(
            &db_config,
            &config.table,
            &config.queue,
            config.lease,
            wake.clone(),
        ));
        let connected = first
            .connected()
            .await
            .map_err(PgQueueError::database("connecting"))?;
        check_columns(&connected.client, &config.table).await?;
        let stop = CancellationToken::new();
        tokio::spawn(listen(
            db_config.clone(),
            config.table.clone(),
            queue.name.clone(),
            wake,
            stop.clone(),
        ));
        let extended = queue.clone();
        tokio::spawn(every(config.lease / 3, stop.clone(), move || {
            let queue = extended.clone();
            async move {
                if let Err(error) = queue.extend().await {
                    tracing::warn!(%error, queue = %queue.name, "postgres lease extension failed; trying again at the next tick");
                }
            }
        }));
        let measured = queue.clone();
        tokio::spawn(every(config.lag_interval, stop.clone(), move || {
            let queue = measured.clone();
            async move {
                if let Err(error) = queue.measure().await {
                    tracing::debug!(%error, queue = %queue.name, "cannot read the postgres queue's depth");
                }
            }
        }));
        Ok(PgQueueSource {
            queue,
            lessees: FetchSlots::new(Lessee {
                db: first,
                fetch: KeptFetch::default(),
            }),
            db_config,
            poll_interval: config.poll_interval,
            stop,
        })
    }

    /// Creates the queue table of `config` if it is not there (see
    /// [`migration`](crate::migration)).
    ///
    /// # Errors
    ///
    /// A [`PgQueueError`] when the database cannot be reached or refuses the migration.
    pub async fn migrate(config: &PgQueueConfig) -> Result<(), PgQueueError> {
        let sql = crate::migration(&config.table)?;
        let db_config = db_config(&config.url)?;
        let connected = Db::new(db_config)
            .connected()
            .await
            .map_err(PgQueueError::database("connecting"))?;
        // One migration at a time, whichever replica starts first.
        let locked =
            format!("BEGIN; SELECT pg_advisory_xact_lock(hashtext('longshore-migrate')); {sql}; COMMIT;");
        connected
            .client
            .batch_execute(&locked)
            .await
            .map_err(PgQueueError::database("migrating"))
    }

    /// Rows leased by this source and not yet settled (deleted, failed, released).
    pub fn held(&self) -> usize {
        lock(&self.queue.held).len()
    }

    fn message(&self, row: Leased) -> PgQueueMessage {
        let attempt = u32::try_from(row.lease.token).unwrap_or(1);
        let metadata = PgQueueMetadata::read(
            row.lease,
            self.queue.name.clone(),
            row.enqueued_at,
            row.payload.clone(),
        );
        Message::with_metadata(row.payload, metadata).with_attempt(attempt)
    }
}

/// The connection settings of `url`, with the timeouts a consumer needs unless the URL
/// sets its own: a database that stops answering is noticed in seconds, not when TCP
/// gives up.
fn db_config(url: &str) -> Result<tokio_postgres::Config, PgQueueError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(PgQueueError::database("parsing source.url"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A peer gone without a word (a failover, a dropped route) is noticed in about 20 s,
    // idle (keepalives) or with data unanswered (the user timeout, on Linux): its
    // connection closes, and the next statement connects again.
    config.keepalives(true).keepalives_idle(Duration::from_secs(10));
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(3));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(20));
    }
    Ok(config)
}

impl Drop for PgQueueSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The queue table's columns: those a lease reads must read as the source's types
/// (checked at start, and on each lease: the table may be altered meanwhile); the
/// others need only exist.
const OTHER_COLUMNS: [&str; 4] = ["queue", "visible_at", "failed_at", "last_error"];

/// Refuses a queue table that is missing, lacks a column, or has one the source cannot
/// read as it leases (read from the statement's description: nothing runs).
async fn check_columns(client: &tokio_postgres::Client, table: &str) -> Result<(), PgQueueError> {
    let names: Vec<&str> = READ_COLUMNS
        .iter()
        .map(|column| column.name)
        .chain(OTHER_COLUMNS)
        .collect();
    let statement = client
        .prepare(&format!("SELECT {} FROM {table} LIMIT 0", names.join(", ")))
        .await
        .map_err(PgQueueError::database(
            "reading the queue table (run PgQueueSource::migrate)",
        ))?;
    if let Some((column, found)) = unreadable_column(statement.columns()) {
        return Err(PgQueueError::Schema {
            table: table.to_owned(),
            column: column.name,
            found,
            expected: column.expected,
        });
    }
    // A NULL there, and a row could never be leased (`visible_at`) or told apart from
    // its next lease (`attempts`, each lease's token): it would wait unseen, or come back
    // with every lease unhandled.
    let nullable: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attname = ANY($2) AND NOT attnotnull AND NOT attisdropped",
            &[&table, &NOT_NULL_COLUMNS.as_slice()],
        )
        .await
        .map_err(PgQueueError::database("reading the queue table's columns"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    match NOT_NULL_COLUMNS
        .into_iter()
        .find(|column| nullable.iter().any(|name| name == column))
    {
        Some(column) => Err(PgQueueError::Schema {
            table: table.to_owned(),
            column,
            found: "nullable".to_owned(),
            expected: "NOT NULL",
        }),
        None => Ok(()),
    }
}

/// The columns a lease cannot do without, which the migration makes `NOT NULL`.
const NOT_NULL_COLUMNS: [&str; 2] = ["visible_at", "attempts"];

impl Source for PgQueueSource {
    type Data = Bytes;
    type Metadata = PgQueueMetadata;
    type Acknowledger = PgQueueAcknowledger;

    /// A fetch under way completes at a pause: a lease under way takes rows from the other
    /// consumers.
    fn drops_fetch_on_pause(&self) -> bool {
        false
    }

    fn acknowledger(&self) -> PgQueueAcknowledger {
        PgQueueAcknowledger(self.queue.clone())
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<PgQueueMessage>>, BoxError> {
        let mut lessee = self.lessees.take_or_else(|| {
            self.queue.add_settler(Db::new(self.db_config.clone()));
            Lessee {
                db: Arc::new(Db::new(self.db_config.clone())),
                fetch: KeptFetch::default(),
            }
        });
        loop {
            let (queue, db) = (self.queue.clone(), lessee.db.clone());
            let rows = lessee
                .fetch
                .take(
                    demand.get(),
                    |limit| async move { Ok(queue.lease(&db, limit).await?) },
                )
                .await
                .map_err(|error| format!("postgres leasing rows: {error}"))?;
            if !rows.is_empty() {
                // A full lease may have left rows: the wake-up goes on to another lessee
                // waiting (an insert of many rows notifies once).
                if rows.len() == demand.get() {
                    self.queue.wake.notify_one();
                }
                return Ok(Some(rows.into_iter().map(|row| self.message(row)).collect()));
            }
            // Nothing visible: an insert's NOTIFY (remembered if it came during the
            // lease), a retry scheduled here, the next row becoming visible (another
            // consumer's retry, a lapsed lease), or the poll interval.
            let next = match self.queue.next_visible(&lessee.db).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::debug!(%error, queue = %self.queue.name, "cannot read when the next postgres row is visible");
                    None
                }
            };
            let wait = next.map_or(self.poll_interval, |next| next.min(self.poll_interval));
            let _ = tokio::time::timeout(wait, self.queue.wake.notified()).await;
        }
    }

    /// Whether the last lease was answered.
    fn is_ready(&self) -> bool {
        self.queue.reachable.load(Ordering::Relaxed)
    }

    fn redelivery(&self) -> Redelivery {
        Redelivery::Broker
    }

    /// Releases the rows leased and not handed out, a lease under way included.
    async fn shutdown(&self) {
        let mut leases: Vec<Lease> = Vec::new();
        for mut lessee in self.lessees.each().await {
            leases.extend(lessee.fetch.drain().await.into_iter().map(|row| row.lease));
        }
        // Never handed to the pipeline: their attempt is given back.
        self.queue.release(&leases, true).await;
    }
}
