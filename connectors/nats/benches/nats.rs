//! The JetStream source against a raw async-nats loop on the same server, in the same
//! run, each in a process of its own, in alternated rounds (median ratio):
//!
//! - `raw`: two tasks on one durable pull consumer (explicit acks, as the source's),
//!   each fetching 64 messages at a time and acknowledging each: the hand-written
//!   consumer, as tight as it gets;
//! - `longshore`: `JetStreamSource` under two producers (`source_concurrency` 2, two
//!   fetches in flight like the raw side's) and two processors of `max_demand` 64, a
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
use longshore_nats::async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use longshore_nats::{JetStreamConfig, JetStreamSource};

const DEMAND: usize = 64;
const TASKS: usize = 2;
const CONSUMER: &str = "bench";

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
    support::consume(
        JetStreamSource::connect(config).await.unwrap(),
        count,
        TASKS,
        DEMAND,
        TASKS,
    )
    .await
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
                // The stream made and nothing read: what the other cases' instruction
                // counts include besides reading.
                "fill" => count,
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
    let (count, rounds) = support::size(&args, 200_000);
    let server = common::Nats::start();
    let url = server.url();
    support::raw_against_longshore("nats", &url, count, rounds);
}
