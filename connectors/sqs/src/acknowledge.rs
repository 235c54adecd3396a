//! Acknowledgement: successes deleted in batches of 10 (a partial batch waits at most
//! `delete_interval`), failures made visible again after their backoff, or, after the
//! last attempt, redriven or deleted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longshore::{Acknowledger, Message};
use tokio_util::sync::CancellationToken;

use crate::config::FinalFailure;
use crate::held::Held;
use crate::message::SqsMessage;
use crate::queue::{Entry, Queue, MAX_BATCH};

/// Acknowledges SQS messages: deletes the successful ones, and changes the visibility
/// of the failed ones so that SQS delivers them again after their backoff.
///
/// The pipeline calls [`flush`](Acknowledger::flush) after its last acknowledgement:
/// the deletes still waiting for a full batch are sent then.
#[derive(Debug, Clone)]
pub struct SqsAcknowledger {
    pub(crate) queue: Arc<Queue>,
    pub(crate) held: Arc<Held>,
    pub(crate) deletes: Arc<Deletes>,
    pub(crate) final_failure: FinalFailure,
    /// Stops the source's background tasks once the last deletes are sent.
    pub(crate) stop: CancellationToken,
}

/// Deletes waiting for a full batch; fewer than [`MAX_BATCH`] between calls.
#[derive(Debug, Default)]
pub(crate) struct Deletes {
    waiting: Mutex<Waiting>,
    /// Held while the waiting deletes are sent, so that the last flush waits for the
    /// periodic one.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Waiting {
    entries: Vec<Entry>,
    /// When the oldest of `entries` started waiting (at the latest).
    since: Option<Instant>,
}

impl Deletes {
    /// Adds `entries`; returns the full batches to send now.
    fn add(&self, entries: impl IntoIterator<Item = Entry>) -> Vec<Entry> {
        let mut waiting = self.lock();
        waiting.entries.extend(entries);
        let full = waiting.entries.len() / MAX_BATCH * MAX_BATCH;
        let batches: Vec<Entry> = waiting.entries.drain(..full).collect();
        if waiting.entries.is_empty() {
            waiting.since = None;
        } else if waiting.since.is_none() || !batches.is_empty() {
            // What is left came last: it has waited no longer than from now.
            waiting.since = Some(Instant::now());
        }
        batches
    }

    /// The waiting deletes, if the oldest has waited `at_least`.
    fn take_older(&self, at_least: Duration) -> Vec<Entry> {
        let mut waiting = self.lock();
        match waiting.since {
            Some(since) if since.elapsed() >= at_least => {
                waiting.since = None;
                std::mem::take(&mut waiting.entries)
            }
            _ => Vec::new(),
        }
    }

    /// Sends the deletes that have waited `at_least` for a full batch.
    async fn send_waiting(&self, queue: &Queue, at_least: Duration) {
        let _sending = self.sending.lock().await;
        let waiting = self.take_older(at_least);
        if !waiting.is_empty() {
            queue.send_all(waiting).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Acknowledger<SqsMessage> for SqsAcknowledger {
    async fn ack(&self, successful: Vec<Message<SqsMessage>>, failed: Vec<Message<SqsMessage>>) {
        self.held
            .release(successful.iter().chain(&failed).map(Message::ack_ref));
        let mut deletes: Vec<Entry> = successful
            .into_iter()
            .map(|m| Entry::delete(m.into_data().receipt_handle))
            .collect();
        let mut changes = Vec::new();
        for message in failed {
            let redeliver_after = message.redeliver_after();
            let receipt = message.into_data().receipt_handle;
            match (redeliver_after, self.final_failure) {
                (Some(delay), _) => changes.push(Entry::change(receipt, delay)),
                (None, FinalFailure::Redrive) => changes.push(Entry::change(receipt, Duration::ZERO)),
                (None, FinalFailure::Delete) => deletes.push(Entry::delete(receipt)),
            }
        }
        changes.extend(self.deletes.add(deletes));
        if !changes.is_empty() {
            self.queue.send_all(changes).await;
        }
    }

    async fn flush(&self) {
        self.stop.cancel();
        self.deletes.send_waiting(&self.queue, Duration::ZERO).await;
    }

    /// Messages not to be finished at shutdown (they waited for a retry): visible again
    /// now, not after their visibility timeout.
    async fn release(&self, messages: Vec<Message<SqsMessage>>) {
        release_now(&self.queue, &self.held, messages).await;
    }
}

/// Makes `messages` visible again at once (visibility 0) and lets go of them.
pub(crate) async fn release_now(queue: &Queue, held: &Held, messages: Vec<Message<SqsMessage>>) {
    if messages.is_empty() {
        return;
    }
    tracing::info!(queue = %queue.name, messages = messages.len(), "releasing messages not finished");
    held.release(messages.iter().map(Message::ack_ref));
    let entries = messages
        .into_iter()
        .map(|m| Entry::change(m.into_data().receipt_handle, Duration::ZERO))
        .collect();
    queue.send_all(entries).await;
}

/// Sends the deletes that waited `interval` for a full batch; a delete waits at most
/// one and a half intervals.
pub(crate) async fn flush_every(
    queue: Arc<Queue>,
    deletes: Arc<Deletes>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        deletes.send_waiting(&queue, interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batches_leave_at_once_and_the_rest_waits() {
        let deletes = Deletes::default();
        let entries = |range: std::ops::Range<u32>| range.map(|i| Entry::delete(i.to_string()));
        assert!(deletes.add(entries(0..7)).is_empty());
        assert_eq!(deletes.add(entries(7..25)).len(), 20);
        assert!(
            deletes.take_older(Duration::from_secs(60)).is_empty(),
            "not old enough"
        );
        assert_eq!(deletes.take_older(Duration::ZERO).len(), 5);
        assert!(deletes.take_older(Duration::ZERO).is_empty());
    }
}
