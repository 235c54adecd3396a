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
pub struct TestSource<T> {
    input: tokio::sync::Mutex<mpsc::Receiver<Message<T>>>,
    waiting: Waiting<T>,
    acknowledged: Arc<AtomicU64>,
}

type Waiting<T> = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome<T>>>>>;

/// Sends test messages into a [`TestSource`] and awaits their outcomes. Dropping every
/// sender exhausts the source, so the pipeline drains and stops.
pub struct TestSender<T> {
    tx: mpsc::Sender<Message<T>>,
    next_ref: Arc<AtomicU64>,
    waiting: Waiting<T>,
}

/// How the pipeline acknowledged one test message.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome<T> {
    /// The message as acknowledged: its data, status, batcher and batch key.
    pub message: Message<T>,
    /// `true` when acknowledged as successful, `false` when as failed.
    pub successful: bool,
    /// The order of its acknowledgement: 0 for the first message the source
    /// acknowledged, 1 for the next, and so on. Tests of order compare these.
    pub acknowledged: u64,
}

impl<T: Send + 'static> TestSource<T> {
    /// A test source and the sender that feeds it.
    #[allow(clippy::new_ret_no_self)] // a pair, as with channels
    pub fn new() -> (TestSource<T>, TestSender<T>) {
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

impl<T: Send + 'static> TestSender<T> {
    /// Sends `data` as one message and waits until the pipeline acknowledges it.
    ///
    /// # Panics
    ///
    /// When the pipeline has stopped before acknowledging it.
    pub async fn test_message(&self, data: T) -> Outcome<T> {
        let mut outcomes = self.test_batch(vec![data]).await;
        outcomes.pop().expect("one outcome per message")
    }

    /// Sends each item as a message and waits until all are acknowledged; the outcomes
    /// come in the order of `data`.
    ///
    /// # Panics
    ///
    /// When the pipeline has stopped before acknowledging them.
    pub async fn test_batch(&self, data: Vec<T>) -> Vec<Outcome<T>> {
        let mut receivers = Vec::with_capacity(data.len());
        for item in data {
            let ack_ref = self.next_ref.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            lock(&self.waiting).insert(ack_ref, tx);
            receivers.push(rx);
            let sent = self.tx.send(Message::new(item).with_ack_ref(ack_ref)).await;
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

impl<T> Clone for TestSender<T> {
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

impl<T: Send + 'static> Source for TestSource<T> {
    type Item = T;
    type Acknowledger = TestAcknowledger<T>;

    fn acknowledger(&self) -> TestAcknowledger<T> {
        TestAcknowledger {
            waiting: self.waiting.clone(),
            acknowledged: self.acknowledged.clone(),
        }
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<T>>>, BoxError> {
        let mut input = self.input.lock().await;
        let mut messages = Vec::new();
        input.recv_many(&mut messages, demand.get()).await;
        Ok((!messages.is_empty()).then_some(messages))
    }
}

/// The acknowledger of a [`TestSource`]: hands each outcome to the waiting sender.
pub struct TestAcknowledger<T> {
    waiting: Waiting<T>,
    acknowledged: Arc<AtomicU64>,
}

impl<T: Send + 'static> Acknowledger<T> for TestAcknowledger<T> {
    async fn ack(&self, successful: Vec<Message<T>>, failed: Vec<Message<T>>) {
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
            // The test may have stopped waiting; that is its business.
            let _ = tx.send(Outcome {
                message,
                successful,
                acknowledged,
            });
        }
    }

    async fn release(&self, messages: Vec<Message<T>>) {
        self.forget(&messages);
    }
}

impl<T: Send + 'static> TestAcknowledger<T> {
    /// Test messages released at shutdown are never acknowledged: their senders go, and
    /// a test awaiting them panics ("stopped without acknowledging") rather than hangs.
    fn forget(&self, messages: &[Message<T>]) {
        let mut waiting = lock(&self.waiting);
        messages.iter().for_each(|m| drop(waiting.remove(&m.ack_ref())));
    }
}

impl<T> fmt::Debug for TestSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSource").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for TestSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSender").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for TestAcknowledger<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestAcknowledger").finish_non_exhaustive()
    }
}
