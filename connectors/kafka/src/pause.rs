//! Pausing single partitions or whole topics of a running consumer, for an operator:
//! nothing more of them is fetched; what was fetched still goes through the pipeline and
//! is committed; the others go on.

use std::sync::Arc;

use crate::assignment::Shared;

/// Pauses and resumes partitions or topics of a [`KafkaSource`](crate::KafkaSource);
/// made by [`KafkaSource::pause_control`](crate::KafkaSource::pause_control) before the
/// source moves into its pipeline. Cheap to clone, usable from any thread.
///
/// A pause takes effect within one poll of the consumer's thread (20 ms): librdkafka stops
/// fetching the partition; its records already fetched are handled and committed as
/// usual, so its lag grows while the other partitions are consumed. A pause outlives
/// rebalances: a partition paused here that leaves this consumer and comes back comes
/// back paused (another consumer of the group, though, reads it). A resume lets it fetch
/// again, unless the source holds it paused for its own reasons (its share of the
/// in-flight budget handed out, or a stalled pipeline), until those end.
///
/// ```no_run
/// use longshore_kafka::{KafkaConfig, KafkaSource};
///
/// # fn main() -> Result<(), longshore_kafka::KafkaSourceError> {
/// let source = KafkaSource::new(KafkaConfig::new("localhost:9092", "orders-service", ["orders", "refunds"]))?;
/// let pause = source.pause_control();
/// pause.pause_partition("orders", 3); // a poison-heavy partition, while it is looked into
/// pause.pause_topic("refunds");
/// assert!(pause.is_paused("orders", 3) && pause.is_paused("refunds", 0));
/// pause.resume_topic("refunds");
/// assert_eq!(pause.paused(), (vec![("orders".to_owned(), 3)], vec![]));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KafkaPause(pub(crate) Arc<Shared>);

impl std::fmt::Debug for KafkaPause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPause")
            .field("paused", &self.paused())
            .finish()
    }
}

impl KafkaPause {
    /// Stops fetching partition `partition` of `topic`.
    pub fn pause_partition(&self, topic: &str, partition: i32) {
        self.set_recorded(topic, Some(partition), true);
    }

    /// Fetches partition `partition` of `topic` again (unless its topic is paused).
    pub fn resume_partition(&self, topic: &str, partition: i32) {
        self.set_recorded(topic, Some(partition), false);
    }

    /// Stops fetching every partition of `topic`.
    pub fn pause_topic(&self, topic: &str) {
        self.set_recorded(topic, None, true);
    }

    /// Fetches the partitions of `topic` again (those paused one by one stay paused).
    pub fn resume_topic(&self, topic: &str) {
        self.set_recorded(topic, None, false);
    }

    /// Whether partition `partition` of `topic` is paused here, by itself or by its topic.
    pub fn is_paused(&self, topic: &str, partition: i32) -> bool {
        self.0.lock().held.contains(&(Arc::from(topic), partition))
    }

    /// The partitions paused one by one and the topics paused, each sorted.
    pub fn paused(&self) -> (Vec<(String, i32)>, Vec<String>) {
        let state = self.0.lock();
        let mut partitions: Vec<(String, i32)> = state
            .held
            .partitions
            .iter()
            .map(|(topic, partition)| (topic.to_string(), *partition))
            .collect();
        let mut topics: Vec<String> = state.held.topics.iter().map(|topic| topic.to_string()).collect();
        partitions.sort_unstable();
        topics.sort_unstable();
        (partitions, topics)
    }

    /// As [`KafkaPause::set`], for a pause made through this API: recorded in the
    /// pipeline's changes (the control surface records its own).
    fn set_recorded(&self, topic: &str, partition: Option<i32>, pause: bool) {
        if self.set(topic, partition, pause) {
            if let Some(changes) = self.0.changes.get() {
                let part = match partition {
                    Some(partition) => format!("{topic}/{partition}"),
                    None => topic.to_owned(),
                };
                changes.paused(&part, pause);
            }
        }
    }

    /// Pauses or resumes a partition (or with `None`, a topic); whether that changed
    /// anything.
    pub(crate) fn set(&self, topic: &str, partition: Option<i32>, pause: bool) -> bool {
        let what = match (partition, pause) {
            (Some(_), true) => "partition paused",
            (Some(_), false) => "partition resumed",
            (None, true) => "topic paused",
            (None, false) => "topic resumed",
        };
        let mut state = self.0.lock();
        let held = &mut state.held;
        let topic: Arc<str> = Arc::from(topic);
        let changed = match (partition, pause) {
            (Some(partition), true) => held.partitions.insert((topic.clone(), partition)),
            (Some(partition), false) => held.partitions.remove(&(topic.clone(), partition)),
            (None, true) => held.topics.insert(topic.clone()),
            (None, false) => held.topics.remove(&topic),
        };
        if changed {
            held.changed = true;
            tracing::info!(%topic, ?partition, "kafka {what}");
        }
        changed
    }
}
