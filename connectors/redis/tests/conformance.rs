//! The source contract (`longshore::testing::conformance`) against a real Redis 7
//! (`redis-server` on a loopback port): entries read for the demand, acknowledged once,
//! a failure retried, entries left at shutdown taken back at once by the consumer
//! started again under the same name, and a consumer process killed with `kill -9`
//! losing nothing.

mod common;

use std::time::Duration;

use common::{add, connection, unfinished, Redis};
use longshore::testing::conformance::{Broker, Conformance, Declared, Published};
use longshore::{BoxError, Message};
use longshore_redis::redis::aio::MultiplexedConnection;
use longshore_redis::{Bytes, RedisStreamConfig, RedisStreamMetadata, RedisStreamSource};

struct Stream {
    server: Redis,
    connection: MultiplexedConnection,
}

const STREAM: &str = "conformance";
const GROUP: &str = "checks";

impl Broker for Stream {
    type Source = RedisStreamSource;

    fn declared(&self) -> Declared {
        Declared::new()
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        let mut connection = self.connection.clone();
        add(&mut connection, STREAM, messages.iter().map(|m| m.to_text())).await;
        Ok(())
    }

    async fn source(&self) -> Result<RedisStreamSource, BoxError> {
        // The same consumer name each time: a consumer started again.
        let config = RedisStreamConfig::new(self.server.url(), STREAM, GROUP)
            .consumer("checks")
            .block(Duration::from_millis(200));
        Ok(RedisStreamSource::connect(config).await?)
    }

    fn identify(&self, message: &Message<Bytes, RedisStreamMetadata>) -> Published {
        Published::from_text(message.data())
    }

    async fn taken(&self, source: &RedisStreamSource) -> Result<usize, BoxError> {
        Ok(source.held())
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        let mut connection = self.connection.clone();
        Ok(unfinished(&mut connection, STREAM, GROUP).await == 0)
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_redis-count-consumer"));
        command
            // Slow enough that the kill lands mid-stream (see `Broker::consumer`).
            .env("LONGSHORE_CHAOS_SINK_MS", "20")
            .arg(self.server.url())
            .arg(STREAM)
            .arg(GROUP)
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_the_source_contract() {
    let server = Redis::start();
    let connection = connection(&server.url()).await;
    let report = Conformance::new(Stream { server, connection })
        .messages(200)
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .unwrap();
    println!("CONFORMANCE redis {report:?}");
    assert_eq!(
        report.passed,
        [
            "demand_is_never_exceeded",
            "nothing_is_taken_without_demand",
            "each_message_is_acknowledged_once",
            "a_failed_message_is_tried_again",
            "messages_not_finished_are_released_at_shutdown",
            "a_consumer_killed_with_sigkill_loses_nothing"
        ]
    );
}
