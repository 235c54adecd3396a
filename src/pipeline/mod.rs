//! A running pipeline: its builder, its stage settings, and the handle that reports on
//! it and shuts it down.

mod builder;
pub(crate) mod config;
mod signal;
pub(crate) mod stall;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::batching::Batching;
use crate::control::changes::{Change, ChangeLog};
use crate::control::pause::PauseSwitch;
use crate::control::scaling::Scaling;
use crate::control::Control;
use crate::error::{DeadlineExceeded, PipelineError};
use crate::failure::rate_limit::RateLimits;
use crate::handler::Handler;
use crate::metrics::health::PipelineHealth;
use crate::source::Source;
use crate::topology::{Fault, Meter};

pub use builder::PipelineBuilder;
pub use signal::shutdown_signal;

/// A running pipeline.
///
/// It runs until its source is exhausted or until it is shut down. Shutting down stops
/// demand, lets processors finish what they hold, flushes partial batches and
/// acknowledges everything, all within the shutdown deadline; whatever is unfinished
/// then is left unacknowledged, for the broker to redeliver.
///
/// ```text
///  shutdown ─▶ producers stop asking ─▶ processors drain ─▶ batchers flush ─▶ last acks ─▶ done
///                                                                 deadline passed? abort: no ack
/// ```
///
/// # Examples
///
/// ```
/// use longshore::{source::memory::MemorySource, BoxError, Handler, Message, Pipeline, Processors};
///
/// struct Double;
/// impl Handler for Double {
///     type Item = u64;
///     type Metadata = ();
///     async fn handle_message(&self, message: &mut Message<u64>) -> Result<(), BoxError> {
///         *message.data_mut() *= 2;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let source = MemorySource::from_iter(0..1_000u64);
/// let counts = source.counts();
/// let pipeline = Pipeline::builder(source, Double)
///     .processors(Processors::new(2))
///     .start()?;
/// let summary = pipeline.wait().await.expect("the pipeline ends cleanly");
/// assert_eq!(summary.successful, 1_000);
/// assert_eq!(counts.successful(), 1_000);
/// # Ok(())
/// # }
/// ```
pub struct Pipeline {
    name: String,
    meter: Arc<Meter>,
    rate_limits: RateLimits,
    batching: Batching,
    scaling: Scaling,
    pause: PauseSwitch,
    changes: Arc<ChangeLog>,
    stalls: Arc<stall::Stalls>,
    /// What the source shows of its parts (see [`Source::panel`](crate::Source::panel)).
    source_panel: Option<Arc<dyn crate::source::SourcePanel>>,
    stop: CancellationToken,
    /// Cancelled at the deadline: the stages hand back what they hold.
    abandon: CancellationToken,
    tasks: JoinSet<()>,
    deadline: Duration,
    fault: Arc<Fault>,
    /// Counts in `/readyz` while the pipeline lives; a [`Control`] sees it end.
    health: Arc<PipelineHealth>,
}

impl Pipeline {
    /// Starts configuring a pipeline reading from `source` and handling with `handler`.
    /// The handler gets the source's data as it is, unless a decode step is set with
    /// [`PipelineBuilder::decode`].
    pub fn builder<S, H>(source: S, handler: H) -> PipelineBuilder<S, H>
    where
        S: Source,
        H: Handler<Metadata = S::Metadata>,
    {
        PipelineBuilder::new(source, handler)
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A live view of the pipeline's counts, cheap to clone and to read from another task.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.meter.clone())
    }

    /// A handle to change the pipeline's rate limits while it runs. Cheap to clone.
    pub fn rate_limits(&self) -> RateLimits {
        self.rate_limits.clone()
    }

    /// A handle to change the batchers' sizes and timeouts while the pipeline runs (see
    /// [`Batching`]). Cheap to clone.
    pub fn batching(&self) -> Batching {
        self.batching.clone()
    }

    /// A handle to resize the processors and batch processors while the pipeline runs
    /// (see [`Scaling`]). Cheap to clone.
    pub fn scaling(&self) -> Scaling {
        self.scaling.clone()
    }

