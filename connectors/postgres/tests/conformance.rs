//! The source contract (`longshore::testing::conformance`) against a real PostgreSQL 15
//! (initdb in a temporary folder, on a loopback port): rows leased on demand, deleted
//! once handled, retried through their `visible_at`, released at shutdown, and a
//! consumer process killed with `kill -9` losing nothing.

mod common;

use std::time::Duration;

use common::{client, enqueue, rows, server, Postgres};
use longshore::testing::conformance::{Broker, Conformance, Declared, Published};
use longshore::{BoxError, Message};
use longshore_postgres::tokio_postgres::Client;
use longshore_postgres::{Bytes, PgQueueConfig, PgQueueMetadata, PgQueueSource};

struct Queue {
    server: Postgres,
    client: Client,
    name: String,
}

impl Broker for Queue {
    type Source = PgQueueSource;

    fn declared(&self) -> Declared {
        Declared::new()
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        let payloads = messages.iter().map(|m| m.to_text().into_bytes()).collect();
        enqueue(&self.client, &self.name, payloads).await;
        Ok(())
    }

    async fn source(&self) -> Result<PgQueueSource, BoxError> {
        let config = PgQueueConfig::new(self.server.url())
            .queue(self.name.as_str())
            .poll_interval(Duration::from_millis(200));
        Ok(PgQueueSource::connect(config).await?)
    }

    fn identify(&self, message: &Message<Bytes, PgQueueMetadata>) -> Published {
        Published::from_text(message.data())
    }

    async fn taken(&self, source: &PgQueueSource) -> Result<usize, BoxError> {
        Ok(source.held())
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        Ok(rows(&self.client, &self.name).await == (0, 0))
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_postgres-count-consumer"));
        command
            // Slow enough that the kill lands mid-stream (see `Broker::consumer`).
            .env("LONGSHORE_CHAOS_SINK_MS", "20")
            .arg(self.server.url())
            .arg(&self.name)
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_table_keeps_the_source_contract() {
    let server = server().await;
    let client = client(&server.url()).await;
    let queue = Queue {
        server,
        client,
        name: "conformance".to_owned(),
    };
    let report = Conformance::new(queue)
        .messages(200)
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .unwrap();
    println!("CONFORMANCE postgres {report:?}");
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
