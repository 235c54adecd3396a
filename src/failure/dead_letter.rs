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
/// acknowledged. Each message carries its reason ([`Message::status`]), its
/// [`attempt`](Message::attempt) count and its source's metadata, which keeps the original
/// bytes (Kafka's key, payload and headers; SQS's body and attributes). It carries no
/// data: what a decode step made of the bytes is not what a dead letter should keep, and
/// a message that failed to decode has none. An error is retried with backoff, never
/// dropped: the stage waits, so a broken destination slows the pipeline rather than
/// losing data.
///
/// ```
/// use std::sync::Mutex;
/// use longshore::{BoxError, DeadLetter, Message};
///
/// /// Keeps dead letters in memory, as a test double or a last resort: here of a source
/// /// whose metadata is the original text.
/// #[derive(Default)]
/// struct Graveyard(Mutex<Vec<(String, String, u32)>>);
///
/// impl DeadLetter<String> for Graveyard {
///     async fn dead_letter(&self, messages: &mut [Message<(), String>]) -> Result<(), BoxError> {
///         let mut graves = self.0.lock().unwrap();
///         for m in messages.iter() {
///             graves.push((m.metadata().clone(), m.status().to_string(), m.attempt()));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait DeadLetter<M>: Send + Sync + 'static {
    /// Writes `messages` to the destination; `Ok` once it holds them durably.
    fn dead_letter(
        &self,
        messages: &mut [Message<(), M>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

type Write<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// [`DeadLetter`] as a trait object, so the pipeline's types do not depend on it.
pub(crate) trait ErasedDeadLetter<M>: Send + Sync {
    fn write<'a>(&'a self, messages: &'a mut [Message<(), M>]) -> Write<'a>;
}

impl<M, D: DeadLetter<M>> ErasedDeadLetter<M> for D {
    fn write<'a>(&'a self, messages: &'a mut [Message<(), M>]) -> Write<'a> {
        Box::pin(self.dead_letter(messages))
    }
}

const WRITE_RETRY_MIN: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Writes `messages` to `destination`, retrying with backoff until it succeeds; each
/// failed write is counted in `failures`. At shutdown the deadline ends the retries: the
/// messages are then left unacknowledged, for the broker to redeliver.
pub(crate) async fn write_until_done<M>(
    destination: &dyn ErasedDeadLetter<M>,
    messages: &mut [Message<(), M>],
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
impl<M, D: DeadLetter<M>> DeadLetter<M> for std::sync::Arc<D> {
    fn dead_letter(
        &self,
        messages: &mut [Message<(), M>],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        (**self).dead_letter(messages)
    }
}
