//! The assigned partitions, found by name (the rebalance callbacks, rarely) or by the
//! slot a record carries (every record, three times: queued, taken, acknowledged), so that
//! the per-record path indexes a vector instead of hashing a topic name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::offsets::PartitionOffsets;

pub(crate) type TopicPartition = (Arc<str>, i32);

/// Where a record's partition is kept, and which assignment of it delivered the record.
/// A slot is reused after a revoke, but a generation never is: a record of a revoked
/// assignment finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    index: u32,
    generation: u64,
}

impl Slot {
    /// Where the partition is kept: assigned partitions have dense indexes, reused after a
    /// revoke, so the index spreads them evenly over processors.
    pub(crate) fn index(self) -> u32 {
        self.index
    }

    /// The slot of no partition, for records built by hand.
    pub(crate) const NONE: Slot = Slot {
        index: u32::MAX,
        generation: u64::MAX,
    };
}

/// One assigned partition.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) generation: u64,
    pub(crate) offsets: PartitionOffsets,
    /// Of the received, how many still wait in the queue (not handed to the pipeline).
    pub(crate) queued: usize,
    /// Of the received, how many were dropped from the queue unhanded (a revoke, a
    /// shutdown): never acknowledged, read again by whoever owns the partition next.
    pub(crate) dropped: usize,
    pub(crate) paused: bool,
    /// The offset last committed, as the broker confirmed.
    pub(crate) committed: Option<i64>,
    /// Records below this offset were acknowledged in an earlier assignment of the
    /// partition to this consumer, whose commit the broker refused mid-rebalance: they
    /// are skipped, not handled twice.
    pub(crate) done_below: Option<i64>,
    /// When its committable offset last moved, or records arrived with none outstanding:
    /// a partition with records outstanding and no progress for long is stalled.
    pub(crate) progressed_at: std::time::Instant,
}

impl Partition {
    /// A newly assigned partition, with nothing received yet.
    pub(crate) fn new(generation: u64, done_below: Option<i64>) -> Self {
        Partition {
            generation,
            offsets: PartitionOffsets::default(),
            queued: 0,
            dropped: 0,
            paused: false,
            committed: None,
            done_below,
            progressed_at: std::time::Instant::now(),
        }
    }

    /// Received records handed to the pipeline and not yet acknowledged.
    pub(crate) fn handed_out(&self) -> usize {
        self.offsets.in_flight() - self.queued - self.dropped
    }

    /// Its queued records were dropped from the queue, unhanded.
    pub(crate) fn drop_queued(&mut self) {
        self.dropped += std::mem::take(&mut self.queued);
    }
}

#[derive(Debug, Default)]
pub(crate) struct Partitions {
    slots: Vec<Option<Partition>>,
    by_key: HashMap<TopicPartition, u32>,
    free: Vec<u32>,
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
        self.slots[index as usize] = Some(partition);
        Slot { index, generation }
    }

    pub(crate) fn remove(&mut self, key: &TopicPartition) -> Option<Partition> {
        let index = self.by_key.remove(key)?;
        self.free.push(index);
        self.slots[index as usize].take()
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
