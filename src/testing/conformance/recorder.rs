//! The checks' handler: records every call (attempt, key, overlap, finish order) and
//! fails, waits or sticks as a check tells it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{lock, Broker, Published};
use crate::error::BoxError;
use crate::message::Message;
use crate::source::Source;
use crate::Handler;

/// What a handler does with each message in a check.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Behaviour {
    /// Every tenth message fails until this attempt.
    pub(super) fail_until: Option<u32>,
    /// Each call waits up to 2 ms, so that calls of different keys interleave.
    pub(super) jitter: bool,
    /// The first call never returns (cut short at the shutdown deadline).
    pub(super) stuck: bool,
}

/// What the handler saw.
#[derive(Debug, Clone, Default)]
pub(super) struct Calls {
    /// Per message, the attempt of each call.
    pub(super) attempts: HashMap<u64, Vec<u32>>,
    /// Per key, the message being handled now.
    active: HashMap<u64, u64>,
    /// Keys two of whose messages were handled at once.
    pub(super) overlaps: BTreeMap<u64, (u64, u64)>,
    /// Per key, the messages handled successfully, in order.
    pub(super) finished_by_key: BTreeMap<u64, Vec<u64>>,
}

/// The checks' handler: records each call, behaves as told.
pub(super) struct Recorder<B> {
    broker: Arc<B>,
    behaviour: Behaviour,
    pub(super) calls: Arc<Mutex<Calls>>,
    /// Told when the first call starts.
    pub(super) started: Arc<tokio::sync::Notify>,
}

impl<B> Recorder<B> {
    pub(super) fn new(broker: Arc<B>, behaviour: Behaviour) -> Self {
        Recorder {
            broker,
            behaviour,
            calls: Arc::default(),
            started: Arc::default(),
        }
    }
}

impl<B: Broker> Handler for Recorder<B>
where
    <B::Source as Source>::Metadata: Sync,
{
    type Item = <B::Source as Source>::Data;
    type Metadata = <B::Source as Source>::Metadata;

    async fn handle_message(
        &self,
        message: &mut Message<Self::Item, Self::Metadata>,
    ) -> Result<(), BoxError> {
        let Published { id, key } = self.broker.identify(message);
        let attempt = message.attempt();
        {
            let mut calls = lock(&self.calls);
            calls.attempts.entry(id).or_default().push(attempt);
            if let Some(&other) = calls.active.get(&key) {
                calls.overlaps.insert(key, (other, id));
            }
            calls.active.insert(key, id);
        }
        self.started.notify_one();
        if self.behaviour.stuck {
            std::future::pending::<()>().await;
        }
        if self.behaviour.jitter {
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2_000))).await;
        }
        let fails = self
            .behaviour
            .fail_until
            .is_some_and(|until| id % 10 == 0 && attempt < until);
        let mut calls = lock(&self.calls);
        calls.active.remove(&key);
        if fails {
            return Err(format!("message {id} fails on attempt {attempt}").into());
        }
        calls.finished_by_key.entry(key).or_default().push(id);
        Ok(())
    }
}
