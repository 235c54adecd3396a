//! Test support, not an example: a consumer process for the kill -9 and restart checks.
//! It consumes a stream as consumer `counter` of a group and appends each handled
//! payload's id (`id` or `id,key`), one per line, to a file (one `write` per batch, so a
//! kill never leaves half a batch), until SIGTERM. Started again, it takes back its own
//! unacknowledged entries at once (claim_idle is 60 s: no claim does it for it).
//!
//! Usage: redis-count-consumer URL STREAM GROUP OUTPUT

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use longshore::{BatchInfo, Batcher, BoxError, Handler, Pipeline, Processors, RetryPolicy};
use longshore_redis::{RedisStreamConfig, RedisStreamMessage, RedisStreamMetadata, RedisStreamSource};

struct AppendToFile {
    file: std::sync::Mutex<std::fs::File>,
    sink_latency: Duration,
}

impl Handler for AppendToFile {
    type Item = longshore_redis::Bytes;
    type Metadata = RedisStreamMetadata;

    async fn handle_message(&self, _: &mut RedisStreamMessage) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [RedisStreamMessage], _: &BatchInfo) -> Result<(), BoxError> {
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
    let [url, stream, group, output] = args.as_slice() else {
        return Err("usage: redis-count-consumer URL STREAM GROUP OUTPUT".into());
    };
    let file = OpenOptions::new().create(true).append(true).open(output)?;
    let config = RedisStreamConfig::new(url.as_str(), stream.as_str(), group.as_str())
        .consumer("counter")
        .block(Duration::from_millis(200))
        .claim_idle(Duration::from_secs(60));
    let source = RedisStreamSource::connect(config).await?;
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
