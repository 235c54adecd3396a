//! The unit that flows through a pipeline: data plus what the stages need to know about it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::BoxError;
use crate::receipt::Receipt;

/// One message from a source, as seen by every stage and finally by the acknowledger.
///
/// A message has three parts, kept apart so that each stage may change only its own:
///
/// - its **data** (`T`): what the source delivered (Kafka's payload, SQS's body), or what a
///   stage made of it: a [decode step](crate::PipelineBuilder::decode) or
///   [`Message::map_data`] replaces it with a value of another type, so a payload is
///   parsed once and every later stage gets the parsed value;
/// - its **metadata** (`M`): where it came from, as the source tells it (Kafka: topic,
///   partition, offset, key, headers; SQS: message id, attributes, group), read-only, and
///   with the original bytes for a dead-letter destination;
/// - the pipeline's **bookkeeping**: status, attempt, batcher and batch key, and the
///   source's acknowledgement reference.
///
/// A message is moved through the pipeline, never cloned, so the type system already
/// guarantees it is acknowledged at most once; the topology makes sure it is
/// acknowledged at least once (see the crate docs, "Acknowledgements and failures").
///
/// # Examples
///
/// ```
/// use longshore::Message;
///
/// let mut message = Message::new("hello");
/// message.put_batcher("sql").put_batch_key("orders");
/// assert!(message.is_ok());
///
/// message.fail("the payload is not JSON");
/// assert!(message.is_failed());
/// assert_eq!(message.status().to_string(), "failed (error): the payload is not JSON");
///
/// // A stage replaces the data; the rest of the message stays as it was.
/// let message = Message::with_metadata("42", "orders@7").map_data(|text| text.len());
/// assert_eq!((*message.data(), *message.metadata()), (2, "orders@7"));
/// ```
pub struct Message<T, M = ()> {
    data: T,
    metadata: M,
    ack_ref: u64,
    attempt: u32,
    received: Option<Receipt>,
    /// Inline, not boxed with `batch_key` (which would save 40 bytes a message): a
    /// handler that routes every message then paid an allocation each, 1.8 times the CPU
    /// of the batcher benchmark.
    batcher: Option<Cow<'static, str>>,
    batch_key: BatchKey,
    /// The `partition_by` key, computed once when the message is dispatched; only read
    /// when `keyed`.
    order_key: u64,
    keyed: bool,
    /// What only a failed message has, boxed: every stage moves each message, so that
    /// each byte of it costs (see the `size` test below).
    failed: Option<Box<Failed>>,
    /// Its span, from its first handling to its acknowledgement (with tracing on); boxed
    /// as `failed` is, a span costing allocations anyway.
    #[cfg(feature = "otel")]
    span: Option<Box<crate::trace::MessageSpan>>,
}

impl<T> Message<T> {
    /// A new, successful message holding `data` and no metadata, on its first attempt.
    pub fn new(data: T) -> Self {
        Message::with_metadata(data, ())
    }
}

impl<T, M> Message<T, M> {
    /// A new, successful message holding `data`, from a source that describes it with
    /// `metadata`, on its first attempt. Sources build their messages with it, and so do
    /// tests of handlers (each connector's docs show how to make its metadata).
    pub fn with_metadata(data: T, metadata: M) -> Self {
        Message {
            data,
            metadata,
            ack_ref: 0,
            attempt: 1,
            received: None,
            batcher: None,
            batch_key: BatchKey::None,
            order_key: 0,
            keyed: false,
            failed: None,
            #[cfg(feature = "otel")]
            span: None,
        }
    }

    /// Sets the reference the source's [`Acknowledger`](crate::Acknowledger) uses to find
    /// its own bookkeeping for this message (an offset slot, a receipt handle's index).
    /// Sources set it; handlers never need to.
    pub fn with_ack_ref(mut self, ack_ref: u64) -> Self {
        self.ack_ref = ack_ref;
        self
    }

    /// Sets the delivery attempt, counted from 1 (a source that knows the redelivery
    /// count, such as SQS's `ApproximateReceiveCount`, sets it).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// The payload.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The payload, mutably: a handler may decode or enrich it for later stages.
    pub fn data_mut(&mut self) -> &mut T {
        &mut self.data
    }

