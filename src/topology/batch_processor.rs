//! A batch processor: waits for its batcher's rate limit, runs `handle_batch`, keeps the
//! failed messages with attempts left for another try as a batch, and acknowledges the
//! rest.
//!
//! In an ordered pipeline each batch key has one batch processor (see
//! [`BatchDispatch`](crate::topology::batch_dispatch::BatchDispatch)), and a key's later batches
//! wait behind its retry: from the first message to be tried again, the rest of its
//! batch is tried again with it, the successful ones included (handled again: at least
//! once), so that no message of the key is finished ahead of an earlier one.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::failure::rate_limit::Limiter;
use crate::handler::{BatchTrigger, Handler};
use crate::message::{BatchKey, Message};
use crate::metrics::{BatcherMetrics, HandlingTimes, Held};
use crate::source::Acknowledger;
use crate::topology::batch_dispatch::Batch;
use crate::topology::guard::guarded;
use crate::topology::pool::Retire;
use crate::topology::processor::drain_delayed;
use crate::topology::{until_cancelled, Context, FastMap};
use crate::trace::within;

pub(crate) struct BatchProcessor<H: Handler, A> {
    pub(crate) ctx: Arc<Context<H, A>>,
    pub(crate) input: async_channel::Receiver<Batch<H::Item, H::Metadata>>,
    pub(crate) rate_limit: Arc<Limiter>,
    pub(crate) metrics: BatcherMetrics,
    /// The batch it asks for: `batch_size`.
    pub(crate) batch_size: usize,
    /// Whether a batch key's batches are finished in order, retries included.
    pub(crate) ordered: bool,
    /// Cancelled at shutdown: what waits for a retry is released, not waited for.
    pub(crate) stop: CancellationToken,
    /// The pipeline's `abandon`, as a child of its own (see the processor's).
    pub(crate) abandon: CancellationToken,
    /// Its notice to retire (the pool shrinks): it takes no more batches, finishes its
    /// retries, and ends.
    pub(crate) retire: Arc<Retire>,
    /// Its handler calls, as the stall watch sees them.
    pub(crate) call: Arc<crate::metrics::calls::CallSlot>,
}

/// Batches waiting for another attempt.
struct Retries<T, M> {
    due: DelayQueue<Batch<T, M>>,
    /// Ordered: per batch key with a batch in `due`, its later batches, in order.
    held: FastMap<BatchKey, VecDeque<Batch<T, M>>>,
    /// Ordered: keys whose retry was released at shutdown; their later batches follow it.
    released: HashSet<BatchKey>,
    /// The stage's count of messages in `due` and `held`: waiting out a backoff.
    waiting: Held,
}

impl<T, M> Retries<T, M> {
    fn is_empty(&self) -> bool {
        self.due.is_empty() && self.held.is_empty()
    }

    /// Whether a batch of `key` must wait behind the key's retry (or be released with it).
    fn waits(&self, key: &BatchKey) -> bool {
        self.held.contains_key(key) || self.released.contains(key)
    }

    fn take_all(&mut self) -> Vec<Message<T, M>> {
        let mut all: Vec<Message<T, M>> = drain_delayed(&mut self.due)
            .into_iter()
            .flat_map(|batch| batch.messages)
            .collect();
        for (key, batches) in self.held.drain() {
            self.released.insert(key);
            all.extend(batches.into_iter().flat_map(|batch| batch.messages));
        }
        self.waiting.release(all.len());
        all
    }
}

