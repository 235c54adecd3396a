//! The messages this consumer holds (received, not yet deleted or released), with the
//! moment each becomes visible again; the visibility extension reads it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::queue::Entry;

/// Received messages by their `ack_ref`, until acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Held {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_ref: u64,
    messages: HashMap<u64, Receipt>,
}

#[derive(Debug)]
struct Receipt {
    handle: String,
    visible_at: Instant,
}

impl Held {
    /// Holds messages received at `received_at` with `visibility`; returns their `ack_ref`s.
    pub(crate) fn hold<'a>(
        &self,
        receipts: impl ExactSizeIterator<Item = &'a str>,
        received_at: Instant,
        visibility: Duration,
    ) -> std::ops::Range<u64> {
        let mut inner = self.lock();
        let first = inner.next_ref;
        inner.next_ref += receipts.len() as u64;
        let visible_at = received_at + visibility;
        for (offset, handle) in receipts.enumerate() {
            let receipt = Receipt {
                handle: handle.to_owned(),
                visible_at,
            };
            inner.messages.insert(first + offset as u64, receipt);
        }
        first..inner.next_ref
    }

    /// Lets go of acknowledged or released messages.
    pub(crate) fn release(&self, refs: impl IntoIterator<Item = u64>) {
        let mut inner = self.lock();
        for ack_ref in refs {
            inner.messages.remove(&ack_ref);
        }
    }

    /// The messages that become visible within `margin` of `now`, marked as extended by
    /// `visibility`: the visibility changes to send.
    pub(crate) fn due_for_extension(
        &self,
        now: Instant,
        margin: Duration,
        visibility: Duration,
    ) -> Vec<Entry> {
        let mut inner = self.lock();
        inner
            .messages
            .values_mut()
            .filter(|receipt| receipt.visible_at <= now + margin)
            .map(|receipt| {
                receipt.visible_at = now + visibility;
                Entry::change(receipt.handle.clone(), visibility)
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().messages.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_near_their_timeout_are_extended_and_then_not_again() {
        let held = Held::default();
        let start = Instant::now();
        let visibility = Duration::from_secs(30);
        let early = held.hold(["a", "b"].into_iter(), start, visibility);
        let late = held.hold(["c"].into_iter(), start + Duration::from_secs(20), visibility);
        assert_eq!((early.clone(), late), (0..2, 2..3));

        let margin = Duration::from_secs(10);
        let now = start + Duration::from_secs(21);
        let due = held.due_for_extension(now, margin, visibility);
        let mut receipts: Vec<_> = due.iter().map(|e| e.receipt.as_str()).collect();
        receipts.sort_unstable();
        assert_eq!(receipts, ["a", "b"]);
        assert!(held.due_for_extension(now, margin, visibility).is_empty());

        held.release(early);
        assert_eq!(held.len(), 1);
    }
}
