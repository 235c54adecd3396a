//! The contiguous acknowledged prefix of a source's positions (delivery tags, offsets,
//! line numbers), for a broker that acknowledges "everything up to here" in one call.

use std::collections::VecDeque;

/// Positions received in increasing order, each with the handle its acknowledgement
/// goes through, until the contiguous run of acknowledged ones at the front can be
/// acknowledged at once (RabbitMQ's `multiple` ack, a Kafka commit).
///
/// A position settled some other way (rejected, requeued) is [removed](Self::remove), so
/// that it never holds the front back; the caller must send that settlement before any
/// acknowledgement of the prefix that passes it.
///
/// ```
/// use longshore::source::AckPrefix;
///
/// let mut prefix = AckPrefix::default();
/// for tag in 1..=4 {
///     assert!(prefix.received(tag, format!("handle {tag}")));
/// }
/// prefix.acknowledged(2);
/// assert_eq!(prefix.take_front(), None, "1 is not done: nothing passes it");
/// prefix.acknowledged(1);
/// assert_eq!(prefix.take_front(), Some((2, "handle 2".to_owned())), "1 and 2 at once");
/// assert_eq!(prefix.remove(3), Some("handle 3".to_owned()));
/// prefix.acknowledged(4);
/// assert_eq!(prefix.take_front(), Some((4, "handle 4".to_owned())));
/// assert!(prefix.is_empty());
/// ```
#[derive(Debug)]
pub struct AckPrefix<H> {
    /// (position, handle, acknowledged), in increasing position.
    pending: VecDeque<(u64, H, bool)>,
    /// Entries of `pending` acknowledged and waiting behind the front.
    acknowledged: usize,
}

impl<H> Default for AckPrefix<H> {
    fn default() -> Self {
        AckPrefix {
            pending: VecDeque::new(),
            acknowledged: 0,
        }
    }
}

impl<H> AckPrefix<H> {
    /// Records `position`, to be acknowledged through `handle`; `false`, recording
    /// nothing, when it does not follow the last one received.
    #[must_use]
    pub fn received(&mut self, position: u64, handle: H) -> bool {
        if self.pending.back().is_some_and(|&(last, _, _)| position <= last) {
            return false;
        }
        self.pending.push_back((position, handle, false));
        true
    }

    /// Marks `position` acknowledged; `false` when it is not pending or was already.
    pub fn acknowledged(&mut self, position: u64) -> bool {
        let Some(index) = self.index(position) else {
            return false;
        };
        let entry = &mut self.pending[index];
        if entry.2 {
            return false;
        }
        entry.2 = true;
        self.acknowledged += 1;
        true
    }

    /// Takes `position` out, settled another way; its handle, if it was pending.
    pub fn remove(&mut self, position: u64) -> Option<H> {
        let index = self.index(position)?;
        let (_, handle, acknowledged) = self.pending.remove(index)?;
        if acknowledged {
            self.acknowledged -= 1;
        }
        Some(handle)
    }

    /// Takes the contiguous run of acknowledged positions at the front: the last of
    /// them, and its handle, to acknowledge it and everything before it at once. `None`
    /// when the front is not acknowledged.
    pub fn take_front(&mut self) -> Option<(u64, H)> {
        let mut last = None;
        while self
            .pending
            .front()
            .is_some_and(|&(_, _, acknowledged)| acknowledged)
        {
            let (position, handle, _) = self.pending.pop_front()?;
            self.acknowledged -= 1;
            last = Some((position, handle));
        }
        last
    }

    /// Takes every acknowledged position still waiting behind an unacknowledged one,
    /// with its handle, to acknowledge them one by one.
    pub fn take_acknowledged(&mut self) -> Vec<(u64, H)> {
        let mut taken = Vec::with_capacity(self.acknowledged);
        let mut kept = VecDeque::with_capacity(self.pending.len() - self.acknowledged);
        for (position, handle, acknowledged) in self.pending.drain(..) {
            if acknowledged {
                taken.push((position, handle));
            } else {
                kept.push_back((position, handle, false));
            }
        }
        self.pending = kept;
        self.acknowledged = 0;
        taken
    }

    /// Acknowledged positions waiting behind an unacknowledged one.
    pub fn waiting(&self) -> usize {
        self.acknowledged
    }

