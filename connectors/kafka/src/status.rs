//! A live view of what the source holds: its assignment, and per partition whether it is
//! paused and how many records wait or are out in the pipeline. Read from the source's
//! own bookkeeping, no broker round trip: for an operator's page, an alert, or a test
//! that must wait for the source to reach a state rather than sleep.

use std::sync::Arc;

use crate::assignment::Shared;

/// One assigned partition, as the source holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Paused for having its share of the in-flight budget handed out (or the whole
    /// assignment is paused, see [`KafkaStatus::stalled`]).
    pub paused: bool,
    /// Paused by an operator, itself or its topic (see [`KafkaPause`](crate::KafkaPause)),
    /// and in effect: nothing more of it is fetched.
    pub held: bool,
    /// Records fetched and waiting in the source's queue.
    pub queued: usize,
    /// Records handed to the pipeline and not yet acknowledged.
    pub in_flight: usize,
}

/// A live view of a [`KafkaSource`](crate::KafkaSource)'s assignment. Cheap to clone, and
/// usable after the source has moved into its pipeline.
///
/// ```no_run
/// use longshore_kafka::{KafkaConfig, KafkaSource};
///
/// # fn main() -> Result<(), longshore_kafka::KafkaSourceError> {
/// let source = KafkaSource::new(KafkaConfig::new("127.0.0.1:9092", "g", ["events"]))?;
/// let status = source.status();
/// for partition in status.partitions() {
///     println!("{}/{}: {} queued, {} in flight", partition.topic, partition.partition, partition.queued, partition.in_flight);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct KafkaStatus(pub(crate) Arc<Shared>);

impl KafkaStatus {
    /// Every assigned partition, sorted by topic and partition.
    pub fn partitions(&self) -> Vec<PartitionStatus> {
        let state = self.0.lock();
        let mut partitions: Vec<PartitionStatus> = state
            .partitions
            .iter()
            .map(|(key, p)| PartitionStatus {
                topic: key.0.to_string(),
                partition: key.1,
                paused: p.paused || state.paused_all,
                held: state.held.applied.contains(key),
                queued: p.queued(),
                in_flight: p.handed_out(),
            })
            .collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        partitions
    }

    /// Whether the whole assignment is paused because the pipeline stopped taking
    /// records (its queue stayed full for a second): fetching resumes when it takes
    /// records again.
    pub fn stalled(&self) -> bool {
        self.0.lock().paused_all
    }
}
