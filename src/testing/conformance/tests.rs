//! Each check against a queue with visibility (as SQS has), whole and then broken in
//! the one way the check is there to catch.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::source::{Acknowledger, PartitionBy};

/// How a [`Queue`]'s source is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    /// Returns one message more than asked for.
    OverFetches,
    /// Takes everything from the queue as soon as it is opened.
    Prefetches,
    /// Delivers every other message twice.
    DeliversTwice,
    /// Does nothing with messages released at shutdown: they stay invisible.
    ForgetsToRelease,
    /// Declares an order by key, and does not give the pipeline its key.
    LosesItsOrder,
}

#[derive(Debug, Default)]
struct State {
    visible: VecDeque<Published>,
    /// Delivered and not acknowledged, by receipt.
    in_flight: HashMap<u64, Published>,
    next_receipt: u64,
}

impl State {
    fn deliver(&mut self, published: Published) -> Message<Published> {
        let receipt = self.next_receipt;
        self.next_receipt += 1;
        self.in_flight.insert(receipt, published);
        Message::new(published).with_ack_ref(receipt)
    }
}

/// A queue in memory with SQS's visibility: a delivery is invisible until it is
/// acknowledged (deleted) or released (visible again). Ordered, it keeps order by key.
#[derive(Debug, Default)]
struct Queue {
    state: Arc<Mutex<State>>,
    defect: Option<Defect>,
    ordered: bool,
}

impl Queue {
    fn broken(defect: Defect) -> Self {
        Queue {
            defect: Some(defect),
            ordered: defect == Defect::LosesItsOrder,
            ..Queue::default()
        }
    }

    fn ordered() -> Self {
        Queue {
            ordered: true,
            ..Queue::default()
        }
    }
}

struct QueueSource {
    state: Arc<Mutex<State>>,
    /// What a prefetching source took when it was opened.
    buffer: Mutex<VecDeque<Published>>,
    defect: Option<Defect>,
    ordered: bool,
}

struct QueueAcks {
    state: Arc<Mutex<State>>,
    defect: Option<Defect>,
}

impl Source for QueueSource {
    type Data = Published;
    type Metadata = ();
    type Acknowledger = QueueAcks;

