//! A processor: runs `prepare_messages` and `handle_message` on each chunk, keeps failed
//! messages for their retries (and, with `partition_by`, their key's later messages
//! behind them), then hands each message to its batcher or, with no batcher,
//! acknowledges it.

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::decode::{Decode, Identity};
use crate::error::BoxError;
use crate::handler::Handler;
use crate::message::{Failure, FailureKind, Message};
use crate::metrics::{HandlingTimes, Held, StageMetrics, TIME_EACH_AFTER};
use crate::source::{Acknowledger, Redelivery};
use crate::topology::acknowledge::split_failed;
use crate::topology::guard::{guarded, panic_message};
use crate::topology::key_queue::{KeyQueue, Work};
use crate::topology::pool::Retire;
use crate::topology::{until_cancelled, Context};
use crate::trace::{within, Within};

/// Where a processor sends the messages routed to one batcher.
pub(crate) struct BatcherRoute<T, M> {
    pub(crate) name: Arc<str>,
    pub(crate) tx: mpsc::Sender<Vec<Message<T, M>>>,
}

impl<T, M> Clone for BatcherRoute<T, M> {
    fn clone(&self) -> Self {
        BatcherRoute {
            name: self.name.clone(),
            tx: self.tx.clone(),
        }
    }
}

/// Where a processor takes its messages from.
pub(crate) enum Input<T, M> {
    /// One queue all processors take chunks from.
    Shared(async_channel::Receiver<Vec<Message<T, M>>>),
    /// With `partition_by`: the messages of keys no other processor holds.
    Keyed(Arc<KeyQueue<T, M>>),
}

impl<T, M> Clone for Input<T, M> {
    fn clone(&self) -> Self {
        match self {
            Input::Shared(queue) => Input::Shared(queue.clone()),
            Input::Keyed(queue) => Input::Keyed(queue.clone()),
        }
    }
}

impl<T, M> Input<T, M> {
    /// The next work; `None` once the producers are gone and nothing is left.
    async fn next(&self, one_key: bool) -> Option<Work<T, M>> {
        match self {
            Input::Shared(queue) => queue.recv().await.ok().map(Work::Handle),
            Input::Keyed(queue) => queue.next(one_key).await,
        }
    }

    /// The next work if some is ready now, without waiting: `None` says nothing of the end.
    fn try_next(&self, one_key: bool) -> Option<Work<T, M>> {
        match self {
            Input::Shared(queue) => queue.try_recv().ok().map(Work::Handle),
            Input::Keyed(queue) => queue.try_next(one_key),
        }
    }

    /// This processor is done with `keys`: other processors may take their messages.
    fn finish(&self, keys: impl IntoIterator<Item = u64>) {
        if let Input::Keyed(queue) = self {
            queue.finish(keys);
        }
    }

    /// At shutdown, `keys` had a message released: their later messages go back too.
    fn release_keys(&self, keys: Vec<u64>) {
        if let Input::Keyed(queue) = self {
            queue.release_keys(keys);
        }
    }

    /// At the deadline: everything still to come goes back unfinished.
    fn abandon(&self) {
        if let Input::Keyed(queue) = self {
            queue.abandon();
        }
    }
}

pub(crate) struct Processor<H: Handler, A, D, C> {
    pub(crate) ctx: Arc<Context<H, A>>,
    /// Messages as received: their data is decoded here, before they are handled.
    pub(crate) input: Input<D, H::Metadata>,
    pub(crate) codec: Arc<C>,
    pub(crate) batchers: Vec<BatcherRoute<H::Item, H::Metadata>>,
    /// Cancelled at shutdown: what waits for a retry is released, not waited for.
    pub(crate) stop: CancellationToken,
    /// The pipeline's `abandon`, as a child of its own: watched on every pass, it would
    /// otherwise be one lock all stages contend for.
    pub(crate) abandon: CancellationToken,
    pub(crate) metrics: StageMetrics,
    /// Whether handler calls are slow enough to be timed one by one (see [`HandlingTimes`]).
    pub(crate) time_each: AtomicBool,
    /// Whether handler calls are slow (a pass took [`SETTLE_EACH_AFTER`] or more): then
    /// each chunk taken holds one key only, so that a slow message holds back no other
    /// key. Starts `true`: until handlers are known to be quick.
    pub(crate) slow: AtomicBool,
    /// Whether passes are slow enough to settle each message as it is done (see
    /// [`SETTLE_EACH_AFTER`]). Starts `true` with a source that gains from it: until
    /// handlers are known to be quick.
    pub(crate) settle_each: AtomicBool,
    /// The chunk it asks for: `max_demand`.
    pub(crate) max_demand: usize,
    /// Its notice to retire (the pool shrinks): it takes no more input, finishes its
    /// retries (the keys they hold), and ends.
    pub(crate) retire: Arc<Retire>,
    /// Its handler calls, as the stall watch sees them.
    pub(crate) call: Arc<crate::metrics::calls::CallSlot>,
}

