//! Acknowledging entries after their last stage.

use std::sync::Arc;

use longshore::source::Acknowledger;

use crate::metadata::{RedisMessage, RedisMetadata};
use crate::stream::Stream;

/// Acknowledges a [`RedisStreamSource`](crate::RedisStreamSource)'s entries (`XACK`),
/// failed ones too: the pipeline retried them in process, and its dead-letter
/// destination has those failed for good. Made by the source.
#[derive(Debug, Clone)]
pub struct RedisStreamAcknowledger(pub(crate) Arc<Stream>);

impl Acknowledger<RedisMetadata> for RedisStreamAcknowledger {
    async fn ack<T: Send + 'static>(&self, successful: Vec<RedisMessage<T>>, failed: Vec<RedisMessage<T>>) {
        let ids: Vec<String> = successful
            .iter()
            .chain(&failed)
            .map(|message| message.metadata().id().to_owned())
            .collect();
        self.0.acknowledge(&ids).await;
    }

    fn origin<T>(&self, message: &RedisMessage<T>) -> Option<String> {
        Some(format!("{} {}", self.0.key, message.metadata().id()))
    }

    fn acknowledges_each(&self) -> bool {
        // An entry acknowledged as soon as it is done is not handled again after a kill.
        true
    }
}
