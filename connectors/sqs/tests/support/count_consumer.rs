//! Test support, not an example: a consumer process for the kill -9 tests. It consumes a
//! queue and appends each handled body, one per line, to a file (one `write` per batch,
//! so a kill never leaves half a batch), until SIGTERM. The endpoint and credentials
//! come from the environment (`AWS_ENDPOINT_URL_SQS`, ...).
//!
//! Usage: sqs-count-consumer QUEUE OUTPUT [PANIC_PERCENT]

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use longshore::{BatchInfo, Batcher, BoxError, Handler, Pipeline, Processors, RetryPolicy};
use longshore_sqs::{SqsConfig, SqsMessage, SqsMetadata, SqsSource};

struct AppendToFile {
    file: std::sync::Mutex<std::fs::File>,
    /// Percent of first attempts that panic.
    panic_percent: u32,
    /// A slow sink: each batch waits this long (`LONGSHORE_CHAOS_SINK_MS`).
    sink_latency: Duration,
}

impl Handler for AppendToFile {
    type Item = longshore_sqs::Bytes;
    type Metadata = SqsMetadata;

    async fn handle_message(&self, message: &mut SqsMessage) -> Result<(), BoxError> {
        let n: u64 = message.metadata().body().parse()?;
        if message.attempt() == 1 && n % 100 < u64::from(self.panic_percent) {
            panic!("handler panics on {n}");
        }
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [SqsMessage], _: &BatchInfo) -> Result<(), BoxError> {
        let mut lines = String::with_capacity(batch.len() * 8);
        for message in batch.iter() {
            lines.push_str(message.metadata().body());
            lines.push('\n');
        }
        tokio::time::sleep(self.sink_latency).await;
        self.file.lock().unwrap().write_all(lines.as_bytes())?;
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (queue, output, panic_percent) = match args.as_slice() {
        [queue, output] => (queue, output, 0),
        [queue, output, percent] => (queue, output, percent.parse()?),
        _ => return Err("usage: sqs-count-consumer QUEUE OUTPUT [PANIC_PERCENT]".into()),
    };
    let file = OpenOptions::new().create(true).append(true).open(output)?;
    // A short timeout: what a killed consumer held comes back within seconds.
    let config = SqsConfig::new(queue.as_str())
        .visibility_timeout(Duration::from_secs(4))
        .wait_time(Duration::from_secs(1));
    let source = SqsSource::connect(config).await?;
    let handler = AppendToFile {
        file: std::sync::Mutex::new(file),
        panic_percent,
        sink_latency: consumer::sink_latency(),
    };
    let pipeline = Pipeline::builder(source, handler)
        .processors(Processors::new(4).max_demand(20))
        .batcher(
            Batcher::new("file")
                .batch_size(50)
                .batch_timeout(Duration::from_millis(20)),
        )
        .retry(RetryPolicy::new(3).initial_backoff(Duration::from_secs(1)))
        .shutdown_deadline(Duration::from_secs(10))
        .start()?;
    consumer::report(&pipeline);
    pipeline.run_until_signal().await?;
    Ok(())
}