    /// The pipeline's controls and counts, to put on a
    /// [`ControlSurface`](crate::control::ControlSurface). Cheap to clone.
    pub fn control(&self) -> Control {
        Control {
            name: Arc::from(self.name.as_str()),
            scaling: self.scaling.clone(),
            batching: self.batching.clone(),
            rate_limits: self.rate_limits.clone(),
            pause: self.pause.clone(),
            changes: self.changes.clone(),
            stats: self.stats(),
            stalls: self.stalls.clone(),
            source: self.source_panel.clone(),
            running: Arc::downgrade(&self.health),
        }
    }

    /// The last changes made to the running pipeline through its control handles (at
    /// most 100, oldest first; see [`Change`]).
    pub fn changes(&self) -> Vec<Change> {
        self.changes.list()
    }

    /// A handle to pause and resume fetching while the pipeline runs (see
    /// [`PauseSwitch`]). Cheap to clone.
    pub fn pause_switch(&self) -> PauseSwitch {
        self.pause.clone()
    }

    /// A token that starts the shutdown when cancelled: the producers stop asking for
    /// messages. Await [`Pipeline::wait`] (or call [`Pipeline::shutdown`]) for the drain.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until every stage has stopped: the source was exhausted, or a shutdown
    /// started with [`Pipeline::stop_token`] has drained. No deadline applies, unless the
    /// pipeline fails: then it shuts itself down within its deadline.
    ///
    /// # Errors
    ///
    /// [`PipelineError::Failed`] when a stage, the acknowledger or the source failed (the
    /// pipeline stopped itself, within its deadline; the failure is reported even if
    /// that drain missed the deadline).
    pub async fn wait(mut self) -> Result<Summary, PipelineError> {
        tokio::select! {
            () = self.fault.join_all(&mut self.tasks) => self.outcome(),
            () = self.fault.raised() => self.shutdown().await,
        }
    }

    /// Shuts down gracefully: stops demand, drains, flushes, acknowledges, within the
    /// shutdown deadline. If the deadline passes, handler calls still running are cut
    /// short and what is not finished is handed back to the source unacknowledged, within
    /// [`HAND_BACK_TIME`] more (see [`PipelineBuilder::shutdown_deadline`]).
    ///
    /// # Errors
    ///
    /// [`PipelineError::DeadlineExceeded`] when the drain did not finish in time.
    /// [`PipelineError::Failed`] when the pipeline had failed (see [`Pipeline::wait`]).
    pub async fn shutdown(mut self) -> Result<Summary, PipelineError> {
        self.stop.cancel();
        let deadline = self.deadline;
        let drained = tokio::time::timeout(deadline, self.fault.join_all(&mut self.tasks)).await;
        if drained.is_err() {
            let in_flight = self.meter.credits.in_flight();
            tracing::error!(pipeline = %self.name, in_flight, ?deadline, "shutdown deadline passed; handing back what is not finished");
            self.abandon.cancel();
            let handed_back =
                tokio::time::timeout(HAND_BACK_TIME, self.fault.join_all(&mut self.tasks)).await;
            if handed_back.is_err() {
                self.tasks.abort_all();
                while self.tasks.join_next().await.is_some() {}
            }
            let stranded = self.meter.credits.in_flight();
            if stranded > 0 {
                tracing::error!(pipeline = %self.name, stranded, "messages neither acknowledged nor handed back; the broker redelivers them after its own timeout");
            }
            if self.fault.cause().is_none() {
                return Err(DeadlineExceeded { in_flight, stranded }.into());
            }
        }
        self.outcome()
    }

    /// Runs until the source is exhausted or the process receives SIGTERM or ctrl-c, then
    /// shuts down within the deadline: the usual body of a service's `main`.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::shutdown`] and [`Pipeline::wait`].
    pub async fn run_until_signal(mut self) -> Result<Summary, PipelineError> {
        let stopped_by_itself = tokio::select! {
            () = shutdown_signal() => false,
            () = self.stop.cancelled() => false,
            () = self.fault.raised() => false,
            () = self.fault.join_all(&mut self.tasks) => true,
        };
        if stopped_by_itself {
            return self.outcome();
        }
        tracing::info!(pipeline = %self.name, "shutting down");
        self.shutdown().await
    }

