//! The stall watch: a stage that holds messages and finishes none for `stall.after` is
//! flagged in `longshore_stage_stalled`, a part of the source (a Kafka partition, an SQS
//! queue) with messages outstanding and none finished (see [`StallWatch`]) in
//! `longshore_source_stalled`; both in `/healthz`'s body and on `/topology`. A stage's
//! stall fails liveness only when `stall.fails_liveness` says so; a source part's never
//! does (a restart cannot unstick a broker, and it redelivers all the pod held).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::control::batching::BatchSettings;
use crate::control::pause::PauseSwitch;
use crate::error::BuildError;
use crate::metrics::calls::CallsSeen;
use crate::metrics::{SourceStalls, StageMetrics};
use crate::source::SourcePanel;

/// When a stage counts as stalled: holding messages with no handling finished for
/// `after` (default 60 s), not counting those waiting out a retry's backoff or a rate
/// limit (and, ordered, those of their key behind them), which wait as configured. A
/// hung handler (a call without a timeout) is what it finds. The watch looks every
/// second and counts the time between two looks that both saw the stage hold, so a
/// stage is flagged within a second after `after` has passed. A part of the source (see
/// [`SourcePanel`]) stalls when it has messages outstanding and none finished for
/// `after` plus the longest batch timeout; the count stops while a stage holds messages
/// waiting out a backoff or a rate limit, and starts again while the part or the
/// pipeline is paused with nothing of the part out.
///
/// ```
/// use std::time::Duration;
/// use longshore::StallWatch;
///
/// let watch = StallWatch::after(Duration::from_secs(120)).fails_liveness(true);
/// assert!(watch.validate().is_ok());
/// assert_eq!(
///     StallWatch::after(Duration::from_millis(10)).validate().unwrap_err().to_string(),
///     "invalid stall.after: must be at least 1s, got 10ms"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StallWatch {
    /// How long a stage may hold messages and finish none.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Whether a stalled stage fails `/healthz`, so that Kubernetes restarts the pod
    /// (default `false`: flagged only; a restart redelivers what the stage held). A
    /// stalled source part never fails it: only a stage, a hung handler, is what a
    /// restart can mend.
    pub fails_liveness: bool,
}

impl Default for StallWatch {
    fn default() -> Self {
        StallWatch {
            after: Duration::from_secs(60),
            fails_liveness: false,
        }
    }
}

impl StallWatch {
    /// Stalled after `after` without progress.
    pub fn after(after: Duration) -> Self {
        StallWatch {
            after,
            ..StallWatch::default()
        }
    }

    /// Whether a stall fails liveness.
    pub fn fails_liveness(mut self, fails: bool) -> Self {
        self.fails_liveness = fails;
        self
    }

    /// Checks the settings: `after` at least 1 s (the watch looks once a second).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] on `stall.after`.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.after < Duration::from_secs(1) {
            return Err(BuildError::new(
                "stall.after",
                format!(
                    "must be at least 1s, got {}",
                    humantime::format_duration(self.after)
                ),
            ));
        }
        Ok(())
    }
}

/// One stage the watch looks at.
pub(crate) struct Watched {
    /// As the page and `/healthz` name it: `processor`, `batch_processor db`.
    pub(crate) name: String,
    pub(crate) metrics: StageMetrics,
}

/// What is stalled now, with how long without progress: stages, then source parts.
#[derive(Debug, Default)]
pub(crate) struct Stalls(Mutex<StalledNow>);

#[derive(Debug, Default)]
struct StalledNow {
    stages: Vec<(String, Duration)>,
    source: Vec<(String, Duration)>,
}

impl Stalls {
    pub(crate) fn list(&self) -> Vec<(String, Duration)> {
        let now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        now.stages.iter().chain(&now.source).cloned().collect()
    }

