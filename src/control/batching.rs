//! Changing a running pipeline's batch sizes and timeouts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::control::changes::ChangeLog;
use crate::error::BuildError;

/// One batcher's size and timeout, read by its stage for each chunk it takes, so that a
/// change applies to the next messages.
#[derive(Debug)]
pub(crate) struct BatchSettings {
    size: AtomicUsize,
    timeout_nanos: AtomicU64,
    /// Told of each change: the batcher applies it to the batches it has open (one
    /// batcher per settings; a permit is kept when it is not waiting).
    changed: tokio::sync::Notify,
}

impl BatchSettings {
    pub(crate) fn new(size: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(BatchSettings {
            size: AtomicUsize::new(size),
            timeout_nanos: AtomicU64::new(nanos(timeout)),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Waits for the next change.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    pub(crate) fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_nanos.load(Ordering::Relaxed))
    }
}

/// The shortest batch timeout taken: below it every message would be a batch of its own,
/// its timer firing all the time.
pub(crate) const MIN_BATCH_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest batch timeout taken: a batch's messages stay unacknowledged while it
/// waits, and brokers take back what is held too long (RabbitMQ closes the channel of a
/// delivery unacknowledged for 30 minutes; a Kafka consumer's lag alerts fire), so a
/// longer timeout would turn a slow trickle into redeliveries.
pub(crate) const MAX_BATCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Checks a batch timeout set at `field`.
pub(crate) fn check_timeout(field: &str, timeout: Duration) -> Result<(), BuildError> {
    if !(MIN_BATCH_TIMEOUT..=MAX_BATCH_TIMEOUT).contains(&timeout) {
        return Err(BuildError::new(
            field,
            format!(
                "must be from 1ms to 15m, got {}",
                humantime::format_duration(timeout)
            ),
        ));
    }
    Ok(())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Changes a running pipeline's batch sizes and timeouts; made by
/// [`Pipeline::batching`](crate::Pipeline::batching). Cheap to clone.
///
/// A change applies at once to the batches already open too: a lower size sends those
/// now at or above it, cut to it, in order; a shorter timeout brings their deadlines
/// forward (a longer one leaves them). The in-flight bound stays what it was at start,
/// so a batch larger than it allows is sent at its timeout.
///
/// ```
/// use std::time::Duration;
/// use longshore::source::memory::MemorySource;
/// use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline};
///
/// struct Sink;
/// impl Handler for Sink {
///     type Item = u64;
///     type Metadata = ();
///     async fn handle_message(&self, _: &mut Message<u64>) -> Result<(), BoxError> {
///         Ok(())
///     }
///     async fn handle_batch(&self, _: &mut [Message<u64>], _: &BatchInfo) -> Result<(), BoxError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pipeline = Pipeline::builder(MemorySource::from_iter(0..1_000u64), Sink)
///     .batcher(Batcher::new("db").batch_size(100))
///     .start()
///     .unwrap();
/// let batching = pipeline.batching();
/// batching.set_batch_size("db", 10).unwrap();
/// batching.set_batch_timeout("db", Duration::from_millis(50)).unwrap();
/// assert_eq!(batching.batch_size("db"), Some(10));
/// assert_eq!(batching.set_batch_size("db", 0).unwrap_err().to_string(), "invalid batchers.db.batch_size: must be at least 1, got 0");
/// pipeline.wait().await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Batching {
    pub(crate) batchers: Arc<[(Arc<str>, Arc<BatchSettings>)]>,
    pub(crate) changes: Arc<ChangeLog>,
}

impl Batching {
    fn settings(&self, batcher: &str, field: &str) -> Result<&BatchSettings, BuildError> {
        self.batchers
            .iter()
            .find(|(name, _)| &**name == batcher)
            .map(|(_, settings)| &**settings)
            .ok_or_else(|| BuildError::new(format!("batchers.{batcher}.{field}"), "no batcher of that name"))
    }

    /// Sets batcher `batcher`'s batch size, at least 1.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when no batcher has that name or the size is 0.
    pub fn set_batch_size(&self, batcher: &str, size: usize) -> Result<(), BuildError> {
        let settings = self.settings(batcher, "batch_size")?;
        if size == 0 {
            return Err(BuildError::at_least(
                format!("batchers.{batcher}.batch_size"),
                1,
                0,
            ));
        }
        let was = settings.size.swap(size, Ordering::Relaxed);
        settings.changed.notify_one();
        self.changes
            .record(&format!("batchers.{batcher}.batch_size"), was, size);
        Ok(())
    }

    /// Sets batcher `batcher`'s batch timeout, from 1 ms to 15 min.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when no batcher has that name or the timeout is out of bounds.
    pub fn set_batch_timeout(&self, batcher: &str, timeout: Duration) -> Result<(), BuildError> {
        let settings = self.settings(batcher, "batch_timeout")?;
        check_timeout(&format!("batchers.{batcher}.batch_timeout"), timeout)?;
        let was = Duration::from_nanos(settings.timeout_nanos.swap(nanos(timeout), Ordering::Relaxed));
        settings.changed.notify_one();
        self.changes.record(
            &format!("batchers.{batcher}.batch_timeout"),
            humantime::format_duration(was),
            humantime::format_duration(timeout),
        );
        Ok(())
    }

    /// Batcher `batcher`'s batch size now, if there is such a batcher.
    pub fn batch_size(&self, batcher: &str) -> Option<usize> {
        self.settings(batcher, "batch_size").ok().map(BatchSettings::size)
    }

    /// Batcher `batcher`'s batch timeout now, if there is such a batcher.
    pub fn batch_timeout(&self, batcher: &str) -> Option<Duration> {
        self.settings(batcher, "batch_timeout")
            .ok()
            .map(BatchSettings::timeout)
    }
}
