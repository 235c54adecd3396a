//! Errors returned by longshore.

/// A type-erased error, as handlers and sources return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A pipeline's configuration is invalid; the message names the field.
///
/// ```
/// use longshore::{Batcher, BuildError};
///
/// let err = Batcher::new("sql").batch_size(0).validate().unwrap_err();
/// assert_eq!(err.to_string(), "invalid batchers.sql.batch_size: must be at least 1, got 0");
/// ```
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {field}: {reason}")]
pub struct BuildError {
    /// The configuration field, as a dotted path (`processors.concurrency`).
    pub field: String,
    /// What was expected, and what was given.
    pub reason: String,
}

impl BuildError {
    /// An error for `field` (a dotted path), saying what was expected and what was given.
    /// Connectors use it so that every configuration error reads the same.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        BuildError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, its field within `section` (`processors.concurrency` within
    /// `pipeline` is `pipeline.processors.concurrency`).
    pub fn within(self, section: &str) -> Self {
        BuildError::new(format!("{section}.{}", self.field), self.reason)
    }

    /// `field` must be at least `min`, and was `got`.
    pub fn at_least(field: impl Into<String>, min: usize, got: usize) -> Self {
        BuildError::new(field, format!("must be at least {min}, got {got}"))
    }

    /// Checks that each `(field, value)` is set: the first empty one is an error.
    ///
    /// ```
    /// use longshore::BuildError;
    ///
    /// let error = BuildError::require_set([("source.url", "nats://n:4222"), ("source.stream", "")]).unwrap_err();
    /// assert_eq!(error.to_string(), "invalid source.stream: must not be empty");
    /// ```
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first empty field.
    pub fn require_set<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), BuildError> {
        match fields.into_iter().find(|(_, value)| value.is_empty()) {
            Some((field, _)) => Err(BuildError::new(field, "must not be empty")),
            None => Ok(()),
        }
    }

    /// Checks that each `(field, value, min)` duration is at least its `min`: the first
    /// one below is an error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use longshore::BuildError;
    ///
    /// let error = BuildError::require_durations([("source.lease", Duration::from_millis(10), Duration::from_secs(1))]).unwrap_err();
    /// assert_eq!(error.to_string(), "invalid source.lease: must be at least 1s, got 10ms");
    /// ```
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first duration below its minimum.
    pub fn require_durations<'a>(
        fields: impl IntoIterator<Item = (&'a str, std::time::Duration, std::time::Duration)>,
    ) -> Result<(), BuildError> {
        match fields.into_iter().find(|(_, value, min)| value < min) {
            Some((field, value, min)) => Err(BuildError::new(
                field,
                format!(
                    "must be at least {}, got {}",
                    humantime::format_duration(min),
                    humantime::format_duration(value)
                ),
            )),
            None => Ok(()),
        }
    }
}

/// The pipeline did not drain within its shutdown deadline.
///
/// Handler calls still running were cut short, and every message not finished was handed
/// back to the source **unacknowledged** ([`Acknowledger::release`](crate::Acknowledger::release)),
/// to be delivered again at once; messages finished before were acknowledged. Those
/// `stranded` (still held after [`HAND_BACK_TIME`](crate::HAND_BACK_TIME)) are
/// redelivered after the broker's own timeout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pipeline did not drain within its deadline; {in_flight} messages were not finished and go back to the source ({stranded} of them only after the broker's timeout)")]
pub struct DeadlineExceeded {
    /// Messages received from the source and not acknowledged when the deadline passed.
    pub in_flight: usize,
    /// Of those, messages neither acknowledged nor handed back when the pipeline gave up.
    pub stranded: usize,
}

/// Why a pipeline did not end cleanly: what [`Pipeline::wait`](crate::Pipeline::wait),
/// [`Pipeline::shutdown`](crate::Pipeline::shutdown) and
/// [`Pipeline::run_until_signal`](crate::Pipeline::run_until_signal) return instead of a
/// summary. Either way nothing unfinished was acknowledged: the source redelivers it.
///
/// ```
/// use longshore::{DeadlineExceeded, PipelineError};
///
/// let error = PipelineError::from(DeadlineExceeded { in_flight: 3, stranded: 0 });
/// assert_eq!(
///     error.to_string(),
///     "pipeline did not drain within its deadline; 3 messages were not finished and go back to the source (0 of them only after the broker's timeout)"
/// );
/// let failed = PipelineError::Failed { cause: "the source's poll thread panicked".into() };
/// assert_eq!(failed.to_string(), "pipeline failed: the source's poll thread panicked");
/// ```
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineError {
    /// The drain did not finish within the shutdown deadline.
    #[error(transparent)]
    DeadlineExceeded(#[from] DeadlineExceeded),
    /// The pipeline's own machinery failed (a stage or the acknowledger panicked) or its
    /// source reported that it can no longer deliver: the pipeline stopped itself, within
    /// its shutdown deadline, and `/healthz` fails so that the process is restarted.
    #[error("pipeline failed: {cause}")]
    Failed {
        /// What failed, first: later failures are logged, not kept.
        cause: String,
    },
}