    fn acknowledger(&self) -> QueueAcks {
        QueueAcks {
            state: self.state.clone(),
            defect: self.defect,
        }
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<Published>>>, BoxError> {
        let take = demand.get() + usize::from(self.defect == Some(Defect::OverFetches));
        loop {
            {
                let mut state = lock(&self.state);
                let mut buffer = lock(&self.buffer);
                let mut batch = Vec::new();
                while batch.len() < take {
                    let Some(published) = buffer.pop_front().or_else(|| state.visible.pop_front()) else {
                        break;
                    };
                    if self.defect == Some(Defect::DeliversTwice) && published.id % 2 == 0 {
                        batch.push(state.deliver(published));
                    }
                    batch.push(state.deliver(published));
                }
                if !batch.is_empty() {
                    return Ok(Some(batch));
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn partition_by(&self) -> Option<PartitionBy<Published, ()>> {
        let keyed = self.ordered && self.defect != Some(Defect::LosesItsOrder);
        keyed.then(|| {
            Arc::new(|message: &Message<Published>| message.data().key) as PartitionBy<Published, ()>
        })
    }
}

impl Acknowledger<()> for QueueAcks {
    async fn ack<T: Send + 'static>(&self, successful: Vec<Message<T>>, failed: Vec<Message<T>>) {
        let mut state = lock(&self.state);
        for message in successful.iter().chain(&failed) {
            state.in_flight.remove(&message.ack_ref());
        }
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<Message<T>>) {
        if self.defect == Some(Defect::ForgetsToRelease) {
            return;
        }
        let mut state = lock(&self.state);
        for message in messages.iter().rev() {
            if let Some(published) = state.in_flight.remove(&message.ack_ref()) {
                state.visible.push_front(published);
            }
        }
    }
}

impl Broker for Queue {
    type Source = QueueSource;

    fn declared(&self) -> Declared {
        Declared::new().ordered(self.ordered)
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        lock(&self.state).visible.extend(messages);
        Ok(())
    }

    async fn source(&self) -> Result<QueueSource, BoxError> {
        let buffer = match self.defect {
            Some(Defect::Prefetches) => std::mem::take(&mut lock(&self.state).visible),
            _ => VecDeque::new(),
        };
        Ok(QueueSource {
            state: self.state.clone(),
            buffer: Mutex::new(buffer),
            defect: self.defect,
            ordered: self.ordered,
        })
    }

    fn identify(&self, message: &Message<Published>) -> Published {
        *message.data()
    }

    async fn taken(&self, source: &QueueSource) -> Result<usize, BoxError> {
        let in_flight = lock(&source.state).in_flight.len();
        Ok(in_flight + lock(&source.buffer).len())
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        let state = lock(&self.state);
        Ok(state.visible.is_empty() && state.in_flight.is_empty())
    }
}

fn checks<B: Broker>(broker: B) -> Conformance<B>
where
    <B::Source as Source>::Metadata: Sync,
{
    Conformance::new(broker)
        .messages(40)
        .timeout(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_queue_passes_every_check() {
    let report = checks(Queue::default()).run().await.unwrap();
    assert_eq!(report.passed.len(), 5, "{report:?}");
    assert_eq!(
        report.not_applicable,
        [
            (
                "a_consumer_killed_with_sigkill_loses_nothing",
                "the source has no consumer process"
            ),
            ("the_declared_order_holds", "the source declares no order")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_queue_passes_every_check() {
    let report = checks(Queue::ordered()).run().await.unwrap();
    assert_eq!(report.passed.len(), 6, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_loses_its_declared_order_fails_the_order_check() {
    let error = checks(Queue::broken(Defect::LosesItsOrder))
        .the_declared_order_holds()
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("the_declared_order_holds: "),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_source_passes_every_check_that_applies() {
    let report = checks(MemoryBroker::default()).run().await.unwrap();
    assert_eq!(report.passed.len(), 5, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_returning_more_than_asked_fails_the_demand_check() {
    let error = checks(Queue::broken(Defect::OverFetches))
        .demand_is_never_exceeded()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "demand_is_never_exceeded: asked for 1, received 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_takes_without_demand_fails_the_prefetch_check() {
    let error = checks(Queue::broken(Defect::Prefetches))
        .nothing_is_taken_without_demand()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "nothing_is_taken_without_demand: holds 40 messages with no demand; it declares at most 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_delivers_twice_fails_the_once_check() {
    let error = checks(Queue::broken(Defect::DeliversTwice))
        .each_message_is_acknowledged_once()
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("each_message_is_acknowledged_once: message ")
            && error.to_string().ends_with("was acknowledged 2 times"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_forgets_to_release_fails_the_release_check() {
    let error = checks(Queue::broken(Defect::ForgetsToRelease))
        .messages_not_finished_are_released_at_shutdown()
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with(
            "messages_not_finished_are_released_at_shutdown: released messages not delivered again at once"
        ),
        "{error}"
    );
}

/// A queue in a file, consumed by a shell process: for the `kill -9` check alone.
struct FileQueue {
    dir: std::path::PathBuf,
    /// What the consumer process runs, in `dir`: it reads `queue`, appends to the output
    /// (`$1`) and empties `queue` (acknowledges everything).
    script: &'static str,
}

impl FileQueue {
    fn new(name: &str, script: &'static str) -> Self {
        let dir = std::env::temp_dir().join(format!("longshore-file-queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FileQueue { dir, script }
    }

    fn queue(&self) -> std::path::PathBuf {
        self.dir.join("queue")
    }
}

impl Broker for FileQueue {
    type Source = QueueSource;

    fn declared(&self) -> Declared {
        Declared::new()
    }

    async fn publish(&self, messages: Vec<Published>) -> Result<(), BoxError> {
        let lines: String = messages.iter().map(|m| format!("{}\n", m.id)).collect();
        std::fs::write(self.queue(), lines)?;
        Ok(())
    }

    async fn source(&self) -> Result<QueueSource, BoxError> {
        Err("only the kill check runs on a file queue".into())
    }

    fn identify(&self, message: &Message<Published>) -> Published {
        *message.data()
    }

    async fn taken(&self, _source: &QueueSource) -> Result<usize, BoxError> {
        Ok(0)
    }

    async fn settled(&self) -> Result<bool, BoxError> {
        Ok(std::fs::read(self.queue()).map_or(true, |queue| queue.is_empty()))
    }

    fn consumer(&self, output: &std::path::Path) -> Option<std::process::Command> {
        let mut command = std::process::Command::new("sh");
        command
            .current_dir(&self.dir)
            .arg("-c")
            .arg(self.script)
            .arg("consumer")
            .arg(output);
        Some(command)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_handles_everything_it_acknowledges_passes_the_kill_check() {
    // Handles a half, then the rest, then acknowledges all: killed between, it handles the
    // first half again.
    let queue = FileQueue::new(
        "whole",
        r#"head -n 100 queue >> "$1"; sleep 1; tail -n +101 queue >> "$1"; : > queue"#,
    );
    let duplicates = checks(queue)
        .a_consumer_killed_with_sigkill_loses_nothing()
        .await
        .unwrap();
    assert_eq!(duplicates, Some(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_acknowledges_what_it_did_not_handle_fails_the_kill_check() {
    // Acknowledges all on receipt, then handles: what it had not handled when killed is
    // lost.
    let queue = FileQueue::new(
        "lossy",
        r#"cp queue taken; : > queue; head -n 50 taken >> "$1"; sleep 1; tail -n +51 taken >> "$1""#,
    );
    let error = checks(queue)
        .a_consumer_killed_with_sigkill_loses_nothing()
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("a_consumer_killed_with_sigkill_loses_nothing: 150 messages lost"),
        "{error}"
    );
}
