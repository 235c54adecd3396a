//! What a queue row carries beside its payload.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use longshore::trace::Attribute;
use longshore::Message;

use crate::queue::Lease;

/// A row of a [`PgQueueSource`](crate::PgQueueSource): its data is the payload, or what
/// the pipeline's decode step makes of it.
pub type PgQueueMessage<T = Bytes> = Message<T, PgQueueMetadata>;

/// Where a row came from.
///
/// ```
/// use longshore_postgres::PgQueueMetadata;
///
/// // A handler's unit test builds rows as the source would.
/// let message = PgQueueMetadata::new(42, "invoices", "{\"id\": 7}").into_message();
/// assert_eq!(message.metadata().id(), 42);
/// assert_eq!(message.metadata().queue(), "invoices");
/// ```
#[derive(Debug, Clone)]
pub struct PgQueueMetadata {
    id: i64,
    queue: Arc<str>,
    enqueued_at: SystemTime,
    payload: Bytes,
    /// The row's `attempts` when leased: names the lease in the acknowledger's statements.
    pub(crate) token: i32,
}

/// A row's span (feature `otel` of `longshore`): a queue table has no headers, so the
/// span starts a trace of its own.
impl longshore::trace::TraceMetadata for PgQueueMetadata {
    fn messaging_system(&self) -> &'static str {
        "postgresql"
    }

    fn destination(&self) -> &str {
        &self.queue
    }

    fn trace_header(&self, _: &str) -> Option<&str> {
        None
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        record("messaging.message.id", Attribute::Text(&self.id.to_string()));
    }
}

impl PgQueueMetadata {
    /// Row `id` of `queue`, enqueued now, holding `payload`.
    pub fn new(id: i64, queue: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        PgQueueMetadata {
            id,
            queue: queue.into(),
            enqueued_at: SystemTime::now(),
            payload: payload.into(),
            token: 1,
        }
    }

    pub(crate) fn read(lease: Lease, queue: Arc<str>, enqueued_at: SystemTime, payload: Bytes) -> Self {
        PgQueueMetadata {
            id: lease.id,
            queue,
            enqueued_at,
            payload,
            token: lease.token,
        }
    }

    pub(crate) fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            token: self.token,
        }
    }

    /// A message of this row, its data the payload.
    pub fn into_message(self) -> PgQueueMessage {
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
