//! The RabbitMQ source: one consumer on one channel, its prefetch the pipeline's bound,
//! connected again after a loss.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use longshore::source::{every, Plan, Refusal, Source, SourceSettings};
use longshore::{BoxError, BuildError, Message, RetryPolicy};
use tokio_util::sync::CancellationToken;

use crate::acknowledge::{requeue, send_waiting, RabbitMqAcknowledger, Unsettled};
use crate::config::RabbitMqConfig;
use crate::error::RabbitMqError;
use crate::metadata::{RabbitMqMessage, RabbitMqMetadata};
use crate::metrics::QueueMetrics;

/// The prefetch before the pipeline tells its bound (a source used on its own).
const DEFAULT_PREFETCH: u16 = 64;

/// The longest a graceful close, or the hand-back of what was delivered and not handed
/// out, may take: the server away, the connection is dropped, and it requeues anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The longest connecting and starting the consumer may take: a server that accepts the
/// connection and never answers is tried again.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// How long the server may refuse the consumer (the queue gone, the permission taken)
/// before the source reports it can no longer deliver (`liveness`).
const REFUSED_LIMIT: Duration = Duration::from_secs(60);

/// Consumes a RabbitMQ queue.
///
/// One consumer on one channel, with manual acknowledgements and a prefetch
/// (`basic.qos`) of the pipeline's `max_in_flight`: the server never has more messages
/// out to this consumer than the pipeline can hold, however deep the queue. A message is
/// acknowledged after its last stage. A failed one is retried in the pipeline with the
/// retry policy's backoff (RabbitMQ has no delayed requeue); one failed for good is
/// acknowledged once the pipeline's dead-letter destination has it, else rejected
/// without requeue, which routes it to the queue's dead-letter exchange (RabbitMQ
/// drops it if the queue has none: the start warns).
///
/// After a lost connection the source connects again (backing off up to 5 s). The
/// messages the pipeline still holds from the old channel are not acknowledged there
/// (their delivery tags meant nothing on another channel): the server requeued them when
/// the channel died, and delivers them again. At shutdown, messages delivered and not
/// handed out, and those the pipeline releases, are requeued at once.
///
/// ```no_run
/// use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
/// use longshore_rabbitmq::{RabbitMqConfig, RabbitMqMessage, RabbitMqMetadata, RabbitMqSource};
///
/// struct Print;
/// impl Handler for Print {
///     type Item = longshore_rabbitmq::Bytes;
///     type Metadata = RabbitMqMetadata;
///     async fn handle_message(&self, message: &mut RabbitMqMessage) -> Result<(), BoxError> {
///         println!("{}: {} bytes", message.metadata().routing_key(), message.data().len());
///         Ok(())
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), BoxError> {
/// let config = RabbitMqConfig::new("amqp://rabbitmq:5672/%2f", "orders");
/// let pipeline = Pipeline::builder(RabbitMqSource::connect(config).await?, Print)
///     .processors(Processors::new(8))
///     .retry(RetryPolicy::new(5))
///     .start()?;
/// pipeline.run_until_signal().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RabbitMqSource {
    shared: Arc<Shared>,
    /// The running consumer, and its number: none before the first receive and after a
    /// loss.
    consumer: tokio::sync::Mutex<Option<(u64, Consumer)>>,
    /// Consumers started so far.
    started: AtomicU64,
    prefetch: AtomicU16,
    /// Stops the lag reader, and the receives once shut down.
    stop: CancellationToken,
}

/// What the source and its acknowledger share.
#[derive(Debug)]
pub(crate) struct Shared {
    config: RabbitMqConfig,
    /// The connection and the channel the consumer runs on; none once closed, or lost
    /// until the next receive connects again.
    link: Mutex<Option<Link>>,
    /// Deliveries handed out and not yet settled.
    pub(crate) held: AtomicUsize,
    /// Those of the running consumer, for coalesced acknowledgements.
    unsettled: Mutex<Unsettled>,
    /// A receive waits for the server: finished deliveries are acknowledged at once, not
    /// held for a longer run (the server may be waiting for them to deliver more).
    pub(crate) starved: AtomicBool,
    /// Since when, and why, the server refuses the consumer.
    refused: Refusal,
    metrics: QueueMetrics,
}

#[derive(Debug, Clone)]
struct Link {
    connection: Arc<Connection>,
    channel: Channel,
}

/// A consumer's start under way. Cut short (a pause or a timeout dropped the receive)
/// after `basic.consume` left, the server may still register the consumer and deliver
/// to it, up to the prefetch, with nobody reading: the link is closed instead, so that
/// the server requeues what it delivered on it.
struct Starting<'a> {
    shared: &'a Shared,
    link: Option<Link>,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        self.shared.drop_link();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = link.channel.close(200, "start cut short".into()).await;
                let _ = link.connection.close(200, "start cut short".into()).await;
            });
        }
    }
}

