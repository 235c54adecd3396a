//! Settling messages after their last stage.

use std::sync::Arc;

use async_nats::jetstream::AckKind;
use longshore::source::Acknowledger;

use crate::metadata::{JetStreamMessage, JetStreamMetadata};
use crate::source::Shared;

/// Acknowledges a [`JetStreamSource`](crate::JetStreamSource)'s messages: `+ACK` for the
/// handled, `-NAK` with the backoff for those to be tried again, `+TERM` for those failed
/// for good with no dead-letter destination (the server publishes an advisory). Made by
/// the source.
#[derive(Debug, Clone)]
pub struct JetStreamAcknowledger(pub(crate) Arc<Shared>);

impl Acknowledger<JetStreamMetadata> for JetStreamAcknowledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<JetStreamMessage<T>>,
        failed: Vec<JetStreamMessage<T>>,
    ) {
        let mut settled = replies(&successful, |_| AckKind::Ack);
        settled.extend(replies(&failed, |message| match message.redeliver_after() {
            Some(after) => AckKind::Nak(Some(after)),
            None if message.is_dead_lettered() => AckKind::Ack,
            None => AckKind::Term,
        }));
        // The messages (whose data need not be Sync) are not held across the sends.
        drop((successful, failed));
        for (reply, sequence, kind) in settled {
            self.0.settle(Some(&reply), sequence, kind).await;
        }
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<JetStreamMessage<T>>) {
        let released = replies(&messages, |_| AckKind::Nak(None));
        drop(messages);
        for (reply, sequence, kind) in released {
            self.0.settle(Some(&reply), sequence, kind).await;
        }
    }

    /// The acknowledgements buffered by the client, sent.
    async fn flush(&self) {
        self.0.flush().await;
    }

    fn origin<T>(&self, message: &JetStreamMessage<T>) -> Option<String> {
        let metadata = message.metadata();
        Some(format!(
            "{} #{} ({})",
            self.0.stream,
            metadata.stream_sequence(),
            metadata.subject()
        ))
    }

    fn acknowledges_each(&self) -> bool {
        // A message acknowledged as soon as it is done is not handled again after a kill.
        true
    }
}

/// Each message's reply subject (none in a handler's unit test) and stream sequence,
/// with what to send.
fn replies<T>(
    messages: &[JetStreamMessage<T>],
    kind: impl Fn(&JetStreamMessage<T>) -> AckKind,
) -> Vec<(async_nats::Subject, Option<u64>, AckKind)> {
    messages
        .iter()
        .filter_map(|message| {
            let metadata = message.metadata();
            Some((
                metadata.reply.clone()?,
                Some(metadata.stream_sequence()),
                kind(message),
            ))
        })
        .collect()
}
