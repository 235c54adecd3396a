//! OpenTelemetry across a Kafka pipeline, against the mock cluster and an OTLP receiver on
//! loopback: records carrying a producer span's `traceparent` are handled in spans that
//! continue that trace, exported over HTTP/protobuf and over gRPC; each batch's span links
//! exactly its messages' spans; a poison record's retry and dead-lettering are events of
//! its span, and its dead-letter copy carries the message span's context on.

mod common;
#[path = "../../../test-support/otlp.rs"]
mod otlp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, config};
use longshore::{Pipeline, Processors};
use longshore_kafka::{KafkaDeadLetter, KafkaMetadata, KafkaSource};
use opentelemetry::trace::TracerProvider;
use otlp::{Expect, Produced, Traced};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(60);
/// Enough for batches over the SDK's default of 128 links a span.
const RECORDS: usize = 400;
const POISON: &str = "k13";

/// Produces the records `k{i}`, each inside a span of a producer service that puts its
/// context on the record's headers (and baggage on the poison record).
fn produce(bootstrap: &str, provider: &opentelemetry_sdk::trace::SdkTracerProvider) -> Produced {
    let tracer = provider.tracer("producer");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut produced = HashMap::new();
    for i in 0..RECORDS {
        let key = format!("k{i}");
        let baggage = (key == POISON).then_some(("tenant", "acme"));
        let (carrier, ids) = otlp::publish(&tracer, baggage);
        let mut headers = OwnedHeaders::new();
        for (name, value) in &carrier {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let payload = i.to_string();
        producer
            .send(
                BaseRecord::to("orders")
                    .key(&key)
                    .payload(&payload)
                    .partition((i % 2) as i32)
                    .headers(headers),
            )
            .unwrap();
        produced.insert(key, ids);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    produced
}

async fn traces_continue_through_the_pipeline(protocol: &str) {
    let _serial = common::serial().await;
    let receiver = otlp::Receiver::start().await;
    let cluster = cluster("orders", 2);
    cluster.create_topic("orders.dlq", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    // The producer exports its spans too, for the picture of a whole trace.
    let producer = otlp::settings(&receiver, "http/protobuf", "producer")
        .start()
        .unwrap()
        .expect("enabled");
    let produced = produce(&bootstrap, producer.provider());
    producer.shutdown().await.unwrap();

    let export = otlp::settings(&receiver, protocol, "orders-consumer")
        .start()
        .unwrap()
        .expect("enabled");
    let handler = Arc::new(Traced::new(|record: &KafkaMetadata| {
        record.key() == Some(POISON.as_bytes())
    }));
    let source = KafkaSource::new(config(&bootstrap, "traced", "orders")).unwrap();
    let builder = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(2).max_demand(100))
        .dead_letter(KafkaDeadLetter::new(&bootstrap, "orders.dlq").unwrap());
    let received = otlp::run_traced(builder, export, 200, RECORDS as u64, &receiver).await;
    let spans = otlp::assert_traced(
        &received,
        &handler,
        Expect {
            produced: &produced,
            key: "messaging.kafka.message.key",
            poison: POISON,
            system: "kafka",
            destination: "orders",
            batcher: "sink",
            redelivered_by_broker: false,
            service: "orders-consumer",
        },
    );
    let largest = handler.batches.lock().unwrap().iter().map(|(_, m)| m.len()).max();
    assert!(
        largest > Some(128),
        "a batch over the default link limit: {largest:?}"
    );
    for (key, span) in &spans {
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(
            span.attributes["messaging.destination.partition.id"],
            (i % 2).to_string()
        );
        assert_eq!(span.attributes["messaging.kafka.offset"], (i / 2).to_string());
    }

    // The producer's span is exported too: a trace shows both services.
    let publish = received
        .iter()
        .find(|s| s.span_id == produced["k1"].1)
        .expect("the producer's span");
    assert_eq!(
        (publish.service.as_str(), publish.name.as_str()),
        ("producer", "publish")
    );
    for key in ["k1", POISON] {
        let picture = otlp::waterfall(&received, &spans[key].trace_id);
        let transport = protocol.split('/').next().unwrap_or(protocol);
        let path = format!("{}/trace-{transport}-{key}.svg", env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(path, picture).unwrap();
    }

    // The dead-letter copy continues the trace from the message's span, baggage kept.
    let poison = &spans[POISON];
    let headers = dead_letter_headers(&bootstrap);
    assert_eq!(
        headers["traceparent"],
        format!("00-{}-{}-01", poison.trace_id, poison.span_id)
    );
    assert_eq!(headers["baggage"], "tenant=acme");
    assert_eq!(headers["longshore.reason"], "failed (error): poison");
}

/// The headers of the one record on the dead-letter topic.
fn dead_letter_headers(bootstrap: &str) -> HashMap<String, String> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&["orders.dlq"]).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Some(Ok(record)) = reader.poll(Duration::from_millis(100)) {
            let headers = record.headers().expect("headers");
            return headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect();
        }
    }
    panic!("nothing on the dead-letter topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_through_the_pipeline_exported_over_http() {
    traces_continue_through_the_pipeline("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_through_the_pipeline_exported_over_grpc() {
    traces_continue_through_the_pipeline("grpc").await;
}
