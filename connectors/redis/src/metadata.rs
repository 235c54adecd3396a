//! What a stream entry carries beside its data.

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
    /// The id parsed, to key what the source holds without a copy of the text.
    key: EntryId,
    /// In the entry's order: an entry has a few, searched faster in a list than hashed.
    fields: Vec<(String, Bytes)>,
}

/// A stream entry's id, `<milliseconds>-<sequence>`, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct EntryId(u64, u64);

impl EntryId {
    /// `None` unless `id` is `<milliseconds>-<sequence>`, as every id Redis gives is.
    pub(crate) fn parse(id: &str) -> Option<EntryId> {
        // By hand, one pass: a search for the dash and two `str::parse` cost as much again
        // as the rest of an entry's reading.
        let mut numbers = [0u64; 2];
        let mut at = 0;
        let mut digits = 0;
        for &byte in id.as_bytes() {
            match byte {
                b'0'..=b'9' => {
                    numbers[at] = numbers[at].checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
                    digits += 1;
                }
                b'-' if at == 0 && digits > 0 => (at, digits) = (1, 0),
                _ => return None,
            }
        }
        (at == 1 && digits > 0).then_some(EntryId(numbers[0], numbers[1]))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// Written into a command as its text, with no string made for it.
impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
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
        std::str::from_utf8(self.field(name)?).ok()
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        record("messaging.message.id", Attribute::Text(&self.id));
    }
}

impl RedisStreamMetadata {
    /// Entry `id` of `stream`, with `fields`: for a handler's unit test, whose entries
    /// are never acknowledged (an `id` Redis would not give acknowledges nothing).
    pub fn new<K, V>(
        stream: impl Into<Arc<str>>,
        id: impl Into<String>,
        fields: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: Into<String>,
        V: Into<Bytes>,
    {
        let id = id.into();
        RedisStreamMetadata {
            stream: stream.into(),
            key: EntryId::parse(&id).unwrap_or_default(),
            id,
            fields: fields.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// Entry `id` (parsed as `key`) of `stream`, as the source reads it.
    pub(crate) fn read(stream: Arc<str>, id: String, key: EntryId, fields: Vec<(String, Bytes)>) -> Self {
        RedisStreamMetadata {
            stream,
            id,
            key,
            fields,
        }
    }

    /// A message of this entry, its data the value of `field` (empty if it has none).
    pub fn into_message(self, field: &str) -> RedisStreamMessage {
        let data = self.field(field).cloned().unwrap_or_default();
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

    pub(crate) fn key(&self) -> EntryId {
        self.key
    }

    /// A field's value (the last, if the entry repeats the name).
    pub fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// Every field, in the entry's order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.fields.iter().map(|(name, value)| (name.as_str(), value))
    }
}

#[cfg(test)]
mod tests {
    use super::EntryId;
    use proptest::prelude::*;

    proptest! {
        /// Any id Redis can give is read back as its numbers; anything else is not an id.
        #[test]
        fn ids_are_read_as_their_numbers(ms in any::<u64>(), seq in any::<u64>(), junk in "[0-9a-z-]{0,24}") {
            prop_assert_eq!(EntryId::parse(&format!("{ms}-{seq}")), Some(EntryId(ms, seq)));
            let by_std = junk
                .split_once('-')
                .filter(|(a, b)| !a.starts_with('+') && !b.starts_with('+'))
                .and_then(|(a, b)| Some(EntryId(a.parse().ok()?, b.parse().ok()?)));
            prop_assert_eq!(EntryId::parse(&junk), by_std);
        }
    }
}
