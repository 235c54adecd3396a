//! What a queue row carries beside its payload.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use longshore::Message;

/// A row of a [`PgQueueSource`](crate::PgQueueSource): its data is the payload, or what
/// the pipeline's decode step makes of it.
pub type PgMessage<T = Bytes> = Message<T, PgMetadata>;

/// Where a row came from.
///
/// ```
/// use longshore_postgres::PgMetadata;
///
/// // A handler's unit test builds rows as the source would.
/// let message = PgMetadata::new(42, "invoices", "{\"id\": 7}").into_message();
/// assert_eq!(message.metadata().id(), 42);
/// assert_eq!(message.metadata().queue(), "invoices");
/// ```
#[derive(Debug, Clone)]
pub struct PgMetadata {
    id: i64,
    queue: Arc<str>,
    enqueued_at: SystemTime,
    payload: Bytes,
}

impl PgMetadata {
    /// Row `id` of `queue`, enqueued now, holding `payload`.
    pub fn new(id: i64, queue: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        PgMetadata {
            id,
            queue: queue.into(),
            enqueued_at: SystemTime::now(),
            payload: payload.into(),
        }
    }

    pub(crate) fn read(id: i64, queue: Arc<str>, enqueued_at: SystemTime, payload: Bytes) -> Self {
        PgMetadata {
            id,
            queue,
            enqueued_at,
            payload,
        }
    }

    /// A message of this row, its data the payload.
    pub fn into_message(self) -> PgMessage {
        Message::with_metadata(self.payload.clone(), self)
    }

    /// The row's `id`.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The row's `queue`.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// When the row was inserted.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }

    /// The payload as stored (kept for a dead-letter destination after a decode step).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}
