//! The Redis Streams source: entries read for the demand, a dead consumer's claimed.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use longshore::source::{every, FetchSlots, KeptFetch, Plan, Source, SourceSettings};
use longshore::{BoxError, BuildError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::acknowledge::RedisStreamAcknowledger;
use crate::config::RedisStreamConfig;
use crate::error::RedisStreamError;
use crate::metadata::{RedisStreamMessage, RedisStreamMetadata};
use crate::metrics::StreamMetrics;
use crate::stream::{lock, AckQueue, ReadFrom, Stream};

/// How often shutdown cuts short again the reads waiting for new entries.
const UNBLOCK_AGAIN: Duration = Duration::from_millis(100);

/// How often a dead consumer's entries are looked for.
const CLAIM_EVERY: Duration = Duration::from_secs(1);

/// Consumes a Redis stream as one consumer of a consumer group.
///
/// Each `receive` reads at most the demand (`XREADGROUP ... COUNT demand`, waiting with
/// `BLOCK` when there is nothing). An entry is acknowledged (`XACK`) after its last
/// stage, failed or not (the pipeline retries in process, and dead-letters what fails
/// for good); the `XACK` goes with the next read, or on its own within milliseconds, so
/// a kill may make handled again up to twice the pipeline's `max_in_flight`. Started again under the
/// same [`consumer`](RedisStreamConfig::consumer) name, the source first takes back its
/// own entries left unacknowledged (a kill, a shutdown cut short); another consumer's
/// are claimed (`XAUTOCLAIM`) once idle for [`claim_idle`](RedisStreamConfig::claim_idle),
/// and the source keeps resetting the idle time of the entries it is handling, so a long
/// job is not claimed away. The stream keeps acknowledged entries: trim it (`XADD ...
/// MAXLEN`, `XTRIM`) as the producer sees fit.
///
/// ```no_run
/// use longshore::{BoxError, Handler, Pipeline, Processors};
/// use longshore_redis::{RedisStreamMessage, RedisStreamMetadata, RedisStreamConfig, RedisStreamSource};
///
/// struct Print;
/// impl Handler for Print {
///     type Item = longshore_redis::Bytes;
///     type Metadata = RedisStreamMetadata;
///     async fn handle_message(&self, message: &mut RedisStreamMessage) -> Result<(), BoxError> {
///         println!("{}: {} bytes", message.metadata().id(), message.data().len());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), BoxError> {
/// let config = RedisStreamConfig::new("redis://cache:6379", "orders", "billing").consumer("billing-0");
/// let pipeline = Pipeline::builder(RedisStreamSource::connect(config).await?, Print)
///     .processors(Processors::new(8))
///     .start()?;
/// pipeline.run_until_signal().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisStreamSource {
    stream: Arc<Stream>,
    /// One per `receive` under way at once (the pipeline's `source_concurrency`): a
    /// blocking read holds its connection.
    readers: FetchSlots<Reader>,
    /// Opens a reader's connection.
    client: redis::Client,
    read_timeouts: ConnectionManagerConfig,
    /// Still taking back this consumer's own entries: after this id. Set by the read
    /// itself, which may outlive the `receive` that started it.
    own_after: Arc<Mutex<Option<String>>>,
    /// Taken by the read of this consumer's own entries: one at a time, each after the
    /// last one's entries, so that none is handed out twice.
    own_read: Arc<tokio::sync::Mutex<()>>,
    /// Set when a read or claim failed: its reply may have been lost, with entries
    /// delivered to this consumer that it never saw; taken back by the next fetch
    /// ([`Stream::take_back_unseen`]).
    unseen: Arc<AtomicBool>,
    last_claim: Mutex<Option<Instant>>,
    block: Duration,
    /// Stops the idle-time keeper and the lag reader.
    stop: CancellationToken,
}

