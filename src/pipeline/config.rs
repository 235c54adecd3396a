//! Pipeline settings: how many processors and batchers, how much each may hold, and
//! the whole pipeline's, as a builder sets them or a configuration file gives them.

use std::time::Duration;

use crate::error::BuildError;
use crate::failure::rate_limit::RateLimit;
use crate::failure::retry::RetryPolicy;
use crate::pipeline::stall::StallWatch;

/// Settings of the processor pool: the tasks calling
/// [`Handler::handle_message`](crate::Handler::handle_message).
///
/// ```
/// use longshore::Processors;
///
/// let processors = Processors::new(8).max_demand(100).min_demand(50);
/// assert!(processors.validate().is_ok());
/// assert!(Processors::new(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Processors {
    pub(crate) concurrency: usize,
    pub(crate) max_demand: usize,
    /// Unset: half of `max_demand`.
    pub(crate) min_demand: Option<usize>,
}

impl Default for Processors {
    /// As many processors as cores, `max_demand` 64, `min_demand` half of it.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Processors::new(cores)
    }
}

impl Processors {
    /// `concurrency` processors, with `max_demand` 64 and `min_demand` half of it.
    pub fn new(concurrency: usize) -> Self {
        Processors {
            concurrency,
            max_demand: 64,
            min_demand: None,
        }
    }

    /// How many processors run.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// How many messages one processor asks for and holds at most (default 64). It is
    /// also the largest chunk a processor handles at once.
    pub fn max_demand(mut self, max_demand: usize) -> Self {
        self.max_demand = max_demand;
        self
    }

    /// A processor asks for more once it holds fewer than this (default: half of
    /// `max_demand`): the gap `max_demand - min_demand` is the smallest fetch, so
    /// sources fetch in chunks.
    pub fn min_demand(mut self, min_demand: usize) -> Self {
        self.min_demand = Some(min_demand);
        self
    }

    /// The `min_demand` in effect: as set, or half of `max_demand`.
    pub fn effective_min_demand(&self) -> usize {
        self.min_demand.unwrap_or(self.max_demand / 2)
    }

    /// The in-flight share the processors add to the pipeline's limit: each processor's
    /// chunk (`max_demand`), and per processor one fetch more (`max_demand - min_demand`,
    /// the smallest), made while the chunks are handled, so that a processor done with
    /// one finds the next ready instead of waiting for the source.
    pub(crate) fn in_flight_share(&self) -> usize {
        let next_fetch = self.max_demand - self.effective_min_demand();
        self.concurrency
            .saturating_mul(self.max_demand.saturating_add(next_fetch))
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.concurrency == 0 {
            return Err(BuildError::at_least("processors.concurrency", 1, 0));
        }
        if self.max_demand == 0 {
            return Err(BuildError::at_least("processors.max_demand", 1, 0));
        }
        let min_demand = self.effective_min_demand();
        if min_demand >= self.max_demand {
            return Err(BuildError::new(
                "processors.min_demand",
                format!(
                    "must be below processors.max_demand ({}), got {min_demand}",
                    self.max_demand
                ),
            ));
        }
        Ok(())
    }
}

/// Settings of one named batcher: it groups successful messages by
/// [batch key](crate::Message::put_batch_key) into batches for
/// [`Handler::handle_batch`](crate::Handler::handle_batch).
///
/// ```
/// use std::time::Duration;
/// use longshore::Batcher;
///
/// let batcher = Batcher::new("sql")
///     .batch_size(500)
///     .batch_timeout(Duration::from_millis(200))
///     .concurrency(4);
/// assert_eq!(batcher.name(), "sql");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default = "Batcher::unnamed", deny_unknown_fields)]
pub struct Batcher {
    pub(crate) name: String,
    pub(crate) batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub(crate) batch_timeout: Duration,
    pub(crate) concurrency: usize,
    pub(crate) rate_limit: Option<RateLimit>,
}

impl Batcher {
    /// A batcher named `name`: batch size 100, timeout 1 s, concurrency 1.
    pub fn new(name: impl Into<String>) -> Self {
        Batcher {
            name: name.into(),
            batch_size: 100,
            batch_timeout: Duration::from_secs(1),
            concurrency: 1,
            rate_limit: None,
        }
    }

    /// Defaults for a configuration file, which must name the batcher.
    fn unnamed() -> Self {
        Batcher::new("")
    }

    /// The batcher's name, as given to [`Message::put_batcher`](crate::Message::put_batcher).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A batch is sent as soon as it holds this many messages (default 100).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// A partial batch is sent once its first message has waited this long (default 1 s;
    /// from 1 ms to 15 min: a batch's messages stay unacknowledged while it waits).
    pub fn batch_timeout(mut self, batch_timeout: Duration) -> Self {
        self.batch_timeout = batch_timeout;
        self
    }

