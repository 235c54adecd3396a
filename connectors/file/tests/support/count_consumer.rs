//! Test support, not an example: a consumer process for the kill -9 checks. It reads a
//! file of ids (`id` or `id,key`), one a line, and appends each handled id to an output
//! file (`AppendIds`), until the file is done (or SIGTERM, when followed).
//!
//! Usage: file-count-consumer INPUT OUTPUT [follow]

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::time::Duration;

use longshore::BoxError;
use longshore_file::{FileConfig, FileSource};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output, follow) = match args.as_slice() {
        [input, output] => (input, output, false),
        [input, output, follow] if follow == "follow" => (input, output, true),
        _ => return Err("usage: file-count-consumer INPUT OUTPUT [follow]".into()),
    };
    let config = FileConfig::new(input)
        .follow(follow)
        .poll_interval(Duration::from_millis(20))
        .max_unrecorded(500);
    consumer::run_until_signal(FileSource::open(config).await?, output).await
}
