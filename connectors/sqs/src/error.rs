//! Errors of the SQS connector.

/// The SQS source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqsSourceError {
    /// A setting is invalid; the error names it.
    #[error(transparent)]
    Config(#[from] longshore::BuildError),
    /// The queue could not be found or read.
    #[error("sqs queue {queue}: {reason}")]
    Queue {
        /// The queue, as given.
        queue: String,
        /// What the SDK or the service said.
        reason: String,
    },
}

impl SqsSourceError {
    pub(crate) fn queue(queue: &str, reason: impl std::fmt::Display) -> Self {
        SqsSourceError::Queue {
            queue: queue.to_owned(),
            reason: format_sdk(&reason),
        }
    }
}

/// The SDK's errors say "service error" at the top and the reason below: keep both.
fn format_sdk(error: &impl std::fmt::Display) -> String {
    format!("{error:#}")
}
