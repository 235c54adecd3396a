//! What a Kafka record tells beside its payload: a pipeline message's metadata.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use longshore::trace::Attribute;
use longshore::Message;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers, Message as _};

use crate::slot::Slot;

/// A record header: its name, and its value (`None` when null, which Kafka tells apart
/// from empty).
pub type KafkaHeader = (String, Option<Vec<u8>>);

/// A message of the Kafka source: its data (the record's payload, as received, or what a
/// decode step made of it) and the record's [`KafkaMetadata`].
pub type KafkaMessage<T = Bytes> = Message<T, KafkaMetadata>;

/// One Kafka record as it was read: where it came from (topic, partition, offset), its
/// key, headers and timestamp, and its original key and payload bytes, which a
/// dead-letter topic writes whatever the payload was decoded into.
///
/// Read-only: the acknowledger commits by it. The payload is kept once: the message's
/// data, until decoded, shares its buffer.
///
/// # Testing a handler
///
/// Build records with [`KafkaMetadata::new`] and turn them into messages with
/// [`KafkaMetadata::into_message`], then send them through a pipeline on
/// [`longshore::testing::TestSource`], no broker needed:
///
/// ```
/// use bytes::Bytes;
/// use longshore::testing::TestSource;
/// use longshore::{BoxError, Handler, Pipeline};
/// use longshore_kafka::{KafkaMessage, KafkaMetadata};
///
/// struct Audit;
/// impl Handler for Audit {
///     type Item = Bytes;
///     type Metadata = KafkaMetadata;
///     async fn handle_message(&self, message: &mut KafkaMessage) -> Result<(), BoxError> {
///         if message.metadata().key().is_none() {
///             return Err(format!("no key at offset {}", message.metadata().offset()).into());
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (source, sender) = TestSource::new();
/// let pipeline = Pipeline::builder(source, Audit).start().unwrap();
/// let outcomes = sender
///     .test_messages(vec![
///         KafkaMetadata::new("orders", 0, 7).with_key("o-1").with_payload("{}").into_message(),
///         KafkaMetadata::new("orders", 0, 8).with_payload("{}").into_message(),
///     ])
///     .await;
/// assert!(outcomes[0].successful && !outcomes[1].successful);
/// assert_eq!(outcomes[1].message.status().to_string(), "failed (error): no key at offset 8");
/// # drop(sender);
/// # pipeline.wait().await.unwrap();
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaMetadata {
    topic: Arc<str>,
    /// The key, then the payload: one buffer, most often a slice of a block shared with
    /// the records copied just before and after it (see [`Blocks`]).
    bytes: Bytes,
    offset: i64,
    /// Read only with `has_timestamp`.
    timestamp_ms: i64,
    /// Boxed, and only when the record has headers: most have none, and every stage moves
    /// each record (a record's every byte is copied about ten times on its way).
    headers: Option<Box<RecordHeaders>>,
    /// The partition's slot, and which assignment of it delivered the record: a record
    /// from an earlier assignment (revoked since) commits nothing.
    pub(crate) slot: Slot,
    partition: i32,
    /// Where the payload starts in `bytes`: zero with no key.
    key_len: u32,
    has_key: bool,
    has_payload: bool,
    has_timestamp: bool,
}

impl std::fmt::Debug for KafkaMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMetadata")
            .field("topic", &self.topic())
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("key", &self.key())
            .field("payload", &self.payload())
            .field("headers", &self.headers())
            .field("unreadable_headers", &self.unreadable_headers())
            .field("timestamp_ms", &self.timestamp_ms())
            .field("slot", &self.slot)
            .finish()
    }
}

/// A record's headers, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordHeaders {
    read: Vec<KafkaHeader>,
    /// Headers whose name could not be read (not UTF-8): left out of `read`.
    unreadable: usize,
}

/// A record's span (feature `otel` of `longshore`): the trace context from its headers,
/// and the attributes the messaging conventions give a Kafka record.
impl longshore::trace::TraceMetadata for KafkaMetadata {
    fn messaging_system(&self) -> &'static str {
        "kafka"
    }

    fn destination(&self) -> &str {
        &self.topic
    }

    fn trace_header(&self, name: &str) -> Option<&str> {
        // Producers write them in lower case; a header's case is the producer's choice.
        let (_, value) = self
            .headers()
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(value.as_deref()?).ok()
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        record(
            "messaging.destination.partition.id",
            Attribute::Text(&self.partition.to_string()),
        );
        record("messaging.kafka.offset", Attribute::Int(self.offset));
        if let Some(key) = self.key().and_then(|key| std::str::from_utf8(key).ok()) {
            record("messaging.kafka.message.key", Attribute::Text(key));
        }
    }
}

