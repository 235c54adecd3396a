//! The source under check, seen through: every delivery and every acknowledgement counted
//! against what was published.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::recorder::Calls;
use super::{lock, violation, Broker, Check, Published};
use crate::error::BoxError;
use crate::message::Message;
use crate::source::{Acknowledger, PartitionBy, Plan, Redelivery, Source};

/// What the source under check was told by the pipeline.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Per message, how often it was acknowledged for good (successful, or failed with
    /// no redelivery to come).
    pub(super) acknowledged: HashMap<u64, usize>,
    /// Per key, the messages acknowledged for good, in the order the source was told.
    pub(super) acknowledged_by_key: std::collections::BTreeMap<u64, Vec<u64>>,
    /// Messages handed back at shutdown.
    pub(super) released: Vec<u64>,
    /// Acknowledgements of deliveries the source never made (or made known twice).
    unknown: usize,
    /// The handler's record, copied in when the pipeline has stopped.
    pub(super) calls: Calls,
}

impl Ledger {
    pub(super) fn acknowledged_once(&self, check: &'static str, published: &[Published]) -> Check {
        if self.unknown > 0 {
            return Err(violation(
                check,
                format!("{} acknowledgements of unknown deliveries", self.unknown),
            ));
        }
        for message in published {
            match self.acknowledged.get(&message.id).copied().unwrap_or(0) {
                1 => {}
                0 => {
                    return Err(violation(
                        check,
                        format!("message {} was never acknowledged", message.id),
                    ))
                }
                n => {
                    return Err(violation(
                        check,
                        format!("message {} was acknowledged {n} times", message.id),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Deliveries in flight: the checks' own reference, the source's, and what was published.
type Refs = Arc<Mutex<HashMap<u64, (u64, Published)>>>;

/// The source under check, seen through: each delivery gets a reference of the checks'
/// own, so that every acknowledgement is counted against what was delivered.
pub(super) struct Checked<B: Broker> {
    inner: B::Source,
    broker: Arc<B>,
    refs: Refs,
    next: AtomicU64,
    pub(super) ledger: Arc<Mutex<Ledger>>,
}

impl<B: Broker> Checked<B> {
    pub(super) fn new(inner: B::Source, broker: Arc<B>) -> Self {
        Checked {
            inner,
            broker,
            refs: Refs::default(),
            next: AtomicU64::new(0),
            ledger: Arc::default(),
        }
    }
}

impl<B: Broker> Source for Checked<B> {
    type Data = <B::Source as Source>::Data;
    type Metadata = <B::Source as Source>::Metadata;
    type Acknowledger = CheckedAcks<<B::Source as Source>::Acknowledger>;

    fn acknowledger(&self) -> Self::Acknowledger {
        CheckedAcks {
            inner: self.inner.acknowledger(),
            refs: self.refs.clone(),
            ledger: self.ledger.clone(),
        }
    }

    async fn receive(
        &self,
        demand: NonZeroUsize,
    ) -> Result<Option<Vec<Message<Self::Data, Self::Metadata>>>, BoxError> {
        let Some(batch) = self.inner.receive(demand).await? else {
            return Ok(None);
        };
        let mut refs = lock(&self.refs);
        let batch = batch
            .into_iter()
            .map(|message| {
                let ours = self.next.fetch_add(1, Ordering::Relaxed);
                refs.insert(ours, (message.ack_ref(), self.broker.identify(&message)));
                message.with_ack_ref(ours)
            })
            .collect();
        Ok(Some(batch))
    }

    fn partition_by(&self) -> Option<PartitionBy<Self::Data, Self::Metadata>> {
        self.inner.partition_by()
    }

    fn redelivery(&self) -> Redelivery {
        self.inner.redelivery()
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        self.inner.shutdown()
    }

    fn prepare(&self, plan: &Plan) -> Result<(), crate::BuildError> {
        self.inner.prepare(plan)
    }

    fn liveness(&self) -> Result<(), BoxError> {
        self.inner.liveness()
    }

    fn panel(&self) -> Option<std::sync::Arc<dyn crate::source::SourcePanel>> {
        self.inner.panel()
    }
}

/// The acknowledger of [`Checked`]: counts, then hands each message on with the source's
/// own reference.
pub(super) struct CheckedAcks<A> {
    inner: A,
    refs: Refs,
    ledger: Arc<Mutex<Ledger>>,
}

impl<A> CheckedAcks<A> {
    /// Gives each message its source's reference back; `count` sees what was published.
    fn restore<T, M>(
        &self,
        messages: Vec<Message<T, M>>,
        mut count: impl FnMut(&mut Ledger, &Message<T, M>, Published),
    ) -> Vec<Message<T, M>> {
        let mut refs = lock(&self.refs);
        let mut ledger = lock(&self.ledger);
        messages
            .into_iter()
            .filter_map(|message| match refs.remove(&message.ack_ref()) {
                Some((theirs, published)) => {
                    count(&mut ledger, &message, published);
                    Some(message.with_ack_ref(theirs))
                }
                None => {
                    ledger.unknown += 1;
                    None
                }
            })
            .collect()
    }
}

impl<M: Send + 'static, A: Acknowledger<M>> Acknowledger<M> for CheckedAcks<A> {
    async fn ack<T: Send + 'static>(&self, successful: Vec<Message<T, M>>, failed: Vec<Message<T, M>>) {
        let done = |ledger: &mut Ledger, message: &Message<T, M>, published: Published| {
            if message.redeliver_after().is_none() {
                *ledger.acknowledged.entry(published.id).or_default() += 1;
                ledger
                    .acknowledged_by_key
                    .entry(published.key)
                    .or_default()
                    .push(published.id);
            }
        };
        let successful = self.restore(successful, done);
        let failed = self.restore(failed, done);
        self.inner.ack(successful, failed).await;
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        self.inner.flush()
    }

    async fn release<T: Send + 'static>(&self, messages: Vec<Message<T, M>>) {
        let messages = self.restore(messages, |ledger, _, published| {
            ledger.released.push(published.id)
        });
        self.inner.release(messages).await;
    }

    fn origin<T>(&self, message: &Message<T, M>) -> Option<String> {
        self.inner.origin(message)
    }

    fn acknowledges_each(&self) -> bool {
        self.inner.acknowledges_each()
    }
}
