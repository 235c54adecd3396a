//! The end of every message's path: failed messages through `handle_failed`, then one
//! acknowledgement call, then the credits back.

use std::sync::atomic::Ordering;

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
            let handled = guarded(async {
                self.handler.handle_failed(&mut failed).await;
                Ok(())
            });
            if let Err(failure) = handled.await {
                tracing::error!(%failure, messages = failed.len(), "handle_failed failed; acknowledging as failed anyway");
            }
            self.meter
                .failed
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
        }
        self.meter
            .successful
            .fetch_add(successful.len() as u64, Ordering::Relaxed);
        self.acknowledger.ack(successful, failed).await;
        self.meter.credits.give_back(settled);
    }
}

/// Splits messages into successful and failed ones, keeping the vector when none failed.
pub(crate) fn split_failed<T>(messages: Vec<Message<T>>) -> (Vec<Message<T>>, Vec<Message<T>>) {
    if messages.iter().all(Message::is_ok) {
        return (messages, Vec::new());
    }
    messages.into_iter().partition(Message::is_ok)
}