    /// Positions received and not taken.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every position received was taken.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn index(&self, position: u64) -> Option<usize> {
        // Mostly the oldest is settled first: no search.
        match self.pending.front() {
            Some(&(first, _, _)) if first == position => Some(0),
            _ => self.pending.binary_search_by_key(&position, |&(p, _, _)| p).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        Acknowledge(usize),
        Remove(usize),
        TakeFront,
        TakeAcknowledged,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0usize..64).prop_map(Step::Acknowledge),
            1 => (0usize..64).prop_map(Step::Remove),
            2 => Just(Step::TakeFront),
            1 => Just(Step::TakeAcknowledged),
        ]
    }

    proptest! {
        /// Against a model: what a broker would count acknowledged after each "up to
        /// here" or single acknowledgement. Nothing unacknowledged or removed is ever
        /// passed by a front; every position ends settled exactly once.
        #[test]
        fn a_front_never_passes_an_unfinished_or_removed_position(
            gaps in proptest::collection::vec(1u64..4, 1..64),
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let mut prefix = AckPrefix::default();
            let mut positions = Vec::new();
            let mut at = 0;
            for gap in gaps {
                at += gap;
                prop_assert!(prefix.received(at, at));
                positions.push(at);
            }
            prop_assert!(!prefix.received(at, at), "not after the last");
            // The model: acknowledged by the pipeline; settled at the broker.
            let (mut done, mut removed, mut settled) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
            let mut broker_outstanding: BTreeSet<u64> = positions.iter().copied().collect();
            let finish = |prefix: &mut AckPrefix<u64>, step: Step, done: &mut BTreeSet<u64>, removed: &mut BTreeSet<u64>, settled: &mut BTreeSet<u64>, outstanding: &mut BTreeSet<u64>| -> Result<(), TestCaseError> {
                match step {
                    Step::Acknowledge(i) => {
                        let p = positions[i % positions.len()];
                        let fresh = !done.contains(&p) && !removed.contains(&p) && !settled.contains(&p);
                        prop_assert_eq!(prefix.acknowledged(p), fresh);
                        if fresh { done.insert(p); }
                    }
                    Step::Remove(i) => {
                        let p = positions[i % positions.len()];
                        let pending = !removed.contains(&p) && !settled.contains(&p);
                        prop_assert_eq!(prefix.remove(p), pending.then_some(p));
                        if pending {
                            removed.insert(p);
                            done.remove(&p);
                            outstanding.remove(&p);
                        }
                    }
                    Step::TakeFront => {
                        if let Some((last, handle)) = prefix.take_front() {
                            prop_assert_eq!(last, handle);
                            // "Everything up to last": each must be acknowledged.
                            let covered: Vec<u64> = outstanding.range(..=last).copied().collect();
                            for p in covered {
                                prop_assert!(done.contains(&p), "{} passed unfinished", p);
                                outstanding.remove(&p);
                                settled.insert(p);
                                done.remove(&p);
                            }
                        }
                    }
                    Step::TakeAcknowledged => {
                        for (p, handle) in prefix.take_acknowledged() {
                            prop_assert_eq!(p, handle);
                            prop_assert!(done.remove(&p), "{} taken unacknowledged", p);
                            prop_assert!(outstanding.remove(&p));
                            settled.insert(p);
                        }
                    }
                }
                prop_assert_eq!(prefix.waiting(), done.len());
                prop_assert_eq!(prefix.len(), outstanding.len());
                Ok(())
            };
            for step in steps {
                finish(&mut prefix, step, &mut done, &mut removed, &mut settled, &mut broker_outstanding)?;
            }
            // Everything acknowledged, then taken: every position settled once.
            for p in positions.clone() {
                finish(&mut prefix, Step::Acknowledge(positions.iter().position(|&q| q == p).unwrap()), &mut done, &mut removed, &mut settled, &mut broker_outstanding)?;
            }
            finish(&mut prefix, Step::TakeFront, &mut done, &mut removed, &mut settled, &mut broker_outstanding)?;
            prop_assert!(prefix.is_empty());
            prop_assert_eq!(settled.len() + removed.len(), positions.len());
        }
    }
}
