//! The source contract (`longshore::testing::conformance`) against a real NATS server
//! with JetStream (`nats-server -js` on a loopback port): messages fetched for the
//! demand, acknowledged once, a failure nak'ed and delivered again with a higher count,
//! messages left at shutdown delivered again at once, and a consumer process killed with
//! `kill -9` losing nothing.

mod common;

use std::time::Duration;

use common::{context, make_stream, publish, unfinished, Nats};
use longshore::testing::conformance::{Broker, Conformance, Declared, Published};
use longshore::{BoxError, Message};
use longshore_nats::async_nats::jetstream::Context;
use longshore_nats::{Bytes, JetStreamConfig, JetStreamMetadata, JetStreamSource};

const STREAM: &str = "CONFORMANCE";
const CONSUMER: &str = "checks";

struct Stream {
    server: Nats,
    context: Context,
}

impl Broker for Stream {
    type Source = JetStreamSource;

    fn declared(&self) -> Declared {
        Declared::new()
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        let payloads: Vec<String> = messages.iter().map(|m| m.to_text()).collect();
        publish(&self.context, STREAM, payloads).await;
        Ok(())
    }

    async fn source(&self) -> Result<JetStreamSource, BoxError> {
        let config =
            JetStreamConfig::new(self.server.url(), STREAM, CONSUMER).expires(Duration::from_millis(200));
        Ok(JetStreamSource::connect(config).await?)
    }

    fn identify(&self, message: &Message<Bytes, JetStreamMetadata>) -> Published {
        Published::from_text(message.data())
    }

    async fn taken(&self, source: &JetStreamSource) -> Result<usize, BoxError> {
        Ok(source.held())
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        Ok(unfinished(&self.context, STREAM, CONSUMER).await == 0)
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_nats-count-consumer"));
        command
            // Slow enough that the kill lands mid-stream (see `Broker::consumer`).
            .env("LONGSHORE_CHAOS_SINK_MS", "20")
            .arg(self.server.url())
            .arg(STREAM)
            .arg(CONSUMER)
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_the_source_contract() {
    let server = Nats::start();
    let context = context(&server.url()).await;
    make_stream(&context, STREAM).await;
    let report = Conformance::new(Stream { server, context })
        .messages(200)
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .unwrap();
    println!("CONFORMANCE nats {report:?}");
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
