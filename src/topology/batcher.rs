//! A batcher: groups a named batcher's messages by batch key and sends a batch when it
//! is full, when its oldest message has waited the batch timeout, or at shutdown.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::control::batching::BatchSettings;
use crate::handler::{BatchInfo, BatchTrigger};
use crate::message::{BatchKey, Message};
use crate::metrics::{BatcherMetrics, Held};
use crate::topology::batch_groups::{BatchGroups, Group};
use crate::topology::Fault;

pub(crate) type Batch<T, M> = (Vec<Message<T, M>>, BatchInfo);

/// How batches reach the batch processors.
pub(crate) enum BatchDispatch<T, M> {
    /// One queue: whichever batch processor is free handles the next batch (their pool
    /// resizes itself).
    Shared(async_channel::Sender<Batch<T, M>>),
    /// Ordered: one queue per batch processor, chosen by the batch key, so that a key's
    /// batches are handled one after the other by one batch processor.
    ByKey(ByKey<T, M>),
}

/// Starts one batch processor on its queue.
pub(crate) type SpawnBatchProcessor<T, M> =
    Box<dyn FnMut(async_channel::Receiver<Batch<T, M>>) -> BoxFuture<'static, ()> + Send + Sync>;

/// An ordered batcher's batch processors, one queue each. They are resized as a whole:
/// the queues close, every batch processor finishes what it holds (its retries
/// included) and ends, then the new count starts, so that no key's batch is handled
/// while an earlier one of that key still is elsewhere.
pub(crate) struct ByKey<T, M> {
    queues: Vec<async_channel::Sender<Batch<T, M>>>,
    tasks: JoinSet<()>,
    spawn: SpawnBatchProcessor<T, M>,
    size: watch::Receiver<usize>,
    watching: bool,
    fault: Arc<Fault>,
    tasks_gauge: prometheus::IntGauge,
}

impl<T, M> ByKey<T, M> {
    pub(crate) fn new(
        spawn: SpawnBatchProcessor<T, M>,
        mut size: watch::Receiver<usize>,
        fault: Arc<Fault>,
        tasks_gauge: prometheus::IntGauge,
    ) -> Self {
        let count = *size.borrow_and_update();
        let mut by_key = ByKey {
            queues: Vec::with_capacity(count),
            tasks: JoinSet::new(),
            spawn,
            size,
            watching: true,
            fault,
            tasks_gauge,
        };
        by_key.start(count);
        by_key
    }

    fn start(&mut self, count: usize) {
        for _ in 0..count {
            let (queue, input) = async_channel::bounded(1);
            self.tasks.spawn((self.spawn)(input));
            self.tasks_gauge.inc();
            self.queues.push(queue);
        }
    }

    /// Completes when a new count was asked for (never once the handle is gone).
    async fn resized(&mut self) {
        if !self.watching || self.size.changed().await.is_err() {
            self.watching = false;
            std::future::pending::<()>().await;
        }
    }

    /// Closes the queues and waits until every batch processor has ended.
    async fn close(&mut self) {
        self.queues.clear();
        while let Some(joined) = self.tasks.join_next().await {
            self.tasks_gauge.dec();
            self.fault.check(joined);
        }
    }

    /// Starts the count asked for, once those running have finished all they hold.
    async fn resize(&mut self) {
        let count = *self.size.borrow_and_update();
        if count != self.queues.len() {
            self.close().await;
            self.start(count);
        }
    }
}

impl<T, M> BatchDispatch<T, M> {
    async fn send(&self, batch: Batch<T, M>) -> Result<(), async_channel::SendError<Batch<T, M>>> {
        match self {
            BatchDispatch::Shared(queue) => queue.send(batch).await,
            BatchDispatch::ByKey(by_key) => {
                let queues = &by_key.queues;
                let mut hasher = DefaultHasher::new();
                batch.1.batch_key.hash(&mut hasher);
                let index = (hasher.finish() % queues.len() as u64) as usize;
                queues[index].send(batch).await
            }
        }
    }

    /// Completes when an ordered batcher's batch processors are to be resized.
    async fn resized(&mut self) {
        match self {
            BatchDispatch::Shared(_) => std::future::pending().await,
            BatchDispatch::ByKey(by_key) => by_key.resized().await,
        }
    }
}

