//! Rate limits, applied before a fetch (so a throttled pipeline holds no more than its
//! demand) and, per batcher, before a batch (for slow sinks). Changeable at runtime.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::control::changes::ChangeLog;
use crate::error::BuildError;

/// At most `messages` per `per`, in bursts of at most `burst` (default: `messages`).
///
/// ```
/// use std::time::Duration;
/// use longshore::RateLimit;
///
/// let limit = RateLimit::per_second(500).burst(50);
/// assert!(limit.validate("rate_limit").is_ok());
/// let error = RateLimit::new(0, Duration::from_secs(1)).validate("rate_limit").unwrap_err();
/// assert_eq!(error.to_string(), "invalid rate_limit.messages: must be at least 1, got 0");
/// let error = RateLimit::new(1, Duration::from_secs(2 * 86_400)).validate("rate_limit").unwrap_err();
/// assert_eq!(error.to_string(), "invalid rate_limit.per: must be at most 1day, got 2days");
/// assert!(RateLimit::new(1, Duration::from_secs(86_400)).burst(u32::MAX).validate("rate_limit").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    messages: u32,
    #[serde(with = "humantime_serde", default = "one_second")]
    per: Duration,
    #[serde(default)]
    burst: Option<u32>,
}

/// The longest `per` taken: a day (governor counts in nanoseconds; a longer period is a
/// pause, which [`PauseSwitch`](crate::PauseSwitch) says better).
const MAX_PER: Duration = Duration::from_secs(86_400);

fn one_second() -> Duration {
    Duration::from_secs(1)
}

impl RateLimit {
    /// At most `messages` per `per`.
    pub fn new(messages: u32, per: Duration) -> Self {
        RateLimit {
            messages,
            per,
            burst: None,
        }
    }

    /// At most `messages` per second.
    pub fn per_second(messages: u32) -> Self {
        RateLimit::new(messages, Duration::from_secs(1))
    }

    /// The most messages let through at once after a quiet spell (default: `messages`).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Checks the settings; `field` is where the limit sits in the configuration.
    pub fn validate(&self, field: &str) -> Result<(), BuildError> {
        if self.messages == 0 {
            return Err(BuildError::at_least(format!("{field}.messages"), 1, 0));
        }
        if self.burst == Some(0) {
            return Err(BuildError::at_least(format!("{field}.burst"), 1, 0));
        }
        if self.per > MAX_PER {
            return Err(BuildError::new(
                format!("{field}.per"),
                format!(
                    "must be at most {}, got {}",
                    humantime::format_duration(MAX_PER),
                    humantime::format_duration(self.per)
                ),
            ));
        }
        // governor keeps a full burst's refill time in u64 nanoseconds.
        let period = (self.per / self.messages).as_nanos();
        if period
            .checked_mul(u128::from(self.burst_size()))
            .is_none_or(|n| n > u128::from(u64::MAX))
        {
            return Err(BuildError::new(
                format!("{field}.burst"),
                format!(
                    "{} refills too slowly at {} messages per {:?}",
                    self.burst_size(),
                    self.messages,
                    self.per
                ),
            ));
        }
        if (self.per / self.messages).is_zero() {
            return Err(BuildError::new(
                format!("{field}.per"),
                format!(
                    "must allow at least 1 ns per message, got {:?} for {}",
                    self.per, self.messages
                ),
            ));
        }
        Ok(())
    }

    fn burst_size(&self) -> u32 {
        self.burst.unwrap_or(self.messages).max(1)
    }

    /// With its burst spelled out, so that two ways of writing one limit compare equal.
    fn normalized(self) -> Self {
        RateLimit {
            burst: Some(self.burst_size()),
            ..self
        }
    }

    fn quota(&self) -> Quota {
        let period = (self.per / self.messages.max(1)).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(self.burst_size()).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period)
            .expect("period is above zero")
            .allow_burst(burst)
    }
}