/// A read connection, and what its reads brought and were not handed out (kept across a
/// dropped `receive`, so that nothing read is left behind).
struct Reader {
    connection: ConnectionManager,
    fetch: KeptFetch<RedisStreamMetadata>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl RedisStreamSource {
    /// Connects (one connection for blocking reads, one for everything else; one more
    /// read connection per `receive` under way at once beyond the first) and creates the
    /// group if it is missing, reading the stream from its start.
    ///
    /// # Errors
    ///
    /// A [`RedisStreamError`]: an invalid setting (naming it), a server that cannot be
    /// reached, a key that is not a stream.
    pub async fn connect(config: RedisStreamConfig) -> Result<Self, RedisStreamError> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(RedisStreamError::server("parsing source.url"))?;
        // A blocking read waits `block`: its answer may take that long. Other commands
        // answer at once, or count as failed well within `claim_idle`.
        let timeouts = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(response))
                .set_connection_timeout(Some(Duration::from_secs(5)))
        };
        let commands = client
            .get_connection_manager_with_config(timeouts((config.claim_idle / 3).min(Duration::from_secs(5))))
            .await
            .map_err(RedisStreamError::server("connecting"))?;
        let read_timeouts = timeouts(config.block + Duration::from_secs(5));
        let reads = client
            .get_connection_manager_with_config(read_timeouts.clone())
            .await
            .map_err(RedisStreamError::server("connecting"))?;
        let stream = Arc::new(Stream {
            commands,
            key: Arc::from(config.stream.as_str()),
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            field: config.field.clone(),
            claim_idle: config.claim_idle,
            held: Mutex::default(),
            renewing: tokio::sync::Mutex::default(),
            delivering: tokio::sync::RwLock::default(),
            claim_cursor: Mutex::new("0".to_owned()),
            acks: AckQueue::default(),
            waiting: Mutex::default(),
            reads_stopped: CancellationToken::new(),
            metrics: StreamMetrics::new(&config.stream, &config.group),
        });
        stream
            .create_group()
            .await
            .map_err(RedisStreamError::server("creating the consumer group"))?;
        let stop = CancellationToken::new();
        let kept = stream.clone();
        tokio::spawn(every(config.claim_idle / 3, stop.clone(), move || {
            let stream = kept.clone();
            async move {
                if let Err(error) = stream.keep_held().await {
                    tracing::warn!(%error, stream = %stream.key, "redis XCLAIM of held entries failed; trying again at the next tick");
                }
            }
        }));
        let acking = stream.clone();
        let acks_stop = stop.clone();
        tokio::spawn(async move { acking.send_acks(acks_stop).await });
        let measured = stream.clone();
        tokio::spawn(every(config.lag_interval, stop.clone(), move || {
            let stream = measured.clone();
            async move {
                if let Err(error) = stream.measure().await {
                    tracing::debug!(%error, stream = %stream.key, "cannot read the redis stream's lag");
                }
            }
        }));
        Ok(RedisStreamSource {
            stream,
            readers: FetchSlots::new(Reader {
                connection: reads,
                fetch: KeptFetch::default(),
            }),
            client,
            read_timeouts,
            own_after: Arc::new(Mutex::new(Some("0".to_owned()))),
            own_read: Arc::default(),
            unseen: Arc::default(),
            last_claim: Mutex::new(None),
            block: config.block,
            stop,
        })
    }

    /// Entries delivered to this consumer and not yet acknowledged.
    pub fn held(&self) -> usize {
        lock(&self.stream.held).len()
    }
}

impl Drop for RedisStreamSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Source for RedisStreamSource {
    type Data = Bytes;
    type Metadata = RedisStreamMetadata;
    type Acknowledger = RedisStreamAcknowledger;

    /// A fetch under way completes at a pause: a read under way claims entries into this
    /// consumer's pending list.
    fn drops_fetch_on_pause(&self) -> bool {
        false
    }

