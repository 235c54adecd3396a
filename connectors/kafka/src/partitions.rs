//! The assigned partitions, found by name (the rebalance callbacks, rarely) or by the
//! slot a record carries (every record, three times: queued, taken, acknowledged), so that
//! the per-record path indexes a vector instead of hashing a topic name. Each keeps its
//! own queue of fetched records, and the partitions with records queued take turns, so a
//! take never moves the records of a partition that may not hand out more.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metadata::{KafkaMessage, KafkaMetadata};
use crate::offsets::PartitionOffsets;
use crate::slot::Slot;

pub(crate) type TopicPartition = (Arc<str>, i32);

/// How long a partition at its cap may keep records queued before it counts as stalled
/// (see [`Partition::is_stalled`]). Well under a second: meanwhile its queued records fill
/// the poll thread's bound and the other partitions' records wait in librdkafka.
pub(crate) const STALLED_AFTER: Duration = Duration::from_millis(250);

/// One assigned partition.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) generation: u64,
    pub(crate) offsets: PartitionOffsets,
    /// Of the received, those not yet handed to the pipeline, in offset order. Records,
    /// made messages only when taken: a message is twice a record's size, and every byte
    /// queued is copied in and out.
    queue: VecDeque<KafkaMetadata>,
    /// Since when `queue` has not been empty: `None` while it is.
    queued_since: Option<Instant>,
    /// Of the received, how many were dropped from the queue unhanded (a revoke, a
    /// shutdown): never acknowledged, read again by whoever owns the partition next.
    pub(crate) dropped: usize,
    pub(crate) paused: bool,
    /// The intake round (`State::intake_round`) whose end paused it, if `paused`: no
    /// record of it is polled in a later round unless librdkafka dropped the pause.
    pub(crate) paused_in: u64,
    /// The intake round in which librdkafka was told to pause it for an operator, while
    /// that pause is applied (see `paused_in`).
    pub(crate) held_in: Option<u64>,
    /// The offset last committed, as the broker confirmed.
    pub(crate) committed: Option<i64>,
    /// Records below this offset were acknowledged in an earlier assignment of the
    /// partition to this consumer, whose commit the broker refused mid-rebalance: they
    /// are skipped, not handled twice.
    pub(crate) done_below: Option<i64>,
    /// When its committable offset last moved, or records arrived with none outstanding:
    /// how long it has gone without progress, as the lag gauges report it.
    pub(crate) progressed_at: Instant,
}

impl Partition {
    /// A newly assigned partition, with nothing received yet.
    pub(crate) fn new(generation: u64, done_below: Option<i64>) -> Self {
        Partition {
            generation,
            offsets: PartitionOffsets::default(),
            queue: VecDeque::new(),
            queued_since: None,
            dropped: 0,
            paused: false,
            paused_in: 0,
            held_in: None,
            committed: None,
            done_below,
            progressed_at: Instant::now(),
        }
    }

    /// Received records handed to the pipeline and not yet acknowledged.
    pub(crate) fn handed_out(&self) -> usize {
        self.offsets.in_flight() - self.queue.len() - self.dropped
    }

    /// Received records not yet handed to the pipeline.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether it is stalled at `now`: `cap` records handed out (its queued records cannot
    /// be taken) and records queued without a break for [`STALLED_AFTER`] (its records
    /// pile up behind one that never finishes, or are taken slower than they arrive). A
    /// partition at its cap whose queue empties quickly is merely busy: its queued records
    /// are taken as soon as the pipeline acknowledges the ones it has.
    pub(crate) fn is_stalled(&self, cap: usize, now: Instant) -> bool {
        self.handed_out() >= cap
            && self
                .queued_since
                .is_some_and(|since| now.saturating_duration_since(since) >= STALLED_AFTER)
    }

    /// How many of its queued records may be handed out now, with at most `limit` out.
    fn may_hand_out(&self, limit: usize) -> usize {
        limit.saturating_sub(self.handed_out()).min(self.queue.len())
    }

    /// Drops its queued records, unhanded.
    fn drop_queued(&mut self) {
        self.dropped += self.queue.len();
        self.queue.clear();
        self.queued_since = None;
    }
}

#[derive(Debug, Default)]
pub(crate) struct Partitions {
    slots: Vec<Option<Partition>>,
    by_key: HashMap<TopicPartition, u32>,
    free: Vec<u32>,
    /// The slots whose partition has records queued, each once, in turn.
    ready: VecDeque<u32>,
}

