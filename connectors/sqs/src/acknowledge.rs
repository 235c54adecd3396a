//! Acknowledgement: successes deleted in batches of 10 (a partial batch waits at most
//! `delete_interval`), failures made visible again after their backoff, or, after the
//! last attempt, redriven or deleted.
//!
//! The stages only hand their outcomes over, through a bounded queue, to the source's
//! own sender task, which makes the calls (with their retries) concurrently: SQS latency
//! or throttling never becomes processing time. A full queue holds the stages back, so
//! the outcomes waiting for their calls stay bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use longshore::source::Plan;
use longshore::{Acknowledger, BuildError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::FinalFailure;
use crate::held::Held;
use crate::metadata::{SqsMessage, SqsMetadata};
use crate::queue::{Entry, Queue, MAX_BATCH};

/// Hand-overs waiting for the sender task; each holds one chunk's or batch's outcomes.
pub(crate) const OUTBOX: usize = 256;
/// Batch calls in flight at once, beyond which the sender stops taking hand-overs.
const CALLS: usize = 16;
/// Deletes handed over and not yet sent, at most: as many as the calls in flight carry,
/// plus a partial batch. Their messages are still held (and extended) by the source
/// though the pipeline counts them done, so the source holds at most the pipeline's
/// `max_in_flight` plus this many, and a kill -9 replays at most that many more. Beyond,
/// the stages wait.
pub(crate) const PENDING_DELETES: usize = CALLS * MAX_BATCH + MAX_BATCH;

/// Acknowledges SQS messages: deletes the successful ones, and changes the visibility
/// of the failed ones so that SQS delivers them again after their backoff.
///
/// The pipeline calls [`flush`](Acknowledger::flush) after its last acknowledgement:
/// it returns once every delete and change handed over has been sent.
#[derive(Debug, Clone)]
pub struct SqsAcknowledger {
    pub(crate) queue: Arc<Queue>,
    pub(crate) held: Arc<Held>,
    pub(crate) outbox: mpsc::Sender<Command>,
    /// Permits for [`PENDING_DELETES`]; the sender task gives them back once sent.
    pub(crate) pending: Arc<Semaphore>,
    pub(crate) final_failure: Option<FinalFailure>,
    /// Stops the source's background tasks once the last deletes are sent.
    pub(crate) stop: CancellationToken,
}

/// What the stages hand the sender task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Deletes of held messages (their `ack_ref`s): let go of once sent, so that their
    /// visibility is still extended while they wait.
    Delete(Vec<(u64, Entry)>),
    /// Visibility changes of messages already let go of.
    Change(Vec<Entry>),
    /// Send everything waiting, then answer.
    Flush(oneshot::Sender<()>),
}

impl SqsAcknowledger {
    /// What the source's `prepare` checks: an explicit `redrive` with a pipeline
    /// dead-letter destination would dead-letter each poison message twice.
    pub(crate) fn check(&self, plan: &Plan) -> Result<(), BuildError> {
        if plan.dead_letter && self.final_failure == Some(FinalFailure::Redrive) {
            return Err(BuildError::new(
                "source.on_final_failure",
                "is `redrive`, but the pipeline has a dead-letter destination: each poison message would \
                 be dead-lettered by both; leave it unset (deleted once dead-lettered) or set `delete`",
            ));
        }
        if !plan.dead_letter && self.final_failure != Some(FinalFailure::Delete) && !self.queue.redrive {
            tracing::warn!(
                queue = %self.queue.name,
                "final failures are redriven but the queue has no redrive policy and the pipeline no \
                 dead-letter destination: a message that always fails will be received again forever"
            );
        }
        Ok(())
    }

    async fn hand_over(&self, command: Command) {
        if self.outbox.send(command).await.is_err() {
            tracing::warn!(queue = %self.queue.name, "acknowledgement sender gone; those messages will be delivered again");
        }
    }
}

impl Acknowledger<SqsMetadata> for SqsAcknowledger {
    async fn ack<T: Send + 'static>(&self, successful: Vec<SqsMessage<T>>, failed: Vec<SqsMessage<T>>) {
        if !successful.is_empty() || !failed.is_empty() {
            self.queue.progress.made();
        }
        let mut deletes: Vec<(u64, Entry)> = successful
            .into_iter()
            .map(|m| (m.ack_ref(), Entry::delete(m.into_metadata().receipt_handle)))
            .collect();
        let mut changes = Vec::new();
        for message in failed {
            let (ack_ref, redeliver_after, dead_lettered) = (
                message.ack_ref(),
                message.redeliver_after(),
                message.is_dead_lettered(),
            );
            let receipt = message.into_metadata().receipt_handle;
            let delay = match (redeliver_after, dead_lettered, self.final_failure) {
                (Some(delay), _, _) => delay,
                // Dead-lettered by the pipeline: deleted, never redriven as well.
                (None, true, _) | (None, false, Some(FinalFailure::Delete)) => {
                    deletes.push((ack_ref, Entry::delete(receipt)));
                    continue;
                }
                (None, false, _) => Duration::ZERO,
            };
            changes.push((ack_ref, Entry::change(receipt, delay)));
        }
        self.held.release_changing(changes.iter().cloned());
        let changes: Vec<Entry> = changes.into_iter().map(|(_, entry)| entry).collect();
        while !deletes.is_empty() {
            let rest = deletes.split_off(deletes.len().min(PENDING_DELETES));
            let n = u32::try_from(deletes.len()).expect("at most PENDING_DELETES");
            if let Ok(permits) = self.pending.acquire_many(n).await {
                permits.forget();
            }
            self.hand_over(Command::Delete(std::mem::replace(&mut deletes, rest)))
                .await;
        }
        if !changes.is_empty() {
            self.hand_over(Command::Change(changes)).await;
        }
    }

    async fn flush(&self) {
        let (done, sent) = oneshot::channel();
        self.hand_over(Command::Flush(done)).await;
        let _ = sent.await;
        self.stop.cancel();
    }

    /// A finished message deleted at once is neither extended any longer nor handled
    /// again after a kill.
    fn acknowledges_each(&self) -> bool {
        true
    }

    /// Messages not to be finished at shutdown (they waited for a retry): visible again
    /// now, not after their visibility timeout.
    async fn release<T: Send + 'static>(&self, messages: Vec<SqsMessage<T>>) {
        release_now(&self.queue, &self.held, messages).await;
    }
}

