//! Test support, not an example: a consumer process for the kill -9 tests. It consumes a
//! topic and appends each handled payload, one per line, to a file (one `write` per batch,
//! so a kill never leaves half a batch), until SIGTERM.
//!
//! Usage: count-consumer BOOTSTRAP TOPIC GROUP OUTPUT

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use longshore::{BatchInfo, Batcher, BoxError, Handler, Pipeline, Processors};
use longshore_kafka::{KafkaConfig, KafkaMessage, KafkaMetadata, KafkaSource};

struct AppendToFile {
    file: std::sync::Mutex<std::fs::File>,
    /// A slow sink: each batch waits this long (`LONGSHORE_CHAOS_SINK_MS`).
    sink_latency: Duration,
}

impl Handler for AppendToFile {
    type Item = bytes::Bytes;
    type Metadata = KafkaMetadata;

    async fn handle_message(&self, message: &mut KafkaMessage) -> Result<(), BoxError> {
        message
            .metadata()
            .payload_str()
            .ok_or("not text")?
            .parse::<u64>()?;
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [KafkaMessage], _: &BatchInfo) -> Result<(), BoxError> {
        let mut lines = String::with_capacity(batch.len() * 8);
        for message in batch.iter() {
            lines.push_str(message.metadata().payload_str().unwrap_or_default());
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
    let [bootstrap, topic, group, output] = args.as_slice() else {
        return Err("usage: count-consumer BOOTSTRAP TOPIC GROUP OUTPUT".into());
    };
    let file = OpenOptions::new().create(true).append(true).open(output)?;
    let config = KafkaConfig::new(bootstrap.as_str(), group.as_str(), [topic.as_str()])
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500")
        .commit_interval(Duration::from_millis(20));
    let pipeline = Pipeline::builder(
        KafkaSource::new(config)?,
        AppendToFile {
            file: std::sync::Mutex::new(file),
            sink_latency: consumer::sink_latency(),
        },
    )
    .processors(Processors::new(4).max_demand(50).min_demand(25))
    .batcher(
        Batcher::new("file")
            .batch_size(100)
            .batch_timeout(Duration::from_millis(20)),
    )
    .shutdown_deadline(Duration::from_secs(10))
    .start()?;
    consumer::report(&pipeline);
    pipeline.run_until_signal().await?;
    Ok(())
}
