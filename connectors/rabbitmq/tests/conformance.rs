//! The source contract (`longshore::testing::conformance`) against a real RabbitMQ
//! server (`rabbitmq-server` on a loopback port): no more delivered than the prefetch,
//! each message acknowledged once, a failure tried again in the pipeline, messages left
//! at shutdown requeued at once, and a consumer process killed with `kill -9` losing
//! nothing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{channel, declare, depth, publish, RabbitMq};
use longshore::testing::conformance::{Broker, Conformance, Declared, Published};
use longshore::{BoxError, Message};
use longshore_rabbitmq::lapin::types::FieldTable;
use longshore_rabbitmq::lapin::{Channel, Connection};
use longshore_rabbitmq::{Bytes, RabbitMqConfig, RabbitMqMetadata, RabbitMqSource};

const QUEUE: &str = "conformance";
/// The consumer's prefetch when no pipeline told it its bound (the source's default):
/// what it may take with no demand.
const PREFETCH: u16 = 64;

struct Queue {
    server: RabbitMq,
    connection: Connection,
    channel: Channel,
    /// How many the last publish wrote: with the queue settled before, what is not
    /// ready of them was delivered to a consumer.
    last_published: AtomicUsize,
}

impl Broker for Queue {
    type Source = RabbitMqSource;

    fn declared(&self) -> Declared {
        Declared::new().prefetch(usize::from(PREFETCH))
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        self.last_published.store(messages.len(), Ordering::Relaxed);
        let payloads: Vec<String> = messages.iter().map(|m| m.to_text()).collect();
        publish(&self.channel, QUEUE, payloads).await;
        Ok(())
    }

    async fn source(&self) -> Result<RabbitMqSource, BoxError> {
        let config = RabbitMqConfig::new(self.server.url(), QUEUE);
        Ok(RabbitMqSource::connect(config).await?)
    }

    fn identify(&self, message: &Message<Bytes, RabbitMqMetadata>) -> Published {
        Published::from_text(message.data())
    }

    /// Delivered and not acknowledged, as the server counts it: the last publish less
    /// what is still ready (nothing is acknowledged while the check watches).
    async fn taken(&self, _source: &RabbitMqSource) -> Result<usize, BoxError> {
        let (ready, _) = depth(&self.connection, QUEUE).await;
        Ok(self
            .last_published
            .load(Ordering::Relaxed)
            .saturating_sub(ready as usize))
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        let server = &self.server;
        let counts = tokio::task::block_in_place(|| server.counts(QUEUE));
        Ok(counts == Some((0, 0)))
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rabbitmq-count-consumer"));
        command
            // Slow enough that the kill lands mid-stream (see `Broker::consumer`).
            .env("LONGSHORE_CHAOS_SINK_MS", "20")
            .arg(self.server.url())
            .arg(QUEUE)
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_keeps_the_source_contract() {
    let server = RabbitMq::start();
    let (connection, channel) = channel(&server.url()).await;
    declare(&channel, QUEUE, FieldTable::default()).await;
    let report = Conformance::new(Queue {
        server,
        connection,
        channel,
        last_published: AtomicUsize::new(0),
    })
    .messages(200)
    .timeout(std::time::Duration::from_secs(60))
    .run()
    .await
    .unwrap();
    println!("CONFORMANCE rabbitmq {report:?}");
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
