//! The JetStream source against a raw async-nats loop on the same server, in the same
//! run, each in a process of its own, in alternated rounds (median ratio):
//!
//! - `raw`: two tasks on one durable pull consumer (explicit acks, as the source's),
//!   each fetching 64 messages at a time and acknowledging each: the hand-written
//!   consumer, as tight as it gets;
//! - `longshore`: `JetStreamSource` under two processors of `max_demand` 64, a
//!   do-nothing handler.
//!
//! Each round fills a fresh stream first (not timed). Prints `BENCH case=nats ratio=<x>
//! ...` with peak RSS; `LONGSHORE_BENCH_MESSAGES` sets the message count (default
//! 200,000; under `cargo test` a short smoke run).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../../benches/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use longshore::{BoxError, Handler, Pipeline, Processors};
use longshore_nats::async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use longshore_nats::{JetStreamConfig, JetStreamMessage, JetStreamMetadata, JetStreamSource};
use support::Countdown;

const DEMAND: usize = 64;
const TASKS: usize = 2;
const CONSUMER: &str = "bench";

struct Nothing(Arc<Countdown>);

impl Handler for Nothing {
    type Item = longshore_nats::Bytes;
    type Metadata = JetStreamMetadata;

    async fn handle_message(&self, message: &mut JetStreamMessage) -> Result<(), BoxError> {
        std::hint::black_box(message.data().len());
        self.0.handled();
        Ok(())
    }
}

async fn raw(url: &str, stream: &str, count: u64) -> u64 {
    let context = common::context(url).await;
    let consumer: PullConsumer = context
        .get_stream(stream)
        .await
        .unwrap()
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: AckPolicy::Explicit,
                ..pull::Config::default()
            },
        )
        .await
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (consumer, done) = (consumer.clone(), done.clone());
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < count {
                    let mut batch = consumer
                        .fetch()
                        .max_messages(DEMAND)
                        .expires(Duration::from_millis(200))
                        .messages()
                        .await
                        .unwrap();
                    while let Some(message) = batch.next().await {
                        let message = message.unwrap();
                        std::hint::black_box(message.payload.len());
                        message.ack().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    context.client().flush().await.unwrap();
    done.load(Ordering::Relaxed)
}

async fn longshore(url: &str, stream: &str, count: u64) -> u64 {
    let config = JetStreamConfig::new(url, stream, CONSUMER).expires(Duration::from_millis(200));
    let countdown = Arc::new(Countdown::new(count as usize));
    let pipeline = Pipeline::builder(
        JetStreamSource::connect(config).await.unwrap(),
        Nothing(countdown.clone()),
    )
    .processors(Processors::new(TASKS).max_demand(DEMAND))
    .start()
    .unwrap();
    // The stream never ends: stop once every message is handled; the shutdown
    // acknowledges the last chunks.
    countdown.finished().await;
    pipeline.shutdown().await.unwrap().successful
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let (case, url, count) = (&args[i + 1], &args[i + 2], args[i + 3].parse::<u64>().unwrap());
        let stream = format!("BENCH{}", std::process::id());
        let runtime = support::runtime();
        let (rate, done) = runtime.block_on(async {
            let context = common::context(url).await;
            common::make_stream(&context, &stream).await;
            let payload = "x".repeat(100);
            common::publish(&context, &stream, (0..count).map(|_| payload.clone())).await;
            let started = Instant::now();
            let done = match case.as_str() {
                "raw" => raw(url, &stream, count).await,
                _ => longshore(url, &stream, count).await,
            };
            let rate = count as f64 / started.elapsed().as_secs_f64();
            context.delete_stream(&stream).await.unwrap();
            (rate, done)
        });
        assert!(done >= count, "{case}: every message");
        support::report(&[rate, support::peak_rss_mb()]);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let count: u64 = std::env::var("LONGSHORE_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(if full { 200_000 } else { 2_000 });
    let rounds = if full { 5 } else { 1 };
    let server = common::Nats::start();
    let url = server.url();
    let (mut ratios, mut raw_rates, mut our_rates, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), [0.0f64; 2]);
    for round in 0..rounds {
        let mut this = [0.0; 2];
        for turn in 0..2 {
            let at = (turn + round) % 2;
            let case = ["raw", "longshore"][at];
            let v = support::run_child(&["--case", case, &url, &count.to_string()], &[]);
            this[at] = v[0];
            rss[at] = rss[at].max(v[1]);
        }
        raw_rates.push(this[0]);
        our_rates.push(this[1]);
        ratios.push(this[1] / this[0]);
    }
    println!(
        "BENCH case=nats ratio={:.2} msgs_per_s={:.0} raw_msgs_per_s={:.0} peak_rss_mb={:.1} raw_peak_rss_mb={:.1} messages={count} rounds={rounds}",
        median(ratios),
        median(our_rates),
        median(raw_rates),
        rss[1],
        rss[0],
    );
}
