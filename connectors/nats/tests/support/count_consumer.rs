//! Test support, not an example: a consumer process for the kill -9 and restart checks.
//! It consumes a stream through a durable consumer and appends each handled payload's
//! id to an output file (`AppendIds`), until SIGTERM. An `ack_wait` of 2 s: what a
//! killed consumer held comes back soon.
//!
//! Usage: nats-count-consumer URL STREAM CONSUMER OUTPUT

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::time::Duration;

use longshore::BoxError;
use longshore_nats::{JetStreamConfig, JetStreamSource};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, stream, name, output] = args.as_slice() else {
        return Err("usage: nats-count-consumer URL STREAM CONSUMER OUTPUT".into());
    };
    let config = JetStreamConfig::new(url.as_str(), stream.as_str(), name.as_str())
        .expires(Duration::from_millis(200))
        .ack_wait(Duration::from_secs(2));
    consumer::run_until_signal(JetStreamSource::connect(config).await?, output).await
}