    /// Takes the payload out of the message.
    pub fn into_data(self) -> T {
        self.data
    }

    /// Where the message came from, as its source describes it.
    pub fn metadata(&self) -> &M {
        &self.metadata
    }

    /// Takes the metadata out of the message: an acknowledger's way to its own
    /// bookkeeping (a receipt handle) without copying it.
    pub fn into_metadata(self) -> M {
        self.metadata
    }

    /// Replaces the data with what `f` makes of it, keeping the metadata and the
    /// pipeline's bookkeeping (status, attempt, batcher, batch key) as they were.
    pub fn map_data<U>(self, f: impl FnOnce(T) -> U) -> Message<U, M> {
        let (data, message) = self.take_data();
        message.with_data(f(data))
    }

    /// The data, and the rest of the message waiting for new data.
    pub(crate) fn take_data(self) -> (T, Message<(), M>) {
        self.swap_data(())
    }

    /// Gives the message `data`: the old data, and the message with the new.
    fn swap_data<U>(self, data: U) -> (T, Message<U, M>) {
        let Message {
            data: old,
            metadata,
            ack_ref,
            attempt,
            received,
            batcher,
            batch_key,
            order_key,
            keyed,
            failed,
            #[cfg(feature = "otel")]
            span,
        } = self;
        let message = Message {
            data,
            metadata,
            ack_ref,
            attempt,
            received,
            batcher,
            batch_key,
            order_key,
            keyed,
            failed,
            #[cfg(feature = "otel")]
            span,
        };
        (old, message)
    }

    /// The reference set by the source with [`Message::with_ack_ref`].
    pub fn ack_ref(&self) -> u64 {
        self.ack_ref
    }

    /// Which delivery attempt this is, counted from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the pipeline received the message from its source (`None` before that).
    pub fn received_at(&self) -> Option<Instant> {
        self.received.map(Receipt::instant)
    }

    /// When it was received, as the pipeline keeps it.
    pub(crate) fn receipt(&self) -> Option<Receipt> {
        self.received
    }

    /// Whether the message succeeded so far or failed, and why.
    pub fn status(&self) -> &Status {
        static OK: Status = Status::Ok;
        self.failed.as_deref().map_or(&OK, |failed| &failed.status)
    }

    /// `true` while no stage has failed the message.
    pub fn is_ok(&self) -> bool {
        // The common case, nothing failed, is one test: every stage asks it of every message.
        self.failed
            .as_ref()
            .is_none_or(|failed| matches!(failed.status, Status::Ok))
    }

    /// `true` once a stage has failed the message.
    pub fn is_failed(&self) -> bool {
        !self.is_ok()
    }

    /// Marks the message as failed: it skips later stages, goes through
    /// [`Handler::handle_failed`](crate::Handler::handle_failed) and is acknowledged as failed.
    pub fn fail(&mut self, reason: impl Into<BoxError>) -> &mut Self {
        self.set_failure(Failure::new(FailureKind::Error, reason.into()));
        self
    }

    /// Routes the message to the batcher named `name` after the processor.
    /// Without a call, a message goes to the first batcher configured, if any.
    pub fn put_batcher(&mut self, name: impl Into<Cow<'static, str>>) -> &mut Self {
        self.batcher = Some(name.into());
        self
    }

    /// The batcher chosen with [`Message::put_batcher`].
    pub fn batcher(&self) -> Option<&str> {
        self.batcher.as_deref()
    }

    /// Groups the message with others of the same key inside its batcher: a batch only
    /// ever holds messages of one key.
    pub fn put_batch_key(&mut self, key: impl Into<BatchKey>) -> &mut Self {
        self.batch_key = key.into();
        self
    }

    /// The batch key set with [`Message::put_batch_key`].
    pub fn batch_key(&self) -> &BatchKey {
        &self.batch_key
    }

    /// On a failed message from a source that redelivers
    /// ([`Redelivery::Broker`](crate::source::Redelivery::Broker)): how long the broker
    /// should wait before delivering it again. `None` when the failure is final.
    pub fn redeliver_after(&self) -> Option<Duration> {
        self.failed.as_ref().and_then(|failed| failed.redeliver_after)
    }

