//! The SQS source against a real SQS-compatible server (LocalStack over HTTP on
//! loopback): delivery and deletes, demand, retries through visibility, redrive,
//! the explicit dead-letter queue, duplicate receipts, FIFO order, release at shutdown,
//! visibility extension, lag metrics and a missing queue.

mod common;
#[path = "../../../test-support/receiving.rs"]
mod receiving;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use common::{
    assert_depth, attribute, client, config, create_queue, create_with_dlq, depth, drain, eventually, metric,
    send, unique, Watchdog, TEST_LIMIT,
};
use longshore::{Acknowledger, BoxError, Handler, Pipeline, Processors, RetryPolicy, Source};
use longshore_sqs::{FinalFailure, SqsConfig, SqsDeadLetter, SqsMessage, SqsMetadata, SqsSource};

const WAIT: Duration = Duration::from_secs(60);

type Decide = dyn Fn(&str, u32) -> Result<(), BoxError> + Send + Sync;

/// Records every handling (body, attempt, when) and answers as `decide` says.
struct Recorder {
    seen: Arc<Mutex<Vec<(String, u32, Instant)>>>,
    decide: Box<Decide>,
    delay: Duration,
}

impl Recorder {
    fn new(decide: impl Fn(&str, u32) -> Result<(), BoxError> + Send + Sync + 'static) -> Self {
        Recorder {
            seen: Arc::default(),
            decide: Box::new(decide),
            delay: Duration::ZERO,
        }
    }

    fn ok() -> Self {
        Recorder::new(|_, _| Ok(()))
    }

    fn seen(&self) -> Arc<Mutex<Vec<(String, u32, Instant)>>> {
        self.seen.clone()
    }
}

impl Handler for Recorder {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;

    async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
        let body = message.metadata().body().to_owned();
        self.seen
            .lock()
            .unwrap()
            .push((body.clone(), message.attempt(), Instant::now()));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        (self.decide)(&body, message.attempt())
    }
}

