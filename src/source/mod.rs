//! Where messages come from, and how they are acknowledged.
//!
//! A [`Source`] is asked for an explicit demand and returns at most that many messages;
//! it is never asked when nothing downstream has room. Its [`Acknowledger`] is told once
//! per message, after the message's last stage, whether it succeeded or failed.

mod ack_prefix;
mod every;
mod fetch_slots;
mod kept_fetch;
pub mod memory;
mod panel;
mod refusal;

pub use ack_prefix::AckPrefix;
pub use every::every;
pub use fetch_slots::FetchSlots;
pub use kept_fetch::KeptFetch;
pub use panel::{PartChanges, SourcePanel, SourcePart};
pub use refusal::Refusal;

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;

use crate::error::{BoxError, BuildError};
use crate::message::Message;

/// A connector that produces messages **only on demand**.
///
/// # Contract
///
/// - [`receive`](Source::receive) returns at most `demand` messages, waiting until it has
///   at least one. `Ok(None)` means the source is exhausted: the pipeline then drains and
///   stops by itself. An `Err` is logged and the call retried after a backoff.
/// - `receive` may be dropped before it completes: at shutdown, and when the pipeline
///   is paused while it waits (unless [`drops_fetch_on_pause`](Source::drops_fetch_on_pause)
///   says not to). It must then lose nothing: messages it already took from the broker
///   stay in the source, for the next `receive` (after a resume) or for
///   [`shutdown`](Source::shutdown) to release.
/// - Each message is acknowledged exactly once, through the acknowledger returned by
///   [`acknowledger`](Source::acknowledger), unless it is released at shutdown
///   ([`Acknowledger::release`]: it waited for a retry) or the pipeline missed its
///   shutdown deadline: such messages are never acknowledged and the broker redelivers
///   them.
///
/// # Examples
///
/// A source counting up to a limit, acknowledging into nothing:
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use longshore::{Acknowledger, BoxError, Message, Source};
///
/// struct Numbers { next: AtomicU64, end: u64 }
///
/// struct Ignore;
/// impl Acknowledger<()> for Ignore {
///     async fn ack<T: Send + 'static>(&self, _ok: Vec<Message<T>>, _failed: Vec<Message<T>>) {}
/// }
///
/// impl Source for Numbers {
///     type Data = u64;
///     type Metadata = ();
///     type Acknowledger = Ignore;
///
///     fn acknowledger(&self) -> Ignore { Ignore }
///
///     async fn receive(&self, demand: NonZeroUsize) -> Result<Option<Vec<Message<u64>>>, BoxError> {
///         let start = self.next.fetch_add(demand.get() as u64, Ordering::Relaxed).min(self.end);
///         let end = (start + demand.get() as u64).min(self.end);
///         Ok((start < end).then(|| (start..end).map(Message::new).collect()))
///     }
/// }
/// ```
pub trait Source: Send + Sync + 'static {
    /// The data of the messages produced, as the broker gave it (Kafka's payload, SQS's
    /// body): what a [decode step](crate::PipelineBuilder::decode) starts from.
    type Data: Send + 'static;
    /// What the source tells of each message beside its data: where it came from, and the
    /// bookkeeping its acknowledger needs (a receipt handle, an offset). Handlers read it
    /// with [`Message::metadata`]; it also keeps what a dead-letter destination writes
    /// (the original bytes), so that decoding the data loses nothing.
    type Metadata: Send + 'static;
    /// Who is told the outcome of each message.
    type Acknowledger: Acknowledger<Self::Metadata>;

    /// The acknowledger, taken once when the pipeline starts.
    fn acknowledger(&self) -> Self::Acknowledger;

    /// Returns at most `demand` messages, waiting for at least one; `Ok(None)` once exhausted.
    #[allow(clippy::type_complexity)] // spelled out: it is what an implementation writes
    fn receive(
        &self,
        demand: NonZeroUsize,
    ) -> impl Future<Output = Result<Option<Vec<Message<Self::Data, Self::Metadata>>>, BoxError>> + Send;

    /// The order this source keeps by default: messages with the same key are handled
    /// in order, one at a time (Kafka: the partition; SQS FIFO: the message group).
    /// Used when the pipeline's builder sets no `partition_by`. Default: none.
    fn partition_by(&self) -> Option<PartitionBy<Self::Data, Self::Metadata>> {
        None
    }

    /// Who retries a failed message: the pipeline, in process (the default, and the only
    /// way for Kafka), or the broker, by redelivering it (SQS's visibility timeout).
    fn redelivery(&self) -> Redelivery {
        Redelivery::InProcess
    }

    /// Whether a [`receive`](Source::receive) waiting for messages is dropped when the
    /// pipeline pauses (default `true`: a caught-up queue then hands out nothing more).
    ///
    /// A source whose fetch under way takes messages out of every consumer's reach
    /// (a long poll that leases them, deliveries pushed up to a prefetch) says `false`:
    /// its fetch then completes and what it brings is handled, one fetch's demand at
    /// most per producer (`source_concurrency`), rather than held out of the other
    /// replicas' reach for the whole pause.
    fn drops_fetch_on_pause(&self) -> bool {
        true
    }

    /// Whether the source is connected and can deliver (Kafka: it joined its group).
    /// The metrics server's `/readyz` reports it. Default: always.
    fn is_ready(&self) -> bool {
        true
    }

    /// Called once when the pipeline stops asking for messages: release anything
    /// received but not yet handed to the pipeline. Default: nothing.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Told once, before the first [`receive`](Source::receive), how the pipeline is
    /// set up; an `Err` (naming the setting that conflicts, the source's or the
    /// pipeline's) refuses the start.
    /// A source that keeps order per partition uses [`Plan::max_in_flight`] to bound what
    /// one partition may hold, so that a partition stuck behind a retry never takes every
    /// credit and starves the others (Kafka does). Default: accepts anything.
    fn prepare(&self, plan: &Plan) -> Result<(), BuildError> {
        let _ = plan;
        Ok(())
    }

    /// What the source shows of its parts (Kafka's partitions, an SQS queue) on the
    /// topology page, for the stall watch and the control surface's pauses; taken once,
    /// when the pipeline starts. Default: nothing to show.
    fn panel(&self) -> Option<Arc<dyn SourcePanel>> {
        None
    }

    /// `Err` once the source can no longer deliver: an internal thread died or stopped
    /// making progress. The pipeline asks about once a second; an `Err` stops it with
    /// [`PipelineError::Failed`](crate::PipelineError::Failed) naming the cause, and
    /// `/healthz` fails so that the process is restarted. Default: always `Ok`.
    fn liveness(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A `[source]` section: checked when the settings file is loaded, before anything
/// starts, so that a bad setting is reported first and in the file's terms
/// (`source.wait_time`). The connectors' configs (`SqsConfig`, `KafkaConfig`) check
/// every field; a section of a service's own can keep the default, which accepts all.
///
/// ```
/// use longshore::source::SourceSettings;
/// use longshore::BuildError;
///
/// #[derive(Debug, Default, serde::Deserialize)]
/// struct Source { queue: String }
///
/// impl SourceSettings for Source {
///     fn validate(&self) -> Result<(), BuildError> {
///         if self.queue.is_empty() {
///             return Err(BuildError::new("source.queue", "must not be empty"));
///         }
///         Ok(())
///     }
/// }
/// assert_eq!(Source::default().validate().unwrap_err().to_string(), "invalid source.queue: must not be empty");
/// ```
pub trait SourceSettings {
    /// Checks every setting; the error names the field as in the file (`source.<field>`).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first invalid field.
    fn validate(&self) -> Result<(), BuildError> {
        Ok(())
    }
}

/// How a pipeline is set up, as its source is told before the first receive (see
/// [`Source::prepare`]).
///
/// ```
/// use longshore::source::Plan;
///
/// let plan = Plan::default();
/// assert_eq!((plan.max_in_flight, plan.dead_letter, plan.source_concurrency), (0, false, 0));
/// assert!(!plan.ordered);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// The most messages the pipeline holds at once.
    pub max_in_flight: usize,
    /// Whether the pipeline has a dead-letter destination for final failures.
    pub dead_letter: bool,
    /// How many calls of [`Source::receive`] may be under way at once (the pipeline's
    /// `source_concurrency`).
    pub source_concurrency: usize,
    /// Messages are ordered by key (`partition_by`, or the source's own order): failed
    /// ones are retried in process, whatever [`Source::redelivery`] says.
    pub ordered: bool,
}