    pub(crate) fn set_redeliver_after(&mut self, delay: Duration) {
        #[cfg(feature = "otel")]
        self.retry_event(delay);
        self.failed_mut().redeliver_after = Some(delay);
    }

    /// On a message acknowledged as failed: whether the pipeline's dead-letter
    /// destination took it. The source should then not keep it (SQS deletes it instead
    /// of redriving it, so that a poison message has one dead letter, not two).
    pub fn is_dead_lettered(&self) -> bool {
        self.failed.as_ref().is_some_and(|failed| failed.dead_lettered)
    }

    pub(crate) fn set_dead_lettered(&mut self) {
        self.failed_mut().dead_lettered = true;
        #[cfg(feature = "otel")]
        if let Some(span) = &self.span {
            crate::trace::event(span, "dead_lettered", Vec::new());
        }
    }

    /// Readies a failed message for its next attempt after `delay`.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn retry(&mut self, delay: Duration) {
        #[cfg(feature = "otel")]
        self.retry_event(delay);
        self.attempt += 1;
        self.failed = None;
    }

    /// The `retry` event on the message's span: the attempt that failed, why, and when
    /// the next one comes (in this process, or redelivered by the broker).
    #[cfg(feature = "otel")]
    fn retry_event(&self, delay: Duration) {
        if let (Some(span), Status::Failed(failure)) = (&self.span, self.status()) {
            use opentelemetry::KeyValue;
            let attributes = vec![
                KeyValue::new("longshore.attempt", i64::from(self.attempt)),
                KeyValue::new("longshore.retry_in_ms", delay.as_millis() as i64),
                KeyValue::new("error.type", failure.kind().to_string()),
                KeyValue::new(
                    "exception.message",
                    crate::trace::capped(&failure.error().to_string(), crate::trace::MAX_MESSAGE),
                ),
            ];
            crate::trace::event(span, "retry", attributes);
        }
    }

    /// The trace context headers (`traceparent`, `tracestate`, `baggage`) that continue
    /// this message's trace from its span, for a copy of it written elsewhere: a
    /// dead-letter destination puts them on its copy in place of the original ones.
    /// Empty when the pipeline does not trace (feature `otel`, see [`crate::trace`]).
    ///
    /// ```
    /// use longshore::Message;
    ///
    /// assert!(Message::new("not traced").trace_headers().is_empty());
    /// ```
    pub fn trace_headers(&self) -> Vec<(&'static str, String)> {
        #[cfg(feature = "otel")]
        if let Some(span) = &self.span {
            return crate::trace::headers_of(span);
        }
        Vec::new()
    }

    /// The context of this message's span (feature `otel`, with tracing on): run work
    /// within it, or inject it into an outgoing request, to continue the trace.
    #[cfg(feature = "otel")]
    pub fn trace_context(&self) -> Option<&opentelemetry::Context> {
        self.span.as_deref()
    }

    /// Starts the message's span, unless an earlier attempt (or stage) already did.
    #[cfg(feature = "otel")]
    pub(crate) fn start_span(&mut self, tracing: &dyn crate::trace::ErasedTracing<M>) {
        if self.span.is_none() {
            self.span = Some(Box::new(tracing.message(&self.metadata)));
        }
    }

    /// Takes the message's span, if it has one, to be ended with `outcome` (see
    /// [`crate::trace::Ending`]).
    #[cfg(feature = "otel")]
    pub(crate) fn take_span(&mut self, outcome: &'static str) -> Option<crate::trace::Ending> {
        let span = *self.span.take()?;
        Some(crate::trace::Ending::new(
            span,
            self.status(),
            self.attempt,
            outcome,
        ))
    }

    pub(crate) fn set_failure(&mut self, failure: Failure) {
        self.failed_mut().status = Status::Failed(failure);
    }

    fn failed_mut(&mut self) -> &mut Failed {
        self.failed.get_or_insert_with(Default::default)
    }

    pub(crate) fn set_receipt(&mut self, receipt: Receipt) {
        self.received = Some(receipt);
    }

    /// The ordering key: messages with the same one are handled in order. `None` in an
    /// unordered pipeline.
    pub(crate) fn order_key(&self) -> Option<u64> {
        self.keyed.then_some(self.order_key)
    }

    pub(crate) fn set_order_key(&mut self, key: u64) {
        self.order_key = key;
        self.keyed = true;
    }
}

