//! Consumer lag, as seen by the consumer: per partition, the high watermark minus the
//! group's committed offset (what kafka_exporter reports as
//! `kafka_consumergroup_lag{consumergroup, topic, partition}`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::Offset;

/// The lag of one partition at the last refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionLag {
    /// The consumer group.
    pub consumergroup: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the next record to be written.
    pub high_watermark: i64,
    /// The group's committed offset (the next record it will read); the low watermark
    /// when the group never committed.
    pub committed: i64,
    /// `high_watermark - committed`: records written and not yet consumed.
    pub lag: i64,
}

/// A live view of a [`KafkaSource`](crate::KafkaSource)'s lag, refreshed by its poll
/// thread every `lag_interval`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KafkaLag(Arc<Mutex<Vec<PartitionLag>>>);

impl KafkaLag {
    /// The lag of every assigned partition at the last refresh, sorted by topic and
    /// partition.
    pub fn snapshot(&self) -> Vec<PartitionLag> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads watermarks and committed offsets of the consumer's assignment (blocking,
    /// each call bounded by `timeout`) and publishes them.
    pub(crate) fn refresh<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        group: &str,
        timeout: Duration,
    ) {
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let committed = match consumer.committed_offsets(assignment.clone(), timeout) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::debug!(%error, "cannot read committed offsets for lag");
                return;
            }
        };
        let mut lags = Vec::with_capacity(assignment.count());
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, timeout) else {
                continue;
            };
            let committed = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            lags.push(PartitionLag {
                consumergroup: group.to_owned(),
                topic: topic.to_owned(),
                partition,
                high_watermark: high,
                committed,
                lag: (high - committed).max(0),
            });
        }
        lags.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = lags;
    }
}
