//! The SQS source's promises under hostile conditions, against LocalStack: visibility
//! extension that never lapses (failing entries, CPU load, three consumers), deletes
//! that never slow the processors (SQS calls slowed by a loopback proxy), one dead
//! letter per poison message, and a missed deadline that strands nothing.

mod common;
#[path = "../../../test-support/slow_proxy.rs"]
mod slow_proxy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use common::{
    assert_depth, client, config, create_queue, create_with_dlq, depth, drain, eventually, metric, send,
    unique, Watchdog, TEST_LIMIT,
};
use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
use longshore_sqs::{FinalFailure, SqsDeadLetter, SqsMessage, SqsMetadata, SqsSource};

const WAIT: Duration = Duration::from_secs(90);

fn start() -> Watchdog {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "longshore=info,longshore_sqs=info".into()),
        )
        .with_test_writer()
        .try_init();
    Watchdog::arm(TEST_LIMIT)
}

fn bodies(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// One handling of a message: (body, consumer, start, end).
type Handling = (String, usize, Instant, Instant);

/// A job of 5 to 8 s; for every fourth message it first deletes the message itself
/// (from outside the source), so that every extension of it fails from then on.
struct LongJob {
    consumer: usize,
    log: Arc<Mutex<Vec<Handling>>>,
    client: aws_sdk_sqs::Client,
    url: String,
}

impl Handler for LongJob {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;
    async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
        let started = Instant::now();
        let n: u64 = message.metadata().body().parse()?;
        if n.is_multiple_of(4) {
            self.client
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(message.metadata().receipt_handle())
                .send()
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(5_000 + (n * 761) % 3_000)).await;
        let handling = (
            message.metadata().body().to_owned(),
            self.consumer,
            started,
            Instant::now(),
        );
        self.log.lock().unwrap().push(handling);
        Ok(())
    }
}

/// Keeps every core busy until dropped.
struct CpuLoad(Arc<AtomicBool>);

impl CpuLoad {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..std::thread::available_parallelism().map_or(2, |n| n.get()) {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            });
        }
        CpuLoad(stop)
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_never_run_twice_at_once_with_failing_extensions_under_cpu_load() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("extend");
    let url = create_queue(&client, &name, &[]).await;
    let produced = 36;
    send(&client, &url, bodies(produced), None).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let _load = CpuLoad::start();

    // Three consumers, each with its own client and source, on one queue.
    let mut pipelines = Vec::new();
    for consumer in 0..3 {
        let source = SqsSource::connect(config(&name).visibility_timeout(Duration::from_secs(2)))
            .await
            .unwrap();
        let handler = LongJob {
            consumer,
            log: log.clone(),
            client: client.clone(),
            url: url.clone(),
        };
        let pipeline = Pipeline::builder(source, handler)
            .processors(Processors::new(4).max_demand(1))
            .max_in_flight(4)
            .start()
            .unwrap();
        pipelines.push(pipeline);
    }
    let finished = || {
        let log = log.lock().unwrap();
        log.iter()
            .map(|(body, ..)| body)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    eventually(WAIT, || finished() == produced).await;
    for pipeline in pipelines {
        pipeline.shutdown().await.unwrap();
    }
    assert_depth(&client, &url, (0, 0)).await;

    let log = log.lock().unwrap().clone();
    let mut by_body: HashMap<&str, Vec<&Handling>> = HashMap::new();
    for handling in &log {
        by_body.entry(&handling.0).or_default().push(handling);
    }
    let overlapping: Vec<&str> = by_body
        .iter()
        .filter(|(_, runs)| {
            runs.iter().any(|a| {
                runs.iter()
                    .any(|b| !std::ptr::eq(*a, *b) && a.2 < b.3 && b.2 < a.3)
            })
        })
        .map(|(body, _)| *body)
        .collect();
    let failures = metric(
        "longshore_sqs_visibility_extension_failures_total",
        &[("queue", &name)],
    );
    println!(
        "extension: produced={produced} handlings={} overlapping={} extension_failures={failures:?}",
        log.len(),
        overlapping.len()
    );
    assert!(
        overlapping.is_empty(),
        "handled by two consumers at once: {overlapping:?}"
    );
    assert!(
        failures.is_some_and(|n| n > 0.0),
        "the messages deleted from outside fail their extensions, counted: {failures:?}"
    );
}