/// As a change records it: `500 per 1s, burst 50`.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {}",
            self.messages,
            humantime::format_duration(self.per)
        )?;
        if let Some(burst) = self.burst {
            write!(f, ", burst {burst}")?;
        }
        Ok(())
    }
}

/// A limit as a change records it, `none` for no limit.
struct Shown(Option<RateLimit>);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(limit) => limit.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// governor's clock on tokio's time, so that paused-time tests are exact.
#[derive(Debug, Clone)]
struct TokioClock(Instant);

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

type Governor = governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

struct Active {
    governor: Governor,
    clock: TokioClock,
    burst: u32,
    limit: RateLimit,
}

impl Active {
    fn new(limit: RateLimit) -> Arc<Self> {
        let clock = TokioClock(Instant::now());
        Arc::new(Active {
            governor: governor::RateLimiter::direct_with_clock(limit.quota(), clock.clone()),
            clock,
            burst: limit.burst_size(),
            limit,
        })
    }
}

/// One rate limit, which may be changed or removed while callers wait on it.
#[derive(Default)]
pub(crate) struct Limiter {
    active: RwLock<Option<Arc<Active>>>,
    changed: Notify,
}

impl Limiter {
    /// A limiter whose first burst is let through at once.
    pub(crate) fn new(limit: Option<RateLimit>) -> Arc<Self> {
        let limiter = Arc::new(Limiter::default());
        *limiter.active.write().unwrap_or_else(|e| e.into_inner()) = limit.map(Active::new);
        limiter
    }

    /// Replaces the limit and returns the one before; waiting callers re-check against
    /// the new one at once. The new limit starts with its burst used up: a change grants
    /// no fresh burst, the next messages pass at the new rate.
    pub(crate) fn set(&self, limit: Option<RateLimit>) -> Option<RateLimit> {
        if self.limit().map(RateLimit::normalized) == limit.map(RateLimit::normalized) {
            // The same limit again (a reconciling operator) keeps its bucket as it is.
            return limit;
        }
        let active = limit.map(|limit| {
            let active = Active::new(limit);
            let burst = NonZeroU32::new(active.burst).unwrap_or(NonZeroU32::MIN);
            // A fresh bucket holds exactly its burst.
            let _ = active.governor.check_n(burst);
            active
        });
        let was = std::mem::replace(
            &mut *self.active.write().unwrap_or_else(|e| e.into_inner()),
            active,
        );
        self.changed.notify_waiters();
        was.map(|active| active.limit)
    }

    /// The limit now.
    pub(crate) fn limit(&self) -> Option<RateLimit> {
        self.active().map(|active| active.limit)
    }

    fn active(&self) -> Option<Arc<Active>> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The most messages one call to [`Limiter::acquire`] lets through at once.
    pub(crate) fn burst(&self) -> Option<usize> {
        self.active().map(|active| active.burst as usize)
    }

    /// Waits until `n` messages may pass; returns how long it waited.
    pub(crate) async fn acquire(&self, n: usize) -> Duration {
        // Unlimited, the common case: no clock read, no wait for a change registered.
        if self.active().is_none() {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let mut left = n;
        while left > 0 {
            let changed = self.changed.notified();
            let Some(active) = self.active() else {
                break;
            };
            let take = left.min(active.burst as usize);
            let cells = NonZeroU32::new(take as u32).expect("take is at least one");
            match active.governor.check_n(cells) {
                Ok(Ok(())) => left -= take,
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(active.clock.now());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = changed => {}
                    }
                }
                Err(_) => unreachable!("never more cells than the burst"),
            }
        }
        started.elapsed()
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter").field("burst", &self.burst()).finish()
    }
}

/// Changes a running pipeline's rate limits; made by
/// [`Pipeline::rate_limits`](crate::Pipeline::rate_limits). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub(crate) pipeline: Arc<Limiter>,
    pub(crate) batchers: Arc<[(Arc<str>, Arc<Limiter>)]>,
    pub(crate) changes: Arc<ChangeLog>,
}

