//! A processor: runs `prepare_messages` and `handle_message` on each chunk, keeps failed
//! messages for their retries (and, with `partition_by`, their key's later messages
//! behind them), then hands each message to its batcher or, with no batcher,
//! acknowledges it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tracing::Instrument;

use crate::handler::Handler;
use crate::message::{Failure, FailureKind, Message};
use crate::metrics::{HandlingTimes, StageMetrics};
use crate::source::Acknowledger;
use crate::topology::acknowledge::split_failed;
use crate::topology::guard::guarded;
use crate::topology::Context;

/// Where a processor sends the messages routed to one batcher.
pub(crate) struct BatcherRoute<T> {
    pub(crate) name: Arc<str>,
    pub(crate) tx: mpsc::Sender<Vec<Message<T>>>,
}

impl<T> Clone for BatcherRoute<T> {
    fn clone(&self) -> Self {
        BatcherRoute {
            name: self.name.clone(),
            tx: self.tx.clone(),
        }
    }
}

pub(crate) struct Processor<H: Handler, A> {
    pub(crate) ctx: Arc<Context<H, A>>,
    pub(crate) input: async_channel::Receiver<Vec<Message<H::Item>>>,
    pub(crate) batchers: Vec<BatcherRoute<H::Item>>,
    /// Cancelled at shutdown: what waits for a retry is released, not waited for.
    pub(crate) stop: CancellationToken,
    pub(crate) metrics: StageMetrics,
    /// Whether handler calls are slow enough to be timed one by one (see [`HandlingTimes`]).
    pub(crate) time_each: AtomicBool,
    /// The chunk it asks for: `max_demand`.
    pub(crate) max_demand: usize,
}

/// Takes everything out of `queue`, soonest first, without waiting.
pub(crate) fn drain_delayed<T>(queue: &mut DelayQueue<T>) -> Vec<T> {
    std::iter::from_fn(|| queue.peek().map(|key| queue.remove(&key).into_inner())).collect()
}

/// Messages a processor keeps for another attempt.
struct Retries<T> {
    /// Failed messages, each until its backoff has passed.
    due: DelayQueue<Message<T>>,
    /// Per partition key with a message in `due`: the later messages of that key, in order.
    held: HashMap<u64, VecDeque<Message<T>>>,
    /// Keys whose retry was released at shutdown: their later messages are released too,
    /// so that none is handled ahead of the released one.
    released: HashSet<u64>,
}

impl<T> Retries<T> {
    fn is_empty(&self) -> bool {
        self.due.is_empty() && self.held.is_empty()
    }

    /// Everything waiting, in each key's order, to be released.
    fn take_all(&mut self) -> Vec<Message<T>> {
        let mut all = drain_delayed(&mut self.due);
        for (key, queue) in self.held.drain() {
            self.released.insert(key);
            all.extend(queue);
        }
        all
    }
}

