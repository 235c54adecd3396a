//! Consumer lag, as seen by the consumer: per partition, the high watermark minus the
//! group's committed offset (what kafka_exporter reports as
//! `kafka_consumergroup_lag{consumergroup, topic, partition}`), exported on longshore's
//! metrics registry with kafka_exporter's label names.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus::core::Collector;
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
                descs: Self::families().iter().flat_map(|f| f.desc()).cloned().collect(),
            }));
            longshore::metrics::registry()
                .register(Box::new(collector))
                .expect("the kafka lag metrics are registered once");
            collector
        })
    }

    /// Fresh families: lag and committed offset per group and partition, high watermark
    /// per partition.
    fn families() -> [prometheus::IntGaugeVec; 3] {
        let family = |name: &str, help: &str, labels: &[&str]| {
            prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), labels).expect("valid metric")
        };
        [
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
        ]
    }
}

impl Collector for &'static LagCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let [lag, committed, high] = LagCollector::families();
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
                high.with_label_values(&[p.topic.as_str(), partition.as_str()])
                    .set(p.high_watermark);
            }
        }
        [lag, committed, high]
            .iter()
            .flat_map(|family| family.collect())
            .collect()
    }
}
