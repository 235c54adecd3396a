//! What an SQS message tells beside its body: a pipeline message's metadata.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use bytes::Bytes;
use longshore::trace::Attribute;
use longshore::Message;

/// A message of the SQS source: its data (the body as received, or what a decode step
/// made of it) and its [`SqsMetadata`].
pub type SqsMessage<T = Bytes> = Message<T, SqsMetadata>;

/// One SQS message as it was received: its ids, attributes and receive count, and its
/// original body, which a dead-letter queue writes whatever the body was decoded into.
///
/// A message's attempt number ([`Message::attempt`]) is SQS's `ApproximateReceiveCount`:
/// a message redelivered after a failure, a crash or an expired visibility timeout comes
/// back with the next number.
///
/// # Testing a handler
///
/// Build metadata with [`SqsMetadata::new`] and turn it into a message with
/// [`SqsMetadata::into_message`], then send it through a pipeline on
/// [`longshore::testing::TestSource`], no queue needed:
///
/// ```
/// use longshore::decode::Json;
/// use longshore::testing::TestSource;
/// use longshore::{BoxError, Handler, Pipeline};
/// use longshore_sqs::{SqsMessage, SqsMetadata};
///
/// #[derive(serde::Deserialize)]
/// struct Order { cents: u64 }
///
/// struct Orders;
/// impl Handler for Orders {
///     type Item = Order;
///     type Metadata = SqsMetadata;
///     async fn handle_message(&self, message: &mut SqsMessage<Order>) -> Result<(), BoxError> {
///         if message.data().cents == 0 && message.metadata().group_id() != Some("free") {
///             return Err("a free order outside the free group".into());
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (source, sender) = TestSource::new();
/// let pipeline = Pipeline::builder(source, Orders).decode(Json::new()).start().unwrap();
/// let outcomes = sender
///     .test_messages(vec![
///         SqsMetadata::new("orders", "m-1", r#"{"cents": 0}"#).with_group_id("free").into_message(),
///         SqsMetadata::new("orders", "m-2", r#"{"cents": 0}"#).into_message(),
///         SqsMetadata::new("orders", "m-3", "not json").into_message(),
///     ])
///     .await;
/// assert!(outcomes[0].successful && !outcomes[1].successful && !outcomes[2].successful);
/// assert!(outcomes[2].message.status().to_string().starts_with("failed (decode)"));
/// # drop(sender);
/// # pipeline.wait().await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqsMetadata {
    pub(crate) queue: Arc<str>,
    pub(crate) message_id: String,
    pub(crate) receipt_handle: String,
    body: Body,
    pub(crate) attributes: HashMap<MessageSystemAttributeName, String>,
    pub(crate) message_attributes: HashMap<String, MessageAttributeValue>,
}

/// The body, shared with the message's data (as bytes) until the data is decoded: one
/// copy of what the SDK received, kept once.
#[derive(Debug, Clone)]
struct Body(Arc<str>);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A message's span (feature `otel` of `longshore`): the trace context from its message
/// attributes, and the attributes the messaging conventions give an SQS message.
impl longshore::trace::TraceMetadata for SqsMetadata {
    fn messaging_system(&self) -> &'static str {
        "aws_sqs"
    }

    fn destination(&self) -> &str {
        &self.queue
    }

    fn trace_header(&self, name: &str) -> Option<&str> {
        self.message_attribute_str(name)
    }

    fn attributes(&self, record: &mut dyn FnMut(&'static str, Attribute<'_>)) {
        record("messaging.message.id", Attribute::Text(&self.message_id));
        if let Some(group) = self.group_id() {
            record("messaging.message.conversation_id", Attribute::Text(group));
        }
    }
}

impl SqsMetadata {
    pub(crate) fn from_sdk(message: aws_sdk_sqs::types::Message, queue: &Arc<str>) -> Option<Self> {
        Some(SqsMetadata {
            queue: queue.clone(),
            message_id: message.message_id?,
            receipt_handle: message.receipt_handle?,
            body: Body(Arc::from(message.body.unwrap_or_default())),
            attributes: message.attributes.unwrap_or_default(),
            message_attributes: message.message_attributes.unwrap_or_default(),
        })
    }