impl KafkaMetadata {
    /// A record of `topic` / `partition` at `offset`, for tests of handlers.
    ///
    /// ```
    /// use longshore_kafka::KafkaMetadata;
    ///
    /// let record = KafkaMetadata::new("orders", 0, 42).with_key("o-1").with_payload(r#"{"cents":100}"#);
    /// assert_eq!(record.key(), Some(&b"o-1"[..]));
    /// assert_eq!(record.offset(), 42);
    /// ```
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        KafkaMetadata {
            topic: Arc::from(topic),
            bytes: Bytes::new(),
            offset,
            timestamp_ms: 0,
            headers: None,
            slot: Slot::NONE,
            partition,
            key_len: 0,
            has_key: false,
            has_payload: false,
            has_timestamp: false,
        }
    }

    /// Sets the key.
    pub fn with_key(self, key: impl Into<Vec<u8>>) -> Self {
        let payload = self.payload().map(<[u8]>::to_vec);
        self.with_parts(Some(&key.into()), payload.as_deref())
    }

    /// Sets the payload.
    pub fn with_payload(self, payload: impl Into<Vec<u8>>) -> Self {
        let key = self.key().map(<[u8]>::to_vec);
        self.with_parts(key.as_deref(), Some(&payload.into()))
    }

    /// A record built by hand owns a buffer of its own size (no shared block).
    fn with_parts(self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Self {
        let bytes = [key.unwrap_or_default(), payload.unwrap_or_default()].concat();
        self.with_bytes(key, payload.is_some(), Bytes::from(bytes))
    }

    /// `bytes` holds the key (if any), then the payload (if any).
    fn with_bytes(mut self, key: Option<&[u8]>, has_payload: bool, bytes: Bytes) -> Self {
        self.bytes = bytes;
        self.key_len = key_len(key);
        self.has_key = key.is_some();
        self.has_payload = has_payload;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers_mut().push((name.into(), Some(value.into())));
        self
    }

    /// Adds a header whose value is null (not empty).
    pub fn with_null_header(mut self, name: impl Into<String>) -> Self {
        self.headers_mut().push((name.into(), None));
        self
    }

    fn headers_mut(&mut self) -> &mut Vec<KafkaHeader> {
        let headers = self.headers.get_or_insert_with(|| {
            Box::new(RecordHeaders {
                read: Vec::new(),
                unreadable: 0,
            })
        });
        &mut headers.read
    }

    pub(crate) fn from_borrowed(
        message: &BorrowedMessage<'_>,
        topic: Arc<str>,
        slot: Slot,
        blocks: &mut Blocks,
    ) -> Self {
        let timestamp_ms = message.timestamp().to_millis();
        let (key, payload) = (message.key(), message.payload());
        // Built in one go: the record is moved whole on each step of its way.
        KafkaMetadata {
            topic,
            bytes: blocks.copy(key, payload),
            offset: message.offset(),
            timestamp_ms: timestamp_ms.unwrap_or_default(),
            headers: message.headers().and_then(read_headers),
            slot,
            partition: message.partition(),
            key_len: key_len(key),
            has_key: key.is_some(),
            has_payload: payload.is_some(),
            has_timestamp: timestamp_ms.is_some(),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset in the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.has_key.then(|| &self.bytes[..self.key_len as usize])
    }

    /// The payload as received, if any (`None` for a tombstone).
    pub fn payload(&self) -> Option<&[u8]> {
        self.has_payload.then(|| &self.bytes[self.key_len as usize..])
    }

    /// A message of this record, as the source delivers it: its data is the payload
    /// (empty for a tombstone: [`KafkaMetadata::payload`] tells them apart), sharing this
    /// record's buffer.
    pub fn into_message(self) -> KafkaMessage {
        let payload = self.bytes.slice(self.key_len as usize..);
        Message::with_metadata(payload, self)
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        self.payload().and_then(|p| std::str::from_utf8(p).ok())
    }

    /// The headers, in order: name and value, `None` for a null value (which Kafka tells
    /// apart from an empty one). A header whose name is not UTF-8 is left out and counted
    /// in [`KafkaMetadata::unreadable_headers`]; the record is delivered all the same.
    pub fn headers(&self) -> &[KafkaHeader] {
        self.headers.as_ref().map_or(&[], |headers| &headers.read)
    }

    /// How many headers were left out of [`KafkaMetadata::headers`] because their name is
    /// not UTF-8.
    pub fn unreadable_headers(&self) -> usize {
        self.headers.as_ref().map_or(0, |headers| headers.unreadable)
    }

    /// The record's timestamp in milliseconds since the epoch, if it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.has_timestamp.then_some(self.timestamp_ms)
    }

    /// This record as if read from `partition` of the same topic, sharing its name.
    #[cfg(test)]
    pub(crate) fn with_partition(self, partition: i32) -> Self {
        KafkaMetadata { partition, ..self }
    }

    pub(crate) fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }
}

