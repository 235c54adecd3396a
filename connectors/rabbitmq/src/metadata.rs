//! What a RabbitMQ delivery carries beside its body, and the handle it is acknowledged
//! through.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use longshore::trace::Attribute;
use longshore::Message;

/// A message of a [`RabbitMqSource`](crate::RabbitMqSource): its data is the body, or
/// what the pipeline's decode step makes of it.
pub type RabbitMqMessage<T = Bytes> = Message<T, RabbitMqMetadata>;

/// Where a delivery came from.
///
/// ```
/// use longshore_rabbitmq::RabbitMqMetadata;
///
/// // A handler's unit test builds messages as the source would.
/// let message = RabbitMqMetadata::new("orders", "eu.created", "{\"id\": 7}").into_message();
/// assert_eq!(message.metadata().routing_key(), "eu.created");
/// assert!(!message.metadata().redelivered());
/// ```
#[derive(Debug, Clone)]
pub struct RabbitMqMetadata {
    exchange: String,
    routing_key: String,
    redelivered: bool,
    properties: BasicProperties,
    body: Bytes,
    /// Its delivery tag, meaningful only on the channel it came on.
    pub(crate) tag: u64,
    /// The number of the consumer (and so the channel) that gave it; 0 in a handler's
    /// unit test.
    pub(crate) consumer: u64,
}

/// A delivery's span (feature `otel` of `longshore`): the trace context from its AMQP
/// headers, and the attributes the messaging conventions give a RabbitMQ message.
impl longshore::trace::TraceMetadata for RabbitMqMetadata {
    fn messaging_system(&self) -> &'static str {
        "rabbitmq"
    }

    fn destination(&self) -> &str {
        match self.exchange.as_str() {
            "" => "amq.default",
            exchange => exchange,
        }
    }

    fn trace_header(&self, name: &str) -> Option<&str> {
        match self.properties.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        record(
            "messaging.rabbitmq.destination.routing_key",
            Attribute::Text(&self.routing_key),
        );
        if let Some(id) = self.properties.message_id() {
            record("messaging.message.id", Attribute::Text(id.as_str()));
        }
    }
}

impl RabbitMqMetadata {
    /// A delivery from `exchange` with `routing_key`, holding `body`.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>, body: impl Into<Bytes>) -> Self {
        RabbitMqMetadata {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            redelivered: false,
            properties: BasicProperties::default(),
            body: body.into(),
            tag: 0,
            consumer: 0,
        }
    }

    /// The metadata of `delivery` from consumer number `consumer`, its body shared (not
    /// copied) with the message's data.
    pub(crate) fn read(delivery: lapin::message::Delivery, consumer: u64) -> Self {
        RabbitMqMetadata {
            tag: delivery.delivery_tag,
            consumer,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            properties: delivery.properties,
            body: Bytes::from(delivery.data),
        }
    }

    /// A message of this, its data the body.
    pub fn into_message(self) -> RabbitMqMessage {
        Message::with_metadata(self.body.clone(), self)
    }

    /// The exchange it was published to (empty: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Whether the server delivered it before (to this consumer or another) without an
    /// acknowledgement: it may have been handled already.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Its properties: headers, content type, message id, timestamp.
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// The body as published (kept for a dead-letter destination after a decode step).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// How many times a quorum queue delivered it before (`x-delivery-count`); `None`
    /// on a classic queue, which does not count. Requeues after a kill, a lost connection
    /// or a shutdown count too: a handler may refuse a message delivered too often (a
    /// [`Permanent`](longshore::Permanent) error), which a quorum queue's
    /// `delivery-limit` also bounds.
    pub fn delivery_count(&self) -> Option<u32> {
        delivery_count(self.properties.headers().as_ref()?)
    }
}

fn delivery_count(headers: &FieldTable) -> Option<u32> {
    let count = match headers.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        _ => return None,
    };
    u32::try_from(count).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_queues_delivery_count_is_read_whatever_its_integer_type() {
        let mut headers = FieldTable::default();
        assert_eq!(delivery_count(&headers), None);
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        assert_eq!(delivery_count(&headers), Some(2));
        headers.insert("x-delivery-count".into(), AMQPValue::LongInt(3));
        assert_eq!(delivery_count(&headers), Some(3));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(-1));
        assert_eq!(delivery_count(&headers), None);
        headers.insert("x-delivery-count".into(), AMQPValue::Boolean(true));
        assert_eq!(delivery_count(&headers), None);
    }
}
