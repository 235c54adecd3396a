//! The messages this consumer holds (received, not yet deleted or released), with the
//! moment each becomes visible again; the visibility extension reads and updates it.

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
    /// Messages let go of with a visibility change while an extension of theirs was on
    /// its way: should the extension land after the change, the change is sent again,
    /// so that the last word is the release's (visible now, or after a retry's backoff).
    overridden: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Receipt {
    handle: String,
    message_id: String,
    /// When SQS makes the message visible again, at the earliest: known for sure only
    /// from a request that succeeded.
    visible_at: Instant,
    /// An extension is on its way: not sent again until it is answered.
    extending: bool,
}

/// A visibility change to send for one held message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Extension {
    pub(crate) ack_ref: u64,
    pub(crate) entry: Entry,
    /// When the message becomes visible if this extension does not land.
    pub(crate) visible_at: Instant,
}

impl Held {
    /// Holds messages (receipt, message id) received at `received_at` with
    /// `visibility`; returns their `ack_ref`s.
    pub(crate) fn hold<'a>(
        &self,
        receipts: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
        received_at: Instant,
        visibility: Duration,
    ) -> std::ops::Range<u64> {
        let mut inner = self.lock();
        let first = inner.next_ref;
        inner.next_ref += receipts.len() as u64;
        let visible_at = received_at + visibility;
        for (offset, (handle, message_id)) in receipts.enumerate() {
            let receipt = Receipt {
                handle: handle.to_owned(),
                message_id: message_id.to_owned(),
                visible_at,
                extending: false,
            };
            inner.messages.insert(first + offset as u64, receipt);
        }
        first..inner.next_ref
    }

    /// Lets go of deleted messages.
    pub(crate) fn release(&self, refs: impl IntoIterator<Item = u64>) {
        let mut inner = self.lock();
        for ack_ref in refs {
            inner.messages.remove(&ack_ref);
        }
    }

    /// Lets go of messages whose visibility is changed (`entry`): released, or to be
    /// delivered again after a backoff.
    pub(crate) fn release_changing(&self, changes: impl IntoIterator<Item = (u64, Entry)>) {
        let mut inner = self.lock();
        for (ack_ref, entry) in changes {
            if inner
                .messages
                .remove(&ack_ref)
                .is_some_and(|receipt| receipt.extending)
            {
                inner.overridden.insert(ack_ref, entry);
            }
        }
    }

    /// After an extension of `ack_ref` was answered (or given up): the change to send
    /// again if the message was let go of with one meanwhile.
    pub(crate) fn take_overridden(&self, ack_ref: u64) -> Option<Entry> {
        self.lock().overridden.remove(&ack_ref)
    }

    /// The messages that become visible within `margin` of `now` and have no extension
    /// on its way, marked as being extended: the visibility changes (to `visibility`)
    /// to send. Each is marked extended only once SQS confirms ([`Held::extended`]).
    pub(crate) fn due_for_extension(
        &self,
        now: Instant,
        margin: Duration,
        visibility: Duration,
    ) -> Vec<Extension> {
        let mut inner = self.lock();
        inner
            .messages
            .iter_mut()
            .filter(|(_, receipt)| !receipt.extending && receipt.visible_at <= now + margin)
            .map(|(&ack_ref, receipt)| {
                receipt.extending = true;
                Extension {
                    ack_ref,
                    entry: Entry::change(receipt.handle.clone(), visibility),
                    visible_at: receipt.visible_at,
                }
            })
            .collect()
    }

    /// SQS took an extension sent at `sent_at`: the message is invisible until at least
    /// `sent_at + visibility`. Nothing if it was acknowledged meanwhile.
    pub(crate) fn extended(&self, ack_ref: u64, sent_at: Instant, visibility: Duration) {
        if let Some(receipt) = self.lock().messages.get_mut(&ack_ref) {
            receipt.visible_at = receipt.visible_at.max(sent_at + visibility);
            receipt.extending = false;
        }
    }

    /// An extension failed: the message's id, if it is still held (it is then tried
    /// again in the next round); `None` if it was acknowledged meanwhile, so the failure
    /// does not matter.
    pub(crate) fn extension_failed(&self, ack_ref: u64) -> Option<String> {
        let mut inner = self.lock();
        let receipt = inner.messages.get_mut(&ack_ref)?;
        receipt.extending = false;
        Some(receipt.message_id.clone())
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
    fn only_messages_near_their_timeout_are_extended_and_only_confirmed_ones_count() {
        let held = Held::default();
        let start = Instant::now();
        let visibility = Duration::from_secs(30);
        let early = held.hold([("a", "id-a"), ("b", "id-b")].into_iter(), start, visibility);
        let late = held.hold(
            [("c", "id-c")].into_iter(),
            start + Duration::from_secs(20),
            visibility,
        );
        assert_eq!((early.clone(), late), (0..2, 2..3));

        let margin = Duration::from_secs(10);
        let now = start + Duration::from_secs(21);
        let due = held.due_for_extension(now, margin, visibility);
        let mut receipts: Vec<_> = due.iter().map(|e| e.entry.receipt.as_str()).collect();
        receipts.sort_unstable();
        assert_eq!(receipts, ["a", "b"]);
        assert!(
            held.due_for_extension(now, margin, visibility).is_empty(),
            "not sent twice while on its way"
        );

        // `a` is extended, `b`'s extension fails: `b` is due again, `a` is not.
        held.extended(0, now, visibility);
        assert_eq!(held.extension_failed(1).as_deref(), Some("id-b"));
        let again = held.due_for_extension(now, margin, visibility);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].ack_ref, 1);

        // Once acknowledged, a failure of its extension is of no account.
        held.release(early);
        assert_eq!(held.extension_failed(1), None);
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn a_change_made_while_an_extension_is_on_its_way_is_sent_again_after_it() {
        let held = Held::default();
        let start = Instant::now();
        let visibility = Duration::from_secs(30);
        held.hold([("a", "id-a"), ("b", "id-b")].into_iter(), start, visibility);
        let due = held.due_for_extension(start + visibility, Duration::ZERO, visibility);
        assert_eq!(due.len(), 2);
        // `a` is released while its extension is out; `b` after its extension came back.
        held.release_changing([(0, Entry::change("a".into(), Duration::ZERO))]);
        held.extended(1, start, visibility);
        held.release_changing([(1, Entry::change("b".into(), Duration::ZERO))]);
        assert_eq!(
            held.take_overridden(0),
            Some(Entry::change("a".into(), Duration::ZERO))
        );
        assert_eq!(held.take_overridden(0), None, "once");
        assert_eq!(held.take_overridden(1), None, "nothing was on its way");
        assert_eq!(held.len(), 0);
    }
}
