//! The queue table: its migration, shipped as `migrations/0001_longshore_queue.sql`.

use longshore::BuildError;

use crate::config::check_table;

const MIGRATION: &str = include_str!("../migrations/0001_longshore_queue.sql");

/// The SQL that creates the queue table `table` (its index, and the trigger that wakes
/// consumers through `NOTIFY`): `migrations/0001_longshore_queue.sql` with the name
/// given. Safe to run again.
///
/// A producer enqueues with a plain insert, in its own transaction if it likes (the row
/// is seen once that commits): `INSERT INTO longshore_queue (queue, payload) VALUES
/// ('invoices', $1)`.
///
/// ```
/// let sql = longshore_postgres::migration("invoice_queue").unwrap();
/// assert!(sql.contains("CREATE TABLE IF NOT EXISTS invoice_queue ("));
/// assert!(longshore_postgres::migration("bad name").is_err());
/// ```
///
/// # Errors
///
/// A [`BuildError`] on `source.table` when `table` is not a plain name.
pub fn migration(table: &str) -> Result<String, BuildError> {
    check_table("source.table", table)?;
    Ok(MIGRATION.replace("longshore_queue", table))
}