    /// Whether a stage is stalled: what `stall.fails_liveness` fails liveness for.
    pub(crate) fn a_stage_is_stalled(&self) -> bool {
        !self.0.lock().unwrap_or_else(|e| e.into_inner()).stages.is_empty()
    }

    fn set(&self, now: StalledNow) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }
}

/// How often the watch looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A stage's clock of no progress, read at each look.
#[derive(Debug, Default)]
struct StageClock {
    /// Attempts finished at the last look.
    finished: u64,
    /// How long it held messages and finished none, as seen so far: `None` when it held
    /// none at the last look.
    idle: Option<Duration>,
}

impl StageClock {
    /// Looks again: whether the stage holds messages (not waiting as configured), and its
    /// count of attempts finished. Returns how long it has held messages without
    /// finishing any: the time between looks is counted only when both saw it hold, so
    /// that one look landing as a message comes out of a wait (and before it is handled)
    /// is not taken for a second without progress.
    fn look(&mut self, held: bool, finished: u64) -> Duration {
        let progressed = finished != self.finished;
        self.finished = finished;
        self.idle = match (held, self.idle) {
            (false, _) => None,
            (true, Some(idle)) if !progressed => Some(idle + LOOK_EVERY),
            (true, _) => Some(Duration::ZERO),
        };
        self.idle.unwrap_or_default()
    }
}

/// What the watch looks at, and where it says what it finds.
pub(crate) struct Watch {
    pub(crate) stages: Vec<Watched>,
    pub(crate) source: Option<Arc<dyn SourcePanel>>,
    pub(crate) source_stalls: SourceStalls,
    pub(crate) pause: PauseSwitch,
    pub(crate) after: Duration,
    /// The batchers' settings: their timeouts are waits as configured, for the source.
    pub(crate) batching: Vec<Arc<BatchSettings>>,
    pub(crate) stalls: Arc<Stalls>,
}

/// What the watch remembers of the source between looks.
#[derive(Default)]
struct SourceSeen {
    /// The parts flagged at the last look.
    flagged: BTreeSet<String>,
    /// Per part, the time without progress counted so far.
    clocks: HashMap<String, Clock>,
}

/// A part's stall clock: what it counted, and the source's own reading at the last look.
struct Clock {
    counted: Duration,
    last: Duration,
}

