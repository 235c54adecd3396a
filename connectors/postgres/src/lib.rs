//! # longshore-postgres
//!
//! A PostgreSQL queue table as a source for [longshore]: the "process incoming data from
//! a database" case. Producers insert rows (in their own transactions, beside the data
//! they describe); consumers lease only what the pipeline asks for with
//! `SELECT ... FOR UPDATE SKIP LOCKED`, a lease keeping each row from the others until it
//! is deleted, retried or released, and extended while it is handled. Inserts wake the
//! consumers through `LISTEN`/`NOTIFY`; the queue's depth and oldest age are metrics.
//!
//! ```no_run
//! use longshore::{BoxError, Handler, Pipeline, Processors};
//! use longshore_postgres::{PgQueueMessage, PgQueueMetadata, PgQueueConfig, PgQueueSource};
//!
//! struct Print;
//! impl Handler for Print {
//!     type Item = longshore_postgres::Bytes;
//!     type Metadata = PgQueueMetadata;
//!     async fn handle_message(&self, message: &mut PgQueueMessage) -> Result<(), BoxError> {
//!         println!("row {}: {} bytes", message.metadata().id(), message.data().len());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let config = PgQueueConfig::new("postgresql://app@db/shop");
//! PgQueueSource::migrate(&config).await?;
//! let pipeline = Pipeline::builder(PgQueueSource::connect(config).await?, Print)
//!     .processors(Processors::new(8))
//!     .start()?;
//! pipeline.run_until_signal().await?;
//! # Ok(()) }
//! ```
//!
//! [longshore]: https://docs.rs/longshore

mod acknowledge;
mod config;
mod db;
mod error;
mod metadata;
mod metrics;
mod queue;
mod schema;
mod source;

pub use acknowledge::PgQueueAcknowledger;
pub use bytes::Bytes;
pub use config::PgQueueConfig;
pub use error::PgQueueError;
pub use metadata::{PgQueueMessage, PgQueueMetadata};
pub use schema::migration;
pub use source::PgQueueSource;
pub use tokio_postgres;