/// Where the payload starts in a record's bytes: after the key.
fn key_len(key: Option<&[u8]>) -> u32 {
    // Kafka's record length is an i32: a key of 4 GiB cannot arrive.
    key.map_or(0, |key| u32::try_from(key.len()).expect("a key below 4 GiB"))
}

/// Copies records' keys and payloads into shared blocks: one allocation for many records
/// rather than two for each (allocated on the poll thread, freed on the pipeline's: the
/// slow path of the allocator). A block is small, so that a record held long (behind a
/// retry) keeps little else alive: memory stays within the records in flight times a
/// block, whatever the order they are acknowledged in. A large record gets a buffer of
/// its own.
#[derive(Debug, Default)]
pub(crate) struct Blocks {
    current: BytesMut,
}

impl Blocks {
    const BLOCK: usize = 16 * 1024;

    fn copy(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Bytes {
        let (key, payload) = (key.unwrap_or_default(), payload.unwrap_or_default());
        let len = key.len() + payload.len();
        if len == 0 {
            return Bytes::new();
        }
        if len > Self::BLOCK / 8 {
            let mut own = BytesMut::with_capacity(len);
            own.extend_from_slice(key);
            own.extend_from_slice(payload);
            return own.freeze();
        }
        if self.current.capacity() < len {
            self.current = BytesMut::with_capacity(Self::BLOCK);
        }
        self.current.extend_from_slice(key);
        self.current.extend_from_slice(payload);
        self.current.split().freeze()
    }
}

/// A record's headers, and how many could not be read (`None` when it has none).
/// rust-rdkafka panics on a header name that is not UTF-8 (`to_str().unwrap()` in
/// `try_get`); caught per header, so that one bad name costs that header, never the poll
/// thread (the panic hook still prints the panic once per such header).
fn read_headers(headers: &BorrowedHeaders) -> Option<Box<RecordHeaders>> {
    if headers.count() == 0 {
        return None;
    }
    let mut read = Vec::with_capacity(headers.count());
    let mut unreadable = 0;
    for index in 0..headers.count() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| headers.try_get(index))) {
            Ok(Some(header)) => read.push((header.key.to_owned(), header.value.map(<[u8]>::to_vec))),
            Ok(None) => {}
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!(unreadable, "record headers whose name is not UTF-8 left out");
    }
    // Nothing read (every header gone between the count and the read): as none.
    (!read.is_empty() || unreadable > 0).then(|| Box::new(RecordHeaders { read, unreadable }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stays_small() {
        // Moved whole between stages, each byte copied on every move.
        assert!(std::mem::size_of::<KafkaMetadata>() <= 96);
    }

    #[test]
    fn keys_and_payloads_keep_their_presence_and_bytes() {
        let record = KafkaMetadata::new("t", 0, 0);
        assert_eq!((record.key(), record.payload()), (None, None));
        let record = record.with_payload("").with_key("k");
        assert_eq!(
            (record.key(), record.payload()),
            (Some(&b"k"[..]), Some(&b""[..]))
        );
        let record = KafkaMetadata::new("t", 0, 0).with_key("").with_payload("p");
        assert_eq!(
            (record.key(), record.payload()),
            (Some(&b""[..]), Some(&b"p"[..]))
        );
    }

    #[test]
    fn records_share_blocks_and_large_ones_get_their_own() {
        let mut blocks = Blocks::default();
        let small: Vec<Bytes> = (0..1_000u32)
            .map(|i| blocks.copy(Some(&i.to_be_bytes()), Some(&[7; 100])))
            .collect();
        for (i, bytes) in small.iter().enumerate() {
            assert_eq!(&bytes[..4], &(i as u32).to_be_bytes());
            assert_eq!(&bytes[4..], &[7; 100]);
        }
        // 104 bytes each: a block of 16 KiB holds 157 of them.
        let start = |b: &Bytes| b.as_ptr() as usize;
        assert_eq!(start(&small[1]) - start(&small[0]), 104);
        let large = blocks.copy(None, Some(&[1; Blocks::BLOCK]));
        assert_eq!(large.len(), Blocks::BLOCK);
        let next = blocks.copy(Some(b"k"), None);
        assert_eq!(
            start(&next),
            start(&small[999]) + 104,
            "the large record did not take a block"
        );
    }
}