impl RabbitMqSource {
    /// Connects, and checks that the queue exists.
    ///
    /// # Errors
    ///
    /// A [`RabbitMqError`]: an invalid setting (naming it), a server that cannot be
    /// reached or refuses the credentials, a queue that does not exist.
    pub async fn connect(config: RabbitMqConfig) -> Result<Self, RabbitMqError> {
        config.validate()?;
        let prefetch = config.prefetch.unwrap_or(DEFAULT_PREFETCH);
        let lag_interval = config.lag_interval;
        let shared = Arc::new(Shared {
            metrics: QueueMetrics::new(&config.queue),
            config,
            link: Mutex::default(),
            held: AtomicUsize::new(0),
            unsettled: Mutex::default(),
            starved: AtomicBool::new(false),
            refused: Refusal::new("rabbitmq", REFUSED_LIMIT),
        });
        let checked = async {
            let link = shared.link().await?;
            shared.declare_passive(&link.channel).await
        };
        tokio::time::timeout(CONNECT_WAIT, checked)
            .await
            .map_err(|_| RabbitMqError::Timeout { doing: "connecting" })??;
        let stop = CancellationToken::new();
        let measured = shared.clone();
        tokio::spawn(every(lag_interval, stop.clone(), move || {
            let shared = measured.clone();
            async move { shared.measure().await }
        }));
        Ok(RabbitMqSource {
            shared,
            consumer: tokio::sync::Mutex::default(),
            started: AtomicU64::new(0),
            prefetch: AtomicU16::new(prefetch),
            stop,
        })
    }

    /// Messages handed out by this source and not yet settled.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// The messages of `deliveries`, from consumer number `consumer`, tracked until
    /// settled.
    fn messages(&self, deliveries: Vec<lapin::message::Delivery>, consumer: u64) -> Vec<RabbitMqMessage> {
        self.shared.held.fetch_add(deliveries.len(), Ordering::Relaxed);
        let mut unsettled = self.shared.unsettled();
        deliveries
            .into_iter()
            .map(|delivery| {
                let metadata = RabbitMqMetadata::read(delivery, consumer);
                unsettled.received(&metadata);
                // A quorum queue counts deliveries: one that keeps killing its consumers
                // comes with its attempts used, and the queue's delivery-limit ends it.
                let attempt = metadata
                    .delivery_count()
                    .map_or(1, |count| count.saturating_add(1));
                Message::with_metadata(metadata.body().clone(), metadata).with_attempt(attempt)
            })
            .collect()
    }
}

impl Drop for RabbitMqSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Source for RabbitMqSource {
    type Data = bytes::Bytes;
    type Metadata = RabbitMqMetadata;
    type Acknowledger = RabbitMqAcknowledger;

    /// A fetch under way completes at a pause: the server pushes deliveries up to the prefetch
    /// whether or not a receive waits.
    fn drops_fetch_on_pause(&self) -> bool {
        false
    }

