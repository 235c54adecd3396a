//! Demand-driven receiving: long polls of up to 10 messages, as many as the demand not
//! yet covered needs, up to `receive_concurrency` at once.
//!
//! Polls run as tasks of their own, so a pipeline that stops waiting (a shutdown)
//! never cancels a poll that SQS has already answered: what it brings lands in
//! `arrived`, and the shutdown releases it. New polls ask only for the demand of the
//! receive calls waiting that the polls in flight do not cover, and only when nothing
//! that arrived waits: `arrived` and the polls in flight hold at most
//! `receive_concurrency` x 10. A call answers with the first poll's messages; what its
//! other polls bring after is held (its visibility extended) for the next calls, and
//! released at shutdown.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use longshore::BoxError;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::held::Held;
use crate::metadata::{SqsMessage, SqsMetadata};
use crate::queue::{Queue, MAX_BATCH};

/// What a receive call needs of the configuration.
#[derive(Debug)]
pub(crate) struct Polling {
    pub(crate) concurrency: usize,
    pub(crate) wait_time: Duration,
    pub(crate) attribute_names: Vec<MessageSystemAttributeName>,
    pub(crate) message_attribute_names: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Receiver {
    queue: Arc<Queue>,
    held: Arc<Held>,
    polling: Polling,
    state: Mutex<State<SqsMessage>>,
    /// Woken whenever a poll ends.
    polled: Notify,
}

/// The receiver's bookkeeping, apart from the calls it makes (a proptest drives it).
#[derive(Debug)]
struct State<T> {
    /// Received, not yet handed out.
    arrived: VecDeque<T>,
    polls: usize,
    /// Messages asked for by the polls in flight.
    asked: usize,
    /// The demand of the receive calls waiting, together: calls of several producers
    /// (`source_concurrency`) each start polls for their own demand.
    waiting: usize,
    error: Option<String>,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            arrived: VecDeque::new(),
            polls: 0,
            asked: 0,
            waiting: 0,
            error: None,
        }
    }
}

impl<T> State<T> {
    /// The polls to start, at most `concurrency` in flight, for the waiting calls'
    /// demand beyond those in flight (called only when nothing that arrived waits): full
    /// ones of 10, and a smaller one only when no other poll is in flight (the rest of the
    /// demand waits for a full poll's worth, so each call brings as much as it can). Each
    /// counted as in flight; their sizes.
    fn start_polls(&mut self, concurrency: usize) -> Vec<usize> {
        let mut missing = self.waiting.saturating_sub(self.asked);
        let mut started = Vec::new();
        while missing > 0 && self.polls < concurrency {
            if missing < MAX_BATCH && self.polls > 0 {
                break;
            }
            let n = missing.min(MAX_BATCH);
            missing -= n;
            self.polls += 1;
            self.asked += n;
            started.push(n);
        }
        started
    }

    /// A poll that asked for `n` ended with what it brought.
    fn poll_ended(&mut self, n: usize, polled: Result<Vec<T>, String>) {
        self.polls -= 1;
        self.asked -= n;
        match polled {
            Ok(messages) => self.arrived.extend(messages),
            Err(error) => self.error = Some(error),
        }
    }
}

impl Receiver {
    pub(crate) fn new(queue: Arc<Queue>, held: Arc<Held>, polling: Polling) -> Arc<Self> {
        Arc::new(Receiver {
            queue,
            held,
            polling,
            state: Mutex::default(),
            polled: Notify::new(),
        })
    }

    /// Waits for messages, at most `demand` of them.
    pub(crate) async fn receive(self: &Arc<Self>, demand: usize) -> Result<Vec<SqsMessage>, BoxError> {
        // Counted while this call waits: taken off under the same lock as its answer, so
        // that no other call sees it after; or when the call is dropped (cut short at
        // shutdown).
        let mut waiting = Waiting::new(self, demand);
        loop {
            let polled = self.polled.notified();
            tokio::pin!(polled);
            polled.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(error) = state.error.take() {
                    waiting.settle(&mut state);
                    return Err(error.into());
                }
                if !state.arrived.is_empty() {
                    waiting.settle(&mut state);
                    let n = demand.min(state.arrived.len());
                    return Ok(state.arrived.drain(..n).collect());
                }
                self.start_polls(&mut state);
            }
            polled.await;
        }
    }

    /// Starts the polls [`State::start_polls`] says, each as a task of its own.
    fn start_polls(self: &Arc<Self>, state: &mut State<SqsMessage>) {
        for n in state.start_polls(self.polling.concurrency) {
            tokio::spawn(self.clone().poll(n));
        }
    }

    async fn poll(self: Arc<Self>, n: usize) {
        let polled = self.receive_message(n).await;
        self.lock().poll_ended(n, polled);
        self.polled.notify_waiters();
    }

    async fn receive_message(&self, n: usize) -> Result<Vec<SqsMessage>, String> {
        let queue = &self.queue;
        queue.metrics.call("ReceiveMessage");
        let call = queue
            .client
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(n as i32)
            .wait_time_seconds(self.polling.wait_time.as_secs() as i32)
            .visibility_timeout(crate::config::sqs_seconds(queue.visibility))
            .set_message_system_attribute_names(Some(self.polling.attribute_names.clone()))
            .set_message_attribute_names(Some(self.polling.message_attribute_names.clone()));
        // The visibility timeout runs from the request: count it from there.
        let sent_at = Instant::now();
        let answer = call.send().await.map_err(|error| {
            format!(
                "receiving from {}: {:#}",
                queue.name,
                aws_sdk_sqs::Error::from(error)
            )
        })?;
        let received: Vec<SqsMetadata> = answer
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let converted = SqsMetadata::from_sdk(message, &queue.name);
                if converted.is_none() {
                    tracing::warn!(queue = %queue.name, "message without id or receipt skipped");
                }
                converted
            })
            .collect();
        queue.metrics.observe_age(&received);
        let refs = self.held.hold(
            received
                .iter()
                .map(|m| (m.receipt_handle.as_str(), m.message_id.as_str())),
            sent_at,
            queue.visibility,
        );
        Ok(received
            .into_iter()
            .zip(refs)
            .map(|(message, ack_ref)| message.into_message().with_ack_ref(ack_ref))
            .collect())
    }

    /// Stops: waits (up to `wait`) for the polls in flight and returns every message
    /// received and not handed out.
    pub(crate) async fn stop(&self, wait: Duration) -> Vec<SqsMessage> {
        let deadline = Instant::now() + wait;
        loop {
            let polled = self.polled.notified();
            tokio::pin!(polled);
            polled.as_mut().enable();
            if self.lock().polls == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, polled).await.is_err() {
                tracing::warn!(queue = %self.queue.name, "polls still in flight at shutdown; what they bring stays invisible until its timeout");
                break;
            }
        }
        self.lock().arrived.drain(..).collect()
    }

    /// How many messages arrived from polls and wait to be handed out (held already).
    pub(crate) fn arrived(&self) -> usize {
        self.lock().arrived.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<SqsMessage>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A receive call's demand, counted in [`State::waiting`] for as long as the call lives.
struct Waiting<'a> {
    receiver: &'a Receiver,
    demand: usize,
}

