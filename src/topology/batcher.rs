//! A batcher: groups a named batcher's messages by batch key and sends a batch when it
//! is full, when its oldest message has waited the batch timeout, or at shutdown.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::control::batching::BatchSettings;
use crate::handler::{BatchInfo, BatchTrigger};
use crate::message::{BatchKey, Message};
use crate::metrics::{BatcherMetrics, Held};
use crate::topology::batch_dispatch::{Batch, BatchDispatch};
use crate::topology::batch_groups::{BatchGroups, Group};

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
            // Changes and the timer before input: under a steady flow a rare key's
            // partial batch still times out, and a change or a resize still applies.
            tokio::select! {
                biased;
                // A changed size or timeout applies to the batches already open.
                () = self.settings.changed() => {
                    groups.shorten(self.settings.timeout());
                    for group in groups.take_full(self.settings.size()) {
                        self.send(&mut holding, group, BatchTrigger::Size).await;
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    for group in groups.remove_expired(Instant::now()) {
                        self.send(&mut holding, group, BatchTrigger::Timeout).await;
                    }
                }
                // An ordered batcher's resize goes on while batches flow.
                () = self.output.tend() => {}
                chunk = self.input.recv() => match chunk {
                    Some(chunk) => {
                        holding.add(chunk.len());
                        self.add(&mut holding, &mut groups, chunk).await;
                    }
                    None => break,
                },
            }
        }
        for group in groups.drain() {
            self.send(&mut holding, group, BatchTrigger::Flush).await;
        }
        // Its batch processors end with it: the stage is done once they are.
        self.output.close().await;
    }

    async fn add(&mut self, holding: &mut Held, groups: &mut BatchGroups<T, M>, chunk: Vec<Message<T, M>>) {
        // Read once a chunk: a change applies from the next one.
        let (size, timeout) = (self.settings.size(), self.settings.timeout());
        let mut rest = chunk.into_iter();
        while let Some((position, len)) = groups.push_run(&mut rest, size, Instant::now, timeout) {
            if len >= size {
                self.send(holding, groups.remove(position), BatchTrigger::Size)
                    .await;
            }
        }
    }

    /// Sends `group` on, in batches of at most the size now (a lowered size cuts a
    /// group opened under the old one), in order.
    async fn send(&mut self, holding: &mut Held, group: Group<T, M>, trigger: BatchTrigger) {
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
        &mut self,
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
        let batch = Batch {
            messages,
            info,
            lease: None,
        };
        if let Err(lost) = self.output.send(batch).await {
            // Only after an abort at the shutdown deadline: left unacknowledged, redelivered.
            tracing::warn!(batcher = %self.name, messages = lost.0.messages.len(), "batch processors gone; batch left unacknowledged");
        }
    }
}
