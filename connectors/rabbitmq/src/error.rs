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
    /// The server did not answer in time.
    #[error("rabbitmq {doing}: no answer within 30 s")]
    Timeout {
        /// What the source was doing.
        doing: &'static str,
    },
}

impl RabbitMqError {
    /// Whether the server refused what was asked (the queue not found, access refused),
    /// rather than being out of reach.
    pub(crate) fn is_refusal(&self) -> bool {
        use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
        let RabbitMqError::Server { source, .. } = self else {
            return false;
        };
        matches!(
            source.kind(),
            lapin::ErrorKind::ProtocolError(error)
                if matches!(error.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND | AMQPSoftError::ACCESSREFUSED))
        )
    }

    pub(crate) fn server(doing: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| RabbitMqError::Server { doing, source }
    }
}
