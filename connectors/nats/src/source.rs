//! The JetStream source: a durable pull consumer fetching the demand.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use longshore::source::{Redelivery, Source, SourceSettings};
use longshore::{BoxError, Message};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::acknowledge::JetStreamAcknowledger;
use crate::config::JetStreamConfig;
use crate::error::JetStreamError;
use crate::metadata::{JetStreamMessage, JetStreamMetadata};
use crate::metrics::ConsumerMetrics;

/// Consumes a JetStream stream through a durable pull consumer.
///
/// Each `receive` fetches at most the demand (a pull request of `demand` messages that
/// expires after [`expires`](JetStreamConfig::expires)). A message is acknowledged after
/// its last stage; a failed one is nak'ed with the retry policy's backoff as its delay
/// (the server's delivery count is the attempt); one failed for good is acknowledged
/// once the pipeline's dead-letter destination has it, else terminated (`+TERM`: the
/// server delivers it no more and publishes an advisory). The messages being handled
/// get progress (`+WPI`) three times per `ack_wait`, so a long job is not delivered
/// twice; messages fetched and not started at shutdown are nak'ed for redelivery at once.
///
/// ```no_run
/// use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
/// use longshore_nats::{JetStreamConfig, JetStreamMessage, JetStreamMetadata, JetStreamSource};
///
/// struct Print;
/// impl Handler for Print {
///     type Item = longshore_nats::Bytes;
///     type Metadata = JetStreamMetadata;
///     async fn handle_message(&self, message: &mut JetStreamMessage) -> Result<(), BoxError> {
///         println!("{} #{}", message.metadata().subject(), message.metadata().stream_sequence());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), BoxError> {
/// let config = JetStreamConfig::new("nats://nats:4222", "ORDERS", "billing");
/// let pipeline = Pipeline::builder(JetStreamSource::connect(config).await?, Print)
///     .processors(Processors::new(8))
///     .retry(RetryPolicy::new(5))
///     .start()?;
/// pipeline.run_until_signal().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct JetStreamSource {
    shared: Arc<Shared>,
    fetch: tokio::sync::Mutex<Fetch>,
    expires: Duration,
    /// Stops the progress keeper and the lag reader.
    stop: CancellationToken,
}

/// What the source and its acknowledger share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    consumer: PullConsumer,
    pub(crate) stream: String,
    /// Messages fetched and not yet settled, by stream sequence: they get progress.
    pub(crate) held: Mutex<HashMap<u64, jetstream::Message>>,
    ack_wait: Duration,
    metrics: ConsumerMetrics,
}

/// Messages fetched and not yet handed out, and a fetch under way: kept across a
/// dropped `receive`, so that nothing fetched is left behind.
#[derive(Debug, Default)]
struct Fetch {
    ready: VecDeque<jetstream::Message>,
    pending: Option<JoinHandle<Result<Vec<jetstream::Message>, String>>>,
}

impl JetStreamSource {
    /// Connects, and creates the durable consumer if it is missing (explicit acks, from
    /// the stream's start, `ack_wait` as set).
    ///
    /// # Errors
    ///
    /// A [`JetStreamError`]: an invalid setting (naming it), a server that cannot be
    /// reached, a stream that does not exist.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, JetStreamError> {
        config.validate()?;
        let client = async_nats::connect(config.url.as_str())
            .await
            .map_err(JetStreamError::server("connecting"))?;
        let context = jetstream::new(client.clone());
        let stream = context
            .get_stream(&config.stream)
            .await
            .map_err(JetStreamError::server("finding the stream"))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &config.consumer,
                PullConfig {
                    durable_name: Some(config.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    ..PullConfig::default()
                },
            )
            .await
            .map_err(JetStreamError::server("creating the consumer"))?;
        let shared = Arc::new(Shared {
            client,
            consumer,
            stream: config.stream.clone(),
            held: Mutex::default(),
            ack_wait: config.ack_wait,
            metrics: ConsumerMetrics::new(&config.stream, &config.consumer),
        });
        let stop = CancellationToken::new();
        tokio::spawn(keep_in_progress(shared.clone(), stop.clone()));
        tokio::spawn(measure(shared.clone(), config.lag_interval, stop.clone()));
        Ok(JetStreamSource {
            shared,
            fetch: tokio::sync::Mutex::default(),
            expires: config.expires,
            stop,
        })
    }

    /// Messages fetched by this source and not yet settled.
    pub fn held(&self) -> usize {
        lock(&self.shared.held).len()
    }

    fn message(&self, message: jetstream::Message) -> JetStreamMessage {
        let (sequence, delivered) = message
            .info()
            .map(|info| (info.stream_sequence, info.delivered))
            .unwrap_or((0, 1));
        let metadata = JetStreamMetadata::read(message, sequence);
        let payload = metadata.payload().clone();
        Message::with_metadata(payload, metadata).with_attempt(u32::try_from(delivered).unwrap_or(1))
    }
}