impl<H, A> BatchProcessor<H, A>
where
    H: Handler,
    A: Acknowledger<H::Metadata>,
{
    pub(crate) async fn run(self) {
        let mut retries = Retries {
            due: DelayQueue::new(),
            held: FastMap::default(),
            released: HashSet::new(),
            waiting: self.metrics.batch_processor.retry_waiting(),
        };
        let mut open = true;
        let stage = &self.metrics.batch_processor;
        let mut holding = stage.holding(0);
        loop {
            if open && self.retire.is_requested() {
                open = false;
            }
            let waiting = stage.demanding(self.batch_size);
            let batch = tokio::select! {
                biased;
                // At shutdown a retry is not waited for: released unacknowledged, so that
                // the drain keeps its deadline and the broker redelivers it.
                () = self.stop.cancelled(), if !retries.is_empty() => {
                    let released = retries.take_all();
                    holding.release(released.len());
                    self.ctx.release(released).await;
                    continue;
                }
                Some(expired) = retries.due.next(), if !retries.due.is_empty() => {
                    let batch = expired.into_inner();
                    retries.waiting.release(batch.messages.len());
                    batch
                }
                batch = self.input.recv(), if open => match batch {
                    Ok(batch) => {
                        holding.add(batch.messages.len());
                        if self.ordered && retries.waits(&batch.info.batch_key) {
                            let key = batch.info.batch_key.clone();
                            retries.waiting.add(batch.messages.len());
                            retries.held.entry(key).or_default().push_back(batch);
                            continue;
                        }
                        batch
                    }
                    Err(_) => {
                        open = false;
                        continue;
                    }
                },
                () = self.retire.requested(), if open => continue,
                // Last, so that it costs nothing while batches are ready; a batch checks
                // for it before it is handled.
                () = self.abandon.cancelled(), if open || !retries.is_empty() => break,
                else => return,
            };
            drop(waiting);
            if let Err(unfinished) = self.run_key(batch, &mut retries, &mut holding).await {
                holding.release(unfinished.len());
                self.ctx.release(unfinished).await;
                break;
            }
        }
        self.hand_back(retries, holding).await;
    }

    /// At the deadline: what waits for a retry, and every batch still to come until the
    /// input closes, goes back to the source unfinished, at once.
    async fn hand_back(&self, mut retries: Retries<H::Item, H::Metadata>, mut holding: Held) {
        let mut unfinished = retries.take_all();
        loop {
            holding.release(unfinished.len());
            self.ctx.release(unfinished).await;
            match self.input.recv().await {
                Ok(batch) => {
                    holding.add(batch.messages.len());
                    unfinished = batch.messages;
                }
                Err(_) => return,
            }
        }
    }

    /// Handles `batch`, then (ordered) the batches of its key that waited behind it, until
    /// one is to be tried again. `Err` with the batch's messages when the pipeline was
    /// abandoned at its deadline while handling it.
    async fn run_key(
        &self,
        batch: Batch<H::Item, H::Metadata>,
        retries: &mut Retries<H::Item, H::Metadata>,
        holding: &mut Held,
    ) -> Result<(), Vec<Message<H::Item, H::Metadata>>> {
        let key = batch.info.batch_key.clone();
        let mut next = Some(batch);
        while let Some(batch) = next.take() {
            let size = batch.messages.len();
            let retry = self.handle(batch).await?;
            holding.release(size - retry.as_ref().map_or(0, |r| r.0.messages.len()));
            if let Some((batch, delay)) = retry {
                if self.ordered {
                    retries.held.entry(key).or_default();
                }
                retries.waiting.add(batch.messages.len());
                retries.due.insert(batch, delay);
                return Ok(());
            }
            if self.ordered {
                next = retries.held.get_mut(&key).and_then(VecDeque::pop_front);
                if let Some(batch) = &next {
                    retries.waiting.release(batch.messages.len());
                }
            }
        }
        retries.held.remove(&key);
        Ok(())
    }

    /// Handles one batch; returns the part to try again and when, or `Err` with the batch
    /// when the pipeline was abandoned at its deadline before it was handled.
    async fn handle(
        &self,
        Batch {
            messages: mut batch,
            mut info,
            lease,
        }: Batch<H::Item, H::Metadata>,
    ) -> Result<Option<(Batch<H::Item, H::Metadata>, Duration)>, Vec<Message<H::Item, H::Metadata>>> {
        let abandon = &self.abandon;
        if abandon.is_cancelled() {
            return Err(batch);
        }
        // Waiting as configured, not stalled (see the stall watch).
        let limit_waiting = Held::new(&self.metrics.batch_processor.limit_waiting, batch.len());
        let Some(waited) = until_cancelled(abandon, self.rate_limit.acquire(batch.len())).await else {
            return Err(batch);
        };
        drop(limit_waiting);
        self.ctx
            .meter
            .add_rate_limited(waited, &self.metrics.rate_limited);
        let mut timing = HandlingTimes::new(&self.metrics.batch_processor, true);
        let otel = self.ctx.batch_span(&info, &batch);
        let logs = tracing::debug_span!("batch", batcher = %info.batcher, size = batch.len(), trigger = info.trigger.as_str());
        let call = within(
            logs,
            otel.clone(),
            guarded(self.ctx.handler.handle_batch(&mut batch, &info)),
        );
        let in_call = self.call.enter();
        let handled = until_cancelled(abandon, call).await;
        drop(in_call);
        self.ctx.end_batch_span(otel, handled.as_ref());
        let Some(handled) = handled else {
            return Err(batch);
        };
        if let Err(failure) = handled {
            batch
                .iter_mut()
                .for_each(|message| message.set_failure(failure.clone()));
        }
        let failed = batch.iter().filter(|m| m.is_failed()).count();
        timing.handled(batch.len() - failed, failed);
        timing.finish();
        if failed == 0 {
            self.ctx.acknowledge(batch, Vec::new()).await;
            return Ok(None);
        }
        let mut successful = Vec::with_capacity(batch.len() - failed);
        let mut settled = Vec::with_capacity(failed);
        let mut again = Vec::new();
        let mut delay = Duration::ZERO;
        for mut message in batch {
            if message.is_ok() {
                // Ordered: behind a message to be tried again, a successful one waits too.
                if self.ordered && !again.is_empty() {
                    again.push(message);
                } else {
                    successful.push(message);
                }
                continue;
            }
            match self.ctx.retry_delay(&mut message) {
                Some(wait) => {
                    delay = delay.max(wait);
                    message.retry(wait);
                    again.push(message);
                }
                // A message failed for good leaves its key's order: it is finished.
                None => settled.push(message),
            }
        }
        self.ctx.acknowledge(successful, settled).await;
        if again.is_empty() {
            return Ok(None);
        }
        info.trigger = BatchTrigger::Retry;
        // The key keeps its batch processor until its retry is finished too.
        let again = Batch {
            messages: again,
            info,
            lease,
        };
        Ok(Some((again, delay)))
    }
}
