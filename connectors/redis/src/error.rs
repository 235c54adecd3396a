//! Errors of the Redis connector.

/// The Redis Streams source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStreamError {
    /// A setting is invalid; the error names it.
    #[error(transparent)]
    Config(#[from] longshore::BuildError),
    /// The server could not be reached, or refused a command.
    #[error("redis {doing}: {source}")]
    Server {
        /// What the source was doing.
        doing: &'static str,
        /// What the client or the server said.
        #[source]
        source: redis::RedisError,
    },
}

impl RedisStreamError {
    pub(crate) fn server(doing: &'static str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| RedisStreamError::Server { doing, source }
    }
}
