//! The Kafka [`Source`]: hands queued records to the pipeline on demand, and acknowledges
//! them into the offset trackers.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use longshore::source::{PartitionBy, Plan};
use longshore::{Acknowledger, BoxError, BuildError, Message, Source};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::assignment::Shared;
use crate::config::{KafkaConfig, Ordering};
use crate::error::KafkaSourceError;
use crate::lag::KafkaLag;
use crate::metadata::{KafkaMessage, KafkaMetadata};
use crate::poller::{self, Context, Intervals, PollThread};
use crate::status::KafkaStatus;

/// Consumes Kafka topics in a consumer group, on demand.
///
/// ```text
///  librdkafka ─▶ poll thread ─▶ queue (≤ max_buffered_per_partition each) ─▶ pipeline
///      ▲             │ pause a full partition                                    │ ack
///      └── commit ◀──┴── per partition: the contiguous acknowledged prefix ◀─────┘
/// ```
///
/// - Offsets: per partition, only the contiguous acknowledged prefix is committed, on an
///   interval, on revoke and at shutdown: never past an unfinished message.
/// - Revoke: queued records of the revoked partitions are dropped (they were never
///   handed out); their in-flight messages get `revoke_drain_timeout` to finish; then the
///   prefix is committed and the partitions released. A later acknowledgement of them
///   commits nothing.
/// - Order: see [`Ordering`]; it becomes the pipeline's `partition_by` unless the builder
///   sets one.
/// - Failures are retried in process (Kafka cannot redeliver one record); give the
///   pipeline a [`KafkaDeadLetter`](crate::KafkaDeadLetter) for what still fails.
pub struct KafkaSource {
    shared: Arc<Shared>,
    lag: KafkaLag,
    /// The subscription, for the panel's pauses.
    topics: Arc<[String]>,
    poller: Arc<Mutex<Option<PollThread>>>,
    ordering: Ordering,
    /// The poll thread is wedged once it has not polled for this long
    /// (`max.poll.interval.ms`: by then the group has expelled the consumer).
    wedged_after: std::time::Duration,
    acknowledger_taken: std::sync::atomic::AtomicBool,
}

impl KafkaSource {
    /// Connects, subscribes and starts the consumer's poll thread.
    ///
    /// # Errors
    ///
    /// An invalid configuration (naming the field), or librdkafka refusing it.
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaSourceError> {
        config.validate()?;
        let shared = Shared::new(config.max_buffered_per_partition);
        let lag = KafkaLag::exported();
        let context = Context {
            shared: shared.clone(),
            revoke_drain_timeout: config.revoke_drain_timeout,
            lag: lag.clone(),
            group: config.group_id.clone(),
            only_topic: poller::only_topic(&config.topics),
            assigned_unsubscribed: Default::default(),
            rebalanced: Default::default(),
        };
        let consumer: BaseConsumer<Context> = config.client_config().create_with_context(context)?;
        let topics: Arc<[String]> = config.topics.iter().cloned().collect();
        consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
        let intervals = Intervals {
            commit: config.commit_interval,
            close: config.close_timeout,
            lag: config.lag_interval,
        };
        let wedged_after = config.rebalance_timeout()?;
        let poller = poller::spawn(consumer, shared.clone(), intervals, config.group_id)?;
        Ok(KafkaSource {
            shared,
            lag,
            topics,
            poller: Arc::new(Mutex::new(Some(poller))),
            ordering: config.ordering,
            wedged_after,
            acknowledger_taken: Default::default(),
        })
    }
}

impl KafkaSource {
    /// The consumer's lag per partition, refreshed every `lag_interval`.
    pub fn lag(&self) -> KafkaLag {
        self.lag.clone()
    }

    /// A handle to pause and resume single partitions or topics while the pipeline runs
    /// (see [`KafkaPause`](crate::KafkaPause)).
    pub fn pause_control(&self) -> crate::KafkaPause {
        crate::KafkaPause(self.shared.clone())
    }

