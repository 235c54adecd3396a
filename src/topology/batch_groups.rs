//! A batcher's partial batches, one per batch key.
//!
//! Messages mostly arrive in runs of one key (often the only key), so the group of the
//! previous message is checked first and the hash index only on a change of key.

use std::time::Duration;

use tokio::time::Instant;

use crate::message::{BatchKey, Message};
use crate::topology::FastMap;

pub(crate) struct Group<T, M> {
    pub(crate) key: BatchKey,
    pub(crate) messages: Vec<Message<T, M>>,
    /// When its first message came.
    pub(crate) opened: Instant,
    pub(crate) deadline: Instant,
}

pub(crate) struct BatchGroups<T, M> {
    groups: Vec<Group<T, M>>,
    index: FastMap<BatchKey, usize>,
    last: usize,
    capacity: usize,
}

impl<T, M> BatchGroups<T, M> {
    /// Groups whose vectors start with room for `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Self {
        BatchGroups {
            groups: Vec::new(),
            index: FastMap::default(),
            last: 0,
            capacity,
        }
    }

    /// Moves the run of messages at the front of `rest` that share the first one's batch
    /// key into that key's group, as many as fit below `size` (at least one), opening the
    /// group at `now()` with a deadline `timeout` later if it is new. Returns the group's
    /// position and its size, or `None` when `rest` is empty. A run moves in one
    /// extension of the group's vector, not message by message; the whole rest in one copy.
    pub(crate) fn push_run(
        &mut self,
        rest: &mut std::vec::IntoIter<Message<T, M>>,
        size: usize,
        now: impl FnOnce() -> Instant,
        timeout: Duration,
    ) -> Option<(usize, usize)> {
        let key = rest.as_slice().first()?.batch_key();
        let found = match self.groups.get(self.last) {
            Some(group) if group.key == *key => Some(self.last),
            _ => self.index.get(key).copied(),
        };
        let position = match found {
            Some(position) => position,
            None => {
                let key = key.clone();
                self.index.insert(key.clone(), self.groups.len());
                let opened = now();
                self.groups.push(Group {
                    key,
                    messages: Vec::with_capacity(self.capacity),
                    opened,
                    deadline: opened + timeout,
                });
                self.groups.len() - 1
            }
        };
        self.last = position;
        let group = &mut self.groups[position];
        let room = size.saturating_sub(group.messages.len()).max(1);
        let ahead = rest.as_slice().iter().take(room);
        // Compared by the group's kind of key: no key (the common case) and integer keys
        // without a full comparison of the enum each message.
        let run = match &group.key {
            BatchKey::None => ahead
                .take_while(|message| matches!(message.batch_key(), BatchKey::None))
                .count(),
            BatchKey::Int(key) => ahead
                .take_while(|message| matches!(message.batch_key(), BatchKey::Int(k) if k == key))
                .count(),
            key => ahead.take_while(|message| message.batch_key() == key).count(),
        };
        if run == rest.len() {
            // The whole rest (most often a whole chunk of one key): moved in one copy.
            group.messages.extend(std::mem::take(rest));
        } else if run == 1 {
            // Keys that change at every message: without an iterator's setup.
            group.messages.extend(rest.next());
        } else {
            group.messages.extend(rest.by_ref().take(run));
        }
        Some((position, group.messages.len()))
    }

    /// Takes the group at `position` out.
    pub(crate) fn remove(&mut self, position: usize) -> Group<T, M> {
        let group = self.groups.swap_remove(position);
        self.index.remove(&group.key);
        if let Some(moved) = self.groups.get(position) {
            *self.index.get_mut(&moved.key).expect("every group is indexed") = position;
        }
        group
    }

    /// Brings each group's deadline forward to `timeout` after it opened, if that is
    /// sooner (a lowered batch timeout applies to the batches already open).
    pub(crate) fn shorten(&mut self, timeout: Duration) {
        for group in &mut self.groups {
            group.deadline = group.deadline.min(group.opened + timeout);
        }
    }

    /// Takes the first whole batches of `size` out of every group holding `size` or more
    /// (a lowered batch size); what is left stays open, as it was.
    pub(crate) fn take_full(&mut self, size: usize) -> Vec<Group<T, M>> {
        let size = size.max(1);
        let mut full = self.remove_where(|group| group.messages.len() >= size);
        for group in &mut full {
            let whole = group.messages.len() / size * size;
            let rest: Vec<_> = group.messages.drain(whole..).collect();
            if rest.is_empty() {
                continue;
            }
            let position = self.groups.len();
            self.index.insert(group.key.clone(), position);
            self.groups.push(Group {
                key: group.key.clone(),
                messages: rest,
                opened: group.opened,
                deadline: group.deadline,
            });
        }
        full
    }

    /// The earliest deadline of any group.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.groups.iter().map(|group| group.deadline).min()
    }

    /// Takes out every group whose deadline is at or before `now`.
    pub(crate) fn remove_expired(&mut self, now: Instant) -> Vec<Group<T, M>> {
        self.remove_where(|group| group.deadline <= now)
    }

    fn remove_where(&mut self, taken: impl Fn(&Group<T, M>) -> bool) -> Vec<Group<T, M>> {
        let mut removed = Vec::new();
        let mut position = 0;
        while position < self.groups.len() {
            if taken(&self.groups[position]) {
                removed.push(self.remove(position));
            } else {
                position += 1;
            }
        }
        removed
    }

    /// Takes out every group.
    pub(crate) fn drain(&mut self) -> Vec<Group<T, M>> {
        self.index.clear();
        std::mem::take(&mut self.groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: u64) -> Message<u64> {
        let mut message = Message::new(key);
        message.put_batch_key(key);
        message
    }

    impl<T, M> BatchGroups<T, M> {
        /// One message, into a group of any size.
        fn push(
            &mut self,
            message: Message<T, M>,
            now: impl FnOnce() -> Instant,
            timeout: Duration,
        ) -> (usize, usize) {
            self.push_run(&mut vec![message].into_iter(), usize::MAX, now, timeout)
                .expect("one message")
        }
    }

    proptest::proptest! {
        /// Runs of a key move into its group whole, up to the batch size: the batches and
        /// what stays open are those of adding each message alone, in order. Keys of every
        /// kind: none, integers, and strings borrowed or owned (the same key either way).
        #[test]
        fn runs_batch_as_single_messages_do(
            chunks in proptest::collection::vec(proptest::collection::vec(0u64..6, 0..20), 0..12),
            size in 1usize..6,
        ) {
            let key_of = |k: u64| match k {
                0 => BatchKey::None,
                1 | 2 => BatchKey::Int(k),
                3 => BatchKey::from("three"),
                4 => BatchKey::from(String::from("three")),
                _ => BatchKey::from(String::from("five")),
            };
            let now = Instant::now();
            let mut groups = BatchGroups::new(4);
            let mut batches: Vec<(BatchKey, Vec<u64>)> = Vec::new();
            let mut model: std::collections::HashMap<BatchKey, Vec<u64>> = Default::default();
            let mut expected: Vec<(BatchKey, Vec<u64>)> = Vec::new();
            let mut n = 0;
            for chunk in chunks {
                let messages: Vec<Message<u64>> = chunk
                    .iter()
                    .map(|&key| {
                        n += 1;
                        let mut message = Message::new(n);
                        message.put_batch_key(key_of(key));
                        message
                    })
                    .collect();
                for (i, &key) in chunk.iter().enumerate() {
                    let open = model.entry(key_of(key)).or_default();
                    open.push(*messages[i].data());
                    if open.len() == size {
                        expected.push((key_of(key), std::mem::take(open)));
                    }
                }
                let mut rest = messages.into_iter();
                while let Some((position, len)) = groups.push_run(&mut rest, size, || now, Duration::ZERO) {
                    proptest::prop_assert!(len <= size);
                    if len == size {
                        let group = groups.remove(position);
                        batches.push((group.key, group.messages.iter().map(|m| *m.data()).collect()));
                    }
                }
            }
            proptest::prop_assert_eq!(batches, expected);
            let mut open: Vec<(BatchKey, Vec<u64>)> = groups
                .drain()
                .into_iter()
                .map(|group| (group.key, group.messages.iter().map(|m| *m.data()).collect()))
                .collect();
            open.sort_by_key(|(key, _)| format!("{key:?}"));
            let mut left: Vec<(BatchKey, Vec<u64>)> = model
                .into_iter()
                .filter(|(_, open)| !open.is_empty())
                .collect();
            left.sort_by_key(|(key, _)| format!("{key:?}"));
            proptest::prop_assert_eq!(open, left);
        }
    }

    #[test]
    fn groups_by_key_through_removals() {
        let now = Instant::now();
        let mut groups = BatchGroups::new(4);
        assert_eq!(groups.push(keyed(1), || now, std::time::Duration::ZERO), (0, 1));
        assert_eq!(groups.push(keyed(2), || now, std::time::Duration::ZERO), (1, 1));
        assert_eq!(groups.push(keyed(3), || now, std::time::Duration::ZERO), (2, 1));
        assert_eq!(groups.push(keyed(1), || now, std::time::Duration::ZERO), (0, 2));

        // Removing the first moves the last into its place; the index follows.
        assert_eq!(groups.remove(0).messages.len(), 2);
        assert_eq!(groups.push(keyed(3), || now, std::time::Duration::ZERO), (0, 2));
        assert_eq!(groups.push(keyed(2), || now, std::time::Duration::ZERO), (1, 2));
        assert_eq!(groups.push(keyed(1), || now, std::time::Duration::ZERO), (2, 1));

        let keys: Vec<BatchKey> = groups.drain().into_iter().map(|g| g.key).collect();
        assert_eq!(keys, [BatchKey::Int(3), BatchKey::Int(2), BatchKey::Int(1)]);
        assert_eq!(groups.next_deadline(), None);
    }

    #[test]
    fn removes_only_expired_groups() {
        let now = Instant::now();
        let mut groups = BatchGroups::new(4);
        groups.push(keyed(1), || now, std::time::Duration::ZERO);
        groups.push(keyed(2), || now, std::time::Duration::from_secs(1));
        groups.push(keyed(3), || now, std::time::Duration::ZERO);
        let expired: Vec<BatchKey> = groups.remove_expired(now).into_iter().map(|g| g.key).collect();
        assert_eq!(expired, [BatchKey::Int(1), BatchKey::Int(3)]);
        assert_eq!(groups.push(keyed(2), || now, std::time::Duration::ZERO), (0, 2));
    }

    #[test]
    fn a_lowered_size_takes_whole_batches_and_keeps_the_rest_open_in_order() {
        let now = Instant::now();
        let hour = Duration::from_secs(3_600);
        let mut groups = BatchGroups::new(4);
        for n in 0..7u64 {
            let mut message = Message::new(n);
            message.put_batch_key(1);
            groups.push(message, || now, hour);
        }
        groups.push(keyed(2), || now, hour);
        let full = groups.take_full(3);
        assert_eq!(full.len(), 1);
        assert_eq!(
            full[0].messages.iter().map(|m| *m.data()).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        // The one left of key 1 is still open, where new ones join it.
        let mut next = Message::new(7);
        next.put_batch_key(1);
        let (position, len) = groups.push(next, || now, hour);
        assert_eq!(len, 2);
        assert_eq!(
            groups
                .remove(position)
                .messages
                .iter()
                .map(|m| *m.data())
                .collect::<Vec<_>>(),
            [6, 7]
        );
        // A lowered timeout brings the deadline forward, never back.
        groups.shorten(Duration::from_secs(1));
        assert_eq!(groups.next_deadline(), Some(now + Duration::from_secs(1)));
        groups.shorten(hour * 2);
        assert_eq!(groups.next_deadline(), Some(now + Duration::from_secs(1)));
    }
}
