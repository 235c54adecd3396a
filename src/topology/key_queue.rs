//! The processors' input with `partition_by`: messages wait per key, and whichever
//! processor is free takes the next keys that no processor holds.
//!
//! A key is held by one processor from the moment it takes the key's messages until it
//! is done with them (their retries included), so a key's messages are handled one after
//! the other, in order; but no key is tied to a processor. A fixed placement (the key's
//! hash modulo the processors) put two busy partitions on one processor while another
//! idled, and made every key sharing a processor wait behind one slow message.
//!
//! Once a key's messages go back unfinished (at shutdown, or at the deadline), all its
//! later ones go back too: none may be finished after them.
//!
//! Bounded by the pipeline's credits: nothing is pushed that was not asked for.

use std::collections::hash_map::Entry;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::message::Message;
use crate::topology::FastMap;

/// What a processor takes from the queue.
#[derive(Debug)]
pub(crate) enum Work<T, M> {
    /// Messages to handle, of keys now held by the taker, each key's in order.
    Handle(Vec<Message<T, M>>),
    /// Messages to hand back to the source unfinished: of a key released at shutdown
    /// (none may be finished after it), or anything once the pipeline is abandoned.
    Release(Vec<Message<T, M>>),
}

pub(crate) struct KeyQueue<T, M> {
    state: Mutex<State<T, M>>,
    /// Signalled when a key becomes free with messages waiting, or the queue ends.
    ready: Notify,
    /// The most messages one [`Work::Handle`] holds (`max_demand`).
    max_chunk: usize,
}

struct State<T, M> {
    /// Keys with messages waiting or held by a processor, and idle ones (neither) kept
    /// for their next messages.
    keys: FastMap<u64, Key<T, M>>,
    /// Idle keys in `keys`: at most [`IDLE_KEYS`].
    idle: usize,
    /// Messages waiting, of every key.
    waiting: usize,
    /// Keys with messages waiting that no processor holds, in the order they became free.
    free: VecDeque<u64>,
    /// Keys whose messages go back unfinished from now on (see [`KeyQueue::release_keys`]).
    released: HashSet<u64, foldhash::fast::RandomState>,
    to_release: Vec<Message<T, M>>,
    /// Emptied queues of keys gone, reused: keys come and go with every chunk.
    spare: Vec<VecDeque<Message<T, M>>>,
    /// Everything is handed back: set at the shutdown deadline.
    abandoned: bool,
    /// Producers still pushing.
    senders: usize,
}

struct Key<T, M> {
    /// Not yet taken, in order.
    waiting: VecDeque<Message<T, M>>,
    /// A processor holds the key.
    held: bool,
}

impl<T, M> Key<T, M> {
    /// Neither held nor with a message waiting: idle if kept, free once a message comes.
    fn is_idle(&self) -> bool {
        !self.held && self.waiting.is_empty()
    }
}

/// Spare queues kept at most, and the largest capacity one may keep: enough for the keys
/// of a few chunks, never the memory of a burst.
const SPARE: usize = 256;
const SPARE_CAPACITY: usize = 64;

/// Idle keys kept at most, and the largest queue capacity an idle key may keep (the
/// memory of a few messages each, never of a burst): the same keys come back with chunk
/// after chunk, and removing each from the map and inserting it again cost more than a
/// message does.
const IDLE_KEYS: usize = 1024;
const IDLE_CAPACITY: usize = 16;

impl<T, M> State<T, M> {
    /// A key no longer held, with no message waiting: kept idle while few are and its
    /// queue is `small`, else forgotten. (Told by the caller, who has the key's entry:
    /// looked up again here, each key finished would cost a second lookup.)
    fn let_go(&mut self, key: u64, small: bool) {
        if small && self.idle < IDLE_KEYS {
            self.idle += 1;
        } else {
            self.forget(key);
        }
    }