impl Drop for JetStreamSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Source for JetStreamSource {
    type Data = Bytes;
    type Metadata = JetStreamMetadata;
    type Acknowledger = JetStreamAcknowledger;

    fn acknowledger(&self) -> JetStreamAcknowledger {
        JetStreamAcknowledger(self.shared.clone())
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<JetStreamMessage>>, BoxError> {
        let mut fetch = self.fetch.lock().await;
        loop {
            if !fetch.ready.is_empty() {
                let take = demand.get().min(fetch.ready.len());
                let taken: Vec<jetstream::Message> = fetch.ready.drain(..take).collect();
                return Ok(Some(taken.into_iter().map(|m| self.message(m)).collect()));
            }
            let (shared, count, expires) = (self.shared.clone(), demand.get(), self.expires);
            let pending = fetch.pending.get_or_insert_with(|| {
                tokio::spawn(async move {
                    let mut batch = shared
                        .consumer
                        .fetch()
                        .max_messages(count)
                        .expires(expires)
                        .messages()
                        .await
                        .map_err(|error| error.to_string())?;
                    let mut fetched = Vec::with_capacity(count);
                    while let Some(message) = batch.next().await {
                        fetched.push(message.map_err(|error| error.to_string())?);
                    }
                    let mut held = lock(&shared.held);
                    for message in &fetched {
                        if let Ok(info) = message.info() {
                            held.insert(info.stream_sequence, message.clone());
                        }
                    }
                    Ok(fetched)
                })
            });
            let fetched = pending.await;
            fetch.pending = None;
            match fetched {
                Ok(Ok(messages)) => fetch.ready.extend(messages),
                Ok(Err(error)) => return Err(format!("nats fetching: {error}").into()),
                Err(panicked) => return Err(panicked.into()),
            }
        }
    }

    fn redelivery(&self) -> Redelivery {
        Redelivery::Broker
    }

    /// Naks what was fetched and not handed out, a fetch under way included: delivered
    /// again at once.
    async fn shutdown(&self) {
        let mut fetch = self.fetch.lock().await;
        if let Some(pending) = fetch.pending.take() {
            if let Ok(Ok(messages)) = pending.await {
                fetch.ready.extend(messages);
            }
        }
        let left: Vec<jetstream::Message> = fetch.ready.drain(..).collect();
        for message in &left {
            self.shared.settle(message, AckKind::Nak(None)).await;
        }
        let _ = self.shared.client.flush().await;
    }
}

impl Shared {
    /// Sends `kind` for `message` and lets it go. One never received by the server
    /// loses nothing: it is delivered again after `ack_wait`.
    pub(crate) async fn settle(&self, message: &jetstream::Message, kind: AckKind) {
        if let Ok(info) = message.info() {
            lock(&self.held).remove(&info.stream_sequence);
        }
        if let Err(error) = message.ack_with(kind).await {
            tracing::warn!(%error, subject = %message.subject, "nats acknowledgement not sent; the message comes again after ack_wait");
        }
    }
}

/// Sends progress for the messages held, three times per `ack_wait`, until `stop`.
async fn keep_in_progress(shared: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(shared.ack_wait / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let held: Vec<jetstream::Message> = lock(&shared.held).values().cloned().collect();
        for message in held {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::warn!(%error, "nats progress not sent; trying again at the next tick");
            }
        }
    }
}

/// Reads the consumer's pending and unacknowledged counts every `interval`.
async fn measure(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut consumer = shared.consumer.clone();
        match consumer.info().await {
            Ok(info) => {
                shared
                    .metrics
                    .pending
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                shared.metrics.ack_pending.set(info.num_ack_pending as i64);
            }
            Err(error) => tracing::debug!(%error, "cannot read the nats consumer's lag"),
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
