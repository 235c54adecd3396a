//! Consumer lag, as seen by the consumer: per partition, the high watermark minus the
//! group's committed offset (what kafka_exporter reports as
//! `kafka_consumergroup_lag{consumergroup, topic, partition}`), the age of the oldest
//! record not yet finished, and how long a partition with records outstanding has made
//! no progress; exported on longshore's metrics registry with kafka_exporter's label
//! names.
//!
//! Read with no broker round trip: the high watermarks come from librdkafka's statistics
//! (cached from fetch responses), the committed offsets from the source's own commits.
//! A partition paused by an operator is fetched no more: its high watermark is read from
//! the brokers instead, every `lag_interval` (one request for all of them), so that its
//! lag is seen growing.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use rdkafka::statistics::Statistics;

use crate::assignment::State;

/// The lag of one partition at the last refresh.
#[derive(Debug, Clone, PartialEq)]
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
    /// The age of the oldest record received and not yet finished, from its timestamp:
    /// how far behind the consumer is in time (0 when nothing is outstanding).
    pub lag_seconds: f64,
    /// How long the partition has had records outstanding without its committable
    /// offset moving (0 when it moves, or nothing is outstanding): a partition stuck
    /// behind a record that never finishes.
    pub stalled_seconds: f64,
}

/// A live view of a [`KafkaSource`](crate::KafkaSource)'s lag, refreshed by its poll
/// thread every `lag_interval`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KafkaLag(Arc<Mutex<Vec<PartitionLag>>>);

impl KafkaLag {
    /// A lag table, exported on [`longshore::metrics::registry`] for as long as it lives.
    pub(crate) fn exported() -> Self {
        let lag = KafkaLag::default();
        let mut tables = LagCollector::get()
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tables.retain(|table| table.strong_count() > 0);
        tables.push(Arc::downgrade(&lag.0));
        drop(tables);
        lag
    }

    /// The lag of every assigned partition at the last refresh, sorted by topic and
    /// partition.
    pub fn snapshot(&self) -> Vec<PartitionLag> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes the lag of every partition assigned in `state`: high watermarks from
    /// `statistics` (the last fetch of each partition), committed offsets as the broker
    /// confirmed the source's commits (before the first, as librdkafka last read them,
    /// else the low watermark).
    pub(crate) fn refresh(&self, state: &State, statistics: &Statistics, group: &str) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut lags = Vec::with_capacity(state.partitions.len());
        for ((topic, partition), tracked) in state.partitions.iter() {
            let Some(stats) = statistics
                .topics
                .get(&**topic)
                .and_then(|t| t.partitions.get(partition))
            else {
                continue;
            };
            let high_watermark = state
                .held
                .high_watermark(&(topic.clone(), *partition), stats.hi_offset);
            // -1 (or below): not known yet.
            if high_watermark < 0 {
                continue;
            }
            let committed = tracked
                .committed
                .or((stats.committed_offset >= 0).then_some(stats.committed_offset))
                .unwrap_or(stats.lo_offset.max(0));
            let lag_seconds = tracked
                .offsets
                .oldest_unacknowledged_ms()
                .map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0);
            let stalled_seconds = if tracked.offsets.in_flight() > 0 {
                tracked.progressed_at.elapsed().as_secs_f64()
            } else {
                0.0
            };
            lags.push(PartitionLag {
                consumergroup: group.to_owned(),
                topic: topic.to_string(),
                partition: *partition,
                high_watermark,
                committed,
                lag: (high_watermark - committed).max(0),
                lag_seconds,
                stalled_seconds,
            });
        }
        lags.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = lags;
    }
}

type Table = Mutex<Vec<PartitionLag>>;

/// Reads every live lag table of the process at scrape time.
struct LagCollector {
    tables: Mutex<Vec<Weak<Table>>>,
    descs: Vec<prometheus::core::Desc>,
}

const GROUP_LABELS: [&str; 3] = ["consumergroup", "topic", "partition"];

impl LagCollector {
    fn get() -> &'static LagCollector {
        static COLLECTOR: OnceLock<&'static LagCollector> = OnceLock::new();
        COLLECTOR.get_or_init(|| {
            let collector: &'static LagCollector = Box::leak(Box::new(LagCollector {
                tables: Mutex::default(),
                descs: {
                    let (ints, times) = Self::families();
                    let mut descs: Vec<_> = ints.iter().flat_map(|f| f.desc()).cloned().collect();
                    descs.extend(times.iter().flat_map(|f| f.desc()).cloned());
                    descs
                },
            }));
            longshore::metrics::registry()
                .register(Box::new(collector))
                .expect("the kafka lag metrics are registered once");
            collector
        })
    }

    /// Fresh families: lag and committed offset per group and partition, high watermark
    /// per partition; the lag in seconds and the stall.
    fn families() -> ([prometheus::IntGaugeVec; 3], [prometheus::GaugeVec; 2]) {
        let family = |name: &str, help: &str, labels: &[&str]| {
            prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), labels).expect("valid metric")
        };
        let seconds = |name: &str, help: &str| {
            prometheus::GaugeVec::new(prometheus::Opts::new(name, help), &GROUP_LABELS).expect("valid metric")
        };
        let ints = [
            family(
                "longshore_kafka_consumergroup_lag",
                "Records written to a partition and not yet committed by the group (high watermark minus committed offset).",
                &GROUP_LABELS,
            ),
            family(
                "longshore_kafka_consumergroup_current_offset",
                "The group's committed offset of a partition.",
                &GROUP_LABELS,
            ),
            family(
                "longshore_kafka_topic_partition_current_offset",
                "A partition's high watermark: the offset of the next record written.",
                &["topic", "partition"],
            ),
        ];
        let times = [
            seconds(
                "longshore_kafka_consumergroup_lag_seconds",
                "Age of the oldest record of a partition received and not yet finished, from its timestamp (0 when none is outstanding).",
            ),
            seconds(
                "longshore_kafka_partition_stalled_seconds",
                "How long a partition has had records outstanding without its committable offset moving (0 while it moves or nothing is outstanding).",
            ),
        ];
        (ints, times)
    }
}

impl Collector for &'static LagCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let ([lag, committed, high], [lag_seconds, stalled]) = LagCollector::families();
        let tables: Vec<Arc<Table>> = {
            let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            tables.iter().filter_map(Weak::upgrade).collect()
        };
        for table in tables {
            for p in table.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let partition = p.partition.to_string();
                let labels = [p.consumergroup.as_str(), p.topic.as_str(), partition.as_str()];
                lag.with_label_values(&labels).set(p.lag);
                committed.with_label_values(&labels).set(p.committed);
                lag_seconds.with_label_values(&labels).set(p.lag_seconds);
                stalled.with_label_values(&labels).set(p.stalled_seconds);
                high.with_label_values(&[p.topic.as_str(), partition.as_str()])
                    .set(p.high_watermark);
            }
        }
        let mut families: Vec<_> = [lag, committed, high]
            .iter()
            .flat_map(|family| family.collect())
            .collect();
        families.extend([lag_seconds, stalled].iter().flat_map(|family| family.collect()));
        families
    }
}