impl<H, A> Processor<H, A>
where
    H: Handler,
    A: Acknowledger<H::Item>,
{
    pub(crate) async fn run(self) {
        let mut retries = Retries {
            due: DelayQueue::new(),
            held: HashMap::new(),
            released: HashSet::new(),
        };
        let mut open = true;
        let mut holding = self.metrics.holding(0);
        loop {
            let waiting = self.metrics.demanding(self.max_demand);
            // Retries first: they are older than anything still queued.
            let done = tokio::select! {
                biased;
                // At shutdown a retry is not waited for: released unacknowledged, so that
                // the drain keeps its deadline and the broker redelivers it.
                () = self.stop.cancelled(), if !retries.is_empty() => {
                    let released = retries.take_all();
                    holding.release(released.len());
                    self.ctx.release(released).await;
                    continue;
                }
                Some(expired) = retries.due.next(), if !retries.due.is_empty() => {
                    let message = expired.into_inner();
                    // The key is free for its head; the messages behind it follow it.
                    let behind = message.order_key().and_then(|key| retries.held.remove(&key));
                    let mut messages = vec![message];
                    messages.extend(behind.into_iter().flatten());
                    self.pass(&mut retries, messages).await
                }
                chunk = self.input.recv(), if open => match chunk {
                    Ok(chunk) => {
                        holding.add(chunk.len());
                        self.pass(&mut retries, chunk).await
                    }
                    Err(_) => {
                        open = false;
                        continue;
                    }
                },
                // Input closed and no retry pending: drained.
                else => break,
            };
            drop(waiting);
            holding.release(done.len());
            self.route(done).await;
        }
    }

    /// Handles `messages` in order and returns those done with this stage; failed ones
    /// with attempts left, and those whose key waits behind them, stay in `retries`.
    async fn pass(
        &self,
        retries: &mut Retries<H::Item>,
        messages: Vec<Message<H::Item>>,
    ) -> Vec<Message<H::Item>> {
        let mut messages = self.hold_back(retries, messages);
        if messages.is_empty() {
            return messages;
        }
        let handler = &self.ctx.handler;
        if let Err(failure) = guarded(handler.prepare_messages(&mut messages)).await {
            // A message failed already (a routing failure) keeps its own reason.
            messages
                .iter_mut()
                .filter(|message| message.is_ok())
                .for_each(|message| message.set_failure(failure.clone()));
        }
        // Handled in place; the few that stay (index, retry delay or `None` to wait behind
        // their key) are taken out afterwards, so the common case copies nothing.
        let mut staying: Vec<(usize, Option<Duration>)> = Vec::new();
        let mut timing = HandlingTimes::new(&self.metrics, self.time_each.load(Relaxed));
        for (index, message) in messages.iter_mut().enumerate() {
            let waits = !retries.held.is_empty()
                && message
                    .order_key()
                    .is_some_and(|key| retries.held.contains_key(&key));
            if waits {
                staying.push((index, None));
                continue;
            }
            if message.is_ok() {
                let span = tracing::debug_span!("message", attempt = message.attempt());
                let handled = guarded(handler.handle_message(message)).instrument(span).await;
                timing.handled(usize::from(handled.is_ok()), usize::from(handled.is_err()));
                if let Err(failure) = handled {
                    message.set_failure(failure);
                }
            }
            if let Some(delay) = self.ctx.retry_delay(message) {
                if let Some(key) = message.order_key() {
                    retries.held.entry(key).or_default();
                }
                staying.push((index, Some(delay)));
            }
        }
        self.time_each.store(timing.finish(), Relaxed);
        if staying.is_empty() {
            return messages;
        }
        let mut staying = staying.into_iter().peekable();
        let mut done = Vec::with_capacity(messages.len());
        for (index, mut message) in messages.into_iter().enumerate() {
            match staying.next_if(|&(at, _)| at == index) {
                None => done.push(message),
                Some((_, Some(delay))) => {
                    message.retry();
                    retries.due.insert(message, delay);
                }
                Some((_, None)) => {
                    let key = message.order_key().expect("only keyed messages wait");
                    retries.held.entry(key).or_default().push_back(message);
                }
            }
        }
        done
    }

    /// Moves the messages whose key waits behind a retry to the back of its queue.
    fn hold_back(
        &self,
        retries: &mut Retries<H::Item>,
        messages: Vec<Message<H::Item>>,
    ) -> Vec<Message<H::Item>> {
        if retries.held.is_empty() && retries.released.is_empty() {
            return messages;
        }
        let mut free = Vec::with_capacity(messages.len());
        for message in messages {
            let Some(key) = message.order_key() else {
                free.push(message);
                continue;
            };
            if retries.released.contains(&key) {
                // Released with its key's retry at the next turn of the loop.
                retries.held.entry(key).or_default().push_back(message);
            } else if let Some(queue) = retries.held.get_mut(&key) {
                queue.push_back(message);
            } else {
                free.push(message);
            }
        }
        free
    }

    /// The index of the batcher a successful message goes to: the one it names, else the first.
    fn batcher_of(&self, message: &Message<H::Item>) -> Option<usize> {
        match message.batcher() {
            None => Some(0),
            Some(name) => self.batchers.iter().position(|route| &*route.name == name),
        }
    }

    async fn route(&self, chunk: Vec<Message<H::Item>>) {
        if self.batchers.is_empty() {
            let (successful, failed) = split_failed(chunk);
            return self.ctx.acknowledge(successful, failed).await;
        }
        // The common case moves the whole chunk on without copying it.
        let first = chunk.first().and_then(|message| self.batcher_of(message));
        if let Some(only) = first {
            if chunk
                .iter()
                .all(|m| m.is_ok() && self.batcher_of(m) == Some(only))
            {
                return self.forward(only, chunk).await;
            }
        }
        let mut routed: Vec<Vec<Message<H::Item>>> = self.batchers.iter().map(|_| Vec::new()).collect();
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

    async fn forward(&self, index: usize, messages: Vec<Message<H::Item>>) {
        let route = &self.batchers[index];
        if let Err(lost) = route.tx.send(messages).await {
            // Only after an abort at the shutdown deadline: left unacknowledged, redelivered.
            tracing::warn!(batcher = %route.name, messages = lost.0.len(), "batcher gone; messages left unacknowledged");
        }
    }
}
