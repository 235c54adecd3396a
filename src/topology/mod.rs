//! The running stages behind a [`Pipeline`](crate::Pipeline). Private: users see the
//! builder and the handle, never the tasks.
//!
//! ```text
//!  producers ──chunks──▶ processors ──chunks──▶ batcher ──batches──▶ batch processors
//!     │  (take credits)       │ (no batcher: ack)                      │ (ack)
//!     └──────────── credits come back when a message is acknowledged ◀─┘
//! ```
//!
//! A producer only asks its source for as many messages as it holds credits for, and
//! every queue between stages is bounded (a channel's capacity, or the credits: the key
//! queue of `partition_by`), so the in-flight total never exceeds the credit limit.

mod acknowledge;
mod batch_dispatch;
mod batch_groups;
mod batch_processor;
mod batcher;
mod cancel;
pub(crate) mod credits;
pub(crate) mod fault;
mod guard;
mod key_queue;
mod log_limit;
mod pool;
mod processor;
mod producer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::failure::dead_letter::ErasedDeadLetter;
use crate::failure::rate_limit::Limiter;
use crate::failure::retry::{Decision, RetryPolicy};
use crate::handler::Handler;
use crate::message::{Message, Status};
use crate::metrics::PipelineMetrics;
use crate::source::{Acknowledger, Redelivery};
use tokio_util::sync::CancellationToken;

pub(crate) use batch_dispatch::{BatchDispatch, ByKey, SpawnBatchProcessor};
pub(crate) use batch_processor::BatchProcessor;
pub(crate) use batcher::BatcherStage;
pub(crate) use key_queue::KeyQueue;
pub(crate) use pool::Pool;
pub(crate) use processor::{BatcherRoute, Input, Processor};
pub(crate) use producer::{Dispatch, PartitionBy, Producer};

use crate::trace::Within;
pub(crate) use cancel::{ready_now, until_cancelled};
pub(crate) use guard::guarded;

use credits::Credits;

/// The stages' maps keyed by order keys (already hashes) or batch keys: foldhash hashes
/// such short keys several times faster than the standard library's SipHash, which a
/// batcher paid on every message whose key differs from the one before. foldhash resists
/// chosen colliding keys only minimally (its seeds are not the system's randomness);
/// these maps hold only keys with messages in flight (at most `max_in_flight`), and the
/// batcher scans its groups once a chunk anyway, so colliding keys would cost a chunk's
/// lookups a scan each, not quadratic time.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub(crate) use fault::Fault;
pub(crate) use log_limit::LogLimit;

/// What every stage shares: the user's handler, the source's acknowledger, the failure
/// policy, the meter.
pub(crate) struct Context<H: Handler, A> {
    pub(crate) handler: H,
    pub(crate) acknowledger: A,
    pub(crate) retry: RetryPolicy,
    pub(crate) redelivery: Redelivery,
    /// Messages are ordered by key (`partition_by`, or the source's own order).
    pub(crate) ordered: bool,
    pub(crate) dead_letter: Option<Box<dyn ErasedDeadLetter<H::Metadata>>>,
    /// Makes the messages' and batches' spans, when the pipeline traces.
    #[cfg(feature = "otel")]
    pub(crate) tracing: Option<Arc<dyn crate::trace::ErasedTracing<H::Metadata>>>,
    pub(crate) meter: Arc<Meter>,
    pub(crate) fault: Arc<Fault>,
    /// Cancelled when the shutdown deadline passes: every stage cuts short what it
    /// handles and hands back (releases) whatever it holds or still receives.
    pub(crate) abandon: CancellationToken,
    /// Final failures without a dead-letter destination: logged, at most once a second.
    pub(crate) discard_log: LogLimit,
}

impl<H, A> Context<H, A>
where
    H: Handler,
    A: Acknowledger<H::Metadata>,
{
    /// After a stage failed `message`: the delay after which the stage should try it
    /// again itself, or `None` when it goes on to be acknowledged (a final failure, or
    /// one the broker redelivers).
    pub(crate) fn retry_delay(&self, message: &mut Message<H::Item, H::Metadata>) -> Option<Duration> {
        let Status::Failed(failure) = message.status() else {
            return None;
        };
        let Decision::Retry(delay) = self.retry.decide(failure, message.attempt()) else {
            return None;
        };
        self.meter.add_retried();
        match self.redelivery {
            // Ordered, a message is tried again in process whoever else would: its key
            // stays held meanwhile. Handed back to the broker, it would come again after
            // its key's later messages had passed it. (A source whose broker redelivers
            // keeps what the pipeline holds from redelivery meanwhile, as it does a
            // message in a long handler call.)
            Redelivery::InProcess => Some(delay),
            Redelivery::Broker if self.ordered => Some(delay),
            Redelivery::Broker => {
                message.set_redeliver_after(delay);
                None
            }
        }
    }
}

