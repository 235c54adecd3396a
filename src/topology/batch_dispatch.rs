//! How a batcher's batches reach its batch processors, and how an ordered batcher's
//! batch processors are resized without stopping it.
//!
//! Ordered, a batch key's batches are handled one after the other by one batch processor.
//! Each key with a batch unfinished holds a [`Lease`] on its batch processor, carried by
//! its batches (retries included) and dropped with the last of them. A key with a lease
//! goes where its lease is; a key without one is placed by its hash over the batch
//! processors asked for now. A resize so moves each key once its batches are finished,
//! and the others flow on meanwhile; a batch processor past the new count takes only the
//! batches of keys it still holds, and its queue closes once it holds none.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::handler::BatchInfo;
use crate::message::{BatchKey, Message};
use crate::topology::Fault;

/// A batch on its way to, or held by, a batch processor.
pub(crate) struct Batch<T, M> {
    pub(crate) messages: Vec<Message<T, M>>,
    pub(crate) info: BatchInfo,
    /// Ordered: its key's hold on its batch processor, until the batch is finished.
    pub(crate) lease: Option<Arc<Lease>>,
}

/// A batch key's hold on one batch processor: while it lives, the key's batches go
/// there.
pub(crate) struct Lease {
    index: usize,
    slot: Arc<SlotHolds>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.slot.keys.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.slot.idle.notify_one();
        }
    }
}

/// How many keys hold one batch processor; `idle` is told when that falls to none.
struct SlotHolds {
    keys: AtomicUsize,
    idle: Arc<Notify>,
}

/// How batches reach the batch processors.
pub(crate) enum BatchDispatch<T, M> {
    /// One queue: whichever batch processor is free handles the next batch (their pool
    /// resizes itself).
    Shared(async_channel::Sender<Batch<T, M>>),
    /// Ordered: one queue per batch processor, chosen by the batch key.
    ByKey(ByKey<T, M>),
}

impl<T, M> BatchDispatch<T, M> {
    pub(crate) async fn send(
        &mut self,
        batch: Batch<T, M>,
    ) -> Result<(), async_channel::SendError<Batch<T, M>>> {
        match self {
            BatchDispatch::Shared(queue) => queue.send(batch).await,
            BatchDispatch::ByKey(by_key) => by_key.send(batch).await,
        }
    }

    /// Waits for a resize, or for a retiring batch processor to finish its last key or
    /// end, and applies it; never completes for a shared queue. Cancel safe.
    pub(crate) async fn tend(&mut self) {
        match self {
            BatchDispatch::Shared(_) => std::future::pending().await,
            BatchDispatch::ByKey(by_key) => by_key.tend().await,
        }
    }

    /// Closes the queues and waits until every batch processor has ended.
    pub(crate) async fn close(&mut self) {
        if let BatchDispatch::ByKey(by_key) = self {
            by_key.close().await;
        }
    }
}

/// Starts one batch processor on its queue.
pub(crate) type SpawnBatchProcessor<T, M> =
    Box<dyn FnMut(async_channel::Receiver<Batch<T, M>>) -> BoxFuture<'static, ()> + Send + Sync>;

struct Slot<T, M> {
    queue: async_channel::Sender<Batch<T, M>>,
    holds: Arc<SlotHolds>,
}

