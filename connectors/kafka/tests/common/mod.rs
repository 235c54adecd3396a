//! Test support: a real Kafka-protocol broker (librdkafka's mock cluster, over TCP on
//! loopback), producing known records, reading what was committed.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part

#[path = "../../../../test-support/registry.rs"]
mod registry;
pub mod tansu;
pub mod tls;
#[path = "../../../../test-support/wait.rs"]
mod wait;

#[allow(unused_imports)] // each test binary uses its own part
pub use registry::metric;
#[allow(unused_imports)]
pub use wait::{eventually, eventually_eq, eventually_explained, Watchdog};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::{BoxError, Handler};
use longshore_kafka::{KafkaConfig, KafkaMessage, KafkaMetadata};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A mock cluster with one broker, and a topic of `partitions` partitions.
pub fn cluster(
    topic: &str,
    partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("the mock cluster starts");
    cluster.create_topic(topic, partitions, 1).expect("topic created");
    cluster
}

/// Produces `count` records to `topic`: key `k{i % keys}`, payload `i`, round-robin over
/// partitions; waits until all are written.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, count: usize, keys: usize) {
    produce_with(bootstrap, topic, partitions, count, keys, 10_000);
}

/// As [`produce`], with at most `per_batch` records in one record batch.
pub fn produce_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: usize,
    keys: usize,
    per_batch: usize,
) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", per_batch.to_string());
    produce_by(&config, topic, partitions, count, keys);
}

/// As [`produce`], with a producer made from `config` (TLS, SASL, compression, ...).
pub fn produce_by(config: &ClientConfig, topic: &str, partitions: i32, count: usize, keys: usize) {
    let producer: BaseProducer = config.clone().set("linger.ms", "5").create().expect("producer");
    for i in 0..count {
        let key = format!("k{}", i % keys);
        let payload = i.to_string();
        let partition = (i % partitions as usize) as i32;
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(600))
        .expect("all records written");
}

/// The consumer settings for tests: fast group protocol, as TOOLS.md advises for the
/// mock cluster.
///
/// `LONGSHORE_KAFKA_DEBUG` passes librdkafka's `debug` contexts (`cgrp`, `broker`) to
/// diagnose a group that does not settle.
pub fn config(bootstrap: &str, group: &str, topic: &str) -> KafkaConfig {
    let config = KafkaConfig::new(bootstrap, group, [topic])
        .property("session.timeout.ms", "3000")
        .property("heartbeat.interval.ms", "500")
        .commit_interval(Duration::from_millis(200));
    match std::env::var("LONGSHORE_KAFKA_DEBUG") {
        Ok(contexts) => config.property("debug", contexts),
        Err(_) => config,
    }
}

/// [`config`] with a partition assignment strategy: `range` (eager) or
/// `cooperative-sticky` (incremental).
pub fn config_with(bootstrap: &str, group: &str, topic: &str, strategy: &str) -> KafkaConfig {
    config(bootstrap, group, topic).property("partition.assignment.strategy", strategy)
}

/// Records produced in the background, as a live topic gets them, until [`Stream::stop`]:
/// payload `i`, key `k{i % 30}`, round-robin over partitions. A consumer joining a group
/// mid-run then always finds records to read, however fast the others are.
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Stream {
    /// Starts producing to `topic` about `per_second` records a second.
    pub fn start(bootstrap: &str, topic: &str, partitions: i32, per_second: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let (topic, flag) = (topic.to_owned(), stop.clone());
        let pace = Duration::from_secs(1) / per_second;
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let (key, payload) = (format!("k{}", i % 30), i.to_string());
                let record = BaseRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .partition((i % partitions as usize) as i32);
                if producer.send(record).is_ok() {
                    i += 1;
                }
                producer.poll(Duration::ZERO);
                // Pacing, not synchronisation: the stream's rate.
                std::thread::sleep(pace);
            }
            producer
                .flush(Duration::from_secs(60))
                .expect("all records written");
            i
        });
        Stream { stop, thread }
    }

    /// Stops producing; returns how many records were written (payloads `0..n`).
    pub fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the producer thread")
    }
}