/// The spans of handler calls (see [`crate::trace`]): none unless the pipeline traces.
impl<H: Handler, A> Context<H, A> {
    /// Starts `message`'s span, unless an earlier attempt did: what its handler runs within.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn message_span(&self, message: &mut Message<H::Item, H::Metadata>) -> Within {
        #[cfg(feature = "otel")]
        return self.tracing.as_deref().and_then(|tracing| {
            message.start_span(tracing);
            message.trace_context().cloned()
        });
        #[cfg(not(feature = "otel"))]
        None
    }

    /// Whether the pipeline traces: each message then has a span.
    pub(crate) fn traces(&self) -> bool {
        #[cfg(feature = "otel")]
        return self.tracing.is_some();
        #[cfg(not(feature = "otel"))]
        false
    }

    /// Starts a batch's span, linked to its messages' spans.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn batch_span(
        &self,
        info: &crate::BatchInfo,
        batch: &[Message<H::Item, H::Metadata>],
    ) -> Within {
        #[cfg(feature = "otel")]
        return self
            .tracing
            .as_deref()
            .map(|tracing| crate::trace::batch_span(tracing, info, batch));
        #[cfg(not(feature = "otel"))]
        None
    }

    /// Ends a batch's span with how its handler call went (`None`: cut short).
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn end_batch_span(&self, span: Within, handled: Option<&Result<(), crate::Failure>>) {
        #[cfg(feature = "otel")]
        if let Some(span) = span {
            crate::trace::end_batch_span(&span, handled);
        }
    }
}

/// The pipeline's counts, updated once per chunk or batch, never per message: its own
/// (for [`Stats`](crate::Stats)) and its Prometheus series.
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) credits: Credits,
    pub(crate) received: AtomicU64,
    pub(crate) successful: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) rate_limited_nanos: AtomicU64,
    /// The limit on fetching from the source.
    pub(crate) rate_limit: Arc<Limiter>,
    pub(crate) metrics: PipelineMetrics,
}

impl Meter {
    pub(crate) fn new(limit: usize, rate_limit: Arc<Limiter>, metrics: PipelineMetrics) -> Arc<Self> {
        Arc::new(Meter {
            credits: Credits::new(limit),
            received: AtomicU64::new(0),
            successful: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            released: AtomicU64::new(0),
            rate_limited_nanos: AtomicU64::new(0),
            rate_limit,
            metrics,
        })
    }

    /// Time spent waiting for `limiter`.
    pub(crate) fn add_rate_limited(&self, waited: Duration, limiter: &prometheus::Counter) {
        if !waited.is_zero() {
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            self.rate_limited_nanos.fetch_add(nanos, Ordering::Relaxed);
            limiter.inc_by(waited.as_secs_f64());
        }
    }

    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.received.inc_by(n as u64);
        self.metrics.in_flight.add(n as i64);
    }

    pub(crate) fn add_retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        self.metrics.retries.inc();
    }

    pub(crate) fn add_dead_lettered(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.dead_lettered.inc_by(n as u64);
    }

    /// Final failures with no dead-letter destination.
    pub(crate) fn add_discarded(&self, n: usize) {
        self.discarded.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.discarded.inc_by(n as u64);
    }

    /// Messages handed back unacknowledged at shutdown: out of flight.
    pub(crate) fn add_released(&self, n: usize) {
        self.released.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.released.inc_by(n as u64);
        self.metrics.in_flight.sub(n as i64);
    }

    /// Messages acknowledged: out of flight. `failed` for good, `redelivered` failed and
    /// handed back to the broker for another delivery.
    pub(crate) fn add_settled(&self, successful: usize, failed: usize, redelivered: usize) {
        self.successful.fetch_add(successful as u64, Ordering::Relaxed);
        self.metrics.successful.inc_by(successful as u64);
        if failed > 0 {
            self.failed.fetch_add(failed as u64, Ordering::Relaxed);
            self.metrics.failed.inc_by(failed as u64);
        }
        if redelivered > 0 {
            self.redelivered.fetch_add(redelivered as u64, Ordering::Relaxed);
            self.metrics.redelivered.inc_by(redelivered as u64);
        }
        self.metrics
            .in_flight
            .sub((successful + failed + redelivered) as i64);
    }
}
