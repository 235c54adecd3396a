//! Pausing a running pipeline: no fetch while paused, and what it holds finishes.

use std::sync::Arc;

use tokio::sync::watch;

use crate::control::changes::ChangeLog;

/// Pauses and resumes a running pipeline's fetching; made by [`Pipeline::pause_switch`].
/// Cheap to clone; usable from any task.
///
/// While paused the pipeline asks its source for nothing, and a fetch waiting on the
/// source is dropped (Kafka, files, memory: a caught-up source hands out nothing
/// more); everything it holds goes on to be handled and acknowledged, so that in flight
/// drains to zero. A source whose fetch under way leases messages away from the other
/// consumers (SQS, RabbitMQ, NATS, Redis, PostgreSQL: see
/// [`Source::drops_fetch_on_pause`](crate::Source::drops_fetch_on_pause)) completes it,
/// and what it brings, one fetch's demand at most, is handled. Retries, batches and shutdown go on as usual; a shutdown
/// while paused drains and stops. `longshore_paused` is 1 meanwhile.
///
/// ```
/// use longshore::source::memory::MemorySource;
/// use longshore::{BoxError, Handler, Message, Pipeline};
///
/// struct Ignore;
/// impl Handler for Ignore {
///     type Item = u64;
///     type Metadata = ();
///     async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pipeline = Pipeline::builder(MemorySource::from_iter(0..1_000u64), Ignore).start().unwrap();
/// let switch = pipeline.pause_switch();
/// switch.pause();
/// assert!(switch.is_paused());
/// switch.resume();
/// assert_eq!(pipeline.wait().await.unwrap().successful, 1_000);
/// # }
/// ```
///
/// [`Pipeline::pause_switch`]: crate::Pipeline::pause_switch
#[derive(Debug, Clone)]
pub struct PauseSwitch {
    paused: Arc<watch::Sender<bool>>,
    gauge: prometheus::IntGauge,
    changes: Arc<ChangeLog>,
}

impl PauseSwitch {
    pub(crate) fn new(gauge: prometheus::IntGauge, changes: Arc<ChangeLog>) -> Self {
        let (paused, _) = watch::channel(false);
        PauseSwitch {
            paused: Arc::new(paused),
            gauge,
            changes,
        }
    }

    /// Stops fetching: the producers ask the source for nothing until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.set(true);
    }

    /// Fetches again.
    pub fn resume(&self) {
        self.set(false);
    }

    /// Whether the pipeline is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    fn set(&self, paused: bool) {
        let mut was = paused;
        // The gauge is set under the switch's lock: concurrent calls leave it as the
        // switch is.
        self.paused.send_modify(|state| {
            was = std::mem::replace(state, paused);
            self.gauge.set(i64::from(paused));
        });
        self.changes.record("paused", was, paused);
    }

    /// What the producers watch.
    pub(crate) fn watch(&self) -> Paused {
        Paused(self.paused.subscribe())
    }
}

/// A producer's view of the switch.
#[derive(Debug, Clone)]
pub(crate) struct Paused(watch::Receiver<bool>);

impl Paused {
    /// Whether fetching is paused now.
    pub(crate) fn is_paused(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until fetching is not paused (at once if it is not).
    pub(crate) async fn resumed(&mut self) {
        // The sender lives as long as the pipeline's handle, and a handle dropped leaves
        // the pipeline as it was: run on.
        let _ = self.0.wait_for(|paused| !*paused).await;
    }

    /// Waits until fetching is paused; never returns if the switch is gone.
    pub(crate) async fn paused(&mut self) {
        if self.0.wait_for(|paused| *paused).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
