//! Settling deliveries after their last stage: acknowledgements coalesced into one
//! `multiple` ack for each contiguous run of delivery tags.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::FutureExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use longshore::source::{AckPrefix, Acknowledger};

use crate::metadata::{RabbitMqMessage, RabbitMqMetadata};
use crate::source::Shared;

/// Acknowledges a [`RabbitMqSource`](crate::RabbitMqSource)'s deliveries.
///
/// - Handled, or taken by the pipeline's dead-letter destination: `basic.ack`. One ack
///   with `multiple` covers each contiguous run of finished delivery tags. Those that
///   finish behind an unfinished one wait for it while deliveries keep coming, but at
///   most half the prefetch of them, and none once the source waits for the server
///   (which counts them against the prefetch): then they are acknowledged one by one,
///   so that a slow message never holds the prefetch.
/// - Failed for good with no dead-letter destination: `basic.reject` without requeue
///   (to the queue's dead-letter exchange).
/// - Released at shutdown: `basic.nack` with requeue.
///
/// A delivery whose channel has died is not acknowledged: the server requeued it
/// already. Made by the source.
#[derive(Debug, Clone)]
pub struct RabbitMqAcknowledger(pub(crate) Arc<Shared>);

/// The deliveries of the running consumer handed out and not yet settled.
#[derive(Debug, Default)]
pub(crate) struct Unsettled {
    /// The consumer they came from (its number): those of an earlier one are its dead
    /// channel's, settled by the server.
    consumer: u64,
    /// Its channel: delivery tags mean something only there.
    channel: Option<lapin::Channel>,
    prefix: AckPrefix<()>,
    /// How many finished deliveries may wait behind an unfinished one.
    most_waiting: usize,
}

/// What a delivery is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// This one (`false`) or every one up to it (`true`).
    Ack(bool),
    Reject,
    Requeue,
}

type Sent = Pin<Box<dyn Future<Output = lapin::Result<()>> + Send>>;

/// Hands `settle` of delivery `tag` to `channel` now: the channel queues the frame on
/// the call's first poll, so frames leave in the order of these calls. (An
/// acknowledgement through lapin's `Acker` runs as a task of its own: two of them may
/// leave in either order, and a `multiple` ack sent before a single one for a tag it
/// covers makes the server close the channel.)
fn submit(channel: &lapin::Channel, tag: u64, settle: Settle) -> (Settle, Sent) {
    let channel = channel.clone();
    let mut sent: Sent = Box::pin(async move {
        match settle {
            Settle::Ack(multiple) => channel.basic_ack(tag, BasicAckOptions { multiple }).await,
            Settle::Reject => {
                channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await
            }
            Settle::Requeue => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                channel.basic_nack(tag, requeue).await
            }
        }
    });
    if let Some(done) = (&mut sent).now_or_never() {
        sent = Box::pin(std::future::ready(done));
    }
    (settle, sent)
}

/// Waits for the settlements handed to the channel.
async fn sent(sends: Vec<(Settle, Sent)>) {
    let mut failed = None;
    let mut count = 0;
    for (settle, sent) in sends {
        if let Err(error) = sent.await {
            count += 1;
            failed.get_or_insert((settle, error));
        }
    }
    if let Some((settle, error)) = failed {
        // The channel is gone: the server requeued the deliveries and delivers them
        // again, to be handled twice.
        tracing::warn!(%error, ?settle, count, "rabbitmq deliveries not settled: their channel closed, they come again");
    }
}

/// Acknowledges, one by one, the finished deliveries waiting behind an unfinished one.
pub(crate) async fn send_waiting(shared: &Shared) {
    let mut sends = Vec::new();
    shared.unsettled().coalesce(&mut sends, true);
    sent(sends).await;
}

