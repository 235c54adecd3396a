//! The in-memory source: the embedded default, for quickstarts, tests and benchmarks.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::error::BoxError;
use crate::message::Message;
use crate::source::{Acknowledger, Source};

/// A source fed from an iterator or a channel, with no broker behind it.
///
/// It counts what it acknowledges in [`AckCounts`], so a program can tell how much was
/// done and a test can check that everything was.
///
/// # Examples
///
/// ```
/// use longshore::source::memory::MemorySource;
///
/// // A million numbers, generated lazily: the backlog costs no memory.
/// let source = MemorySource::from_iter(0..1_000_000u64);
/// let counts = source.counts();
/// assert_eq!(counts.successful(), 0);
///
/// // A channel: send from anywhere, drop every sender to end the stream.
/// let (source, sender) = MemorySource::<String>::channel(100);
/// # drop((source, sender));
/// ```
pub struct MemorySource<T> {
    feed: Feed<T>,
    counts: AckCounts,
}

/// Appends at most `n` new messages to the vector: the iterator, wrapped where its type is
/// still known, so that each item is made a message without a dynamic call.
type Fill<T> = Box<dyn FnMut(usize, &mut Vec<Message<T>>) + Send>;

enum Feed<T> {
    Iter(Mutex<Fill<T>>),
    Channel(tokio::sync::Mutex<mpsc::Receiver<T>>),
}

impl<T: Send + 'static> MemorySource<T> {
    /// A source yielding the items of `items`, pulled only as demand asks; exhausted
    /// when the iterator is.
    #[allow(clippy::should_implement_trait)] // a constructor, not FromIterator: it keeps the iterator lazy
    pub fn from_iter<I>(items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let mut items = items.into_iter();
        let fill =
            move |n: usize, out: &mut Vec<Message<T>>| out.extend(items.by_ref().take(n).map(Message::new));
        MemorySource {
            feed: Feed::Iter(Mutex::new(Box::new(fill))),
            counts: AckCounts::default(),
        }
    }

    /// A source fed through a bounded channel of `capacity` items; exhausted once every
    /// [`mpsc::Sender`] is dropped and the channel is empty.
    pub fn channel(capacity: usize) -> (Self, mpsc::Sender<T>) {
        let (tx, rx) = mpsc::channel(capacity);
        let source = MemorySource {
            feed: Feed::Channel(tokio::sync::Mutex::new(rx)),
            counts: AckCounts::default(),
        };
        (source, tx)
    }

    /// The acknowledgement counts, shared with the running pipeline.
    pub fn counts(&self) -> AckCounts {
        self.counts.clone()
    }
}

impl<T> fmt::Debug for MemorySource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let feed = match self.feed {
            Feed::Iter(_) => "iterator",
            Feed::Channel(_) => "channel",
        };
        f.debug_struct("MemorySource")
            .field("feed", &feed)
            .field("counts", &self.counts)
            .finish()
    }
}

impl<T: Send + 'static> Source for MemorySource<T> {
    type Data = T;
    type Metadata = ();
    type Acknowledger = AckCounts;

    fn acknowledger(&self) -> AckCounts {
        self.counts.clone()
    }

    async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<T>>>, BoxError> {
        let demand = demand.get();
        let messages: Vec<Message<T>> = match &self.feed {
            Feed::Iter(fill) => {
                let mut fill = fill.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Sized once (the fill's iterator may not know its length), up to a
                // bound: with `partition_by` the demand may be the whole in-flight limit.
                let mut messages = Vec::with_capacity(demand.min(1024));
                fill(demand, &mut messages);
                messages
            }
            Feed::Channel(rx) => {
                let mut rx = rx.lock().await;
                let mut items = Vec::with_capacity(demand.min(1024));
                // recv_many is cancel safe: dropping this future loses nothing.
                rx.recv_many(&mut items, demand).await;
                items.into_iter().map(Message::new).collect()
            }
        };
        Ok((!messages.is_empty()).then_some(messages))
    }
}

/// How many messages a [`MemorySource`] acknowledged, by outcome. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AckCounts(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    successful: AtomicU64,
    failed: AtomicU64,
}

impl AckCounts {
    /// Messages acknowledged as successful.
    pub fn successful(&self) -> u64 {
        self.0.successful.load(Ordering::Relaxed)
    }

    /// Messages acknowledged as failed.
    pub fn failed(&self) -> u64 {
        self.0.failed.load(Ordering::Relaxed)
    }

    /// All messages acknowledged.
    pub fn total(&self) -> u64 {
        self.successful() + self.failed()
    }
}

impl<M: Send + 'static> Acknowledger<M> for AckCounts {
    async fn ack<T: Send + 'static>(&self, successful: Vec<Message<T, M>>, failed: Vec<Message<T, M>>) {
        if !successful.is_empty() {
            self.0
                .successful
                .fetch_add(successful.len() as u64, Ordering::Relaxed);
        }
        if !failed.is_empty() {
            self.0.failed.fetch_add(failed.len() as u64, Ordering::Relaxed);
        }
    }
}
