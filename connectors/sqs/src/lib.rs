//! # longshore-sqs
//!
//! An SQS source for [longshore]: long polls only for what the pipeline demanded,
//! deletes in batches of 10, retries through the visibility timeout (the attempt is
//! SQS's receive count), visibility extended while a job runs, FIFO group order,
//! messages not started released at shutdown, and the queue's depth as metrics.
//!
//! Each message's data is its body ([`Bytes`]), or what the pipeline's decode step makes
//! of it; its [`SqsMetadata`] tells the ids, attributes, group and receive count, and
//! keeps the original body for the dead-letter queue.
//!
//! ```no_run
//! use longshore::decode::Json;
//! use longshore::{BoxError, Handler, Pipeline, Processors, RetryPolicy};
//! use longshore_sqs::{SqsConfig, SqsMessage, SqsMetadata, SqsSource};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: String, cents: u64 }
//!
//! struct Print;
//! impl Handler for Print {
//!     type Item = Order;
//!     type Metadata = SqsMetadata;
//!     async fn handle_message(&self, message: &mut SqsMessage<Order>) -> Result<(), BoxError> {
//!         let order = message.data();
//!         println!("{} ({}): {} cents", order.id, message.metadata().message_id(), order.cents);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let source = SqsSource::connect(SqsConfig::new("orders")).await?;
//! let pipeline = Pipeline::builder(source, Print)
//!     .decode(Json::new())
//!     .processors(Processors::new(16))
//!     .retry(RetryPolicy::new(5))
//!     .start()?;
//! pipeline.run_until_signal().await?;
//! # Ok(()) }
//! ```

mod acknowledge;
mod config;
mod dead_letter;
mod error;
mod held;
mod lag;
mod metadata;
mod metrics;
mod panel;
mod queue;
mod receiver;
mod source;
mod visibility;

pub use acknowledge::SqsAcknowledger;
pub use aws_sdk_sqs;
pub use bytes::Bytes;
pub use config::{FinalFailure, Ordering, SqsConfig};
pub use dead_letter::SqsDeadLetter;
pub use error::SqsSourceError;
pub use metadata::{SqsMessage, SqsMetadata};
pub use source::SqsSource;
