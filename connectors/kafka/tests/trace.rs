//! OpenTelemetry across a Kafka pipeline, against the mock cluster and an OTLP receiver on
//! loopback: records carrying a producer span's `traceparent` are handled in spans that
//! continue that trace, exported over HTTP/protobuf and over gRPC; each batch's span links
//! exactly its messages' spans; a poison record's retry and dead-lettering are events of
//! its span, and its dead-letter copy carries the message span's context on.

mod common;
#[path = "../../../test-support/otlp.rs"]
mod otlp;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cluster, config, eventually};
use longshore::trace::TracingConfig;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors, RetryPolicy};
use longshore_kafka::{KafkaDeadLetter, KafkaMessage, KafkaMetadata, KafkaSource};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer, TracerProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(60);
const RECORDS: usize = 40;
const POISON: &str = "k13";

/// Fails the poison record every time; records each batch with the span it ran in and
/// its messages' spans, as the handler sees them.
#[derive(Default)]
struct Traced {
    batches: Mutex<Vec<(String, BTreeSet<String>)>>,
}

fn span_id(cx: &opentelemetry::Context) -> String {
    cx.span().span_context().span_id().to_string()
}

impl Handler for Traced {
    type Item = bytes::Bytes;
    type Metadata = KafkaMetadata;

    async fn handle_message(&self, message: &mut KafkaMessage) -> Result<(), BoxError> {
        // The handler runs within its message's span.
        let current = opentelemetry::Context::current();
        assert_eq!(Some(span_id(&current)), message.trace_context().map(span_id));
        if message.metadata().key() == Some(POISON.as_bytes()) {
            return Err("poison".into());
        }
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [Message<bytes::Bytes, KafkaMetadata>], _: &BatchInfo) -> Result<(), BoxError> {
        let messages = batch
            .iter()
            .map(|m| span_id(m.trace_context().expect("a traced message")))
            .collect();
        let current = span_id(&opentelemetry::Context::current());
        self.batches.lock().unwrap().push((current, messages));
        Ok(())
    }
}

/// The producer's span of each record, by key: trace id and span id.
type Produced = HashMap<String, (String, String)>;

/// Produces the records, each inside a span of a producer service that puts its context
/// on the record's headers (and baggage on the poison record).
fn produce(bootstrap: &str) -> Produced {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("producer");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut produced = HashMap::new();
    for i in 0..RECORDS {
        let key = format!("k{i}");
        let span = tracer.start("publish orders");
        let ids = (
            span.span_context().trace_id().to_string(),
            span.span_context().span_id().to_string(),
        );
        let mut cx = opentelemetry::Context::current_with_span(span);
        if key == POISON {
            cx = opentelemetry::baggage::BaggageExt::with_baggage(&cx, [opentelemetry::KeyValue::new("tenant", "acme")]);
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        BaggagePropagator::new().inject_context(&cx, &mut carrier);
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
    let produced = produce(&bootstrap);

    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let settings = format!(
        "enabled = true\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nservice_name = \"orders-consumer\""
    );
    let export = toml::from_str::<TracingConfig>(&settings)
        .unwrap()
        .start()
        .unwrap()
        .expect("enabled");
    let handler = Arc::new(Traced::default());
    let source = KafkaSource::new(config(&bootstrap, "traced", "orders")).unwrap();
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(2).max_demand(8))
        .batcher(Batcher::new("sink").batch_size(5).batch_timeout(Duration::from_millis(50)))
        .retry(RetryPolicy::new(2).initial_backoff(Duration::from_millis(5)))
        .dead_letter(KafkaDeadLetter::new(&bootstrap, "orders.dlq").unwrap())
        .tracing(export.tracing())
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().successful + stats.get().failed == RECORDS as u64).await;
    pipeline.shutdown().await.unwrap();
    // Sends what the batch exporter still holds: every span is in the receiver after it.
    tokio::task::spawn_blocking(move || export.shutdown()).await.unwrap().unwrap();

    let spans = receiver.spans();
    let messages: Vec<&otlp::Span> = spans.iter().filter(|s| s.name == "process orders").collect();
    assert_eq!(messages.len(), RECORDS, "one span per record, retries included");
    let mut by_id = HashMap::new();
    for span in &messages {
        let attribute = |name: &str| span.attributes.get(name).map(String::as_str);
        let key = attribute("messaging.kafka.message.key").expect("the key is recorded");
        let (trace, parent) = &produced[key];
        assert_eq!(&span.trace_id, trace, "{key}: the producer's trace");
        assert_eq!(&span.parent_span_id, parent, "{key}: the producer's span is the parent");
        assert_eq!(span.kind, 5, "a consumer span");
        assert_eq!(span.service, "orders-consumer");
        assert_eq!(attribute("messaging.system"), Some("kafka"));
        assert_eq!(attribute("messaging.destination.name"), Some("orders"));
        assert_eq!(attribute("messaging.operation.type"), Some("process"));
        assert_eq!(attribute("longshore.attempt"), Some("1"));
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(attribute("messaging.destination.partition.id"), Some((i % 2).to_string().as_str()));
        assert_eq!(attribute("messaging.kafka.offset"), Some((i / 2).to_string().as_str()));
        let events: Vec<&str> = span.events.iter().map(|(name, _)| name.as_str()).collect();
        if key == POISON {
            assert_eq!(attribute("longshore.outcome"), Some("dead_lettered"));
            assert_eq!(events, ["retry", "dead_lettered"]);
            assert_eq!(span.events[0].1["longshore.attempt"], "1");
            assert_eq!(span.events[0].1["exception.message"], "poison");
            assert_eq!(span.status, 2, "an error status");
            assert_eq!(attribute("error.type"), Some("error"));
        } else {
            assert_eq!(attribute("longshore.outcome"), Some("success"), "{key}");
            assert!(events.is_empty(), "{key}: {events:?}");
            assert_ne!(span.status, 2);
        }
        by_id.insert(span.span_id.clone(), *span);
    }

    // Each batch's span links exactly the spans of the messages it held.
    let batches = handler.batches.lock().unwrap().clone();
    let batch_spans: HashMap<&str, &otlp::Span> = spans
        .iter()
        .filter(|s| s.name == "process batch sink")
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    assert_eq!(batch_spans.len(), batches.len());
    assert_eq!(batches.iter().map(|(_, m)| m.len()).sum::<usize>(), RECORDS - 1);
    for (batch, members) in &batches {
        let span = batch_spans[batch.as_str()];
        assert_eq!(span.attributes["messaging.batch.message_count"], members.len().to_string());
        let linked: BTreeSet<String> = span.links.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(&linked, members, "batch {batch} links its messages");
        for (trace, id) in &span.links {
            assert_eq!(&by_id[id].trace_id, trace);
        }
    }

    // The dead-letter copy continues the trace from the message's span, baggage kept.
    let poison = messages
        .iter()
        .find(|s| s.attributes["messaging.kafka.message.key"] == POISON)
        .unwrap();
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
                .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
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