    fn acknowledger(&self) -> RabbitMqAcknowledger {
        RabbitMqAcknowledger(self.shared.clone())
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<RabbitMqMessage>>, BoxError> {
        let mut consumer = self.consumer.lock().await;
        let backoff = RetryPolicy::new(u32::MAX)
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_secs(5))
            .jitter(0.2);
        // Failed starts and lost consumers since the last delivery: each waits its backoff,
        // so that a consumer the server ends at once is not started in a tight loop.
        let mut failures = 0;
        loop {
            if self.stop.is_cancelled() {
                return Ok(None);
            }
            let Some((number, running)) = consumer.as_mut() else {
                if failures > 0 {
                    tokio::time::sleep(backoff.backoff(failures)).await;
                }
                let prefetch = self.prefetch.load(Ordering::Relaxed);
                let started = tokio::time::timeout(CONNECT_WAIT, self.shared.consume(prefetch))
                    .await
                    .unwrap_or(Err(RabbitMqError::Timeout {
                        doing: "starting the consumer",
                    }));
                match started {
                    Ok((channel, started)) => {
                        self.shared.refused(None);
                        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
                        self.shared.unsettled().start(number, channel, prefetch);
                        *consumer = Some((number, started));
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::warn!(error = %error, queue = %self.shared.config.queue, "rabbitmq consumer not started; trying again");
                        self.shared.refused(Some(&error));
                        self.shared.drop_link();
                    }
                }
                continue;
            };
            let next = match running.next().now_or_never() {
                Some(next) => next,
                None => {
                    // Nothing delivered yet: the server may be holding back for finished
                    // deliveries still to be acknowledged (the prefetch counts them).
                    let _starved = Starved::set(&self.shared.starved);
                    send_waiting(&self.shared).await;
                    running.next().await
                }
            };
            let lost = match next {
                Some(Ok(delivery)) => {
                    let mut deliveries = Vec::with_capacity(demand.get().min(64));
                    deliveries.push(delivery);
                    // What else has arrived, up to the demand, without waiting.
                    let mut lost = None;
                    while deliveries.len() < demand.get() {
                        match running.next().now_or_never() {
                            Some(Some(Ok(delivery))) => deliveries.push(delivery),
                            Some(Some(Err(error))) => {
                                lost = Some(error.to_string());
                                break;
                            }
                            Some(None) => {
                                lost = Some("consumer cancelled by the server".to_owned());
                                break;
                            }
                            None => break,
                        }
                    }
                    // The channel died (the stream ended after them, or its status
                    // says so): the server requeued these with everything else it had
                    // delivered on it and delivers them again. Handed out, each would be
                    // handled twice.
                    let open = lost.is_none() && self.shared.unsettled().channel_open(*number);
                    if !open {
                        let reason = lost.unwrap_or_else(|| "channel closed".to_owned());
                        tracing::debug!(
                            deliveries = deliveries.len(),
                            "rabbitmq deliveries of a closed channel dropped; the server delivers them again"
                        );
                        // Closed for sure: a consumer the server cancelled leaves its
                        // channel open, and only the close requeues what was dropped.
                        if let Some(channel) = self.shared.unsettled().channel_of(*number) {
                            tokio::spawn(async move {
                                let _ = channel.close(200, "consumer lost".into()).await;
                            });
                        }
                        failures += 1;
                        self.lose(&mut consumer, &reason);
                        continue;
                    }
                    return Ok(Some(self.messages(deliveries, *number)));
                }
                Some(Err(error)) => error.to_string(),
                None => "consumer cancelled by the server".to_owned(),
            };
            failures += 1;
            self.lose(&mut consumer, &lost);
        }
    }

    /// `Err` once the server has refused the consumer (the queue gone, a permission
    /// taken) for a minute: the pipeline stops and `/healthz` fails, so that the
    /// process is restarted and the refusal seen. A server that cannot be reached only
    /// makes the source not ready.
    fn liveness(&self) -> Result<(), BoxError> {
        self.shared.refused.liveness()
    }

    /// Connected to the server.
    fn is_ready(&self) -> bool {
        self.shared.connected()
    }

    fn prepare(&self, plan: &Plan) -> Result<(), BuildError> {
        let bound = u16::try_from(plan.max_in_flight).unwrap_or(u16::MAX).max(1);
        let prefetch = match self.shared.config.prefetch {
            Some(prefetch) if usize::from(prefetch) > plan.max_in_flight => {
                return Err(BuildError::new(
                    "source.prefetch",
                    format!(
                        "{prefetch} is more than the pipeline's max_in_flight ({}): the server would deliver messages the pipeline cannot take",
                        plan.max_in_flight
                    ),
                ))
            }
            Some(prefetch) => prefetch,
            None => bound,
        };
        self.prefetch.store(prefetch, Ordering::Relaxed);
        if !plan.dead_letter {
            tracing::warn!(queue = %self.shared.config.queue, "no dead-letter destination: a message failed for good is rejected without requeue, to the queue's dead-letter exchange; RabbitMQ drops it if the queue has none");
        }
        Ok(())
    }

    /// Stops the consumer and requeues what was delivered and not handed out.
    async fn shutdown(&self) {
        self.stop.cancel();
        let Some((_, mut consumer)) = self.consumer.lock().await.take() else {
            return;
        };
        let link = self.shared.lock_link().clone();
        let Some(link) = link else {
            // Closed or lost: the server has requeued what the channel had delivered.
            return;
        };
        let cancel = link
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default());
        match tokio::time::timeout(CLOSE_WAIT, cancel).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "rabbitmq consumer not cancelled; closing the channel requeues its deliveries");
                return;
            }
            Err(_) => {
                tracing::debug!("rabbitmq consumer not cancelled in {CLOSE_WAIT:?}; closing the channel requeues its deliveries");
                return;
            }
        }
        // Delivered before the cancel took effect: requeued at once.
        let mut left = Vec::new();
        let drained = async {
            while let Some(Ok(delivery)) = consumer.next().await {
                left.push(delivery.delivery_tag);
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, drained).await;
        requeue(&link.channel, left).await;
    }
}