impl<'a> Waiting<'a> {
    fn new(receiver: &'a Receiver, demand: usize) -> Self {
        receiver.lock().waiting += demand;
        Waiting { receiver, demand }
    }

    /// The call answers: its demand is no longer waiting, from within the lock it
    /// answers under.
    fn settle<T>(&mut self, state: &mut State<T>) {
        state.waiting -= std::mem::take(&mut self.demand);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.demand > 0 {
            self.receiver.lock().waiting -= self.demand;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What happens to the receiver, in any order: a producer's call comes with its
    /// demand, a poll in flight ends (with up to what it asked for, or failing), a waiting
    /// call is dropped (a shutdown).
    #[derive(Debug, Clone)]
    enum Event {
        Call(usize),
        PollEnds { which: usize, got: usize, fails: bool },
        Drop(usize),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (1usize..=60).prop_map(Event::Call),
            (any::<usize>(), 0usize..=10, proptest::bool::weighted(0.05))
                .prop_map(|(which, got, fails)| Event::PollEnds { which, got, fails }),
            any::<usize>().prop_map(Event::Drop),
        ]
    }

    /// A waiting call looks again, as `receive` does when woken: answers with what
    /// arrived (its demand at most) or the error, else starts the polls it needs.
    fn look(
        state: &mut State<u32>,
        demand: usize,
        polls: &mut Vec<usize>,
        concurrency: usize,
    ) -> Option<usize> {
        if state.error.take().is_some() {
            state.waiting -= demand;
            return Some(0);
        }
        if !state.arrived.is_empty() {
            state.waiting -= demand;
            let n = demand.min(state.arrived.len());
            state.arrived.drain(..n);
            return Some(n);
        }
        let waiting_before = state.waiting;
        let started = state.start_polls(concurrency);
        // Polls start for demand that is waiting and not covered, and only then.
        if !started.is_empty() {
            assert!(
                state.asked <= waiting_before,
                "asked {} for {waiting_before} waiting",
                state.asked
            );
        }
        polls.extend(started);
        None
    }

    proptest! {
        /// Polls never ask beyond the waiting calls' demand, what arrived and what is
        /// asked stay within `receive_concurrency` x 10, no call gets more than its
        /// demand, the counts add up, and a waiting call is never left with nothing in
        /// flight to wake it.
        #[test]
        fn polls_follow_the_waiting_demand(
            concurrency in 1usize..=10,
            events in proptest::collection::vec(event(), 1..200),
        ) {
            let mut state: State<u32> = State::default();
            let mut calls: Vec<usize> = Vec::new();
            let mut polls: Vec<usize> = Vec::new();
            for event in events {
                match event {
                    Event::Call(demand) => {
                        state.waiting += demand;
                        match look(&mut state, demand, &mut polls, concurrency) {
                            Some(got) => prop_assert!(got <= demand),
                            None => calls.push(demand),
                        }
                    }
                    Event::PollEnds { which, got, fails } if !polls.is_empty() => {
                        let n = polls.swap_remove(which % polls.len());
                        let polled = if fails { Err("down".to_owned()) } else { Ok(vec![0u32; got.min(n)]) };
                        state.poll_ended(n, polled);
                        // Woken, every waiting call looks again, in turn.
                        let mut still = Vec::new();
                        for demand in calls.drain(..) {
                            match look(&mut state, demand, &mut polls, concurrency) {
                                Some(got) => prop_assert!(got <= demand),
                                None => still.push(demand),
                            }
                        }
                        calls = still;
                    }
                    Event::Drop(which) if !calls.is_empty() => {
                        let demand = calls.swap_remove(which % calls.len());
                        state.waiting -= demand;
                    }
                    _ => {}
                }
                prop_assert_eq!(state.waiting, calls.iter().sum::<usize>());
                prop_assert_eq!(state.asked, polls.iter().sum::<usize>());
                prop_assert_eq!(state.polls, polls.len());
                prop_assert!(state.polls <= concurrency);
                prop_assert!(state.asked + state.arrived.len() <= concurrency * MAX_BATCH);
                prop_assert!(
                    calls.is_empty() || !polls.is_empty() || state.error.is_some(),
                    "{} calls wait with no poll in flight", calls.len()
                );
            }
        }
    }
}
