//! The end of every message's path: final failures through `handle_failed` and the
//! dead-letter destination, then one acknowledgement call, then the credits back.

use std::collections::HashSet;

use crate::failure::dead_letter::write_until_done;
use crate::handler::Handler;
use crate::message::Message;
use crate::source::Acknowledger;
use crate::topology::guard::guarded;
use crate::topology::Context;

impl<H, A> Context<H, A>
where
    H: Handler,
    A: Acknowledger<H::Item>,
{
    /// Acknowledges messages that finished their last stage. Each message reaches this
    /// exactly once: it is moved here, and stages never drop one on another path.
    ///
    /// Final failures go through `handle_failed` and the dead-letter destination first;
    /// failures the broker will redeliver go straight to the acknowledger.
    pub(crate) async fn acknowledge(
        &self,
        mut successful: Vec<Message<H::Item>>,
        mut failed: Vec<Message<H::Item>>,
    ) {
        if !failed.is_empty() {
            // Final failures first, so that they form one slice to hand over.
            failed.sort_by_key(|message| message.redeliver_after().is_some());
            let finals = failed
                .iter()
                .take_while(|m| m.redeliver_after().is_none())
                .count();
            let finished = tokio::select! {
                biased;
                () = self.finish_failed(&mut failed[..finals]) => true,
                () = self.abandon.cancelled() => false,
            };
            if !finished {
                // Cut short at the deadline (a dead-letter write that kept failing): not
                // dead-lettered, so not acknowledged either; delivered again. The other
                // messages of their keys in this call go back with them, so that none is
                // finished ahead of an earlier one of its key.
                let rest = failed.split_off(finals);
                let mut released = std::mem::replace(&mut failed, rest);
                let keys: HashSet<u64> = released.iter().filter_map(Message::order_key).collect();
                if !keys.is_empty() {
                    let of_key = |m: &Message<H::Item>| m.order_key().is_some_and(|k| keys.contains(&k));
                    let (same, others): (Vec<_>, Vec<_>) = successful.into_iter().partition(of_key);
                    successful = others;
                    released.extend(same);
                    let (same, others): (Vec<_>, Vec<_>) = failed.into_iter().partition(of_key);
                    failed = others;
                    released.extend(same);
                }
                self.release(released).await;
            }
        }
        let settled = successful.len() + failed.len();
        if settled == 0 {
            return;
        }
        self.count(&successful, &failed);
        let acked = guarded(async {
            self.acknowledger.ack(successful, failed).await;
            Ok(())
        });
        if let Err(failure) = acked.await {
            // The messages' fate is unknown to the source: nothing past them may be
            // trusted, so the pipeline stops (they were not acknowledged: redelivered).
            self.fault
                .raise(format!("the acknowledger panicked: {}", failure.error()));
        }
        self.meter.credits.give_back(settled);
    }

    /// Hands messages that will not be finished back to the source, unacknowledged (see
    /// [`Acknowledger::release`]).
    pub(crate) async fn release(&self, messages: Vec<Message<H::Item>>) {
        let n = messages.len();
        if n == 0 {
            return;
        }
        tracing::info!(
            messages = n,
            "released unacknowledged at shutdown, for redelivery"
        );
        let released = guarded(async {
            self.acknowledger.release(messages).await;
            Ok(())
        });
        if let Err(failure) = released.await {
            self.fault.raise(format!(
                "the acknowledger panicked releasing messages: {}",
                failure.error()
            ));
        }
        self.meter.add_released(n);
        self.meter.credits.give_back(n);
    }

    fn count(&self, successful: &[Message<H::Item>], failed: &[Message<H::Item>]) {
        self.meter.add_settled(successful.len(), failed.len());
        let metrics = &self.meter.metrics;
        let now = std::time::Instant::now();
        for (messages, histogram) in [
            (successful, &metrics.successful_duration),
            (failed, &metrics.failed_duration),
        ] {
            if messages.is_empty() {
                continue;
            }
            // Observed locally, published once: one atomic add per call, not per message.
            // Messages received together share their receipt time: one subtraction each run.
            let local = histogram.local();
            let mut last: Option<(std::time::Instant, f64)> = None;
            for at in messages.iter().filter_map(Message::received_at) {
                let seconds = match last {
                    Some((same, seconds)) if same == at => seconds,
                    _ => now.saturating_duration_since(at).as_secs_f64(),
                };
                last = Some((at, seconds));
                local.observe(seconds);
            }
        }
    }

    /// The end of the failure path: `handle_failed` once, then the dead letter.
    async fn finish_failed(&self, finals: &mut [Message<H::Item>]) {
        if finals.is_empty() {
            return;
        }
        let handled = guarded(async {
            self.handler.handle_failed(finals).await;
            Ok(())
        });
        if let Err(failure) = handled.await {
            tracing::error!(%failure, messages = finals.len(), "handle_failed failed; going on to dead-letter");
        }
        match &self.dead_letter {
            Some(destination) => {
                write_until_done(&**destination, finals, &self.meter.metrics.dead_letter_failures).await;
                finals.iter_mut().for_each(Message::set_dead_lettered);
                self.meter.add_dead_lettered(finals.len());
            }
            None => self.discarded(finals),
        }
    }

    /// Final failures with nowhere to go: acknowledged as failed, so the source moves past
    /// them. Never silent: counted, and logged (at most once a second, with how many
    /// went unlogged since).
    fn discarded(&self, finals: &[Message<H::Item>]) {
        self.meter.add_discarded(finals.len());
        if let Some(unlogged) = self.discard_log.permit(finals.len()) {
            let first = &finals[0];
            let origin = self.acknowledger.origin(first);
            tracing::warn!(
                origin = origin.as_deref().unwrap_or("-"),
                status = %first.status(),
                attempt = first.attempt(),
                messages = finals.len(),
                unlogged,
                "message failed for good and no dead-letter destination is set; acknowledged as failed, the source moves past it"
            );
        }
    }
}

/// Splits messages into successful and failed ones, keeping the vector when none failed.
pub(crate) fn split_failed<T>(messages: Vec<Message<T>>) -> (Vec<Message<T>>, Vec<Message<T>>) {
    if messages.iter().all(Message::is_ok) {
        return (messages, Vec::new());
    }
    messages.into_iter().partition(Message::is_ok)
}
