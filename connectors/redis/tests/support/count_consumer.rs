//! Test support, not an example: a consumer process for the kill -9 and restart checks.
//! It consumes a stream as consumer `counter` of a group and appends each handled
//! payload's id to an output file (`AppendIds`), until SIGTERM. Started again, it takes
//! back its own unacknowledged entries at once (claim_idle is 60 s: no claim does it for
//! it).
//!
//! Usage: redis-count-consumer URL STREAM GROUP OUTPUT

#[path = "../../../../test-support/consumer.rs"]
mod consumer;

use std::time::Duration;

use longshore::BoxError;
use longshore_redis::{RedisStreamConfig, RedisStreamSource};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, stream, group, output] = args.as_slice() else {
        return Err("usage: redis-count-consumer URL STREAM GROUP OUTPUT".into());
    };
    let config = RedisStreamConfig::new(url.as_str(), stream.as_str(), group.as_str())
        .consumer("counter")
        .block(Duration::from_millis(200))
        .claim_idle(Duration::from_secs(60));
    consumer::run_until_signal(RedisStreamSource::connect(config).await?, output).await
}
