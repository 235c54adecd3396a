//! Receive -> handle -> delete through longshore, against a raw aws-sdk loop (receive
//! 10, batch delete sent off without waiting for it) on the same server (LocalStack) in
//! the same run. Each consumer runs in a process of its own, on a queue of its own
//! holding the same messages, so that its peak RSS is its own; throughput is timed from
//! its first receive until it has stopped: its last delete answered, and its last polls
//! on the drained queue (up to the 1 s wait, on both sides alike; a long enough run
//! keeps that share small).
//!
//! Two settings: on loopback (`case=sqs`, 10 polls at once), and through a proxy adding
//! 20 ms to every call, as a real network does (`case=sqs-delayed-2-polls` and `-10-polls`, at
//! once on both sides: the ceiling is polls x 10 messages per round trip).
//!
//! Run with `scripts/bench sqs`. `LONGSHORE_BENCH_MESSAGES` sets the message count
//! (default 20,000).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use longshore::{BoxError, Handler, Pipeline, Processors};
use longshore_sqs::{SqsConfig, SqsMessage, SqsMetadata, SqsSource};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../../test-support/slow_proxy.rs"]
mod slow_proxy;
#[path = "../../../benches/support/mod.rs"]
mod support;

/// Polls in flight at once on loopback, for both consumers.
const CONCURRENCY: usize = 10;

/// What the delayed cases add to every call.
const DELAY: Duration = Duration::from_millis(20);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let (imp, url) = (&args[i + 1], &args[i + 2]);
        let [count, delay_ms, concurrency]: [usize; 3] =
            std::array::from_fn(|n| args[i + 3 + n].parse().unwrap());
        let runtime = support::runtime();
        let calls_through = |delay_ms: usize| async move {
            let endpoint = std::env::var("AWS_ENDPOINT_URL_SQS").unwrap();
            if delay_ms == 0 {
                return endpoint;
            }
            let upstream = endpoint.trim_start_matches("http://").to_owned();
            slow_proxy::start(upstream, Duration::from_millis(delay_ms as u64)).await
        };
        let (rate, calls) = runtime.block_on(async {
            let endpoint = calls_through(delay_ms).await;
            match imp.as_str() {
                "raw" => raw(url, &endpoint, count, concurrency).await,
                _ => ours(url, &endpoint, count, concurrency).await,
            }
        });
        let per_msg = |calls: usize| calls as f64 / count as f64;
        let [receives, deletes, changes] = calls;
        support::report(&[
            rate,
            per_msg(receives + deletes + changes),
            support::peak_rss_mb(),
            per_msg(receives),
            per_msg(deletes),
        ]);
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let count: usize = std::env::var("LONGSHORE_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(if smoke { 500 } else { 20_000 });
    let endpoint = common::localstack().endpoint.clone();
    let runtime = support::runtime();
    let client = runtime.block_on(common::client());
    let queue = |imp: &str, count: usize| {
        runtime.block_on(async {
            let url = common::create_queue(&client, &common::unique(imp), &[]).await;
            let bodies = (0..count).map(|i| format!("{i:0>100}"));
            common::send(&client, &url, bodies, None).await;
            url
        })
    };
    let envs = [("AWS_ENDPOINT_URL_SQS", endpoint)];
    let case = |name: &str, count: usize, delay: Duration, concurrency: usize| {
        let run = |imp: &str| {
            let args = [count, delay.as_millis() as usize, concurrency].map(|n| n.to_string());
            support::run_child(
                &["--case", imp, &queue(imp, count), &args[0], &args[1], &args[2]],
                &envs,
            )
        };
        // Alternated, best of two each: the server's own speed drifts over a run.
        let best = |a: Vec<f64>, b: Vec<f64>| if a[0] >= b[0] { a } else { b };
        let (raw1, ours1) = (run("raw"), run("longshore"));
        let (ours2, raw2) = (run("longshore"), run("raw"));
        let (baseline, longshore) = (best(raw1, raw2), best(ours1, ours2));
        println!(
            "BENCH case={name} delay_ms={} receive_concurrency={concurrency} msgs_per_s={:.0} \
             baseline_msgs_per_s={:.0} ratio={:.2} api_calls_per_msg={:.3} baseline_api_calls_per_msg={:.3} \
             peak_rss_mb={:.1} baseline_peak_rss_mb={:.1} messages={count} receives_per_msg={:.3} \
             deletes_per_msg={:.3}",
            delay.as_millis(),
            longshore[0],
            baseline[0],
            longshore[0] / baseline[0],
            longshore[1],
            baseline[1],
            longshore[2],
            baseline[2],
            longshore[3],
            longshore[4],
        );
    };
    case("sqs", count, Duration::ZERO, CONCURRENCY);
    for concurrency in [2, CONCURRENCY] {
        case(
            &format!("sqs-delayed-{concurrency}-polls"),
            count,
            DELAY,
            concurrency,
        );
    }
}

