//! OpenTelemetry across an SQS pipeline, against LocalStack and an OTLP receiver on
//! loopback: messages carrying a producer span's `traceparent` as a message attribute are
//! handled in spans that continue that trace, exported over HTTP/protobuf and over gRPC;
//! each batch's span links exactly its messages' spans; a poison message's retry and
//! dead-lettering are events of its span, and its dead-letter copy carries the message
//! span's context on.

mod common;
#[path = "../../../test-support/otlp.rs"]
mod otlp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use common::{client, config, create_queue, drain, unique, Watchdog, TEST_LIMIT};
use longshore::{Pipeline, Processors};
use longshore_sqs::{SqsDeadLetter, SqsMetadata, SqsSource};
use opentelemetry::trace::TracerProvider;
use otlp::{Expect, Produced, Traced};

const WAIT: Duration = Duration::from_secs(60);
const MESSAGES: usize = 30;
const POISON: &str = "m13";

/// Sends the messages `m{i}`, each inside a span of a producer service that puts its
/// context on the message's attributes (and baggage on the poison message). Returns the
/// producer's spans by message id, and the poison message's id.
async fn send(client: &aws_sdk_sqs::Client, url: &str) -> (Produced, String) {
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .build()
        .tracer("producer");
    let mut produced = HashMap::new();
    let mut poison = String::new();
    let bodies: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for batch in bodies.chunks(10) {
        let mut spans = Vec::new();
        let entries = batch.iter().enumerate().map(|(id, body)| {
            let baggage = (body == POISON).then_some(("tenant", "acme"));
            let (carrier, ids) = otlp::publish(&tracer, baggage);
            spans.push((body.clone(), ids));
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(id.to_string())
                .message_body(body);
            for (name, value) in carrier {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .unwrap();
                entry = entry.message_attributes(name, value);
            }
            entry.build().unwrap()
        });
        let entries = entries.collect();
        let sent = client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(sent.failed.is_empty(), "{:?}", sent.failed);
        for ok in sent.successful {
            let (body, ids) = spans[ok.id.parse::<usize>().unwrap()].clone();
            if body == POISON {
                poison.clone_from(&ok.message_id);
            }
            produced.insert(ok.message_id, ids);
        }
    }
    (produced, poison)
}

async fn traces_continue_through_the_pipeline(protocol: &str) {
    let _watchdog = Watchdog::arm(TEST_LIMIT);
    let receiver = otlp::Receiver::start().await;
    let client = client().await;
    let name = unique("traced");
    let url = create_queue(&client, &name, &[]).await;
    let dlq_name = unique("traced-dlq");
    let dlq = create_queue(&client, &dlq_name, &[]).await;
    let (produced, poison) = send(&client, &url).await;

    let export = otlp::settings(&receiver, protocol, "orders-worker")
        .start()
        .unwrap()
        .expect("enabled");
    let handler = Arc::new(Traced::new(|message: &SqsMetadata| message.body() == POISON));
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let dead_letter = SqsDeadLetter::connect(&dlq_name, Some(&common::localstack().endpoint))
        .await
        .unwrap();
    let builder = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(2).max_demand(10))
        .dead_letter(dead_letter);
    let received = otlp::run_traced(builder, export, 5, MESSAGES as u64, &receiver).await;
    let spans = otlp::assert_traced(
        &received,
        &handler,
        Expect {
            produced: &produced,
            key: "messaging.message.id",
            poison: &poison,
            system: "aws_sqs",
            destination: &name,
            batcher: "sink",
            redelivered_by_broker: true,
            service: "orders-worker",
        },
    );

    // The dead-letter copy continues the trace from the message's span, baggage kept.
    let poison = &spans[&poison];
    let dead = drain(&client, &dlq, 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let attributes = dead[0].message_attributes().unwrap();
    let value = |key: &str| attributes[key].string_value().unwrap().to_owned();
    assert_eq!(
        value("traceparent"),
        format!("00-{}-{}-01", poison.trace_id, poison.span_id)
    );
    assert_eq!(value("baggage"), "tenant=acme");
    assert_eq!(value("longshore.reason"), "failed (error): poison");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_through_the_pipeline_exported_over_http() {
    traces_continue_through_the_pipeline("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_through_the_pipeline_exported_over_grpc() {
    traces_continue_through_the_pipeline("grpc").await;
}
