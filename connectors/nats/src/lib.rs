//! # longshore-nats
//!
//! A NATS JetStream source for [longshore]: a durable pull consumer whose fetch size is
//! the pipeline's demand, each message acknowledged after its last stage, nak'ed with the
//! retry policy's backoff, kept from redelivery with progress while a long job runs; the
//! consumer's pending counts as metrics.
//!
//! ```no_run
//! use longshore::decode::Json;
//! use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
//! use longshore_nats::{JetStreamConfig, JetStreamMessage, JetStreamMetadata, JetStreamSource};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//!
//! struct Bill;
//! impl Handler for Bill {
//!     type Item = Order;
//!     type Metadata = JetStreamMetadata;
//!     async fn handle_message(&self, message: &mut JetStreamMessage<Order>) -> Result<(), BoxError> {
//!         println!("order {} on {}", message.data().id, message.metadata().subject());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let config = JetStreamConfig::new("nats://nats:4222", "ORDERS", "billing");
//! let pipeline = Pipeline::builder(JetStreamSource::connect(config).await?, Bill)
//!     .decode(Json::new())
//!     .processors(Processors::new(8))
//!     .retry(RetryPolicy::new(5))
//!     .start()?;
//! pipeline.run_until_signal().await?;
//! # Ok(()) }
//! ```
//!
//! [longshore]: https://docs.rs/longshore

mod acknowledge;
mod config;
mod error;
mod metadata;
mod metrics;
mod source;

pub use acknowledge::JetStreamAcknowledger;
pub use async_nats;
pub use bytes::Bytes;
pub use config::JetStreamConfig;
pub use error::JetStreamError;
pub use metadata::{JetStreamMessage, JetStreamMetadata};
pub use source::JetStreamSource;