    /// Forgets a key that is neither held nor waiting (and not counted idle), keeping its
    /// queue for another.
    fn forget(&mut self, key: u64) {
        if let Some(Key { waiting, .. }) = self.keys.remove(&key) {
            if self.spare.len() < SPARE && waiting.capacity() <= SPARE_CAPACITY {
                self.spare.push(waiting);
            }
        }
    }
}

impl<T, M> KeyQueue<T, M> {
    /// A queue and its first sender. Made together: a processor that looked before a
    /// sender existed would take the queue for ended.
    pub(crate) fn new(max_chunk: usize) -> (KeySender<T, M>, Arc<Self>) {
        let queue = Arc::new(KeyQueue {
            state: Mutex::new(State {
                keys: FastMap::default(),
                idle: 0,
                waiting: 0,
                free: VecDeque::new(),
                released: HashSet::default(),
                to_release: Vec::new(),
                spare: Vec::new(),
                abandoned: false,
                senders: 1,
            }),
            ready: Notify::new(),
            max_chunk: max_chunk.max(1),
        });
        (KeySender(queue.clone()), queue)
    }

    fn lock(&self) -> MutexGuard<'_, State<T, M>> {
        // Nothing user-written runs under this lock: a poisoned one holds a whole state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues messages, each behind its key's earlier ones (a message with no order key
    /// counts as key 0).
    pub(crate) fn push(&self, messages: Vec<Message<T, M>>) {
        let mut state = self.lock();
        let State {
            keys,
            idle,
            waiting,
            free,
            released,
            to_release,
            spare,
            abandoned,
            ..
        } = &mut *state;
        let mut wake = false;
        let mut messages = messages.into_iter();
        // The key of the run of messages being queued, and its queue (`None`: the key's
        // messages go back): a run of one key's messages (a source's partition, often)
        // is looked up once.
        let mut run: Option<(u64, Option<&mut Key<T, M>>)> = None;
        // Each message is moved out of the vector only into its key's queue: taken out
        // first, it was copied twice more on the way, and a message is a hundred bytes.
        while let Some(key) = messages
            .as_slice()
            .first()
            .map(|m| m.order_key().unwrap_or_default())
        {
            if run.as_ref().is_none_or(|(of, _)| *of != key) {
                let queue = if *abandoned || released.contains(&key) {
                    None
                } else {
                    // An idle key (counted so) or a new one: free from now on.
                    Some(match keys.entry(key) {
                        Entry::Occupied(entry) => {
                            let entry = entry.into_mut();
                            if entry.is_idle() {
                                *idle -= 1;
                                free.push_back(key);
                                wake = true;
                            }
                            entry
                        }
                        Entry::Vacant(entry) => {
                            free.push_back(key);
                            wake = true;
                            let waiting = spare.pop().unwrap_or_default();
                            entry.insert(Key { waiting, held: false })
                        }
                    })
                };
                run = Some((key, queue));
            }
            match &mut run {
                Some((_, Some(entry))) => {
                    entry.waiting.push_back(messages.next().expect("looked at"));
                    *waiting += 1;
                }
                _ => {
                    to_release.push(messages.next().expect("looked at"));
                    wake = true;
                }
            }
        }
        if wake {
            self.ready.notify_one();
        }
    }

