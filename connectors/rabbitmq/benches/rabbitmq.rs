//! The RabbitMQ source against a raw lapin loop on the same server, in the same run,
//! each in a process of its own, in alternated rounds (median ratio):
//!
//! - `raw`: one consumer with the same prefetch, reading deliveries as they come and
//!   acknowledging them with `multiple` every 32 (or when none is waiting): the
//!   hand-written consumer, as tight as it gets;
//! - `longshore`: `RabbitMqSource` under two processors of `max_demand` 64, a
//!   do-nothing handler, each message acknowledged after its chunk.
//!
//! Each round fills the queue first (not timed). Prints `BENCH case=rabbitmq ratio=<x>
//! ...` with peak RSS; `LONGSHORE_BENCH_MESSAGES` sets the message count (default
//! 200,000; under `cargo test` a short smoke run).
//!
//! Instructions per message, stable where the time is not: run one case under
//! `valgrind --tool=callgrind <bench binary> --case raw|longshore|fill <url> <count>` at
//! two counts; the difference per message, less the fill's (`fill` publishes and
//! consumes nothing), is the consumer's.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../../benches/support/mod.rs"]
mod support;

use std::time::Instant;

use futures_util::{FutureExt, StreamExt};
use longshore_rabbitmq::lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use longshore_rabbitmq::lapin::types::FieldTable;
use longshore_rabbitmq::{RabbitMqConfig, RabbitMqSource};

const DEMAND: usize = 64;
const TASKS: usize = 2;
/// Both sides' prefetch: what two processors of `max_demand` 64 hold.
const PREFETCH: u16 = 128;
/// The raw loop acknowledges this many deliveries at once.
const ACK_EVERY: u64 = 32;

/// The queue `queue` with `count` messages of 100 bytes.
async fn fill(url: &str, queue: &str, count: u64) {
    let (_connection, channel) = common::channel(url).await;
    common::declare(&channel, queue, FieldTable::default()).await;
    let payload = "x".repeat(100);
    common::publish(&channel, queue, (0..count).map(|_| payload.clone())).await;
}

async fn raw(url: &str, queue: &str, count: u64) -> u64 {
    let (_connection, channel) = common::channel(url).await;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Acknowledged through the channel, not awaited: the frame is queued on the first
    // poll, in order; nothing waits for it to be written.
    let ack = |tag: u64| {
        let _ = channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .now_or_never();
    };
    let (mut done, mut last, mut acked, mut waiting) = (0u64, 0u64, 0u64, None);
    while done < count {
        let delivery = match waiting.take() {
            Some(delivery) => delivery,
            None => consumer.next().await.unwrap().unwrap(),
        };
        std::hint::black_box(delivery.data.len());
        done += 1;
        last = delivery.delivery_tag;
        waiting = consumer.next().now_or_never().map(|next| next.unwrap().unwrap());
        // Every ACK_EVERY, and whenever none is waiting (the prefetch must not run dry).
        if done % ACK_EVERY == 0 || waiting.is_none() {
            ack(last);
            acked = last;
        }
    }
    if acked < last {
        ack(last);
    }
    // The last frames written before the connection closes.
    channel.close(200, "done".into()).await.unwrap();
    done
}

async fn longshore(url: &str, queue: &str, count: u64) -> u64 {
    let config = RabbitMqConfig::new(url, queue).prefetch(PREFETCH);
    support::consume(
        RabbitMqSource::connect(config).await.unwrap(),
        count,
        TASKS,
        DEMAND,
        1,
    )
    .await
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let (case, url, count) = (&args[i + 1], &args[i + 2], args[i + 3].parse::<u64>().unwrap());
        let queue = format!("bench-{}", std::process::id());
        let runtime = support::runtime();
        let (rate, done) = runtime.block_on(async {
            fill(url, &queue, count).await;
            let started = Instant::now();
            let done = match case.as_str() {
                "raw" => raw(url, &queue, count).await,
                // The fill alone, to take from the others' instruction counts.
                "fill" => count,
                _ => longshore(url, &queue, count).await,
            };
            (count as f64 / started.elapsed().as_secs_f64(), done)
        });
        assert_eq!(done, count, "{case}: every message");
        support::report(&[rate, support::peak_rss_mb()]);
        return;
    }
    let (count, rounds) = support::size(&args, 200_000);
    let server = common::RabbitMq::start();
    let url = server.url();
    support::raw_against_longshore("rabbitmq", &url, count, rounds);
}
