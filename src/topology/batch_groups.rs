//! A batcher's partial batches, one per batch key.
//!
//! Messages mostly arrive in runs of one key (often the only key), so the group of the
//! previous message is checked first and the hash index only on a change of key.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::message::{BatchKey, Message};

pub(crate) struct Group<T, M> {
    pub(crate) key: BatchKey,
    pub(crate) messages: Vec<Message<T, M>>,
    /// When its first message came.
    pub(crate) opened: Instant,
    pub(crate) deadline: Instant,
}

pub(crate) struct BatchGroups<T, M> {
    groups: Vec<Group<T, M>>,
    index: HashMap<BatchKey, usize>,
    last: usize,
    capacity: usize,
}

impl<T, M> BatchGroups<T, M> {
    /// Groups whose vectors start with room for `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Self {
        BatchGroups {
            groups: Vec::new(),
            index: HashMap::new(),
            last: 0,
            capacity,
        }
    }

    /// Adds `message` to the group of its key, opening the group at `now` with a deadline
    /// `timeout` later if it is new; returns the group's position and its size.
    pub(crate) fn push(
        &mut self,
        message: Message<T, M>,
        now: impl FnOnce() -> Instant,
        timeout: std::time::Duration,
    ) -> (usize, usize) {
        let position = match self.groups.get(self.last) {
            Some(group) if group.key == *message.batch_key() => self.last,
            _ => match self.index.get(message.batch_key()) {
                Some(&position) => position,
                None => {
                    let key = message.batch_key().clone();
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
            },
        };
        self.last = position;
        let group = &mut self.groups[position];
        group.messages.push(message);
        (position, group.messages.len())
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

    /// The earliest deadline of any group.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.groups.iter().map(|group| group.deadline).min()
    }

    /// Takes out every group whose deadline is at or before `now`.
    pub(crate) fn remove_expired(&mut self, now: Instant) -> Vec<Group<T, M>> {
        let mut expired = Vec::new();
        let mut position = 0;
        while position < self.groups.len() {
            if self.groups[position].deadline <= now {
                expired.push(self.remove(position));
            } else {
                position += 1;
            }
        }
        expired
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
}
