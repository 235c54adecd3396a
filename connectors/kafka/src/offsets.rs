//! Per-partition offset tracking: which offsets were handed to the pipeline, which were
//! acknowledged, and the offset that may be committed — never past an unfinished one.

use std::collections::VecDeque;

/// The offsets of one partition between receipt and commit.
///
/// Offsets arrive in increasing order (gaps allowed: compaction, transaction markers).
/// The committable position is the first offset not yet acknowledged, or one past the
/// last received when all are: Kafka's "next offset to read". An offset that does not
/// follow the last one (an offset reset, a truncated log) is refused: the partition's
/// tracking must start again (see `State::queue_record`).
#[derive(Debug, Default)]
pub(crate) struct PartitionOffsets {
    /// Received and not yet committable: (offset, timestamp in ms or `i64::MIN`,
    /// acknowledged).
    pending: VecDeque<(i64, i64, bool)>,
    /// Everything before this offset is acknowledged.
    position: Option<i64>,
    /// The highest offset received.
    last: Option<i64>,
    /// Entries of `pending` not yet acknowledged.
    unacknowledged: usize,
}

impl PartitionOffsets {
    /// Records that `offset` (written at `timestamp_ms`) was received; `false`, recording
    /// nothing, when it does not follow the last offset received.
    #[must_use]
    pub(crate) fn received(&mut self, offset: i64, timestamp_ms: Option<i64>) -> bool {
        if self.last.is_some_and(|last| offset <= last) {
            return false;
        }
        if self.pending.is_empty() && self.position.is_none() {
            self.position = Some(offset);
        }
        self.last = Some(offset);
        self.pending
            .push_back((offset, timestamp_ms.unwrap_or(i64::MIN), false));
        self.unacknowledged += 1;
        true
    }

    /// The timestamp of the oldest record received and not yet acknowledged, if it has one.
    pub(crate) fn oldest_unacknowledged_ms(&self) -> Option<i64> {
        self.pending
            .front()
            .map(|&(_, at, _)| at)
            .filter(|&at| at != i64::MIN)
    }

    /// Records that `offset` was acknowledged; `false` if it was not pending.
    pub(crate) fn acknowledged(&mut self, offset: i64) -> bool {
        // In partition order the oldest is acknowledged first: no search.
        let index = match self.pending.front() {
            Some(&(first, _, _)) if first == offset => 0,
            _ => match self.pending.binary_search_by_key(&offset, |&(o, _, _)| o) {
                Ok(index) => index,
                Err(_) => return false,
            },
        };
        if self.pending[index].2 {
            return false;
        }
        self.pending[index].2 = true;
        self.unacknowledged -= 1;
        while let Some(&(offset, _, true)) = self.pending.front() {
            self.pending.pop_front();
            self.position = Some(offset + 1);
        }
        if let Some(&(offset, _, false)) = self.pending.front() {
            self.position = Some(offset);
        }
        true
    }

    /// The offset to commit: every offset before it is acknowledged. `None` before the
    /// first message.
    pub(crate) fn committable(&self) -> Option<i64> {
        self.position
    }

    /// Messages received and not yet acknowledged.
    pub(crate) fn in_flight(&self) -> usize {
        self.unacknowledged
    }

    /// Entries kept: the unacknowledged, and acknowledged ones behind an unacknowledged.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn commits_only_the_acknowledged_prefix() {
        let mut offsets = PartitionOffsets::default();
        assert_eq!(offsets.committable(), None);
        for offset in [10, 11, 13, 14] {
            assert!(offsets.received(offset, Some(offset * 1000)));
        }
        assert_eq!(offsets.oldest_unacknowledged_ms(), Some(10_000));
        assert_eq!(offsets.committable(), Some(10));
        assert!(offsets.acknowledged(11));
        assert_eq!(offsets.committable(), Some(10));
        assert!(offsets.acknowledged(10));
        assert_eq!(offsets.committable(), Some(13));
        assert_eq!(offsets.oldest_unacknowledged_ms(), Some(13_000));
        assert!(!offsets.acknowledged(10), "twice");
        assert!(!offsets.acknowledged(12), "never received");
        assert!(offsets.acknowledged(14));
        assert!(offsets.acknowledged(13));
        assert_eq!(offsets.committable(), Some(15));
        assert_eq!(offsets.in_flight(), 0);
        assert_eq!(offsets.len(), 0);
        assert_eq!(offsets.oldest_unacknowledged_ms(), None);
    }

    #[test]
    fn an_offset_that_does_not_follow_the_last_is_refused_and_changes_nothing() {
        let mut offsets = PartitionOffsets::default();
        assert!(offsets.received(100, None));
        assert!(offsets.acknowledged(100));
        // Reset to an earlier offset (auto.offset.reset, a truncated log): refused, even
        // with nothing pending, so the position cannot pass a record read again.
        assert!(!offsets.received(50, None));
        assert!(!offsets.received(100, None));
        assert_eq!(offsets.committable(), Some(101));
        assert_eq!(offsets.in_flight(), 0);
        assert!(offsets.received(101, None));
    }

    /// Offsets with random gaps, and the same offsets in a random order.
    fn offsets_and_acks() -> impl Strategy<Value = (Vec<i64>, Vec<i64>)> {
        prop::collection::vec(1i64..4, 1..200).prop_flat_map(|gaps| {
            let offsets: Vec<i64> = gaps
                .iter()
                .scan(0, |next, gap| {
                    *next += gap;
                    Some(*next)
                })
                .collect();
            (Just(offsets.clone()), Just(offsets).prop_shuffle())
        })
    }

    proptest! {
        /// Random gaps and acknowledgement orders: the committable offset never passes an
        /// unacknowledged one, and reaches one past the last when all are acknowledged.
        #[test]
        fn never_passes_an_unacknowledged_offset((offsets, acks) in offsets_and_acks()) {
            let mut tracker = PartitionOffsets::default();
            offsets.iter().for_each(|&o| assert!(tracker.received(o, None)));
            let last = offsets[offsets.len() - 1];
            let mut acknowledged = std::collections::BTreeSet::new();
            for ack in acks {
                prop_assert!(tracker.acknowledged(ack));
                acknowledged.insert(ack);
                let position = tracker.committable().unwrap();
                // Every received offset below the position is acknowledged, and the
                // position is the first unacknowledged offset, or one past the last.
                for &o in offsets.iter().filter(|&&o| o < position) {
                    prop_assert!(acknowledged.contains(&o));
                }
                let first_open = offsets.iter().find(|o| !acknowledged.contains(o));
                prop_assert_eq!(position, first_open.copied().unwrap_or(last + 1));
                prop_assert_eq!(tracker.in_flight(), offsets.len() - acknowledged.len());
            }
            prop_assert_eq!(tracker.committable(), Some(last + 1));
            prop_assert_eq!(tracker.len(), 0);
        }
    }
}
