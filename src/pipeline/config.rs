//! Stage settings: how many processors and batchers, and how much each may hold.

use std::time::Duration;

use crate::error::BuildError;
use crate::failure::rate_limit::RateLimit;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processors {
    pub(crate) concurrency: usize,
    pub(crate) max_demand: usize,
    pub(crate) min_demand: usize,
}

impl Default for Processors {
    /// As many processors as cores, `max_demand` 64, `min_demand` 32.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Processors::new(cores)
    }
}

impl Processors {
    /// `concurrency` processors, with `max_demand` 64 and `min_demand` 32.
    pub fn new(concurrency: usize) -> Self {
        Processors {
            concurrency,
            max_demand: 64,
            min_demand: 32,
        }
    }

    /// How many messages one processor asks for and holds at most (default 64). It is
    /// also the largest chunk a processor handles at once.
    pub fn max_demand(mut self, max_demand: usize) -> Self {
        self.max_demand = max_demand;
        self
    }

    /// A processor asks for more once it holds fewer than this (default 32): the gap
    /// `max_demand - min_demand` is the smallest fetch, so sources fetch in chunks.
    pub fn min_demand(mut self, min_demand: usize) -> Self {
        self.min_demand = min_demand;
        self
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.concurrency == 0 {
            return Err(BuildError::at_least("processors.concurrency", 1, 0));
        }
        if self.max_demand == 0 {
            return Err(BuildError::at_least("processors.max_demand", 1, 0));
        }
        if self.min_demand >= self.max_demand {
            return Err(BuildError::new(
                "processors.min_demand",
                format!(
                    "must be below processors.max_demand ({}), got {}",
                    self.max_demand, self.min_demand
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batcher {
    pub(crate) name: String,
    pub(crate) batch_size: usize,
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

    /// The batcher's name, as given to [`Message::put_batcher`](crate::Message::put_batcher).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A batch is sent as soon as it holds this many messages (default 100).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// A partial batch is sent once its first message has waited this long (default 1 s).
    pub fn batch_timeout(mut self, batch_timeout: Duration) -> Self {
        self.batch_timeout = batch_timeout;
        self
    }

    /// How many batches are handled at once (default 1).
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
        if self.batch_timeout.is_zero() {
            return Err(BuildError::new(field("batch_timeout"), "must be above zero"));
        }
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
        self.batch_size * (self.concurrency + 1)
    }
}
