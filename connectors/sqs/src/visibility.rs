//! Visibility extension: a message still held when its visibility timeout nears gets a
//! new one, so a long job is not delivered to another consumer meanwhile.
//!
//! Each message is extended from its own expiry, known only from a request SQS took: a
//! message counts as extended once its change succeeded. Rounds never wait for each
//! other: every batch call runs on its own and an entry that fails is simply due again
//! in the next round (a message acknowledged meanwhile is dropped from it), so one slow
//! or failing entry never delays the others. The margin before expiry grows with the
//! slowest recent call, so a slow API still extends in time.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::held::{Extension, Held};
use crate::queue::{Queue, MAX_BATCH};

/// Extends what would become visible within half the timeout plus twice the slowest
/// recent call, looking several times per timeout.
pub(crate) async fn run(queue: Arc<Queue>, held: Arc<Held>, stop: CancellationToken) {
    let visibility = queue.visibility;
    let step = (visibility / 6).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut ticks = tokio::time::interval(step);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls: JoinSet<Duration> = JoinSet::new();
    // The slowest recent call, decaying by a tenth each round.
    let mut latency = Duration::ZERO;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            Some(took) = calls.join_next(), if !calls.is_empty() => {
                latency = latency.max(took.unwrap_or(visibility));
                continue;
            }
            _ = ticks.tick() => {}
        }
        latency = latency.mul_f64(0.9);
        // Never the whole timeout: a just-extended message is not due again at once.
        let margin = (visibility / 2 + step + latency * 2).min(visibility.saturating_sub(step));
        let due = held.due_for_extension(Instant::now(), margin, visibility);
        if due.is_empty() {
            continue;
        }
        tracing::debug!(queue = %queue.name, messages = due.len(), ?margin, "extending visibility");
        let mut due = due.into_iter().peekable();
        while due.peek().is_some() {
            let batch: Vec<Extension> = due.by_ref().take(MAX_BATCH).collect();
            calls.spawn(extend(queue.clone(), held.clone(), batch, step));
        }
    }
}

/// One batch call extending `batch`; records each entry's outcome in `held`. Returns how
/// long the call took. It gets until the first of its messages would become visible,
/// and at least `step` (a message past its expiry may still be extended if no one else
/// received it).
async fn extend(queue: Arc<Queue>, held: Arc<Held>, batch: Vec<Extension>, step: Duration) -> Duration {
    let sent_at = Instant::now();
    let entries: Vec<_> = batch.iter().map(|e| e.entry.clone()).collect();
    // A call still unanswered when the first of its messages would become visible is of
    // no use any more (a stalled connection, say): failed, and sent again at once.
    let expiry = batch
        .iter()
        .map(|e| e.visible_at)
        .min()
        .unwrap_or(sent_at)
        .max(sent_at + step);
    let outcomes = match tokio::time::timeout_at(expiry, queue.batch_call(&entries)).await {
        Ok(outcomes) => outcomes.map_err(|error| error.to_string()),
        Err(_) => Err("no answer before the message's visibility ran out".to_owned()),
    };
    let took = sent_at.elapsed();
    // Messages let go of with a visibility change while this call was out: the change
    // again, so that an extension landing late does not hide them for a timeout.
    let overridden: Vec<_> = batch
        .iter()
        .filter_map(|extension| held.take_overridden(extension.ack_ref))
        .collect();
    if !overridden.is_empty() {
        queue.send_all(overridden).await;
    }
    for (index, extension) in batch.iter().enumerate() {
        let failure = match &outcomes {
            Ok(outcomes) => match &outcomes[index] {
                Ok(()) => {
                    held.extended(extension.ack_ref, sent_at, queue.visibility);
                    continue;
                }
                Err(failure) => format!("{}: {}", failure.code, failure.message),
            },
            Err(error) => error.clone(),
        };
        // Acknowledged while its extension was on its way: nothing lost.
        if let Some(message_id) = held.extension_failed(extension.ack_ref) {
            queue.metrics.extension_failures.inc();
            tracing::warn!(queue = %queue.name, message_id, %failure, ?took, "visibility extension failed; tried again next round");
        }
    }
    took
}
