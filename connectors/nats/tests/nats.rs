//! The JetStream source against a real NATS server: a job longer than `ack_wait` kept
//! from redelivery by progress, a message failed for good terminated (never delivered
//! again), a failure delivered again after the retry's backoff with its count, the lag
//! gauges exactly those documented, bad settings refused naming the field, a consumer
//! deleted under the source failing the pipeline, and with `partition_by` a retry
//! waiting in process, kept from redelivery and in order.

mod common;
#[path = "../../../test-support/documented.rs"]
mod documented;
#[path = "../../../tests/common/mod.rs"]
mod http;
#[path = "../../../test-support/prometheus.rs"]
mod prometheus;
#[path = "../../../test-support/receiving.rs"]
mod receiving;
#[path = "../../../test-support/refused.rs"]
mod refused;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{context, make_consumer, make_stream, publish, unfinished, Nats};
use longshore::{BoxError, Handler, Permanent, Pipeline, RetryPolicy};
use longshore_nats::async_nats::jetstream::consumer::pull;
use longshore_nats::{JetStreamConfig, JetStreamMessage, JetStreamMetadata, JetStreamSource};

/// Records (payload, attempt); fails `bad` for good and `flaky` on its first attempt;
/// sleeps `sleep` on each.
struct Record {
    sleep: Duration,
    handled: Arc<Mutex<Vec<(String, u32)>>>,
}

impl Handler for Record {
    type Item = longshore_nats::Bytes;
    type Metadata = JetStreamMetadata;

