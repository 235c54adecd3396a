//! The end of every message's path: final failures through `handle_failed` and the
//! dead-letter destination, then one acknowledgement call, then the credits back.

use std::collections::HashSet;

use crate::failure::dead_letter::write_until_done;
use crate::handler::Handler;
use crate::message::Message;
use crate::metrics::WeightedHistogram;
use crate::receipt::Receipt;
use crate::source::Acknowledger;
use crate::topology::guard::guarded;
use crate::topology::{until_cancelled, Context};

impl<H, A> Context<H, A>
where
    H: Handler,
    A: Acknowledger<H::Metadata>,
{
    /// Acknowledges messages that finished their last stage. Each message reaches this
    /// exactly once: it is moved here, and stages never drop one on another path.
    ///
    /// Final failures go through `handle_failed` and the dead-letter destination first;
    /// failures the broker will redeliver go straight to the acknowledger.
    pub(crate) async fn acknowledge(
        &self,
        successful: Vec<Message<H::Item, H::Metadata>>,
        mut failed: Vec<Message<H::Item, H::Metadata>>,
    ) {
        // Final failures first, so that they form one slice to hand over.
        failed.sort_by_key(|message| message.redeliver_after().is_some());
        let finals = failed
            .iter()
            .take_while(|m| m.redeliver_after().is_none())
            .count();
        let handled = finals == 0
            || self
                .hook(self.handler.handle_failed(&mut failed[..finals]), finals)
                .await;
        self.settle(successful, failed, finals, handled).await;
    }

    /// Acknowledges messages whose data did not decode: final failures that never reach
    /// the handler's other methods (there is no value to give them), given to
    /// `handle_undecoded`, then dead-lettered from their metadata.
    pub(crate) async fn acknowledge_undecoded(&self, mut failed: Vec<Message<(), H::Metadata>>) {
        let finals = failed.len();
        let handled = self
            .hook(self.handler.handle_undecoded(&mut failed), finals)
            .await;
        self.settle(Vec::new(), failed, finals, handled).await;
    }

    /// Runs a handler's failure hook on `messages` messages, guarded: `false` when the
    /// pipeline was abandoned at its deadline first (the messages then go back unfinished).
    async fn hook(&self, hook: impl std::future::Future<Output = ()>, messages: usize) -> bool {
        let hooked = guarded(async {
            hook.await;
            Ok(())
        });
        let Some(hooked) = until_cancelled(&self.abandon, hooked).await else {
            return false;
        };
        if let Err(failure) = hooked {
            tracing::error!(%failure, messages, "a failure hook failed; going on to dead-letter");
        }
        true
    }

    /// The common end: the first `finals` of `failed` to the dead-letter destination (when
    /// `handled`: not cut short at the deadline), then one acknowledgement call, then the
    /// credits back.
    async fn settle<T: Send + 'static>(
        &self,
        mut successful: Vec<Message<T, H::Metadata>>,
        mut failed: Vec<Message<T, H::Metadata>>,
        finals: usize,
        handled: bool,
    ) {
        // A message that never reached a handler (its data did not decode,
        // `prepare_messages` failed it) gets its span here, before its dead-lettering.
        #[cfg(feature = "otel")]
        if let Some(tracing) = self.tracing.as_deref() {
            for message in successful.iter_mut().chain(failed.iter_mut()) {
                message.start_span(tracing);
            }
        }
        if finals > 0 {
            let rest = failed.split_off(finals);
            let (written, mut finished) = match handled {
                true => self.dead_letter(failed).await,
                false => (false, failed),
            };
            if written {
                finished.extend(rest);
                failed = finished;
            } else {
                // Cut short at the deadline (a dead-letter write that kept failing): not
                // dead-lettered, so not acknowledged either; delivered again. The other
                // messages of their keys in this call go back with them, so that none is
                // finished ahead of an earlier one of its key.
                let mut released = finished;
                failed = rest;
                let keys: HashSet<u64> = released.iter().filter_map(Message::order_key).collect();
                if !keys.is_empty() {
                    let of_key =
                        |m: &Message<T, H::Metadata>| m.order_key().is_some_and(|k| keys.contains(&k));
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
        #[cfg(feature = "otel")]
        let spans = self.ending_spans(&mut successful, &mut failed);
        let acked = guarded(async {
            self.acknowledger.ack(successful, failed).await;
            Ok(())
        });
        let acked = acked.await;
        // The spans last to the acknowledgement, and say when it failed.
        #[cfg(feature = "otel")]
        for span in spans {
            span.end(acked.is_ok());
        }
        if let Err(failure) = acked {
            // The messages' fate is unknown to the source: nothing past them may be
            // trusted, so the pipeline stops (they were not acknowledged: redelivered).
            self.fault
                .raise(format!("the acknowledger panicked: {}", failure.error()));
        }
        self.meter.credits.give_back(settled);
    }

    /// Final failures to the dead-letter destination, or, with none, discarded. `false`
    /// with the messages when the pipeline was abandoned at its deadline first.
    ///
    /// A destination gets each message without its data (see [`DeadLetter`]): the data is
    /// set aside here, outside the write, so that a write cut short loses none of it.
    ///
    /// [`DeadLetter`]: crate::DeadLetter
    async fn dead_letter<T: Send + 'static>(
        &self,
        finals: Vec<Message<T, H::Metadata>>,
    ) -> (bool, Vec<Message<T, H::Metadata>>) {
        let Some(destination) = &self.dead_letter else {
            self.discarded(&finals);
            return (true, finals);
        };
        let (data, mut bare): (Vec<T>, Vec<Message<(), H::Metadata>>) =
            finals.into_iter().map(Message::take_data).unzip();
        let writing = write_until_done(
            &**destination,
            &mut bare,
            &self.meter.metrics.dead_letter_failures,
        );
        let written = until_cancelled(&self.abandon, writing).await.is_some();
        if written {
            bare.iter_mut().for_each(Message::set_dead_lettered);
            self.meter.add_dead_lettered(bare.len());
        }
        let finals = data
            .into_iter()
            .zip(bare)
            .map(|(data, message)| message.with_data(data));
        (written, finals.collect())
    }

    /// The spans of messages about to be acknowledged, with their outcomes.
    #[cfg(feature = "otel")]
    fn ending_spans<T>(
        &self,
        successful: &mut [Message<T, H::Metadata>],
        failed: &mut [Message<T, H::Metadata>],
    ) -> Vec<crate::trace::Ending> {
        if self.tracing.is_none() {
            return Vec::new();
        }
        let mut spans = Vec::with_capacity(successful.len() + failed.len());
        for message in successful.iter_mut() {
            spans.extend(message.take_span("success"));
        }
        for message in failed.iter_mut() {
            let outcome = if message.is_dead_lettered() {
                "dead_lettered"
            } else if message.redeliver_after().is_some() {
                "redelivered"
            } else {
                "failed"
            };
            spans.extend(message.take_span(outcome));
        }
        spans
    }

    /// Hands messages that will not be finished back to the source, unacknowledged (see
    /// [`Acknowledger::release`]).
    pub(crate) async fn release<T: Send + 'static>(
        &self,
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))] mut messages: Vec<Message<T, H::Metadata>>,
    ) {
        let n = messages.len();
        if n == 0 {
            return;
        }
        #[cfg(feature = "otel")]
        for message in &mut messages {
            if let Some(span) = message.take_span("released") {
                span.end(true);
            }
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

    fn count<T>(&self, successful: &[Message<T, H::Metadata>], failed: &[Message<T, H::Metadata>]) {
        let (finals, redelivered): (Vec<_>, Vec<_>) = match failed.is_empty() {
            true => Default::default(),
            false => failed.iter().partition(|m| m.redeliver_after().is_none()),
        };
        self.meter
            .add_settled(successful.len(), finals.len(), redelivered.len());
        let metrics = &self.meter.metrics;
        let now = Receipt::at(std::time::Instant::now());
        observe(now, successful, &metrics.successful_duration);
        observe(now, finals, &metrics.failed_duration);
        observe(now, redelivered, &metrics.redelivered_duration);
    }

    /// Final failures with nowhere to go: acknowledged as failed, so the source moves past
    /// them. Never silent: counted, and logged (at most once a second, with how many
    /// went unlogged since).
    fn discarded<T>(&self, finals: &[Message<T, H::Metadata>]) {
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

/// Observes the time since each of `messages` was received, a run of messages received
/// together (a chunk shares its receipt) as one weighted observation.
fn observe<'a, T: 'a, M: 'a>(
    now: Receipt,
    messages: impl IntoIterator<Item = &'a Message<T, M>, IntoIter: ExactSizeIterator + Clone>,
    histogram: &WeightedHistogram,
) {
    let messages = messages.into_iter();
    if messages.len() == 0 {
        return;
    }
    let mut tally = histogram.tally();
    // Mostly one run: a chunk dispatched whole, all received at once.
    let mut rest = messages.clone().map(Message::receipt);
    let first = rest.next().flatten();
    if rest.all(|at| at == first) {
        if let Some(at) = first {
            tally.observe_n(at.seconds_to(now), messages.len() as u64);
        }
        return;
    }
    let mut observe = |at: Option<Receipt>, n| {
        // A message made outside a source has no receipt: not observed.
        if let Some(at) = at {
            tally.observe_n(at.seconds_to(now), n);
        }
    };
    // One comparison of a word a message.
    let mut run = (None, 0);
    for at in messages.map(Message::receipt) {
        if at == run.0 {
            run.1 += 1;
        } else {
            observe(run.0, run.1);
            run = (at, 1);
        }
    }
    observe(run.0, run.1);
}

/// Successful messages, and failed ones.
pub(crate) type Split<T, M> = (Vec<Message<T, M>>, Vec<Message<T, M>>);

/// Splits messages into successful and failed ones, keeping the vector when none failed.
pub(crate) fn split_failed<T, M>(messages: Vec<Message<T, M>>) -> Split<T, M> {
    if messages.iter().all(Message::is_ok) {
        return (messages, Vec::new());
    }
    messages.into_iter().partition(Message::is_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::WeightedHistogramVec;

    #[test]
    fn each_message_with_a_receipt_is_observed_once_in_runs_or_alone() {
        let histogram = WeightedHistogramVec::new("observe_seconds", "A test.", &["p"], vec![1.0, 10.0]);
        let histogram = histogram.with_label_values(&["p"]);
        let epoch = std::time::Instant::now();
        let at = |seconds: u64| Some(Receipt::at(epoch + std::time::Duration::from_secs(seconds)));
        let now = at(20).expect("a receipt");
        let messages = |receipts: &[Option<Receipt>]| -> Vec<Message<u8>> {
            receipts
                .iter()
                .map(|&receipt| {
                    let mut message = Message::new(0);
                    if let Some(receipt) = receipt {
                        message.set_receipt(receipt);
                    }
                    message
                })
                .collect()
        };
        // One run; then runs, with messages made outside a source (no receipt) between.
        observe(now, &messages(&[at(15); 4]), &histogram);
        assert_eq!(histogram.count_and_sum(), (4, 20.0));
        observe(
            now,
            &messages(&[at(19), at(19), None, at(5), None, at(5), at(19)]),
            &histogram,
        );
        assert_eq!(histogram.count_and_sum(), (9, 20.0 + 3.0 + 30.0));
        assert_eq!(histogram.buckets(), vec![3, 4, 2], "per bucket: 1 s, 5 s, 15 s");
        observe(now, &messages(&[None, None]), &histogram);
        assert_eq!(histogram.count_and_sum().0, 9);
    }
}
