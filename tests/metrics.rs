//! The `/metrics` endpoint against `docs/metrics.md`, over a real socket.

mod common;

use std::time::Duration;

use longshore::metrics::MetricsServer;
use longshore::source::memory::MemorySource;
use longshore::{
    BatchInfo, Batcher, BoxError, DeadLetter, Handler, Message, Permanent, Pipeline, Processors, RateLimit,
    RetryPolicy,
};

/// Fails multiples of 10 once (retried), multiples of 97 for good (dead-lettered).
struct Flaky;

impl Handler for Flaky {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
        let n = *message.data();
        if n.is_multiple_of(97) {
            return Err(Permanent::new("poison").into());
        }
        if n.is_multiple_of(10) && message.attempt() == 1 {
            return Err("flaky".into());
        }
        Ok(())
    }

    async fn handle_batch(&self, _batch: &mut [Message<u64>], _info: &BatchInfo) -> Result<(), BoxError> {
        Ok(())
    }
}

struct Discard;

impl DeadLetter<()> for Discard {
    async fn dead_letter(&self, _messages: &mut [Message<()>]) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exposes_exactly_the_documented_metrics_with_their_counts() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..1_000u64), Flaky)
        .name("metrics-test")
        .processors(Processors::new(2))
        .batcher(
            Batcher::new("sink")
                .batch_size(50)
                .batch_timeout(Duration::from_millis(20))
                .rate_limit(RateLimit::per_second(100_000)),
        )
        .retry(RetryPolicy::new(2).initial_backoff(Duration::from_millis(1)))
        .rate_limit(RateLimit::per_second(1_000_000))
        .dead_letter(Discard)
        .start()
        .unwrap();
    pipeline.scaling().set_processors(3).unwrap();
    let summary = pipeline.wait().await.expect("the pipeline ends cleanly");
    assert_eq!(summary.received, 1_000);

    let (status, body) = common::get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    let documented: std::collections::BTreeMap<_, _> = common::documented_metrics()
        .into_iter()
        // The connectors' own are checked by their tests; a source part's stall, which
        // appears once a part stalls, by tests/stall.rs.
        .filter(|(name, _)| {
            !common::CONNECTOR_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
                && name != "longshore_source_stalled"
        })
        .collect();
    assert!(documented.len() >= 15, "docs/metrics.md read: {documented:?}");
    assert_eq!(common::exposed_metrics(&body), documented);

    let value = |series: &str| common::sample(&body, series).unwrap_or_else(|| panic!("{series} missing"));
    let poison = (0..1_000u64).filter(|n| n.is_multiple_of(97)).count() as f64;
    let flaky = (0..1_000u64)
        .filter(|n| n.is_multiple_of(10) && !n.is_multiple_of(97))
        .count() as f64;
    assert_eq!(
        value(r#"longshore_received_messages_total{pipeline="metrics-test"}"#),
        1_000.0
    );
    assert_eq!(
        value(r#"longshore_acknowledged_messages_total{outcome="failed",pipeline="metrics-test"}"#),
        poison
    );
    assert_eq!(
        value(r#"longshore_acknowledged_messages_total{outcome="successful",pipeline="metrics-test"}"#),
        1_000.0 - poison
    );
    assert_eq!(
        value(r#"longshore_retries_total{pipeline="metrics-test"}"#),
        flaky
    );
    assert_eq!(
        value(r#"longshore_dead_lettered_messages_total{pipeline="metrics-test"}"#),
        poison
    );
    assert_eq!(
        value(r#"longshore_in_flight_messages{pipeline="metrics-test"}"#),
        0.0
    );
    assert_eq!(
        value(
            r#"longshore_stage_messages_total{batcher="",outcome="failed",pipeline="metrics-test",stage="processor"}"#
        ),
        poison + flaky
    );
    assert_eq!(
        value(r#"longshore_batch_size_messages_sum{batcher="sink",pipeline="metrics-test"}"#),
        1_000.0 - poison
    );
    assert_eq!(
        value(r#"longshore_message_duration_seconds_count{outcome="successful",pipeline="metrics-test"}"#),
        1_000.0 - poison
    );
    assert_eq!(
        value(r#"longshore_control_changes_total{pipeline="metrics-test",setting="processors.concurrency"}"#),
        1.0
    );
    // Every stage has drained: nothing left inside one, no task still running. (Of this
    // pipeline: the registry also shows the other tests' pipelines, running beside it.)
    let stages: Vec<&str> = body
        .lines()
        .filter(|l| {
            (l.starts_with("longshore_stage_in_flight_messages{") || l.starts_with("longshore_stage_tasks{"))
                && l.contains(r#"pipeline="metrics-test""#)
        })
        .collect();
    assert!(stages.len() >= 4, "every stage's series shown: {stages:?}");
    for line in stages {
        assert!(line.ends_with(" 0"), "{line}");
    }
    server.shutdown().await;
}

/// Holds each handler call until the gate lets it go, saying when one has begun.
struct Gated {
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    entered: std::sync::Arc<tokio::sync::Notify>,
}

impl Handler for Gated {
    type Item = u64;
    type Metadata = ();

    async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
        self.entered.notify_one();
        self.gate.acquire().await?.forget();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_in_a_handler_call_demands_nothing() {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let entered = std::sync::Arc::new(tokio::sync::Notify::new());
    let handler = Gated {
        gate: gate.clone(),
        entered: entered.clone(),
    };
    let pipeline = Pipeline::builder(MemorySource::from_iter(0..8u64), handler)
        .name("demand-test")
        .processors(Processors::new(1).max_demand(4))
        .start()
        .unwrap();
    entered.notified().await;
    let (_, body) = common::get(server.local_addr(), "/metrics").await;
    let demand = common::sample(
        &body,
        r#"longshore_stage_demand_messages{batcher="",pipeline="demand-test",stage="processor"}"#,
    );
    // "Messages a stage has asked for and not yet received": a processor busy with a
    // chunk asks for none.
    assert_eq!(demand, Some(0.0), "the processor's demand during a handler call");
    gate.add_permits(8);
    let summary = pipeline.wait().await.expect("the pipeline ends cleanly");
    assert_eq!(summary.received, 8);
    server.shutdown().await;
}