/// Records the start and end of every handler call.
struct Timed(Arc<Mutex<Vec<(Instant, Instant)>>>);

impl Handler for Timed {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;
    async fn handle_message(&self, _: &mut SqsMessage) -> Result<(), BoxError> {
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.0.lock().unwrap().push((started, Instant::now()));
        Ok(())
    }
}

/// One processor handles `n` messages through a proxy adding `delay` to every call;
/// returns the processor's time per message outside its handler calls.
async fn overhead_per_message(n: usize, delay: Duration) -> Duration {
    let client = client().await;
    let name = unique("slow");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, bodies(n), None).await;
    let upstream = common::localstack()
        .endpoint
        .trim_start_matches("http://")
        .to_owned();
    let endpoint = slow_proxy::start(upstream, delay).await;
    let source = SqsSource::connect(config(&name).endpoint_url(&endpoint).receive_concurrency(10))
        .await
        .unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    // Receives run ahead (demands of 50: five polls at once, up to 200 messages): only
    // acknowledgement could hold the processor back.
    let pipeline = Pipeline::builder(source, Timed(calls.clone()))
        .processors(Processors::new(1).max_demand(50))
        .max_in_flight(200)
        .start()
        .unwrap();
    eventually(WAIT, || calls.lock().unwrap().len() >= n).await;
    pipeline.shutdown().await.unwrap();
    assert_depth(&client, &url, (0, 0)).await;
    let calls = calls.lock().unwrap().clone();
    // After the first receive, up to the last call: busy except for what acks cost.
    let span = calls.last().unwrap().1 - calls[0].0;
    let handling: Duration = calls.iter().map(|(start, end)| *end - *start).sum();
    span.saturating_sub(handling) / n as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sqs_calls_do_not_slow_the_processors() {
    let _watchdog = start();
    let n = 300;
    let fast = overhead_per_message(n, Duration::ZERO).await;
    let slow = overhead_per_message(n, Duration::from_millis(250)).await;
    println!("processor overhead per message: {fast:?} direct, {slow:?} with 250 ms per SQS call");
    // Deletes inline would add 25 ms a message (one 250 ms call per ten).
    assert!(
        slow < fast + Duration::from_millis(5),
        "direct {fast:?}, slowed {slow:?}"
    );
}

/// Fails every message; counts `handle_failed` calls per body.
struct Poison(Arc<Mutex<HashMap<String, usize>>>);