/// An ordered batcher's batch processors, one queue each.
pub(crate) struct ByKey<T, M> {
    /// By number; those from `count` on retire: they take only the batches of keys they
    /// hold, and are `None` once closed.
    slots: Vec<Option<Slot<T, M>>>,
    count: usize,
    /// The keys placed, each with its lease (dead once its batches are finished).
    leases: HashMap<BatchKey, Weak<Lease>>,
    /// Places a new key: seeded at random, so that which keys share a batch processor
    /// cannot be worked out from outside (a fixed hash would let chosen keys crowd onto
    /// another key's processor).
    placement: RandomState,
    /// `leases.len()` after the last sweep of dead leases.
    swept: usize,
    idle: Arc<Notify>,
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
            slots: Vec::with_capacity(count),
            count: 0,
            leases: HashMap::new(),
            placement: RandomState::new(),
            swept: 0,
            idle: Arc::new(Notify::new()),
            tasks: JoinSet::new(),
            spawn,
            size,
            watching: true,
            fault,
            tasks_gauge,
        };
        by_key.resize(count);
        by_key
    }

    async fn send(&mut self, mut batch: Batch<T, M>) -> Result<(), async_channel::SendError<Batch<T, M>>> {
        let lease = self.lease(&batch.info.batch_key);
        let index = lease.index;
        batch.lease = Some(lease);
        // A batch processor's queue closes only once no lease holds it.
        let slot = self.slots[index].as_ref();
        slot.expect("a live lease's batch processor is open")
            .queue
            .send(batch)
            .await
    }

    /// The key's lease: the live one, or a new one on the batch processor its hash picks.
    fn lease(&mut self, key: &BatchKey) -> Arc<Lease> {
        if let Some(lease) = self.leases.get(key).and_then(Weak::upgrade) {
            return lease;
        }
        let index = (self.placement.hash_one(key) % self.count as u64) as usize;
        let holds = self.slots[index]
            .as_ref()
            .expect("the batch processors asked for are open")
            .holds
            .clone();
        holds.keys.fetch_add(1, Ordering::AcqRel);
        let lease = Arc::new(Lease { index, slot: holds });
        self.leases.insert(key.clone(), Arc::downgrade(&lease));
        // Dead leases are swept once they could be half the map: amortised O(1) a key.
        if self.leases.len() > 2 * self.swept + 1024 {
            self.leases.retain(|_, lease| lease.strong_count() > 0);
            self.swept = self.leases.len();
        }
        lease
    }

    async fn tend(&mut self) {
        let retiring = self.slots.len() > self.count;
        tokio::select! {
            changed = self.size.changed(), if self.watching => {
                if changed.is_err() {
                    self.watching = false;
                    return;
                }
                let count = *self.size.borrow_and_update();
                self.resize(count);
            }
            () = self.idle.notified(), if retiring => {}
            Some(joined) = self.tasks.join_next() => {
                self.tasks_gauge.dec();
                self.fault.check(joined);
            }
            else => std::future::pending().await,
        }
        self.close_idle();
    }

    /// Runs `count` batch processors: more start at once (or keep running, if they were
    /// retiring); fewer close once their keys are finished (see [`close_idle`]).
    fn resize(&mut self, count: usize) {
        for index in 0..count {
            if index == self.slots.len() {
                self.slots.push(None);
            }
            if self.slots[index].is_none() {
                let (queue, input) = async_channel::bounded(1);
                self.tasks.spawn((self.spawn)(input));
                self.tasks_gauge.inc();
                let holds = Arc::new(SlotHolds {
                    keys: AtomicUsize::new(0),
                    idle: self.idle.clone(),
                });
                self.slots[index] = Some(Slot { queue, holds });
            }
        }
        self.count = count;
        self.close_idle();
    }

    /// Closes the queues of retiring batch processors that hold no key any more: each
    /// then ends, its queue being empty.
    fn close_idle(&mut self) {
        for slot in &mut self.slots[self.count..] {
            if slot
                .as_ref()
                .is_some_and(|slot| slot.holds.keys.load(Ordering::Acquire) == 0)
            {
                *slot = None;
            }
        }
        while self.slots.len() > self.count && self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
    }

    async fn close(&mut self) {
        self.slots.clear();
        while let Some(joined) = self.tasks.join_next().await {
            self.tasks_gauge.dec();
            self.fault.check(joined);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::handler::BatchTrigger;

    fn batch(key: u64) -> Batch<u64, ()> {
        Batch {
            messages: vec![Message::new(key)],
            info: BatchInfo {
                batcher: Arc::from("db"),
                batch_key: BatchKey::Int(key),
                trigger: BatchTrigger::Size,
            },
            lease: None,
        }
    }

    /// Batch processors that finish each batch at once.
    fn by_key(size: watch::Receiver<usize>) -> ByKey<u64, ()> {
        let spawn: SpawnBatchProcessor<u64, ()> =
            Box::new(|input: async_channel::Receiver<Batch<u64, ()>>| {
                Box::pin(async move { while input.recv().await.is_ok() {} })
            });
        let gauge = prometheus::IntGauge::new("unit_by_key_tasks", "tasks").unwrap();
        ByKey::new(spawn, size, Arc::new(Fault::default()), gauge)
    }

    #[tokio::test]
    async fn finished_keys_are_swept_so_many_keys_keep_the_map_bounded() {
        let (_size, sized) = watch::channel(2);
        let mut by_key = by_key(sized);
        for key in 0..100_000 {
            by_key.send(batch(key)).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert!(
            by_key.leases.len() < 10_000,
            "{} leases kept",
            by_key.leases.len()
        );
        by_key.close().await;
    }

    #[tokio::test]
    async fn a_key_held_by_a_retiring_batch_processor_still_goes_there_until_finished() {
        let (size, sized) = watch::channel(3);
        let mut by_key = by_key(sized);
        // A batch of a key on the last batch processor, not finished: its lease lives.
        let (key, held) = (0..)
            .map(|key| (key, by_key.lease(&BatchKey::Int(key))))
            .find(|(_, lease)| lease.index == 2)
            .unwrap();
        size.send_replace(1);
        by_key.tend().await;
        assert_eq!(by_key.slots.len(), 3);
        assert!(by_key.slots[1].is_none() && by_key.slots[2].is_some());
        assert_eq!(by_key.lease(&BatchKey::Int(key)).index, 2);
        drop(held);
        by_key.close_idle();
        assert_eq!(by_key.slots.len(), 1);
        by_key.close().await;
    }
}
