//! The handler calls a stage's tasks are in, for the stall watch: a call that never
//! returns shows even while the stage's other tasks finish theirs (with 8 processors, one
//! hung call leaves 7 busy, and the stage's count of finished messages moving).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// One task's calls: odd while it is in one; each call moves it twice.
#[derive(Debug, Default)]
pub(crate) struct CallSlot(AtomicU64);

impl CallSlot {
    /// Marks a handler call under way until the guard is dropped (also when the call is
    /// cut short).
    #[inline]
    pub(crate) fn enter(&self) -> InCall<'_> {
        self.step();
        InCall(self)
    }

    /// One step on. Only its own task moves a slot, so a load and a store do: a locked
    /// add would cost as much as a quick handler call, twice a message.
    #[inline]
    fn step(&self) {
        self.0.store(self.0.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

/// A call under way (see [`CallSlot::enter`]).
pub(crate) struct InCall<'a>(&'a CallSlot);

impl Drop for InCall<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.step();
    }
}

/// A stage's tasks' slots.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    slots: Mutex<Vec<(u64, Weak<CallSlot>)>>,
    next: AtomicU64,
}

/// What the watch saw of each slot at its last look: the slot's value, and for how long
/// it has not moved while in a call.
#[derive(Debug, Default)]
pub(crate) struct CallsSeen(HashMap<u64, (u64, Duration)>);

impl Calls {
    /// A slot for a new task of the stage; forgotten once the task drops it.
    pub(crate) fn slot(&self) -> Arc<CallSlot> {
        let slot = Arc::new(CallSlot::default());
        let id = self.next.fetch_add(1, Relaxed);
        self.lock().push((id, Arc::downgrade(&slot)));
        slot
    }

    /// The longest a call in progress has run, looking every `every`: a call is the same
    /// as at the last look when its slot has not moved and is odd.
    pub(crate) fn longest(&self, seen: &mut CallsSeen, every: Duration) -> Duration {
        let mut slots = self.lock();
        slots.retain(|(_, slot)| slot.strong_count() > 0);
        let mut now = HashMap::with_capacity(slots.len());
        let mut longest = Duration::ZERO;
        for (id, slot) in slots.iter() {
            let Some(slot) = slot.upgrade() else { continue };
            let value = slot.0.load(Relaxed);
            let ran = match seen.0.get(id) {
                Some(&(was, ran)) if was == value && value % 2 == 1 => ran + every,
                _ => Duration::ZERO,
            };
            longest = longest.max(ran);
            now.insert(*id, (value, ran));
        }
        seen.0 = now;
        longest
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Weak<CallSlot>)>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_does_not_return_is_seen_and_one_that_moves_on_is_not() {
        let calls = Calls::default();
        let (hung, busy) = (calls.slot(), calls.slot());
        let mut seen = CallsSeen::default();
        let every = Duration::from_secs(1);
        let _stuck = hung.enter();
        assert_eq!(calls.longest(&mut seen, every), Duration::ZERO, "first look");
        for look in 1..=3 {
            // The other task finishes a call and starts the next between looks.
            drop(busy.enter());
            let _next = busy.enter();
            assert_eq!(calls.longest(&mut seen, every), every * look);
        }
        drop(_stuck);
        assert_eq!(calls.longest(&mut seen, every), Duration::ZERO, "it returned");
        drop(hung);
        calls.longest(&mut seen, every);
        assert_eq!(calls.lock().len(), 1, "a task gone is forgotten");
    }
}
