//! What crosses the wire, against real brokers over TCP on loopback: TLS with the
//! broker's certificate verified against a certificate authority, SASL/SCRAM login over
//! TLS (a tansu broker process behind a TLS proxy), and record batches in every
//! compression codec a producer may choose (librdkafka's mock cluster).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::tansu::{create_topic_with, create_user, free_port, Tansu};
use common::tls::{proxy, Certificates};
use common::{cluster, committed_by, config, eventually, metric, per_partition, produce_by, Recorder};
use longshore::{Pipeline, Processors};
use longshore_kafka::{KafkaConfig, KafkaDeadLetter, KafkaSource};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);
const RECORDS: usize = 300;

/// A folder of this test's own, empty.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longshore-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client of `bootstrap` with `properties`, for the test's own producer and reads.
fn client(bootstrap: &str, properties: &[(&str, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in properties {
        config.set(*key, value);
    }
    config
}

/// The source's settings for group `group` of `topic`, with `properties`.
fn source_config(bootstrap: &str, group: &str, topic: &str, properties: &[(&str, String)]) -> KafkaConfig {
    properties
        .iter()
        .fold(config(bootstrap, group, topic), |config, (key, value)| {
            config.property(*key, value)
        })
}

/// TLS, verifying the broker's certificate against the authority `ca`.
fn tls(ca: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "ssl".to_owned()),
        ("ssl.ca.location", ca.to_str().unwrap().to_owned()),
    ]
}

/// SASL/SCRAM-SHA-512 login over TLS.
fn sasl_over_tls(ca: &Path, user: &str, password: &str) -> Vec<(&'static str, String)> {
    let mut properties = tls(ca);
    properties[0].1 = "sasl_ssl".to_owned();
    properties.extend([
        ("sasl.mechanism", "SCRAM-SHA-512".to_owned()),
        ("sasl.username", user.to_owned()),
        ("sasl.password", password.to_owned()),
    ]);
    properties
}

/// Produces [`RECORDS`] records over 2 partitions of a new topic, one per batch (tansu
/// 0.6 does not serve fetches starting inside a batch).
fn produce_to_tansu(client: &ClientConfig, topic: &str) {
    // On a thread of its own: the admin client runs a runtime of its own.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            create_topic_with(client, topic, 2);
            produce_by(
                client.clone().set("batch.num.messages", "1"),
                topic,
                2,
                RECORDS,
                10,
            );
        });
    });
}

/// Consumes `topic` at `bootstrap` as `group`, with `properties`, until every record is
/// handled; checks each was handled once and the group committed each partition to its end.
async fn consume_all(bootstrap: &str, group: &str, topic: &str, properties: &[(&str, String)]) {
    let recorder = Arc::new(Recorder::default());
    let source = KafkaSource::new(source_config(bootstrap, group, topic, properties)).unwrap();
    let pipeline = Pipeline::builder(source, recorder.clone())
        .processors(Processors::new(2))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().successful == RECORDS as u64).await;
    pipeline.shutdown().await.unwrap();
    let payloads: BTreeSet<usize> = recorder.payloads().into_iter().collect();
    assert_eq!(payloads, (0..RECORDS).collect(), "every record handled once");
    let committed = committed_by(&client(bootstrap, properties), group, topic, 2);
    assert_eq!(committed, per_partition(RECORDS, 2));
}

/// A tansu broker process behind a TLS proxy, its data and certificates in a folder of
/// its own (removed when dropped).
struct Secured {
    dir: PathBuf,
    certificates: Certificates,
    bootstrap: String,
    _broker: Tansu,
}

