//! Acknowledging entries after their last stage.

use std::sync::Arc;

use longshore::source::Acknowledger;

use crate::metadata::{EntryId, RedisStreamMessage, RedisStreamMetadata};
use crate::stream::Stream;

/// Acknowledges a [`RedisStreamSource`](crate::RedisStreamSource)'s entries (`XACK`),
/// failed ones too: the pipeline retried them in process, and its dead-letter
/// destination has those failed for good. Made by the source.
#[derive(Debug, Clone)]
pub struct RedisStreamAcknowledger(pub(crate) Arc<Stream>);

impl Acknowledger<RedisStreamMetadata> for RedisStreamAcknowledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<RedisStreamMessage<T>>,
        failed: Vec<RedisStreamMessage<T>>,
    ) {
        // No reference to the messages is held across the call: their data need not be
        // `Sync`.
        let ids = successful
            .iter()
            .chain(&failed)
            .map(|message| message.metadata().key())
            .collect();
        drop((successful, failed));
        self.0.ack(ids).await;
    }

    /// Sends the acknowledgements still queued to go with a read.
    async fn flush(&self) {
        self.0.flush_acks().await;
    }

    /// Entries not to be handled here (waiting for a retry at shutdown): any consumer may
    /// claim them at once.
    async fn release<T: Send + 'static>(&self, messages: Vec<RedisStreamMessage<T>>) {
        let ids: Vec<EntryId> = messages.iter().map(|m| m.metadata().key()).collect();
        drop(messages);
        self.0.hand_back(&ids).await;
    }

    fn origin<T>(&self, message: &RedisStreamMessage<T>) -> Option<String> {
        Some(format!("{} {}", self.0.key, message.metadata().id()))
    }

    fn acknowledges_each(&self) -> bool {
        // An entry acknowledged as soon as it is done is not handled again after a kill.
        true
    }
}