/// A function from a message, as received (before any decode step), to its ordering key:
/// messages with equal keys are handled one after the other, in the order received.
pub type PartitionBy<D, M> = std::sync::Arc<dyn Fn(&Message<D, M>) -> u64 + Send + Sync>;

/// Who retries a failed message that has attempts left. Either way the handler sees the
/// same thing: the message again, with its [`attempt`](Message::attempt) one higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Redelivery {
    /// The pipeline keeps the message and tries it again after the policy's backoff.
    #[default]
    InProcess,
    /// The acknowledger gets the message as failed with
    /// [`Message::redeliver_after`] set, and makes the broker deliver it again after that
    /// delay; the source sets the attempt from the broker's delivery count. An ordered
    /// pipeline still retries in process (redelivered, the message would come after its
    /// key's later messages): the source keeps what the pipeline holds from redelivery
    /// meanwhile, as it does a message in a long handler call.
    Broker,
}

/// Connector code told the outcome of messages after their last stage.
///
/// Called with the messages of one processor chunk or one batch, grouped by outcome;
/// each message comes exactly once. Calls may run concurrently from several stages.
/// The call should be quick: hand slow work (network deletes, commits) to a task of the
/// connector's own, holding no more than the pipeline's bounded in-flight messages.
///
/// An acknowledger works from each message's metadata (`M`, the source's
/// [`Source::Metadata`]) and the pipeline's bookkeeping (status, attempt,
/// [`Message::ack_ref`]), never from its data: the data may have been decoded into any
/// type `T` on the way, so every method is generic over it.
pub trait Acknowledger<M>: Send + Sync + 'static {
    /// Acknowledges `successful` messages as done and `failed` ones as failed.
    fn ack<T: Send + 'static>(
        &self,
        successful: Vec<Message<T, M>>,
        failed: Vec<Message<T, M>>,
    ) -> impl Future<Output = ()> + Send;

    /// Called once, after the last `ack`, when every stage has stopped: finish what the
    /// connector still holds (deletes not yet sent, a last commit). The pipeline is done,
    /// and its shutdown deadline met, only when this returns.
    fn flush(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// At shutdown, messages that will not be finished (waiting for a retry, or behind
    /// one of their key): they are **not** acknowledged, and the source should make them
    /// deliverable again at once (SQS: visibility 0). Default: nothing, which suits a
    /// source that redelivers whatever was not acknowledged (Kafka: never committed).
    fn release<T: Send + 'static>(&self, messages: Vec<Message<T, M>>) -> impl Future<Output = ()> + Send {
        drop(messages);
        async {}
    }

    /// Where a message came from, for the log line of a final failure that has no
    /// dead-letter destination (Kafka: `topic/partition@offset`). Default: `None`.
    fn origin<T>(&self, message: &Message<T, M>) -> Option<String> {
        let _ = message;
        None
    }

    /// Whether the source gains from hearing of each message as soon as it is done, when
    /// handlers are slow (50 ms or more a chunk), rather than once per chunk: SQS does
    /// (a finished message is deleted, not extended and redelivered by a kill); Kafka
    /// does not (it commits on an interval, and a commit never passes an unfinished
    /// record of the chunk anyway). Default: `false`.
    fn acknowledges_each(&self) -> bool {
        false
    }
}

/// A shared acknowledger: a source may keep one `Arc` and hand the pipeline another.
impl<M, A: Acknowledger<M>> Acknowledger<M> for std::sync::Arc<A> {
    fn ack<T: Send + 'static>(
        &self,
        successful: Vec<Message<T, M>>,
        failed: Vec<Message<T, M>>,
    ) -> impl Future<Output = ()> + Send {
        (**self).ack(successful, failed)
    }

    fn flush(&self) -> impl Future<Output = ()> + Send {
        (**self).flush()
    }

    fn release<T: Send + 'static>(&self, messages: Vec<Message<T, M>>) -> impl Future<Output = ()> + Send {
        (**self).release(messages)
    }

    fn origin<T>(&self, message: &Message<T, M>) -> Option<String> {
        (**self).origin(message)
    }

    fn acknowledges_each(&self) -> bool {
        (**self).acknowledges_each()
    }
}