impl Watch {
    /// Looks every second until `stop`, publishing what is stalled.
    pub(crate) async fn run(self, stop: CancellationToken) {
        // Per stage: its clock of no progress, and its calls at the last look.
        let mut seen: Vec<(StageClock, CallsSeen)> = (0..self.stages.len())
            .map(|_| (StageClock::default(), CallsSeen::default()))
            .collect();
        let mut source = SourceSeen::default();
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            let stages = self.look_at_stages(&mut seen);
            let parts = self.look_at_source(&mut source);
            self.stalls.set(StalledNow {
                stages,
                source: parts,
            });
        }
        for stage in &self.stages {
            stage.metrics.stalled.set(0);
        }
        for part in &source.flagged {
            self.source_stalls.set(part, false);
        }
        self.stalls.set(StalledNow::default());
    }

    fn look_at_stages(&self, seen: &mut [(StageClock, CallsSeen)]) -> Vec<(String, Duration)> {
        let mut stalled = Vec::new();
        for (stage, (clock, calls)) in self.stages.iter().zip(seen.iter_mut()) {
            let metrics = &stage.metrics;
            let finished = metrics.successful.get() + metrics.failed.get();
            // Messages waiting out a retry's backoff or a rate limit wait as configured.
            // The waiting counts first: a message moving into a wait then counts in both,
            // never in neither, so a hung task is not hidden by its siblings' traffic.
            let waiting = metrics.retry_waiting.get() + metrics.limit_waiting.get();
            let held = metrics.in_flight.get() - waiting;
            let idle = clock.look(held > 0, finished);
            // One task's call that never returns, while the others finish theirs.
            let hung = metrics.calls.longest(calls, LOOK_EVERY);
            let for_how_long = idle.max(hung);
            let is_stalled = for_how_long >= self.after;
            if is_stalled && metrics.stalled.get() == 0 {
                if idle >= self.after {
                    tracing::warn!(stage = %stage.name, held = metrics.in_flight.get(), after = ?self.after, "stage stalled: it holds messages and has finished none");
                } else {
                    tracing::warn!(stage = %stage.name, running = ?hung, "stage stalled: a handler call has not returned");
                }
            }
            metrics.stalled.set(i64::from(is_stalled));
            if is_stalled {
                stalled.push((stage.name.clone(), for_how_long));
            }
        }
        stalled
    }

    /// The source measures its parts' stalls itself (it alone knows what waits); the
    /// watch keeps a clock per part, advanced by how much longer the source saw it without
    /// progress. A part paused (or in a paused pipeline) with nothing of it out has
    /// nothing to finish: its clock starts again. While some stage holds messages waiting
    /// out a retry's backoff or a rate limit (which may hold back every part), the clock
    /// stops, without losing what it counted.
    fn look_at_source(&self, seen: &mut SourceSeen) -> Vec<(String, Duration)> {
        let mut stalled = Vec::new();
        let Some(source) = &self.source else {
            return stalled;
        };
        let configured_wait = self
            .stages
            .iter()
            .any(|stage| stage.metrics.retry_waiting.get() > 0 || stage.metrics.limit_waiting.get() > 0);
        let pipeline_paused = self.pause.is_paused();
        // A message may wait in a batcher for its timeout, as configured.
        let longest_timeout = self
            .batching
            .iter()
            .map(|b| b.timeout())
            .max()
            .unwrap_or_default();
        let after = self.after + longest_timeout;
        let parts = source.parts();
        seen.clocks
            .retain(|name, _| parts.iter().any(|part| part.name == *name));
        let mut flagged = BTreeSet::new();
        for part in parts {
            let idle = (pipeline_paused || part.paused) && part.in_flight.unwrap_or(0) == 0;
            let clock = seen.clocks.entry(part.name.clone()).or_insert(Clock {
                counted: part.stalled_for,
                last: part.stalled_for,
            });
            clock.counted = if idle {
                Duration::ZERO
            } else if part.stalled_for < clock.last {
                // It progressed since the last look.
                part.stalled_for
            } else if configured_wait {
                clock.counted
            } else {
                clock.counted + (part.stalled_for - clock.last)
            };
            clock.last = part.stalled_for;
            if idle || clock.counted < after {
                continue;
            }
            if !seen.flagged.contains(&part.name) {
                tracing::warn!(part = %part.name, waiting = ?part.waiting, in_flight = ?part.in_flight, after = ?after, "source part stalled: messages outstanding, none finished");
                self.source_stalls.set(&part.name, true);
            }
            stalled.push((format!("source {}", part.name), clock.counted));
            flagged.insert(part.name);
        }
        for part in seen.flagged.difference(&flagged) {
            self.source_stalls.set(part, false);
        }
        seen.flagged = flagged;
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_idle_from_the_first_look_that_sees_it_hold_until_one_sees_progress() {
        let mut clock = StageClock::default();
        assert_eq!(clock.look(false, 0), Duration::ZERO);
        // A look that lands as a message comes out of a wait, before it is handled: the
        // clock starts; no time without progress is seen yet.
        assert_eq!(clock.look(true, 0), Duration::ZERO, "one look is no second");
        assert_eq!(clock.look(true, 0), LOOK_EVERY);
        assert_eq!(clock.look(true, 0), LOOK_EVERY * 2);
        // Something finished since: the clock starts again.
        assert_eq!(clock.look(true, 1), Duration::ZERO);
        assert_eq!(clock.look(true, 1), LOOK_EVERY);
        assert_eq!(clock.look(false, 1), Duration::ZERO);
        assert_eq!(clock.look(true, 1), Duration::ZERO);
    }
}