/// Takes everything out of `queue`, soonest first, without waiting.
pub(crate) fn drain_delayed<X>(queue: &mut DelayQueue<X>) -> Vec<X> {
    std::iter::from_fn(|| queue.peek().map(|key| queue.remove(&key).into_inner())).collect()
}

/// Messages a processor keeps for another attempt.
struct Retries<T, M> {
    /// Failed messages, each until its backoff has passed.
    due: DelayQueue<Message<T, M>>,
    /// Per partition key with a message in `due`: the later messages of that key taken
    /// with it, in order. (Its messages not yet taken wait in the [`KeyQueue`], the key
    /// held by this processor.)
    held: HashMap<u64, VecDeque<Message<T, M>>>,
    /// The stage's count of messages in `due` and `held`: waiting out a backoff.
    waiting: Held,
}

impl<T, M> Retries<T, M> {
    fn is_empty(&self) -> bool {
        self.due.is_empty() && self.held.is_empty()
    }

    /// Everything waiting, in each key's order, to be released, and the keys it holds.
    fn take_all(&mut self) -> (Vec<Message<T, M>>, Vec<u64>) {
        let mut all = drain_delayed(&mut self.due);
        let mut keys = Vec::with_capacity(self.held.len());
        for (key, queue) in self.held.drain() {
            keys.push(key);
            all.extend(queue);
        }
        self.waiting.release(all.len());
        (all, keys)
    }

    /// Of `keys`, those with no message waiting for a retry here: done with. (A key given
    /// twice would do no harm: the queue finishes only keys held.)
    fn done_with(&self, keys: Vec<u64>) -> impl Iterator<Item = u64> + '_ {
        keys.into_iter().filter(|key| !self.held.contains_key(key))
    }
}

/// The order keys of `messages`, one for each run of a key (none without
/// `partition_by`): the key queue hands out each key's messages together, so a chunk's
/// keys come once each.
fn keys_of<T, M>(messages: &[Message<T, M>]) -> Vec<u64> {
    if messages.first().and_then(Message::order_key).is_none() {
        return Vec::new();
    }
    let mut keys = Vec::with_capacity(messages.len());
    for key in messages.iter().filter_map(Message::order_key) {
        if keys.last() != Some(&key) {
            keys.push(key);
        }
    }
    keys
}

/// With a source that gains from it ([`Acknowledger::acknowledges_each`]), a pass whose
/// handler calls take this long or longer acknowledges (or routes) each message as soon
/// as it is done, not with its chunk: a slow handler's finished messages are never held
/// back behind the rest of their chunk (a Kafka commit, an SQS delete, a kill that would
/// redeliver them). Quicker passes keep one acknowledgement call per chunk.
const SETTLE_EACH_AFTER: Duration = Duration::from_millis(50);

/// What a processor's wait ended with.
enum Woken<D, T, M> {
    /// Work from the input; `None` once it is closed and empty.
    Input(Option<Work<D, M>>),
    /// A retry due: the message, and the later ones of its key held behind it.
    Retry(Vec<Message<T, M>>),
    /// The deadline passed.
    Abandoned,
    /// Nothing to do with: wait again.
    Again,
    /// The input closed and no retry pending.
    Drained,
}