impl Handler for Poison {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;
    async fn handle_message(&self, _: &mut SqsMessage) -> Result<(), BoxError> {
        Err("cannot parse".into())
    }
    async fn handle_failed(&self, messages: &mut [SqsMessage]) {
        let mut counts = self.0.lock().unwrap();
        for message in messages {
            *counts.entry(message.metadata().body().to_owned()).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_has_one_dead_letter_with_a_pipeline_destination_and_a_redrive_policy() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("onedlq");
    let attempts = 2;
    // The queue redrives after `attempts` receives; the pipeline dead-letters too.
    let (url, redrive_dlq) = create_with_dlq(&client, &name, attempts, false).await;
    let explicit_name = format!("{name}-explicit");
    let explicit = create_queue(&client, &explicit_name, &[]).await;
    let produced = 5;
    send(&client, &url, bodies(produced), None).await;

    let failed = Arc::new(Mutex::new(HashMap::new()));
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let dead_letter = SqsDeadLetter::connect(&explicit_name, Some(&common::localstack().endpoint))
        .await
        .unwrap();
    let pipeline = Pipeline::builder(source, Poison(failed.clone()))
        .retry(RetryPolicy::new(attempts).initial_backoff(Duration::from_secs(1)))
        .dead_letter(dead_letter)
        .start()
        .unwrap();
    // Quiescent: nothing left in the source queue, visible or not (the broker has no
    // event to await).
    let quiet_by = Instant::now() + WAIT;
    while depth(&client, &url).await != (0, 0) {
        assert!(Instant::now() < quiet_by, "the source queue never emptied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline.shutdown().await.unwrap();

    let explicit_copies = drain(&client, &explicit, usize::MAX, Duration::from_secs(2)).await;
    let redriven = drain(&client, &redrive_dlq, usize::MAX, Duration::from_secs(2)).await;
    let mut bodies: Vec<&str> = explicit_copies.iter().filter_map(|m| m.body()).collect();
    bodies.sort_unstable();
    assert_eq!(
        bodies,
        ["0", "1", "2", "3", "4"],
        "one copy each in the pipeline's DLQ"
    );
    assert!(redriven.is_empty(), "none redriven as well: {}", redriven.len());
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.len() == produced && failed.values().all(|&n| n == 1),
        "handle_failed once per message: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_redrive_with_a_pipeline_dead_letter_is_refused_at_start() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("conflict");
    create_queue(&client, &name, &[]).await;
    let source = SqsSource::connect(config(&name).on_final_failure(FinalFailure::Redrive))
        .await
        .unwrap();
    let dead_letter = SqsDeadLetter::connect(&name, Some(&common::localstack().endpoint))
        .await
        .unwrap();
    let error = Pipeline::builder(source, Poison(Arc::default()))
        .dead_letter(dead_letter)
        .start()
        .unwrap_err();
    assert_eq!(error.field, "source.on_final_failure");
    assert!(error.to_string().contains("dead-lettered by both"), "{error}");
}

/// Takes 2 s per message.
struct TwoSeconds(Arc<Mutex<Vec<String>>>);

impl Handler for TwoSeconds {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;
    async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.0.lock().unwrap().push(message.metadata().body().to_owned());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_missed_deadline_every_unfinished_message_is_receivable_at_once() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("deadline");
    // A long timeout: a message stranded by the shutdown stays invisible for the test.
    let url = create_queue(&client, &name, &[(QueueAttributeName::VisibilityTimeout, "300")]).await;
    let produced = 40;
    send(&client, &url, bodies(produced), None).await;
    let finished = Arc::new(Mutex::new(Vec::new()));
    let source = SqsSource::connect(config(&name)).await.unwrap();
    // Two processors on chunks of five, more chunks queued behind them.
    let pipeline = Pipeline::builder(source, TwoSeconds(finished.clone()))
        .processors(Processors::new(2).max_demand(5))
        .max_in_flight(30)
        .shutdown_deadline(Duration::from_secs(5))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().received >= 30).await;
    let outcome = pipeline.shutdown().await;
    let Err(longshore::PipelineError::DeadlineExceeded(error)) = outcome else {
        panic!("the deadline passes: {outcome:?}");
    };
    assert_eq!(error.stranded, 0, "{error}");

    let finished = finished.lock().unwrap().clone();
    // At once, long before the 300 s timeout: everything but the finished messages.
    let receivable = drain(&client, &url, produced - finished.len(), Duration::from_secs(3)).await;
    let mut all: Vec<String> = receivable
        .iter()
        .filter_map(|m| m.body().map(str::to_owned))
        .collect();
    println!("deadline: finished={} receivable={}", finished.len(), all.len());
    assert!(
        all.iter().all(|body| !finished.contains(body)),
        "a message finished before the deadline was deleted"
    );
    all.extend(finished);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), produced, "finished or receivable, none stranded");
    assert_depth(&client, &url, (0, 0)).await;
}
