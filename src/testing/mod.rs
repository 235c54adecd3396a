//! Testing helpers: push data through a real topology, get each message's outcome back.
//!
//! Like Broadway's `test_message`, these let a service test its [`Handler`](crate::Handler)
//! with the pipeline it runs in production (same processors, partitioning and batchers),
//! with no broker: build the pipeline on a [`TestSource`] instead of the real source.
//!
//! ```
//! use longshore::testing::TestSource;
//! use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline};
//!
//! struct Parse;
//! impl Handler for Parse {
//!     type Item = String;
//!     type Metadata = ();
//!     async fn handle_message(&self, message: &mut Message<String>) -> Result<(), BoxError> {
//!         message.data().parse::<u32>()?;
//!         Ok(())
//!     }
//!     async fn handle_batch(&self, _: &mut [Message<String>], _: &BatchInfo) -> Result<(), BoxError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (source, sender) = TestSource::new();
//! let pipeline = Pipeline::builder(source, Parse).batcher(Batcher::new("db")).start().unwrap();
//!
//! let outcome = sender.test_message("42".to_owned()).await;
//! assert!(outcome.successful);
//!
//! let outcomes = sender.test_batch(vec!["1".to_owned(), "one".to_owned()]).await;
//! assert!(outcomes[0].successful);
//! assert!(!outcomes[1].successful);
//! assert_eq!(outcomes[1].message.status().to_string(), "failed (error): invalid digit found in string");
//!
//! drop(sender); // the source is exhausted: the pipeline drains and stops
//! pipeline.wait().await.expect("the pipeline ends cleanly");
//! # }
//! ```

pub mod conformance;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::error::BoxError;
use crate::message::Message;
use crate::source::{Acknowledger, Source};

/// A source fed by a [`TestSender`], reporting every acknowledgement back to it.
///
/// Its messages hold data `D` and metadata `M`: `()` by default, or a connector's own
/// (`KafkaMetadata`, `SqsMetadata`), so that a handler written for that connector is
/// tested as it runs, with no broker. Each connector's docs show how to build its
/// metadata.
pub struct TestSource<D, M = ()> {
    input: tokio::sync::Mutex<mpsc::Receiver<Message<D, M>>>,
    waiting: Waiting<M>,
    acknowledged: Arc<AtomicU64>,
}

type Waiting<M> = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome<M>>>>>;

/// Sends test messages into a [`TestSource`] and awaits their outcomes. Dropping every
/// sender exhausts the source, so the pipeline drains and stops.
pub struct TestSender<D, M = ()> {
    tx: mpsc::Sender<Message<D, M>>,
    next_ref: Arc<AtomicU64>,
    waiting: Waiting<M>,
}

/// How the pipeline acknowledged one test message.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome<M = ()> {
    /// The message as acknowledged: its status, batcher, batch key and metadata, and its
    /// data as the last stage left it (read it with [`Outcome::data`]).
    pub message: Message<Box<dyn Any + Send>, M>,
    /// `true` when acknowledged as successful, `false` when as failed.
    pub successful: bool,
    /// The order of its acknowledgement: 0 for the first message the source
    /// acknowledged, 1 for the next, and so on. Tests of order compare these.
    pub acknowledged: u64,
}

impl<M> Outcome<M> {
    /// The message's data as the last stage left it, if it is a `T`: the handler's
    /// [`Item`](crate::Handler::Item) (`None` for a message that did not decode).
    pub fn data<T: 'static>(&self) -> Option<&T> {
        self.message.data().downcast_ref()
    }
}

impl<D: Send + 'static, M: Send + 'static> TestSource<D, M> {
    /// A test source and the sender that feeds it.
    #[allow(clippy::new_ret_no_self)] // a pair, as with channels
    pub fn new() -> (TestSource<D, M>, TestSender<D, M>) {
        let (tx, rx) = mpsc::channel(1024);
        let waiting = Waiting::default();
        let source = TestSource {
            input: tokio::sync::Mutex::new(rx),
            waiting: waiting.clone(),
            acknowledged: Arc::default(),
        };
        let sender = TestSender {
            tx,
            next_ref: Arc::new(AtomicU64::new(0)),
            waiting,
        };
        (source, sender)
    }
}

impl<D: Send + 'static, M: Send + 'static> TestSender<D, M> {
    /// Sends `data` as one message (with default metadata) and waits until the pipeline
    /// acknowledges it.
    ///
    /// # Panics
    ///
    /// When the pipeline has stopped before acknowledging it.
    pub async fn test_message(&self, data: D) -> Outcome<M>
    where
        M: Default,
    {
        let mut outcomes = self.test_batch(vec![data]).await;
        outcomes.pop().expect("one outcome per message")
    }