    /// The next work: messages of free keys (of one key only with `one_key`), held by
    /// the caller until it calls [`finish`](KeyQueue::finish); `None` once every producer
    /// is gone and nothing waits. Cancel safe.
    pub(crate) async fn next(&self, one_key: bool) -> Option<Work<T, M>> {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(work) = self.take_ready(&mut state, one_key) {
                    return Some(work);
                }
                if state.senders == 0 && state.waiting == 0 {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// [`next`](KeyQueue::next)'s work if some is ready now, without waiting: `None`
    /// says nothing of the end.
    pub(crate) fn try_next(&self, one_key: bool) -> Option<Work<T, M>> {
        self.take_ready(&mut self.lock(), one_key)
    }

    /// Takes work, and wakes the other processors that may go on from what it leaves.
    fn take_ready(&self, state: &mut State<T, M>, one_key: bool) -> Option<Work<T, M>> {
        let work = self.take(state, one_key)?;
        if state.senders == 0 && state.waiting == 0 {
            // The last of it: every other processor waiting must see the end.
            self.ready.notify_waiters();
        } else if !state.free.is_empty() || !state.to_release.is_empty() {
            // Another processor may take what is left.
            self.ready.notify_one();
        }
        Some(work)
    }

    fn take(&self, state: &mut State<T, M>, one_key: bool) -> Option<Work<T, M>> {
        if !state.to_release.is_empty() {
            return Some(Work::Release(std::mem::take(&mut state.to_release)));
        }
        // Once abandoned, every message goes to `to_release`: no key has any waiting.
        debug_assert!(!state.abandoned || state.free.is_empty());
        if state.free.is_empty() {
            // Every key with messages waiting is held: nothing to take.
            return None;
        }
        let mut chunk = Vec::with_capacity(self.max_chunk.min(state.waiting));
        while chunk.len() < self.max_chunk {
            let Some(&key) = state.free.front() else {
                break;
            };
            let entry = state.keys.get_mut(&key).expect("a free key has messages waiting");
            let n = entry.waiting.len().min(self.max_chunk - chunk.len());
            match n {
                // One message (many keys, a message each) without a drain's setup.
                1 => chunk.extend(entry.waiting.pop_front()),
                // All of them in bulk, the key keeping its queue's room: a vector made
                // of a deque (moving them to its front, unless they are there already),
                // and a deque of a vector, reuse its allocation.
                n if n == entry.waiting.len() => {
                    let mut all = Vec::from(std::mem::take(&mut entry.waiting));
                    chunk.append(&mut all);
                    entry.waiting = VecDeque::from(all);
                }
                _ => chunk.extend(entry.waiting.drain(..n)),
            }
            entry.held = true;
            state.waiting -= n;
            state.free.pop_front();
            if one_key {
                break;
            }
        }
        (!chunk.is_empty()).then_some(Work::Handle(chunk))
    }

    /// The caller is done with `keys`: their messages waiting go to the next free
    /// processor.
    pub(crate) fn finish(&self, keys: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        let mut wake = false;
        for key in keys {
            let Some(entry) = state.keys.get_mut(&key).filter(|entry| entry.held) else {
                continue;
            };
            entry.held = false;
            if entry.waiting.is_empty() {
                let small = entry.waiting.capacity() <= IDLE_CAPACITY;
                state.let_go(key, small);
            } else {
                debug_assert!(!state.abandoned, "a key has messages waiting once abandoned");
                state.free.push_back(key);
                wake = true;
            }
        }
        if wake {
            self.ready.notify_one();
        }
    }

    /// At shutdown, `keys` had a message handed back unfinished: their later messages,
    /// waiting or still to come, go back unfinished too, so that none is finished ahead
    /// of it. The keys stay held.
    pub(crate) fn release_keys(&self, keys: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        let state = &mut *state;
        for key in keys {
            state.released.insert(key);
            if let Some(entry) = state.keys.get_mut(&key) {
                if entry.is_idle() {
                    state.idle -= 1;
                }
                state.waiting -= entry.waiting.len();
                state.to_release.extend(entry.waiting.drain(..));
                if !entry.held {
                    state.forget(key);
                }
            }
        }
        state.free.retain(|key| !state.released.contains(key));
        if !state.to_release.is_empty() {
            self.ready.notify_one();
        }
    }

    /// At the shutdown deadline: everything waiting, or still to come, goes back
    /// unfinished, whichever key holds it. What waits goes back now, ahead of what comes
    /// later: left in its key's queue until taken, a key's later messages went back
    /// before its earlier ones.
    pub(crate) fn abandon(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.abandoned = true;
        // Only the held keys stay, for their holders to finish.
        let to_release = &mut state.to_release;
        state.keys.retain(|_, key| {
            to_release.extend(key.waiting.drain(..));
            key.held
        });
        state.idle = 0;
        state.waiting = 0;
        state.free.clear();
        drop(guard);
        self.ready.notify_waiters();
        self.ready.notify_one();
    }
}

/// A producer's handle on a [`KeyQueue`]: the queue ends once every sender is dropped
/// and nothing waits in it.
pub(crate) struct KeySender<T, M>(Arc<KeyQueue<T, M>>);

impl<T, M> KeySender<T, M> {
    pub(crate) fn push(&self, messages: Vec<Message<T, M>>) {
        self.0.push(messages);
    }
}

impl<T, M> Clone for KeySender<T, M> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        KeySender(self.0.clone())
    }
}

