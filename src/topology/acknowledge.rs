//! The end of every message's path: final failures through `handle_failed` and the
//! dead-letter destination, then one acknowledgement call, then the credits back.

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
        successful: Vec<Message<H::Item>>,
        mut failed: Vec<Message<H::Item>>,
    ) {
        let settled = successful.len() + failed.len();
        if settled == 0 {
            return;
        }
        if !failed.is_empty() {
            // Final failures first, so that they form one slice to hand over.
            failed.sort_by_key(|message| message.redeliver_after().is_some());
            let finals = failed
                .iter()
                .take_while(|m| m.redeliver_after().is_none())
                .count();
            self.finish_failed(&mut failed[..finals]).await;
        }
        self.count(&successful, &failed);
        self.acknowledger.ack(successful, failed).await;
        self.meter.credits.give_back(settled);
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
        if let Some(destination) = &self.dead_letter {
            write_until_done(&**destination, finals).await;
            self.meter.add_dead_lettered(finals.len());
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