    /// Metadata of a message with `body`, from `queue`, with id `message_id`, received
    /// once, for tests of handlers (its receipt handle is empty).
    pub fn new(queue: &str, message_id: &str, body: &str) -> Self {
        SqsMetadata {
            queue: Arc::from(queue),
            message_id: message_id.to_owned(),
            receipt_handle: String::new(),
            body: Body(Arc::from(body)),
            attributes: HashMap::new(),
            message_attributes: HashMap::new(),
        }
    }

    /// Sets a system attribute (`ApproximateReceiveCount`, `SentTimestamp`...).
    pub fn with_attribute(mut self, name: MessageSystemAttributeName, value: impl Into<String>) -> Self {
        self.attributes.insert(name, value.into());
        self
    }

    /// Sets the FIFO message group.
    pub fn with_group_id(self, group: impl Into<String>) -> Self {
        self.with_attribute(MessageSystemAttributeName::MessageGroupId, group)
    }

    /// Sets a message attribute of type `String`.
    pub fn with_message_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let value = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .expect("the data type is set");
        self.message_attributes.insert(name.into(), value);
        self
    }

    /// A message of this metadata, as the source delivers it: its data is the body, as
    /// bytes sharing this metadata's copy, its attempt the receive count.
    pub fn into_message(self) -> SqsMessage {
        let body = Bytes::from_owner(self.body.clone());
        let attempt = self.receive_count();
        Message::with_metadata(body, self).with_attempt(attempt)
    }

    /// The name of the queue it came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The message's body as received (the message's data may have been decoded since).
    pub fn body(&self) -> &str {
        &self.body.0
    }

    /// The receipt handle of this delivery, which SQS wants for deleting the message or
    /// changing its visibility. The source deletes with it after the last stage; a
    /// handler needs it only to call SQS itself.
    pub fn receipt_handle(&self) -> &str {
        &self.receipt_handle
    }

    /// The id SQS gave the message when it was sent.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The message's group in a FIFO queue.
    pub fn group_id(&self) -> Option<&str> {
        self.attribute(MessageSystemAttributeName::MessageGroupId)
    }

    /// How many times SQS has delivered the message, this time included.
    pub fn receive_count(&self) -> u32 {
        self.attribute(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|count| count.parse().ok())
            .unwrap_or(1)
    }

    /// When the message was sent, in milliseconds since the Unix epoch.
    pub fn sent_timestamp(&self) -> Option<u64> {
        self.attribute(MessageSystemAttributeName::SentTimestamp)?
            .parse()
            .ok()
    }

    /// A system attribute, if it was asked for (see
    /// [`SqsConfig::attribute_names`](crate::SqsConfig::attribute_names)).
    pub fn attribute(&self, name: MessageSystemAttributeName) -> Option<&str> {
        self.attributes.get(&name).map(String::as_str)
    }

    /// A message attribute set by the sender.
    pub fn message_attribute(&self, name: &str) -> Option<&MessageAttributeValue> {
        self.message_attributes.get(name)
    }

    /// A message attribute's string value.
    pub fn message_attribute_str(&self, name: &str) -> Option<&str> {
        self.message_attribute(name)?.string_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a server sends as attributes, reading them never panics, and a
        /// receive count that is not a number counts as a first delivery.
        #[test]
        fn any_attributes_are_read_without_panic(
            count in ".{0,12}",
            sent in ".{0,24}",
            group in proptest::option::of(".{0,16}"),
            body in proptest::option::of(".{0,64}"),
            receipt in proptest::option::of(".{0,16}"),
        ) {
            let mut message = aws_sdk_sqs::types::Message::builder()
                .message_id("id")
                .set_receipt_handle(receipt.clone())
                .set_body(body)
                .attributes(MessageSystemAttributeName::ApproximateReceiveCount, count.clone())
                .attributes(MessageSystemAttributeName::SentTimestamp, sent);
            if let Some(group) = group {
                message = message.attributes(MessageSystemAttributeName::MessageGroupId, group);
            }
            let converted = SqsMetadata::from_sdk(message.build(), &Arc::from("q"));
            prop_assert_eq!(converted.is_some(), receipt.is_some());
            if let Some(converted) = converted {
                let expected = count.parse::<u32>().unwrap_or(1);
                prop_assert_eq!(converted.receive_count(), expected);
                let _ = (converted.sent_timestamp(), converted.group_id(), converted.body());
            }
        }
    }
}
