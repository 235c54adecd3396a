//! Where messages go after their last attempt: a dead-letter destination, written before
//! the message is acknowledged, and retried until it takes them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::BoxError;
use crate::message::Message;

/// A dead-letter destination: a Kafka topic, an SQS queue, a table, a log.
///
/// Called once with each group of finally failed messages, after
/// [`Handler::handle_failed`](crate::Handler::handle_failed) and before the messages are
/// acknowledged. Each message carries its reason ([`Message::status`]) and its
/// [`attempt`](Message::attempt) count. An error is retried with backoff, never dropped:
/// the stage waits, so a broken destination slows the pipeline rather than losing data.
///
/// ```
/// use std::sync::Mutex;
/// use longshore::{BoxError, DeadLetter, Message};
///
/// /// Keeps dead letters in memory, as a test double or a last resort.
/// #[derive(Default)]
/// struct Graveyard(Mutex<Vec<(String, String, u32)>>);
///
/// impl DeadLetter<String> for Graveyard {
///     async fn dead_letter(&self, messages: &mut [Message<String>]) -> Result<(), BoxError> {
///         let mut graves = self.0.lock().unwrap();
///         for m in messages.iter() {
///             graves.push((m.data().clone(), m.status().to_string(), m.attempt()));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait DeadLetter<T>: Send + Sync + 'static {
    /// Writes `messages` to the destination; `Ok` once it holds them durably.
    fn dead_letter(&self, messages: &mut [Message<T>]) -> impl Future<Output = Result<(), BoxError>> + Send;
}

type Write<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// [`DeadLetter`] as a trait object, so the pipeline's types do not depend on it.
pub(crate) trait ErasedDeadLetter<T>: Send + Sync {
    fn write<'a>(&'a self, messages: &'a mut [Message<T>]) -> Write<'a>;
}

impl<T, D: DeadLetter<T>> ErasedDeadLetter<T> for D {
    fn write<'a>(&'a self, messages: &'a mut [Message<T>]) -> Write<'a> {
        Box::pin(self.dead_letter(messages))
    }
}

const WRITE_RETRY_MIN: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Writes `messages` to `destination`, retrying with backoff until it succeeds; each
/// failed write is counted in `failures`. At shutdown the deadline ends the retries: the
/// messages are then left unacknowledged, for the broker to redeliver.
pub(crate) async fn write_until_done<T>(
    destination: &dyn ErasedDeadLetter<T>,
    messages: &mut [Message<T>],
    failures: &prometheus::IntCounter,
) {
    let mut delay = WRITE_RETRY_MIN;
    loop {
        let written = crate::topology::guarded(destination.write(messages)).await;
        match written {
            Ok(()) => return,
            Err(failure) => {
                failures.inc();
                tracing::warn!(%failure, messages = messages.len(), retry_in = ?delay, "dead-letter write failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(WRITE_RETRY_MAX);
            }
        }
    }
}

/// A shared destination: keep an `Arc` to read it while the pipeline writes to it.
impl<T, D: DeadLetter<T>> DeadLetter<T> for std::sync::Arc<D> {
    fn dead_letter(&self, messages: &mut [Message<T>]) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).dead_letter(messages)
    }
}