    async fn handle_message(&self, message: &mut JetStreamMessage) -> Result<(), BoxError> {
        let payload = String::from_utf8(message.data().to_vec())?;
        self.handled
            .lock()
            .unwrap()
            .push((payload.clone(), message.attempt()));
        tokio::time::sleep(self.sleep).await;
        match payload.as_str() {
            "bad" => Err(Permanent::new("bad").into()),
            "flaky" if message.attempt() == 1 => Err("flaky".into()),
            _ => Ok(()),
        }
    }
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(server: &Nats, stream: &str) -> JetStreamConfig {
    JetStreamConfig::new(server.url(), stream, "c")
        .expires(Duration::from_millis(200))
        .ack_wait(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_is_not_delivered_twice_and_failures_go_as_declared() {
    let server = Nats::start();
    let context = context(&server.url()).await;
    make_stream(&context, "JOBS").await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = Record {
        sleep: Duration::from_secs(3),
        handled: handled.clone(),
    };
    // ack_wait 1 s, jobs of 3 s: only progress keeps them from coming again.
    let pipeline = Pipeline::builder(
        JetStreamSource::connect(config(&server, "JOBS")).await.unwrap(),
        handler,
    )
    .retry(RetryPolicy::new(3).initial_backoff(Duration::from_millis(100)))
    .start()
    .unwrap();
    publish(
        &context,
        "JOBS",
        ["long".to_owned(), "bad".to_owned(), "flaky".to_owned()],
    )
    .await;
    until("every message done", async || {
        unfinished(&context, "JOBS", "c").await == 0
    })
    .await;
    pipeline.shutdown().await.unwrap();
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    assert_eq!(
        handled,
        [
            ("bad".to_owned(), 1),
            ("flaky".to_owned(), 1),
            ("flaky".to_owned(), 2),
            ("long".to_owned(), 1)
        ],
        "the long job once, the bad one once (terminated), the flaky one again with its count"
    );
    // The server's own count: a copy of the long job delivered again while it ran would be
    // dropped here, unseen by the handler, but counted there.
    assert_eq!(deliveries(&context, "JOBS", "c").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_under_the_source_fails_the_pipeline_after_a_minute() {
    let server = Nats::start();
    let context = context(&server.url()).await;
    make_stream(&context, "DOOMED").await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = Record {
        sleep: Duration::ZERO,
        handled: handled.clone(),
    };
    let pipeline = Pipeline::builder(
        JetStreamSource::connect(config(&server, "DOOMED")).await.unwrap(),
        handler,
    )
    .start()
    .unwrap();
    publish(&context, "DOOMED", ["1".to_owned()]).await;
    until("the message handled", async || handled.lock().unwrap().len() == 1).await;
    let deleted = Instant::now();
    context
        .get_stream("DOOMED")
        .await
        .unwrap()
        .delete_consumer("c")
        .await
        .unwrap();
    // Each fetch now ends empty. Not a passing outage: after a minute the source reports it
    // can no longer deliver, rather than fetch in vain for ever with /healthz green.
    let error = refused::ends_refused(pipeline, "nats", deleted).await;
    assert!(error.contains("consumer not found"), "{error}");
}

/// Deliveries `consumer` of `stream` made, redeliveries included.
async fn deliveries(
    context: &longshore_nats::async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> u64 {
    let stream = context.get_stream(stream).await.unwrap();
    stream
        .consumer_info(consumer)
        .await
        .unwrap()
        .delivered
        .consumer_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partition_by_a_retry_waits_in_process_kept_from_redelivery_and_in_order() {
    let server = Nats::start();
    let context = context(&server.url()).await;
    make_stream(&context, "ORDERED").await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = Record {
        sleep: Duration::ZERO,
        handled: handled.clone(),
    };
    // ack_wait 1 s, a backoff of 3 s: only progress keeps the message waiting for its
    // retry from coming again; nak'ed instead, it would come after the key's next one.
    let pipeline = Pipeline::builder(
        JetStreamSource::connect(config(&server, "ORDERED"))
            .await
            .unwrap(),
        handler,
    )
    .partition_by(|_| 0)
    .retry(RetryPolicy::new(2).initial_backoff(Duration::from_secs(3)))
    .start()
    .unwrap();
    publish(&context, "ORDERED", ["flaky".to_owned(), "next".to_owned()]).await;
    until("both done", async || {
        unfinished(&context, "ORDERED", "c").await == 0
    })
    .await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(
        *handled.lock().unwrap(),
        [
            ("flaky".to_owned(), 1),
            ("flaky".to_owned(), 2),
            ("next".to_owned(), 1)
        ]
    );
    assert_eq!(
        deliveries(&context, "ORDERED", "c").await,
        2,
        "none delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauges_are_exactly_those_documented_and_bad_settings_are_refused() {
    let server = Nats::start();
    let context = context(&server.url()).await;
    make_stream(&context, "LAG").await;
    publish(&context, "LAG", (0..3).map(|n| n.to_string())).await;
    let _source = JetStreamSource::connect(config(&server, "LAG").lag_interval(Duration::from_millis(100)))
        .await
        .unwrap();
    let value = |name: &str| documented::gauge(name, ("stream", "LAG"));
    until("the lag read", async || {
        value("longshore_nats_consumer_pending_messages") == Some(3.0)
    })
    .await;
    assert_eq!(value("longshore_nats_consumer_ack_pending_messages"), Some(0.0));
    assert_eq!(documented::assert_exactly_documented("longshore_nats_"), 2);
    // The dashboard's panels of this source show it, through a real Prometheus.
    prometheus::assert_panels_show("longshore_nats_", 2).await;

    let error = JetStreamSource::connect(config(&server, "LAG").expires(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source.expires: must be shorter than source.ack_wait"
    );
    // A consumer made before with acks that would lose messages.
    context
        .get_stream("LAG")
        .await
        .unwrap()
        .create_consumer(longshore_nats::async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("all".to_owned()),
            ack_policy: longshore_nats::async_nats::jetstream::consumer::AckPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let error = JetStreamSource::connect(JetStreamConfig::new(server.url(), "LAG", "all"))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid source.consumer: all acknowledges with All"),
        "{error}"
    );
    // One made before with a delivery limit, which drops messages the server's way.
    context
        .get_stream("LAG")
        .await
        .unwrap()
        .create_consumer(longshore_nats::async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("limited".to_owned()),
            ack_policy: longshore_nats::async_nats::jetstream::consumer::AckPolicy::Explicit,
            max_deliver: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let error = JetStreamSource::connect(JetStreamConfig::new(server.url(), "LAG", "limited"))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid source.consumer: limited has max_deliver 3"),
        "{error}"
    );
    let error = JetStreamSource::connect(config(&server, "MISSING"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("nats finding the stream"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_at_once_fetch_at_once_each_message_handed_out_once() {
    let server = Nats::start();
    let js = context(&server.url()).await;
    make_stream(&js, "together").await;
    // Pull requests that wait long enough to be seen waiting at the server.
    let source = Arc::new(
        JetStreamSource::connect(
            config(&server, "together")
                .expires(Duration::from_secs(20))
                .ack_wait(Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    let (a, b) = (
        receiving::receive_in_task(&source, 1),
        receiving::receive_in_task(&source, 1),
    );
    until("two pull requests waiting at the server", async || {
        js.get_stream("together")
            .await
            .unwrap()
            .consumer_info("c")
            .await
            .is_ok_and(|info| info.num_waiting == 2)
    })
    .await;
    publish(&js, "together", ["first".to_owned(), "second".to_owned()]).await;
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut got: Vec<&[u8]> = a.iter().chain(&b).map(|m| &m.data()[..]).collect();
    got.sort();
    assert_eq!(got, [&b"first"[..], b"second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_before_with_request_limits_is_fetched_within_them() {
    let server = Nats::start();
    let context = context(&server.url()).await;
    make_stream(&context, "CAPPED").await;
    publish(&context, "CAPPED", (0..40).map(|n| n.to_string())).await;
    // Made (or, with the same name, updated) with request limits.
    let limit = async |max_batch: i64, max_expires: Duration| {
        let settings = pull::Config {
            max_batch,
            max_expires,
            ..Default::default()
        };
        make_consumer(&context, "CAPPED", settings).await;
    };
    // Made before, taking at most 5 messages and 1 s of waiting per request.
    limit(5, Duration::from_secs(1)).await;
    let error = JetStreamSource::connect(
        JetStreamConfig::new(server.url(), "CAPPED", "c")
            .ack_wait(Duration::from_secs(5))
            .expires(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source.expires: must be at most the consumer's max_expires (1s)"
    );
    // Within them, every message comes, though the pipeline asks for 64 at a time.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = Record {
        sleep: Duration::ZERO,
        handled: handled.clone(),
    };
    let pipeline = Pipeline::builder(
        JetStreamSource::connect(
            JetStreamConfig::new(server.url(), "CAPPED", "c")
                .ack_wait(Duration::from_secs(5))
                .expires(Duration::from_millis(200)),
        )
        .await
        .unwrap(),
        handler,
    )
    .start()
    .unwrap();
    until("all 40 handled", async || handled.lock().unwrap().len() >= 40).await;
    // Lowered while the source runs, below what it asks for: it follows them.
    limit(2, Duration::from_millis(100)).await;
    publish(&context, "CAPPED", (40..60).map(|n| n.to_string())).await;
    until("all 60 handled", async || handled.lock().unwrap().len() >= 60).await;
    until("all acknowledged", async || {
        unfinished(&context, "CAPPED", "c").await == 0
    })
    .await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(handled.lock().unwrap().len(), 60, "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_fetches_at_once_than_the_consumers_max_waiting_are_refused_at_start() {
    let server = Nats::start();
    let context = context(&server.url()).await;
    make_stream(&context, "WAITING").await;
    // Made before, keeping at most 2 pull requests waiting.
    let settings = pull::Config {
        max_waiting: 2,
        ..Default::default()
    };
    make_consumer(&context, "WAITING", settings).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let start = async |concurrency: usize| {
        let source = JetStreamSource::connect(
            JetStreamConfig::new(server.url(), "WAITING", "c")
                .ack_wait(Duration::from_secs(5))
                .expires(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        let handler = Record {
            sleep: Duration::ZERO,
            handled: handled.clone(),
        };
        Pipeline::builder(source, handler)
            .source_concurrency(concurrency)
            .start()
    };
    let error = start(3).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source_concurrency: must be at most the consumer's max_waiting (2): the server refuses the pull requests beyond it"
    );
    // At the limit, it starts and runs (a smoke check: a 409 there would be retried
    // unseen here).
    let pipeline = start(2).await.unwrap();
    publish(&context, "WAITING", (0..20).map(|n| n.to_string())).await;
    until("all 20 handled", async || handled.lock().unwrap().len() >= 20).await;
    pipeline.shutdown().await.unwrap();
}