impl Acknowledger<RabbitMqMetadata> for RabbitMqAcknowledger {
    async fn ack<T: Send + 'static>(
        &self,
        successful: Vec<RabbitMqMessage<T>>,
        failed: Vec<RabbitMqMessage<T>>,
    ) {
        let count = held(&successful) + held(&failed);
        let sends = {
            let mut unsettled = self.0.unsettled();
            let mut sends = Vec::new();
            // Rejections first: sent before any ack that covers their tags.
            for message in &failed {
                if message.is_dead_lettered() {
                    unsettled.acknowledged(message.metadata());
                } else {
                    unsettled.settle(message.metadata(), Settle::Reject, &mut sends);
                }
            }
            for message in &successful {
                unsettled.acknowledged(message.metadata());
            }
            unsettled.coalesce(&mut sends, self.0.starved.load(Ordering::SeqCst));
            sends
        };
        // The messages (whose data need not be Sync) are not held across the sends.
        drop((successful, failed));
        self.0.held.fetch_sub(count, Ordering::Relaxed);
        sent(sends).await;
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<RabbitMqMessage<T>>) {
        let count = held(&messages);
        let mut sends = Vec::new();
        {
            let mut unsettled = self.0.unsettled();
            for message in &messages {
                unsettled.settle(message.metadata(), Settle::Requeue, &mut sends);
            }
        }
        drop(messages);
        self.0.held.fetch_sub(count, Ordering::Relaxed);
        sent(sends).await;
    }

    /// Acknowledges what still waits, then closes the channel and the connection: what
    /// was delivered and never handed out goes back to the queue.
    async fn flush(&self) {
        send_waiting(&self.0).await;
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

/// How many of `messages` came from the server (not built by a handler's unit test).
fn held<T>(messages: &[RabbitMqMessage<T>]) -> usize {
    messages.iter().filter(|m| m.metadata().consumer != 0).count()
}

impl Unsettled {
    /// Tracks the deliveries of consumer number `consumer`, on `channel`, from now on,
    /// dropping those of the one before (their channel is dead).
    pub(crate) fn start(&mut self, consumer: u64, channel: lapin::Channel, prefetch: u16) {
        *self = Unsettled {
            consumer,
            channel: Some(channel),
            prefix: AckPrefix::default(),
            most_waiting: usize::from(prefetch / 2).max(1),
        };
    }

    /// Whether consumer number `consumer`'s channel is still open: the deliveries it
    /// buffered are worth handing out (else the server has requeued them already).
    pub(crate) fn channel_open(&self, consumer: u64) -> bool {
        self.channel_of(consumer)
            .is_some_and(|channel| channel.status().connected())
    }

    /// Consumer number `consumer`'s channel, if it is the one tracked.
    pub(crate) fn channel_of(&self, consumer: u64) -> Option<lapin::Channel> {
        self.channel.clone().filter(|_| self.consumer == consumer)
    }

    /// Tracks a delivery handed out.
    pub(crate) fn received(&mut self, metadata: &RabbitMqMetadata) {
        if metadata.consumer == self.consumer {
            // Tags only grow on a channel.
            let _ = self.prefix.received(metadata.tag, ());
        }
    }

    fn acknowledged(&mut self, metadata: &RabbitMqMetadata) {
        if metadata.consumer == self.consumer {
            self.prefix.acknowledged(metadata.tag);
        }
    }

    /// Rejects or requeues one delivery, now: before any ack that covers its tag.
    fn settle(&mut self, metadata: &RabbitMqMetadata, settle: Settle, sends: &mut Vec<(Settle, Sent)>) {
        if metadata.consumer != self.consumer || self.prefix.remove(metadata.tag).is_none() {
            return;
        }
        if let Some(channel) = &self.channel {
            sends.push(submit(channel, metadata.tag, settle));
        }
    }

    /// Submits one ack for the finished run at the front, and single acks for those
    /// waiting behind an unfinished one once there are too many (or `all`).
    fn coalesce(&mut self, sends: &mut Vec<(Settle, Sent)>, all: bool) {
        let Some(channel) = &self.channel else {
            return;
        };
        if let Some((tag, ())) = self.prefix.take_front() {
            sends.push(submit(channel, tag, Settle::Ack(true)));
        }
        if all || self.prefix.waiting() > self.most_waiting {
            for (tag, ()) in self.prefix.take_acknowledged() {
                sends.push(submit(channel, tag, Settle::Ack(false)));
            }
        }
    }
}

/// Hands deliveries never handed out (drained at shutdown) back to the queue.
pub(crate) async fn requeue(channel: &lapin::Channel, tags: Vec<u64>) {
    let sends = tags
        .into_iter()
        .map(|tag| submit(channel, tag, Settle::Requeue))
        .collect();
    sent(sends).await;
}