    fn acknowledger(&self) -> RedisStreamAcknowledger {
        RedisStreamAcknowledger(self.stream.clone())
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<RedisStreamMessage>>, BoxError> {
        let mut reader = self
            .readers
            .take(|| async {
                let connection = self
                    .client
                    .get_connection_manager_with_config(self.read_timeouts.clone())
                    .await
                    .map_err(|error| format!("redis connecting for one more read: {error}"))?;
                Ok::<_, BoxError>(Reader {
                    connection,
                    fetch: KeptFetch::default(),
                })
            })
            .await?;
        loop {
            let claim = lock(&self.own_after).is_none() && {
                let mut last = lock(&self.last_claim);
                let due = last.is_none_or(|at| at.elapsed() >= CLAIM_EVERY);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            let (stream, mut connection, own_after, own_read, unseen, block) = (
                self.stream.clone(),
                reader.connection.clone(),
                self.own_after.clone(),
                self.own_read.clone(),
                self.unseen.clone(),
                self.block,
            );
            let read = reader.fetch.take(demand.get(), |count| async move {
                let taken: Result<Vec<RedisStreamMetadata>, BoxError> = async {
                    if lock(&own_after).is_some() {
                        let _own = own_read.lock().await;
                        // Read after the last read of its own ended, which may have been the last.
                        let after = lock(&own_after).clone();
                        if let Some(after) = after {
                            let read = stream
                                .read(&mut connection, ReadFrom::Own, &after, count, block)
                                .await?;
                            // Its own entries, oldest first, until there are none left. A
                            // reply of trimmed entries only is not the end.
                            *lock(&own_after) = read.last;
                            return Ok(read.entries);
                        }
                    }
                    if unseen.swap(false, Ordering::SeqCst) {
                        let (entries, more) = stream.take_back_unseen(count).await?;
                        if more {
                            unseen.store(true, Ordering::SeqCst);
                        }
                        if !entries.is_empty() {
                            return Ok(entries);
                        }
                    }
                    if claim {
                        let entries = stream.claim(count).await?;
                        if !entries.is_empty() {
                            return Ok(entries);
                        }
                    }
                    Ok(stream
                        .read(&mut connection, ReadFrom::New, ">", count, block)
                        .await?
                        .entries)
                }
                .await;
                if let Err(error) = &taken {
                    unseen.store(true, Ordering::SeqCst);
                    let code = error.downcast_ref::<redis::RedisError>().and_then(redis::RedisError::code);
                    if code == Some("NOGROUP") {
                        // The stream went (deleted, flushed, evicted, a restart without
                        // persistence), and a producer's add made it again without the
                        // group; or the group was deleted. Made again from the stream's
                        // start, or nothing would be read any more: what the stream holds
                        // now is delivered (again, where only the group went).
                        tracing::warn!(stream = %stream.key, group = %stream.group, "the redis stream's group is gone; creating it again from the stream's start");
                        if let Err(error) = stream.create_group().await {
                            tracing::warn!(%error, "redis group not created again; trying at the next read");
                        }
                    }
                }
                taken
            });
            let entries = read
                .await
                .map_err(|error| format!("redis reading the stream: {error}"))?;
            if !entries.is_empty() {
                let field = &self.stream.field;
                return Ok(Some(
                    entries
                        .into_iter()
                        .map(|entry| entry.into_message(field))
                        .collect(),
                ));
            }
        }
    }

    /// Hands back what was read and not handed out, reads under way included: any
    /// consumer may claim it at once.
    async fn shutdown(&self) {
        let drain = async {
            let mut left = Vec::new();
            for mut reader in self.readers.each().await {
                left.extend(reader.fetch.drain().await.iter().map(RedisStreamMetadata::key));
            }
            left
        };
        // A read that began to wait just as the first unblock went out is cut short by
        // the next.
        let unblock = async {
            loop {
                self.stream.unblock_reads().await;
                tokio::time::sleep(UNBLOCK_AGAIN).await;
            }
        };
        let left = tokio::select! {
            left = drain => left,
            never = unblock => never,
        };
        self.stream.hand_back(&left).await;
    }

    fn prepare(&self, plan: &Plan) -> Result<(), BuildError> {
        self.stream.acks.allow(plan.max_in_flight);
        if !plan.dead_letter {
            tracing::warn!(stream = %self.stream.key, "no dead-letter destination: an entry failed for good is logged, counted and acknowledged; set one to keep it");
        }
        Ok(())
    }
}
