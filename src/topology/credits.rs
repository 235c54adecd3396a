//! Demand as credits: the pipeline's bound on messages received and not yet acknowledged.
//!
//! A producer takes credits before it asks its source for messages, exactly as many as it
//! asks for; an acknowledgement gives them back. So whatever the backlog, the pipeline
//! never holds more than `limit` messages.

use tokio::sync::Semaphore;

#[derive(Debug)]
pub(crate) struct Credits {
    free: Semaphore,
    limit: usize,
}

impl Credits {
    pub(crate) fn new(limit: usize) -> Self {
        Credits {
            free: Semaphore::new(limit),
            limit,
        }
    }

    /// Waits until at least `min` credits are free, then takes up to `max` of them.
    /// Cancel safe: dropped while waiting, it takes nothing.
    pub(crate) async fn take(&self, min: usize, max: usize) -> usize {
        let min = min.clamp(1, self.limit);
        let Ok(taken) = self.free.acquire_many(min as u32).await else {
            unreachable!("the credit semaphore is never closed");
        };
        taken.forget();
        min + self.take_extra(min, max)
    }

    /// Takes up to `max` credits if at least `min` are free now, without waiting.
    pub(crate) fn try_take(&self, min: usize, max: usize) -> Option<usize> {
        let min = min.clamp(1, self.limit);
        self.free.try_acquire_many(min as u32).ok()?.forget();
        Some(min + self.take_extra(min, max))
    }

    /// Takes what is free of the `max - min` credits beyond the `min` taken.
    fn take_extra(&self, min: usize, max: usize) -> usize {
        let extra = self.free.available_permits().min(max.saturating_sub(min));
        match self.free.try_acquire_many(extra as u32) {
            Ok(more) if extra > 0 => {
                more.forget();
                extra
            }
            _ => 0,
        }
    }

    /// Gives back `n` credits: messages acknowledged, or asked for and not received.
    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 {
            self.free.add_permits(n);
        }
    }

    /// Messages received and not yet acknowledged.
    pub(crate) fn in_flight(&self) -> usize {
        self.limit - self.free.available_permits().min(self.limit)
    }

    /// Messages the pipeline may still ask for: its demand.
    pub(crate) fn demand(&self) -> usize {
        self.limit - self.in_flight()
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_what_is_free_up_to_max_and_never_more_than_the_limit() {
        let credits = Credits::new(10);
        assert_eq!(credits.take(2, 4).await, 4);
        assert_eq!(credits.take(2, 100).await, 6);
        assert_eq!(credits.in_flight(), 10);
        assert_eq!(credits.demand(), 0);

        let waiting = credits.take(3, 3);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        credits.give_back(2);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        credits.give_back(1);
        assert_eq!(waiting.await, 3);

        assert_eq!(credits.try_take(1, 1), None);
        credits.give_back(5);
        assert_eq!(
            credits.try_take(6, 6),
            None,
            "fewer free than the least asked for"
        );
        assert_eq!(credits.try_take(2, 4), Some(4));
        assert_eq!(credits.try_take(1, 4), Some(1));
        assert_eq!(credits.in_flight(), 10);
    }
}
