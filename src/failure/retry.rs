//! How failed messages are retried: attempts, exponential backoff with jitter, and the
//! errors a handler returns to say a failure is permanent or wants its own delay.

use std::fmt;
use std::time::Duration;

use crate::error::{BoxError, BuildError};
use crate::message::{Failure, FailureKind};

/// How many times a failed message is tried, and how long it waits between tries.
///
/// The delay before attempt `n + 1` is `initial_backoff × multiplier^(n - 1)`, capped at
/// `max_backoff`, then reduced by a random fraction of at most `jitter` so that many
/// messages failing together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use longshore::RetryPolicy;
///
/// let policy = RetryPolicy::new(5)
///     .initial_backoff(Duration::from_millis(100))
///     .max_backoff(Duration::from_secs(10))
///     .jitter(0.0);
/// assert_eq!(policy.backoff(1), Duration::from_millis(100)); // before attempt 2
/// assert_eq!(policy.backoff(3), Duration::from_millis(400)); // before attempt 4
/// assert_eq!(RetryPolicy::none().max_attempts(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    max_attempts: u32,
    #[serde(with = "humantime_serde")]
    initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    max_backoff: Duration,
    multiplier: f64,
    jitter: f64,
    max_deliveries: Option<u32>,
}

/// Deliveries a message may have, unless set: as RabbitMQ's quorum queues allow.
const DEFAULT_MAX_DELIVERIES: u32 = 20;

