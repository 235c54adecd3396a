//! The record of changes made to a running pipeline: each logged, counted in
//! `longshore_control_changes_total`, and the last ones kept for
//! [`Pipeline::changes`](crate::Pipeline::changes).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::metrics::ChangeCounts;

/// The most changes kept: enough to see what was done lately, never a growing list.
const KEPT: usize = 100;

/// One change made to a running pipeline: which setting, when, from what to what.
///
/// `setting` is named as in the configuration (`processors.concurrency`,
/// `batchers.db.batch_size`, `rate_limit`, `paused`); the values are as the setting
/// prints them (`4`, `250ms`, `500 per 1s, burst 50`, `none`).
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
/// let pipeline = Pipeline::builder(MemorySource::from_iter(0..100u64), Ignore).start().unwrap();
/// pipeline.pause_switch().pause();
/// pipeline.pause_switch().resume();
/// let changes = pipeline.changes();
/// assert_eq!(changes.len(), 2);
/// assert_eq!((changes[0].setting.as_str(), changes[0].from.as_str(), changes[0].to.as_str()), ("paused", "false", "true"));
/// pipeline.wait().await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// When it was made.
    pub at: SystemTime,
    /// The setting changed, named as in the configuration.
    pub setting: String,
    /// Its value before.
    pub from: String,
    /// Its value after.
    pub to: String,
}

/// Where a pipeline's control handles record their changes.
#[derive(Debug)]
pub(crate) struct ChangeLog {
    pipeline: Arc<str>,
    kept: Mutex<VecDeque<Change>>,
    counts: ChangeCounts,
}

impl ChangeLog {
    pub(crate) fn new(pipeline: &str) -> Arc<Self> {
        Arc::new(ChangeLog {
            pipeline: Arc::from(pipeline),
            kept: Mutex::new(VecDeque::new()),
            counts: ChangeCounts::new(pipeline),
        })
    }

    /// Records that `setting` went from `from` to `to`; nothing when they are equal.
    pub(crate) fn record(&self, setting: &str, from: impl fmt::Display, to: impl fmt::Display) {
        self.record_counted_as(setting, setting, from, to);
    }

    /// As [`ChangeLog::record`], counted in the metric under `counted_as`: a setting
    /// named by what an operator typed (a source part) must not make a series of its own.
    pub(crate) fn record_counted_as(
        &self,
        counted_as: &str,
        setting: &str,
        from: impl fmt::Display,
        to: impl fmt::Display,
    ) {
        let (from, to) = (from.to_string(), to.to_string());
        if from == to {
            return;
        }
        tracing::info!(pipeline = %self.pipeline, setting, %from, %to, "pipeline setting changed");
        self.counts.inc(counted_as);
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(Change {
            at: SystemTime::now(),
            setting: setting.to_owned(),
            from,
            to,
        });
    }

    /// The changes kept, oldest first.
    pub(crate) fn list(&self) -> Vec<Change> {
        let kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.iter().cloned().collect()
    }
}
