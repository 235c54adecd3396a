//! What a stream entry carries beside its data.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use longshore::trace::Attribute;
use longshore::Message;

/// An entry of a [`RedisStreamSource`](crate::RedisStreamSource): its data is the
/// configured field's value, or what the pipeline's decode step makes of it.
pub type RedisStreamMessage<T = Bytes> = Message<T, RedisStreamMetadata>;

/// Where an entry came from, and all its fields.
///
/// ```
/// use longshore_redis::RedisStreamMetadata;
///
/// // A handler's unit test builds entries as the source would.
/// let message = RedisStreamMetadata::new("orders", "1700000000000-0", [("payload", "{\"id\": 7}"), ("kind", "order")])
///     .into_message("payload");
/// assert_eq!(message.metadata().field("kind").map(|v| &v[..]), Some(&b"order"[..]));
/// assert_eq!(&message.data()[..], b"{\"id\": 7}");
/// ```
#[derive(Debug, Clone)]
pub struct RedisStreamMetadata {
    stream: Arc<str>,
    id: String,
    fields: HashMap<String, Bytes>,
}

/// An entry's span (feature `otel` of `longshore`): the trace context from the entry's
/// fields of those names (`traceparent`, `tracestate`, `baggage`), as a producer adds them.
impl longshore::trace::TraceMetadata for RedisStreamMetadata {
    fn messaging_system(&self) -> &'static str {
        "redis"
    }

    fn destination(&self) -> &str {
        &self.stream
    }

    fn trace_header(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.fields.get(name)?).ok()
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        record("messaging.message.id", Attribute::Text(&self.id));
    }
}

impl RedisStreamMetadata {
    /// Entry `id` of `stream`, with `fields`.
    pub fn new<K, V>(
        stream: impl Into<Arc<str>>,
        id: impl Into<String>,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: Into<String>,
        V: Into<Bytes>,
    {
        RedisStreamMetadata {
            stream: stream.into(),
            id: id.into(),
            fields: fields.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// A message of this entry, its data the value of `field` (empty if it has none).
    pub fn into_message(self, field: &str) -> RedisStreamMessage {
        let data = self.fields.get(field).cloned().unwrap_or_default();
        Message::with_metadata(data, self)
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The entry's id (`<milliseconds>-<sequence>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields.get(name)
    }

    /// Every field.
    pub fn fields(&self) -> &HashMap<String, Bytes> {
        &self.fields
    }
}
