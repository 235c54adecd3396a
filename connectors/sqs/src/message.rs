//! One received SQS message, as handlers see it.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};

/// A message received from an SQS queue.
///
/// Its attempt number ([`Message::attempt`](longshore::Message::attempt)) is SQS's
/// `ApproximateReceiveCount`: a message redelivered after a failure, a crash or an
/// expired visibility timeout comes back with the next number.
#[derive(Debug, Clone)]
pub struct SqsMessage {
    pub(crate) queue: Arc<str>,
    pub(crate) message_id: String,
    pub(crate) receipt_handle: String,
    pub(crate) body: String,
    pub(crate) attributes: HashMap<MessageSystemAttributeName, String>,
    pub(crate) message_attributes: HashMap<String, MessageAttributeValue>,
}

impl SqsMessage {
    pub(crate) fn from_sdk(message: aws_sdk_sqs::types::Message, queue: &Arc<str>) -> Option<Self> {
        Some(SqsMessage {
            queue: queue.clone(),
            message_id: message.message_id?,
            receipt_handle: message.receipt_handle?,
            body: message.body.unwrap_or_default(),
            attributes: message.attributes.unwrap_or_default(),
            message_attributes: message.message_attributes.unwrap_or_default(),
        })
    }

    /// The name of the queue it came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The message's body.
    pub fn body(&self) -> &str {
        &self.body
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
            let converted = SqsMessage::from_sdk(message.build(), &Arc::from("q"));
            prop_assert_eq!(converted.is_some(), receipt.is_some());
            if let Some(converted) = converted {
                let expected = count.parse::<u32>().unwrap_or(1);
                prop_assert_eq!(converted.receive_count(), expected);
                let _ = (converted.sent_timestamp(), converted.group_id(), converted.body());
            }
        }
    }
}