impl Secured {
    /// With `user` (name, password), clients must log in, and that user exists.
    fn start(name: &str, user: Option<(&str, &str)>) -> Secured {
        let dir = folder(name);
        let certificates = Certificates::generate(&dir);
        if let Some((name, password)) = user {
            create_user(&dir, name, password);
        }
        let port = free_port();
        let tls_port = proxy(&certificates, port);
        Secured {
            _broker: Tansu::start_behind(port, tls_port, &dir, user.is_some()),
            dir,
            certificates,
            bootstrap: format!("127.0.0.1:{tls_port}"),
        }
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_brokers_certificate_and_carries_every_record() {
    let _serial = common::serial().await;
    let broker = Secured::start("tls", None);
    let properties = tls(&broker.certificates.ca);
    produce_to_tansu(&client(&broker.bootstrap, &properties), "orders");

    consume_all(&broker.bootstrap, "g-tls", "orders", &properties).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls_logs_in_and_a_wrong_password_reads_nothing_and_is_counted() {
    let _serial = common::serial().await;
    let broker = Secured::start("sasl", Some(("alice", "wonderland")));
    let properties = sasl_over_tls(&broker.certificates.ca, "alice", "wonderland");
    produce_to_tansu(&client(&broker.bootstrap, &properties), "payments");

    // Started first, it has at least as long as the good consumer to read anything.
    let refused = sasl_over_tls(&broker.certificates.ca, "alice", "looking-glass");
    let source = KafkaSource::new(source_config(
        &broker.bootstrap,
        "g-intruder",
        "payments",
        &refused,
    ))
    .unwrap();
    let intruder = Pipeline::builder(source, Arc::new(Recorder::default()))
        .start()
        .unwrap();
    consume_all(&broker.bootstrap, "g-sasl", "payments", &properties).await;
    let received = intruder.stats().get().received;
    assert_eq!(received, 0, "a wrong password reads nothing");
    // ... and shows on the metrics, for the dashboard and the alert.
    let refusals = || {
        let labels = [("consumergroup", "g-intruder"), ("error", "Authentication")];
        metric("longshore_kafka_client_errors_total", &labels).unwrap_or(0.0)
    };
    eventually(WAIT, || refusals() > 0.0).await;
    let labels = [("consumergroup", "g-sasl"), ("error", "Authentication")];
    assert_eq!(metric("longshore_kafka_client_errors_total", &labels), None);
    intruder.shutdown().await.unwrap();

    // The dead-letter producer logs in with the source's own settings: the poison
    // record reaches the dead-letter topic on the secured cluster.
    let dlq_client = client(&broker.bootstrap, &properties);
    std::thread::scope(|scope| {
        scope.spawn(|| create_topic_with(&dlq_client, "payments.dlq", 1));
    });
    let config = source_config(&broker.bootstrap, "g-dlq", "payments", &properties);
    let dead_letter = KafkaDeadLetter::for_source(&config, "payments.dlq").unwrap();
    let recorder = Arc::new(Recorder {
        poison: vec![7],
        ..Recorder::default()
    });
    let pipeline = Pipeline::builder(KafkaSource::new(config).unwrap(), recorder)
        .dead_letter(dead_letter)
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || {
        stats.get().successful + stats.get().failed == RECORDS as u64
    })
    .await;
    assert_eq!(stats.get().dead_lettered, 1);
    pipeline.shutdown().await.unwrap();
    let dead: BaseConsumer = dlq_client
        .clone()
        .set("group.id", "g-dlq-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("payments.dlq", 0, Offset::Beginning)
        .unwrap();
    dead.assign(&tpl).unwrap();
    let record = loop {
        match dead.poll(WAIT) {
            Some(Ok(record)) => break record.detach(),
            Some(Err(error)) => eprintln!("reading the dead-letter topic: {error}"),
            None => panic!("no dead letter within {WAIT:?}"),
        }
    };
    assert_eq!(record.payload(), Some(&b"7"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_authority_fails_at_start_naming_the_property() {
    let missing = Path::new("/nonexistent/longshore/ca.pem");
    let error = KafkaSource::new(source_config("127.0.0.1:9", "g", "orders", &tls(missing))).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("ssl.ca.location"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_every_compression_codec_are_read() {
    let _serial = common::serial().await;
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("compressed.{codec}");
        let cluster = cluster(&topic, 2);
        let bootstrap = cluster.bootstrap_servers();
        let properties = [("compression.type", codec.to_owned())];
        produce_by(&client(&bootstrap, &properties), &topic, 2, RECORDS, 10);
        consume_all(&bootstrap, &format!("g-{codec}"), &topic, &[]).await;
    }
}
