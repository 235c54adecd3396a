//! Test support, not an example: a consumer process for the kill -9 and restart checks.
//! It consumes a stream through a durable consumer and appends each handled payload's id
//! (`id` or `id,key`), one per line, to a file (one `write` per batch, so a kill never
//! leaves half a batch), until SIGTERM. An `ack_wait` of 2 s: what a killed consumer
//! held comes back soon.
//!
//! Usage: nats-count-consumer URL STREAM CONSUMER OUTPUT

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use longshore::{BatchInfo, Batcher, BoxError, Handler, Pipeline, Processors, RetryPolicy};
use longshore_nats::{JetStreamConfig, JetStreamMessage, JetStreamMetadata, JetStreamSource};

struct AppendToFile {
    file: std::sync::Mutex<std::fs::File>,
    sink_latency: Duration,
}

impl Handler for AppendToFile {
    type Item = longshore_nats::Bytes;
    type Metadata = JetStreamMetadata;

    async fn handle_message(&self, _: &mut JetStreamMessage) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [JetStreamMessage], _: &BatchInfo) -> Result<(), BoxError> {
        let mut lines = Vec::with_capacity(batch.len() * 8);
        for message in batch.iter() {
            let id = message.data().split(|&b| b == b',').next().unwrap_or_default();
            lines.extend_from_slice(id);
            lines.push(b'\n');
        }
        tokio::time::sleep(self.sink_latency).await;
        self.file.lock().unwrap().write_all(&lines)?;
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, stream, name, output] = args.as_slice() else {
        return Err("usage: nats-count-consumer URL STREAM CONSUMER OUTPUT".into());
    };
    let file = OpenOptions::new().create(true).append(true).open(output)?;
    let config = JetStreamConfig::new(url.as_str(), stream.as_str(), name.as_str())
        .expires(Duration::from_millis(200))
        .ack_wait(Duration::from_secs(2));
    let source = JetStreamSource::connect(config).await?;
    let handler = AppendToFile {
        file: std::sync::Mutex::new(file),
        sink_latency: consumer::sink_latency(),
    };
    let pipeline = Pipeline::builder(source, handler)
        .processors(Processors::new(4).max_demand(20))
        .batcher(
            Batcher::new("file")
                .batch_size(50)
                .batch_timeout(Duration::from_millis(20)),
        )
        .retry(RetryPolicy::new(3).initial_backoff(Duration::from_millis(200)))
        .shutdown_deadline(Duration::from_secs(10))
        .start()?;
    consumer::report(&pipeline);
    pipeline.run_until_signal().await?;
    Ok(())
}
