//! What a JetStream message carries beside its payload, and the reply subject it is
//! acknowledged on.

use bytes::Bytes;
use longshore::trace::Attribute;
use longshore::Message;

/// A message of a [`JetStreamSource`](crate::JetStreamSource): its data is the payload,
/// or what the pipeline's decode step makes of it.
pub type JetStreamMessage<T = Bytes> = Message<T, JetStreamMetadata>;

/// Where a message came from.
///
/// ```
/// use longshore_nats::JetStreamMetadata;
///
/// // A handler's unit test builds messages as the source would.
/// let message = JetStreamMetadata::new("orders.eu", 42, "{\"id\": 7}").into_message();
/// assert_eq!(message.metadata().subject(), "orders.eu");
/// assert_eq!(message.metadata().stream_sequence(), 42);
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamMetadata {
    subject: async_nats::Subject,
    stream_sequence: u64,
    headers: Option<async_nats::HeaderMap>,
    payload: Bytes,
    /// Where its acknowledgement goes; `None` in a handler's unit test. Only this is
    /// kept of the server's message: the whole (with its client) is several hundred
    /// bytes, copied at each move of the message through the pipeline.
    pub(crate) reply: Option<async_nats::Subject>,
}

/// A message's span (feature `otel` of `longshore`): the trace context from its NATS
/// headers, and the attributes the messaging conventions give a JetStream message.
impl longshore::trace::TraceMetadata for JetStreamMetadata {
    fn messaging_system(&self) -> &'static str {
        "nats"
    }

    fn destination(&self) -> &str {
        &self.subject
    }

    fn trace_header(&self, name: &str) -> Option<&str> {
        Some(self.headers.as_ref()?.get(name)?.as_str())
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        let sequence = i64::try_from(self.stream_sequence).unwrap_or(i64::MAX);
        record("messaging.nats.stream_sequence", Attribute::Int(sequence));
    }
}

impl JetStreamMetadata {
    /// A message on `subject`, at `stream_sequence`, holding `payload`.
    pub fn new(subject: impl Into<String>, stream_sequence: u64, payload: impl Into<Bytes>) -> Self {
        JetStreamMetadata {
            subject: async_nats::Subject::from(subject.into()),
            stream_sequence,
            headers: None,
            payload: payload.into(),
            reply: None,
        }
    }

    pub(crate) fn read(message: async_nats::Message, stream_sequence: u64) -> Self {
        JetStreamMetadata {
            subject: message.subject,
            stream_sequence,
            headers: message.headers,
            payload: message.payload,
            reply: message.reply,
        }
    }

    /// A message of this, its data the payload.
    pub fn into_message(self) -> JetStreamMessage {
        Message::with_metadata(self.payload.clone(), self)
    }

    /// The subject it was published on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Its sequence number in the stream.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// Its headers, if it has any.
    pub fn headers(&self) -> Option<&async_nats::HeaderMap> {
        self.headers.as_ref()
    }

    /// The payload as published (kept for a dead-letter destination after a decode step).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}
