//! The source contract (`longshore::testing::conformance`) against a real broker over
//! TCP (tansu, a Kafka-protocol broker) and librdkafka's mock cluster: a topic of 3
//! partitions read by one consumer group, each check's consumer a new member of it, order
//! kept per partition.

mod common;

use std::time::Duration;

use common::tansu::{create_topic, Tansu};
use common::{cluster, committed, config};
use longshore::testing::conformance::{Broker, Conformance, Declared, Published};
use longshore::{BoxError, Message};
use longshore_kafka::{Bytes, KafkaMetadata, KafkaSource};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 3;
const TOPIC: &str = "conformance";
const GROUP: &str = "conformance";
/// The source's buffer (`max_buffered_per_partition`).
const BUFFERED: usize = 10;
/// What the source may take with no demand: its buffer, and one record each time a full
/// buffer polls to serve the group (once a commit interval, 200 ms here) until it pauses
/// its partitions after a second without demand.
const PREFETCH: usize = BUFFERED + 1_000 / 200 + 1;

struct Topic {
    bootstrap: String,
    /// Records per record batch: tansu 0.6 serves no fetch that starts inside a batch.
    per_batch: usize,
    /// Whether the `kill -9` check runs: on tansu. On the mock cluster a member killed
    /// outright leaves the group unable to assign to the next one for over a minute
    /// (`kill9.rs` runs its kills against a mock cluster in a process of its own).
    kill: bool,
}

impl Broker for Topic {
    type Source = KafkaSource;

    fn declared(&self) -> Declared {
        Declared::new().prefetch(PREFETCH).ordered(true)
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        let (bootstrap, per_batch) = (self.bootstrap.clone(), self.per_batch);
        // A key's messages go to one partition, in order.
        tokio::task::spawn_blocking(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .set("batch.num.messages", per_batch.to_string())
                .create()?;
            for message in messages {
                let (key, payload) = (format!("k{}", message.key), message.id.to_string());
                let partition = (message.key % PARTITIONS as u64) as i32;
                let mut record = BaseRecord::to(TOPIC)
                    .key(&key)
                    .payload(&payload)
                    .partition(partition);
                while let Err((_, back)) = producer.send(record) {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
            producer.flush(Duration::from_secs(60))?;
            Ok(())
        })
        .await?
    }

    async fn source(&self) -> Result<KafkaSource, BoxError> {
        let config = config(&self.bootstrap, GROUP, TOPIC).max_buffered_per_partition(BUFFERED);
        Ok(KafkaSource::new(config)?)
    }

    fn identify(&self, message: &Message<Bytes, KafkaMetadata>) -> Published {
        let record = message.metadata();
        let key = record
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .expect("a key");
        Published {
            id: record
                .payload_str()
                .and_then(|id| id.parse().ok())
                .expect("an id"),
            key: key.trim_start_matches('k').parse().expect("k<n>"),
        }
    }

    async fn taken(&self, source: &KafkaSource) -> Result<usize, BoxError> {
        let partitions = source.status().partitions();
        Ok(partitions.iter().map(|p| p.queued + p.in_flight).sum())
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        if !self.kill {
            return None;
        }
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_count-consumer"));
        command
            // Slow enough that the kill lands mid-stream (see `Broker::consumer`).
            .env("LONGSHORE_CHAOS_SINK_MS", "20")
            .args([self.bootstrap.as_str(), TOPIC, GROUP])
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        let bootstrap = self.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()?;
            let committed = committed(&bootstrap, GROUP, TOPIC, PARTITIONS);
            for (partition, committed) in (0..PARTITIONS).zip(committed) {
                let (_, high) = consumer.fetch_watermarks(TOPIC, partition, Duration::from_secs(10))?;
                if committed != high && high > 0 {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?
    }
}

async fn run(topic: Topic) {
    let checks = 6 + usize::from(topic.kill);
    let report = Conformance::new(topic)
        .messages(150)
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .unwrap();
    println!("CONFORMANCE kafka {report:?}");
    assert_eq!(report.passed.len(), checks, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_source_keeps_the_source_contract_on_tansu() {
    let _serial = common::serial().await;
    let broker = Tansu::start();
    let bootstrap = broker.bootstrap.clone();
    let admin = bootstrap.clone();
    tokio::task::spawn_blocking(move || create_topic(&admin, TOPIC, PARTITIONS))
        .await
        .unwrap();
    run(Topic {
        bootstrap,
        per_batch: 1,
        kill: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_source_keeps_the_source_contract_on_the_mock_cluster() {
    let _serial = common::serial().await;
    let cluster = cluster(TOPIC, PARTITIONS);
    let bootstrap = cluster.bootstrap_servers();
    run(Topic {
        bootstrap,
        per_batch: 10_000,
        kill: false,
    })
    .await;
}
