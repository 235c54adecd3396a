//! The JetStream source against a real NATS server: a job longer than `ack_wait` kept
//! from redelivery by progress, a message failed for good terminated (never delivered
//! again), a failure delivered again after the retry's backoff with its count, the lag
//! gauges exactly those documented, and bad settings refused naming the field.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{context, make_stream, publish, unfinished, Nats};
use longshore::{BoxError, Handler, Permanent, Pipeline, RetryPolicy};
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
    let value = |name: &str| {
        longshore::metrics::registry()
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().to_vec())
            .find(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == "stream" && l.value() == "LAG")
            })
            .map(|metric| metric.get_gauge().get_value())
    };
    until("the lag read", async || {
        value("longshore_nats_consumer_pending_messages") == Some(3.0)
    })
    .await;
    assert_eq!(value("longshore_nats_consumer_ack_pending_messages"), Some(0.0));
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md")).unwrap();
    let mut documented: Vec<(String, String)> = doc
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with("longshore_nats_")
                .then(|| (name.to_owned(), cells.next().unwrap().to_owned()))
        })
        .collect();
    documented.sort();
    let exposed: Vec<(String, String)> = longshore::metrics::registry()
        .gather()
        .iter()
        .filter(|family| family.name().starts_with("longshore_nats_"))
        .map(|family| {
            (
                family.name().to_owned(),
                format!("{:?}", family.get_field_type()).to_lowercase(),
            )
        })
        .collect();
    assert_eq!(exposed, documented);
    assert_eq!(documented.len(), 2);

    let error = JetStreamSource::connect(config(&server, "LAG").expires(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source.expires: must be shorter than source.ack_wait"
    );
    let error = JetStreamSource::connect(config(&server, "MISSING"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("nats finding the stream"),
        "{error}"
    );
}
