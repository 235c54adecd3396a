//! Settling deliveries after their last stage.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use longshore::source::Acknowledger;

use crate::metadata::{RabbitMqMessage, RabbitMqMetadata};
use crate::source::Shared;

/// Acknowledges a [`RabbitMqSource`](crate::RabbitMqSource)'s deliveries: `basic.ack`
/// for the handled and for those the pipeline's dead-letter destination took,
/// `basic.reject` without requeue for those failed for good with no dead-letter
/// destination (to the queue's dead-letter exchange), `basic.nack` with requeue for
/// those released at shutdown. A delivery whose channel has died is not acknowledged:
/// the server requeued it already. Made by the source.
#[derive(Debug, Clone)]
pub struct RabbitMqAcknowledger(pub(crate) Arc<Shared>);

/// What a delivery is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Reject,
    Requeue,
}

impl Acknowledger<RabbitMqMetadata> for RabbitMqAcknowledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<RabbitMqMessage<T>>,
        failed: Vec<RabbitMqMessage<T>>,
    ) {
        let mut settled = handles(&successful, |_| Settle::Ack);
        settled.extend(handles(&failed, |message| {
            if message.is_dead_lettered() {
                Settle::Ack
            } else {
                Settle::Reject
            }
        }));
        // The messages (whose data need not be Sync) are not held across the sends.
        drop((successful, failed));
        settle_all(&self.0, settled, true).await;
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<RabbitMqMessage<T>>) {
        let released = handles(&messages, |_| Settle::Requeue);
        drop(messages);
        settle_all(&self.0, released, true).await;
    }

    /// Closes the channel and the connection, after the last acknowledgement: what was
    /// delivered and never handed out goes back to the queue.
    async fn flush(&self) {
        self.0.close().await;
    }

    fn origin<T>(&self, message: &RabbitMqMessage<T>) -> Option<String> {
        let metadata = message.metadata();
        let id = metadata
            .properties()
            .message_id()
            .as_ref()
            .map(|id| format!(" message id {id}"))
            .unwrap_or_default();
        Some(format!(
            "queue {} (exchange {:?}, routing key {:?}){id}",
            self.0.queue(),
            metadata.exchange(),
            metadata.routing_key()
        ))
    }

    fn acknowledges_each(&self) -> bool {
        // A message acknowledged as soon as it is done is not handled again after a kill.
        true
    }
}

/// Each message's acknowledgement handle (none in a handler's unit test) with what to
/// tell it.
fn handles<T>(
    messages: &[RabbitMqMessage<T>],
    settle: impl Fn(&RabbitMqMessage<T>) -> Settle,
) -> Vec<(lapin::Acker, Settle)> {
    messages
        .iter()
        .filter_map(|message| Some((message.metadata().acker.clone()?, settle(message))))
        .collect()
}

/// Sends every settlement at once (the client writes them in order, without a round
/// trip each), and waits until they are written. `handed_out`: they were counted as
/// held.
pub(crate) async fn settle_all(shared: &Shared, settled: Vec<(lapin::Acker, Settle)>, handed_out: bool) {
    if settled.is_empty() {
        return;
    }
    let count = settled.len();
    let sends = settled.into_iter().map(|(acker, settle)| async move {
        let sent = match settle {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            Settle::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
            Settle::Requeue => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
        };
        match sent {
            Ok(true) => {}
            // Its channel is gone: the server requeued it, and delivers it again.
            Ok(false) => tracing::debug!(?settle, "rabbitmq delivery not settled: its channel closed, it comes again"),
            Err(error) => tracing::warn!(%error, ?settle, "rabbitmq delivery not settled; the server delivers it again once the channel closes"),
        }
    });
    futures_util::future::join_all(sends).await;
    if handed_out {
        shared.held.fetch_sub(count, Ordering::Relaxed);
    }
}