impl RateLimits {
    /// Sets (or with `None`, removes) the limit on messages fetched from the source. The
    /// new limit grants no fresh burst: the next messages pass at its rate.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when the limit is invalid (see [`RateLimit::validate`]).
    pub fn set(&self, limit: Option<RateLimit>) -> Result<(), BuildError> {
        self.set_on("rate_limit", &self.pipeline, limit)
    }

    /// Sets (or with `None`, removes) the limit on messages handed to batcher `name`, as
    /// [`set`](Self::set) does.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when no batcher has that name or the limit is invalid.
    pub fn set_batcher(&self, name: &str, limit: Option<RateLimit>) -> Result<(), BuildError> {
        let field = format!("batchers.{name}.rate_limit");
        let limiter = self
            .batcher(name)
            .ok_or_else(|| BuildError::new(&field, "no batcher of that name"))?;
        self.set_on(&field, limiter, limit)
    }

    /// The limit on messages fetched from the source now.
    pub fn get(&self) -> Option<RateLimit> {
        self.pipeline.limit()
    }

    /// The limit on messages handed to batcher `name` now (`None` also when there is no
    /// such batcher).
    pub fn get_batcher(&self, name: &str) -> Option<RateLimit> {
        self.batcher(name).and_then(|limiter| limiter.limit())
    }

    fn batcher(&self, name: &str) -> Option<&Arc<Limiter>> {
        self.batchers
            .iter()
            .find(|(batcher, _)| &**batcher == name)
            .map(|(_, limiter)| limiter)
    }

    fn set_on(&self, field: &str, limiter: &Limiter, limit: Option<RateLimit>) -> Result<(), BuildError> {
        if let Some(limit) = &limit {
            limit.validate(field)?;
        }
        let was = limiter.set(limit);
        self.changes.record(field, Shown(was), Shown(limit));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lets_through_the_burst_then_the_rate() {
        let limiter = Limiter::new(Some(RateLimit::per_second(10).burst(5)));
        assert_eq!(limiter.acquire(5).await, Duration::ZERO);
        // 10 more at 10/s: 1 s.
        let waited = limiter.acquire(10).await;
        assert!(
            waited >= Duration::from_millis(900) && waited <= Duration::from_millis(1000),
            "{waited:?}"
        );

        limiter.set(None);
        assert_eq!(limiter.acquire(1_000_000).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_limit_grants_no_fresh_burst() {
        let limiter = Limiter::new(Some(RateLimit::per_second(10)));
        assert_eq!(
            limiter.acquire(10).await,
            Duration::ZERO,
            "the first burst passes at once"
        );
        limiter.set(Some(RateLimit::per_second(100).burst(100)));
        // 100 more at 100/s: about 1 s, not at once.
        let waited = limiter.acquire(100).await;
        assert!(
            waited >= Duration::from_millis(950) && waited <= Duration::from_millis(1000),
            "{waited:?}"
        );
        assert_eq!(limiter.limit(), Some(RateLimit::per_second(100).burst(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_limit_again_keeps_its_bucket() {
        let limit = RateLimit::per_second(10);
        let limiter = Limiter::new(Some(limit));
        assert_eq!(limiter.acquire(5).await, Duration::ZERO);
        // An operator's reconcile loop sets what is already set: the 5 left still pass.
        assert_eq!(limiter.set(Some(limit)), Some(limit));
        assert_eq!(limiter.acquire(5).await, Duration::ZERO);
        // Written with its burst spelled out, it is the same limit.
        let limiter = Limiter::new(Some(limit));
        assert_eq!(limiter.acquire(5).await, Duration::ZERO);
        limiter.set(Some(limit.burst(10)));
        assert_eq!(limiter.acquire(5).await, Duration::ZERO);
    }

    #[test]
    fn a_limit_prints_as_a_change_records_it() {
        assert_eq!(
            RateLimit::per_second(500).burst(50).to_string(),
            "500 per 1s, burst 50"
        );
        assert_eq!(Shown(None).to_string(), "none");
    }
}