pub(crate) struct BatcherStage<T, M> {
    pub(crate) name: Arc<str>,
    /// Its size and timeout, changeable while it runs.
    pub(crate) settings: Arc<BatchSettings>,
    pub(crate) input: mpsc::Receiver<Vec<Message<T, M>>>,
    pub(crate) output: BatchDispatch<T, M>,
    pub(crate) metrics: BatcherMetrics,
}

impl<T: Send + 'static, M: Send + 'static> BatcherStage<T, M> {
    pub(crate) async fn run(mut self) {
        // Room for a whole batch up front, within reason: many keys may each hold a few.
        let mut groups = BatchGroups::new(self.settings.size().min(1024));
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut holding = self.metrics.stage.holding(0);
        loop {
            let next = groups.next_deadline();
            if next != armed {
                if let Some(deadline) = next {
                    timer.as_mut().reset(deadline);
                }
                armed = next;
            }
            // Timer first: under a steady flow a rare key's partial batch still times out.
            tokio::select! {
                biased;
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    for group in groups.remove_expired(Instant::now()) {
                        self.send(&mut holding, group, BatchTrigger::Timeout).await;
                    }
                }
                chunk = self.input.recv() => match chunk {
                    Some(chunk) => {
                        holding.add(chunk.len());
                        self.add(&mut holding, &mut groups, chunk).await;
                    }
                    None => break,
                },
                // A changed size or timeout applies to the batches already open.
                () = self.settings.changed() => {
                    groups.shorten(self.settings.timeout());
                    for group in groups.take_full(self.settings.size()) {
                        self.send(&mut holding, group, BatchTrigger::Size).await;
                    }
                }
                () = self.output.resized() => {
                    if let BatchDispatch::ByKey(by_key) = &mut self.output {
                        by_key.resize().await;
                    }
                }
            }
        }
        for group in groups.drain() {
            self.send(&mut holding, group, BatchTrigger::Flush).await;
        }
        // Its batch processors end with it: the stage is done once they are.
        if let BatchDispatch::ByKey(by_key) = &mut self.output {
            by_key.close().await;
        }
    }

    async fn add(&self, holding: &mut Held, groups: &mut BatchGroups<T, M>, chunk: Vec<Message<T, M>>) {
        // Read once a chunk: a change applies from the next one.
        let (size, timeout) = (self.settings.size(), self.settings.timeout());
        for message in chunk {
            let (position, len) = groups.push(message, Instant::now, timeout);
            if len >= size {
                self.send(holding, groups.remove(position), BatchTrigger::Size)
                    .await;
            }
        }
    }

    /// Sends `group` on, in batches of at most the size now (a lowered size cuts a
    /// group opened under the old one), in order.
    async fn send(&self, holding: &mut Held, group: Group<T, M>, trigger: BatchTrigger) {
        let size = self.settings.size().max(1);
        let fill = Instant::now().saturating_duration_since(group.opened);
        if group.messages.len() <= size {
            return self
                .send_batch(holding, group.messages, group.key, fill, trigger)
                .await;
        }
        let mut messages = group.messages.into_iter();
        loop {
            let batch: Vec<_> = messages.by_ref().take(size).collect();
            if batch.is_empty() {
                return;
            }
            self.send_batch(holding, batch, group.key.clone(), fill, trigger)
                .await;
        }
    }

    async fn send_batch(
        &self,
        holding: &mut Held,
        messages: Vec<Message<T, M>>,
        batch_key: BatchKey,
        fill: std::time::Duration,
        trigger: BatchTrigger,
    ) {
        let metrics = &self.metrics;
        metrics.fill.observe(fill.as_secs_f64());
        metrics.size.observe(messages.len() as f64);
        metrics.batch(trigger).inc();
        holding.release(messages.len());
        let info = BatchInfo {
            batcher: self.name.clone(),
            batch_key,
            trigger,
        };
        if let Err(lost) = self.output.send((messages, info)).await {
            // Only after an abort at the shutdown deadline: left unacknowledged, redelivered.
            tracing::warn!(batcher = %self.name, messages = lost.0 .0.len(), "batch processors gone; batch left unacknowledged");
        }
    }
}
