//! A broker's lasting refusal of what a source needs to deliver, told by its liveness.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::BoxError;

/// Since when, and why, a broker has refused what a source needs to deliver: the queue
/// deleted, a permission taken, the consumer or its group gone. Not a passing outage:
/// once it has lasted `limit`, [`Refusal::liveness`] (what the source's
/// [`liveness`](super::Source::liveness) returns) fails, so that the pipeline stops
/// with the cause, `/healthz` fails and the process is restarted, with the refusal seen.
/// A broker that cannot be reached is no refusal: that only makes the source not ready.
///
/// ```
/// use std::time::Duration;
/// use longshore::source::Refusal;
///
/// let refusal = Refusal::new("nats", Duration::ZERO);
/// assert!(refusal.liveness().is_ok());
/// refusal.refused("consumer not found");
/// let error = refusal.liveness().unwrap_err().to_string();
/// assert!(error.starts_with("nats has refused the consumer for"), "{error}");
/// assert!(error.ends_with(": consumer not found"), "{error}");
/// refusal.accepted();
/// assert!(refusal.liveness().is_ok());
/// ```
#[derive(Debug)]
pub struct Refusal {
    broker: &'static str,
    limit: Duration,
    since: Mutex<Option<(Instant, String)>>,
}

impl Refusal {
    /// No refusal yet, of `broker` (named in the error), tolerated for `limit`.
    pub fn new(broker: &'static str, limit: Duration) -> Self {
        Refusal {
            broker,
            limit,
            since: Mutex::new(None),
        }
    }

    /// The broker refused, saying `why`: the refusal lasts from the first time, until
    /// [`Refusal::accepted`].
    pub fn refused(&self, why: impl std::fmt::Display) {
        self.lock()
            .get_or_insert_with(|| (Instant::now(), why.to_string()));
    }

    /// The broker served the source again (or failed it otherwise than by a refusal).
    pub fn accepted(&self) {
        *self.lock() = None;
    }

    /// `Err` once the broker has refused for `limit`, naming how long and why.
    pub fn liveness(&self) -> Result<(), BoxError> {
        match &*self.lock() {
            Some((since, why)) if since.elapsed() >= self.limit => Err(format!(
                "{} has refused the consumer for {:?}: {why}",
                self.broker,
                since.elapsed()
            )
            .into()),
            _ => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        // Only plain values are written under it: a poisoned one holds a whole state.
        self.since.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
