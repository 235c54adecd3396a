//! Memory against the backlog: the same slow pipeline (batches of 100 into a sink that
//! takes 5 ms each) in front of a backlog of 10,000 messages and of 10,000,000, each in a
//! process of its own for the same time; their peak RSS should be the same, since only
//! what demand asks for is ever fetched.
//!
//! The backlog stands where a broker keeps it: a source that makes each 1 KiB message
//! when it is asked for it. Prints `CHAOS case=backlog-memory ... rss_ratio=<x>`; under
//! `cargo test` a short smoke run.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use longshore::source::memory::MemorySource;
use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};

struct SlowSink;

impl Handler for SlowSink {
    type Item = Vec<u8>;
    type Metadata = ();

    async fn handle_message(&self, message: &mut Message<Vec<u8>>) -> Result<(), BoxError> {
        message.data_mut()[0] ^= 1;
        Ok(())
    }

    async fn handle_batch(&self, _batch: &mut [Message<Vec<u8>>], _info: &BatchInfo) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    }
}

/// Runs the pipeline over `backlog` messages for `run`, then shuts it down; the peak RSS.
fn run_case(backlog: u64, run: Duration) -> f64 {
    let runtime = support::runtime();
    runtime.block_on(async {
        let source = MemorySource::from_iter((0..backlog).map(|_| vec![0u8; 1024]));
        let pipeline = Pipeline::builder(source, SlowSink)
            .processors(Processors::new(2))
            .batcher(Batcher::new("sink").batch_size(100).concurrency(2))
            .start()
            .unwrap();
        tokio::time::sleep(run).await;
        let _ = pipeline.shutdown().await;
    });
    support::peak_rss_mb()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let backlog: u64 = args[i + 1].parse().unwrap();
        let run = Duration::from_millis(args[i + 2].parse().unwrap());
        support::report(&[run_case(backlog, run)]);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let run_ms = if full { "5000" } else { "500" };
    let (small, large) = (10_000u64, 10_000_000u64);
    let rss = |backlog: u64| support::run_child(&["--case", &backlog.to_string(), run_ms], &[])[0];
    let (rss_small, rss_large) = (rss(small), rss(large));
    let ratio = rss_large / rss_small;
    println!(
        "CHAOS case=backlog-memory backlog_small={small} backlog_large={large} \
         rss_small_mb={rss_small:.1} rss_large_mb={rss_large:.1} rss_ratio={ratio:.2}"
    );
    assert!(ratio <= 1.1, "peak RSS grows with the backlog: {ratio:.2}");
}
