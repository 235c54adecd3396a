//! The source contract (`longshore::testing::conformance`) against LocalStack: a standard
//! queue, and a FIFO queue whose groups keep their order.

mod common;

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use common::{client, config, create_queue, depth, send, unique, Watchdog, TEST_LIMIT};
use longshore::testing::conformance::{Broker, Conformance, Declared, Published};
use longshore::{BoxError, Message};
use longshore_sqs::{Bytes, SqsMetadata, SqsSource};

/// A queue on LocalStack: bodies are ids (as the consumer process reads them), the key the
/// FIFO group.
struct Queue {
    client: Client,
    url: String,
    fifo: bool,
}

impl Queue {
    /// A queue whose visibility timeout (30 s) is far longer than the 10 s in which the
    /// release check wants released messages back.
    async fn new(fifo: bool) -> Self {
        let client = client().await;
        let mut attributes = vec![(QueueAttributeName::VisibilityTimeout, "30")];
        let mut name = unique("conformance");
        if fifo {
            attributes.push((QueueAttributeName::FifoQueue, "true"));
            name.push_str(".fifo");
        }
        let url = create_queue(&client, &name, &attributes).await;
        Queue { client, url, fifo }
    }
}

impl Broker for Queue {
    type Source = SqsSource;

    fn declared(&self) -> Declared {
        Declared::new().ordered(self.fifo)
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        let keys: std::collections::HashMap<String, u64> =
            messages.iter().map(|m| (m.id.to_string(), m.key)).collect();
        let group = |body: &str| keys[body].to_string();
        let bodies = messages.iter().map(|m| m.id.to_string());
        send(&self.client, &self.url, bodies, self.fifo.then_some(&group as _)).await;
        Ok(())
    }

    async fn source(&self) -> Result<SqsSource, BoxError> {
        Ok(SqsSource::connect(config(&self.url)).await?)
    }

    fn identify(&self, message: &Message<Bytes, SqsMetadata>) -> Published {
        let metadata = message.metadata();
        Published {
            id: metadata.body().parse().expect("an id"),
            // A standard queue has no groups, and keeps no order to check.
            key: metadata
                .group_id()
                .map_or(0, |group| group.parse().expect("a key")),
        }
    }

    async fn taken(&self, _source: &SqsSource) -> Result<usize, BoxError> {
        Ok(depth(&self.client, &self.url).await.1 as usize)
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sqs-count-consumer"));
        command
            // Slow enough that the kill lands mid-stream (see `Broker::consumer`).
            .env("LONGSHORE_CHAOS_SINK_MS", "20")
            .arg(&self.url)
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        Ok(depth(&self.client, &self.url).await == (0, 0))
    }
}

fn checks(queue: Queue) -> Conformance<Queue> {
    Conformance::new(queue)
        .messages(100)
        .timeout(Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_queue_keeps_the_source_contract() {
    let _watchdog = Watchdog::arm(TEST_LIMIT);
    let report = checks(Queue::new(false).await).run().await.unwrap();
    println!("CONFORMANCE sqs standard {report:?}");
    assert_eq!(report.passed.len(), 6, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queue_keeps_the_source_contract_and_its_groups_order() {
    let _watchdog = Watchdog::arm(TEST_LIMIT);
    let report = checks(Queue::new(true).await).run().await.unwrap();
    println!("CONFORMANCE sqs fifo {report:?}");
    assert_eq!(report.passed.len(), 7, "{report:?}");
}