/// How many of `count` records written round-robin over `partitions` land in each.
pub fn per_partition(count: usize, partitions: i32) -> Vec<i64> {
    let partitions = partitions as usize;
    (0..partitions)
        .map(|p| (count / partitions + usize::from(p < count % partitions)) as i64)
        .collect()
}

/// The offsets committed by `group` for each partition of `topic`.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    committed_by(&config, group, topic, partitions)
}

/// As [`committed`], read by a client made from `config` (TLS, SASL, ...).
pub fn committed_by(config: &ClientConfig, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = config.clone().set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// A handled record: partition, offset, key, payload as a number, attempt.
pub type Handled = (i32, i64, String, usize, u32);

/// Records each handled record.
#[derive(Default)]
pub struct Recorder {
    pub handled: Mutex<Vec<Handled>>,
    /// Payloads that fail every attempt.
    pub poison: Vec<usize>,
    /// Payloads that fail their first attempt.
    pub flaky: Vec<usize>,
    pub delay: Option<Duration>,
}

impl Recorder {
    pub fn payloads(&self) -> Vec<usize> {
        self.handled.lock().unwrap().iter().map(|h| h.3).collect()
    }

    /// Per partition, the offsets in the order handled (successful attempts only).
    pub fn offsets_by_partition(&self) -> HashMap<i32, Vec<i64>> {
        let mut by = HashMap::<i32, Vec<i64>>::new();
        for &(p, o, _, _, _) in self.handled.lock().unwrap().iter() {
            by.entry(p).or_default().push(o);
        }
        by
    }
}

impl Handler for Recorder {
    type Item = bytes::Bytes;
    type Metadata = KafkaMetadata;

    async fn handle_message(&self, message: &mut KafkaMessage) -> Result<(), BoxError> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let record = message.metadata();
        let payload: usize = record.payload_str().ok_or("not text")?.parse()?;
        if self.poison.contains(&payload) || (self.flaky.contains(&payload) && message.attempt() == 1) {
            return Err(format!("cannot handle {payload}").into());
        }
        let key = String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned();
        self.handled.lock().unwrap().push((
            record.partition(),
            record.offset(),
            key,
            payload,
            message.attempt(),
        ));
        Ok(())
    }
}

/// The longest a broker test may run once it holds [`serial`]'s lock.
pub const TEST_LIMIT: Duration = Duration::from_secs(180);

/// Held by a running broker test: the lock that makes broker tests run one at a time (on
/// two cores, several brokers and consumer groups at once turn timing into flakiness),
/// and a watchdog.
pub struct Serial {
    _lock: tokio::sync::MutexGuard<'static, ()>,
    _watchdog: Watchdog,
}

pub async fn serial() -> Serial {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    // The source's log, shown with a failing test's output: what the group did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "longshore=info,longshore_kafka=info".into()),
        )
        .with_test_writer()
        .try_init();
    let lock = SERIAL.lock().await;
    Serial {
        _lock: lock,
        _watchdog: Watchdog::arm(TEST_LIMIT),
    }
}

/// librdkafka's mock cluster in a process of its own (`mock-broker`), stopped when
/// dropped (or when this process exits: it serves until its stdin closes).
pub struct MockBroker {
    child: std::process::Child,
    pub bootstrap: String,
}

impl MockBroker {
    pub fn start(topic: &str, partitions: i32) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mock-broker"))
            .args([topic, &partitions.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the mock broker process starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let bootstrap = line
            .trim()
            .strip_prefix("bootstrap=")
            .unwrap_or_else(|| panic!("mock broker said {line:?}"))
            .to_owned();
        MockBroker { child, bootstrap }
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps every record it is given, whole.
#[derive(Default)]
pub struct Keep(pub Mutex<Vec<KafkaMetadata>>);

impl Handler for Keep {
    type Item = bytes::Bytes;
    type Metadata = KafkaMetadata;
    async fn handle_message(&self, message: &mut KafkaMessage) -> Result<(), BoxError> {
        // What a handler would read; none of it may panic on any bytes.
        let record = message.metadata();
        let _ = (record.payload_str(), record.key(), record.timestamp_ms());
        self.0.lock().unwrap().push(record.clone());
        Ok(())
    }
}
