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
}

/// The pipeline did not drain within its shutdown deadline.
///
/// The messages it still held were **not** acknowledged, so the source redelivers them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pipeline did not drain within its deadline; {in_flight} messages left unacknowledged")]
pub struct DeadlineExceeded {
    /// Messages received from the source and not acknowledged when the deadline passed.
    pub in_flight: usize,
}