    /// A live view of the assignment: per partition, paused or not, records queued and
    /// in flight.
    pub fn status(&self) -> KafkaStatus {
        KafkaStatus(self.shared.clone())
    }
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("ordering", &self.ordering)
            .finish_non_exhaustive()
    }
}

impl Source for KafkaSource {
    type Data = bytes::Bytes;
    type Metadata = KafkaMetadata;
    type Acknowledger = KafkaAcknowledger;

    fn acknowledger(&self) -> KafkaAcknowledger {
        self.acknowledger_taken
            .store(true, std::sync::atomic::Ordering::SeqCst);
        KafkaAcknowledger {
            shared: self.shared.clone(),
            poller: self.poller.clone(),
        }
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<KafkaMessage>>, BoxError> {
        loop {
            let ready = self.shared.ready.notified();
            let messages = self.shared.take(demand.get());
            if !messages.is_empty() {
                return Ok(Some(messages));
            }
            ready.await;
        }
    }

    fn partition_by(&self) -> Option<PartitionBy<bytes::Bytes, KafkaMetadata>> {
        order_key(self.ordering)
    }

    fn panel(&self) -> Option<Arc<dyn longshore::source::SourcePanel>> {
        Some(Arc::new(crate::panel::KafkaPanel {
            shared: self.shared.clone(),
            lag: self.lag.clone(),
            topics: self.topics.clone(),
        }))
    }

    fn is_ready(&self) -> bool {
        let state = self.shared.lock();
        state.joined && !state.stopped
    }

    fn prepare(&self, plan: &Plan) -> Result<(), BuildError> {
        self.shared.set_max_in_flight(plan.max_in_flight);
        Ok(())
    }

    fn liveness(&self) -> Result<(), BoxError> {
        let (finished, polled_at) = {
            let state = self.shared.lock();
            (state.finished, state.polled_at)
        };
        if finished {
            return Ok(());
        }
        let ended = self
            .poller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(PollThread::has_ended);
        if ended {
            return Err("the kafka poll thread ended unexpectedly (it panicked): nothing more is fetched or committed".into());
        }
        polled_recently(polled_at.elapsed(), self.wedged_after)
    }

    async fn shutdown(&self) {
        // Never handed out: not acknowledged, so not committed, so read again later.
        self.shared.stop();
    }
}

/// `Err` once the poll thread has been silent past `wedged_after` (`max.poll.interval.ms`).
fn polled_recently(silent: std::time::Duration, wedged_after: std::time::Duration) -> Result<(), BoxError> {
    if silent > wedged_after {
        return Err(format!(
            "the kafka poll thread has not polled for {silent:?}, past max.poll.interval.ms ({wedged_after:?}): the group has expelled the consumer"
        )
        .into());
    }
    Ok(())
}

/// The order key of `ordering`. Of the partition itself, never of its slot: a slot goes to
/// another partition after a revoke, and a partition lost with records in flight comes
/// back in another slot, so keying by slot would let its records read again run beside
/// the old ones still in flight.
fn order_key(ordering: Ordering) -> Option<PartitionBy<bytes::Bytes, KafkaMetadata>> {
    match ordering {
        Ordering::Partition => Some(Arc::new(|m: &KafkaMessage| partition_hash(m.metadata()))),
        Ordering::Key => Some(Arc::new(|m: &KafkaMessage| {
            let mut hasher = DefaultHasher::new();
            (partition_hash(m.metadata()), m.metadata().key()).hash(&mut hasher);
            hasher.finish()
        })),
        Ordering::Unordered => None,
    }
}

/// A hash of the record's topic and partition, cheap enough for every record: the poll
/// thread gives all records of a topic one shared name, so its address stands for it.
fn partition_hash(record: &KafkaMetadata) -> u64 {
    let topic = Arc::as_ptr(record.topic_arc()).cast::<u8>() as u64;
    // splitmix64's finaliser: every input bit reaches the low bits the processors are
    // chosen by.
    let mut z = topic ^ (u64::from(record.partition() as u32) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        if !self.acknowledger_taken.load(std::sync::atomic::Ordering::SeqCst) {
            // No pipeline ever ran: close the consumer now.
            self.shared.finish();
        }
    }
}

/// Acknowledges Kafka records into their partitions' offset trackers. Flushed when the
/// pipeline has stopped: it commits a last time and closes the consumer.
pub struct KafkaAcknowledger {
    shared: Arc<Shared>,
    poller: Arc<Mutex<Option<PollThread>>>,
}

impl KafkaAcknowledger {
    /// Tells the poll thread to make its final commit and close; returns it, unless
    /// already told.
    fn finish(&self) -> Option<PollThread> {
        self.shared.finish();
        self.poller.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for KafkaAcknowledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAcknowledger").finish_non_exhaustive()
    }
}

impl Acknowledger<KafkaMetadata> for KafkaAcknowledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<Message<T, KafkaMetadata>>,
        failed: Vec<Message<T, KafkaMetadata>>,
    ) {
        // A failed message was dead-lettered (or given up) before it got here: either
        // way it is done, and the offset may pass it.
        self.shared
            .acknowledge(successful.iter().chain(&failed).map(Message::metadata));
    }

    fn origin<T>(&self, message: &Message<T, KafkaMetadata>) -> Option<String> {
        let record = message.metadata();
        Some(format!(
            "{}/{}@{}",
            record.topic(),
            record.partition(),
            record.offset()
        ))
    }

    async fn flush(&self) {
        if let Some(poller) = self.finish() {
            // The final commit and the close happen on the poll thread: waited for off the
            // runtime's workers.
            if tokio::task::spawn_blocking(move || poller.join()).await.is_err() {
                tracing::error!("waiting for the kafka consumer to close failed");
            }
        }
    }
}