/// How far the handler calls of a pass got, and what they leave to settle.
#[derive(Default)]
struct Progress {
    /// The messages before this index were handled (for a call cut short: which were).
    reached: usize,
    /// The handled messages that stay, by index: with a retry delay, or `None` to wait
    /// behind their key. Taken out when the handled part is settled, so that the common
    /// case copies nothing.
    staying: Vec<(usize, Option<Duration>)>,
    /// Whether a handled message failed (for good or for a retry): with none, what is
    /// settled is passed on whole, not looked through for failures.
    failed: bool,
}

impl Progress {
    /// The part handled so far, to settle; the next part starts with none staying.
    fn take_settled(&mut self) -> (Vec<(usize, Option<Duration>)>, bool) {
        (
            std::mem::take(&mut self.staying),
            std::mem::take(&mut self.failed),
        )
    }
}

/// How a pass ended.
enum Passed<T, M> {
    /// Every message was handled.
    Done,
    /// The pipeline was abandoned at its deadline during the pass: these messages were
    /// not finished (the first one's handler call was cut short).
    Abandoned(Vec<Message<T, M>>),
}

impl<H, A, D, C> Processor<H, A, D, C>
where
    H: Handler,
    H::Metadata: Sync,
    A: Acknowledger<H::Metadata>,
    D: Send + 'static,
    C: Decode<D, H::Metadata, Output = H::Item>,
{
    pub(crate) async fn run(self) {
        let mut retries = Retries {
            due: DelayQueue::new(),
            held: HashMap::new(),
            waiting: self.metrics.retry_waiting(),
        };
        let mut open = true;
        let mut holding = self.metrics.holding(0);
        loop {
            if open && self.retire.is_requested() {
                open = false;
            }
            let one_key = self.slow.load(Relaxed);
            // Work that is ready, with no retry to come first, is taken without the waits
            // below: their futures would be made and dropped on every pass.
            let ready = match open && retries.is_empty() {
                true => self.input.try_next(one_key),
                false => None,
            };
            let woken = match ready {
                Some(work) => Woken::Input(Some(work)),
                None => self.wait(&mut retries, &mut holding, open, one_key).await,
            };
            let (passed, keys) = match woken {
                Woken::Input(Some(Work::Handle(chunk))) => {
                    holding.add(chunk.len());
                    let keys = keys_of(&chunk);
                    let passed = match self.decode(chunk, &mut holding).await {
                        None => Passed::Abandoned(Vec::new()),
                        // Nothing decoded: no pass, and no timing taken from it.
                        Some(chunk) if chunk.is_empty() => Passed::Done,
                        Some(chunk) => self.pass(&mut retries, &mut holding, chunk).await,
                    };
                    (passed, keys)
                }
                Woken::Input(Some(Work::Release(messages))) => {
                    self.ctx.release(messages).await;
                    continue;
                }
                Woken::Input(None) => {
                    open = false;
                    continue;
                }
                Woken::Retry(messages) => {
                    let keys = messages[0].order_key().into_iter().collect();
                    (self.pass(&mut retries, &mut holding, messages).await, keys)
                }
                Woken::Abandoned => (Passed::Abandoned(Vec::new()), Vec::new()),
                Woken::Again => continue,
                Woken::Drained => break,
            };
            match passed {
                Passed::Done => self.input.finish(retries.done_with(keys)),
                // An abandoned pass keeps its keys held: their later messages go back with
                // everything else (`hand_back` abandons the input first), never taken
                // meanwhile by a processor yet to see the deadline, and finished ahead of
                // the ones handed back here.
                Passed::Abandoned(unfinished) => return self.hand_back(retries, holding, unfinished).await,
            }
        }
    }

    /// Waits for what comes first, demanding input meanwhile: retries before anything
    /// still queued (they are older), then the input, a notice to retire, the deadline.
    async fn wait(
        &self,
        retries: &mut Retries<H::Item, H::Metadata>,
        holding: &mut Held,
        open: bool,
        one_key: bool,
    ) -> Woken<D, H::Item, H::Metadata> {
        // Only an open input is asked for more: a closed or retiring one waits for its
        // retries alone.
        let waiting = open.then(|| self.metrics.demanding(self.max_demand));
        tokio::select! {
            biased;
            // At shutdown a retry is not waited for: released unacknowledged, so that
            // the drain keeps its deadline and the broker redelivers it.
            () = self.stop.cancelled(), if !retries.is_empty() => {
                drop(waiting);
                let (released, keys) = retries.take_all();
                // The keys stay held: their later messages are released too, so that
                // none is finished ahead of the released one.
                self.input.release_keys(keys);
                holding.release(released.len());
                self.ctx.release(released).await;
                Woken::Again
            }
            Some(expired) = retries.due.next(), if !retries.due.is_empty() => {
                retries.waiting.release(1);
                let message = expired.into_inner();
                // The key is free for its head; the messages behind it follow it.
                let key = message.order_key();
                let behind = key.and_then(|key| retries.held.remove(&key));
                retries.waiting.release(behind.as_ref().map_or(0, VecDeque::len));
                let mut messages = vec![message];
                messages.extend(behind.into_iter().flatten());
                Woken::Retry(messages)
            }
            work = self.input.next(one_key), if open => Woken::Input(work),
            // After the input, so that it costs nothing while work is ready: each pass
            // checks for it first.
            () = self.retire.requested(), if open => Woken::Again,
            () = self.abandon.cancelled(), if open || !retries.is_empty() => Woken::Abandoned,
            // Input closed and no retry pending: drained.
            else => Woken::Drained,
        }
    }

    /// At the deadline: everything this processor holds or will still receive goes back
    /// to the source unfinished, at once, until its input closes (the producers have
    /// stopped), so that no message is left invisible until a broker timeout.
    async fn hand_back(
        &self,
        mut retries: Retries<H::Item, H::Metadata>,
        mut holding: Held,
        mut unfinished: Vec<Message<H::Item, H::Metadata>>,
    ) {
        unfinished.extend(retries.take_all().0);
        self.input.abandon();
        holding.release(unfinished.len());
        self.ctx.release(unfinished).await;
        while let Some(Work::Handle(chunk) | Work::Release(chunk)) = self.input.next(false).await {
            self.ctx.release(chunk).await;
        }
    }

    /// Decodes the data of a chunk just taken. Messages that do not decode fail for good
    /// and are acknowledged at once: like every final failure, they leave their key's
    /// order (they are done with), ahead of the earlier messages of their key still to be
    /// handled. `None` when the pipeline was abandoned at its deadline: the whole chunk
    /// was then handed back unfinished (with no decode step, the chunk goes on as it is,
    /// and the pass sees the deadline).
    async fn decode(
        &self,
        chunk: Vec<Message<D, H::Metadata>>,
        holding: &mut Held,
    ) -> Option<Vec<Message<H::Item, H::Metadata>>> {
        // No decode step: the chunk is passed on as it is, not rebuilt message by message
        // (the pass checks the deadline first thing).
        if TypeId::of::<C>() == TypeId::of::<Identity>() {
            // Through a reference to an `Option`: nothing allocated to change the type.
            let mut chunk = Some(chunk);
            let chunk: &mut dyn Any = &mut chunk;
            if let Some(same) = chunk.downcast_mut::<Option<Vec<Message<H::Item, H::Metadata>>>>() {
                return same.take();
            }
            unreachable!("the identity decode step keeps the data's type");
        }
        if self.abandon.is_cancelled() {
            holding.release(chunk.len());
            self.ctx.release(chunk).await;
            return None;
        }
        let mut decoded = Vec::with_capacity(chunk.len());
        let mut undecoded = Vec::new();
        let mut rest = chunk.into_iter();
        while let Some(message) = rest.next() {
            let (data, mut message) = message.take_data();
            // A decode step may wait (a schema registry): cut short at the deadline.
            let decoding = AssertUnwindSafe(self.codec.decode(data, message.metadata())).catch_unwind();
            let result = until_cancelled(&self.abandon, decoding).await;
            let error: BoxError = match result {
                Some(Ok(Ok(item))) => {
                    decoded.push(message.with_data(item));
                    continue;
                }
                Some(Ok(Err(error))) => error,
                Some(Err(panic)) => format!("the decode step panicked: {}", panic_message(panic)).into(),
                None => {
                    // Everything of the chunk goes back, the message being decoded (its
                    // data with the decode step) as it was left: its metadata.
                    let rest: Vec<_> = rest.collect();
                    holding.release(decoded.len() + undecoded.len() + 1 + rest.len());
                    undecoded.push(message);
                    self.ctx.release(decoded).await;
                    self.ctx.release(undecoded).await;
                    self.ctx.release(rest).await;
                    return None;
                }
            };
            // A message failed already (a routing failure) keeps its own reason.
            if message.is_ok() {
                message.set_failure(Failure::new(FailureKind::Decode, error));
            }
            undecoded.push(message);
        }
        if !undecoded.is_empty() {
            holding.release(undecoded.len());
            self.ctx.acknowledge_undecoded(undecoded).await;
        }
        Some(decoded)
    }

    /// Handles `messages` in order and routes those done with this stage (to their
    /// batcher or the acknowledger): each as it is done when handlers are slow, else all
    /// at the end. Failed ones with attempts left, and those whose key waits behind them,
    /// stay in `retries`.
    async fn pass(
        &self,
        retries: &mut Retries<H::Item, H::Metadata>,
        holding: &mut Held,
        mut messages: Vec<Message<H::Item, H::Metadata>>,
    ) -> Passed<H::Item, H::Metadata> {
        if self.abandon.is_cancelled() {
            return Passed::Abandoned(messages);
        }
        // Delivered more often than the policy allows (a broker's count, which its attempt
        // is): failed for good unhandled, as what ended its last deliveries would likely
        // end this one.
        let limit = self.ctx.retry.max_deliveries();
        if self.ctx.redelivery == Redelivery::Broker
            && messages.iter().any(|message| message.attempt() > limit)
        {
            for message in messages.iter_mut().filter(|message| message.is_ok()) {
                if let Some(failure) = self.ctx.retry.over_deliveries(message.attempt()) {
                    message.set_failure(failure);
                }
            }
        }
        let handler = &self.ctx.handler;
        let preparing = guarded(handler.prepare_messages(&mut messages));
        let Some(prepared) = until_cancelled(&self.abandon, preparing).await else {
            return Passed::Abandoned(messages);
        };
        if let Err(failure) = prepared {
            // A message failed already (a routing failure) keeps its own reason.
            messages
                .iter_mut()
                .filter(|message| message.is_ok())
                .for_each(|message| message.set_failure(failure.clone()));
        }
        let each = self.settle_each.load(Relaxed);
        let mut timing = HandlingTimes::new(&self.metrics, self.time_each.load(Relaxed));
        // Handled in place.
        let mut progress = Progress::default();
        let mut first = true;
        let passed = loop {
            // One message at a time when settling each, else the rest of the chunk; cut
            // short at the deadline.
            let from = progress.reached;
            let end = if each { from + 1 } else { messages.len() };
            // Checked before each later part too: a part settled before may have been
            // released at the deadline, and its key's later messages must not be finished
            // after it.
            let abandoned = (!first && self.abandon.is_cancelled()) || {
                let handled = self.handle(&mut messages[..end], from, retries, &mut progress, &mut timing);
                until_cancelled(&self.abandon, handled).await.is_none()
            };
            timing.pause();
            first = false;
            let next = progress.reached;
            let unfinished = if abandoned {
                messages.split_off(next)
            } else {
                Vec::new()
            };
            if abandoned || next == messages.len() {
                let (staying, failed) = progress.take_settled();
                self.settle(retries, holding, messages, staying, failed).await;
                break if abandoned {
                    Passed::Abandoned(unfinished)
                } else {
                    Passed::Done
                };
            }
            // Settling each: what is handled goes on now, the rest is handled after.
            let rest = messages.split_off(next);
            let (staying, failed) = progress.take_settled();
            self.settle(
                retries,
                holding,
                std::mem::replace(&mut messages, rest),
                staying,
                failed,
            )
            .await;
            progress.reached = 0;
            timing.resume();
        };
        // Both from the handler calls' time alone: settling (acknowledging, waiting for a
        // full batcher) is no reason to read the clock around every call, or to settle
        // each message.
        let handling = timing.pause();
        drop(timing);
        self.time_each.store(handling >= TIME_EACH_AFTER, Relaxed);
        let slow = handling >= SETTLE_EACH_AFTER;
        self.slow.store(slow, Relaxed);
        let gains = self.ctx.acknowledger.acknowledges_each();
        self.settle_each.store(gains && slow, Relaxed);
        passed
    }

    /// Handles `messages[from..]`, recording in `progress` how far it got (so that a
    /// cut-short call knows which messages were handled) and what stays.
    ///
    /// A handler's panic fails its message, as an error does. The run of calls is guarded
    /// once, not each call: a panic ends the run at the message `progress.reached` points
    /// to, which is failed, and a new run takes the messages after it. A panic of the pipeline's own
    /// code between calls is not the handler's: it goes on unwinding.
    async fn handle(
        &self,
        messages: &mut [Message<H::Item, H::Metadata>],
        from: usize,
        retries: &mut Retries<H::Item, H::Metadata>,
        progress: &mut Progress,
        timing: &mut HandlingTimes<'_>,
    ) {
        let mut from = from;
        loop {
            let mut calling = false;
            let run = self.handle_run(messages, from, retries, progress, timing, &mut calling);
            // Unwind safety: after a panic, the message it came from is only marked
            // failed, never read as if its handler had finished.
            let Err(panic) = AssertUnwindSafe(run).catch_unwind().await else {
                return;
            };
            if !calling {
                std::panic::resume_unwind(panic);
            }
            let index = progress.reached;
            let failure = Failure::new(FailureKind::Panic, panic_message(panic).into());
            timing.handled(0, 1);
            messages[index].set_failure(failure);
            self.failed(&mut messages[index], index, retries, progress);
            progress.reached = index + 1;
            from = index + 1;
        }
    }

    /// The calls of [`Processor::handle`], unguarded; `calling` is `true` while a handler
    /// call is under way.
    async fn handle_run(
        &self,
        messages: &mut [Message<H::Item, H::Metadata>],
        from: usize,
        retries: &mut Retries<H::Item, H::Metadata>,
        progress: &mut Progress,
        timing: &mut HandlingTimes<'_>,
        calling: &mut bool,
    ) {
        let handler = &self.ctx.handler;
        // Whether any log span at debug level may record (the subscriber's global
        // level): asked once a chunk.
        let logs = tracing::level_enabled!(tracing::Level::DEBUG);
        let spans = logs || self.ctx.traces();
        for (message, index) in messages[from..].iter_mut().zip(from..) {
            let waits = !retries.held.is_empty()
                && message
                    .order_key()
                    .is_some_and(|key| retries.held.contains_key(&key));
            if waits {
                progress.staying.push((index, None));
                progress.reached = index + 1;
                continue;
            }
            if message.is_ok() {
                let _call = self.call.enter();
                // With no span to enter, the call alone: no wrapper made or polled. The
                // spans are made before the call is: a panic making them is not the
                // handler's.
                let called = match spans {
                    false => {
                        *calling = true;
                        handler.handle_message(message).await
                    }
                    true => {
                        let (span, otel) = self.spans(message, logs);
                        *calling = true;
                        self.call_within(message, span, otel).await
                    }
                };
                *calling = false;
                match called {
                    Ok(()) => timing.handled(1, 0),
                    Err(error) => {
                        timing.handled(0, 1);
                        message.set_failure(Failure::new(FailureKind::Error, error));
                    }
                }
            }
            if message.is_failed() {
                self.failed(message, index, retries, progress);
            }
            progress.reached = index + 1;
        }
    }

    /// The message's spans: its log span (when debug logs may record) and its trace span
    /// (when the pipeline traces).
    fn spans(&self, message: &mut Message<H::Item, H::Metadata>, logs: bool) -> (tracing::Span, Within) {
        let otel = self.ctx.message_span(message);
        // When the subscriber's level lets debug spans record, each message's span asks
        // its own callsite, so that filters by span name (`[message]=debug`) still work.
        let span = match logs {
            true => tracing::debug_span!("message", attempt = message.attempt()),
            false => tracing::Span::none(),
        };
        (span, otel)
    }

    /// A handler call within its spans (none may record: the call alone). The wrapper is
    /// boxed, so that it does not grow every call's state.
    async fn call_within(
        &self,
        message: &mut Message<H::Item, H::Metadata>,
        span: tracing::Span,
        otel: Within,
    ) -> Result<(), BoxError> {
        if otel.is_none() && span.is_disabled() {
            return self.ctx.handler.handle_message(message).await;
        }
        Box::pin(within(span, otel, self.ctx.handler.handle_message(message))).await
    }

    /// A failed message (by its handler, or before): whether it stays for a retry.
    fn failed(
        &self,
        message: &mut Message<H::Item, H::Metadata>,
        index: usize,
        retries: &mut Retries<H::Item, H::Metadata>,
        progress: &mut Progress,
    ) {
        progress.failed = true;
        if let Some(delay) = self.ctx.retry_delay(message) {
            if let Some(key) = message.order_key() {
                retries.held.entry(key).or_default();
            }
            progress.staying.push((index, Some(delay)));
        }
    }

    /// Takes the messages that stay out of handled `messages` (into `retries`) and routes
    /// the rest on; `failed`: whether any of them failed.
    async fn settle(
        &self,
        retries: &mut Retries<H::Item, H::Metadata>,
        holding: &mut Held,
        messages: Vec<Message<H::Item, H::Metadata>>,
        staying: Vec<(usize, Option<Duration>)>,
        failed: bool,
    ) {
        if messages.is_empty() {
            return;
        }
        let done = if staying.is_empty() {
            messages
        } else {
            let mut staying = staying.into_iter().peekable();
            let mut done = Vec::with_capacity(messages.len());
            for (index, mut message) in messages.into_iter().enumerate() {
                match staying.next_if(|&(at, _)| at == index) {
                    None => done.push(message),
                    Some((_, Some(delay))) => {
                        message.retry(delay);
                        retries.due.insert(message, delay);
                        retries.waiting.add(1);
                    }
                    Some((_, None)) => {
                        let key = message.order_key().expect("only keyed messages wait");
                        retries.held.entry(key).or_default().push_back(message);
                        retries.waiting.add(1);
                    }
                }
            }
            done
        };
        holding.release(done.len());
        self.route(done, failed).await;
    }

    /// The index of the batcher a successful message goes to: the one it names, else the first.
    fn batcher_of(&self, message: &Message<H::Item, H::Metadata>) -> Option<usize> {
        match message.batcher() {
            None => Some(0),
            Some(name) => self.batchers.iter().position(|route| &*route.name == name),
        }
    }

    /// Routes `chunk` to its batchers, or with none to the acknowledger; `failed`: whether
    /// any of its messages may have failed (without, the chunk is not searched for
    /// failures on its way whole).
    async fn route(&self, chunk: Vec<Message<H::Item, H::Metadata>>, failed: bool) {
        debug_assert!(
            failed || chunk.iter().all(Message::is_ok),
            "a failed message settled as if none had failed"
        );
        if self.batchers.is_empty() {
            let (successful, failed) = match failed {
                false => (chunk, Vec::new()),
                true => split_failed(chunk),
            };
            return self.ctx.acknowledge(successful, failed).await;
        }
        // The common case moves the whole chunk on without copying it.
        let first = chunk.first().and_then(|message| self.batcher_of(message));
        if let Some(only) = first {
            if chunk
                .iter()
                .all(|m| (!failed || m.is_ok()) && self.batcher_of(m) == Some(only))
            {
                return self.forward(only, chunk).await;
            }
        }
        let mut routed: Vec<Vec<Message<H::Item, H::Metadata>>> =
            self.batchers.iter().map(|_| Vec::new()).collect();
        let mut failed = Vec::new();
        for mut message in chunk {
            if message.is_failed() {
                failed.push(message);
            } else if let Some(index) = self.batcher_of(&message) {
                routed[index].push(message);
            } else {
                let error = format!("no batcher named `{}`", message.batcher().unwrap_or_default());
                message.set_failure(Failure::new(FailureKind::Routing, error.into()));
                failed.push(message);
            }
        }
        self.ctx.acknowledge(Vec::new(), failed).await;
        for (index, messages) in routed.into_iter().enumerate() {
            if !messages.is_empty() {
                self.forward(index, messages).await;
            }
        }
    }

    async fn forward(&self, index: usize, messages: Vec<Message<H::Item, H::Metadata>>) {
        let route = &self.batchers[index];
        if let Err(lost) = route.tx.send(messages).await {
            // Only after an abort at the shutdown deadline: left unacknowledged, redelivered.
            tracing::warn!(batcher = %route.name, messages = lost.0.len(), "batcher gone; messages left unacknowledged");
        }
    }
}
