//! # longshore-sqs
//!
//! An SQS source for [longshore]: long polls only for what the pipeline demanded,
//! deletes in batches of 10, retries through the visibility timeout (the attempt is
//! SQS's receive count), visibility extended while a job runs, FIFO group order,
//! messages not started released at shutdown, and the queue's depth as metrics.
//!
//! ```no_run
//! use longshore::{BoxError, Handler, Message, Pipeline, Processors, RetryPolicy};
//! use longshore_sqs::{SqsConfig, SqsMessage, SqsSource};
//!
//! struct Print;
//! impl Handler for Print {
//!     type Item = SqsMessage;
//!     async fn handle_message(&self, message: &mut Message<SqsMessage>) -> Result<(), BoxError> {
//!         println!("{}", message.data().body());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), BoxError> {
//! let source = SqsSource::connect(SqsConfig::new("orders")).await?;
//! let pipeline = Pipeline::builder(source, Print)
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
mod message;
mod metrics;
mod queue;
mod receiver;
mod source;
mod visibility;

pub use acknowledge::SqsAcknowledger;
pub use aws_sdk_sqs;
pub use config::{FinalFailure, Ordering, SqsConfig};
pub use dead_letter::SqsDeadLetter;
pub use error::SqsSourceError;
pub use message::SqsMessage;
pub use source::SqsSource;
