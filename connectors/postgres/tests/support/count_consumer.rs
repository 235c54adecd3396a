//! Test support, not an example: a consumer process for the kill -9 and restart checks.
//! It consumes a queue of the queue table and appends each handled payload's id to an
//! output file (`AppendIds`), until SIGTERM. Leases of 2 s: a killed consumer's rows
//! come back soon.
//!
//! Usage: postgres-count-consumer URL QUEUE OUTPUT

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::time::Duration;

use longshore::BoxError;
use longshore_postgres::{PgQueueConfig, PgQueueSource};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, output] = args.as_slice() else {
        return Err("usage: postgres-count-consumer URL QUEUE OUTPUT".into());
    };
    let config = PgQueueConfig::new(url.as_str())
        .queue(queue.as_str())
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(200));
    consumer::run_until_signal(PgQueueSource::connect(config).await?, output).await
}
