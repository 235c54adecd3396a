//! Errors of the NATS connector.

/// The JetStream source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JetStreamError {
    /// A setting is invalid; the error names it.
    #[error(transparent)]
    Config(#[from] longshore::BuildError),
    /// The server could not be reached, or refused a request.
    #[error("nats {doing}: {reason}")]
    Server {
        /// What the source was doing.
        doing: &'static str,
        /// What the client or the server said.
        reason: String,
    },
}

impl JetStreamError {
    pub(crate) fn server<E: std::fmt::Display>(doing: &'static str) -> impl FnOnce(E) -> Self {
        move |error| JetStreamError::Server {
            doing,
            reason: error.to_string(),
        }
    }
}