    /// Sends each item as a message (with default metadata) and waits until all are
    /// acknowledged; the outcomes come in the order of `data`.
    ///
    /// # Panics
    ///
    /// When the pipeline has stopped before acknowledging them.
    pub async fn test_batch(&self, data: Vec<D>) -> Vec<Outcome<M>>
    where
        M: Default,
    {
        let messages = data
            .into_iter()
            .map(|data| Message::with_metadata(data, M::default()));
        self.test_messages(messages.collect()).await
    }

    /// Sends messages built by the test, with their metadata (a Kafka record's topic and
    /// key, an SQS message's group), and waits until all are acknowledged; the outcomes
    /// come in the order of `messages`.
    ///
    /// # Panics
    ///
    /// When the pipeline has stopped before acknowledging them.
    pub async fn test_messages(&self, messages: Vec<Message<D, M>>) -> Vec<Outcome<M>> {
        let mut receivers = Vec::with_capacity(messages.len());
        for message in messages {
            let ack_ref = self.next_ref.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.waiting).insert(ack_ref, tx);
            receivers.push(rx);
            let sent = self.tx.send(message.with_ack_ref(ack_ref)).await;
            assert!(
                sent.is_ok(),
                "the pipeline has stopped; it received no test message"
            );
        }
        let mut outcomes = Vec::with_capacity(receivers.len());
        for rx in receivers {
            outcomes.push(
                rx.await
                    .expect("the pipeline stopped without acknowledging a test message"),
            );
        }
        outcomes
    }
}

impl<D, M> Clone for TestSender<D, M> {
    fn clone(&self) -> Self {
        TestSender {
            tx: self.tx.clone(),
            next_ref: self.next_ref.clone(),
            waiting: self.waiting.clone(),
        }
    }
}

fn lock<T>(waiting: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<D: Send + 'static, M: Send + 'static> Source for TestSource<D, M> {
    type Data = D;
    type Metadata = M;
    type Acknowledger = TestAcknowledger<M>;

    fn acknowledger(&self) -> TestAcknowledger<M> {
        TestAcknowledger {
            waiting: self.waiting.clone(),
            acknowledged: self.acknowledged.clone(),
        }
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<D, M>>>, BoxError> {
        let mut input = self.input.lock().await;
        let mut messages = Vec::new();
        input.recv_many(&mut messages, demand.get()).await;
        Ok((!messages.is_empty()).then_some(messages))
    }
}

/// The acknowledger of a [`TestSource`]: hands each outcome to the waiting sender.
pub struct TestAcknowledger<M> {
    waiting: Waiting<M>,
    acknowledged: Arc<AtomicU64>,
}

impl<M: Send + 'static> Acknowledger<M> for TestAcknowledger<M> {
    async fn ack<T: Send + 'static>(&self, successful: Vec<Message<T, M>>, failed: Vec<Message<T, M>>) {
        let outcomes = successful
            .into_iter()
            .map(|m| (m, true))
            .chain(failed.into_iter().map(|m| (m, false)));
        let mut waiting = lock(&self.waiting);
        for (message, successful) in outcomes {
            let tx = waiting
                .remove(&message.ack_ref())
                .unwrap_or_else(|| panic!("test message {} acknowledged twice", message.ack_ref()));
            // Counted under the lock, so the order is the order of acknowledgement.
            let acknowledged = self.acknowledged.fetch_add(1, Ordering::Relaxed);
            let message = message.map_data(|data| Box::new(data) as Box<dyn Any + Send>);
            // The test may have stopped waiting; that is its business.
            let _ = tx.send(Outcome {
                message,
                successful,
                acknowledged,
            });
        }
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<Message<T, M>>) {
        // Test messages released at shutdown are never acknowledged: their senders go,
        // and a test awaiting them panics ("stopped without acknowledging") rather than
        // hangs.
        let mut waiting = lock(&self.waiting);
        messages.iter().for_each(|m| drop(waiting.remove(&m.ack_ref())));
    }
}

impl<D, M> fmt::Debug for TestSource<D, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSource").finish_non_exhaustive()
    }
}

impl<D, M> fmt::Debug for TestSender<D, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSender").finish_non_exhaustive()
    }
}

impl<M> fmt::Debug for TestAcknowledger<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestAcknowledger").finish_non_exhaustive()
    }
}