impl Partitions {
    /// Assigns `key`, replacing what was there; returns its slot.
    pub(crate) fn insert(&mut self, key: TopicPartition, partition: Partition) -> Slot {
        let generation = partition.generation;
        let index = match self.by_key.get(&key) {
            Some(&index) => index,
            None => {
                let index = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 partitions")
                });
                self.by_key.insert(key, index);
                index
            }
        };
        if self.slots[index as usize].replace(partition).is_some() {
            self.ready.retain(|&ready| ready != index);
        }
        Slot { index, generation }
    }

    pub(crate) fn remove(&mut self, key: &TopicPartition) -> Option<Partition> {
        let index = self.by_key.remove(key)?;
        self.free.push(index);
        self.ready.retain(|&ready| ready != index);
        self.slots[index as usize].take()
    }

    /// Queues `record` behind the records of its partition, which must be assigned, at
    /// `now`; returns the partition.
    pub(crate) fn enqueue(&mut self, record: KafkaMetadata, now: Instant) -> &mut Partition {
        let index = record.slot.index;
        let partition = self.slots[index as usize]
            .as_mut()
            .filter(|p| p.generation == record.slot.generation)
            .expect("an assigned partition's record");
        if partition.queue.is_empty() {
            self.ready.push_back(index);
            partition.queued_since = Some(now);
        }
        partition.queue.push_back(record);
        partition
    }

    /// Takes up to `demand` queued records, each partition's in order, from partitions in
    /// turn, none beyond `limit` handed out. A partition at its limit keeps its records
    /// where they are, and goes to the back of the turns like any other.
    pub(crate) fn take(&mut self, demand: usize, limit: usize) -> Vec<KafkaMessage> {
        // Sized first: grown by doubling, the vector would copy each message of a take once
        // more on average, and a message is a few hundred bytes.
        let takeable: usize = self
            .ready
            .iter()
            .filter_map(|&index| self.slots[index as usize].as_ref())
            .map(|p| p.may_hand_out(limit))
            .sum();
        let mut taken = Vec::with_capacity(takeable.min(demand));
        for _ in 0..self.ready.len() {
            let wanted = demand - taken.len();
            if wanted == 0 {
                break;
            }
            let index = self.ready.pop_front().expect("counted");
            let partition = self.slots[index as usize]
                .as_mut()
                .expect("a partition with records queued is assigned");
            let n = partition.may_hand_out(limit).min(wanted);
            taken.extend(partition.queue.drain(..n).map(KafkaMetadata::into_message));
            if partition.queue.is_empty() {
                partition.queued_since = None;
            } else {
                self.ready.push_back(index);
            }
        }
        taken
    }

    /// Whether some partition has records queued.
    pub(crate) fn any_queued(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Drops the queued records of `key` (never handed out, so never acknowledged:
    /// read again), counting them as dropped.
    pub(crate) fn drop_queued(&mut self, key: &TopicPartition) {
        let Some(&index) = self.by_key.get(key) else {
            return;
        };
        if let Some(partition) = self.slots[index as usize].as_mut() {
            partition.drop_queued();
            self.ready.retain(|&ready| ready != index);
        }
    }

    /// Drops every partition's queued records (see [`Partitions::drop_queued`]).
    pub(crate) fn drop_all_queued(&mut self) {
        self.slots.iter_mut().flatten().for_each(Partition::drop_queued);
        self.ready.clear();
    }

    pub(crate) fn get(&self, key: &TopicPartition) -> Option<&Partition> {
        let index = *self.by_key.get(key)?;
        self.slots[index as usize].as_ref()
    }

    pub(crate) fn get_mut(&mut self, key: &TopicPartition) -> Option<&mut Partition> {
        let index = *self.by_key.get(key)?;
        self.slots[index as usize].as_mut()
    }

    /// The slot of `key`'s current assignment.
    pub(crate) fn slot(&self, key: &TopicPartition) -> Option<Slot> {
        let index = *self.by_key.get(key)?;
        let generation = self.slots[index as usize].as_ref()?.generation;
        Some(Slot { index, generation })
    }

    /// The partition at `slot`, unless the assignment that delivered it was revoked since.
    pub(crate) fn at(&mut self, slot: Slot) -> Option<&mut Partition> {
        self.slots
            .get_mut(slot.index as usize)?
            .as_mut()
            .filter(|partition| partition.generation == slot.generation)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TopicPartition, &Partition)> {
        self.by_key
            .iter()
            .filter_map(|(key, &index)| Some((key, self.slots[index as usize].as_ref()?)))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Partition> {
        self.slots.iter().flatten()
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Partition> {
        self.slots.iter_mut().flatten()
    }

    /// How many partitions are assigned.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Checks that the partitions in turn are those with records queued, each once.
    #[cfg(test)]
    pub(crate) fn check_ready(&self) {
        let mut ready: Vec<u32> = self.ready.iter().copied().collect();
        ready.sort_unstable();
        let queued: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&i| {
                self.slots[i as usize]
                    .as_ref()
                    .is_some_and(|p| !p.queue.is_empty())
            })
            .collect();
        assert_eq!(ready, queued);
        for partition in self.slots.iter().flatten() {
            assert_eq!(partition.queued_since.is_some(), !partition.queue.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(generation: u64) -> Partition {
        Partition::new(generation, None)
    }

    #[test]
    fn a_slot_of_a_revoked_assignment_finds_nothing_even_once_reused() {
        let mut partitions = Partitions::default();
        let (a, b): (TopicPartition, TopicPartition) = ((Arc::from("t"), 0), (Arc::from("t"), 1));
        let first = partitions.insert(a.clone(), partition(1));
        assert!(partitions.at(first).is_some());
        assert!(partitions.remove(&a).is_some());
        assert!(partitions.at(first).is_none());
        // The freed slot goes to another partition, under another generation.
        let reused = partitions.insert(b.clone(), partition(2));
        assert_eq!(reused.index, first.index);
        assert!(partitions.at(first).is_none());
        assert_eq!(partitions.at(reused).map(|p| p.generation), Some(2));
        assert_eq!(partitions.slot(&b), Some(reused));
        // Re-assigned: same slot, new generation; the old generation's records find nothing.
        let again = partitions.insert(b.clone(), partition(3));
        assert_eq!(again.index, reused.index);
        assert!(partitions.at(reused).is_none());
        assert_eq!(partitions.iter().count(), 1);
        assert_eq!(partitions.values().count(), 1);
        assert!(partitions.at(Slot::NONE).is_none());
    }
}
