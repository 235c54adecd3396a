//! Errors of the PostgreSQL connector.

/// The queue table source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgQueueError {
    /// A setting is invalid; the error names it.
    #[error(transparent)]
    Config(#[from] longshore::BuildError),
    /// The database could not be reached, or refused a statement.
    #[error("postgres {doing}: {source}")]
    Database {
        /// What the source was doing.
        doing: &'static str,
        /// What the driver or the server said.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgQueueError {
    pub(crate) fn database(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| PgQueueError::Database { doing, source }
    }
}
