//! # longshore-rabbitmq
//!
//! A RabbitMQ source for [longshore]: one consumer whose prefetch is the pipeline's
//! in-flight bound, each delivery acknowledged after its last stage, one failed for good
//! rejected to the queue's dead-letter exchange (or acknowledged once the pipeline's
//! dead-letter destination has it), the connection made again after a loss without
//! acknowledging on the wrong channel; the queue's depth as metrics.
//!
//! ```no_run
//! use longshore::decode::Json;
//! use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
//! use longshore_rabbitmq::{RabbitMqConfig, RabbitMqMessage, RabbitMqMetadata, RabbitMqSource};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64 }
//!
//! struct Bill;
//! impl Handler for Bill {
//!     type Item = Order;
//!     type Metadata = RabbitMqMetadata;
//!     async fn handle_message(&self, message: &mut RabbitMqMessage<Order>) -> Result<(), BoxError> {
//!         println!("order {} ({})", message.data().id, message.metadata().routing_key());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let config = RabbitMqConfig::new("amqp://rabbitmq:5672/%2f", "orders");
//! let pipeline = Pipeline::builder(RabbitMqSource::connect(config).await?, Bill)
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

pub use acknowledge::RabbitMqAcknowledger;
pub use bytes::Bytes;
pub use config::RabbitMqConfig;
pub use error::RabbitMqError;
pub use lapin;
pub use metadata::{RabbitMqMessage, RabbitMqMetadata};
pub use source::RabbitMqSource;
