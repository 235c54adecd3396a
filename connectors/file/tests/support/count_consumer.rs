//! Test support, not an example: a consumer process for the kill -9 checks. It reads a
//! file of ids (`id` or `id,key`), one a line, and appends each handled id, one per line, to an output
//! file (one `write` per batch, so a kill never leaves half a batch), until the file is
//! done (or SIGTERM, when followed).
//!
//! Usage: file-count-consumer INPUT OUTPUT [follow]

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use longshore::{BatchInfo, Batcher, BoxError, Handler, Pipeline, Processors};
use longshore_file::{FileConfig, FileMessage, FileMetadata, FileSource};

struct AppendToFile {
    file: std::sync::Mutex<std::fs::File>,
    sink_latency: Duration,
}

impl Handler for AppendToFile {
    type Item = longshore_file::Bytes;
    type Metadata = FileMetadata;

    async fn handle_message(&self, _: &mut FileMessage) -> Result<(), BoxError> {
        Ok(())
    }

    async fn handle_batch(&self, batch: &mut [FileMessage], _: &BatchInfo) -> Result<(), BoxError> {
        let mut lines = Vec::with_capacity(batch.len() * 8);
        for message in batch.iter() {
            // A record is `id` or `id,key`: the id is what the checks count.
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
    let (input, output, follow) = match args.as_slice() {
        [input, output] => (input, output, false),
        [input, output, follow] if follow == "follow" => (input, output, true),
        _ => return Err("usage: file-count-consumer INPUT OUTPUT [follow]".into()),
    };
    let file = OpenOptions::new().create(true).append(true).open(output)?;
    let config = FileConfig::new(input)
        .follow(follow)
        .poll_interval(Duration::from_millis(20))
        .max_unrecorded(500);
    let source = FileSource::open(config).await?;
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
        .shutdown_deadline(Duration::from_secs(10))
        .start()?;
    consumer::report(&pipeline);
    pipeline.run_until_signal().await?;
    Ok(())
}
