//! A batch processor: waits for its batcher's rate limit, runs `handle_batch`, keeps the
//! failed messages with attempts left for another try as a batch, and acknowledges the
//! rest.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::time::DelayQueue;
use tracing::Instrument;

use crate::failure::rate_limit::Limiter;
use crate::handler::{BatchTrigger, Handler};
use crate::metrics::{BatcherMetrics, HandlingTimes};
use crate::source::Acknowledger;
use crate::topology::acknowledge::split_failed;
use crate::topology::batcher::Batch;
use crate::topology::guard::guarded;
use crate::topology::Context;

pub(crate) struct BatchProcessor<H: Handler, A> {
    pub(crate) ctx: Arc<Context<H, A>>,
    pub(crate) input: async_channel::Receiver<Batch<H::Item>>,
    pub(crate) rate_limit: Arc<Limiter>,
    pub(crate) metrics: BatcherMetrics,
    /// The batch it asks for: `batch_size`.
    pub(crate) batch_size: usize,
}

impl<H, A> BatchProcessor<H, A>
where
    H: Handler,
    A: Acknowledger<H::Item>,
{
    pub(crate) async fn run(self) {
        let mut retries: DelayQueue<Batch<H::Item>> = DelayQueue::new();
        let mut open = true;
        let stage = &self.metrics.batch_processor;
        let mut holding = stage.holding(0);
        loop {
            let waiting = stage.demanding(self.batch_size);
            let batch = tokio::select! {
                biased;
                Some(expired) = retries.next(), if !retries.is_empty() => expired.into_inner(),
                batch = self.input.recv(), if open => match batch {
                    Ok(batch) => {
                        holding.add(batch.0.len());
                        batch
                    }
                    Err(_) => {
                        open = false;
                        continue;
                    }
                },
                else => break,
            };
            drop(waiting);
            let size = batch.0.len();
            let retry = self.handle(batch).await;
            holding.release(size - retry.as_ref().map_or(0, |r| r.0 .0.len()));
            if let Some((batch, delay)) = retry {
                retries.insert(batch, delay);
            }
        }
    }

    /// Handles one batch; returns the part to try again and when.
    async fn handle(
        &self,
        (mut batch, info): Batch<H::Item>,
    ) -> Option<(Batch<H::Item>, std::time::Duration)> {
        let waited = self.rate_limit.acquire(batch.len()).await;
        self.ctx
            .meter
            .add_rate_limited(waited, &self.metrics.rate_limited);
        let mut timing = HandlingTimes::new(&self.metrics.batch_processor, true);
        let span = tracing::debug_span!("batch", batcher = %info.batcher, size = batch.len(), trigger = info.trigger.as_str());
        let handled = guarded(self.ctx.handler.handle_batch(&mut batch, &info))
            .instrument(span)
            .await;
        if let Err(failure) = handled {
            batch
                .iter_mut()
                .for_each(|message| message.set_failure(failure.clone()));
        }
        let failed = batch.iter().filter(|m| m.is_failed()).count();
        timing.handled(batch.len() - failed, failed);
        timing.finish();
        let (successful, failed) = split_failed(batch);
        let mut settled = Vec::with_capacity(failed.len());
        let mut again = Vec::new();
        let mut delay = std::time::Duration::ZERO;
        for mut message in failed {
            match self.ctx.retry_delay(&mut message) {
                Some(wait) => {
                    delay = delay.max(wait);
                    message.retry();
                    again.push(message);
                }
                None => settled.push(message),
            }
        }
        self.ctx.acknowledge(successful, settled).await;
        if again.is_empty() {
            return None;
        }
        let mut info = info;
        info.trigger = BatchTrigger::Retry;
        Some(((again, info), delay))
    }
}
