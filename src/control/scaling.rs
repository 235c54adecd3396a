//! Resizing a running pipeline's stages: its processors and each batcher's batch
//! processors.

use std::sync::Arc;

use tokio::sync::watch;

use crate::control::changes::ChangeLog;
use crate::error::BuildError;

/// The most tasks one stage may be resized to: far beyond what a process uses, short of
/// a typo's worth of tasks.
pub const MAX_TASKS: usize = 4096;

/// Resizes a running pipeline's processors and batch processors; made by
/// [`Pipeline::scaling`](crate::Pipeline::scaling). Cheap to clone.
///
/// Growing starts tasks at once. Shrinking asks the newest tasks to retire: each takes no
/// more messages, finishes what it holds (its chunk or batch, and its retries), then
/// ends, so that nothing is lost, handled twice or reordered. With `partition_by`, a key
/// moves to another processor only once its queue is empty, and likewise an ordered
/// batcher's key moves to another batch processor only once its batches there are
/// finished (retries included), while the other keys flow on. The in-flight bound stays what it was at start: more tasks
/// than it feeds wait for credits. `longshore_stage_tasks` counts the tasks running.
///
/// ```
/// use longshore::source::memory::MemorySource;
/// use longshore::{BatchInfo, Batcher, BoxError, Handler, Message, Pipeline, Processors};
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
/// let pipeline = Pipeline::builder(MemorySource::from_iter(0..10_000u64), Sink)
///     .processors(Processors::new(2))
///     .batcher(Batcher::new("db"))
///     .start()
///     .unwrap();
/// let scaling = pipeline.scaling();
/// scaling.set_processors(4).unwrap();
/// scaling.set_batch_concurrency("db", 2).unwrap();
/// assert_eq!(scaling.processors(), 4);
/// assert_eq!(scaling.set_processors(0).unwrap_err().to_string(), "invalid processors.concurrency: must be at least 1, got 0");
/// assert_eq!(pipeline.wait().await.unwrap().successful, 10_000);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Scaling {
    pub(crate) processors: Arc<watch::Sender<usize>>,
    pub(crate) batchers: Arc<[(Arc<str>, watch::Sender<usize>)]>,
    pub(crate) changes: Arc<ChangeLog>,
}

impl Scaling {
    /// Sets how many processors run, from 1 to [`MAX_TASKS`].
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when the count is out of range.
    pub fn set_processors(&self, concurrency: usize) -> Result<(), BuildError> {
        resize(
            &self.processors,
            "processors.concurrency",
            concurrency,
            &self.changes,
        )
    }

    /// Sets how many batch processors batcher `batcher` runs, from 1 to [`MAX_TASKS`].
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when no batcher has that name or the count is out of range.
    pub fn set_batch_concurrency(&self, batcher: &str, concurrency: usize) -> Result<(), BuildError> {
        let field = format!("batchers.{batcher}.concurrency");
        let size = self
            .batcher(batcher)
            .ok_or_else(|| BuildError::new(&field, "no batcher of that name"))?;
        resize(size, &field, concurrency, &self.changes)
    }

    /// How many processors are asked for now (retiring ones finishing their work are
    /// not counted; `longshore_stage_tasks` counts them).
    pub fn processors(&self) -> usize {
        *self.processors.borrow()
    }

    /// How many batch processors batcher `batcher` is asked to run now, if there is such
    /// a batcher.
    pub fn batch_concurrency(&self, batcher: &str) -> Option<usize> {
        self.batcher(batcher).map(|size| *size.borrow())
    }

    fn batcher(&self, name: &str) -> Option<&watch::Sender<usize>> {
        self.batchers
            .iter()
            .find(|(batcher, _)| &**batcher == name)
            .map(|(_, size)| size)
    }
}

/// Checks a task count for `field`: from 1 to [`MAX_TASKS`].
pub(crate) fn check(field: &str, to: usize) -> Result<(), BuildError> {
    if to == 0 {
        return Err(BuildError::at_least(field, 1, 0));
    }
    if to > MAX_TASKS {
        return Err(BuildError::new(
            field,
            format!("must be at most {MAX_TASKS}, got {to}"),
        ));
    }
    Ok(())
}

fn resize(
    size: &watch::Sender<usize>,
    field: &str,
    to: usize,
    changes: &ChangeLog,
) -> Result<(), BuildError> {
    check(field, to)?;
    let was = size.send_replace(to);
    changes.record(field, was, to);
    Ok(())
}