impl RabbitMqSource {
    fn lose(&self, consumer: &mut Option<(u64, Consumer)>, reason: &str) {
        if self.stop.is_cancelled() {
            *consumer = None;
            return;
        }
        tracing::warn!(%reason, queue = %self.shared.config.queue, "rabbitmq consumer lost; connecting again (what the pipeline holds from it is delivered again)");
        *consumer = None;
        self.shared.drop_link();
    }
}

impl Shared {
    /// The live link, or a new one.
    async fn link(&self) -> Result<Link, RabbitMqError> {
        if let Some(link) = self.lock_link().clone() {
            if link.connection.status().connected() && link.channel.status().connected() {
                return Ok(link);
            }
        }
        let properties = ConnectionProperties::default().with_connection_name("longshore".into());
        let connection = Connection::connect(&self.config.url, properties)
            .await
            .map_err(RabbitMqError::server("connecting"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(RabbitMqError::server("opening a channel"))?;
        let link = Link {
            connection: Arc::new(connection),
            channel,
        };
        *self.lock_link() = Some(link.clone());
        Ok(link)
    }

    /// Starts the consumer, at most `prefetch` messages out unacknowledged.
    async fn consume(&self, prefetch: u16) -> Result<(Channel, Consumer), RabbitMqError> {
        let link = self.link().await?;
        let mut starting = Starting {
            shared: self,
            link: Some(link.clone()),
        };
        let started = self.start_consumer(&link, prefetch).await;
        starting.link = None;
        started
    }

    async fn start_consumer(&self, link: &Link, prefetch: u16) -> Result<(Channel, Consumer), RabbitMqError> {
        link.channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(RabbitMqError::server("setting the prefetch"))?;
        let consumer = link
            .channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(RabbitMqError::server("starting the consumer"))?;
        Ok((link.channel.clone(), consumer))
    }

    async fn declare_passive(&self, channel: &Channel) -> Result<lapin::Queue, RabbitMqError> {
        channel
            .queue_declare(
                self.config.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(RabbitMqError::server("finding the queue"))
    }

    /// The connection and its channel open: acknowledgements can be sent.
    fn connected(&self) -> bool {
        self.lock_link()
            .as_ref()
            .is_some_and(|link| link.connection.status().connected() && link.channel.status().connected())
    }

    /// Records that the server refuses the consumer (`Some`, the first time), or not.
    fn refused(&self, error: Option<&RabbitMqError>) {
        match error.filter(|error| error.is_refusal()) {
            Some(error) => self.refused.refused(error),
            None => self.refused.accepted(),
        }
    }

    /// Forgets the link: dropped, its channel closes and the server requeues what it had
    /// delivered on it and not seen acknowledged.
    fn drop_link(&self) {
        self.lock_link().take();
    }

    /// Closes the channel and the connection: the server requeues anything delivered
    /// and not acknowledged.
    pub(crate) async fn close(&self) {
        let Some(link) = self.lock_link().take() else {
            return;
        };
        let close = async {
            let _ = link.channel.close(200, "done".into()).await;
            link.connection.close(200, "done".into()).await
        };
        match tokio::time::timeout(CLOSE_WAIT, close).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "rabbitmq connection not closed cleanly"),
            Err(_) => tracing::warn!("rabbitmq connection not closed within {CLOSE_WAIT:?}; dropped"),
        }
    }

    /// Reads the queue's depth and consumers into the gauges, on a channel of its own
    /// (a failed passive declare closes its channel).
    async fn measure(&self) {
        let Some(connection) = self.lock_link().as_ref().map(|link| link.connection.clone()) else {
            return;
        };
        let read = async {
            let channel = connection
                .create_channel()
                .await
                .map_err(RabbitMqError::server("opening a channel"))?;
            let queue = self.declare_passive(&channel).await?;
            let _ = channel.close(200, "measured".into()).await;
            Ok::<_, RabbitMqError>(queue)
        };
        match read.await {
            Ok(queue) => {
                self.metrics.ready.set(i64::from(queue.message_count()));
                self.metrics.consumers.set(i64::from(queue.consumer_count()));
            }
            Err(error) => tracing::debug!(%error, "cannot read the rabbitmq queue's depth"),
        }
    }

    fn lock_link(&self) -> std::sync::MutexGuard<'_, Option<Link>> {
        lock(&self.link)
    }
}

impl Shared {
    pub(crate) fn queue(&self) -> &str {
        &self.config.queue
    }

    pub(crate) fn unsettled(&self) -> std::sync::MutexGuard<'_, Unsettled> {
        lock(&self.unsettled)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sets a flag for as long as it lives (a receive dropped while it waits clears it too).
struct Starved<'a>(&'a AtomicBool);

impl<'a> Starved<'a> {
    fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::SeqCst);
        Starved(flag)
    }
}

impl Drop for Starved<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}
