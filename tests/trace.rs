//! Spans of the paths no broker test reaches, against the SDK's in-memory exporter: the
//! attempt a span ends with, a message that never reached a handler (its data did not
//! decode), one released unfinished at shutdown, an acknowledger that panicked, and a
//! batch larger than the SDK's default link limit.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use longshore::decode::Json;
use longshore::source::memory::MemorySource;
use longshore::source::Acknowledger;
use longshore::trace::Tracing;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors, RetryPolicy, Source};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

fn traced() -> (InMemorySpanExporter, SdkTracerProvider, Tracing) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_max_links_per_span(u32::MAX)
        .build();
    let tracing = Tracing::new(provider.tracer("test"));
    (exporter, provider, tracing)
}

fn attribute(span: &SpanData, name: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == name)
        .map(|kv| kv.value.to_string())
}

/// Fails odd numbers on their first attempt, and 13 always.
struct Flaky;

impl Handler for Flaky {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
        let n = *message.data();
        if n == 13 || (n % 2 == 1 && message.attempt() == 1) {
            return Err(format!("no {n}").into());
        }
        Ok(())
    }

    async fn handle_batch(&self, _: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_ends_with_its_last_attempt_and_a_batch_links_every_message() {
    let (exporter, _provider, tracing) = traced();
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..300u64), Flaky)
        .processors(Processors::new(1).max_demand(300))
        .batcher(
            Batcher::new("all")
                .batch_size(300)
                .batch_timeout(Duration::from_millis(100)),
        )
        .retry(RetryPolicy::new(3).initial_backoff(Duration::from_millis(1)))
        .tracing(tracing)
        .start()
        .unwrap();
    pipeline.wait().await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let messages: Vec<&SpanData> = spans.iter().filter(|s| s.name == "process memory").collect();
    assert_eq!(messages.len(), 300, "one span per message, retries included");
    let attempts = |wanted: &str| {
        messages
            .iter()
            .filter(|s| attribute(s, "longshore.attempt").as_deref() == Some(wanted))
            .count()
    };
    // Even numbers pass at once; odd ones on their second attempt; 13 fails all three.
    assert_eq!((attempts("1"), attempts("2"), attempts("3")), (150, 149, 1));
    let failed: Vec<&&SpanData> = messages
        .iter()
        .filter(|s| attribute(s, "longshore.outcome").as_deref() == Some("failed"))
        .collect();
    assert_eq!(failed.len(), 1);
    let events: Vec<&str> = failed[0].events.iter().map(|e| e.name.as_ref()).collect();
    assert_eq!(events, ["retry", "retry"]);
    // More links than the SDK keeps by default (128): every one kept.
    let linked: usize = spans
        .iter()
        .filter(|s| s.name == "process batch all")
        .map(|s| s.links.len())
        .sum();
    assert_eq!(linked, 299);
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "process batch all")
            .any(|s| s.links.len() > 128),
        "a batch of more than 128 messages"
    );
}

/// Decodes JSON numbers.
struct Numbers;

impl Handler for Numbers {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_never_reached_a_handler_has_a_span_too() {
    let (exporter, _provider, tracing) = traced();
    let source = MemorySource::from_iter(["1", "two", "3"].map(String::from));
    let pipeline = Pipeline::builder(source, Numbers)
        .decode(Json::new())
        .tracing(tracing)
        .start()
        .unwrap();
    pipeline.wait().await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let mut outcomes: Vec<String> = spans
        .iter()
        .filter_map(|s| attribute(s, "longshore.outcome"))
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["failed", "success", "success"]);
    let undecoded = spans
        .iter()
        .find(|s| attribute(s, "longshore.outcome").as_deref() == Some("failed"))
        .unwrap();
    assert_eq!(attribute(undecoded, "error.type").as_deref(), Some("decode"));
}

/// Never finishes a message.
struct Stuck;

impl Handler for Stuck {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_released_at_the_deadline_ends_its_span_as_released() {
    let (exporter, _provider, tracing) = traced();
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..4u64), Stuck)
        .processors(Processors::new(1).max_demand(4))
        .shutdown_deadline(Duration::from_millis(100))
        .tracing(tracing)
        .start()
        .unwrap();
    let stats = pipeline.stats();
    while stats.get().received < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = pipeline.shutdown().await;
    let spans = exporter.get_finished_spans().unwrap();
    let released = spans
        .iter()
        .filter(|s| attribute(s, "longshore.outcome").as_deref() == Some("released"))
        .count();
    assert_eq!(
        released, 1,
        "the message in its handler, cut short, and only it had a span"
    );
}

/// The in-memory source whose acknowledger panics once.
struct Panicking(MemorySource<u64>, Arc<AtomicBool>);

#[derive(Clone)]
struct PanicsOnce(Arc<AtomicBool>);

impl Acknowledger<()> for PanicsOnce {
    async fn ack<T: Send + 'static>(&self, _: Vec<Message<T>>, _: Vec<Message<T>>) {
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("the broker's client panicked");
        }
    }
}

impl Source for Panicking {
    type Data = u64;
    type Metadata = ();
    type Acknowledger = PanicsOnce;

    fn acknowledger(&self) -> PanicsOnce {
        PanicsOnce(self.1.clone())
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<u64>>>, BoxError> {
        self.0.receive(demand).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_whose_acknowledgement_failed_says_so() {
    let (exporter, _provider, tracing) = traced();
    let source = Panicking(MemorySource::from_iter(0..1u64), Arc::default());
    let pipeline = Pipeline::builder(source, Numbers)
        .tracing(tracing)
        .start()
        .unwrap();
    assert!(
        pipeline.wait().await.is_err(),
        "an acknowledger's panic stops the pipeline"
    );
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        attribute(&spans[0], "longshore.outcome").as_deref(),
        Some("unacknowledged")
    );
    assert!(matches!(
        spans[0].status,
        opentelemetry::trace::Status::Error { .. }
    ));
}
