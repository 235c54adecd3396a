//! A limit on how often a log line repeats: a flood of failures logs one line a second,
//! with how many went unlogged in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct LogLimit {
    every: Duration,
    last: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl LogLimit {
    pub(crate) fn new(every: Duration) -> Self {
        LogLimit {
            every,
            last: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }
    }

    /// For an event about `n` messages: `Some(unlogged)` when it may be logged now (with
    /// the count of messages not logged since the last line), `None` when it is counted
    /// instead.
    pub(crate) fn permit(&self, n: usize) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            self.unlogged.fetch_add(n as u64, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.unlogged.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_counts_until_the_interval_passed() {
        let limit = LogLimit::new(Duration::from_millis(50));
        assert_eq!(limit.permit(1), Some(0));
        assert_eq!(limit.permit(3), None);
        assert_eq!(limit.permit(2), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.permit(1), Some(5));
    }
}