/// Makes `messages` visible again at once (visibility 0) and lets go of them.
pub(crate) async fn release_now<T>(queue: &Queue, held: &Held, messages: Vec<SqsMessage<T>>) {
    if messages.is_empty() {
        return;
    }
    tracing::info!(queue = %queue.name, messages = messages.len(), "releasing messages not finished");
    let changes: Vec<(u64, Entry)> = messages
        .into_iter()
        .map(|m| {
            (
                m.ack_ref(),
                Entry::change(m.into_metadata().receipt_handle, Duration::ZERO),
            )
        })
        .collect();
    held.release_changing(changes.iter().cloned());
    queue
        .send_all(changes.into_iter().map(|(_, entry)| entry).collect())
        .await;
}

/// Deletes waiting for a full batch; fewer than [`MAX_BATCH`] between hand-overs.
#[derive(Debug, Default)]
struct Waiting {
    deletes: Vec<(u64, Entry)>,
    /// When the oldest of `deletes` started waiting (at the latest).
    since: Option<Instant>,
}

impl Waiting {
    /// Adds `deletes`; returns the full batches to send now.
    fn add(&mut self, deletes: Vec<(u64, Entry)>) -> Vec<Vec<(u64, Entry)>> {
        self.deletes.extend(deletes);
        let mut full = Vec::new();
        while self.deletes.len() >= MAX_BATCH {
            let rest = self.deletes.split_off(MAX_BATCH);
            full.push(std::mem::replace(&mut self.deletes, rest));
        }
        if self.deletes.is_empty() {
            self.since = None;
        } else if self.since.is_none() || !full.is_empty() {
            // What is left came last: it has waited no longer than from now.
            self.since = Some(Instant::now());
        }
        full
    }

    /// The waiting deletes, if the oldest has waited `at_least`.
    fn take_older(&mut self, at_least: Duration) -> Vec<(u64, Entry)> {
        match self.since {
            Some(since) if since.elapsed() >= at_least => {
                self.since = None;
                std::mem::take(&mut self.deletes)
            }
            _ => Vec::new(),
        }
    }
}

/// The sender task: takes the stages' hand-overs, sends full delete batches at once and
/// partial ones after `interval`, and visibility changes at once, each call on its own.
/// Ends when every acknowledger is gone, after sending what waits.
pub(crate) async fn send_handed_over(
    queue: Arc<Queue>,
    held: Arc<Held>,
    mut outbox: mpsc::Receiver<Command>,
    pending: Arc<Semaphore>,
    interval: Duration,
) {
    let mut waiting = Waiting::default();
    let mut calls = JoinSet::new();
    let mut ticks = tokio::time::interval(interval / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let delete = |calls: &mut JoinSet<()>, batch: Vec<(u64, Entry)>| {
        if batch.is_empty() {
            return;
        }
        let (queue, held, pending) = (queue.clone(), held.clone(), pending.clone());
        calls.spawn(async move {
            let (refs, entries): (Vec<u64>, Vec<Entry>) = batch.into_iter().unzip();
            queue.send_all(entries).await;
            pending.add_permits(refs.len());
            held.release(refs);
        });
    };
    loop {
        tokio::select! {
            biased;
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            command = outbox.recv(), if calls.len() < CALLS => match command {
                Some(Command::Delete(deletes)) => {
                    for batch in waiting.add(deletes) {
                        delete(&mut calls, batch);
                    }
                }
                Some(Command::Change(changes)) => {
                    let queue = queue.clone();
                    calls.spawn(async move { queue.send_all(changes).await });
                }
                Some(Command::Flush(done)) => {
                    delete(&mut calls, waiting.take_older(Duration::ZERO));
                    while calls.join_next().await.is_some() {}
                    let _ = done.send(());
                }
                None => break,
            },
            _ = ticks.tick() => delete(&mut calls, waiting.take_older(interval)),
        }
    }
    delete(&mut calls, waiting.take_older(Duration::ZERO));
    while calls.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batches_leave_at_once_and_the_rest_waits() {
        let mut waiting = Waiting::default();
        let deletes =
            |range: std::ops::Range<u64>| range.map(|i| (i, Entry::delete(i.to_string()))).collect();
        assert!(waiting.add(deletes(0..7)).is_empty());
        let full = waiting.add(deletes(7..25));
        assert_eq!(full.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10]);
        assert_eq!(full[0][0].0, 0, "oldest first");
        assert!(
            waiting.take_older(Duration::from_secs(60)).is_empty(),
            "not old enough"
        );
        assert_eq!(waiting.take_older(Duration::ZERO).len(), 5);
        assert!(waiting.take_older(Duration::ZERO).is_empty());
    }
}
