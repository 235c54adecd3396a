//! Errors of the RabbitMQ connector.

/// The RabbitMQ source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitMqError {
    /// A setting is invalid; the error names it.
    #[error(transparent)]
    Config(#[from] longshore::BuildError),
    /// The server could not be reached, or refused a request.
    #[error("rabbitmq {doing}")]
    Server {
        /// What the source was doing.
        doing: &'static str,
        /// What the client or the server said.
        #[source]
        source: lapin::Error,
    },
}

impl RabbitMqError {
    pub(crate) fn server(doing: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| RabbitMqError::Server { doing, source }
    }
}
