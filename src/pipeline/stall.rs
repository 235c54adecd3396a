//! The stall watch: a stage that holds messages and finishes none for `stall.after` is
//! flagged in `longshore_stage_stalled`, a part of the source (a Kafka partition, an SQS
//! queue) with messages outstanding or waiting and none finished in
//! `longshore_source_stalled`; both in `/healthz`'s body and on `/topology`. A stall
//! fails liveness only when `stall.fails_liveness` says so.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::control::pause::PauseSwitch;
use crate::error::BuildError;
use crate::metrics::{SourceStalls, StageMetrics};
use crate::source::SourcePanel;

/// When a stage counts as stalled: holding messages with no handling finished for
/// `after` (default 60 s), not counting those waiting out a retry's backoff or a rate
/// limit, which wait as configured. A hung handler (a call without a timeout) is what it
/// finds. A part of the source (see
/// [`SourcePanel`]) stalls the same way: messages outstanding or waiting at the broker,
/// none finished for `after`; a part an operator paused, or a paused pipeline, does not.
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
    /// (default `false`: flagged only; a restart redelivers what the stage held).
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

/// The stages stalled now, with how long they have held messages without progress.
#[derive(Debug, Default)]
pub(crate) struct Stalls(Mutex<Vec<(String, Duration)>>);

impl Stalls {
    pub(crate) fn list(&self) -> Vec<(String, Duration)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How often the watch looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What the watch looks at, and where it says what it finds.
pub(crate) struct Watch {
    pub(crate) stages: Vec<Watched>,
    pub(crate) source: Option<Arc<dyn SourcePanel>>,
    pub(crate) source_stalls: SourceStalls,
    pub(crate) pause: PauseSwitch,
    pub(crate) after: Duration,
    pub(crate) stalls: Arc<Stalls>,
}

impl Watch {
    /// Looks every second until `stop`, publishing what is stalled.
    pub(crate) async fn run(self, stop: CancellationToken) {
        // Per stage: attempts finished at the last look, and since when none finished
        // while it held messages.
        let mut seen: Vec<(u64, Duration)> = vec![(0, Duration::ZERO); self.stages.len()];
        // The source's parts flagged at the last look.
        let mut flagged = BTreeSet::new();
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            let mut stalled = self.look_at_stages(&mut seen);
            self.look_at_source(&mut flagged, &mut stalled);
            *self.stalls.0.lock().unwrap_or_else(|e| e.into_inner()) = stalled;
        }
        for stage in &self.stages {
            stage.metrics.stalled.set(0);
        }
        for part in &flagged {
            self.source_stalls.set(part, false);
        }
        self.stalls.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn look_at_stages(&self, seen: &mut [(u64, Duration)]) -> Vec<(String, Duration)> {
        let mut stalled = Vec::new();
        for (stage, (finished_before, idle)) in self.stages.iter().zip(seen.iter_mut()) {
            let metrics = &stage.metrics;
            let finished = metrics.successful.get() + metrics.failed.get();
            // Messages waiting out a retry's backoff or a rate limit wait as configured.
            let held = metrics.in_flight.get() - metrics.retry_waiting.get() - metrics.limit_waiting.get();
            if held > 0 && finished == *finished_before {
                *idle += LOOK_EVERY;
            } else {
                *idle = Duration::ZERO;
            }
            *finished_before = finished;
            let is_stalled = *idle >= self.after;
            if is_stalled && metrics.stalled.get() == 0 {
                tracing::warn!(stage = %stage.name, held = metrics.in_flight.get(), after = ?self.after, "stage stalled: it holds messages and has finished none");
            }
            metrics.stalled.set(i64::from(is_stalled));
            if is_stalled {
                stalled.push((stage.name.clone(), *idle));
            }
        }
        stalled
    }

    /// The source measures its parts' stalls itself (it alone knows what waits); a
    /// paused pipeline fetches nothing, so none of its parts is stalled then.
    fn look_at_source(&self, flagged: &mut BTreeSet<String>, stalled: &mut Vec<(String, Duration)>) {
        let Some(source) = &self.source else { return };
        let paused = self.pause.is_paused();
        let mut now = BTreeSet::new();
        for part in source.parts() {
            if paused || part.paused || part.stalled_for < self.after {
                continue;
            }
            if !flagged.contains(&part.name) {
                tracing::warn!(part = %part.name, waiting = ?part.waiting, in_flight = ?part.in_flight, after = ?self.after, "source part stalled: messages outstanding or waiting, none finished");
                self.source_stalls.set(&part.name, true);
            }
            stalled.push((format!("source {}", part.name), part.stalled_for));
            now.insert(part.name);
        }
        for part in flagged.difference(&now) {
            self.source_stalls.set(part, false);
        }
        *flagged = now;
    }
}