    /// The summary, or the pipeline's failure: a failed pipeline never reports a clean end.
    fn outcome(&self) -> Result<Summary, PipelineError> {
        match self.fault.cause() {
            Some(cause) => Err(PipelineError::Failed {
                cause: cause.to_owned(),
            }),
            None => Ok(self.summary()),
        }
    }

    fn summary(&self) -> Summary {
        let stats = self.stats().get();
        Summary {
            received: stats.received,
            successful: stats.successful,
            failed: stats.failed,
            dead_lettered: stats.dead_lettered,
            redelivered: stats.redelivered,
            retried: stats.retried,
            released: stats.released,
        }
    }
}

/// The most a shutdown takes past its deadline: stages cut short, hand back what they
/// hold (SQS: one visibility change per ten messages), and the acknowledger flushes what
/// was finished. Whatever is still held then is left for the broker to redeliver.
pub const HAND_BACK_TIME: Duration = Duration::from_secs(5);

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("stats", &self.stats().get())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// What a pipeline did, once it has stopped.
///
/// It counts messages, each once per delivery: every delivery ends as exactly one of
/// `successful`, `failed`, `redelivered` or `released`, so that after a clean drain
/// `received = successful + failed + redelivered + released`. Retries in process do not
/// add deliveries (a message retried three times and then dead-lettered is one received,
/// one failed, two retried); a broker's redelivery (SQS) does (three deliveries: two
/// redelivered, one failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Deliveries received from the source.
    pub received: u64,
    /// Messages acknowledged as successful.
    pub successful: u64,
    /// Messages that failed for good: dead-lettered, or discarded with no destination.
    pub failed: u64,
    /// Of `failed`, those written to the dead-letter destination.
    pub dead_lettered: u64,
    /// Failed deliveries handed back to the broker to be delivered again, with their
    /// backoff (SQS's visibility timeout): a later delivery finishes them.
    pub redelivered: u64,
    /// Failed attempts followed by another attempt, in process or by the broker.
    pub retried: u64,
    /// Messages released unacknowledged at shutdown (they waited for a retry), to be
    /// delivered again.
    pub released: u64,
}

/// A live view of a pipeline's counts; made by [`Pipeline::stats`].
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Meter>);

impl StatsHandle {
    /// The counts now.
    pub fn get(&self) -> Stats {
        let meter = &self.0;
        Stats {
            received: meter.received.load(Ordering::Relaxed),
            successful: meter.successful.load(Ordering::Relaxed),
            failed: meter.failed.load(Ordering::Relaxed),
            redelivered: meter.redelivered.load(Ordering::Relaxed),
            retried: meter.retried.load(Ordering::Relaxed),
            dead_lettered: meter.dead_lettered.load(Ordering::Relaxed),
            discarded: meter.discarded.load(Ordering::Relaxed),
            released: meter.released.load(Ordering::Relaxed),
            rate_limited: Duration::from_nanos(meter.rate_limited_nanos.load(Ordering::Relaxed)),
            in_flight: meter.credits.in_flight(),
            demand: meter.credits.demand(),
            max_in_flight: meter.credits.limit(),
        }
    }
}

/// A pipeline's counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages received from the source.
    pub received: u64,
    /// Messages acknowledged as successful.
    pub successful: u64,
    /// Messages that failed for good: dead-lettered, or discarded with no destination.
    pub failed: u64,
    /// Failed deliveries handed back to the broker to be delivered again.
    pub redelivered: u64,
    /// Failed attempts followed by another attempt, in process or by the broker.
    pub retried: u64,
    /// Messages written to the dead-letter destination.
    pub dead_lettered: u64,
    /// Messages that failed for good with no dead-letter destination: acknowledged as
    /// failed, logged, and not delivered again.
    pub discarded: u64,
    /// Messages handed back to the source unacknowledged at shutdown (they waited for a
    /// retry, or behind one of their key), to be delivered again.
    pub released: u64,
    /// Time stages spent waiting for a rate limit, summed over stages.
    pub rate_limited: Duration,
    /// Messages received and not yet acknowledged.
    pub in_flight: usize,
    /// How many more messages the pipeline may ask its source for now.
    pub demand: usize,
    /// The most messages the pipeline may hold at once.
    pub max_in_flight: usize,
}