impl<T, M> Drop for KeySender<T, M> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            // Every waiting processor must see the end, not one.
            self.0.ready.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::task::Poll;

    use futures_util::FutureExt;
    use proptest::prelude::*;

    use super::*;

    fn keyed(key: u64, n: u64) -> Message<(u64, u64)> {
        let mut message = Message::new((key, n));
        message.set_order_key(key);
        message
    }

    fn handle(work: Option<Work<(u64, u64), ()>>) -> Vec<(u64, u64)> {
        match work {
            Some(Work::Handle(chunk)) => chunk.into_iter().map(Message::into_data).collect(),
            other => panic!("expected messages to handle, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_held_key_waits_and_the_others_go_to_any_processor() {
        let (sender, queue) = KeyQueue::new(10);
        sender.push(vec![keyed(1, 0), keyed(2, 0), keyed(1, 1)]);
        // One processor takes key 1 (both of its messages), another key 2.
        assert_eq!(handle(queue.next(true).await), vec![(1, 0), (1, 1)]);
        sender.push(vec![keyed(1, 2), keyed(3, 0)]);
        // Key 1 is held: its later message waits; key 2 and 3 are free.
        assert_eq!(handle(queue.next(false).await), vec![(2, 0), (3, 0)]);
        let next = queue.next(false);
        tokio::pin!(next);
        assert!(futures_util::poll!(next.as_mut()).is_pending());
        queue.finish([1]);
        assert_eq!(handle(next.await), vec![(1, 2)]);
        drop(sender);
        queue.finish([1, 2, 3]);
        assert!(queue.next(false).await.is_none());
    }

    #[tokio::test]
    async fn every_waiting_processor_sees_the_end_once_the_last_messages_are_taken() {
        let (sender, queue) = KeyQueue::new(10);
        sender.push(vec![keyed(1, 0)]);
        assert_eq!(handle(queue.next(false).await), vec![(1, 0)]);
        sender.push(vec![keyed(1, 1)]);
        // Three other processors wait: key 1 is held. The producers go, with it waiting.
        let mut waiting: Vec<_> = (0..3).map(|_| Box::pin(queue.next(false))).collect();
        for next in &mut waiting {
            assert!(futures_util::poll!(next.as_mut()).is_pending());
        }
        drop(sender);
        for next in &mut waiting {
            assert!(futures_util::poll!(next.as_mut()).is_pending());
        }
        // The holder is done with key 1 (which wakes one of them) and takes its last
        // message again: none of the others may wait for ever.
        queue.finish([1]);
        assert_eq!(handle(queue.next(false).await), vec![(1, 1)]);
        for next in &mut waiting {
            assert!(matches!(futures_util::poll!(next.as_mut()), Poll::Ready(None)));
        }
    }

    #[tokio::test]
    async fn a_released_keys_later_messages_go_back_unfinished() {
        let (sender, queue) = KeyQueue::new(10);
        sender.push(vec![keyed(1, 0), keyed(2, 0)]);
        assert_eq!(handle(queue.next(true).await), vec![(1, 0)]);
        sender.push(vec![keyed(1, 1)]);
        queue.release_keys([1]);
        sender.push(vec![keyed(1, 2)]);
        let Some(Work::Release(released)) = queue.next(false).await else {
            panic!("expected released messages");
        };
        let released: Vec<_> = released.into_iter().map(Message::into_data).collect();
        assert_eq!(released, vec![(1, 1), (1, 2)]);
        assert_eq!(handle(queue.next(false).await), vec![(2, 0)]);
    }

    #[tokio::test]
    async fn idle_keys_are_kept_up_to_a_bound_and_released_ones_forgotten() {
        let (sender, queue) = KeyQueue::new(1);
        let keys = IDLE_KEYS as u64 + 100;
        sender.push((0..keys).map(|key| keyed(key, 0)).collect());
        for _ in 0..keys {
            let chunk = handle(queue.next(true).await);
            queue.finish([chunk[0].0]);
        }
        {
            let state = queue.lock();
            assert_eq!(state.idle, IDLE_KEYS);
            assert_eq!(state.keys.len(), IDLE_KEYS, "keys beyond the bound are forgotten");
        }
        // An idle key's next message is handed out as any other.
        sender.push(vec![keyed(0, 1)]);
        assert_eq!(handle(queue.next(true).await), vec![(0, 1)]);
        queue.finish([0]);
        // Releasing an idle key forgets it, and its later messages go back.
        queue.release_keys([0]);
        {
            let state = queue.lock();
            assert_eq!(state.idle, IDLE_KEYS - 1);
            assert!(!state.keys.contains_key(&0), "a released idle key is forgotten");
        }
        sender.push(vec![keyed(0, 2)]);
        match queue.next(true).await {
            Some(Work::Release(messages)) => assert_eq!(messages.len(), 1),
            other => panic!("expected the released key's message back, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_key_whose_queue_grew_is_not_kept_idle_and_none_is_after_the_deadline() {
        let (sender, queue) = KeyQueue::new(1000);
        sender.push((0..100).map(|n| keyed(7, n)).collect());
        assert_eq!(handle(queue.next(true).await).len(), 100);
        queue.finish([7]);
        {
            let state = queue.lock();
            assert_eq!((state.idle, state.keys.len()), (0, 0), "a grown queue is let go");
        }
        // An idle key, a free one and a held one; then the deadline.
        sender.push(vec![keyed(1, 0), keyed(2, 0)]);
        assert_eq!(handle(queue.next(true).await), vec![(1, 0)]);
        queue.finish([1]);
        sender.push(vec![keyed(3, 0)]);
        let held = handle(queue.next(true).await)[0].0;
        queue.abandon();
        match queue.next(false).await {
            Some(Work::Release(messages)) => assert_eq!(messages.len(), 1),
            other => panic!("expected the waiting message back, got {other:?}"),
        }
        {
            let state = queue.lock();
            assert_eq!(state.idle, 0);
            assert_eq!(
                state.keys.keys().copied().collect::<Vec<_>>(),
                vec![held],
                "only the held key stays"
            );
        }
        // Releasing keys after the deadline keeps the count whole.
        queue.release_keys([1, 2, 3]);
        assert_eq!(queue.lock().idle, 0);
    }

    #[tokio::test]
    async fn once_abandoned_everything_goes_back_whichever_key_holds_it() {
        let (sender, queue) = KeyQueue::new(10);
        sender.push(vec![keyed(1, 0), keyed(1, 1)]);
        assert_eq!(handle(queue.next(true).await).len(), 2);
        sender.push(vec![keyed(1, 2)]);
        queue.abandon();
        assert!(matches!(queue.next(false).await, Some(Work::Release(m)) if m.len() == 1));
        drop(sender);
        assert!(queue.next(false).await.is_none());
    }

    #[tokio::test]
    async fn a_released_keys_run_goes_back_and_the_live_keys_run_beside_it_is_queued() {
        let (sender, queue) = KeyQueue::new(10);
        queue.release_keys([1]);
        sender.push(
            [(1, 0), (1, 1), (2, 0), (2, 1), (1, 2), (2, 2)]
                .map(|(k, n)| keyed(k, n))
                .into(),
        );
        let Some(Work::Release(released)) = queue.next(false).await else {
            panic!("expected released messages");
        };
        let released: Vec<_> = released.into_iter().map(Message::into_data).collect();
        assert_eq!(released, vec![(1, 0), (1, 1), (1, 2)]);
        assert_eq!(handle(queue.next(false).await), vec![(2, 0), (2, 1), (2, 2)]);
        let state = queue.lock();
        assert_eq!((state.waiting, state.free.len()), (0, 0));
    }

    #[tokio::test]
    async fn once_abandoned_a_keys_later_messages_go_back_behind_its_waiting_ones() {
        let (sender, queue) = KeyQueue::new(10);
        sender.push(vec![keyed(1, 0), keyed(2, 0), keyed(1, 1)]);
        queue.abandon();
        sender.push(vec![keyed(1, 2), keyed(2, 1)]);
        let mut back = Vec::new();
        while let Some(work) = queue.try_next(false) {
            let Work::Release(messages) = work else {
                panic!("nothing is handled after the deadline");
            };
            back.extend(messages.into_iter().map(Message::into_data));
        }
        let of = |key| {
            back.iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
        };
        assert_eq!((of(1), of(2)), (vec![0, 1, 2], vec![0, 1]));
    }

    #[tokio::test]
    async fn once_abandoned_every_run_pushed_goes_back_in_order() {
        let (sender, queue) = KeyQueue::new(10);
        queue.abandon();
        sender.push(
            [(1, 0), (1, 1), (2, 0), (2, 1), (1, 2)]
                .map(|(k, n)| keyed(k, n))
                .into(),
        );
        let Some(Work::Release(released)) = queue.next(false).await else {
            panic!("expected released messages");
        };
        let released: Vec<_> = released.into_iter().map(Message::into_data).collect();
        assert_eq!(released, vec![(1, 0), (1, 1), (2, 0), (2, 1), (1, 2)]);
        let state = queue.lock();
        assert_eq!((state.waiting, state.free.len(), state.keys.len()), (0, 0, 0));
    }

    /// A waker that notes it was woken.
    struct Woken(AtomicBool);

    impl futures_util::task::ArcWake for Woken {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Relaxed);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A producer pushes one message of each of these keys (in runs of one key, as
        /// a source's partitions come).
        Push(Vec<u64>),
        /// An idle processor asks for work (of one key only, or not).
        Take(usize, bool),
        /// An idle processor takes work if some is ready, without waiting.
        TryTake(usize, bool),
        /// A processor is done with the keys it holds.
        Finish(usize),
        /// Shutdown hands a message of these keys back: their later ones go back too.
        Release(Vec<u64>),
    }

    /// Processors in the proptest below; one more, [`DRAINER`], takes what is left at the
    /// end.
    const PROCESSORS: usize = 3;
    const DRAINER: usize = PROCESSORS;

    fn op() -> impl Strategy<Value = Op> {
        let runs = proptest::collection::vec((0..6u64, 1..4usize), 1..5);
        prop_oneof![
            8 => runs.prop_map(|runs| Op::Push(
                runs.into_iter().flat_map(|(key, n)| std::iter::repeat_n(key, n)).collect()
            )),
            5 => (0..PROCESSORS, any::<bool>()).prop_map(|(p, one)| Op::Take(p, one)),
            5 => (0..PROCESSORS, any::<bool>()).prop_map(|(p, one)| Op::TryTake(p, one)),
            5 => (0..PROCESSORS).prop_map(Op::Finish),
            1 => proptest::collection::vec(0..8u64, 1..3).prop_map(Op::Release),
        ]
    }

    type Next<'a> = Pin<Box<dyn Future<Output = Option<Work<(u64, u64), ()>>> + 'a>>;

    /// A processor waiting for work.
    struct Wait<'a> {
        next: Next<'a>,
        woken: Arc<Woken>,
        one_key: bool,
    }

    /// What the proptest below saw come out, per key: how many messages, and whether
    /// its later ones must go back.
    struct Out {
        /// Messages out, handled or handed back, of each key.
        out: BTreeMap<u64, u64>,
        /// Keys held, per processor.
        holding: Vec<Vec<u64>>,
        released: HashSet<u64>,
        abandoned: bool,
    }

    impl Out {
        fn new() -> Self {
            Out {
                out: BTreeMap::new(),
                holding: vec![Vec::new(); PROCESSORS + 1],
                released: HashSet::new(),
                abandoned: false,
            }
        }

        /// Checks work taken by processor `holder`, and notes it.
        fn take(&mut self, work: Work<(u64, u64), ()>, holder: usize, max_chunk: usize, one_key: bool) {
            match work {
                Work::Handle(chunk) => {
                    assert!(!self.abandoned, "messages handled after the deadline");
                    assert!(chunk.len() <= max_chunk);
                    let first = chunk[0].data().0;
                    assert!(!one_key || chunk.iter().all(|m| m.data().0 == first));
                    for (key, n) in chunk.into_iter().map(Message::into_data) {
                        assert!(!self.released.contains(&key), "key {key} handled once released");
                        self.next(key, n);
                        assert!(
                            self.holding
                                .iter()
                                .enumerate()
                                .all(|(p, keys)| p == holder || !keys.contains(&key)),
                            "key {key} held twice"
                        );
                        if !self.holding[holder].contains(&key) {
                            self.holding[holder].push(key);
                        }
                    }
                }
                Work::Release(messages) => {
                    for (key, n) in messages.into_iter().map(Message::into_data) {
                        assert!(
                            self.abandoned || self.released.contains(&key),
                            "key {key} handed back unreleased"
                        );
                        self.next(key, n);
                    }
                }
            }
        }

        /// Message `n` of `key` is out: the next of its key.
        fn next(&mut self, key: u64, n: u64) {
            let next = self.out.entry(key).or_default();
            assert_eq!(n, *next, "key {key} out of order");
            *next += 1;
        }

        /// Each woken processor polls its wait again, until none is woken. A wait may
        /// see the end only once the producer is gone (`ended`).
        fn poll_woken(&mut self, waiting: &mut [Option<Wait<'_>>], max_chunk: usize, ended: bool) {
            loop {
                let mut polled = false;
                for (p, slot) in waiting.iter_mut().enumerate() {
                    let Some(Wait { next, woken, one_key }) = slot.as_mut() else {
                        continue;
                    };
                    if !woken.0.swap(false, Relaxed) {
                        continue;
                    }
                    polled = true;
                    let waker = futures_util::task::waker(woken.clone());
                    match next.as_mut().poll(&mut std::task::Context::from_waker(&waker)) {
                        Poll::Ready(Some(work)) => {
                            let one_key = *one_key;
                            *slot = None;
                            self.take(work, p, max_chunk, one_key);
                        }
                        Poll::Ready(None) => {
                            assert!(ended, "the queue ended with its producer there");
                            *slot = None;
                        }
                        Poll::Pending => {}
                    }
                }
                if !polled {
                    break;
                }
            }
        }

        /// Whether work waits while a processor sleeps: a free key's messages, or
        /// messages to hand back.
        fn work_waits(&self, pushed: &BTreeMap<u64, u64>, waiting: &[Option<Wait<'_>>]) -> bool {
            let ready = pushed.iter().any(|(key, n)| {
                self.out.get(key).copied().unwrap_or(0) < *n
                    && (self.abandoned
                        || self.released.contains(key)
                        || self.holding.iter().all(|keys| !keys.contains(key)))
            });
            ready && waiting.iter().any(Option::is_some)
        }
    }

    proptest! {
        /// Random pushes (in runs of a key), takes and finishes by three processors,
        /// keys released and, at some step or never, the deadline: a key is held by one
        /// processor at a time; its messages come out in the order pushed, each once,
        /// handled until it is released (or the deadline comes) and handed back after;
        /// no processor waiting for work stays asleep while a key with messages waiting
        /// is free, or messages wait to go back (each wait is polled only when woken);
        /// and once the producer is gone (at the deadline or not), everything is out and
        /// the queue ends.
        #[test]
        fn keys_are_held_by_one_processor_at_a_time_and_keep_their_order(
            max_chunk in 1..6usize,
            ops in proptest::collection::vec(op(), 1..200),
            abandon_at in proptest::option::of(0..200usize),
            abandon_at_end in any::<bool>(),
        ) {
            let (sender, queue) = KeyQueue::new(max_chunk);
            let mut pushed: BTreeMap<u64, u64> = BTreeMap::new();
            let mut seen = Out::new();
            let mut waiting: Vec<Option<Wait<'_>>> = (0..PROCESSORS).map(|_| None).collect();
            for (step, op) in ops.into_iter().enumerate() {
                // Every processor abandons its input at the deadline: twice here.
                if abandon_at.is_some_and(|at| step == at || step == at + 5) {
                    queue.abandon();
                    seen.abandoned = true;
                }
                match op {
                    Op::Push(keys) => sender.push(keys.into_iter().map(|key| {
                        let n = pushed.entry(key).or_default();
                        *n += 1;
                        keyed(key, *n - 1)
                    }).collect()),
                    Op::Take(p, one_key) if seen.holding[p].is_empty() && waiting[p].is_none() => {
                        let woken = Arc::new(Woken(AtomicBool::new(true)));
                        waiting[p] = Some(Wait { next: Box::pin(queue.next(one_key)), woken, one_key });
                    }
                    Op::TryTake(p, one_key) if seen.holding[p].is_empty() && waiting[p].is_none() => {
                        if let Some(work) = queue.try_next(one_key) {
                            seen.take(work, p, max_chunk, one_key);
                        }
                    }
                    Op::Finish(p) => queue.finish(std::mem::take(&mut seen.holding[p])),
                    Op::Release(keys) => {
                        seen.released.extend(keys.iter().copied());
                        queue.release_keys(keys);
                    }
                    Op::Take(..) | Op::TryTake(..) => {}
                }
                seen.poll_woken(&mut waiting, max_chunk, false);
                prop_assert!(!seen.work_waits(&pushed, &waiting), "work waits, every processor asleep");
                let state = queue.lock();
                let idle = state.keys.values().filter(|k| k.is_idle()).count();
                prop_assert_eq!(state.idle, idle, "idle keys miscounted");
            }
            // The producer goes, the processors still waiting see it (and the deadline,
            // if it comes now).
            drop(sender);
            if abandon_at_end {
                queue.abandon();
                seen.abandoned = true;
            }
            seen.poll_woken(&mut waiting, max_chunk, true);
            prop_assert!(!seen.work_waits(&pushed, &waiting), "work waits, every processor asleep");
            // The holders finish; the processors still waiting take what is left, and
            // another (drawing with `next` directly) takes the rest.
            for keys in &mut seen.holding {
                queue.finish(std::mem::take(keys));
            }
            seen.poll_woken(&mut waiting, max_chunk, true);
            loop {
                match queue.next(false).now_or_never() {
                    Some(Some(work)) => {
                        seen.take(work, DRAINER, max_chunk, false);
                        queue.finish(std::mem::take(&mut seen.holding[DRAINER]));
                    }
                    Some(None) => break,
                    None => {
                        // What is left waits behind keys that processors took waiting.
                        assert!(seen.holding.iter().any(|keys| !keys.is_empty()), "the queue neither ends nor has work");
                        for keys in &mut seen.holding {
                            queue.finish(std::mem::take(keys));
                        }
                    }
                }
                seen.poll_woken(&mut waiting, max_chunk, true);
            }
            // Every processor waiting saw the end.
            seen.poll_woken(&mut waiting, max_chunk, true);
            prop_assert!(waiting.iter().all(Option::is_none), "a processor waits for ever at the end");
            prop_assert_eq!(seen.out, pushed);
        }
    }
}