impl Default for RetryPolicy {
    /// No retries: a failure is final at once.
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts in all (the first included), with backoff from
    /// 100 ms doubling to at most 30 s, and a jitter of 0.2.
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            max_deliveries: None,
        }
    }

    /// One attempt: failures are final at once (the default).
    pub fn none() -> Self {
        RetryPolicy::new(1)
    }

    /// The delay before the second attempt (default 100 ms).
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The longest delay between attempts (default 30 s).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// How much each delay grows over the previous one (default 2.0).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The largest fraction, from 0.0 to 1.0, taken off a delay at random (default 0.2).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The most deliveries of one message, from a source whose broker redelivers and
    /// counts (its [`Redelivery`](crate::source::Redelivery) is `Broker`, its attempt the
    /// delivery count: SQS standard queues, NATS, PostgreSQL). A message delivered more
    /// often is failed for good before `prepare_messages` and `handle_message` (to
    /// `handle_failed` and the dead-letter destination): its last deliveries ended with
    /// no outcome at all (its consumer killed, out of memory, hung past its lease), and
    /// handling it again would likely end the same, with every message in flight beside
    /// it. A decode step that kills the process runs before this check. At least
    /// `max_attempts`; default 20, or `max_attempts` if higher.
    ///
    /// ```
    /// use longshore::RetryPolicy;
    ///
    /// assert_eq!(RetryPolicy::new(3).max_deliveries(), 20);
    /// assert_eq!(RetryPolicy::new(3).with_max_deliveries(5).max_deliveries(), 5);
    /// assert_eq!(RetryPolicy::new(50).max_deliveries(), 50);
    /// assert!(RetryPolicy::new(5).with_max_deliveries(4).validate().is_err());
    /// ```
    pub fn max_deliveries(&self) -> u32 {
        self.max_deliveries
            .unwrap_or(DEFAULT_MAX_DELIVERIES.max(self.max_attempts))
    }

    /// Sets [`RetryPolicy::max_deliveries`].
    pub fn with_max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = Some(deliveries);
        self
    }

    /// The failure of a message delivered `attempt` times, more than
    /// [`RetryPolicy::max_deliveries`] allows: `None` within it.
    pub(crate) fn over_deliveries(&self, attempt: u32) -> Option<Failure> {
        let limit = self.max_deliveries();
        (attempt > limit).then(|| {
            Failure::new(
                FailureKind::Deliveries,
                Permanent::new(format!(
                    "delivered {attempt} times, over retry.max_deliveries ({limit}): its last deliveries ended with no outcome (its consumer killed, out of memory or hung), so it is not handled again"
                ))
                .into(),
            )
        })
    }

    /// The delay, before jitter, after failed attempt `attempt` (counted from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = secs.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_backoff)
    }

    /// The delay after failed attempt `attempt`, with jitter.
    pub(crate) fn jittered_backoff(&self, attempt: u32) -> Duration {
        self.backoff(attempt).mul_f64(1.0 - self.jitter * fastrand::f64())
    }

    /// What to do with a message that failed `failure` on attempt `attempt`.
    pub(crate) fn decide(&self, failure: &Failure, attempt: u32) -> Decision {
        if matches!(
            failure.kind(),
            FailureKind::Routing | FailureKind::Decode | FailureKind::Deliveries
        ) || failure.error().is::<Permanent>()
        {
            return Decision::Final;
        }
        if attempt >= self.max_attempts {
            return Decision::Final;
        }
        match failure.error().downcast_ref::<RetryAfter>() {
            Some(retry) => Decision::Retry(retry.delay),
            None => Decision::Retry(self.jittered_backoff(attempt)),
        }
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.max_attempts == 0 {
            return Err(BuildError::at_least("retry.max_attempts", 1, 0));
        }
        if let Some(deliveries) = self.max_deliveries.filter(|&d| d < self.max_attempts) {
            return Err(BuildError::new(
                "retry.max_deliveries",
                format!(
                    "must be at least retry.max_attempts ({}), got {deliveries}",
                    self.max_attempts
                ),
            ));
        }
        if self.multiplier.is_nan() || self.multiplier < 1.0 {
            return Err(BuildError::new(
                "retry.multiplier",
                format!("must be at least 1.0, got {}", self.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(BuildError::new(
                "retry.jitter",
                format!("must be from 0.0 to 1.0, got {}", self.jitter),
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(BuildError::new(
                "retry.max_backoff",
                format!(
                    "must be at least retry.initial_backoff ({:?})",
                    self.initial_backoff
                ),
            ));
        }
        Ok(())
    }
}

/// What happens to a failed message next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Try again after this delay.
    Retry(Duration),
    /// No more attempts: `handle_failed`, dead letter, acknowledge as failed.
    Final,
}

/// An error that retrying will not cure (a malformed payload, a rejected value): the
/// message fails at once, whatever attempts remain.
///
/// ```
/// use longshore::{BoxError, Permanent};
///
/// fn parse(payload: &str) -> Result<u32, BoxError> {
///     payload.parse().map_err(|e| Permanent::new(e).into())
/// }
/// assert_eq!(parse("x").unwrap_err().to_string(), "invalid digit found in string");
/// ```
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// Marks `error` as permanent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Permanent(error.into())
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// An error asking to be retried after a delay of its own (a `Retry-After` from an HTTP
/// sink, say), instead of the policy's backoff. Attempts are still limited by the policy.
///
/// ```
/// use std::time::Duration;
/// use longshore::{BoxError, RetryAfter};
///
/// let error: BoxError = RetryAfter::new("rate limited by the sink", Duration::from_secs(2)).into();
/// assert_eq!(error.to_string(), "rate limited by the sink (retry after 2s)");
/// ```
#[derive(Debug)]
pub struct RetryAfter {
    error: BoxError,
    delay: Duration,
}

impl RetryAfter {
    /// Asks for `error` to be retried after `delay`.
    pub fn new(error: impl Into<BoxError>, delay: Duration) -> Self {
        RetryAfter {
            error: error.into(),
            delay,
        }
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (retry after {:?})", self.error, self.delay)
    }
}

impl std::error::Error for RetryAfter {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(error: BoxError) -> Failure {
        Failure::new(FailureKind::Error, error)
    }

    #[test]
    fn backoff_grows_to_its_cap_and_jitter_only_shortens() {
        let policy = RetryPolicy::new(10)
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_secs(1));
        let exact: Vec<u128> = (1..=6).map(|a| policy.backoff(a).as_millis()).collect();
        assert_eq!(exact, [100, 200, 400, 800, 1000, 1000]);
        for attempt in 1..=6 {
            let jittered = policy.jittered_backoff(attempt);
            assert!(jittered <= policy.backoff(attempt));
            assert!(jittered >= policy.backoff(attempt).mul_f64(0.8));
        }
    }

    #[test]
    fn decides_by_attempts_and_error_kind() {
        let policy = RetryPolicy::new(3).jitter(0.0);
        let plain = failure("timeout".into());
        assert_eq!(
            policy.decide(&plain, 1),
            Decision::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            policy.decide(&plain, 2),
            Decision::Retry(Duration::from_millis(200))
        );
        assert_eq!(policy.decide(&plain, 3), Decision::Final);

        let permanent = failure(Permanent::new("bad json").into());
        assert_eq!(policy.decide(&permanent, 1), Decision::Final);

        let own_delay = failure(RetryAfter::new("busy", Duration::from_secs(7)).into());
        assert_eq!(
            policy.decide(&own_delay, 1),
            Decision::Retry(Duration::from_secs(7))
        );
        assert_eq!(policy.decide(&own_delay, 3), Decision::Final);

        let routing = Failure::new(FailureKind::Routing, "no batcher".into());
        assert_eq!(policy.decide(&routing, 1), Decision::Final);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let error = RetryPolicy::new(0).validate().unwrap_err();
        assert_eq!(error.field, "retry.max_attempts");
        let error = RetryPolicy::new(2).jitter(1.5).validate().unwrap_err();
        assert_eq!(error.field, "retry.jitter");
        let error = RetryPolicy::new(2).multiplier(0.5).validate().unwrap_err();
        assert_eq!(error.field, "retry.multiplier");
    }
}
