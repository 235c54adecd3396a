//! What the chaos tests' consumer processes share: a slow sink on request, and their
//! reports (the in-flight bound on stdout, progress on stderr). Included by each
//! connector's consumer binary (`#[path]`), not a crate.

#![allow(unreachable_pub)]

use std::time::Duration;

use longshore::Pipeline;

/// A slow sink: each batch waits this long (`LONGSHORE_CHAOS_SINK_MS`, default 0).
pub fn sink_latency() -> Duration {
    let millis = std::env::var("LONGSHORE_CHAOS_SINK_MS")
        .ok()
        .and_then(|ms| ms.parse().ok());
    Duration::from_millis(millis.unwrap_or(0))
}

/// Prints `max_in_flight=<n>` for the test, then the pipeline's counts every 500 ms on
/// stderr (the log beside the output).
pub fn report(pipeline: &Pipeline) {
    println!("max_in_flight={}", pipeline.stats().get().max_in_flight);
    let stats = pipeline.stats();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprintln!("{:?}", stats.get());
        }
    });
}