    /// How many batches are handled at once (default 1).
    ///
    /// In an ordered pipeline a batch key's batches all go to one batch processor, one
    /// after the other: concurrency then works across batch keys only. Give the messages
    /// of one order key one batch key (the order key, or a coarser one) to keep that
    /// order through the batcher.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// At most this many messages per interval go into this batcher's batches (default:
    /// no limit): for a slow sink. Changeable at runtime through
    /// [`Pipeline::rate_limits`](crate::Pipeline::rate_limits).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), BuildError> {
        let field = |name: &str| format!("batchers.{}.{name}", self.name);
        if self.name.is_empty() {
            return Err(BuildError::new("batchers.name", "must not be empty"));
        }
        if self.batch_size == 0 {
            return Err(BuildError::at_least(field("batch_size"), 1, 0));
        }
        crate::control::batching::check_timeout(&field("batch_timeout"), self.batch_timeout)?;
        if self.concurrency == 0 {
            return Err(BuildError::at_least(field("concurrency"), 1, 0));
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate(&field("rate_limit"))?;
        }
        Ok(())
    }

    /// The in-flight share this batcher adds to the pipeline's limit: one batch filling
    /// and one being handled per concurrent task.
    pub(crate) fn in_flight_share(&self) -> usize {
        self.batch_size.saturating_mul(self.concurrency.saturating_add(1))
    }
}

/// The most messages a pipeline may hold: credits are counted in `u32`.
const MAX_IN_FLIGHT: usize = u32::MAX as usize;

/// Every setting of a pipeline but its source, handler, `partition_by` and dead-letter
/// destination: what [`PipelineBuilder`](crate::PipelineBuilder) sets one by one, or
/// takes whole from a configuration file with
/// [`PipelineBuilder::config`](crate::PipelineBuilder::config).
///
/// Durations are written as `"250ms"`, `"30s"`, `"2m"`. Missing fields keep their
/// defaults; unknown fields are an error.
///
/// ```
/// let config: longshore::PipelineConfig = toml::from_str(r#"
///     name = "orders"
///     shutdown_deadline = "25s"
///     processors = { concurrency = 8, max_demand = 100, min_demand = 50 }
///     batchers = [{ name = "db", batch_size = 500, batch_timeout = "200ms" }]
///     retry = { max_attempts = 5, initial_backoff = "100ms" }
///     rate_limit = { messages = 1000, per = "1s" }
/// "#).unwrap();
/// assert_eq!(config.shutdown_deadline, std::time::Duration::from_secs(25));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PipelineConfig {
    /// The pipeline's name, in logs and metrics (default `longshore`).
    pub name: String,
    /// How many tasks ask the source for messages at once (default 1).
    pub source_concurrency: usize,
    /// The processor pool (default [`Processors::default`]).
    pub processors: Processors,
    /// The batchers, in order: the first is the default route (default none).
    pub batchers: Vec<Batcher>,
    /// How long a shutdown may drain (default 30 s).
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
    /// The most messages received and not yet acknowledged (default: derived from the
    /// stages, see [`PipelineBuilder::max_in_flight`](crate::PipelineBuilder::max_in_flight)).
    pub max_in_flight: Option<usize>,
    /// How failed messages are retried (default: not at all).
    pub retry: RetryPolicy,
    /// The limit on fetching from the source (default none).
    pub rate_limit: Option<RateLimit>,
    /// When a stage counts as stalled (default: after 60 s, flagged only).
    pub stall: StallWatch,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "longshore".to_owned(),
            source_concurrency: 1,
            processors: Processors::default(),
            batchers: Vec::new(),
            shutdown_deadline: Duration::from_secs(30),
            max_in_flight: None,
            retry: RetryPolicy::none(),
            rate_limit: None,
            stall: StallWatch::default(),
        }
    }
}

impl PipelineConfig {
    /// Checks every setting, naming the field at fault; returns the in-flight limit.
    pub fn validate(&self) -> Result<usize, BuildError> {
        if self.name.is_empty() {
            return Err(BuildError::new("name", "must not be empty"));
        }
        if self.source_concurrency == 0 {
            return Err(BuildError::at_least("source_concurrency", 1, 0));
        }
        self.processors.validate()?;
        for (index, batcher) in self.batchers.iter().enumerate() {
            batcher.validate()?;
            if self.batchers[..index].iter().any(|b| b.name == batcher.name) {
                return Err(BuildError::new(
                    format!("batchers.{}", batcher.name),
                    "a batcher of that name is already configured",
                ));
            }
        }
        self.retry.validate()?;
        if let Some(limit) = &self.rate_limit {
            limit.validate("rate_limit")?;
        }
        self.stall.validate()?;
        if self.shutdown_deadline.is_zero() {
            return Err(BuildError::new("shutdown_deadline", "must be above zero"));
        }
        let default_limit = self
            .batchers
            .iter()
            .map(Batcher::in_flight_share)
            .fold(self.processors.in_flight_share(), usize::saturating_add);
        let limit = self.max_in_flight.unwrap_or(default_limit);
        if limit < self.processors.max_demand {
            return Err(BuildError::at_least(
                "max_in_flight",
                self.processors.max_demand,
                limit,
            ));
        }
        // Credits are taken in `u32` counts.
        if limit > MAX_IN_FLIGHT {
            return Err(BuildError::new(
                "max_in_flight",
                format!("must be at most {MAX_IN_FLIGHT}, got {limit} (set, or from the stages' settings)"),
            ));
        }
        Ok(limit)
    }
}
