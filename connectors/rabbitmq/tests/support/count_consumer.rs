//! Test support, not an example: a consumer process for the kill -9 and restart checks.
//! It consumes a queue and appends each handled payload's id to an output file
//! (`AppendIds`), until SIGTERM.
//!
//! Usage: rabbitmq-count-consumer URL QUEUE OUTPUT

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use longshore::BoxError;
use longshore_rabbitmq::{RabbitMqConfig, RabbitMqSource};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, output] = args.as_slice() else {
        return Err("usage: rabbitmq-count-consumer URL QUEUE OUTPUT".into());
    };
    let config = RabbitMqConfig::new(url.as_str(), queue.as_str());
    consumer::run_until_signal(RabbitMqSource::connect(config).await?, output).await
}
