//! The queue for the topology page and the stall watch: visible messages, the oldest
//! one's age, what this source holds, and how long it has held messages and
//! acknowledged none. One queue per source: pausing it is pausing the pipeline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longshore::source::{SourcePanel, SourcePart};

use crate::held::Held;
use crate::queue::Queue;
use crate::receiver::Receiver;

/// When the source last made progress: acknowledged a message, or had nothing to do.
#[derive(Debug)]
pub(crate) struct Progress(Mutex<Instant>);

impl Default for Progress {
    fn default() -> Self {
        Progress(Mutex::new(Instant::now()))
    }
}

impl Progress {
    /// A message was acknowledged (deleted, or handed back).
    pub(crate) fn made(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// How long it has had work and made no progress; zero when it has none.
    fn stalled_for(&self, has_work: bool) -> Duration {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !has_work {
            *last = Instant::now();
        }
        last.elapsed()
    }
}

pub(crate) struct SqsPanel {
    pub(crate) queue: Arc<Queue>,
    pub(crate) held: Arc<Held>,
    pub(crate) receiver: Arc<Receiver>,
}

impl SourcePanel for SqsPanel {
    fn parts(&self) -> Vec<SourcePart> {
        let metrics = &self.queue.metrics;
        let visible = u64::try_from(metrics.visible.get()).unwrap_or(0);
        // What the pipeline holds, not what is visible: the queue's depth is every
        // consumer's, and an idle replica (its FIFO groups taken by another) has nothing
        // to finish. Nor what a poll brought that waits for demand: a paused pipeline
        // holding only those is no stall.
        let held = self.held.len().saturating_sub(self.receiver.arrived());
        let stalled_for = self.queue.progress.stalled_for(held > 0);
        vec![SourcePart::new(&*self.queue.name)
            .waiting(visible)
            .waiting_seconds(metrics.oldest_age.get() as f64)
            .in_flight(held as u64)
            .stalled_for(stalled_for)]
    }

    fn check_pause(&self, part: &str) -> Result<(), String> {
        Err(format!(
            "{part}: an SQS source reads one queue; pause the pipeline instead"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_counts_from_the_last_progress_and_only_while_there_is_work() {
        let progress = Progress::default();
        *progress.0.lock().unwrap() -= Duration::from_secs(90);
        assert!(progress.stalled_for(true) >= Duration::from_secs(90));
        progress.made();
        assert!(progress.stalled_for(true) < Duration::from_secs(1));
        *progress.0.lock().unwrap() -= Duration::from_secs(90);
        assert!(
            progress.stalled_for(false) < Duration::from_secs(1),
            "nothing to do is no stall"
        );
        assert!(
            progress.stalled_for(true) < Duration::from_secs(1),
            "and the count starts again"
        );
    }
}