impl Drop for KafkaAcknowledger {
    fn drop(&mut self) {
        // Only when the pipeline was aborted at its deadline before the flush: the final
        // commit still happens, so that a restart reads less again.
        if let Some(poller) = self.finish() {
            poller.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::mocking::MockCluster;
    use rdkafka::TopicPartitionList;

    use super::*;

    #[test]
    fn a_running_consumer_is_live_and_a_silent_poll_thread_is_not() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let config = KafkaConfig::new(cluster.bootstrap_servers(), "g", ["t"])
            .property("session.timeout.ms", "2000")
            .property("max.poll.interval.ms", "2000")
            .revoke_drain_timeout(Duration::from_secs(1));
        let source = KafkaSource::new(config).unwrap();
        assert!(source.liveness().is_ok());
        assert_eq!(source.wedged_after, Duration::from_secs(2));
        // As if the poll thread had hung in a call that never returns.
        let error = polled_recently(Duration::from_secs(3), source.wedged_after)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "the kafka poll thread has not polled for 3s, past max.poll.interval.ms (2s): the group has expelled the consumer"
        );
        assert!(polled_recently(Duration::from_secs(1), source.wedged_after).is_ok());
    }

    #[test]
    fn a_partition_keeps_its_order_key_when_it_comes_back_in_another_slot() {
        let shared = Shared::new(100);
        let list = |partitions: &[i32]| {
            let mut tpl = TopicPartitionList::new();
            partitions.iter().for_each(|&p| {
                tpl.add_partition("t", p);
            });
            tpl
        };
        let topic = KafkaMetadata::new("t", 0, 0);
        let record = |partition: i32| {
            // One shared topic name, as the poll thread gives every record of a topic.
            let mut record = topic.clone().with_partition(partition);
            record.slot = shared
                .lock()
                .partitions
                .slot(&(topic.topic_arc().clone(), partition))
                .unwrap();
            record.into_message()
        };
        let key = order_key(Ordering::Partition).unwrap();
        shared.assign(&list(&[0, 1]), None);
        let (before, other) = (record(0), record(1));
        // Lost with records in flight, and back: partition 0 now sits in partition 1's
        // old slot, while its earlier records may still be held.
        shared.lose(&list(&[0, 1]));
        shared.assign(&list(&[0, 1]), None);
        let after = record(0);
        assert_ne!(after.metadata().slot.index, before.metadata().slot.index);
        assert_eq!(key(&after), key(&before));
        assert_ne!(key(&after), key(&other));
    }
}
