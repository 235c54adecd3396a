//! A Kafka record as a pipeline message's data.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers, Message as _};

/// One Kafka record: payload, key, headers, and where it came from.
///
/// Where it came from (topic, partition, offset) is read-only: the acknowledger commits
/// by it. Tests build records with [`KafkaRecord::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: Option<i64>,
    /// Which assignment of the partition delivered it: a record from an earlier
    /// assignment (revoked since) commits nothing.
    pub(crate) generation: u64,
}

impl KafkaRecord {
    /// A record of `topic` / `partition` at `offset`, for tests of handlers.
    ///
    /// ```
    /// use longshore_kafka::KafkaRecord;
    ///
    /// let record = KafkaRecord::new("orders", 0, 42).with_key("o-1").with_payload(r#"{"cents":100}"#);
    /// assert_eq!(record.key(), Some(&b"o-1"[..]));
    /// assert_eq!(record.offset(), 42);
    /// ```
    pub fn new(topic: &str, partition: i32, offset: i64) -> Self {
        KafkaRecord {
            topic: Arc::from(topic),
            partition,
            offset,
            key: None,
            payload: None,
            headers: Vec::new(),
            timestamp_ms: None,
            generation: 0,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(crate) fn from_borrowed(message: &BorrowedMessage<'_>, topic: Arc<str>, generation: u64) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        KafkaRecord {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
            generation,
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
        self.key.as_deref()
    }

    /// The payload, if any (`None` for a tombstone).
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        self.payload().and_then(|p| std::str::from_utf8(p).ok())
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The record's timestamp in milliseconds since the epoch, if it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    pub(crate) fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }
}