fn bodies(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

fn handled(seen: &Mutex<Vec<(String, u32, Instant)>>) -> usize {
    seen.lock().unwrap().len()
}

fn start() -> Watchdog {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "longshore=info,longshore_sqs=debug".into()),
        )
        .with_test_writer()
        .try_init();
    Watchdog::arm(TEST_LIMIT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_once_and_deleted_in_batches() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("all");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, bodies(2_000), None).await;

    let recorder = Recorder::ok();
    let seen = recorder.seen();
    let source = SqsSource::connect(config(&name)).await.unwrap();
    // A standard queue has no order to keep: no message waits behind a busy processor.
    assert!(source.partition_by().is_none());
    let pipeline = Pipeline::builder(source, recorder)
        .processors(Processors::new(8).max_demand(20))
        .start()
        .unwrap();
    eventually(WAIT, || handled(&seen) >= 2_000).await;
    pipeline.shutdown().await.unwrap();

    let counts = common::counts(seen.lock().unwrap().iter().map(|(b, _, _)| b.clone()));
    assert_eq!(counts.len(), 2_000, "every message handled");
    assert!(counts.values().all(|&n| n == 1), "none handled twice");
    assert_depth(&client, &url, (0, 0)).await;
    let deletes = metric(
        "longshore_sqs_api_calls_total",
        &[("queue", &name), ("call", "DeleteMessageBatch")],
    );
    assert!(
        deletes.unwrap() <= 2_000.0 / 10.0 * 1.2,
        "deletes in full batches: {deletes:?} calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_received_beyond_demand() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("demand");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, bodies(300), None).await;

    // Handlers wait until released: the pipeline holds what it received.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    struct Gated(Arc<tokio::sync::Semaphore>, Arc<Mutex<usize>>);
    impl Handler for Gated {
        type Item = longshore_sqs::Bytes;
        type Metadata = SqsMetadata;
        async fn handle_message(&self, _: &mut SqsMessage) -> Result<(), BoxError> {
            self.0.acquire().await?.forget();
            *self.1.lock().unwrap() += 1;
            Ok(())
        }
    }
    let done = Arc::new(Mutex::new(0));
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let pipeline = Pipeline::builder(source, Gated(gate.clone(), done.clone()))
        .processors(Processors::new(2).max_demand(10).min_demand(5))
        .start()
        .unwrap();
    let limit = pipeline.stats().get().max_in_flight as u64;
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().in_flight as u64 == limit).await;
    // Polls asked for no more than the demand: what is invisible is what the pipeline
    // holds. The server's counts settle a moment after the receives; never above the bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (visible, invisible) = depth(&client, &url).await;
        assert!(invisible <= limit, "received {invisible}, demand bound {limit}");
        if (visible, invisible) == (300 - limit, limit) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "depth stays at {visible} visible, {invisible} received"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.add_permits(300);
    eventually(WAIT, || *done.lock().unwrap() == 300).await;
    pipeline.shutdown().await.unwrap();
    assert_depth(&client, &url, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_raises_the_receive_count_after_the_backoff() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("retry");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, bodies(5), None).await;

    // Each message fails its first two attempts.
    let recorder = Recorder::new(|_, attempt| {
        if attempt < 3 {
            Err("not yet".into())
        } else {
            Ok(())
        }
    });
    let seen = recorder.seen();
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let backoff = Duration::from_secs(1);
    let pipeline = Pipeline::builder(source, recorder)
        .retry(
            RetryPolicy::new(3)
                .initial_backoff(backoff)
                .multiplier(2.0)
                .jitter(0.0),
        )
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().successful == 5).await;
    pipeline.shutdown().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    for body in bodies(5) {
        let tries: Vec<(u32, Instant)> = seen
            .iter()
            .filter(|(b, ..)| *b == body)
            .map(|(_, a, t)| (*a, *t))
            .collect();
        let attempts: Vec<u32> = tries.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            attempts,
            [1, 2, 3],
            "message {body}: attempts from ApproximateReceiveCount"
        );
        // The visibility is whole seconds: 1 s, then 2 s.
        assert!(tries[1].1 - tries[0].1 >= backoff, "first backoff honoured");
        assert!(tries[2].1 - tries[1].1 >= backoff * 2, "second backoff honoured");
    }
    assert_depth(&client, &url, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_redrives_to_its_dlq_after_the_maximum_receives() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("redrive");
    let (url, dlq) = create_with_dlq(&client, &name, 2, false).await;
    send(&client, &url, ["poison".to_owned(), "fine".to_owned()], None).await;

    let recorder = Recorder::new(|body, _| {
        if body == "poison" {
            Err("always".into())
        } else {
            Ok(())
        }
    });
    let seen = recorder.seen();
    let source = SqsSource::connect(config(&url)).await.unwrap();
    let pipeline = Pipeline::builder(source, recorder)
        .retry(RetryPolicy::new(2).initial_backoff(Duration::from_secs(1)))
        .start()
        .unwrap();
    let dead = drain(&client, &dlq, 1, WAIT).await;
    let stats = pipeline.stats().get();
    pipeline.shutdown().await.unwrap();

    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("poison"));
    let poison_attempts: Vec<u32> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, ..)| b == "poison")
        .map(|(_, a, _)| *a)
        .collect();
    assert_eq!(
        poison_attempts,
        [1, 2],
        "handled once per receive, up to maxReceiveCount"
    );
    // The first failed receive is handed back for redelivery, the second fails for good
    // (left to the redrive): one delivery each way.
    assert_eq!((stats.successful, stats.redelivered, stats.failed), (1, 1, 1));
    assert_depth(&client, &url, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_dead_letter_queue_gets_the_reason_and_the_message_is_deleted() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("explicit");
    let url = create_queue(&client, &name, &[]).await;
    let dlq_name = format!("{name}-dlq");
    let dlq = create_queue(&client, &dlq_name, &[]).await;
    let attribute_value = aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value("eu")
        .build()
        .unwrap();
    client
        .send_message()
        .queue_url(&url)
        .message_body("poison")
        .message_attributes("region", attribute_value)
        .send()
        .await
        .unwrap();

    let recorder = Recorder::new(|_, _| Err("cannot parse".into()));
    let source = SqsSource::connect(config(&name).on_final_failure(FinalFailure::Delete))
        .await
        .unwrap();
    let dead_letter = SqsDeadLetter::connect(&dlq_name, Some(&common::localstack().endpoint))
        .await
        .unwrap();
    let pipeline = Pipeline::builder(source, recorder)
        .retry(RetryPolicy::new(2).initial_backoff(Duration::from_secs(1)))
        .dead_letter(dead_letter)
        .start()
        .unwrap();
    let dead = drain(&client, &dlq, 1, WAIT).await;
    pipeline.shutdown().await.unwrap();

    assert_eq!(dead.len(), 1);
    let attributes = dead[0].message_attributes().unwrap();
    let value = |key: &str| {
        attributes
            .get(key)
            .and_then(|v| v.string_value())
            .unwrap_or_default()
    };
    assert_eq!(dead[0].body(), Some("poison"));
    assert_eq!(value("longshore.reason"), "failed (error): cannot parse");
    assert_eq!(value("longshore.attempts"), "2");
    assert_eq!(value("longshore.source_queue"), name);
    assert!(!value("longshore.message_id").is_empty());
    assert_eq!(value("region"), "eu", "the message's own attributes kept");
    // Deleted from the source queue.
    assert_depth(&client, &url, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_received_twice_in_one_delete_batch_does_not_fail_the_others() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("twice");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, bodies(4), None).await;

    let source = SqsSource::connect(
        config(&name)
            .visibility_timeout(Duration::from_secs(2))
            .extend_visibility(false),
    )
    .await
    .unwrap();
    let acknowledger = source.acknowledger();
    let mut first = Vec::new();
    while first.len() < 4 {
        first.extend(
            source
                .receive(NonZeroUsize::new(4 - first.len()).unwrap())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Message "0" becomes visible again and is received a second time, with a new receipt.
    let zero = first.iter().position(|m| m.metadata().body() == "0").unwrap();
    let again = loop {
        let got = source
            .receive(NonZeroUsize::new(1).unwrap())
            .await
            .unwrap()
            .unwrap();
        if got[0].metadata().body() == "0" {
            break got.into_iter().next().unwrap();
        }
    };
    assert_eq!(again.metadata().message_id(), first[zero].metadata().message_id());
    // Both receipts of "0", one of them twice, and the others: one batch.
    let duplicate = again
        .metadata()
        .clone()
        .into_message()
        .with_ack_ref(again.ack_ref());
    let mut successful = first;
    successful.push(again);
    successful.push(duplicate);
    acknowledger.ack(successful, Vec::new()).await;
    acknowledger.flush().await;

    // Nothing comes back within more than the visibility timeout.
    let left = drain(&client, &url, 0, Duration::from_secs(3)).await;
    let left: Vec<_> = left.iter().filter_map(|m| m.body()).collect();
    assert!(left.is_empty(), "all deleted, none redelivered: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_keep_their_order_under_concurrency_and_failures() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("order");
    let url = create_queue(
        &client,
        &format!("{name}.fifo"),
        &[(QueueAttributeName::FifoQueue, "true")],
    )
    .await;
    let groups = 6;
    let per_group = 40;
    let all: Vec<String> = (0..per_group)
        .flat_map(|i| (0..groups).map(move |g| format!("{g}-{i}")))
        .collect();
    send(
        &client,
        &url,
        all,
        Some(&|body: &str| body.split('-').next().unwrap().to_owned()),
    )
    .await;

    // A fifth of the messages fail their first attempt.
    let recorder = Recorder::new(|body, attempt| {
        let i: u32 = body.split('-').nth(1).unwrap().parse().unwrap();
        if attempt == 1 && i % 5 == 2 {
            Err("first try fails".into())
        } else {
            Ok(())
        }
    });
    let seen = recorder.seen();
    let source = SqsSource::connect(config(&format!("{name}.fifo"))).await.unwrap();
    assert!(source.is_fifo());
    assert!(
        source.partition_by().is_some(),
        "a FIFO queue keeps each group's order"
    );
    let pipeline = Pipeline::builder(source, recorder)
        .processors(Processors::new(6).max_demand(5))
        .retry(RetryPolicy::new(3).initial_backoff(Duration::from_millis(200)))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().successful == (groups * per_group) as u64).await;
    pipeline.shutdown().await.unwrap();

    // Per group, the sequence of handlings: each failure is followed by its retry,
    // before any later message of the group.
    let seen = seen.lock().unwrap().clone();
    let mut by_group: HashMap<String, Vec<u32>> = HashMap::new();
    for (body, _, _) in &seen {
        let (group, i) = body.split_once('-').unwrap();
        by_group
            .entry(group.to_owned())
            .or_default()
            .push(i.parse().unwrap());
    }
    assert_eq!(by_group.len(), groups);
    for (group, order) in by_group {
        let expected: Vec<u32> = (0..per_group as u32)
            .flat_map(|i| if i % 5 == 2 { vec![i, i] } else { vec![i] })
            .collect();
        assert_eq!(order, expected, "group {group}");
    }
    assert_depth(&client, &url, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_releases_what_was_received_and_not_started() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("release");
    // A long timeout: a message not released stays invisible for the rest of the test.
    let url = create_queue(&client, &name, &[(QueueAttributeName::VisibilityTimeout, "300")]).await;
    send(&client, &url, bodies(200), None).await;

    let mut recorder = Recorder::ok();
    recorder.delay = Duration::from_millis(200);
    let seen = recorder.seen();
    let source = SqsSource::connect(config(&name)).await.unwrap();
    // One slow processor and a large demand: most of what polls bring waits in the source.
    let pipeline = Pipeline::builder(source, recorder)
        .processors(Processors::new(1).max_demand(100).min_demand(1))
        .start()
        .unwrap();
    eventually(WAIT, || handled(&seen) >= 1).await;
    let summary = pipeline.shutdown().await.unwrap();
    let handled_count = handled(&seen);
    assert_eq!(summary.successful as usize, handled_count);

    // Right after the stop, long before the 300 s timeout: the rest is receivable.
    let left = drain(&client, &url, 200 - handled_count, Duration::from_secs(2)).await;
    assert_eq!(
        left.len() + handled_count,
        200,
        "handled {handled_count}, receivable again {}",
        left.len()
    );
    assert!(!left.is_empty(), "something was waiting in the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_lasting_three_visibility_timeouts_is_not_redelivered() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("long");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, ["long".to_owned()], None).await;

    let mut recorder = Recorder::ok();
    let visibility = Duration::from_secs(2);
    recorder.delay = visibility * 3 + Duration::from_millis(500);
    let seen = recorder.seen();
    let source = SqsSource::connect(config(&name).visibility_timeout(visibility))
        .await
        .unwrap();
    // Idle processors polling all the while: a redelivery would reach one of them.
    let pipeline = Pipeline::builder(source, recorder)
        .processors(Processors::new(4).max_demand(1))
        .start()
        .unwrap();
    let stats = pipeline.stats();
    eventually(WAIT, || stats.get().successful == 1).await;
    pipeline.shutdown().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "handled once: {seen:?}");
    assert_eq!(seen[0].1, 1);
    assert_depth(&client, &url, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_depth_is_exported() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("depth");
    let url = create_queue(&client, &name, &[]).await;
    send(&client, &url, bodies(30), None).await;

    let source = SqsSource::connect(config(&name)).await.unwrap();
    let visible = || metric("longshore_sqs_messages_visible", &[("queue", &name)]);
    eventually(WAIT, || visible() == Some(30.0)).await;
    // Received and held: in flight, and the oldest message's age from its send time.
    let got = source
        .receive(NonZeroUsize::new(10).unwrap())
        .await
        .unwrap()
        .unwrap();
    let in_flight = || metric("longshore_sqs_messages_in_flight", &[("queue", &name)]);
    eventually(WAIT, || in_flight() == Some(got.len() as f64)).await;
    assert!(metric("longshore_sqs_oldest_message_age_seconds", &[("queue", &name)]).is_some());
    // Every SQS metric of docs/metrics.md, and no other, with its documented type.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md")).unwrap();
    let documented: Vec<(String, String)> = doc
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with("longshore_sqs_")
                .then(|| (name.to_owned(), cells.next().unwrap().to_owned()))
        })
        .collect();
    let exposed: Vec<(String, String)> = longshore::metrics::registry()
        .gather()
        .iter()
        .filter(|family| family.name().starts_with("longshore_sqs_"))
        .map(|family| {
            (
                family.name().to_owned(),
                format!("{:?}", family.get_field_type()).to_lowercase(),
            )
        })
        .collect();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    assert_eq!(exposed, documented_sorted);
    assert_eq!(documented.len(), 6);
    assert_eq!(
        attribute(
            &client,
            &url,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible
        )
        .await,
        got.len().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_a_clear_error() {
    let _watchdog = start();
    let error = SqsSource::connect(config("no-such-queue")).await.unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("sqs queue no-such-queue: "), "{text}");
    assert!(
        text.contains("NonExistentQueue") || text.contains("does not exist"),
        "{text}"
    );

    let error = SqsSource::connect(SqsConfig::new("q").receive_concurrency(0))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid source.receive_concurrency: must be at least 1, got 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_poison_messages_lose_nothing_and_poison_ends_in_the_dlq() {
    let _watchdog = start();
    let produced: usize = std::env::var("LONGSHORE_CHAOS_SQS_POISON_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(2_000);
    let client = client().await;
    let name = unique("poison");
    let attempts = 3;
    let (url, dlq) = create_with_dlq(&client, &name, attempts, false).await;
    send(&client, &url, bodies(produced), None).await;

    // Every 100th message is poison; a tenth of first attempts panic (quietly: the
    // default hook would print each with its backtrace).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("handler panics on") {
            default_hook(info);
        }
    }));
    let poison = |n: usize| n % 100 == 42;
    struct Chaos(Arc<Mutex<Vec<(String, u32, Instant)>>>);
    impl Handler for Chaos {
        type Item = longshore_sqs::Bytes;
        type Metadata = SqsMetadata;
        async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
            let n: usize = message.metadata().body().parse()?;
            if n % 100 == 42 {
                return Err("poison".into());
            }
            if message.attempt() == 1 && n % 10 == 3 {
                panic!("handler panics on {n}");
            }
            let seen = (
                message.metadata().body().to_owned(),
                message.attempt(),
                Instant::now(),
            );
            self.0.lock().unwrap().push(seen);
            Ok(())
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let pipeline = Pipeline::builder(source, Chaos(seen.clone()))
        .processors(Processors::new(8).max_demand(10))
        .retry(RetryPolicy::new(attempts).initial_backoff(Duration::from_secs(1)))
        .start()
        .unwrap();
    let poisoned = (0..produced).filter(|&n| poison(n)).count();
    let dead = drain(&client, &dlq, poisoned, WAIT).await;
    eventually(WAIT, || handled(&seen) >= produced - poisoned).await;
    pipeline.shutdown().await.unwrap();

    let counts = common::counts(seen.lock().unwrap().iter().map(|(b, ..)| b.clone()));
    let mut dead: Vec<usize> = dead.iter().map(|m| m.body().unwrap().parse().unwrap()).collect();
    dead.sort_unstable();
    let lost = (0..produced)
        .filter(|n| !poison(*n) && !counts.contains_key(&n.to_string()))
        .count();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "CHAOS case=sqs-panics-and-poison produced={produced} handled_unique={} lost={lost} \
         duplicates={duplicates} inflight_bound=0 dead_lettered={} poison={poisoned} panic_percent=10",
        counts.len(),
        dead.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0, "a failed attempt is not a handling");
    assert_eq!(dead, (0..produced).filter(|&n| poison(n)).collect::<Vec<_>>());
    assert_depth(&client, &url, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_attributes_of_any_allowed_characters_arrive_exactly_as_sent() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("unicode");
    let url = create_queue(&client, &name, &[]).await;
    // Random text of every character SQS allows (tab, newlines, BMP, astral planes).
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut text = |max: usize| -> String {
        (0..rng.usize(1..=max))
            .map(|_| match rng.u8(0..4) {
                0 => rng.choice(['\t', '\n', '\r', ' ', '<', '&', '"', '\\']).unwrap(),
                1 => rng.char('\u{20}'..='\u{7e}'),
                2 => rng.char('\u{a0}'..='\u{d7ff}'),
                _ => rng.char('\u{10000}'..='\u{10ffff}'),
            })
            .collect()
    };
    let mut sent = Vec::new();
    for i in 0..100 {
        let body = text(if i % 25 == 0 { 20_000 } else { 300 });
        let attribute = text(50);
        let value = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(&attribute)
            .build()
            .unwrap();
        let call = client
            .send_message()
            .queue_url(&url)
            .message_body(&body)
            .message_attributes("text", value);
        call.send()
            .await
            .unwrap_or_else(|e| panic!("send (seed {seed}): {e:?}"));
        sent.push((body, attribute));
    }

    #[derive(Default)]
    struct Keep(Mutex<Vec<(String, String)>>);
    impl Handler for Keep {
        type Item = longshore_sqs::Bytes;
        type Metadata = SqsMetadata;
        async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
            let data = message.metadata();
            let attribute = data.message_attribute_str("text").unwrap_or_default().to_owned();
            self.0.lock().unwrap().push((data.body().to_owned(), attribute));
            Ok(())
        }
    }
    let keep = Arc::new(Keep::default());
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let pipeline = Pipeline::builder(source, keep.clone()).start().unwrap();
    eventually(WAIT, || keep.0.lock().unwrap().len() >= sent.len()).await;
    pipeline.shutdown().await.unwrap();

    let mut received = keep.0.lock().unwrap().clone();
    received.sort();
    sent.sort();
    assert!(received == sent, "bodies or attributes changed (seed {seed})");
}

/// Batches by message group; fails the first attempt of some messages, and now and then
/// a whole batch; notes, per message, when it last succeeded in a batch (its final
/// success: a message behind a retry in its batch is handled again).
#[derive(Default)]
struct GroupBatches {
    attempts: Mutex<HashMap<String, u32>>,
    calls: std::sync::atomic::AtomicU64,
    finished: std::sync::atomic::AtomicU64,
    last_ok: Mutex<HashMap<String, u64>>,
}

impl Handler for GroupBatches {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;

    async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
        let group = message
            .metadata()
            .group_id()
            .ok_or("a FIFO message has a group")?
            .to_owned();
        message.put_batch_key(group);
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [SqsMessage], _: &longshore::BatchInfo) -> Result<(), BoxError> {
        use std::sync::atomic::Ordering::SeqCst;
        // Other groups' batches overtake a waiting one.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if self.calls.fetch_add(1, SeqCst) % 9 == 4 {
            return Err("the whole batch fails".into());
        }
        let mut attempts = self.attempts.lock().unwrap();
        let mut last_ok = self.last_ok.lock().unwrap();
        for message in batch.iter_mut() {
            let body = message.metadata().body().to_owned();
            let attempt = attempts.entry(body.clone()).or_default();
            *attempt += 1;
            let i: u32 = body.split('-').nth(1).unwrap().parse().unwrap();
            if *attempt == 1 && i % 7 == 3 {
                message.fail("first try fails");
            } else {
                last_ok.insert(body, self.finished.fetch_add(1, SeqCst));
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_keep_their_order_through_a_batcher_with_failing_batches() {
    let _watchdog = start();
    let client = client().await;
    let name = format!("{}.fifo", unique("batched"));
    let url = create_queue(&client, &name, &[(QueueAttributeName::FifoQueue, "true")]).await;
    let (groups, per_group) = (8, 30);
    let half = |range: std::ops::Range<u32>| -> Vec<String> {
        range
            .flat_map(|i| (0..groups).map(move |g| format!("{g}-{i}")))
            .collect()
    };
    let group_of = |body: &str| body.split('-').next().unwrap().to_owned();
    send(&client, &url, half(0..per_group / 2), Some(&group_of)).await;

    let handler = Arc::new(GroupBatches::default());
    let source = SqsSource::connect(config(&name)).await.unwrap();
    let pipeline = Pipeline::builder(source, handler.clone())
        .processors(Processors::new(4).max_demand(10))
        .batcher(
            longshore::Batcher::new("db")
                .batch_size(10)
                .batch_timeout(Duration::from_millis(50))
                .concurrency(4),
        )
        .retry(RetryPolicy::new(5).initial_backoff(Duration::from_millis(100)))
        .start()
        .unwrap();
    // The rest arrives while the first half is consumed.
    send(&client, &url, half(per_group / 2..per_group), Some(&group_of)).await;
    let stats = pipeline.stats();
    let total = u64::from(groups * per_group);
    eventually(WAIT, || stats.get().successful == total).await;
    pipeline.shutdown().await.unwrap();
    assert_eq!(stats.get().failed, 0);
    assert_depth(&client, &url, (0, 0)).await;

    // Per group, messages finished (their last successful handling) in the order sent.
    let last_ok = handler.last_ok.lock().unwrap();
    assert_eq!(last_ok.len(), total as usize);
    let mut by_group: HashMap<String, Vec<(u64, u32)>> = HashMap::new();
    for (body, &at) in last_ok.iter() {
        let (group, i) = body.split_once('-').unwrap();
        by_group
            .entry(group.to_owned())
            .or_default()
            .push((at, i.parse().unwrap()));
    }
    for (group, mut finished) in by_group {
        finished.sort_unstable();
        let order: Vec<u32> = finished.into_iter().map(|(_, i)| i).collect();
        assert_eq!(order, (0..per_group).collect::<Vec<_>>(), "group {group}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_at_once_each_start_polls_for_their_own_demand() {
    let _watchdog = start();
    let client = client().await;
    let name = unique("together");
    let url = create_queue(&client, &name, &[]).await;
    // Long polls on an empty queue: each waits at the server until messages come.
    let source = Arc::new(
        SqsSource::connect(
            config(&name)
                .wait_time(Duration::from_secs(20))
                .receive_concurrency(4),
        )
        .await
        .unwrap(),
    );
    let (a, b) = (
        receiving::receive_in_task(&source, 10),
        receiving::receive_in_task(&source, 10),
    );
    // Two producers' calls (source_concurrency 2), a demand of 10 each: two polls.
    let polls = || {
        metric(
            "longshore_sqs_api_calls_total",
            &[("queue", &name), ("call", "ReceiveMessage")],
        )
        .unwrap_or(0.0)
    };
    eventually(Duration::from_secs(10), || polls() >= 2.0).await;
    // And no third: the two cover the demand. (Checking that nothing more happens takes
    // a while of nothing happening.)
    let quiet = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet {
        assert_eq!(polls(), 2.0, "polls beyond the two calls' demand");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // More than the demand waits in the queue: the calls take their polls' answers only.
    send(&client, &url, bodies(30), None).await;
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(a.len() + b.len() <= 20, "{} and {}", a.len(), b.len());
}