impl<M> Message<(), M> {
    /// Gives a message taken apart by [`Message::take_data`] its new data.
    pub(crate) fn with_data<U>(self, data: U) -> Message<U, M> {
        self.swap_data(data).1
    }
}

impl<T: fmt::Debug, M: fmt::Debug> fmt::Debug for Message<T, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("data", &self.data)
            .field("metadata", &self.metadata)
            .field("status", self.status())
            .field("attempt", &self.attempt)
            .field("batcher", &self.batcher)
            .field("batch_key", &self.batch_key)
            .field("ack_ref", &self.ack_ref)
            .finish()
    }
}

/// A failed message's state (see [`Message::status`], [`Message::redeliver_after`],
/// [`Message::is_dead_lettered`]).
#[derive(Debug, Default)]
struct Failed {
    status: Status,
    redeliver_after: Option<Duration>,
    dead_lettered: bool,
}

/// Whether a message succeeded so far, or failed and why.
#[derive(Debug, Clone, Default)]
pub enum Status {
    /// No stage has failed the message.
    #[default]
    Ok,
    /// A stage failed the message.
    Failed(Failure),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => f.write_str("ok"),
            Status::Failed(failure) => write!(f, "failed ({}): {}", failure.kind, failure.error),
        }
    }
}

/// Why a message failed.
#[derive(Debug, Clone)]
pub struct Failure {
    kind: FailureKind,
    error: Arc<dyn std::error::Error + Send + Sync>,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, error: BoxError) -> Self {
        Failure {
            kind,
            error: Arc::from(error),
        }
    }

    /// Where the failure came from.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The error, for display or downcasting.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.error)
    }
}

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// A handler returned an error, or called [`Message::fail`].
    Error,
    /// A handler panicked.
    Panic,
    /// The pipeline could not route the message (an unknown batcher name).
    Routing,
    /// The message's data could not be decoded (see
    /// [`PipelineBuilder::decode`](crate::PipelineBuilder::decode)): never retried, since
    /// the same bytes would fail again.
    Decode,
    /// The message was delivered more often than
    /// [`RetryPolicy::max_deliveries`](crate::RetryPolicy::max_deliveries) allows: never
    /// handled again.
    Deliveries,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Error => "error",
            FailureKind::Panic => "panic",
            FailureKind::Routing => "routing",
            FailureKind::Decode => "decode",
            FailureKind::Deliveries => "deliveries",
        })
    }
}

/// The key that groups messages into batches inside a batcher.
///
/// ```
/// use longshore::BatchKey;
///
/// assert_eq!(BatchKey::from("orders"), BatchKey::from(String::from("orders")));
/// assert_ne!(BatchKey::from(7u64), BatchKey::None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum BatchKey {
    /// No key: the batcher's default group.
    #[default]
    None,
    /// An integer key.
    Int(u64),
    /// A string key.
    Str(Cow<'static, str>),
}

impl From<u64> for BatchKey {
    fn from(key: u64) -> Self {
        BatchKey::Int(key)
    }
}

impl From<&'static str> for BatchKey {
    fn from(key: &'static str) -> Self {
        BatchKey::Str(Cow::Borrowed(key))
    }
}

impl From<String> for BatchKey {
    fn from(key: String) -> Self {
        BatchKey::Str(Cow::Owned(key))
    }
}

impl fmt::Display for BatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchKey::None => f.write_str("-"),
            BatchKey::Int(key) => write!(f, "{key}"),
            BatchKey::Str(key) => f.write_str(key),
        }
    }
}

#[cfg(test)]
mod size {
    /// What a message carries beyond its data and metadata stays small: a source writes
    /// each message and every stage moves it, often from one core to another, and a
    /// hand-written pipeline's CPU per message grew 1.6 times from 24 to 64 bytes a
    /// message, 2.7 times at 112.
    #[test]
    fn a_message_of_a_word_of_data_stays_small() {
        // Tracing adds its span's box.
        let span = if cfg!(feature = "otel") { 8 } else { 0 };
        assert!(std::mem::size_of::<super::Message<u64>>() <= 96 + span);
    }
}
