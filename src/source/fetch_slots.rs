//! One slot per fetch under way at once: a source whose `receive` is called by several
//! producers at once (`source_concurrency`) has as many fetches in flight, each with what
//! it keeps of its own (a [`KeptFetch`](crate::source::KeptFetch), a connection).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::source::KeptFetch;

/// The slots of a source's fetches under way, each held by one `receive` at a time.
///
/// A `receive` takes a free slot, or makes a new one when every slot is held: there are
/// never more slots than `receive` calls ever under way at once, the pipeline's
/// `source_concurrency`. At shutdown, [`FetchSlots::each`] gives every slot, to drain.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use longshore::source::{FetchSlots, KeptFetch};
///
/// let slots: FetchSlots<KeptFetch<u32>> = FetchSlots::default();
/// let first = slots.take_or_default();
/// // Held by a receive: the next one gets a slot of its own.
/// let second = slots.take_or_default();
/// drop((first, second));
/// assert_eq!(slots.each().await.len(), 2);
/// # }
/// ```
#[derive(Debug)]
pub struct FetchSlots<S> {
    slots: Mutex<Vec<Arc<tokio::sync::Mutex<S>>>>,
}

impl<S> Default for FetchSlots<S> {
    fn default() -> Self {
        FetchSlots {
            slots: Mutex::default(),
        }
    }
}

impl<S: Send + 'static> FetchSlots<S> {
    /// Slots starting with `first` (a connection made up front).
    pub fn new(first: S) -> Self {
        FetchSlots {
            slots: Mutex::new(vec![Arc::new(tokio::sync::Mutex::new(first))]),
        }
    }

    /// A slot no `receive` holds (the first free one); else a new one, `make`'s.
    ///
    /// # Errors
    ///
    /// `make`'s error: no slot is added.
    pub async fn take<E, F>(&self, make: impl FnOnce() -> F) -> Result<OwnedMutexGuard<S>, E>
    where
        F: Future<Output = Result<S, E>>,
    {
        if let Some(free) = self.free() {
            return Ok(free);
        }
        Ok(self.add(make().await?))
    }

    /// A slot no `receive` holds; else a new one, `make`'s (made at once, connecting
    /// later).
    pub fn take_or_else(&self, make: impl FnOnce() -> S) -> OwnedMutexGuard<S> {
        self.free().unwrap_or_else(|| self.add(make()))
    }

    /// A slot no `receive` holds; else a new default one.
    pub fn take_or_default(&self) -> OwnedMutexGuard<S>
    where
        S: Default,
    {
        self.take_or_else(S::default)
    }

    /// Every slot, each once the `receive` holding it lets go: to drain at shutdown,
    /// after the pipeline's producers have stopped (a `receive` still under way, waiting
    /// on an idle broker, would hold its slot, and this would wait for it).
    pub async fn each(&self) -> Vec<OwnedMutexGuard<S>> {
        let slots = lock(&self.slots).clone();
        let mut each = Vec::with_capacity(slots.len());
        for slot in slots {
            each.push(slot.lock_owned().await);
        }
        each
    }

    fn free(&self) -> Option<OwnedMutexGuard<S>> {
        lock(&self.slots)
            .iter()
            .find_map(|slot| slot.clone().try_lock_owned().ok())
    }

    fn add(&self, slot: S) -> OwnedMutexGuard<S> {
        let slot = Arc::new(tokio::sync::Mutex::new(slot));
        let held = slot
            .clone()
            .try_lock_owned()
            .expect("a slot nobody else has seen");
        lock(&self.slots).push(slot);
        held
    }
}

impl<T: Send + 'static> FetchSlots<KeptFetch<T>> {
    /// Everything every slot fetched and did not hand out, fetches under way awaited: to
    /// release at shutdown.
    pub async fn drain(&self) -> Vec<T> {
        let mut left = Vec::new();
        for mut fetch in self.each().await {
            left.extend(fetch.drain().await);
        }
        left
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