/// `concurrency` tasks, each: receive up to 10, then send their delete in one batch call
/// off on its own (the next receive does not wait for it); timed until every delete is
/// answered and every task's last poll ended.
async fn raw(url: &str, endpoint: &str, count: usize, concurrency: usize) -> (f64, [usize; 3]) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .load()
        .await;
    let client = aws_sdk_sqs::Client::new(&config);
    let done = Arc::new(AtomicUsize::new(0));
    let receives = Arc::new(AtomicUsize::new(0));
    let deletes = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, done) = (client.clone(), url.to_owned(), done.clone());
            let (receives, deletes) = (receives.clone(), deletes.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                while done.load(Ordering::Relaxed) < count {
                    receives.fetch_add(1, Ordering::Relaxed);
                    let answer = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .wait_time_seconds(1)
                        .send()
                        .await
                        .expect("receive");
                    let messages = answer.messages.unwrap_or_default();
                    if messages.is_empty() {
                        continue;
                    }
                    let entries = messages.iter().enumerate().map(|(id, m)| {
                        std::hint::black_box(m.body());
                        DeleteMessageBatchRequestEntry::builder()
                            .id(id.to_string())
                            .receipt_handle(m.receipt_handle().unwrap())
                            .build()
                            .unwrap()
                    });
                    deletes.fetch_add(1, Ordering::Relaxed);
                    done.fetch_add(messages.len(), Ordering::Relaxed);
                    let delete = client
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries.collect()))
                        .send();
                    sent.push(tokio::spawn(async move { delete.await.expect("delete") }));
                }
                sent
            })
        })
        .collect();
    for task in tasks {
        for delete in task.await.unwrap() {
            delete.await.unwrap();
        }
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    (
        rate,
        [
            receives.load(Ordering::Relaxed),
            deletes.load(Ordering::Relaxed),
            0,
        ],
    )
}

/// Reads the body; says when the last message is handled.
struct Touch(support::Countdown);

impl Handler for Touch {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;
    async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
        std::hint::black_box(message.metadata().body());
        self.0.handled();
        Ok(())
    }
}

/// The same work through a pipeline; timed until it has shut down (its last deletes
/// answered, its last polls ended).
async fn ours(url: &str, endpoint: &str, count: usize, concurrency: usize) -> (f64, [usize; 3]) {
    let config = SqsConfig::new(url)
        .endpoint_url(endpoint)
        .receive_concurrency(concurrency)
        .wait_time(Duration::from_secs(1))
        // The bench counts its own calls: no depth reads.
        .lag_interval(Duration::from_secs(3600));
    let source = SqsSource::connect(config).await.expect("source");
    let start = Instant::now();
    let touch = Arc::new(Touch(support::Countdown::new(count)));
    // A receive asks for one processor's demand (50: five polls); two producers keep
    // ten polls in flight, as many as the raw side's tasks.
    let pipeline = Pipeline::builder(source, touch.clone())
        .processors(Processors::new(4).max_demand(50))
        .source_concurrency(2)
        .start()
        .expect("pipeline");
    touch.0.finished().await;
    // Shutting down drains the pipeline and sends the last deletes: timed too.
    pipeline.shutdown().await.expect("drained");
    let rate = count as f64 / start.elapsed().as_secs_f64();
    let queue = url.rsplit('/').next().unwrap();
    let calls = [
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
    ]
    .map(|call| {
        let labels = [("queue", queue), ("call", call)];
        common::metric("longshore_sqs_api_calls_total", &labels).unwrap_or(0.0) as usize
    });
    (rate, calls)
}
