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
    /// A column of the queue table has a type the source cannot read as it leases, or
    /// allows NULL where a lease needs a value (`visible_at`, `attempts`), in a table
    /// made by hand or altered: refused at start rather than failing each lease.
    #[error("postgres queue table {table}: column {column} is {found}, expected {expected} (see longshore_postgres::migration)")]
    Schema {
        /// The table.
        table: String,
        /// The column.
        column: &'static str,
        /// Its type in the table.
        found: String,
        /// Its type in the migration.
        expected: &'static str,
    },
}

impl PgQueueError {
    pub(crate) fn database(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| PgQueueError::Database { doing, source }
    }
}
